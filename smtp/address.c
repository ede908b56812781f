/*
 * MAIL FROM / RCPT TO addresses, read as Postfix's smtpd reads them (issue 17): the path is one
 * smtpd_token, and the address is what Postfix's extract_addr() makes of it (tok822_parse(),
 * then tok822_internalize()): comments and white space gone, quotes and backslashes undone.
 */
#include "smtp/address.h"

#include <string.h>
#include <strings.h>

/* The single-octet operators of Postfix's RFC 822 tokenizer (tok822_opchar): '|', '%', '!' and
 * RFC 822's specials.  '(' '"' '[' start a comment, quoted string, domain literal instead. */
#define ADDRESS_OPERATORS "|%!()<>@,;:\".[]"

/* Token types of the address grammar, one octet each; an operator is its own octet. */
#define TOK_ATOM 'a'
#define TOK_QSTRING 'q'
#define TOK_DOMLIT 'd'
#define TOK_COMMENT 'c'

#define DO_WORD 1  /* a word may come next (the one to its right was an operator) */
#define DO_GROUP 2 /* inside a named group ("name: a@b;") */

/* The octets RFC 5322 atext allows, besides letters, digits and UTF-8 (RFC 6531). */
#define ADDRESS_ATEXT "!#$%&'*+-/=?^_`{|}~"

int
address_is_space(int c)
{
	return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r' || c == '\n';
}

/* The white space between RFC 822 tokens (Postfix's IS_SPACE_TAB_CR_LF: not VT or FF). */
static int
address_is_822_space(int c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static size_t
address_skip_space(const unsigned char *s, size_t len, size_t i)
{
	while (i < len && address_is_space(s[i]))
		i++;
	return i;
}

/*
 * The end of the path at i, as smtpd_token ends a token: at white space outside quotes and
 * brackets, where '<' opens a bracket that nests, '"' a quoted string ('<' and '>' are text in
 * it), and a backslash quotes the next octet.  A bracketed path ends after its closing '>' (what
 * follows is parameters).  0 when a bracket or a quoted string is never closed.
 */
static size_t
address_path_end(const unsigned char *s, size_t len, size_t i, int bracketed)
{
	size_t depth = 0;
	int quoted = 0;

	for (; i < len; i++) {
		if (s[i] == '\\') {
			if (++i == len)
				break;
		} else if (quoted) {
			quoted = s[i] != '"';
		} else if (s[i] == '"') {
			quoted = 1;
		} else if (s[i] == '<') {
			depth++;
		} else if (s[i] == '>' && depth > 0) {
			if (--depth == 0 && bracketed)
				return i + 1;
		} else if (depth == 0 && address_is_space(s[i])) {
			return i;
		}
	}
	return depth > 0 || quoted ? 0 : len;
}

/* Copies octet c of a token's text to out (when not NULL), white space as a space. */
static void
address_put(unsigned char *out, size_t *o, int c)
{
	if (out != NULL)
		out[*o] = address_is_822_space(c) ? ' ' : (unsigned char)c;
	(*o)++;
}

/* Collects the text of a quoted string or domain literal up to its closing octet. */
static size_t
address_collect(const unsigned char *p, size_t n, size_t i, int close, unsigned char *out,
                 size_t *o)
{
	for (; i < n && p[i] != close; i++) {
		if (p[i] == '\\' && ++i == n)
			return n;
		address_put(out, o, p[i]);
	}
	return i < n ? i + 1 : n;
}

/* The end of a comment starting after its '(' at i: comments nest, a backslash quotes. */
static size_t
address_skip_comment(const unsigned char *p, size_t n, size_t i)
{
	size_t level = 1;

	for (; i < n; i++) {
		if (p[i] == '\\')
			i++;
		else if (p[i] == '(')
			level++;
		else if (p[i] == ')' && --level == 0)
			return i + 1;
	}
	return n;
}

/*
 * Reads the RFC 822 token at *i of p (tok822_scan): returns its type (0 at the end) and moves
 * *i past it.  When out is not NULL, appends the token's internal form at out + *o: a quoted
 * string without its quotes, backslashes undone, a domain literal with its brackets.
 */
static int
address_token(const unsigned char *p, size_t n, size_t *i, unsigned char *out, size_t *o)
{
	size_t k = *i;
	int c;

	while (k < n && address_is_822_space(p[k]))
		k++;
	if (k == n) {
		*i = n;
		return 0;
	}
	c = p[k++];
	if (c == '(') {
		*i = address_skip_comment(p, n, k);
		return TOK_COMMENT;
	}
	if (c == '"') {
		*i = address_collect(p, n, k, '"', out, o);
		return TOK_QSTRING;
	}
	if (c == '[') {
		address_put(out, o, '[');
		*i = address_collect(p, n, k, ']', out, o);
		address_put(out, o, ']');
		return TOK_DOMLIT;
	}
	if (c != '\\' && strchr(ADDRESS_OPERATORS, c) != NULL) {
		address_put(out, o, c);
		*i = k;
		return c;
	}
	for (k--; k < n && (p[k] == '\\' || (!address_is_822_space(p[k]) &&
	                                     strchr(ADDRESS_OPERATORS, p[k]) == NULL));
	     k++) {
		if (p[k] == '\\' && ++k == n)
			break;
		address_put(out, o, p[k]);
	}
	*i = k;
	return TOK_ATOM;
}

static int
address_is_word(int t)
{
	return t == TOK_ATOM || t == TOK_QSTRING || t == TOK_DOMLIT;
}

/* Counts a group of the tokens between left and right (exclusive); keeps the first one made,
 * which is the rightmost: the one extract_addr() takes. */
static void
address_group(long left, long right, int *naddr, long *lo, long *hi)
{
	if (right - left < 2)
		return;
	if ((*naddr)++ == 0) {
		*lo = left + 1;
		*hi = right;
	}
}

/*
 * Groups the tokens t[0..m) (comments left out: they never belong to an address) into
 * addresses as tok822_parse() does, from right to left, and returns how many there are; the
 * last of them is t[*lo..*hi).
 */
static int
address_group_tokens(const unsigned char *t, long m, long *lo, long *hi)
{
	long i = m - 1, right = m;
	int state = DO_WORD, naddr = 0;

	while (i >= 0) {
		if (t[i] == ';') {
			address_group(i, right, &naddr, lo, hi);
			right = i--;
			state = DO_GROUP | DO_WORD;
		} else if (t[i] == ':' && (state & DO_GROUP)) {
			address_group(i, right, &naddr, lo, hi);
			while (i >= 0 && t[i] != ',')
				i--;
			right = i;
		} else if (t[i] == '>') {
			address_group(i, right, &naddr, lo, hi);
			right = i;
			while (--i >= 0 && t[i] != '<')
				;
			address_group(i, right, &naddr, lo, hi);
			while (i >= 0 && strchr(">;,:", t[i]) == NULL)
				i--;
			right = i;
			state |= DO_WORD;
		} else if (address_is_word(t[i])) {
			if (!(state & DO_WORD)) {
				address_group(i, right, &naddr, lo, hi);
				right = i + 1;
			}
			state &= ~DO_WORD;
			i--;
		} else {
			if (t[i] == ',') {
				address_group(i, right, &naddr, lo, hi);
				right = i;
			}
			state |= DO_WORD;
			i--;
		}
	}
	address_group(-1, right, &naddr, lo, hi);
	return naddr;
}

/* Lower-cases the domain of the address in buf and drops its trailing dots; the new length. */
static size_t
address_fold_domain(unsigned char *buf, size_t n)
{
	unsigned char *at = NULL;
	size_t i;

	for (i = 0; i < n; i++)
		if (buf[i] == '@')
			at = buf + i;
	if (at == NULL)
		return n;
	/* "user@host." is "user@host": the root's dot names nothing new (Postfix strips it). */
	while (buf + n > at + 1 && buf[n - 1] == '.')
		n--;
	for (i = (size_t)(at - buf) + 1; i < n; i++)
		if (buf[i] >= 'A' && buf[i] <= 'Z')
			buf[i] = (unsigned char)(buf[i] + 32);
	return n;
}

/*
 * Writes the address of the path text p (its brackets gone) into buf in Postfix's internal
 * form: returns its length, or -1 when the text holds more than one address (Postfix refuses
 * it).  buf holds n octets at least; it first holds the token types.
 */
static long
address_normalise(const unsigned char *p, size_t n, unsigned char *buf)
{
	const unsigned char *nul = memchr(p, '\0', n), *colon;
	size_t i = 0, o = 0;
	long m = 0, lo = 0, hi = 0, k;
	int t;

	if (nul != NULL) /* the end of the string, to Postfix */
		n = (size_t)(nul - p);
	/* A source route ("@a,@b:") is dropped up to the first colon, as smtpd does. */
	if (n > 0 && p[0] == '@' && (colon = memchr(p, ':', n)) != NULL) {
		n -= (size_t)(colon + 1 - p);
		p = colon + 1;
	}
	while ((t = address_token(p, n, &i, NULL, &o)) != 0)
		if (t != TOK_COMMENT)
			buf[m++] = (unsigned char)t;
	if (address_group_tokens(buf, m, &lo, &hi) > 1)
		return -1;
	/* Again, writing the tokens of the last address alone (the types in buf are spent). */
	for (i = 0, o = 0, k = 0; k < hi;) {
		t = address_token(p, n, &i, k >= lo ? buf : NULL, &o);
		if (t == 0)
			break;
		if (t != TOK_COMMENT)
			k++;
		if (k <= lo)
			o = 0;
	}
	return (long)address_fold_domain(buf, o);
}

/* What a rule sees of an argument it cannot read: the argument trimmed of white space. */
static void
address_fallback(const unsigned char *arg, size_t len, size_t from, struct address *a,
                 unsigned char *buf)
{
	size_t i = address_skip_space(arg, len, from), end = len;

	while (end > i && address_is_space(arg[end - 1]))
		end--;
	a->ok = 0;
	a->len = end - i;
	if (a->len > 0)
		memcpy(buf, arg + i, a->len);
	buf[a->len] = '\0';
}

void
address_parse(const unsigned char *arg, size_t len, const char *keyword, struct address *a,
              unsigned char *buf)
{
	size_t kw = strlen(keyword), i, end;
	long n;
	int bracketed;

	memset(a, 0, sizeof(*a));
	if (arg == NULL)
		len = 0;
	if (len < kw + 1 || strncasecmp((const char *)arg, keyword, kw) != 0 || arg[kw] != ':') {
		address_fallback(arg, len, 0, a, buf);
		return;
	}
	i = address_skip_space(arg, len, kw + 1);
	bracketed = i < len && arg[i] == '<';
	end = address_path_end(arg, len, i, bracketed);
	if (end == 0 || end == i) {
		address_fallback(arg, len, kw + 1, a, buf);
		return;
	}
	if (bracketed)
		n = address_normalise(arg + i + 1, end - i - 2, buf);
	else
		n = address_normalise(arg + i, end - i, buf);
	if (n < 0) {
		address_fallback(arg, len, kw + 1, a, buf);
		return;
	}
	a->ok = 1;
	a->len = (size_t)n;
	a->path_off = i;
	a->path_len = end - i;
	a->params_off = address_skip_space(arg, len, end);
	a->params_len = len - a->params_off;
	buf[a->len] = '\0';
}

/* Whether c may stand in a dot-atom local part unquoted (RFC 5321 atext, RFC 6531 UTF-8). */
static int
address_is_atext(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c >= 0x80 || strchr(ADDRESS_ATEXT, c) != NULL;
}

/* Whether p is a dot-atom: atext, single dots between, none at either end. */
static int
address_is_dot_atom(const unsigned char *p, size_t n)
{
	size_t i;

	if (n == 0 || p[0] == '.' || p[n - 1] == '.')
		return 0;
	for (i = 0; i < n; i++)
		if (p[i] == '.' ? p[i + 1] == '.' : !address_is_atext(p[i]))
			return 0;
	return 1;
}

/* Whether p is a domain smtptap will send: dot-separated labels of letters, digits, '-', '_'
 * or UTF-8, or an address literal ("[192.0.2.1]", "[IPv6:...]") of printable ASCII without
 * '"' (RFC 5321 allows it there, but smtpd_token would read a quoted string from it). */
static int
address_is_domain(const unsigned char *p, size_t n)
{
	size_t i;

	if (n >= 2 && p[0] == '[' && p[n - 1] == ']') {
		for (i = 1; i < n - 1; i++)
			if (p[i] <= ' ' || p[i] >= 0x7f || strchr("[]\\\"", p[i]) != NULL)
				return 0;
		return 1;
	}
	if (n == 0 || p[0] == '.' || p[n - 1] == '.')
		return 0;
	for (i = 0; i < n; i++) {
		if (p[i] == '.' ? p[i + 1] == '.'
		                : !((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
		                    (p[i] >= '0' && p[i] <= '9') || p[i] == '-' || p[i] == '_' ||
		                    p[i] >= 0x80))
			return 0;
	}
	return 1;
}

long
address_path(const unsigned char *addr, size_t n, int empty_ok, unsigned char *out)
{
	size_t i, at = n, o = 0;

	for (i = 0; i < n; i++) {
		if (addr[i] < ' ' || addr[i] == 0x7f || addr[i] == '<' || addr[i] == '>')
			return -1;
		if (addr[i] == '@')
			at = i;
	}
	if (n == 0 && !empty_ok)
		return -1;
	if (at < n && (at == 0 || !address_is_domain(addr + at + 1, n - at - 1)))
		return -1;
	out[o++] = '<';
	if (address_is_dot_atom(addr, at) || at == 0) {
		memcpy(out + o, addr, at);
		o += at;
	} else {
		out[o++] = '"';
		for (i = 0; i < at; i++) {
			if (addr[i] == '"' || addr[i] == '\\')
				out[o++] = '\\';
			out[o++] = addr[i];
		}
		out[o++] = '"';
	}
	memcpy(out + o, addr + at, n - at);
	o += n - at;
	out[o++] = '>';
	return (long)o;
}
