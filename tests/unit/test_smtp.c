/* Unit tests for smtp/smtp.c (verbs, reply lines, BDAT) and proxy/pipeline.c (the queue). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <event2/buffer.h>

#include "proxy/pipeline.h"
#include "smtp/smtp.h"

#define U(s) ((const unsigned char *)(s))

static void
check_verb(const char *line, enum smtp_verb want, const char *wantarg)
{
	struct smtp_command cmd;

	smtp_parse_command(U(line), strlen(line), &cmd);
	assert_int_equal(cmd.verb, want);
	if (wantarg == NULL) {
		assert_null(cmd.arg);
		return;
	}
	assert_int_equal(cmd.arglen, strlen(wantarg));
	assert_memory_equal(cmd.arg, wantarg, cmd.arglen);
}

/*
 * Every command of the table is found by its name in any case, and only by it: each octet of
 * each name, replaced by every octet value, still names the verb exactly when the two are the
 * same letter in either case (strncasecmp's answer); a name with one octet more or less is not it.
 */
static void
test_verbs_every_name_and_near_miss(void **state)
{
	struct smtp_command cmd;
	char name[16], want_ci;
	size_t n, pos;
	int v, c;

	(void)state;
	for (v = VERB_FIRST_COMMAND; v <= VERB_LAST_COMMAND; v++) {
		n = strlen(smtp_verb_name((enum smtp_verb)v));
		for (pos = 0; pos < n; pos++) {
			for (c = 0; c < 256; c++) {
				memcpy(name, smtp_verb_name((enum smtp_verb)v), n + 1);
				want_ci = name[pos];
				name[pos] = (char)c;
				smtp_parse_command(U(name), n, &cmd);
				if (c == want_ci || c == (want_ci | 0x20))
					assert_int_equal(cmd.verb, v);
				else if (c != ' ' && c != '\t' && c != '\v' && c != '\f' && c != '\r')
					assert_int_not_equal(cmd.verb, v);
			}
		}
		memcpy(name, smtp_verb_name((enum smtp_verb)v), n + 1);
		smtp_parse_command(U(name), n - 1, &cmd);
		assert_int_not_equal(cmd.verb, v);
		name[n] = 'S';
		smtp_parse_command(U(name), n + 1, &cmd);
		assert_int_not_equal(cmd.verb, v);
	}
	check_verb("sTaRtTlS", VERB_STARTTLS, NULL);
	check_verb("XFORWARDS x", VERB_UNKNOWN, "x");
}

static void
test_verbs(void **state)
{
	(void)state;
	check_verb("EHLO client.example", VERB_EHLO, "client.example");
	check_verb("ehlo x", VERB_EHLO, "x");
	check_verb("MAIL FROM:<a@b> SIZE=10", VERB_MAIL, "FROM:<a@b> SIZE=10");
	check_verb("rcpt to:<c@d>", VERB_RCPT, "to:<c@d>");
	check_verb("DATA", VERB_DATA, NULL);
	check_verb("BDAT 100 LAST", VERB_BDAT, "100 LAST");
	check_verb("STARTTLS", VERB_STARTTLS, NULL);
	check_verb("AUTH PLAIN AGFsaWNl", VERB_AUTH, "PLAIN AGFsaWNl");
	check_verb("QUIT", VERB_QUIT, NULL);
	check_verb("XCLIENT ADDR=1.2.3.4", VERB_XCLIENT, "ADDR=1.2.3.4");
	/* A verb is a whole word: prefixes and longer words are unknown. */
	check_verb("DATAX", VERB_UNKNOWN, NULL);
	check_verb("DAT", VERB_UNKNOWN, NULL);
	check_verb("", VERB_UNKNOWN, NULL);
	check_verb("MAIL", VERB_MAIL, NULL);
	check_verb("NOOP   ", VERB_NOOP, NULL);
	/* Leading white space and VT, FF, CR separate words for servers: so here too. */
	check_verb(" XCLIENT ADDR=1.2.3.4", VERB_XCLIENT, "ADDR=1.2.3.4");
	check_verb("\tXFORWARD ADDR=1.2.3.4", VERB_XFORWARD, "ADDR=1.2.3.4");
	check_verb("XCLIENT\vADDR=1.2.3.4", VERB_XCLIENT, "ADDR=1.2.3.4");
	check_verb("\fXCLIENT\rADDR=1", VERB_XCLIENT, "ADDR=1");
}

static void
check_auth(const char *arg, const char *mech, const char *resp, const char *word)
{
	struct smtp_auth a;

	smtp_parse_auth(U(arg), strlen(arg), &a);
	if (mech == NULL) {
		assert_null(a.mech);
		assert_null(a.resp);
		return;
	}
	assert_int_equal(a.mechlen, strlen(mech));
	assert_memory_equal(a.mech, mech, a.mechlen);
	if (resp == NULL) {
		assert_null(a.resp);
		return;
	}
	assert_int_equal(a.resplen, strlen(resp));
	assert_memory_equal(a.resp, resp, a.resplen);
	assert_int_equal(a.resp_word, strlen(word));
}

/* AUTH splits as servers split: PLAIN<TAB>secret is PLAIN with a response, never a mechanism. */
static void
test_auth_split(void **state)
{
	(void)state;
	check_auth("PLAIN AGFsaWNl", "PLAIN", "AGFsaWNl", "AGFsaWNl");
	check_auth("PLAIN\tAGFsaWNl", "PLAIN", "AGFsaWNl", "AGFsaWNl");
	check_auth("PLAIN\vAGFsaWNl", "PLAIN", "AGFsaWNl", "AGFsaWNl");
	check_auth("PLAIN\fAGFsaWNl", "PLAIN", "AGFsaWNl", "AGFsaWNl");
	check_auth("PLAIN\rAGFsaWNl", "PLAIN", "AGFsaWNl", "AGFsaWNl");
	check_auth("LOGIN \t\v YWxp Y2U=\r", "LOGIN", "YWxp Y2U=\r", "YWxp");
	check_auth("LOGIN", "LOGIN", NULL, NULL);
	check_auth("LOGIN \t", "LOGIN", NULL, NULL);
	check_auth("", NULL, NULL, NULL);
	check_auth(" \t", NULL, NULL, NULL);
	assert_true(smtp_sasl_name(U("CRAM-MD5"), 8));
	assert_true(smtp_sasl_name(U("scram_sha_1"), 11));
	assert_false(smtp_sasl_name(U("AGFsaWNlAHMzY3JldA=="), 20)); /* a credential */
	/* base64 of "\0alice\0S3cr3tPW": shaped like a name, but no name known */
	assert_false(smtp_sasl_name(U("AGFsaWNlAFMzY3IzdFBX"), 20));
	assert_false(smtp_sasl_name(U("TURN"), 4));
	assert_true(smtp_sasl_name(U("plain"), 5));
	assert_true(smtp_sasl_name(U("XOAUTH2"), 7));
	assert_true(smtp_sasl_name(U("OAUTHBEARER"), 11));
	assert_true(smtp_sasl_name(U("SCRAM-SHA-256-PLUS"), 18));
	assert_false(smtp_sasl_name(U("ABCDEFGHIJKLMNOPQRSTU"), 21));
	assert_false(smtp_sasl_name(U(""), 0));
	assert_true(smtp_sasl_shaped(U("AGFsaWNlAHMzY3JldA=="), 20));
	assert_true(smtp_sasl_shaped(U("a+/9="), 5));
	assert_false(smtp_sasl_shaped(U("MAIL FROM:<a@b>"), 15));
	assert_false(smtp_sasl_shaped(U("*"), 1));
}

static void
test_verb_with_nul(void **state)
{
	struct smtp_command cmd;

	(void)state;
	smtp_parse_command(U("QU\0T"), 4, &cmd);
	assert_int_equal(cmd.verb, VERB_UNKNOWN);
}

static void
check_reply(const char *line, int ret, int code, int last, const char *text)
{
	struct smtp_reply_line r;

	assert_int_equal(smtp_parse_reply(U(line), strlen(line), &r), ret);
	assert_int_equal(r.code, code);
	assert_int_equal(r.last, last);
	assert_int_equal(r.textlen, strlen(text));
	assert_memory_equal(r.text, text, r.textlen);
}

static void
test_replies(void **state)
{
	(void)state;
	check_reply("250-SIZE 1000", 0, 250, 0, "SIZE 1000");
	check_reply("250 OK", 0, 250, 1, "OK");
	check_reply("250 ", 0, 250, 1, "");
	check_reply("250", 0, 250, 1, "");
	check_reply("334 ", 0, 334, 1, "");
	check_reply("421-4.4.2 bye", 0, 421, 0, "4.4.2 bye");
	check_reply("25", -1, 0, 1, "25");
	check_reply("2500 x", -1, 0, 1, "2500 x");
	check_reply("650 x", -1, 0, 1, "650 x");
	check_reply("abc", -1, 0, 1, "abc");
}

static void
test_line_len(void **state)
{
	(void)state;
	assert_int_equal(smtp_line_len(U("QUIT\r\n"), 6), 4);
	assert_int_equal(smtp_line_len(U("QUIT\n"), 5), 4);
	assert_int_equal(smtp_line_len(U("QUIT\r"), 5), 5);
	assert_int_equal(smtp_line_len(U("\r\n"), 2), 0);
	assert_int_equal(smtp_line_len(U(""), 0), 0);
}

static void
test_bdat(void **state)
{
	uint64_t size = 99;
	int last = 9;

	(void)state;
	assert_int_equal(smtp_parse_bdat(U("100"), 3, &size, &last), 0);
	assert_int_equal(size, 100);
	assert_int_equal(last, 0);
	assert_int_equal(smtp_parse_bdat(U("0 LAST"), 6, &size, &last), 0);
	assert_int_equal(size, 0);
	assert_int_equal(last, 1);
	assert_int_equal(smtp_parse_bdat(U("12 last"), 7, &size, &last), 0);
	assert_int_equal(last, 1);
	assert_int_equal(smtp_parse_bdat(U("12 FIRST"), 8, &size, &last), -1);
	assert_int_equal(smtp_parse_bdat(U("-1"), 2, &size, &last), -1);
	assert_int_equal(smtp_parse_bdat(U("x"), 1, &size, &last), -1);
	assert_int_equal(smtp_parse_bdat(NULL, 0, &size, &last), -1);
	assert_int_equal(smtp_parse_bdat(U("99999999999999999999999"), 23, &size, &last), -1);
}

/* BDAT's words as Postfix's smtpd_token splits them: any white space, some after them too. */
static void
test_bdat_white_space(void **state)
{
	static const char *const accepted[] = {
	    "9 LAST ", "9\tLAST", "9\vLAST\f", "9 LAST\r", "9  \t last \v\f\r", "9 ", "9\r", "9\f"};
	uint64_t size;
	size_t i;
	int last;

	(void)state;
	for (i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++) {
		size = 0;
		last = -1;
		assert_int_equal(smtp_parse_bdat(U(accepted[i]), strlen(accepted[i]), &size, &last),
		                 0);
		assert_int_equal(size, 9);
		assert_int_equal(last, strstr(accepted[i], "LAST") != NULL ||
		                           strstr(accepted[i], "last") != NULL);
	}
}

/* What Postfix answers 521 (and hangs up on) is malformed here too, and changes nothing. */
static void
test_bdat_malformed(void **state)
{
	static const char *const refused[] = {"9 LAST x",
	                                      "9 LASTX",
	                                      "9LAST",
	                                      "9 LAS",
	                                      "9 LAST LAST",
	                                      "+9",
	                                      "9x",
	                                      "9 -",
	                                      "",
	                                      " 9",
	                                      "9223372036854775808",
	                                      "18446744073709551615",
	                                      "99999999999999999999999"};
	uint64_t size = 77;
	size_t i;
	int last = 7;

	(void)state;
	for (i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		assert_int_equal(smtp_parse_bdat(U(refused[i]), strlen(refused[i]), &size, &last),
		                 -1);
	/* A NUL is no white space (Postfix ends the line there: smtptap refuses instead). */
	assert_int_equal(smtp_parse_bdat(U("9\0"), 2, &size, &last), -1);
	assert_int_equal(smtp_parse_bdat(U("9 LAST\0"), 7, &size, &last), -1);
	assert_int_equal(size, 77);
	assert_int_equal(last, 7);
}

/* The size stops where the server's would (an off_t): 2^63 - 1 is taken, 2^63 is not. */
static void
test_bdat_size_bound(void **state)
{
	uint64_t size = 0;
	int last = -1;

	(void)state;
	assert_int_equal(smtp_parse_bdat(U("9223372036854775807 LAST"), 24, &size, &last), 0);
	assert_true(size == (uint64_t)INT64_MAX);
	assert_int_equal(last, 1);
	assert_int_equal(smtp_parse_bdat(U("0009223372036854775807"), 22, &size, &last), 0);
	assert_true(size == SMTP_BDAT_MAX);
	assert_int_equal(smtp_parse_bdat(U("9223372036854775808"), 19, &size, &last), -1);
	assert_int_equal(smtp_parse_bdat(U("09 LAST"), 7, &size, &last), 0);
	assert_int_equal(size, 9);
}

static void
test_pipeline_order(void **state)
{
	struct pipeline p;
	struct pending *e;

	(void)state;
	pipeline_init(&p);
	assert_null(pipeline_head(&p));
	assert_non_null(pipeline_push(&p, VERB_MAIL));
	assert_non_null(pipeline_push_local(&p, "550 5.7.1 no\r\n"));
	assert_non_null(pipeline_push(&p, VERB_DATA));
	assert_int_equal(p.count, 3);
	assert_int_equal(p.remote, 2);
	/* The local reply waits behind MAIL: it never overtakes the server's reply. */
	e = pipeline_head(&p);
	assert_int_equal(e->verb, VERB_MAIL);
	pipeline_pop(&p);
	e = pipeline_head(&p);
	assert_int_equal(e->verb, VERB_LOCAL);
	assert_string_equal(e->local_reply, "550 5.7.1 no\r\n");
	pipeline_pop(&p);
	assert_int_equal(p.remote, 1);
	assert_int_equal(pipeline_head(&p)->verb, VERB_DATA);
	pipeline_clear(&p);
	assert_int_equal(p.count, 0);
	assert_int_equal(p.remote, 0);
	pipeline_pop(&p); /* popping an empty queue is harmless */
	assert_null(pipeline_head(&p));
}

static void
test_awaits(void **state)
{
	(void)state;
	assert_true(smtp_verb_awaits_reply(VERB_DATA));
	assert_true(smtp_verb_awaits_reply(VERB_STARTTLS));
	assert_true(smtp_verb_awaits_reply(VERB_AUTH));
	assert_false(smtp_verb_awaits_reply(VERB_RCPT));
	assert_false(smtp_verb_awaits_reply(VERB_BDAT));
	assert_string_equal(smtp_verb_name(VERB_EOD), "end-of-data");
	assert_string_equal(smtp_verb_name(VERB_RCPT), "RCPT");
}

/* The command table: every command verb parses back to its own row, by its own name. */
static void
test_table(void **state)
{
	const struct smtp_verb_info *v;
	int i;

	(void)state;
	for (i = VERB_FIRST_COMMAND; i <= VERB_LAST_COMMAND; i++) {
		struct smtp_command cmd;
		char line[32];

		v = smtp_verb_info((enum smtp_verb)i);
		snprintf(line, sizeof(line), "%s\targ", v->name);
		smtp_parse_command(U(line), strlen(line), &cmd);
		assert_int_equal(cmd.verb, i);
		assert_int_equal(cmd.arglen, 3);
	}
	assert_int_equal(smtp_verb_info(VERB_MAIL)->rules, SMTP_RULES_MAIL);
	assert_int_equal(smtp_verb_info(VERB_LHLO)->rules, SMTP_RULES_HELO);
	assert_int_equal(smtp_verb_info(VERB_RCPT)->track, SMTP_TRACK_RCPT);
	assert_int_equal(smtp_verb_info(VERB_XFORWARD)->handler, SMTP_HANDLE_REFUSE);
	assert_int_equal(smtp_verb_info(VERB_BDAT)->handler, SMTP_HANDLE_BDAT);
	assert_int_equal(smtp_verb_info(VERB_AUTH)->handler, SMTP_HANDLE_SASL);
	assert_true(smtp_verb_awaits_reply(VERB_SASL));
	/* Out of range: the unknown verb's row, never NULL. */
	assert_string_equal(smtp_verb_info(VERB_COUNT)->name, "unknown");
	assert_string_equal(smtp_verb_info((enum smtp_verb)(VERB_COUNT + 5))->name, "unknown");
	/* A reply subject is not a command: "greeting" parses as unknown. */
	{
		struct smtp_command cmd;

		smtp_parse_command(U("greeting x"), 10, &cmd);
		assert_int_equal(cmd.verb, VERB_UNKNOWN);
	}
}

/* Any server white space ends the verb: space, tab, VT, FF, CR. */
static void
test_verb_white_space(void **state)
{
	(void)state;
	check_verb("MAIL\tFROM:<a@evil>", VERB_MAIL, "FROM:<a@evil>");
	check_verb("MAIL\vFROM:<a>", VERB_MAIL, "FROM:<a>");
	check_verb("MAIL\fFROM:<a>", VERB_MAIL, "FROM:<a>");
	check_verb("RCPT\rTO:<a>", VERB_RCPT, "TO:<a>");
	check_verb(" \tEHLO x", VERB_EHLO, "x");
}

/* A buffer of pieces, each its own chunk (as reads leave it): lines may cross them. */
static struct evbuffer *
chunks(const char *const *pieces, size_t n)
{
	struct evbuffer *b = evbuffer_new(), *one;
	size_t i;

	assert_non_null(b);
	for (i = 0; i < n; i++) {
		assert_non_null(one = evbuffer_new());
		evbuffer_add(one, pieces[i], strlen(pieces[i]));
		evbuffer_add_buffer(b, one);
		evbuffer_free(one);
	}
	return b;
}

static void
expect_line(struct evbuffer *b, size_t max, const char *want, int complete)
{
	struct smtp_line l;
	size_t scanned = 0;

	assert_int_equal(smtp_line_next(b, 0, max, &scanned, &l), 1);
	assert_int_equal(l.len, strlen(want));
	assert_memory_equal(l.data, want, l.len);
	assert_int_equal(l.complete, complete);
	evbuffer_drain(b, l.len);
}

/* Cuts the first line of text with cut; checks its length, text length and completeness. */
static void
expect_cut(void (*cut)(const unsigned char *, size_t, struct smtp_line *), const char *text,
           size_t len, size_t want, size_t want_text, int complete)
{
	struct smtp_line l;

	cut((const unsigned char *)text, len, &l);
	assert_ptr_equal(l.data, text);
	assert_int_equal(l.len, want);
	assert_int_equal(smtp_line_text(&l), want_text);
	assert_int_equal(l.complete, complete);
}

static void
test_line_cut(void **state)
{
	(void)state;
	/* Flat text: up to the first LF, or all of it. */
	expect_cut(smtp_line_cut, "250-A\r\n250 B\r\n", 16, 7, 5, 1);
	expect_cut(smtp_line_cut, "a\nb", 3, 2, 1, 1);
	expect_cut(smtp_line_cut, "a\rb\r", 4, 4, 4, 0);
	expect_cut(smtp_line_cut, "", 0, 0, 0, 0);
	/* Any line end: LF, CRLF, or a CR no LF follows, one last in the text included. */
	expect_cut(smtp_line_cut_any, "ab\r\ncd", 6, 4, 2, 1);
	expect_cut(smtp_line_cut_any, "a\r.\r\n", 5, 2, 1, 1);
	expect_cut(smtp_line_cut_any, "a\r\r\n", 4, 2, 1, 1);
	expect_cut(smtp_line_cut_any, "ab\r", 3, 3, 2, 1);
	expect_cut(smtp_line_cut_any, "ab\n\rc", 5, 3, 2, 1);
	expect_cut(smtp_line_cut_any, "abc", 3, 3, 3, 0);
	expect_cut(smtp_line_cut_any, "", 0, 0, 0, 0);
}

static void
test_line_iterator(void **state)
{
	static const char *split_crlf[] = {"MAIL FROM:<a>\r", "\nRCPT TO:<b>\r\n", "DA", "TA\r\n"};
	static const char *long_line[] = {"0123456\r", "\n"};
	struct evbuffer *b;
	struct smtp_line l;
	size_t scanned = 0;

	(void)state;
	/* A CR at the end of one chunk and the LF at the start of the next: one CRLF. */
	b = chunks(split_crlf, 4);
	expect_line(b, 512, "MAIL FROM:<a>\r\n", 1);
	expect_line(b, 512, "RCPT TO:<b>\r\n", 1);
	expect_line(b, 512, "DATA\r\n", 1);
	assert_int_equal(smtp_line_next(b, 0, 512, &scanned, &l), 0);
	evbuffer_free(b);

	/* Capped: a piece of max octets; a piece never ends in CR, which goes with its LF. */
	b = chunks(long_line, 2);
	expect_line(b, 8, "0123456", 0);
	expect_line(b, 8, "\r\n", 1);
	evbuffer_free(b);
	b = chunks(long_line, 1); /* the LF not here yet */
	expect_line(b, 8, "0123456", 0);
	assert_int_equal(smtp_line_next(b, 0, 8, &scanned, &l), 0);
	evbuffer_add(b, "\n", 1);
	expect_line(b, 8, "\r\n", 1);
	evbuffer_free(b);

	/* A bare LF ends a line too; a partial line waits, remembering how far it was searched. */
	assert_non_null(b = evbuffer_new());
	evbuffer_add(b, "a\nbc", 4);
	expect_line(b, 512, "a\n", 1);
	scanned = 0;
	assert_int_equal(smtp_line_next(b, 0, 512, &scanned, &l), 0);
	assert_int_equal(scanned, 2);
	evbuffer_add(b, "d\n", 2);
	assert_int_equal(smtp_line_next(b, 0, 512, &scanned, &l), 1);
	assert_int_equal(l.len, 4);
	assert_int_equal(scanned, 0);
	/* skip: octets at the head already taken and not yet moved. */
	evbuffer_add(b, "e\r\n", 3);
	assert_int_equal(smtp_line_next(b, 4, 512, NULL, &l), 1);
	assert_int_equal(l.len, 3);
	assert_memory_equal(l.data, "e\r\n", 3);
	assert_int_equal(smtp_line_next(b, 7, 512, NULL, &l), 0);
	evbuffer_free(b);
}

static void
check_rebuild(const char *const *lines, const int *removed, size_t n, const char *want,
              int want_all)
{
	size_t lens[8], i, len;
	int all;
	unsigned char *r;

	for (i = 0; i < n; i++)
		lens[i] = strlen(lines[i]);
	r = smtp_reply_rebuild((const unsigned char *const *)lines, lens, removed, n, &len, &all);
	assert_non_null(r);
	assert_int_equal(len, strlen(want));
	assert_memory_equal(r, want, len);
	assert_int_equal(all, want_all);
	free(r);
}

static void
test_reply_rebuild(void **state)
{
	static const char *ehlo[] = {"250-mx", "250-XCLIENT NAME", "250 SIZE 10"};
	static const char *tail[] = {"250-mx", "250-PIPELINING", "250 XCLIENT"};
	static const char *bare[] = {"250-mx", "250"};
	static const char *odd[] = {"250 mx", "hello", "250-x"};
	static const int none[] = {0, 0, 0}, mid[] = {0, 1, 0}, last[] = {0, 0, 1},
	                 all[] = {1, 1, 1};

	(void)state;
	check_rebuild(ehlo, none, 3, "250-mx\r\n250-XCLIENT NAME\r\n250 SIZE 10\r\n", 0);
	check_rebuild(ehlo, mid, 3, "250-mx\r\n250 SIZE 10\r\n", 0);
	/* The last line removed: the one before it now ends the reply. */
	check_rebuild(tail, last, 3, "250-mx\r\n250 PIPELINING\r\n", 0);
	/* Never a reply without a line: the last is kept, and the caller told. */
	check_rebuild(tail, all, 3, "250 XCLIENT\r\n", 1);
	check_rebuild(bare, none, 2, "250-mx\r\n250\r\n", 0);
	/* Separators set on "NNN" lines only; other lines as they came. */
	check_rebuild(odd, none, 3, "250-mx\r\nhello\r\n250 x\r\n", 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_verbs),
	    cmocka_unit_test(test_verbs_every_name_and_near_miss),
	    cmocka_unit_test(test_verb_with_nul),
	    cmocka_unit_test(test_replies),
	    cmocka_unit_test(test_line_len),
	    cmocka_unit_test(test_bdat),
	    cmocka_unit_test(test_bdat_white_space),
	    cmocka_unit_test(test_bdat_malformed),
	    cmocka_unit_test(test_bdat_size_bound),
	    cmocka_unit_test(test_pipeline_order),
	    cmocka_unit_test(test_awaits),
	    cmocka_unit_test(test_table),
	    cmocka_unit_test(test_verb_white_space),
	    cmocka_unit_test(test_line_iterator),
	    cmocka_unit_test(test_line_cut),
	    cmocka_unit_test(test_reply_rebuild),
	    cmocka_unit_test(test_auth_split),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
