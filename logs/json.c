/* The event line's JSON writer: see json.h. */
#include "logs/json.h"

#include <math.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for n more octets: made when the buffer must grow (the common case is inlined). */
int
jw_grow(struct json_writer *w, size_t n)
{
	size_t cap = w->cap < 1024 ? 1024 : w->cap;
	char *p;

	if (n > SIZE_MAX / 4 - w->len) {
		w->failed = 1;
		return -1;
	}
	while (cap < w->len + n)
		cap *= 2;
	if ((p = realloc(w->buf, cap)) == NULL) {
		w->failed = 1;
		return -1;
	}
	w->buf = p;
	w->cap = cap;
	return 0;
}

static inline int
jw_room(struct json_writer *w, size_t n)
{
	if (w->failed)
		return -1;
	if (w->len + n <= w->cap)
		return 0;
	return jw_grow(w, n);
}

static void
jw_put(struct json_writer *w, const char *p, size_t n)
{
	if (jw_room(w, n) != 0)
		return;
	memcpy(w->buf + w->len, p, n);
	w->len += n;
}

/* Before a value (or a key): the comma, if one came before it at this level. */
static void
jw_sep(struct json_writer *w)
{
	if (w->comma)
		jw_put(w, ",", 1);
	w->comma = 1;
}

/* The same where room for it was made: written in place. */
static inline void
jw_sep_in(struct json_writer *w)
{
	if (w->comma)
		w->buf[w->len++] = ',';
	w->comma = 1;
}

/* A value of n octets made already (a number, a literal): its comma and it, in one room. */
static void
jw_put_value(struct json_writer *w, const char *p, size_t n)
{
	if (jw_room(w, n + 1) != 0) {
		w->comma = 1;
		return;
	}
	jw_sep_in(w);
	memcpy(w->buf + w->len, p, n);
	w->len += n;
}

void
jw_reset(struct json_writer *w)
{
	w->len = 0;
	w->comma = 0;
	w->failed = 0;
}

void
jw_free(struct json_writer *w)
{
	free(w->buf);
	w->buf = NULL;
	w->len = w->cap = 0;
}

/* Brackets in place, not by a one-octet memcpy: an event has two for every transaction. */
void
jw_open(struct json_writer *w, char c)
{
	if (jw_room(w, 2) == 0) {
		jw_sep_in(w);
		w->buf[w->len++] = c;
	}
	w->comma = 0;
}

void
jw_close(struct json_writer *w, char c)
{
	if (jw_room(w, 1) == 0)
		w->buf[w->len++] = c;
	w->comma = 1;
}

void
(jw_key)(struct json_writer *w, const char *key)
{
	jw_key_inline(w, key, strlen(key));
}

/* The code point of the UTF-8 sequence at p (n octets left) and its length; -1 if invalid. */
static long
jw_utf8(const unsigned char *p, size_t n, size_t *len)
{
	long cp;
	size_t need, i;

	if (p[0] < 0x80) {
		*len = 1;
		return p[0];
	}
	if (p[0] >= 0xC2 && p[0] <= 0xDF) {
		need = 1;
		cp = p[0] & 0x1F;
	} else if (p[0] >= 0xE0 && p[0] <= 0xEF) {
		need = 2;
		cp = p[0] & 0x0F;
	} else if (p[0] >= 0xF0 && p[0] <= 0xF4) {
		need = 3;
		cp = p[0] & 0x07;
	} else {
		return -1;
	}
	if (n < need + 1)
		return -1;
	for (i = 1; i <= need; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return -1;
		cp = (cp << 6) | (p[i] & 0x3F);
	}
	/* Overlong forms, surrogates and beyond U+10FFFF are not UTF-8. */
	if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) || cp > 0x10FFFF ||
	    (cp >= 0xD800 && cp <= 0xDFFF))
		return -1;
	*len = need + 1;
	return cp;
}

/* Octets a string keeps as they are: printable ASCII and space, but the quote and backslash. */
static const unsigned char jw_plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 10 */
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 20 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 30 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 50 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 60 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 70 */
};

/*
 * Copies the run of plain octets at p (at most n) to o and returns its length: sixteen at a
 * time (SSE2), stored as loaded, while all are plain.  The caller has room for 6 n octets.
 */
static size_t
jw_plain_copy(char *o, const unsigned char *p, size_t n)
{
	size_t i = 0;
#ifdef __SSE2__
	const __m128i below = _mm_set1_epi8(0x1F), quote = _mm_set1_epi8('"'),
	              backslash = _mm_set1_epi8('\\');
	__m128i v;
	unsigned mask;

	while (i + 16 <= n) {
		v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
		_mm_storeu_si128((__m128i *)(void *)(o + i), v);
		/* Signed: 0x80 and above are negative, so not above 0x1F (jw_plain's 0 for them). */
		mask = (unsigned)_mm_movemask_epi8(_mm_cmpgt_epi8(v, below)) &
		       ~(unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
		                                                 _mm_cmpeq_epi8(v, backslash)));
		if (mask != 0xffff)
			return i + (size_t)__builtin_ctz(~mask);
		i += 16;
	}
#endif
	for (; i < n && jw_plain[p[i]]; i++)
		o[i] = (char)p[i];
	return i;
}

static char *
jw_u(char *o, unsigned v)
{
	static const char hex[] = "0123456789abcdef";

	*o++ = '\\';
	*o++ = 'u';
	*o++ = hex[(v >> 12) & 0xF];
	*o++ = hex[(v >> 8) & 0xF];
	*o++ = hex[(v >> 4) & 0xF];
	*o++ = hex[v & 0xF];
	return o;
}

void
jw_strn(struct json_writer *w, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + n;
	size_t run, len;
	long cp;
	char *o;

	/* At most 12 octets out per octet in (a 4-octet sequence: a surrogate pair). */
	if (n > SIZE_MAX / 16) {
		jw_sep(w);
		return;
	}
	if (jw_room(w, 6 * n + 3) != 0) {
		w->comma = 1;
		return;
	}
	jw_sep_in(w);
	o = w->buf + w->len;
	*o++ = '"';
	while (p < end) {
		/* The plain run (most of any text), copied as it is scanned. */
		run = jw_plain_copy(o, p, (size_t)(end - p));
		o += run;
		p += run;
		if (p == end)
			break;
		switch (*p) {
		case '"':
		case '\\':
			*o++ = '\\';
			*o++ = (char)*p++;
			continue;
		case '\n':
			*o++ = '\\';
			*o++ = 'n';
			p++;
			continue;
		case '\t':
			*o++ = '\\';
			*o++ = 't';
			p++;
			continue;
		case '\r':
			*o++ = '\\';
			*o++ = 'r';
			p++;
			continue;
		}
		if ((cp = jw_utf8(p, (size_t)(end - p), &len)) < 0) {
			cp = 0xFFFD;
			len = 1;
		}
		p += len;
		if (cp >= 0x10000) {
			cp -= 0x10000;
			o = jw_u(o, 0xD800 | (unsigned)(cp >> 10));
			o = jw_u(o, 0xDC00 | (unsigned)(cp & 0x3FF));
		} else {
			o = jw_u(o, (unsigned)cp);
		}
	}
	*o++ = '"';
	w->len = (size_t)(o - w->buf);
}

void
jw_str(struct json_writer *w, const char *s)
{
	if (s == NULL)
		jw_null(w);
	else
		jw_strn(w, s, strlen(s));
}

void
jw_int(struct json_writer *w, long long v)
{
	/* Digits from the end: snprintf's %lld cost 700 instructions, 8 integers a session. */
	char num[24], *p = num + sizeof(num);
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

	do
		*--p = (char)('0' + u % 10);
	while ((u /= 10) != 0);
	if (v < 0)
		*--p = '-';
	jw_put_value(w, p, (size_t)(num + sizeof(num) - p));
}

void
jw_int_or_null(struct json_writer *w, long long v, int present)
{
	if (present)
		jw_int(w, v);
	else
		jw_null(w);
}

/* As jansson's JSON_REAL_PRECISION(9): %.9g, with ".0" where it would read as an integer. */
void
jw_real(struct json_writer *w, double v)
{
	char num[40];
	int n;

	if (!isfinite(v)) {
		jw_null(w);
		return;
	}
	n = snprintf(num, sizeof(num) - 2, "%.9g", v);
	if (n > 0 && strpbrk(num, ".eE") == NULL) {
		memcpy(num + n, ".0", 3);
		n += 2;
	}
	jw_sep(w);
	jw_put(w, num, (size_t)n);
}

/*
 * Between 100 us and 1,000 s, us / 1e6 in decimal has at most nine significant digits and is
 * exactly what %.9g makes of v: v is within a few units of its last place of that decimal,
 * far less than half a unit of the ninth digit (tests/unit/test_json.c checks it over the
 * range).  Trailing zeros go, as %g drops them; at least one digit stays after the point.
 */
void
jw_duration(struct json_writer *w, long long us, double v)
{
	char num[24], *p = num + sizeof(num), *end = p;
	long long whole = us / 1000000, frac = us % 1000000;
	int i;

	if (us < 100 || us >= 1000000000) {
		jw_real(w, v);
		return;
	}
	for (i = 0; i < 6; i++) {
		*--p = (char)('0' + frac % 10);
		frac /= 10;
	}
	while (end > p + 1 && end[-1] == '0')
		end--;
	*--p = '.';
	do
		*--p = (char)('0' + whole % 10);
	while ((whole /= 10) != 0);
	jw_sep(w);
	jw_put(w, p, (size_t)(end - p));
}

void
jw_bool(struct json_writer *w, int v)
{
	jw_put_value(w, v ? "true" : "false", v ? 4 : 5);
}

void
jw_newline(struct json_writer *w)
{
	jw_put(w, "\n", 1);
}

void
jw_null(struct json_writer *w)
{
	jw_put_value(w, "null", 4);
}
