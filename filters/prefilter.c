/*
 * The octets a pattern requires, and a line's octets: a test that lets most rules skip
 * PCRE2 on lines they cannot match.  The pattern reading is deliberately narrow: literal
 * octets at the top level of the pattern, not under a quantifier that allows zero, are
 * required by every match; anything this reading is not sure of either requires nothing
 * (classes, groups, escapes that stand for a set) or gives up on the whole pattern
 * (alternation at the top, x mode, (* verbs, \Q, option settings at the top, caseless UTF
 * where 'k' and 's' also match non-ASCII characters).
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "filters/prefilter.h"

#include <pcre2.h>
#include <string.h>

/* The classes of octets: bit of each octet value, filled on first use. */
static uint64_t class_bit[256];
static int class_ready;

/*
 * Octets from the rarest in mail text to the most common, roughly: the order in which a
 * rule's needs are tried for its key.  Only speed depends on it.  Class 63 (non-ASCII,
 * controls) goes after "m".
 */
static const char rarity[] = "zqxjkv#$%&*+;!?[]()\"'=_/bpygfw<>@m0123456789ucldrhsnioate:-,. ";
static int class_order[64];
static int nclass_order;

/* The state of reading one pattern. */
struct reader {
	const char *p;
	size_t len, i;
	int pending; /* a literal octet whose quantifier is not read yet, or -1 */
	uint64_t need;
};

/* Letters 0-25 (either case), digits 26-35, common punctuation 36-62, the rest 63. */
static int
octet_class(unsigned char c)
{
	static const char punct[] = " .-@:<>/_,=\"'()[];!?#$%&*+";
	const char *p;

	if (c >= 'a' && c <= 'z')
		return c - 'a';
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= '0' && c <= '9')
		return 26 + (c - '0');
	if (c != '\0' && (p = memchr(punct, c, sizeof(punct) - 1)) != NULL)
		return 36 + (int)(p - punct);
	return 63;
}

static void
class_fill(void)
{
	int c;

	uint64_t seen = 0;
	const char *r;
	int k;

	for (c = 0; c < 256; c++)
		class_bit[c] = 1ULL << octet_class((unsigned char)c);
	nclass_order = 0;
	for (r = rarity; *r != '\0'; r++) {
		k = octet_class((unsigned char)*r);
		if (!(seen & (1ULL << k))) {
			class_order[nclass_order++] = k;
			seen |= 1ULL << k;
		}
		if (*r == 'm') {
			class_order[nclass_order++] = 63;
			seen |= 1ULL << 63;
		}
	}
	for (k = 0; k < 64; k++)
		if (!(seen & (1ULL << k)))
			class_order[nclass_order++] = k;
	class_ready = 1;
}

static int
is_alnum(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* The pending literal is followed by no quantifier, or by one that needs it at least once. */
static void
reader_commit(struct reader *rd)
{
	int c = rd->pending;

	rd->pending = -1;
	if (c >= 0)
		rd->need |= class_bit[c];
}

/* Skips a character class from its '['; 0 when it cannot be read with certainty. */
static int
skip_class(const char *p, size_t len, size_t *ip)
{
	size_t i = *ip + 1;

	if (i < len && p[i] == '^')
		i++;
	if (i < len && p[i] == ']')
		i++; /* a ']' first is a literal */
	while (i < len && p[i] != ']') {
		if (p[i] == '[')
			return 0; /* [:alpha:] and the like */
		if (p[i] == '\\') {
			if (i + 1 >= len || p[i + 1] == 'Q' || p[i + 1] == 'E')
				return 0;
			i += 2;
		} else {
			i++;
		}
	}
	if (i >= len)
		return 0;
	*ip = i + 1;
	return 1;
}

/*
 * At "(?": whether option letters follow, and which: "(?i)" at the top changes how the rest
 * reads, "x" anywhere changes how a group's text (comments) reads.
 */
static int
group_options(const char *p, size_t len, size_t i, int *closed)
{
	size_t j = i + 2;
	int x = 0;

	while (j < len && ((p[j] >= 'a' && p[j] <= 'z') || (p[j] >= 'A' && p[j] <= 'Z') ||
	                   p[j] == '-' || p[j] == '^')) {
		if (p[j] == 'x')
			x = 1;
		j++;
	}
	*closed = j < len && p[j] == ')';
	return x;
}

/* Skips a group from its '(' to its ')'; 0 when it cannot be read with certainty. */
static int
skip_group(const char *p, size_t len, size_t *ip)
{
	size_t i = *ip;
	int depth = 0, closed;

	while (i < len) {
		switch (p[i]) {
		case '\\':
			if (i + 1 >= len || p[i + 1] == 'Q' || p[i + 1] == 'E')
				return 0;
			i += 2;
			break;
		case '[':
			if (!skip_class(p, len, &i))
				return 0;
			break;
		case '(':
			/* (*ACCEPT) ends a match anywhere; (?# ) is a comment, (?C"...") holds
			 * text, not a group: a ')' there would be misread. */
			if (i + 1 < len && p[i + 1] == '*')
				return 0;
			if (i + 2 < len && p[i + 1] == '?' &&
			    (p[i + 2] == '#' || p[i + 2] == 'C' || group_options(p, len, i, &closed)))
				return 0;
			depth++;
			i++;
			break;
		case ')':
			i++;
			if (--depth == 0) {
				*ip = i;
				return 1;
			}
			break;
		default:
			i++;
		}
	}
	return 0;
}

/* The length of a {n}, {n,}, {n,m} quantifier at i (read loosely: more is safe), or 0. */
static size_t
quantifier_len(const char *p, size_t len, size_t i)
{
	size_t j = i + 1;

	while (j < len && ((p[j] >= '0' && p[j] <= '9') || p[j] == ',' || p[j] == ' '))
		j++;
	if (j < len && p[j] == '}' && j > i + 1)
		return j + 1 - i;
	return 0;
}

/* Reads a backslash sequence; 0 when it is one this reading does not know. */
static int
reader_escape(struct reader *rd)
{
	unsigned char c;

	if (rd->i + 1 >= rd->len)
		return 0;
	c = (unsigned char)rd->p[rd->i + 1];
	reader_commit(rd);
	rd->i += 2;
	if (c >= 0x80)
		return 1; /* part of a character: required by nothing here */
	if (!is_alnum(c)) {
		rd->pending = c; /* "\." is a literal '.' */
		return 1;
	}
	if (strchr("bBAzZGK", c) != NULL)
		return 1; /* an assertion: matches no octet */
	if (c == 'N' && rd->i < rd->len && rd->p[rd->i] == '{')
		return 0;
	/* A set of characters, or one written another way: one item, nothing required. */
	return strchr("dDsSwWhHvVRXNCtnrfea", c) != NULL;
}

/* Reads the pattern's top level; 0 when it gives up. */
static int
reader_run(struct reader *rd)
{
	unsigned char c;
	size_t n;
	int closed;

	while (rd->i < rd->len) {
		c = (unsigned char)rd->p[rd->i];
		switch (c) {
		case '\\':
			if (!reader_escape(rd))
				return 0;
			break;
		case '[':
			reader_commit(rd);
			if (!skip_class(rd->p, rd->len, &rd->i))
				return 0;
			break;
		case '(':
			reader_commit(rd);
			if (rd->i + 2 < rd->len && rd->p[rd->i + 1] == '?') {
				group_options(rd->p, rd->len, rd->i, &closed);
				if (closed)
					return 0; /* (?i) and the like: the rest reads otherwise */
			}
			if (!skip_group(rd->p, rd->len, &rd->i))
				return 0;
			break;
		case ')':
		case '|':
			return 0;
		case '?':
		case '*':
			rd->pending = -1; /* zero times will do */
			rd->i++;
			break;
		case '+':
			reader_commit(rd);
			rd->i++;
			break;
		case '{':
			if ((n = quantifier_len(rd->p, rd->len, rd->i)) > 0) {
				rd->pending = -1; /* {0}, {0,n}: read as possibly zero */
				rd->i += n;
				break;
			}
			reader_commit(rd);
			rd->i++;
			break;
		case '.':
		case '^':
		case '$':
			reader_commit(rd);
			rd->i++;
			break;
		default:
			reader_commit(rd);
			if (c == '\r' || c == '\n')
				return 0;
			if (c < 0x80)
				rd->pending = c;
			rd->i++;
		}
	}
	reader_commit(rd);
	return 1;
}

void
prefilter_learn(struct prefilter *pf, const char *pattern, size_t len, uint32_t opts)
{
	struct reader rd;

	memset(pf, 0, sizeof(*pf));
	if (opts & (PCRE2_EXTENDED | PCRE2_EXTENDED_MORE | PCRE2_LITERAL))
		return;
	/* Caseless UTF: 'k' matches U+212A, 's' U+017F; leave it to PCRE2. */
	if ((opts & PCRE2_CASELESS) && (opts & (PCRE2_UTF | PCRE2_UCP)))
		return;
	if (!class_ready)
		class_fill();
	memset(&rd, 0, sizeof(rd));
	rd.p = pattern;
	rd.len = len;
	rd.pending = -1;
	if (!reader_run(&rd))
		return;
	pf->need = rd.need;
	pf->active = rd.need != 0;
}

int
prefilter_key(const struct prefilter *pf)
{
	int i;

	if (!class_ready)
		class_fill();
	for (i = 0; i < nclass_order; i++)
		if (pf->need & (1ULL << class_order[i]))
			return class_order[i];
	return -1;
}

uint64_t
prefilter_scan(const unsigned char *line, size_t len)
{
	uint64_t a = 0, b = 0, c = 0, d = 0;
	size_t i;

	if (!class_ready)
		class_fill();
	/* Four sums, so that neighbouring octets do not wait on each other. */
	for (i = 0; i + 8 <= len; i += 8) {
		a |= class_bit[line[i]] | class_bit[line[i + 4]];
		b |= class_bit[line[i + 1]] | class_bit[line[i + 5]];
		c |= class_bit[line[i + 2]] | class_bit[line[i + 6]];
		d |= class_bit[line[i + 3]] | class_bit[line[i + 7]];
	}
	for (; i < len; i++)
		a |= class_bit[line[i]];
	return a | b | c | d;
}
