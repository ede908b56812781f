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

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_capability_removed),
	    cmocka_unit_test(test_rewrite_and_policy),
	    cmocka_unit_test(test_class_kept),
	    cmocka_unit_test(test_all_removed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
