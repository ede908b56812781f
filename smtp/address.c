/* MAIL FROM / RCPT TO addresses, read as Postfix's smtpd reads them (issue 17). */
#include "smtp/address.h"

#include <string.h>
#include <strings.h>

int
address_is_space(int c)
{
	return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r' || c == '\n';
}

static size_t
address_skip_space(const unsigned char *s, size_t len, size_t i)
{
	while (i < len && address_is_space(s[i]))
		i++;
	return i;
}

/*
 * The end of a quoted string starting at the '"' at i: after its closing quote, or len.
 * A backslash quotes the next octet (RFC 5321 quoted-pairSMTP).
 */
static size_t
address_skip_quoted(const unsigned char *s, size_t len, size_t i)
{
	for (i++; i < len; i++) {
		if (s[i] == '\\' && i + 1 < len)
			i++;
		else if (s[i] == '"')
			return i + 1;
	}
	return len;
}

/* The end of the path at i: after its '>' (0 when there is none), or the end of a bare token. */
static size_t
address_path_end(const unsigned char *s, size_t len, size_t i, int bracketed)
{
	while (i < len) {
		if (s[i] == '"') {
			i = address_skip_quoted(s, len, i);
		} else if (bracketed && s[i] == '>') {
			return i + 1;
		} else if (!bracketed && address_is_space(s[i])) {
			return i;
		} else {
			i++;
		}
	}
	return bracketed ? 0 : len;
}

/* The offset after a source route ("@a,@b:") at the start of p, outside quotes; else 0. */
static size_t
address_skip_route(const unsigned char *p, size_t n)
{
	size_t i = 0;

	if (n == 0 || p[0] != '@')
		return 0;
	while (i < n) {
		if (p[i] == '"')
			i = address_skip_quoted(p, n, i);
		else if (p[i] == ':')
			return i + 1;
		else
			i++;
	}
	return 0;
}

/* Writes the address of the path p (brackets gone) into buf: local part as is, domain folded. */
static size_t
address_normalise(const unsigned char *p, size_t n, unsigned char *buf)
{
	size_t i, at, o;

	i = address_skip_route(p, n);
	p += i;
	n -= i;
	at = n;
	for (i = 0; i < n;) {
		if (p[i] == '"') {
			i = address_skip_quoted(p, n, i);
			continue;
		}
		if (p[i] == '@')
			at = i;
		i++;
	}
	if (at == n) {
		memcpy(buf, p, n);
		return n;
	}
	/* "user@host." is "user@host": the root's dot names nothing new (Postfix strips it). */
	while (n > at + 1 && p[n - 1] == '.')
		n--;
	memcpy(buf, p, at + 1);
	for (o = at + 1; o < n; o++)
		buf[o] = p[o] >= 'A' && p[o] <= 'Z' ? (unsigned char)(p[o] + 32) : p[o];
	return n;
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
	end = address_path_end(arg, len, bracketed ? i + 1 : i, bracketed);
	if (end == 0 || end == i) {
		address_fallback(arg, len, kw + 1, a, buf);
		return;
	}
	a->ok = 1;
	a->path_off = i;
	a->path_len = end - i;
	a->params_off = address_skip_space(arg, len, end);
	a->params_len = len - a->params_off;
	if (bracketed)
		a->len = address_normalise(arg + i + 1, end - i - 2, buf);
	else
		a->len = address_normalise(arg + i, end - i, buf);
	buf[a->len] = '\0';
}
