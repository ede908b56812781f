/*
 * Filter rules: parse rule files, compile their patterns once, and run lines through them
 * (issue 3).  The proxy is single-threaded, so one match data block and one JIT stack per
 * ruleset serve every session that uses it.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "filters/rules.h"

#include <errno.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp/address.h"
#include "filters/prefilter.h"
#include "filters/table.h"

#define RULES_REPLY_MAX 510 /* RFC 5321 4.5.3.1.5: 512 octets with CRLF */
#define RULES_JIT_STACK_MIN (32 * 1024)
#define RULES_JIT_STACK_MAX (1024 * 1024)
#define RULES_ENVELOPE_SYNTAX "501 5.1.7 Bad address syntax"
/* A REWRITE whose address can't be sent as a path (envelope_invalid). */
#define RULES_ENVELOPE_INVALID "rewritten address is not a valid path"
#define RULES_ENVELOPE_INVALID_REPLY "451 4.3.0 Rule produced an invalid address"
/*
 * PCRE2's limits on one match.  The default match limit (10,000,000) let a nested quantifier
 * such as /(\w+\.?)+@/ spend 16 ms on one hostile line (1.5 s in the interpreter), stalling
 * every session.  100,000 keeps the worst line near 0.15 ms with JIT and 1.5 ms without, and
 * is far above what any ordinary pattern needs on a line of --max-line octets.  The depth
 * limit bounds the interpreter's backtracking memory the same way.  A match that hits a limit
 * is an error: a temporary failure, never a silent "no match" (rule_eval).
 */
#define RULES_MATCH_LIMIT 100000
#define RULES_DEPTH_LIMIT 10000
/* The reply to a line whose rule could not be evaluated (Postfix answers a table's lookup
 * error the same way): the client tries again later, and an allow-list never fails open. */
#define RULES_TEMPFAIL_REPLY "451 4.3.0 Temporary failure in rule evaluation, try again later"

struct rule {
	int id;
	const char *file;
	unsigned int line;
	enum rule_scope scope;
	enum rule_action action;
	int negate;
	int global;
	int jit; /* pcre2_jit_match() may be called directly */
	pcre2_code *code;
	struct prefilter pf; /* the octets any match needs: lines without them skip PCRE2 */
	char *text; /* reply, replacement, PREPEND or WARN text; NULL if none */
	size_t textlen;
	struct table *table; /* a table:/cidr: rule: looked up instead of code */
};

struct ruleset {
	int refs;
	struct rule *rules;
	int nrules;
	char **files;
	int nfiles;
	const struct rule **byscope[SCOPE_COUNT];
	int nbyscope[SCOPE_COUNT];
	/* Beside byscope: the prefilter's need of each rule a line without it may skip, else 0;
	 * packed, so that skipping a rule touches no more than this. */
	uint64_t *skipneed[SCOPE_COUNT];
	/*
	 * For a scope of at most 64 rules of which some may be skipped: bit i of cand[s][c] is
	 * set for rule i filed under class c (its prefilter key), bit i of always[s] for a rule
	 * never skipped.  A line is tried only against the rules filed under the classes of its
	 * octets, and those always tried.  NULL for other scopes.
	 */
	uint64_t *cand[SCOPE_COUNT];
	uint64_t always[SCOPE_COUNT];
	int holds;
	pcre2_match_data *md;
	pcre2_match_context *mctx;
	pcre2_jit_stack *jit;
};

/* The state of loading: where we are, for errors, and what we built so far. */
struct loader {
	struct ruleset *rs;
	int cap;
	pcre2_compile_context *cctx;
	uint32_t maxgroups;
	FILE *errors;
	int nerrors;
	FILE *warnings; /* --check-rules: where warnings go, or NULL */
	const char *file;
	unsigned int lineno;
	int lineerrors;
	int quoted; /* the text of the current line was quoted: "" is a text */
	size_t tableoff; /* where the table of the current line is named */
};

/* A field of a rule line: offset and length within the line. */
struct field {
	size_t off;
	size_t len;
};

static const char *const scope_names[SCOPE_COUNT] = {
    "helo",  "mail",       "rcpt",   "command",   "header", "body",
    "banner", "reply", "capability", "sender", "recipient", "client",
};

static const char *const action_names[] = {
    "NONE", "REJECT", "REWRITE", "IGNORE", "PREPEND", "WARN", "DISCONNECT", "PASS",
};

#define SCOPE_BIT(s) (1u << (s))
#define SCOPES_COMMANDS                                                                            \
	(SCOPE_BIT(SCOPE_HELO) | SCOPE_BIT(SCOPE_MAIL) | SCOPE_BIT(SCOPE_RCPT) |                   \
	 SCOPE_BIT(SCOPE_COMMAND) | SCOPE_BIT(SCOPE_SENDER) | SCOPE_BIT(SCOPE_RECIPIENT))
#define SCOPES_MESSAGE (SCOPE_BIT(SCOPE_HEADER) | SCOPE_BIT(SCOPE_BODY))
#define SCOPES_SERVER                                                                              \
	(SCOPE_BIT(SCOPE_BANNER) | SCOPE_BIT(SCOPE_REPLY) | SCOPE_BIT(SCOPE_CAPABILITY))
#define SCOPES_ALL (SCOPE_BIT(SCOPE_COUNT) - 1)

/* Where each action may appear: the table of issue 3. */
static const unsigned int action_scopes[] = {
    [ACT_NONE] = 0,
    [ACT_REJECT] = SCOPES_COMMANDS | SCOPES_MESSAGE | SCOPE_BIT(SCOPE_CLIENT),
    [ACT_REWRITE] = SCOPES_ALL & ~SCOPE_BIT(SCOPE_CLIENT),
    [ACT_IGNORE] = SCOPES_MESSAGE | SCOPES_SERVER,
    [ACT_PREPEND] = SCOPE_BIT(SCOPE_HEADER),
    [ACT_WARN] = SCOPES_ALL,
    [ACT_DISCONNECT] = SCOPES_COMMANDS | SCOPES_MESSAGE | SCOPE_BIT(SCOPE_CLIENT),
    [ACT_PASS] = SCOPES_ALL,
};

const char *
rules_scope_name(enum rule_scope s)
{
	if ((int)s < 0 || s >= SCOPE_COUNT)
		return "?";
	return scope_names[s];
}

const char *
rules_action_name(enum rule_action a)
{
	if ((int)a < 0 || a > ACT_PASS)
		return "?";
	return action_names[a];
}

static int
is_blank(int c)
{
	return c == ' ' || c == '\t';
}

static int
is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static int
is_word(int c)
{
	return is_digit(c) || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static size_t
skip_blanks(const char *s, size_t len, size_t i)
{
	while (i < len && is_blank((unsigned char)s[i]))
		i++;
	return i;
}

static size_t
skip_word(const char *s, size_t len, size_t i)
{
	while (i < len && !is_blank((unsigned char)s[i]))
		i++;
	return i;
}

/* Writes a field into buf for an error message, printable and cut short. */
static const char *
quote(const char *s, size_t n, char *buf, size_t size)
{
	size_t i, o = 0;
	unsigned char c;

	for (i = 0; i < n && o + 8 < size; i++) {
		c = (unsigned char)s[i];
		if (c < 0x20 || c >= 0x7f || c == '\\')
			o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
		else
			buf[o++] = (char)c;
	}
	if (i < n) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o] = '\0';
	return buf;
}

/* Reports one load error at octet offset off of the current line. */
static void __attribute__((format(printf, 3, 4)))
load_error(struct loader *ld, size_t off, const char *fmt, ...)
{
	va_list ap;

	ld->nerrors++;
	ld->lineerrors++;
	if (ld->errors == NULL)
		return;
	fprintf(ld->errors, "%s:%u:%zu: ", ld->file, ld->lineno, off + 1);
	va_start(ap, fmt);
	vfprintf(ld->errors, fmt, ap);
	va_end(ap);
	fputc('\n', ld->errors);
}

static int
lookup_name(const char *const *names, int n, const char *s, size_t len)
{
	int i;

	for (i = 0; i < n; i++)
		if (strlen(names[i]) == len && strncasecmp(names[i], s, len) == 0)
			return i;
	return -1;
}

/* The pattern between the slashes, with "\/" made a plain slash, and where each octet came from. */
struct pattern {
	char *text;
	size_t len;
	size_t *from; /* from[i]: offset in the line of text[i]; from[len]: the closing slash */
};

static void
pattern_free(struct pattern *pat)
{
	free(pat->text);
	free(pat->from);
	pat->text = NULL;
	pat->from = NULL;
}

static void
pattern_put(struct pattern *pat, char c, size_t from)
{
	pat->from[pat->len] = from;
	pat->text[pat->len++] = c;
}

/* Reads /PATTERN/ starting at the slash at *i; leaves *i after the closing slash. */
static int
pattern_scan(struct loader *ld, const char *s, size_t len, size_t *i, struct pattern *pat)
{
	size_t j = *i + 1;

	pat->len = 0;
	if ((pat->text = malloc(len + 1)) == NULL ||
	    (pat->from = calloc(len + 1, sizeof(size_t))) == NULL)
		return -1;
	while (j < len && s[j] != '/') {
		if (s[j] == '\\' && j + 1 < len) {
			/* "\/" is a slash; other escapes are PCRE2's, kept whole. */
			if (s[j + 1] != '/')
				pattern_put(pat, '\\', j);
			pattern_put(pat, s[j + 1], j);
			j += 2;
		} else {
			pattern_put(pat, s[j], j);
			j++;
		}
	}
	if (j == len) {
		load_error(ld, *i, "unterminated pattern: no closing '/'");
		return 0;
	}
	pat->from[pat->len] = j;
	pat->text[pat->len] = '\0';
	*i = j + 1;
	return 1;
}

/* Reads the flags after the closing slash into PCRE2 options; leaves *i after them. */
static uint32_t
flags_scan(struct loader *ld, const char *s, size_t len, size_t *i, int *global)
{
	uint32_t opts = 0;
	char q[40];

	for (; *i < len && !is_blank((unsigned char)s[*i]); (*i)++) {
		switch (s[*i]) {
		case 'i':
			opts |= PCRE2_CASELESS;
			break;
		case 'x':
			opts |= PCRE2_EXTENDED;
			break;
		case 's':
			opts |= PCRE2_DOTALL;
			break;
		case 'm':
			opts |= PCRE2_MULTILINE;
			break;
		case 'u':
			/* Invalid UTF-8 from the network must never make a match fail. */
			opts |= PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
			break;
		case 'g':
			*global = 1;
			break;
		default:
			load_error(ld, *i, "unknown flag '%s' (flags are i x s m u g)",
			           quote(s + *i, 1, q, sizeof(q)));
		}
	}
	return opts;
}

/* After a quantifier at p[i]: whether it repeats without bound, and is not possessive. */
static int
quantifier_unbounded(const char *p, size_t len, size_t i, size_t *end)
{
	size_t j = i;

	*end = i;
	if (i >= len)
		return 0;
	if (p[i] == '+' || p[i] == '*') {
		j = i + 1;
	} else if (p[i] == '{') {
		/* {n,} only: {n} and {n,m} are bounded. */
		for (j = i + 1; j < len && is_digit((unsigned char)p[j]); j++)
			;
		if (j == i + 1 || j + 1 >= len || p[j] != ',' || p[j + 1] != '}')
			return 0;
		j += 2;
	} else {
		return 0;
	}
	if (j < len && p[j] == '+') {
		*end = j + 1; /* possessive: never backtracks */
		return 0;
	}
	*end = j;
	return 1;
}

/* Past a character class starting at p[i] == '['. */
static size_t
skip_class(const char *p, size_t len, size_t i)
{
	size_t j = i + 1;

	if (j < len && p[j] == '^')
		j++;
	if (j < len && p[j] == ']')
		j++; /* a leading ']' is literal */
	for (; j < len && p[j] != ']'; j++)
		if (p[j] == '\\')
			j++;
	return j;
}

/*
 * The offset of the first group that repeats without bound a pattern that itself repeats
 * without bound, as in (\w+\.?)+: such a pattern backtracks exponentially on a line that
 * almost matches.  Returns len when there is none the scan can see (atomic groups and
 * possessive quantifiers excepted; a heuristic, not a proof).
 */
static size_t
pattern_nested_quantifier(const char *p, size_t len)
{
	struct {
		size_t start;
		int inner, atomic;
	} st[64];
	size_t i, end;
	int depth = 0, q;

	for (i = 0; i < len; i++) {
		if (p[i] == '\\') {
			i++;
		} else if (p[i] == '[') {
			i = skip_class(p, len, i);
		} else if (p[i] == '(') {
			if (depth == (int)(sizeof(st) / sizeof(st[0])))
				return len;
			st[depth].start = i;
			st[depth].inner = 0;
			st[depth].atomic = i + 2 < len && p[i + 1] == '?' && p[i + 2] == '>';
			depth++;
		} else if (p[i] == ')' && depth > 0) {
			depth--;
			q = quantifier_unbounded(p, len, i + 1, &end);
			if (q && st[depth].inner && !st[depth].atomic)
				return st[depth].start;
			if (depth > 0 && !st[depth].atomic)
				st[depth - 1].inner |= st[depth].inner || q;
			if (end > i + 1)
				i = end - 1;
		} else if (depth > 0 && i > 0 && p[i - 1] != '(') {
			q = quantifier_unbounded(p, len, i, &end);
			st[depth - 1].inner |= q;
			if (end > i)
				i = end - 1;
		}
	}
	return len;
}

/* --check-rules: warns of what will load but may cost every session dearly. */
static void
pattern_warn(struct loader *ld, const struct pattern *pat)
{
	size_t at;

	if (ld->warnings == NULL ||
	    (at = pattern_nested_quantifier(pat->text, pat->len)) >= pat->len)
		return;
	fprintf(ld->warnings,
	        "%s:%u:%zu: warning: nested quantifier: a repeated group of repeated patterns "
	        "backtracks exponentially on a hostile line; a line that reaches PCRE2's match "
	        "limit is answered 451 4.3.0 (make the inner or outer repeat possessive or atomic, "
	        "or bound it)\n",
	        ld->file, ld->lineno, pat->from[at] + 1);
}

/* Whether a compiled pattern takes any subject: not UTF, or UTF that copes with invalid UTF-8. */
static int
pattern_utf_tolerant(const pcre2_code *code)
{
	uint32_t opts = 0;

	return pcre2_pattern_info(code, PCRE2_INFO_ALLOPTIONS, &opts) == 0 &&
	       (!(opts & PCRE2_UTF) || (opts & PCRE2_MATCH_INVALID_UTF));
}

/* Compiles the pattern, reporting PCRE2's message at the column of its error offset. */
static pcre2_code *
pattern_compile(struct loader *ld, const struct pattern *pat, uint32_t opts)
{
	PCRE2_UCHAR msg[256];
	PCRE2_SIZE erroff;
	pcre2_code *code;
	uint32_t groups;
	int err;

	code = pcre2_compile((PCRE2_SPTR)pat->text, pat->len, opts, &err, &erroff, ld->cctx);
	if (code != NULL && !pattern_utf_tolerant(code)) {
		/* "(*UTF)" in the pattern: as the u flag, or every mail that is not valid UTF-8
		 * would fail the rule (451), WARN rules included. */
		pcre2_code_free(code);
		code = pcre2_compile((PCRE2_SPTR)pat->text, pat->len,
		                     opts | PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &err, &erroff,
		                     ld->cctx);
	}
	if (code == NULL) {
		pcre2_get_error_message(err, msg, sizeof(msg));
		if (erroff > pat->len)
			erroff = pat->len;
		load_error(ld, pat->from[erroff], "%s", (char *)msg);
		return NULL;
	}
	/* Without JIT support the interpreter does the same work, only slower. */
	(void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
	if (pcre2_pattern_info(code, PCRE2_INFO_CAPTURECOUNT, &groups) == 0 &&
	    groups > ld->maxgroups)
		ld->maxgroups = groups;
	return code;
}

/*
 * Whether pcre2_jit_match() can stand in for pcre2_match(): the pattern has JIT code, and
 * the one check it skips, of the subject's UTF-8, does not apply (a UTF pattern is always
 * compiled to take invalid UTF; "(*UTF)" in a pattern without the u flag is not).
 */
static int
jit_direct(const pcre2_code *code)
{
	size_t size = 0;

	return pcre2_pattern_info(code, PCRE2_INFO_JITSIZE, &size) == 0 && size > 0 &&
	       pattern_utf_tolerant(code);
}

/* Checks an enhanced status code (RFC 3463: class.subject.detail) against the reply code. */
static void
reply_check_enhanced(struct loader *ld, const char *s, struct field t, char cls)
{
	size_t i = t.off, end = t.off + t.len, n;
	char q[40];
	int part;

	for (part = 0; part < 3; part++) {
		for (n = 0; i < end && is_digit((unsigned char)s[i]); i++)
			n++;
		if (n == 0 || n > (part == 0 ? 1u : 3u) || (part < 2 && (i == end || s[i] != '.')))
			break;
		if (part < 2)
			i++;
	}
	if (part < 3 || i != end) {
		load_error(ld, t.off,
		           "malformed enhanced status code '%s' (want class.subject.detail)",
		           quote(s + t.off, t.len, q, sizeof(q)));
		return;
	}
	if (s[t.off] != cls)
		load_error(ld, t.off,
		           "enhanced status code class %c does not match reply code %cxx", s[t.off],
		           cls);
}

/* Checks a REJECT or DISCONNECT reply: 4xx or 5xx, an optional enhanced code, text. */
static void
reply_check(struct loader *ld, const char *s, struct field r)
{
	const char *p = s + r.off;
	size_t i, end = r.off + r.len;
	struct field t;

	if (r.len < 3 || (p[0] != '4' && p[0] != '5') || p[1] < '0' || p[1] > '5' ||
	    !is_digit((unsigned char)p[2]) || (r.len > 3 && p[3] != ' ')) {
		load_error(ld, r.off, "reply must start with a 4xx or 5xx code and a space");
		return;
	}
	if (r.len > RULES_REPLY_MAX)
		load_error(ld, r.off, "reply longer than %d octets", RULES_REPLY_MAX);
	i = skip_blanks(s, end, r.off + 3);
	if (i == end) {
		load_error(ld, end, "reply needs text after the code");
		return;
	}
	t.off = i;
	t.len = skip_word(s, end, i) - i;
	if (!is_digit((unsigned char)s[i]) || memchr(s + i, '.', t.len) == NULL)
		return;
	reply_check_enhanced(ld, s, t, p[0]);
	if (skip_blanks(s, end, t.off + t.len) == end)
		load_error(ld, end, "reply needs text after the enhanced status code");
}

/* Checks one "$..." reference of a replacement against the groups of the pattern. */
static void
replacement_check_group(struct loader *ld, const pcre2_code *code, const char *s, size_t off,
                        size_t at, size_t n)
{
	uint32_t groups;
	char name[64], q[40];
	size_t i;
	long num = 0;

	if (n > 1 && s[at] == '*')
		return; /* a (*MARK) name, empty when the pattern sets none */
	for (i = 0; i < n && is_digit((unsigned char)s[at + i]); i++)
		if (num < 1000000)
			num = num * 10 + (s[at + i] - '0');
	if (n > 0 && i == n) {
		if (code != NULL &&
		    pcre2_pattern_info(code, PCRE2_INFO_CAPTURECOUNT, &groups) == 0 &&
		    num > (long)groups)
			load_error(ld, off, "REWRITE: no group %s in the pattern",
			           quote(s + at, n, q, sizeof(q)));
		return;
	}
	for (i = 0; i < n && is_word((unsigned char)s[at + i]); i++)
		;
	if (n == 0 || i < n || is_digit((unsigned char)s[at]) || n >= sizeof(name)) {
		load_error(ld, off, "REWRITE: bad group reference (use $1, ${1}, ${name} or $$)");
		return;
	}
	memcpy(name, s + at, n);
	name[n] = '\0';
	if (code != NULL &&
	    pcre2_substring_number_from_name(code, (PCRE2_SPTR)name) == PCRE2_ERROR_NOSUBSTRING)
		load_error(ld, off, "REWRITE: no group named '%s' in the pattern", name);
}

/*
 * Checks a REWRITE replacement the way pcre2_substitute() reads it without
 * PCRE2_SUBSTITUTE_EXTENDED, so that a bad one fails at load rather than on live traffic.
 */
static void
replacement_check(struct loader *ld, const pcre2_code *code, uint32_t opts, const char *s,
                  struct field r)
{
	PCRE2_UCHAR msg[256];
	PCRE2_SIZE erroff;
	pcre2_code *lit;
	size_t i, j, end = r.off + r.len;
	int err;

	if (opts & PCRE2_UTF) {
		/* Compiling it as a literal is PCRE2's own UTF-8 check, with an offset. */
		lit = pcre2_compile((PCRE2_SPTR)(s + r.off), r.len, PCRE2_UTF | PCRE2_LITERAL, &err,
		                    &erroff, NULL);
		if (lit == NULL) {
			pcre2_get_error_message(err, msg, sizeof(msg));
			load_error(ld, r.off + erroff, "REWRITE: %s", (char *)msg);
			return;
		}
		pcre2_code_free(lit);
	}
	for (i = r.off; i < end; i++) {
		if (s[i] != '$')
			continue;
		if (i + 1 == end) {
			load_error(ld, i, "REWRITE: '$' at the end (write $$ for a dollar sign)");
			return;
		}
		if (s[i + 1] == '$') {
			i++;
		} else if (s[i + 1] == '{') {
			for (j = i + 2; j < end && s[j] != '}'; j++)
				;
			if (j == end) {
				load_error(ld, i, "REWRITE: '${' without '}'");
				return;
			}
			replacement_check_group(ld, code, s, i, i + 2, j - i - 2);
			i = j;
		} else {
			j = i + 1;
			if (s[j] == '*')
				j++;
			if (j < end && is_digit((unsigned char)s[j]))
				while (j < end && is_digit((unsigned char)s[j]))
					j++;
			else
				while (j < end && is_word((unsigned char)s[j]))
					j++;
			replacement_check_group(ld, code, s, i, i + 1, j - i - 1);
			i = j - 1;
		}
	}
}

/* Checks the text after the action, as that action wants it. */
static void
text_check(struct loader *ld, enum rule_action act, const char *s, size_t actend, struct field t,
           const pcre2_code *code, uint32_t opts)
{
	unsigned char c;
	size_t i;

	switch (act) {
	case ACT_REJECT:
	case ACT_DISCONNECT:
		if (t.len > 0)
			reply_check(ld, s, t);
		break;
	case ACT_REWRITE:
		if (t.len == 0 && !ld->quoted)
			load_error(ld, actend, "REWRITE needs a replacement text");
		else
			replacement_check(ld, code, opts, s, t);
		break;
	case ACT_PREPEND:
		for (i = 0; i < t.len; i++) {
			c = (unsigned char)s[t.off + i];
			if (c <= ' ' || c >= 0x7f || c == ':')
				break;
		}
		if (t.len == 0)
			load_error(ld, actend, "PREPEND needs a header line");
		else if (i == 0 || i == t.len || s[t.off + i] != ':')
			load_error(ld, t.off, "PREPEND text must be a header field (Name: value)");
		break;
	case ACT_IGNORE:
	case ACT_PASS:
		if (t.len > 0)
			load_error(ld, t.off, "%s takes no text", rules_action_name(act));
		break;
	default:
		break;
	}
}

/* The reply of a REJECT or DISCONNECT that names none. */
static const char *
rules_default_reply(enum rule_scope scope, enum rule_action act)
{
	if (act == ACT_DISCONNECT)
		return RULES_DISCONNECT_DEFAULT;
	return scope == SCOPE_CLIENT ? RULES_CLIENT_REJECT_DEFAULT : RULES_REJECT_DEFAULT;
}

/* Appends a checked rule to the ruleset; the text is copied, NUL-terminated. */
static int
rule_add(struct loader *ld, struct rule *r, const char *text, size_t len)
{
	struct ruleset *rs = ld->rs;
	struct rule *n;

	if (rs->nrules == ld->cap) {
		if ((n = reallocarray(rs->rules, (size_t)ld->cap * 2 + 16, sizeof(*n))) == NULL)
			return -1;
		rs->rules = n;
		ld->cap = ld->cap * 2 + 16;
	}
	if (len > 0 || r->action == ACT_REJECT || r->action == ACT_DISCONNECT ||
	    r->action == ACT_REWRITE) {
		if (len == 0 && r->action != ACT_REWRITE) {
			text = rules_default_reply(r->scope, r->action);
			len = strlen(text);
		}
		if ((r->text = strndup(text, len)) == NULL)
			return -1;
		r->textlen = len;
	}
	r->id = rs->nrules;
	rs->rules[rs->nrules++] = *r;
	return 0;
}

/* The fields of a rule line that tokenizing found, before any check of their meaning. */
struct ruleline {
	struct field scope, action, text;
	size_t bang; /* offset of '!', or SIZE_MAX */
	int tablekind; /* TABLE_HASH or TABLE_CIDR for "table:PATH" or "cidr:PATH", else -1 */
	struct field tablepath;
	struct pattern pat;
	uint32_t opts;
	int global;
};

/* "table:PATH" or "cidr:PATH" at *i instead of a pattern: 1 (and *i after it), else 0. */
static int
line_table(const char *s, size_t len, size_t *i, struct ruleline *rl)
{
	static const struct {
		const char *prefix;
		int kind;
	} kinds[] = {{"table:", TABLE_HASH}, {"cidr:", TABLE_CIDR}};
	size_t k, n;

	rl->tablekind = -1;
	for (k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		n = strlen(kinds[k].prefix);
		if (len - *i >= n && memcmp(s + *i, kinds[k].prefix, n) == 0) {
			rl->tablekind = kinds[k].kind;
			rl->tablepath.off = *i + n;
			*i = skip_word(s, len, *i + n);
			rl->tablepath.len = *i - rl->tablepath.off;
			return 1;
		}
	}
	return 0;
}

/*
 * Reads the action and the text from i; a text in double quotes loses them and keeps its
 * leading and trailing spaces (issue 17).  0 when the action is missing (reported).
 */
static int
line_action(struct loader *ld, const char *s, size_t len, size_t i, struct ruleline *rl)
{
	i = skip_blanks(s, len, i);
	if (i == len) {
		load_error(ld, i, "missing action");
		return 0;
	}
	rl->action.off = i;
	i = skip_word(s, len, i);
	rl->action.len = i - rl->action.off;
	rl->text.off = skip_blanks(s, len, i);
	rl->text.len = len - rl->text.off;
	ld->quoted = rl->text.len >= 2 && s[rl->text.off] == '"' && s[len - 1] == '"';
	if (ld->quoted) {
		rl->text.off++;
		rl->text.len -= 2;
	}
	return 1;
}

/*
 * Splits the rest of a rule line, from i after the scope, into its fields; 0 when it cannot
 * be read further (error reported).
 */
static int
line_split(struct loader *ld, const char *s, size_t len, size_t i, struct ruleline *rl)
{
	char q[40];
	int rc;

	i = skip_blanks(s, len, i);
	rl->bang = SIZE_MAX;
	if (i < len && s[i] == '!')
		rl->bang = i++;
	if (line_table(s, len, &i, rl))
		return line_action(ld, s, len, i, rl);
	if (i == len || s[i] != '/') {
		if (i == len)
			load_error(ld, i, "missing pattern: expected '/'");
		else
			load_error(ld, i, "expected '/' to start the pattern, not '%s'",
			           quote(s + i, 1, q, sizeof(q)));
		return 0;
	}
	if ((rc = pattern_scan(ld, s, len, &i, &rl->pat)) <= 0)
		return rc;
	rl->opts = flags_scan(ld, s, len, &i, &rl->global);
	return line_action(ld, s, len, i, rl);
}

/* An error of a table file, as "TABLE:LINE:COLUMN: message"; the rule's line when unreadable. */
static void
line_table_error_cb(void *arg, const char *file, unsigned int line, size_t col, const char *msg)
{
	struct loader *ld = arg;

	if (line == 0) {
		load_error(ld, ld->tableoff, "table %s: %s", file, msg);
		return;
	}
	ld->nerrors++;
	ld->lineerrors++;
	if (ld->errors != NULL)
		fprintf(ld->errors, "%s:%u:%zu: %s\n", file, line, col + 1, msg);
}

/*
 * Loads the table a rule names, after checking that its scope can use it: table: for
 * sender, recipient and client, cidr: for client.  0 when loaded or reported, -1 on ENOMEM.
 */
static int
line_table_load(struct loader *ld, const char *s, const struct ruleline *rl, int scope,
                struct rule *r)
{
	char *path;
	int nomem;

	ld->tableoff = rl->tablepath.off;
	if (rl->tablepath.len == 0) {
		load_error(ld, rl->tablepath.off, "missing table path");
		return 0;
	}
	if (scope >= 0 && scope != SCOPE_CLIENT &&
	    (rl->tablekind == TABLE_CIDR || (scope != SCOPE_SENDER && scope != SCOPE_RECIPIENT))) {
		load_error(ld, rl->tablepath.off - (rl->tablekind == TABLE_CIDR ? 5 : 6),
		           "%s tables are for the %s scopes only",
		           rl->tablekind == TABLE_CIDR ? "cidr:" : "table:",
		           rl->tablekind == TABLE_CIDR ? "client" : "sender, recipient and client");
		return 0;
	}
	if ((path = strndup(s + rl->tablepath.off, rl->tablepath.len)) == NULL)
		return -1;
	r->table = table_load((enum table_kind)rl->tablekind, path, line_table_error_cb, ld, &nomem);
	free(path);
	return nomem ? -1 : 0;
}

/* The scope word that starts a rule line: its index, or -1 (reported). */
static int
line_scope(struct loader *ld, const char *s, size_t len, struct ruleline *rl)
{
	char q[40];
	int scope;

	rl->scope.off = skip_blanks(s, len, 0);
	rl->scope.len = skip_word(s, len, rl->scope.off) - rl->scope.off;
	scope = lookup_name(scope_names, SCOPE_COUNT, s + rl->scope.off, rl->scope.len);
	if (scope < 0)
		load_error(ld, rl->scope.off, "unknown scope '%s'",
		           quote(s + rl->scope.off, rl->scope.len, q, sizeof(q)));
	return scope;
}

/*
 * The action word, checked against the scope, the negation and a table: its index, ACT_NONE
 * when unknown (every problem reported).
 */
static int
line_verdict(struct loader *ld, const char *s, const struct ruleline *rl, int scope)
{
	char q[40];
	int act = lookup_name(action_names + 1, ACT_PASS, s + rl->action.off, rl->action.len) + 1;

	if (act == ACT_NONE)
		load_error(ld, rl->action.off, "unknown action '%s'",
		           quote(s + rl->action.off, rl->action.len, q, sizeof(q)));
	else if (scope >= 0 && !(action_scopes[act] & SCOPE_BIT(scope)))
		load_error(ld, rl->action.off, "%s is not allowed in scope %s", action_names[act],
		           scope_names[scope]);
	if (act == ACT_REWRITE && rl->bang != SIZE_MAX)
		load_error(ld, rl->bang,
		           "REWRITE cannot be negated: a line that does not match "
		           "has nothing to replace");
	if (rl->tablekind >= 0 && act != ACT_NONE && act != ACT_REJECT && act != ACT_DISCONNECT &&
	    act != ACT_WARN && act != ACT_PASS)
		load_error(ld, rl->action.off,
		           "a table rule can only REJECT, DISCONNECT, WARN or PASS");
	return act;
}

/*
 * The rule of a line read to its end: added to the set when the line had no problem, else
 * freed.  0, or -1 on ENOMEM.
 */
static int
line_commit(struct loader *ld, const char *s, const struct ruleline *rl, int scope, int act,
            struct rule *r)
{
	int rc = 0;

	if (ld->lineerrors == 0) {
		r->file = ld->file;
		r->line = ld->lineno;
		r->scope = (enum rule_scope)scope;
		r->action = (enum rule_action)act;
		r->negate = rl->bang != SIZE_MAX;
		r->global = rl->global;
		if ((rc = rule_add(ld, r, s + rl->text.off, rl->text.len)) == 0)
			return 0;
	}
	pcre2_code_free(r->code);
	table_free(r->table);
	return rc;
}

/* Parses, checks and compiles one line of a rule file; 0 when fine or reported, -1 on ENOMEM. */
static int
line_parse(struct loader *ld, const char *s, size_t len)
{
	struct ruleline rl;
	struct rule r;
	const char *nul;
	int scope, act, rc;

	memset(&rl, 0, sizeof(rl));
	memset(&r, 0, sizeof(r));
	if ((nul = memchr(s, '\0', len)) != NULL) {
		load_error(ld, (size_t)(nul - s), "NUL octet in a rule file");
		return 0;
	}
	scope = line_scope(ld, s, len, &rl);
	if ((rc = line_split(ld, s, len, rl.scope.off + rl.scope.len, &rl)) <= 0) {
		pattern_free(&rl.pat);
		return rc;
	}
	if (rl.tablekind >= 0) {
		if (line_table_load(ld, s, &rl, scope, &r) == -1)
			return -1;
	} else if ((r.code = pattern_compile(ld, &rl.pat, rl.opts)) != NULL) {
		pattern_warn(ld, &rl.pat);
	}
	act = line_verdict(ld, s, &rl, scope);
	if (act != ACT_NONE)
		text_check(ld, (enum rule_action)act, s, rl.action.off + rl.action.len, rl.text,
		           r.code, rl.opts);
	if (r.code != NULL) {
		prefilter_learn(&r.pf, rl.pat.text, rl.pat.len, rl.opts);
		r.jit = jit_direct(r.code);
	}
	pattern_free(&rl.pat);
	return line_commit(ld, s, &rl, scope, act, &r);
}

/* Reads one rule file line by line; -1 on ENOMEM. */
static int
file_load(struct loader *ld, FILE *fp)
{
	char *buf = NULL;
	size_t size = 0, len, i;
	ssize_t n;
	int rc = 0;

	ld->lineno = 0;
	while (rc == 0 && (n = getline(&buf, &size, fp)) != -1) {
		ld->lineno++;
		ld->lineerrors = 0;
		len = (size_t)n;
		if (len > 0 && buf[len - 1] == '\n')
			len--;
		if (len > 0 && buf[len - 1] == '\r')
			len--;
		while (len > 0 && is_blank((unsigned char)buf[len - 1]))
			len--;
		i = skip_blanks(buf, len, 0);
		if (i == len || buf[i] == '#')
			continue;
		rc = line_parse(ld, buf, len);
	}
	if (rc == 0 && ferror(fp)) {
		ld->lineno = 0;
		load_error(ld, (size_t)-1, "cannot read: %s", strerror(errno));
	}
	free(buf);
	return rc;
}

/* Loads one file by name, keeping its name for hits and errors. */
static int
rules_load_file(struct loader *ld, const char *name)
{
	struct ruleset *rs = ld->rs;
	FILE *fp;
	int rc;

	if ((rs->files[rs->nfiles] = strdup(name)) == NULL)
		return -1;
	ld->file = rs->files[rs->nfiles++];
	if ((fp = fopen(name, "r")) == NULL) {
		ld->lineno = 0;
		load_error(ld, (size_t)-1, "cannot open: %s", strerror(errno));
		return 0;
	}
	rc = file_load(ld, fp);
	fclose(fp);
	return rc;
}

/* Files the rules of a scope under their prefilter keys, when that is possible and useful. */
static int
rules_file_keys(struct ruleset *rs, int s)
{
	int i, any = 0;

	if (rs->nbyscope[s] == 0 || rs->nbyscope[s] > 64)
		return 0;
	for (i = 0; i < rs->nbyscope[s]; i++)
		any |= rs->skipneed[s][i] != 0;
	if (!any)
		return 0;
	if ((rs->cand[s] = calloc(64, sizeof(uint64_t))) == NULL)
		return -1;
	for (i = 0; i < rs->nbyscope[s]; i++)
		if (rs->skipneed[s][i] != 0)
			rs->cand[s][prefilter_key(&rs->byscope[s][i]->pf)] |= 1ULL << i;
		else
			rs->always[s] |= 1ULL << i;
	return 0;
}

/* Sorts the rules by scope, keeping file order, and notes whether messages must be held. */
static int
rules_index(struct ruleset *rs)
{
	const struct rule *r;
	int i, s;

	for (i = 0; i < rs->nrules; i++) {
		r = &rs->rules[i];
		rs->nbyscope[r->scope]++;
		if ((r->scope == SCOPE_HEADER || r->scope == SCOPE_BODY) &&
		    (r->action == ACT_REJECT || r->action == ACT_DISCONNECT))
			rs->holds = 1;
	}
	for (s = 0; s < SCOPE_COUNT; s++) {
		if (rs->nbyscope[s] == 0)
			continue;
		if ((rs->byscope[s] = calloc((size_t)rs->nbyscope[s], sizeof(*rs->byscope[s]))) ==
		        NULL ||
		    (rs->skipneed[s] = calloc((size_t)rs->nbyscope[s], sizeof(uint64_t))) == NULL)
			return -1;
		rs->nbyscope[s] = 0;
	}
	for (i = 0; i < rs->nrules; i++) {
		r = &rs->rules[i];
		/* A negated rule acts on lines it does not match: never skipped. */
		if (r->pf.active && !r->negate)
			rs->skipneed[r->scope][rs->nbyscope[r->scope]] = r->pf.need;
		rs->byscope[r->scope][rs->nbyscope[r->scope]++] = r;
	}
	for (s = 0; s < SCOPE_COUNT; s++)
		if (rules_file_keys(rs, s) == -1)
			return -1;
	return 0;
}

/* The match data, sized for the pattern with most groups, and a JIT stack for deep patterns. */
static int
rules_prepare(struct ruleset *rs, uint32_t maxgroups)
{
	if ((rs->md = pcre2_match_data_create(maxgroups + 1, NULL)) == NULL ||
	    (rs->mctx = pcre2_match_context_create(NULL)) == NULL)
		return -1;
	pcre2_set_match_limit(rs->mctx, RULES_MATCH_LIMIT);
	pcre2_set_depth_limit(rs->mctx, RULES_DEPTH_LIMIT);
	rs->jit = pcre2_jit_stack_create(RULES_JIT_STACK_MIN, RULES_JIT_STACK_MAX, NULL);
	if (rs->jit != NULL)
		pcre2_jit_stack_assign(rs->mctx, NULL, rs->jit);
	return 0;
}

struct ruleset *
rules_load(const char *const *files, int nfiles, FILE *errors)
{
	return rules_load_warn(files, nfiles, errors, NULL);
}

struct ruleset *
rules_load_warn(const char *const *files, int nfiles, FILE *errors, FILE *warnings)
{
	struct loader ld;
	int i, rc = 0;

	memset(&ld, 0, sizeof(ld));
	ld.errors = errors;
	ld.warnings = warnings;
	if ((ld.rs = calloc(1, sizeof(*ld.rs))) == NULL ||
	    (ld.rs->files = calloc((size_t)nfiles + 1, sizeof(char *))) == NULL ||
	    (ld.cctx = pcre2_compile_context_create(NULL)) == NULL)
		goto nomem;
	ld.rs->refs = 1;
	/* A folded header keeps its CRLFs: let ^ $ . see CRLF as one newline. */
	pcre2_set_newline(ld.cctx, PCRE2_NEWLINE_ANYCRLF);
	for (i = 0; i < nfiles && rc == 0; i++)
		rc = rules_load_file(&ld, files[i]);
	if (rc == -1)
		goto nomem;
	pcre2_compile_context_free(ld.cctx);
	if (ld.nerrors > 0) {
		rules_free(ld.rs);
		return NULL;
	}
	if (rules_index(ld.rs) == -1 || rules_prepare(ld.rs, ld.maxgroups) == -1) {
		ld.cctx = NULL;
		goto nomem;
	}
	return ld.rs;
nomem:
	if (errors != NULL)
		fprintf(errors, "smtptap: rules: %s\n", strerror(ENOMEM));
	pcre2_compile_context_free(ld.cctx);
	rules_free(ld.rs);
	return NULL;
}

struct ruleset *
rules_ref(struct ruleset *rs)
{
	if (rs != NULL)
		rs->refs++;
	return rs;
}

void
rules_free(struct ruleset *rs)
{
	int i;

	if (rs == NULL || --rs->refs > 0)
		return;
	for (i = 0; i < rs->nrules; i++) {
		pcre2_code_free(rs->rules[i].code);
		table_free(rs->rules[i].table);
		free(rs->rules[i].text);
	}
	free(rs->rules);
	for (i = 0; i < rs->nfiles; i++)
		free(rs->files[i]);
	free(rs->files);
	for (i = 0; i < SCOPE_COUNT; i++) {
		free(rs->byscope[i]);
		free(rs->skipneed[i]);
		free(rs->cand[i]);
	}
	pcre2_match_data_free(rs->md);
	pcre2_match_context_free(rs->mctx);
	pcre2_jit_stack_free(rs->jit);
	free(rs);
}

int
rules_count(const struct ruleset *rs)
{
	return rs == NULL ? 0 : rs->nrules;
}

int
rules_nfiles(const struct ruleset *rs)
{
	return rs == NULL ? 0 : rs->nfiles;
}

void
rules_describe(const struct ruleset *rs, int rule, const char **file, unsigned int *line,
               enum rule_scope *scope, enum rule_action *action)
{
	const struct rule *r = &rs->rules[rule];

	if (file != NULL)
		*file = r->file;
	if (line != NULL)
		*line = r->line;
	if (scope != NULL)
		*scope = r->scope;
	if (action != NULL)
		*action = r->action;
}

int
rules_holds_messages(const struct ruleset *rs)
{
	return rs != NULL && rs->holds;
}

int
rules_has_scope(const struct ruleset *rs, enum rule_scope scope)
{
	return rs != NULL && (int)scope >= 0 && scope < SCOPE_COUNT && rs->nbyscope[scope] > 0;
}

void
rule_outcome_init(struct rule_outcome *out)
{
	memset(out, 0, sizeof(*out));
}

void
rule_outcome_reset(struct rule_outcome *out)
{
	size_t i;

	for (i = 0; i < out->nhits; i++) {
		free((void *)out->hits[i].orig);
		free((void *)out->hits[i].repl);
	}
	out->nhits = 0;
	out->nwarnings = 0;
	out->nprepend = 0;
	out->verdict = ACT_NONE;
	out->line = NULL;
	out->len = 0;
	out->rewritten = 0;
	out->reply = NULL;
	out->tempfail = 0;
}

void
rule_outcome_free(struct rule_outcome *out)
{
	rule_outcome_reset(out);
	free(out->hits);
	free(out->prepend);
	free(out->buf[0]);
	free(out->buf[1]);
	free(out->buf[2]);
	rule_outcome_init(out);
}

static unsigned char *
memdup(const unsigned char *p, size_t n)
{
	unsigned char *d;

	if ((d = malloc(n + 1)) == NULL)
		return NULL;
	if (n > 0)
		memcpy(d, p, n);
	d[n] = '\0';
	return d;
}

/* Records what rule r did; before is the line it saw, after the line it made (REWRITE). */
static int
outcome_hit(struct rule_outcome *out, const struct rule *r, enum rule_action act, const char *text,
            int failed, const unsigned char *before, size_t beforelen)
{
	struct rule_hit *h;

	if (out->nhits == out->hitsize) {
		if ((h = reallocarray(out->hits, out->hitsize * 2 + 4, sizeof(*h))) == NULL)
			return -1;
		out->hits = h;
		out->hitsize = out->hitsize * 2 + 4;
	}
	h = &out->hits[out->nhits];
	memset(h, 0, sizeof(*h));
	h->rule = r->id;
	h->file = r->file;
	h->line = r->line;
	h->scope = r->scope;
	h->action = act;
	h->failed = failed;
	h->text = text;
	h->orig_len = beforelen;
	if ((h->orig = memdup(before, beforelen)) == NULL)
		return -1;
	if (act == ACT_REWRITE && !failed) {
		h->repl_len = out->len;
		if ((h->repl = memdup(out->line, out->len)) == NULL) {
			free((void *)h->orig);
			return -1;
		}
	}
	out->nhits++;
	if (failed || act == ACT_WARN)
		out->nwarnings++;
	return 0;
}

static int
outcome_prepend(struct rule_outcome *out, const char *text)
{
	const char **p;

	if (out->nprepend == out->prependsize) {
		if ((p = reallocarray(out->prepend, out->prependsize * 2 + 2, sizeof(*p))) == NULL)
			return -1;
		out->prepend = p;
		out->prependsize = out->prependsize * 2 + 2;
	}
	out->prepend[out->nprepend++] = text;
	return 0;
}

static int
outcome_reserve(struct rule_outcome *out, int k, size_t size)
{
	unsigned char *b;

	if (out->bufsize[k] >= size)
		return 0;
	if ((b = realloc(out->buf[k], size)) == NULL)
		return -1;
	out->buf[k] = b;
	out->bufsize[k] = size;
	return 0;
}

/* Why a PCRE2 call failed, as a static string for a failed hit. */
static const char *
pcre2_reason(int rc)
{
	switch (rc) {
	case PCRE2_ERROR_MATCHLIMIT:
		return "match limit exceeded";
	case PCRE2_ERROR_DEPTHLIMIT:
		return "depth limit exceeded";
	case PCRE2_ERROR_HEAPLIMIT:
		return "heap limit exceeded";
	case PCRE2_ERROR_JIT_STACKLIMIT:
		return "JIT stack limit exceeded";
	case PCRE2_ERROR_NOMEMORY:
		return "out of memory";
	default:
		return "PCRE2 error";
	}
}

/*
 * A rule that could not be evaluated (a PCRE2 limit, say).  On a client's line (commands,
 * headers, body) it fails closed: the line is refused with a temporary failure, since
 * skipping the rule would let an allow-list (`mail !/.../ REJECT`) pass what it was meant to
 * stop.  On a server's line (banner, reply, capability) there is nothing to refuse: the rule
 * is skipped, and recorded as failed either way.
 */
static int
rule_failed(struct rule_outcome *out, const struct rule *r, int rc)
{
	if (!(SCOPE_BIT(r->scope) & (SCOPES_COMMANDS | SCOPES_MESSAGE)))
		return outcome_hit(out, r, r->action, pcre2_reason(rc), 1, out->line, out->len);
	if (outcome_hit(out, r, r->action, pcre2_reason(rc), 1, out->line, out->len) == -1)
		return -1;
	out->verdict = ACT_REJECT;
	out->reply = RULES_TEMPFAIL_REPLY;
	out->tempfail = 1;
	return 1;
}

/*
 * Substitutes the match of r in the current line (after skip octets, kept as they are) into
 * the buffer the line is not in; the match data already holds the first match.
 */
static int
rule_rewrite(const struct ruleset *rs, const struct rule *r, size_t skip, struct rule_outcome *out)
{
	const unsigned char *before = out->line;
	size_t beforelen = out->len, outlen;
	uint32_t opts;
	int k = out->line == out->buf[0] ? 1 : 0, rc;

	opts = PCRE2_SUBSTITUTE_OVERFLOW_LENGTH | PCRE2_SUBSTITUTE_UNSET_EMPTY |
	       PCRE2_SUBSTITUTE_MATCHED | (r->global ? PCRE2_SUBSTITUTE_GLOBAL : 0);
	if (outcome_reserve(out, k, beforelen + r->textlen + 256) == -1)
		return -1;
	for (;;) {
		outlen = out->bufsize[k] - skip;
		rc = pcre2_substitute(r->code, before + skip, beforelen - skip, 0, opts, rs->md,
		                      rs->mctx, (PCRE2_SPTR)r->text, r->textlen, out->buf[k] + skip,
		                      &outlen);
		if (rc != PCRE2_ERROR_NOMEMORY || !(opts & PCRE2_SUBSTITUTE_MATCHED))
			break;
		/* outlen is now the length needed; the match data moved on, so match again. */
		if (outcome_reserve(out, k, skip + outlen) == -1)
			return -1;
		opts &= ~PCRE2_SUBSTITUTE_MATCHED;
	}
	if (rc < 0) /* a limit met part way: as for any match, fail closed on a client's line */
		return rule_failed(out, r, rc);
	if (skip > 0)
		memcpy(out->buf[k], before, skip);
	out->line = out->buf[k];
	out->len = skip + outlen;
	out->rewritten = 1;
	return outcome_hit(out, r, ACT_REWRITE, NULL, 0, before, beforelen);
}

/* The octets of the current line, gathered when a rule first needs them. */
struct linescan {
	uint64_t octets;
	int valid;
};

static inline uint64_t
linescan_octets(struct linescan *ls, const struct rule_outcome *out)
{
	if (!ls->valid) {
		ls->octets = prefilter_scan(out->line, out->len);
		ls->valid = 1;
	}
	return ls->octets;
}

/*
 * Whether the prefilter proves that r does not match the current line.  The octets of the
 * whole line are those of the part a capability rule sees, and more: a safe superset.
 */
static inline int
rule_cannot_match(const struct rule *r, const struct rule_outcome *out, struct linescan *ls)
{
	return r->pf.active && !prefilter_may_match(&r->pf, linescan_octets(ls, out));
}

/* Matches r against the current line: pcre2_match()'s result, or NOMATCH from the prefilter. */
static int
rule_match(const struct ruleset *rs, const struct rule *r, size_t skip,
           const struct rule_outcome *out, struct linescan *ls)
{
	if (rule_cannot_match(r, out, ls))
		return PCRE2_ERROR_NOMATCH;
	if (r->jit)
		return pcre2_jit_match(r->code, out->line + skip, out->len - skip, 0, 0, rs->md,
		                       rs->mctx);
	return pcre2_match(r->code, out->line + skip, out->len - skip, 0, 0, rs->md, rs->mctx);
}

/*
 * Tries a table rule: a key found (or, negated, none found) acts with the entry's action and
 * text when it names them, else the rule's.  As rule_eval().
 */
static int
rule_eval_table(const struct rule *r, struct rule_outcome *out)
{
	const struct table_entry *e;
	enum rule_action act = r->action;
	const char *text = r->text;

	e = r->scope == SCOPE_CLIENT ? table_lookup_client(r->table, out->line, out->len)
	                             : table_lookup_address(r->table, out->line, out->len);
	if ((e != NULL) == r->negate)
		return 0;
	if (e != NULL && e->action != ACT_NONE) {
		act = e->action;
		text = e->text;
		if (text == NULL && (act == ACT_REJECT || act == ACT_DISCONNECT))
			text = rules_default_reply(r->scope, act);
	}
	if (act == ACT_WARN)
		return outcome_hit(out, r, act, text, 0, out->line, out->len);
	if (act == ACT_REJECT || act == ACT_DISCONNECT)
		out->reply = text;
	out->verdict = act;
	return outcome_hit(out, r, act, text, 0, out->line, out->len) == -1 ? -1 : 1;
}

/* Tries one rule on the current line: 1 when the evaluation ends, 0 to go on, -1 on ENOMEM. */
static int
rule_eval(const struct ruleset *rs, const struct rule *r, struct rule_outcome *out,
          struct linescan *ls)
{
	size_t skip = 0;
	int rc;

	if (r->table != NULL)
		return rule_eval_table(r, out);
	/* A capability rule sees the extension without "250-". */
	if (r->scope == SCOPE_CAPABILITY)
		skip = out->len < 4 ? out->len : 4;
	rc = rule_match(rs, r, skip, out, ls);
	if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)
		return rule_failed(out, r, rc);
	if ((rc >= 0) == r->negate)
		return 0;
	switch (r->action) {
	case ACT_REWRITE:
		ls->valid = 0; /* the line changes */
		return rule_rewrite(rs, r, skip, out);
	case ACT_PREPEND:
		if (outcome_prepend(out, r->text) == -1)
			return -1;
		/* FALLTHROUGH */
	case ACT_WARN:
		return outcome_hit(out, r, r->action, r->text, 0, out->line, out->len);
	case ACT_REJECT:
	case ACT_DISCONNECT:
		out->reply = r->text;
		/* FALLTHROUGH */
	default:
		out->verdict = r->action;
		if (outcome_hit(out, r, r->action, r->text, 0, out->line, out->len) == -1)
			return -1;
		return 1;
	}
}

/* The rules of scope s that a line with these octet classes may need to be tried against. */
static uint64_t
rules_candidates(const struct ruleset *rs, int s, uint64_t have)
{
	uint64_t m = rs->always[s];

	for (; have != 0; have &= have - 1)
		m |= rs->cand[s][__builtin_ctzll(have)];
	return m;
}

/* Runs the line through the rules of one scope: the common case, made cheap. */
static int
apply_list(const struct ruleset *rs, int s, struct rule_outcome *out)
{
	const struct rule *const *list = rs->byscope[s];
	const uint64_t *need = rs->skipneed[s];
	struct linescan ls = {0, 0};
	uint64_t m;
	int i, rc;

	if (rs->cand[s] == NULL) {
		for (i = 0; i < rs->nbyscope[s]; i++) {
			/* Most rules miss most lines: those the prefilter rules out cost little. */
			if (need[i] != 0 && (need[i] & ~linescan_octets(&ls, out)) != 0)
				continue;
			if ((rc = rule_eval(rs, list[i], out, &ls)) != 0)
				return rc;
		}
		return 0;
	}
	/* In file order, only the rules filed under a class the line has, and those always tried. */
	m = rules_candidates(rs, s, linescan_octets(&ls, out));
	while (m != 0) {
		i = __builtin_ctzll(m);
		m &= m - 1;
		if ((need[i] & ~ls.octets) != 0)
			continue;
		if ((rc = rule_eval(rs, list[i], out, &ls)) != 0)
			return rc;
		/* Rewritten: the rules after this one see another line. */
		if (!ls.valid)
			m = rules_candidates(rs, s, linescan_octets(&ls, out)) & (~0ULL << i << 1);
	}
	return 0;
}

/* Runs the line through the rules of several scopes, merged by rule id (file order). */
static int
apply_merged(const struct ruleset *rs, const struct rule *const *const *list, const int *n,
             int nlists, struct rule_outcome *out)
{
	struct linescan ls = {0, 0};
	int pos[SCOPE_COUNT] = {0};
	int k, best, rc;

	for (;;) {
		best = -1;
		for (k = 0; k < nlists; k++)
			if (pos[k] < n[k] &&
			    (best < 0 || list[k][pos[k]]->id < list[best][pos[best]]->id))
				best = k;
		if (best < 0)
			return 0;
		if ((rc = rule_eval(rs, list[best][pos[best]++], out, &ls)) != 0)
			return rc;
	}
}

/* rules_apply() that keeps the hits and PREPENDs already in out. */
static int
rules_apply_more(const struct ruleset *rs, const enum rule_scope *scopes, int nscopes,
                 const unsigned char *line, size_t len, struct rule_outcome *out)
{
	const struct rule *const *list[SCOPE_COUNT];
	unsigned int want = 0;
	int n[SCOPE_COUNT];
	int i, s = 0, nlists = 0, rc;

	out->verdict = ACT_NONE;
	out->rewritten = 0;
	out->reply = NULL;
	out->line = line != NULL ? line : (const unsigned char *)"";
	out->len = len;
	if (rs == NULL)
		return ACT_NONE;
	for (i = 0; i < nscopes; i++) {
		if ((int)scopes[i] < 0 || scopes[i] >= SCOPE_COUNT || (want & SCOPE_BIT(scopes[i])))
			continue;
		want |= SCOPE_BIT(scopes[i]);
		if (rs->nbyscope[scopes[i]] > 0) {
			s = scopes[i];
			list[nlists] = rs->byscope[s];
			n[nlists++] = rs->nbyscope[s];
		}
	}
	if (nlists == 0)
		return ACT_NONE;
	rc = nlists == 1 ? apply_list(rs, s, out)
	                 : apply_merged(rs, list, n, nlists, out);
	return rc == -1 ? -1 : (int)out->verdict;
}

int
rules_apply(const struct ruleset *rs, const enum rule_scope *scopes, int nscopes,
            const unsigned char *line, size_t len, struct rule_outcome *out)
{
	rule_outcome_reset(out);
	return rules_apply_more(rs, scopes, nscopes, line, len, out);
}

/*
 * Rebuilds a MAIL or RCPT line around a rewritten address in buf[2]: the address (in the
 * internal form the rules saw) written as a path, quoted where it must be.  -1 on ENOMEM, -2
 * when no path says the address (smtp/address.h, address_path): the line is not sent.
 */
static int
envelope_rebuild(struct rule_outcome *out, const unsigned char *line, size_t len, size_t argoff,
                 const struct address *a, int empty_ok, size_t *outlen)
{
	size_t head = argoff + a->path_off, tail = argoff + a->path_off + a->path_len;
	long n;

	if (outcome_reserve(out, 2, head + ADDRESS_PATH_MAX(out->len) + (len - tail)) == -1)
		return -1;
	if ((n = address_path(out->line, out->len, empty_ok, out->buf[2] + head)) < 0)
		return -2;
	memcpy(out->buf[2], line, head);
	memcpy(out->buf[2] + head + n, line + tail, len - tail);
	*outlen = head + (size_t)n + len - tail;
	return 0;
}

/*
 * A REWRITE made an address no path can carry ('<', '>', a control octet, no domain after
 * its '@'): the rule's fault, not the client's, so the command is refused with a temporary
 * failure, as for a rule that could not be evaluated.  Sending it would let the client's text
 * close the path and add parameters of its own.
 */
static int
envelope_invalid(struct rule_outcome *out, enum rule_scope addrscope)
{
	size_t i = out->nhits;

	while (i > 0 && !(out->hits[i - 1].action == ACT_REWRITE &&
	                  out->hits[i - 1].scope == addrscope))
		i--;
	if (i > 0) {
		out->hits[i - 1].failed = 1;
		out->hits[i - 1].text = RULES_ENVELOPE_INVALID;
		out->nwarnings++;
	}
	out->verdict = ACT_REJECT;
	out->reply = RULES_ENVELOPE_INVALID_REPLY;
	out->tempfail = 1;
	return ACT_REJECT;
}

int
rules_apply_envelope(const struct ruleset *rs, enum rule_scope addrscope,
                     const enum rule_scope *scopes, int nscopes, const unsigned char *line,
                     size_t len, size_t argoff, struct rule_outcome *out)
{
	size_t arglen = argoff <= len ? len - argoff : 0;
	struct address a;
	int v, rewritten;

	rule_outcome_reset(out);
	if (!rules_has_scope(rs, addrscope) || argoff > len)
		return rules_apply_more(rs, scopes, nscopes, line, len, out);
	if (outcome_reserve(out, 2, arglen + 1) == -1)
		return -1;
	address_parse(line + argoff, arglen, addrscope == SCOPE_SENDER ? "FROM" : "TO", &a,
	              out->buf[2]);
	if ((v = rules_apply_more(rs, &addrscope, 1, out->buf[2], a.len, out)) == -1)
		return -1;
	if (v == ACT_REJECT || v == ACT_DISCONNECT)
		return v;
	if ((rewritten = out->rewritten)) {
		if (!a.ok) {
			/* No path to put the new address in: refuse, as the server would. */
			out->verdict = ACT_REJECT;
			out->reply = RULES_ENVELOPE_SYNTAX;
			return ACT_REJECT;
		}
		switch (envelope_rebuild(out, line, len, argoff, &a, addrscope == SCOPE_SENDER, &len)) {
		case -1:
			return -1;
		case -2:
			return envelope_invalid(out, addrscope);
		}
		line = out->buf[2];
	}
	if (v == ACT_PASS) {
		out->line = line;
		out->len = len;
		out->rewritten = rewritten;
		return v;
	}
	if ((v = rules_apply_more(rs, scopes, nscopes, line, len, out)) == -1)
		return -1;
	out->rewritten |= rewritten;
	return v;
}
