/* Escaping of peer octets for transcripts, events and the program's own log. */
#include "logs/escape.h"

#include <stdint.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

/* Where the escaped text goes: an evbuffer, or memory sized for the worst case. */
struct escape_sink {
	struct evbuffer *buf;
	char *s;
	size_t off;
	int keep_backslash; /* text escaped already in part (an event's): a backslash stays */
};

/* Octets 0x20-0x7e except backslash, and tab: copied as they are (0x80-0xff are 0). */
static const unsigned char escape_plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, /* 00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 10 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 20 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 30 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 50 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 60 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, /* 70 */
};

static void
escape_sink_add(struct escape_sink *k, const void *p, size_t n)
{
	if (k->buf != NULL) {
		evbuffer_add(k->buf, p, n);
		return;
	}
	memcpy(k->s + k->off, p, n);
	k->off += n;
}

/*
 * Whether the 3-octet character at p is a bidirectional override or isolate (U+202A-U+202E,
 * U+2066-U+2069): printed raw, it reorders what a terminal or editor shows after it.
 */
static int
escape_bidi(const unsigned char *p)
{
	return p[0] == 0xe2 && ((p[1] == 0x80 && p[2] >= 0xaa && p[2] <= 0xae) ||
	                        (p[1] == 0x81 && p[2] >= 0xa6 && p[2] <= 0xa9));
}

/*
 * Length of the valid UTF-8 character at p (2-4), or 0 if it is invalid, a C1 control or a
 * bidirectional control.
 */
static size_t
escape_utf8_len(const unsigned char *p, size_t n)
{
	unsigned char c = p[0], lo = 0x80, hi = 0xbf;
	size_t len, i;

	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4;
	else
		return 0;
	if (n < len)
		return 0;
	/* The second octet's range excludes overlongs, surrogates, > U+10FFFF and C1. */
	if (c == 0xc2)
		lo = 0xa0;
	else if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	if (len == 3 && escape_bidi(p))
		return 0;
	return len;
}

static void
escape_octet(struct escape_sink *k, unsigned char c)
{
	static const char hex[] = "0123456789abcdef";
	char e[4];

	if (c == '\\') {
		escape_sink_add(k, "\\\\", k->keep_backslash ? 1 : 2);
		return;
	}
	e[0] = '\\';
	e[1] = 'x';
	e[2] = hex[c >> 4];
	e[3] = hex[c & 0xf];
	escape_sink_add(k, e, sizeof(e));
}

/* Octet by octet (a tab is plain too). */
static size_t
escape_plain_scalar(const unsigned char *p, size_t i, size_t n)
{
	while (i < n && escape_plain[p[i]])
		i++;
	return i;
}

#ifdef __SSE2__
/*
 * Sixteen octets of p, all ones where an octet is printable ASCII other than backslash.  One
 * signed compare finds the range: adding 0x60 takes 0x20-0x7e to 0x80-0xde (-128..-34) and
 * every other octet to -33 or above.
 */
static inline __m128i
escape_plain_lanes(const unsigned char *p)
{
	const __m128i shift = _mm_set1_epi8(0x60), top = _mm_set1_epi8(-33),
	              backslash = _mm_set1_epi8('\\');
	__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);

	return _mm_andnot_si128(_mm_cmpeq_epi8(v, backslash),
	                        _mm_cmplt_epi8(_mm_add_epi8(v, shift), top));
}

/* A bit per octet of p[0..15]: set for printable ASCII other than backslash. */
static inline unsigned
escape_plain_mask(const unsigned char *p)
{
	return (unsigned)_mm_movemask_epi8(escape_plain_lanes(p));
}
#endif

/*
 * The end of a run of octets that need no escape, from i: sixteen (SSE2) or
 * eight at a time while all are printable ASCII other than backslash (the bulk of any
 * transcript), then one by one.
 */
static size_t
escape_plain_end(const unsigned char *p, size_t i, size_t n)
{
#ifdef __SSE2__
	size_t base;
	unsigned mask;

	while (i + 16 <= n) {
		mask = escape_plain_mask(p + i);
		if (mask != 0xffff)
			return escape_plain_scalar(p, i + (size_t)__builtin_ctz(~mask), n);
		i += 16;
	}
	/* The last octets: one more load ending at n, its lanes before i known plain. */
	if (i < n && n >= 16) {
		base = n - 16;
		mask = escape_plain_mask(p + base) | ((1u << (i - base)) - 1);
		i = mask == 0xffff ? n : base + (size_t)__builtin_ctz(~mask);
	}
#else
	const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
	uint64_t w, bs, below, above, backslash;

	while (i + 8 <= n) {
		memcpy(&w, p + i, sizeof(w));
		bs = w ^ (ones * '\\');
		below = (w - ones * 0x20) & ~w & highs;          /* an octet < 0x20 */
		above = ((w + ones * (127 - 0x7e)) | w) & highs; /* an octet > 0x7e */
		backslash = (bs - ones) & ~bs & highs;            /* an octet == '\\' */
		if (below | above | backslash)
			break;
		i += 8;
	}
#endif
	return escape_plain_scalar(p, i, n);
}

size_t
escape_plain_span(const unsigned char *p, size_t n)
{
	return escape_plain_end(p, 0, n);
}

size_t
escape_plain_copy(char *dst, const unsigned char *p, size_t n)
{
#ifdef __SSE2__
	size_t i = 0, base;
	unsigned mask;
	__m128i v;

	/* Each sixteen octets are stored as they are loaded: the run is copied by its scan. */
	while (i + 16 <= n) {
		v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
		_mm_storeu_si128((__m128i *)(void *)(dst + i), v);
		mask = escape_plain_mask(p + i);
		if (mask != 0xffff) {
			i += (size_t)__builtin_ctz(~mask);
			if (!escape_plain[p[i]])
				return i;
			i++; /* a tab: plain too, and stored already */
			continue;
		}
		i += 16;
	}
	if (i < n && n >= 16) {
		base = n - 16;
		v = _mm_loadu_si128((const __m128i *)(const void *)(p + base));
		_mm_storeu_si128((__m128i *)(void *)(dst + base), v);
		mask = escape_plain_mask(p + base) | ((1u << (i - base)) - 1);
		if (mask == 0xffff)
			return n;
		i = base + (size_t)__builtin_ctz(~mask);
	}
	for (; i < n && escape_plain[p[i]]; i++)
		dst[i] = (char)p[i];
	return i;
#else
	size_t k = escape_plain_span(p, n);

	memcpy(dst, p, k);
	return k;
#endif
}

/* Copies runs of octets that need no escape in one piece, and escapes the rest one by one. */
static void
escape_run(struct escape_sink *k, const unsigned char *p, size_t n)
{
	size_t i = 0, start, len;

	while (i < n) {
		start = i;
		for (;;) {
			i = escape_plain_end(p, i, n);
			if (i < n && p[i] >= 0xc2 && (len = escape_utf8_len(p + i, n - i)) > 0)
				i += len;
			else
				break;
		}
		if (i > start)
			escape_sink_add(k, p + start, i - start);
		if (i < n)
			escape_octet(k, p[i++]);
	}
}

void
escape_append(struct evbuffer *out, const unsigned char *p, size_t n)
{
	struct escape_sink k = {.buf = out};

	escape_run(&k, p, n);
}

size_t
escape_into(char *dst, const unsigned char *p, size_t n)
{
	struct escape_sink k = {.buf = NULL, .s = dst};

	escape_run(&k, p, n);
	return k.off;
}

size_t
escape_text_span(const unsigned char *p, size_t n)
{
	size_t i = 0, len;

	for (;;) {
		i = escape_plain_end(p, i, n);
		if (i < n && p[i] == '\\')
			i++;
		else if (i < n && p[i] >= 0xc2 && (len = escape_utf8_len(p + i, n - i)) > 0)
			i += len;
		else
			return i;
	}
}

size_t
escape_text_into(char *dst, const unsigned char *p, size_t n)
{
	struct escape_sink k = {.buf = NULL, .s = dst, .keep_backslash = 1};

	escape_run(&k, p, n);
	return k.off;
}

char *
escape_strdup(const unsigned char *p, size_t n)
{
	char *s;

	if (n > (SIZE_MAX - 1) / 4)
		return NULL;
	if ((s = malloc(n * 4 + 1)) == NULL)
		return NULL;
	s[escape_into(s, p, n)] = '\0';
	return s;
}

static int
escape_hex_digit(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int
escape_undo(const unsigned char *text, size_t n, unsigned char *out, size_t *outlen)
{
	size_t i, o = 0;
	int hi, lo;

	for (i = 0; i < n; i++) {
		if (text[i] != '\\') {
			out[o++] = text[i];
			continue;
		}
		if (i + 1 < n && text[i + 1] == '\\') {
			out[o++] = '\\';
			i++;
			continue;
		}
		if (i + 3 >= n || text[i + 1] != 'x' || (hi = escape_hex_digit(text[i + 2])) < 0 ||
		    (lo = escape_hex_digit(text[i + 3])) < 0)
			return -1;
		out[o++] = (unsigned char)(hi * 16 + lo);
		i += 3;
	}
	*outlen = o;
	return 0;
}
