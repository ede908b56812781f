/*
 * Unit tests for proxy/reply_edit.c: a held server reply run through reply, banner and
 * capability rules, its separators rebuilt, and an EHLO reply's own extensions edited.  The
 * session is a stub: its client's output is a bufferevent on no socket, read back here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "stub_session.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "proxy/filter.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/reply_edit.h"
#include "proxy/conn.h"

/*
 * Sends reply (held whole) as an answer to verb; checks what the client gets.  The output of
 * a bufferevent on no socket cannot be drained: each reply is read after the ones before.
 */
static void
send_reply(struct stub *t, enum smtp_verb answers, const char *reply, const char *want)
{
	struct evbuffer *held = evbuffer_new(), *out = bufferevent_get_output(t->s.client.bev);
	size_t before = evbuffer_get_length(out), len;
	const unsigned char *p;

	evbuffer_add(held, reply, strlen(reply));
	reply_edit_send(&t->s, held, answers, atoi(reply));
	assert_int_equal(evbuffer_get_length(held), 0);
	len = evbuffer_get_length(out) - before;
	p = evbuffer_pullup(out, -1) + before;
	if (len != strlen(want))
		print_message("got: %.*s\n", (int)len, (const char *)p);
	assert_int_equal(len, strlen(want));
	assert_memory_equal(p, want, len);
	evbuffer_free(held);
}

/* A capability rule removes a line; the separators are set again, the last "250 ". */
static void
test_capability_removed(void **state)
{
	struct stub t;

	(void)state;
	stub_init(&t, "capability /^SMTPUTF8/ IGNORE\n");
	assert_true(reply_edit_wanted(&t.s));
	send_reply(&t, VERB_EHLO, "250-mx\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n",
	           "250-mx\r\n250 PIPELINING\r\n");
	/* The first line of an EHLO reply is not a capability: never removed by such rules. */
	send_reply(&t, VERB_EHLO, "250 SMTPUTF8\r\n", "250 SMTPUTF8\r\n");
	stub_free(&t);
}

/* A reply rule rewrites a line; the client's own XCLIENT is never offered. */
static void
test_rewrite_and_policy(void **state)
{
	struct stub t;

	(void)state;
	stub_init(&t, "reply /queued as \\S+/ REWRITE queued\nbanner /Postfix/ REWRITE MTA\n");
	send_reply(&t, VERB_EOD, "250 2.0.0 Ok: queued as 4F2A1\r\n", "250 2.0.0 Ok: queued\r\n");
	send_reply(&t, VERB_GREETING, "220 mx ESMTP Postfix\r\n", "220 mx ESMTP MTA\r\n");
	send_reply(&t, VERB_EHLO, "250-mx\r\n250-XCLIENT NAME ADDR\r\n250 8BITMIME\r\n",
	           "250-mx\r\n250 8BITMIME\r\n");
	stub_free(&t);
}

/* A reply rule may not change a code's class: the server's line is kept, with a warning. */
static void
test_class_kept(void **state)
{
	struct stub t;

	(void)state;
	stub_init(
	    &t, "reply /^250 2.1.5 Ok/ REWRITE 550 5.1.1 No\nreply /^250 fine/ REWRITE 251 fine\n");
	send_reply(&t, VERB_RCPT, "250 2.1.5 Ok\r\n", "250 2.1.5 Ok\r\n");
	assert_true(t.s.warnings > 0);
	send_reply(&t, VERB_NOOP, "250 fine\r\n", "251 fine\r\n");
	stub_free(&t);
}

/* Every line removed: the last is kept, never a reply without a line, and a warning. */
static void
test_all_removed(void **state)
{
	struct stub t;

	(void)state;
	stub_init(&t, "reply /./ IGNORE\n");
	send_reply(&t, VERB_MAIL, "250-a\r\n250 b\r\n", "250 b\r\n");
	assert_true(t.s.warnings > 0);
	stub_free(&t);
	/* A reply the rules leave alone goes as it came; a bare LF is made a CRLF. */
	stub_init(&t, "reply /nothing-matches/ IGNORE\n");
	send_reply(&t, VERB_MAIL, "250-a\r\n250 ok\r\n", "250-a\r\n250 ok\r\n");
	send_reply(&t, VERB_MAIL, "250 ok\n", "250 ok\r\n");
	stub_free(&t);
}

/* One unit of a long reply through the stream editor; what it returns to relay, relayed. */
static void
stream_unit(struct stub *t, const char *data, int cont, int last, int relayed)
{
	struct unit u = {strlen(data), data[strlen(data) - 1] == '\n', (const unsigned char *)data};

	assert_int_equal(reply_edit_stream_unit(&t->s, &u, cont, last), relayed);
	if (relayed)
		evbuffer_add(bufferevent_get_output(t->s.client.bev), data, u.len);
}

/* What the client got since before (octets of its output). */
static void
client_got(struct stub *t, size_t before, const char *want)
{
	struct evbuffer *out = bufferevent_get_output(t->s.client.bev);
	size_t len = evbuffer_get_length(out) - before;
	const unsigned char *p = evbuffer_pullup(out, -1) + before;

	if (len != strlen(want))
		print_message("got: %.*s\n", (int)len, (const char *)p);
	assert_int_equal(len, strlen(want));
	assert_memory_equal(p, want, len);
}

/*
 * A reply over the hold limit, edited line by line: a line too long to edit goes as it came,
 * and when every line after it is removed an empty "250 " ends the reply (never a reply the
 * client waits on for ever).  A long line whose start was held keeps its own separator.
 */
static void
test_stream_always_ends(void **state)
{
	struct evbuffer *was = evbuffer_new(), *out;
	struct stub t;
	size_t before;

	(void)state;
	stub_init(&t, "helo /nothing-matches/ WARN\n");
	out = bufferevent_get_output(t.s.client.bev);
	pipeline_init(&t.s.pipeline);
	assert_non_null(pipeline_push(&t.s.pipeline, VERB_EHLO));
	t.s.reply.code = 250;
	evbuffer_add(was, "250-mx\r\n", 8);
	reply_edit_stream_begin(&t.s, was);
	assert_int_equal(t.s.reply.mode, SRV_STREAM);
	assert_int_equal(evbuffer_get_length(was), 0);
	stream_unit(&t, "250-AAAA", 0, 0, 1);
	stream_unit(&t, "AAAA\r\n", 1, 0, 1);
	stream_unit(&t, "250 XCLIENT NAME\r\n", 0, 1, 0);
	client_got(&t, 0, "250-mx\r\n250-AAAAAAAA\r\n250 \r\n");

	/* A kept line after the long one is the last. */
	before = evbuffer_get_length(out);
	evbuffer_add(was, "250-mx\r\n", 8);
	reply_edit_stream_begin(&t.s, was);
	stream_unit(&t, "250-AAAA", 0, 0, 1);
	stream_unit(&t, "AAAA\r\n", 1, 0, 1);
	stream_unit(&t, "250-8BITMIME\r\n", 0, 0, 0);
	stream_unit(&t, "250 XFORWARD ADDR\r\n", 0, 1, 0);
	client_got(&t, before, "250-mx\r\n250-AAAAAAAA\r\n250 8BITMIME\r\n");

	/* The start of a long last line was held: it goes as it came, "250 " and all. */
	before = evbuffer_get_length(out);
	evbuffer_add(was, "250 AAAA", 8);
	t.s.reply.last_line = 1;
	reply_edit_stream_begin(&t.s, was);
	stream_unit(&t, "AAAA\r\n", 1, 1, 1);
	client_got(&t, before, "250 AAAAAAAA\r\n");
	pipeline_clear(&t.s.pipeline);
	evbuffer_free(t.s.reply.held); /* the session's, made by stream_begin */
	evbuffer_free(was);
	stub_free(&t);
}

/* An EHLO reply of n filler lines between "250-mx" and its last, with or without AUTH. */
static char *
many_lines(size_t n, int auth)
{
	struct evbuffer *b = evbuffer_new();
	size_t i, len;
	char *r;

	evbuffer_add_printf(b, "250-mx\r\n%s", auth ? "250-AUTH PLAIN\r\n" : "");
	for (i = 0; i < n; i++)
		evbuffer_add_printf(b, "250-X-PAD-%05zu\r\n", i);
	evbuffer_add_printf(b, "250 8BITMIME\r\n");
	len = evbuffer_get_length(b);
	assert_non_null(r = malloc(len + 1));
	evbuffer_remove(b, r, len);
	r[len] = '\0';
	evbuffer_free(b);
	return r;
}

/* The rules see every line of a reply held whole, however many it has (there was a cap of
 * 256 lines, past which no rule was tried). */
static void
test_many_lines(void **state)
{
	struct stub t;
	char *in = many_lines(5000, 1), *want = many_lines(5000, 0);

	(void)state;
	stub_init(&t, "capability /^AUTH/ IGNORE\n");
	send_reply(&t, VERB_EHLO, in, want);
	assert_string_equal(reply_edit_hidden(&t.s, VERB_AUTH), "AUTH");
	free(in);
	free(want);
	stub_free(&t);
}

/* A reply over the hold limit meets the rules line by line; a line too long for them is
 * removed, and either way what a rule removed stays hidden. */
static void
test_stream_rules(void **state)
{
	struct evbuffer *was = evbuffer_new();
	struct stub t;

	(void)state;
	stub_init(&t, "capability /^AUTH/ IGNORE\n");
	pipeline_init(&t.s.pipeline);
	assert_non_null(pipeline_push(&t.s.pipeline, VERB_EHLO));
	t.s.reply.code = 250;
	evbuffer_add(was, "250-mx\r\n", 8);
	reply_edit_stream_begin(&t.s, was);
	stream_unit(&t, "250-AUTH PLAIN\r\n", 0, 0, 0);
	stream_unit(&t, "250 8BITMIME\r\n", 0, 1, 0);
	client_got(&t, 0, "250-mx\r\n250 8BITMIME\r\n");
	assert_string_equal(reply_edit_hidden(&t.s, VERB_AUTH), "AUTH");

	t.s.caps_hidden = 0;
	evbuffer_add(was, "250-mx\r\n", 8);
	reply_edit_stream_begin(&t.s, was);
	assert_null(reply_edit_hidden(&t.s, VERB_AUTH));
	stream_unit(&t, "250-AUTH PLAIN XXXX", 0, 0, 0);
	stream_unit(&t, "XXXX\r\n", 1, 0, 0);
	stream_unit(&t, "250 8BITMIME\r\n", 0, 1, 0);
	client_got(&t, 0, "250-mx\r\n250 8BITMIME\r\n250-mx\r\n250 8BITMIME\r\n");
	assert_string_equal(reply_edit_hidden(&t.s, VERB_AUTH), "AUTH");
	assert_true(t.s.warnings > 0);
	pipeline_clear(&t.s.pipeline);
	evbuffer_free(t.s.reply.held); /* the session's, made by stream_begin */
	evbuffer_free(was);
	stub_free(&t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_capability_removed),
	    cmocka_unit_test(test_rewrite_and_policy),
	    cmocka_unit_test(test_class_kept),
	    cmocka_unit_test(test_all_removed),
	    cmocka_unit_test(test_stream_always_ends),
	    cmocka_unit_test(test_many_lines),
	    cmocka_unit_test(test_stream_rules),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
