/* Unit tests for logs/escape.c: every octet class the transcript may see. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "logs/escape.h"

/* Escapes n octets both ways (evbuffer and heap string) and checks both give want. */
static void
check(const char *in, size_t n, const char *want)
{
	struct evbuffer *b;
	size_t len;
	char *s;

	assert_non_null(b = evbuffer_new());
	escape_append(b, (const unsigned char *)in, n);
	len = evbuffer_get_length(b);
	assert_int_equal(len, strlen(want));
	if (len > 0)
		assert_memory_equal(evbuffer_pullup(b, -1), want, len);
	evbuffer_free(b);

	assert_non_null(s = escape_strdup((const unsigned char *)in, n));
	assert_string_equal(s, want);
	free(s);
}

#define U(s) ((const unsigned char *)(s))
#define CHECK(lit, want) check(lit, sizeof(lit) - 1, want)

static void
test_empty(void **state)
{
	(void)state;
	CHECK("", "");
}

static void
test_plain_ascii(void **state)
{
	(void)state;
	CHECK("MAIL FROM:<a@example.com> SIZE=100", "MAIL FROM:<a@example.com> SIZE=100");
	CHECK(" !\"#$%&'()*+,-./0189:;<=>?@AZ[]^_`az{|}~",
	      " !\"#$%&'()*+,-./0189:;<=>?@AZ[]^_`az{|}~");
}

static void
test_backslash(void **state)
{
	(void)state;
	CHECK("\\", "\\\\");
	CHECK("a\\x41b", "a\\\\x41b");
}

static void
test_tab_kept(void **state)
{
	(void)state;
	CHECK("a\tb\t", "a\tb\t");
}

static void
test_controls(void **state)
{
	(void)state;
	CHECK("a\0b", "a\\x00b");
	CHECK("\r", "\\x0d");
	CHECK("DATA\r\n", "DATA\\x0d\\x0a");
	CHECK("\x1b[31mred", "\\x1b[31mred");
	CHECK("\x1f\x7f", "\\x1f\\x7f");
	CHECK("\x01\x02\x03", "\\x01\\x02\\x03");
}

static void
test_bare_lf_at_end(void **state)
{
	(void)state;
	CHECK("QUIT\n", "QUIT\\x0a");
}

static void
test_utf8_kept(void **state)
{
	(void)state;
	CHECK("caf\xc3\xa9", "caf\xc3\xa9");                   /* U+00E9 */
	CHECK("\xc2\xa0", "\xc2\xa0");                         /* U+00A0, first after C1 */
	CHECK("\xe2\x82\xac 5", "\xe2\x82\xac 5");             /* U+20AC */
	CHECK("\xed\x9f\xbf", "\xed\x9f\xbf");                 /* U+D7FF */
	CHECK("\xee\x80\x80", "\xee\x80\x80");                 /* U+E000 */
	CHECK("hi \xf0\x9f\x98\x80!", "hi \xf0\x9f\x98\x80!"); /* U+1F600 */
	CHECK("\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf");         /* U+10FFFF */
}

static void
test_c1_escaped(void **state)
{
	(void)state;
	CHECK("\xc2\x80", "\\xc2\\x80");
	CHECK("a\xc2\x9bz", "a\\xc2\\x9bz");
	CHECK("\xc2\x9f", "\\xc2\\x9f");
}

/* Bidirectional overrides and isolates would reorder what a terminal shows after them. */
static void
test_bidi_escaped(void **state)
{
	(void)state;
	CHECK("\xe2\x80\xaa", "\\xe2\\x80\\xaa");     /* U+202A LRE */
	CHECK("\xe2\x80\xab", "\\xe2\\x80\\xab");     /* U+202B RLE */
	CHECK("\xe2\x80\xac", "\\xe2\\x80\\xac");     /* U+202C PDF */
	CHECK("\xe2\x80\xad", "\\xe2\\x80\\xad");     /* U+202D LRO */
	CHECK("a\xe2\x80\xaez", "a\\xe2\\x80\\xaez"); /* U+202E RLO */
	CHECK("\xe2\x81\xa6", "\\xe2\\x81\\xa6");     /* U+2066 LRI */
	CHECK("\xe2\x81\xa7", "\\xe2\\x81\\xa7");     /* U+2067 RLI */
	CHECK("\xe2\x81\xa8", "\\xe2\\x81\\xa8");     /* U+2068 FSI */
	CHECK("\xe2\x81\xa9", "\\xe2\\x81\\xa9");     /* U+2069 PDI */
	/* Their neighbours are ordinary characters. */
	CHECK("\xe2\x80\xa9", "\xe2\x80\xa9"); /* U+2029 */
	CHECK("\xe2\x80\xaf", "\xe2\x80\xaf"); /* U+202F */
	CHECK("\xe2\x81\xa5", "\xe2\x81\xa5"); /* U+2065 */
	CHECK("\xe2\x81\xaa", "\xe2\x81\xaa"); /* U+206A */
}

/* Text with escaped parts (an event's): a backslash stays, everything else as ever. */
static void
test_text_keeps_backslash(void **state)
{
	static const char in[] = "sni=\\x1b a\x1b\r\nC: b \xe2\x80\xae caf\xc3\xa9\tz";
	static const char want[] = "sni=\\x1b a\\x1b\\x0d\\x0aC: b \\xe2\\x80\\xae caf\xc3\xa9\tz";
	char out[4 * sizeof(in)];
	size_t n;

	(void)state;
	assert_int_equal(escape_text_span(U(in), sizeof(in) - 1), 10);
	n = escape_text_into(out, U(in), sizeof(in) - 1);
	assert_int_equal(n, sizeof(want) - 1);
	assert_memory_equal(out, want, n);
	assert_int_equal(escape_text_span(U(want), sizeof(want) - 1), sizeof(want) - 1);
}

static void
test_invalid(void **state)
{
	(void)state;
	CHECK("\xff", "\\xff");
	CHECK("\x80xyz", "\\x80xyz");
	CHECK("caf\xe9", "caf\\xe9"); /* Latin-1 */
	CHECK("\xfe\xf5\xf8", "\\xfe\\xf5\\xf8");
}

static void
test_overlong(void **state)
{
	(void)state;
	CHECK("\xc0\xaf", "\\xc0\\xaf");
	CHECK("\xc1\xbf", "\\xc1\\xbf");
	CHECK("\xe0\x80\xaf", "\\xe0\\x80\\xaf");
	CHECK("\xf0\x80\x80\xaf", "\\xf0\\x80\\x80\\xaf");
}

static void
test_surrogate(void **state)
{
	(void)state;
	CHECK("\xed\xa0\x80", "\\xed\\xa0\\x80");
	CHECK("\xed\xbf\xbf", "\\xed\\xbf\\xbf");
}

static void
test_above_max(void **state)
{
	(void)state;
	CHECK("\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"); /* U+110000 */
}

static void
test_truncated(void **state)
{
	(void)state;
	CHECK("\xe2\x82", "\\xe2\\x82");   /* at end */
	CHECK("\xe2\x82Z", "\\xe2\\x82Z"); /* resync on ASCII */
	CHECK("\xf0\x9f\x98", "\\xf0\\x9f\\x98");
	CHECK("\xc3", "\\xc3");
	/* Only n octets are looked at, even when the ones after would complete the character. */
	check("\xe2\x82\xac", 2, "\\xe2\\x82");
	check("ok\xf0\x9f\x98\x80", 5, "ok\\xf0\\x9f\\x98");
	/* A broken lead, then a good character: the good one is kept. */
	CHECK("\xe2\xc3\xa9", "\\xe2\xc3\xa9");
}

static void
test_mixed_line(void **state)
{
	(void)state;
	CHECK("Subject: \xc3\xa9t\xc3\xa9\t\\ \x00\xc0\xaf\xf0\x9f\x98\x80\r\n",
	      "Subject: \xc3\xa9t\xc3\xa9\t\\\\ \\x00\\xc0\\xaf\xf0\x9f\x98\x80\\x0d\\x0a");
}

/* Every single octet alone: the 95 printable ones and tab pass (backslash doubled). */
static void
test_every_octet(void **state)
{
	unsigned char c;
	char want[8];
	int i;

	(void)state;
	for (i = 0; i < 256; i++) {
		c = (unsigned char)i;
		if (c == '\\')
			strcpy(want, "\\\\");
		else if (c == '\t' || (c >= 0x20 && c <= 0x7e))
			snprintf(want, sizeof(want), "%c", c);
		else
			snprintf(want, sizeof(want), "\\x%02x", c);
		check((const char *)&c, 1, want);
	}
}

/*
 * Plain ASCII is scanned eight octets at a time: every octet value at every position of a
 * 24-octet run of letters is escaped exactly as it is alone (tab kept, backslash doubled,
 * 0x1f, 0x7f and 0x80 at the edges of the printable range escaped).
 */
static void
test_every_octet_in_every_lane(void **state)
{
	char in[24], want[24 + 8], *p;
	size_t pos;
	int c;

	(void)state;
	for (pos = 0; pos < sizeof(in); pos++) {
		for (c = 0; c < 256; c++) {
			if (c >= 0xc2 && c <= 0xf4)
				continue; /* a UTF-8 lead octet: its fate depends on what follows */
			memset(in, 'a', sizeof(in));
			in[pos] = (char)c;
			p = want;
			memset(p, 'a', pos);
			p += pos;
			if (c == '\\')
				p += sprintf(p, "\\\\");
			else if (c == '\t' || (c >= 0x20 && c <= 0x7e))
				*p++ = (char)c;
			else
				p += sprintf(p, "\\x%02x", c);
			memset(p, 'a', sizeof(in) - pos - 1);
			p[sizeof(in) - pos - 1] = '\0';
			check(in, sizeof(in), want);
		}
	}
}

/*
 * escape_plain_span scans 16 and 8 octets at a time: for every length up to 80 (a message
 * line), every octet value at every position ends the span exactly where one at a time would.
 */
static void
test_plain_span_every_length(void **state)
{
	unsigned char in[80];
	size_t n, pos, want;
	int c;

	(void)state;
	for (n = 0; n <= sizeof(in); n++) {
		memset(in, 'X', sizeof(in));
		assert_int_equal(escape_plain_span(in, n), n);
		for (pos = 0; pos < n; pos++) {
			for (c = 0; c < 256; c++) {
				memset(in, 'X', sizeof(in));
				in[pos] = (unsigned char)c;
				want = c == '\t' || (c >= 0x20 && c <= 0x7e && c != '\\') ? n : pos;
				assert_int_equal(escape_plain_span(in, n), want);
			}
		}
	}
}

/*
 * escape_plain_copy ends where escape_plain_span does, for every length and every octet at
 * every position (with a second one after it: a tab does not end the run), and leaves the
 * run copied, with nothing written at or past n.
 */
static void
test_plain_copy_every_length(void **state)
{
	unsigned char in[80];
	char out[96];
	size_t n, pos, want;
	int c;

	(void)state;
	for (n = 0; n <= sizeof(in); n++) {
		for (pos = 0; pos <= n; pos++) {
			for (c = 0; c < 256; c++) {
				for (size_t i = 0; i < sizeof(in); i++)
					in[i] = (unsigned char)('A' + i % 26);
				if (pos < n)
					in[pos] = (unsigned char)c;
				if (pos + 3 < n)
					in[pos + 3] = '\x01';
				memset(out, '#', sizeof(out));
				want = escape_plain_span(in, n);
				assert_int_equal(escape_plain_copy(out, in, n), want);
				assert_memory_equal(out, in, want);
				for (size_t i = n; i < sizeof(out); i++)
					assert_int_equal(out[i], '#');
			}
		}
	}
}

/* Appending adds to what is already in the buffer. */
static void
test_appends(void **state)
{
	struct evbuffer *b;

	(void)state;
	assert_non_null(b = evbuffer_new());
	evbuffer_add(b, "S: ", 3);
	escape_append(b, (const unsigned char *)"250 ok\r", 7);
	assert_int_equal(evbuffer_get_length(b), 13);
	assert_memory_equal(evbuffer_pullup(b, -1), "S: 250 ok\\x0d", 13);
	evbuffer_free(b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_empty),       cmocka_unit_test(test_plain_ascii),
	    cmocka_unit_test(test_backslash),   cmocka_unit_test(test_tab_kept),
	    cmocka_unit_test(test_controls),    cmocka_unit_test(test_bare_lf_at_end),
	    cmocka_unit_test(test_utf8_kept),   cmocka_unit_test(test_c1_escaped),
	    cmocka_unit_test(test_invalid),     cmocka_unit_test(test_overlong),
	    cmocka_unit_test(test_surrogate),   cmocka_unit_test(test_above_max),
	    cmocka_unit_test(test_truncated),   cmocka_unit_test(test_mixed_line),
	    cmocka_unit_test(test_every_octet), cmocka_unit_test(test_appends),
	    cmocka_unit_test(test_every_octet_in_every_lane),
	    cmocka_unit_test(test_plain_span_every_length),
	    cmocka_unit_test(test_plain_copy_every_length),
	    cmocka_unit_test(test_bidi_escaped), cmocka_unit_test(test_text_keeps_backslash),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
