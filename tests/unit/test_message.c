/*
 * Unit tests for proxy/message.c: DATA content under header and body rules, streamed or
 * held.  The session is a stub (as in test_reply_edit.c): its server's output is a
 * bufferevent on no socket, read back here; held content beyond --hold-memory spills into a
 * temporary log directory's spool file.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "stub_session.h"

#include "tmpdir.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "logs/transcript.h"
#include "proxy/conn.h"
#include "proxy/filter.h"
#include "proxy/message.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/reply_edit.h"

/* The stub with lines of at most 1,000 octets, so that pieces are easy to make. */
static void
message_stub(struct stub *t, const char *rules)
{
	stub_init(t, rules);
	t->opts.max_line = 1000;
}

/* One content line as the client sent it (line end included). */
static void
line(struct stub *t, const char *l)
{
	message_line(&t->s, (const unsigned char *)l, strlen(l));
}

/*
 * What reached the server since the last check is exactly want.  (The output of a
 * bufferevent on no socket is not drained: each check reads past the ones before.)
 */
static void
upstream_got(struct stub *t, const char *want)
{
	struct evbuffer *out = bufferevent_get_output(t->s.server.bev);
	size_t len = evbuffer_get_length(out) - t->seen;
	const unsigned char *p = evbuffer_pullup(out, -1);

	if (p == NULL) /* an empty output has no memory */
		p = (const unsigned char *)"";
	else
		p += t->seen;
	if (len != strlen(want))
		print_message("got: %.*s\n", (int)len, (const char *)p);
	assert_int_equal(len, strlen(want));
	assert_memory_equal(p, want, len);
	t->seen += len;
}

static enum message_verdict
end(struct stub *t, const char *want_reply)
{
	const char *reply = NULL;
	enum message_verdict v = message_end(&t->s, &reply);

	assert_non_null(reply);
	assert_string_equal(reply, want_reply);
	return v;
}

/*
 * Streamed: each line leaves once it is known whole (a header once the next line shows it
 * unfolded); rules rewrite, remove and prepend headers; body lines are un-stuffed for the
 * rules and stuffed again; bare line ends leave as CRLF.
 */
static void
test_streamed(void **state)
{
	struct stub t;

	(void)state;
	message_stub(&t, "header /^Subject: (.*)/ REWRITE Subject: [ext] $1\n"
	              "header /^X-Internal:/i IGNORE\n"
	              "header /^From:/ PREPEND X-Seen: yes\n"
	              "body /^secret$/ IGNORE\n");
	assert_int_equal(message_begin(&t.s, 0), 0);
	assert_false(message_holding(&t.s));
	line(&t, "Subject: hi\r\n");
	upstream_got(&t, ""); /* a folded line may follow */
	line(&t, "X-Internal: a\r\n");
	upstream_got(&t, "Subject: [ext] hi\r\n");
	line(&t, "\tfolded b\r\n"); /* part of X-Internal: goes with it */
	line(&t, "Received: from x\n");
	upstream_got(&t, "");
	line(&t, " by y\r\n");
	line(&t, "From: <a@b>\r\n");
	/* A folded header keeps its breaks (a bare LF made CRLF). */
	upstream_got(&t, "Received: from x\r\n by y\r\n");
	line(&t, "\r\n");
	upstream_got(&t, "X-Seen: yes\r\nFrom: <a@b>\r\n\r\n");
	line(&t, "..leading dot\r\n");
	upstream_got(&t, "..leading dot\r\n");
	line(&t, "secret\r\n");
	upstream_got(&t, "");
	line(&t, "bare\n");
	upstream_got(&t, "bare\r\n");
	assert_int_equal(end(&t, ""), MSG_ACCEPT);
	/* The end of data is the caller's to relay. */
	upstream_got(&t, "");
	assert_int_equal(t.s.warnings, 0);
	stub_free(&t);
}

/* A rewrite that makes a body line "." is stuffed again: it must not end the message. */
static void
test_rewrite_to_dot(void **state)
{
	struct stub t;

	(void)state;
	message_stub(&t, "body /^x$/ REWRITE .\n");
	assert_int_equal(message_begin(&t.s, 0), 0);
	line(&t, "\r\n");
	line(&t, "x\r\n");
	line(&t, "..\r\n"); /* the client's own stuffed "." */
	upstream_got(&t, "\r\n..\r\n..\r\n");
	assert_int_equal(end(&t, ""), MSG_ACCEPT);
	stub_free(&t);
}

/* Held: nothing reaches the server before the end; a body rule's REJECT refuses it whole. */
static void
test_held_reject(void **state)
{
	struct stub t;

	(void)state;
	message_stub(&t, "body /viagra/i REJECT 550 5.7.1 No spam\n");
	assert_int_equal(message_begin(&t.s, 1), 0);
	assert_true(message_holding(&t.s));
	line(&t, "Subject: offer\r\n");
	line(&t, "\r\n");
	line(&t, "buy VIAGRA\r\n");
	line(&t, "more\r\n");
	upstream_got(&t, "");
	assert_int_equal(end(&t, "550 5.7.1 No spam"), MSG_REJECT);
	upstream_got(&t, "");
	message_free(&t.s);
	assert_false(message_holding(&t.s));
	assert_null(t.s.msg);
	stub_free(&t);
}

/* Held and accepted: sent whole, with the end of data, once the verdict is known. */
static void
test_held_sent(void **state)
{
	struct stub t;

	(void)state;
	message_stub(&t, "body /viagra/i REJECT\nheader /^X-Drop:/ IGNORE\n");
	assert_int_equal(message_begin(&t.s, 1), 0);
	line(&t, "Subject: fine\r\n");
	line(&t, "X-Drop: me\r\n");
	line(&t, "\r\n");
	line(&t, "..\r\n"); /* a line "." stays stuffed: not the end */
	line(&t, "ok\r\n");
	upstream_got(&t, "");
	assert_int_equal(end(&t, ""), MSG_ACCEPT);
	upstream_got(&t, "");
	assert_int_equal(message_send_held(&t.s), 0);
	upstream_got(&t, "Subject: fine\r\n\r\n..\r\nok\r\n.\r\n");
	assert_null(t.s.msg);
	/* Sent once: nothing held any more. */
	assert_int_equal(message_send_held(&t.s), -1);
	stub_free(&t);
}

/* Streamed and refused midway: the server must never see its end; the rest is not sent. */
static void
test_streamed_refused(void **state)
{
	struct stub t;

	(void)state;
	message_stub(&t, "body /viagra/i REJECT 550 5.7.1 No spam\n");
	assert_int_equal(message_begin(&t.s, 0), 0);
	line(&t, "\r\n");
	line(&t, "before\r\n");
	upstream_got(&t, "\r\nbefore\r\n");
	line(&t, "viagra\r\n");
	line(&t, "after\r\n");
	upstream_got(&t, "");
	assert_int_equal(end(&t, "550 5.7.1 No spam"), MSG_TOO_BIG);
	assert_int_equal(t.s.warnings, 1);
	stub_free(&t);
}

/* The smallest SIZE a server announced holds, 0 sets none; an EHLO reply teaches it. */
static void
test_learn_size(void **state)
{
	struct evbuffer *held;
	struct stub t;

	(void)state;
	message_stub(&t, "header /^X-Never:/ IGNORE\n");
	message_learn_size(&t.s, 0);
	assert_int_equal(t.s.server_size, 0);
	message_learn_size(&t.s, 5000);
	assert_int_equal(t.s.server_size, 5000);
	message_learn_size(&t.s, 9000);
	assert_int_equal(t.s.server_size, 5000);
	message_learn_size(&t.s, 0);
	assert_int_equal(t.s.server_size, 5000);
	/* Through the EHLO reply the client gets (reply_edit.c learns it as it passes). */
	assert_non_null(held = evbuffer_new());
	evbuffer_add_printf(held, "250-mx\r\n250-SIZE 1200\r\n250 8BITMIME\r\n");
	reply_edit_send(&t.s, held, VERB_EHLO, 250);
	assert_int_equal(t.s.server_size, 1200);
	evbuffer_add_printf(held, "250-mx\r\n250 SIZE 0\r\n");
	reply_edit_send(&t.s, held, VERB_EHLO, 250);
	assert_int_equal(t.s.server_size, 1200);
	evbuffer_free(held);
	stub_free(&t);
}

/*
 * The server's SIZE bounds a held message, counted as RFC 1870 counts: CRLFs in, the dots of
 * dot-stuffing out.  At the limit it is taken; one octet over, refused 552.
 */
static void
test_size_limit(void **state)
{
	struct stub t;

	(void)state;
	message_stub(&t, "body /never/ REJECT\n");
	message_learn_size(&t.s, 10);
	/* 2 + 6 (".abcd" and CRLF: its stuffing dot not counted) + 2 = 10 */
	assert_int_equal(message_begin(&t.s, 1), 0);
	line(&t, "\r\n");
	line(&t, "..abc\r\n");
	line(&t, "\r\n");
	assert_int_equal(end(&t, ""), MSG_ACCEPT);
	assert_int_equal(message_send_held(&t.s), 0);
	upstream_got(&t, "\r\n..abc\r\n\r\n.\r\n");
	/* One more octet. */
	assert_int_equal(message_begin(&t.s, 1), 0);
	line(&t, "\r\n");
	line(&t, "..abcd\r\n");
	line(&t, "\r\n");
	assert_int_equal(end(&t, "552 5.3.4 Message size exceeds fixed limit"), MSG_TOO_BIG);
	upstream_got(&t, "");
	/* --max-message bounds it when the server's SIZE is larger. */
	t.opts.max_message = 4;
	assert_int_equal(message_begin(&t.s, 1), 0);
	line(&t, "\r\n");
	line(&t, "abc\r\n");
	assert_int_equal(end(&t, "552 5.3.4 Message size exceeds fixed limit"), MSG_TOO_BIG);
	stub_free(&t);
}

/*
 * A held message bigger than --hold-memory: the rest goes to the spool file in the log
 * directory, and the whole message reaches the server in order.
 */
static void
test_hold_spills(void **state)
{
	char dir[] = "/tmp/test_message.XXXXXX", text[64], *want;
	struct stub t;
	size_t wlen = 0;
	int i;

	(void)state;
	assert_non_null(mkdtemp(dir));
	assert_int_equal(transcript_init(NULL, dir, -1), 0);
	message_stub(&t, "body /never/ REJECT\n");
	t.opts.hold_memory = 2048;
	assert_non_null(want = malloc(64 * 1000));
	assert_int_equal(message_begin(&t.s, 1), 0);
	line(&t, "\r\n");
	memcpy(want, "\r\n", 2);
	wlen = 2;
	for (i = 0; i < 1000; i++) {
		snprintf(text, sizeof(text), "%sline %04d of a message held in its spool file\r\n",
		         i % 7 == 0 ? "." : "", i);
		/* The client stuffs a leading dot; the server gets it stuffed again. */
		if (text[0] == '.') {
			memmove(text + 1, text, strlen(text) + 1);
			text[0] = '.';
		}
		line(&t, text);
		memcpy(want + wlen, text, strlen(text));
		wlen += strlen(text);
	}
	upstream_got(&t, "");
	assert_int_equal(end(&t, ""), MSG_ACCEPT);
	assert_int_equal(message_send_held(&t.s), 0);
	memcpy(want + wlen, ".\r\n", 4);
	upstream_got(&t, want);
	free(want);
	stub_free(&t);
	transcript_shutdown();
	tmpdir_remove(dir);
}

/* The spool: a file in the log directory no name leads to, the owner's alone; none without
 * a log directory. */
static void
test_spool_file(void **state)
{
	char dir[] = "/tmp/test_message.XXXXXX";
	struct stat st;
	int fd;

	(void)state;
	assert_int_equal(message_spool_open(), -1);
	assert_non_null(mkdtemp(dir));
	assert_int_equal(transcript_init(NULL, dir, -1), 0);
	assert_true((fd = message_spool_open()) >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_nlink, 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	close(fd);
	transcript_shutdown();
	tmpdir_remove(dir);
}

/* Beyond --hold-memory with no spool (no log directory): refused 451, never kept in memory. */
static void
test_hold_no_spool(void **state)
{
	struct stub t;
	int i;

	(void)state;
	message_stub(&t, "body /never/ REJECT\n");
	t.opts.hold_memory = 100;
	assert_int_equal(message_begin(&t.s, 1), 0);
	line(&t, "\r\n");
	for (i = 0; i < 10; i++)
		line(&t, "a line of body text, twenty times over in all\r\n");
	assert_int_equal(end(&t, "451 4.3.0 Error writing message file"), MSG_TOO_BIG);
	upstream_got(&t, "");
	assert_int_equal(t.s.warnings, 1);
	stub_free(&t);
}

/*
 * A line over --max-line comes in pieces: gathered and inspected whole (a word across two
 * pieces is seen); over --max-header it can't be inspected and the message is refused.
 */
static void
test_pieces(void **state)
{
	const unsigned char *u;
	struct stub t;

	(void)state;
	message_stub(&t, "header /^Subject: .*spam/ REJECT 550 5.7.1 header spam\n");
	t.opts.max_header = 64;
	assert_int_equal(message_begin(&t.s, 0), 0);
	u = (const unsigned char *)"Subject: long sp";
	message_piece(&t.s, u, 16, 1, 0);
	u = (const unsigned char *)"ace\r\n";
	message_piece(&t.s, u, 5, 0, 1);
	line(&t, "\r\n");
	upstream_got(&t, "Subject: long space\r\n\r\n");
	assert_int_equal(end(&t, ""), MSG_ACCEPT);
	/* Held: "sp" + "am" is spam, in two pieces. */
	assert_int_equal(message_begin(&t.s, 1), 0);
	message_piece(&t.s, (const unsigned char *)"Subject: sp", 11, 1, 0);
	message_piece(&t.s, (const unsigned char *)"am\r\n", 4, 0, 1);
	line(&t, "\r\n");
	assert_int_equal(end(&t, "550 5.7.1 header spam"), MSG_REJECT);
	/* 65 octets before the line end: over --max-header. */
	assert_int_equal(message_begin(&t.s, 1), 0);
	line(&t, "\r\n");
	message_piece(&t.s, (const unsigned char *)"0123456789012345678901234567890123456789", 40,
	              1, 0);
	message_piece(&t.s, (const unsigned char *)"0123456789012345678901234", 25, 0, 0);
	message_piece(&t.s, (const unsigned char *)"\r\n", 2, 0, 1);
	assert_int_equal(end(&t, "552 5.3.4 Message line too long to inspect"), MSG_TOO_BIG);
	/* 64: at the limit, taken. */
	assert_int_equal(message_begin(&t.s, 1), 0);
	line(&t, "\r\n");
	message_piece(&t.s, (const unsigned char *)"0123456789012345678901234567890123456789", 40,
	              1, 0);
	message_piece(&t.s, (const unsigned char *)"012345678901234567890123\r\n", 26, 0, 1);
	assert_int_equal(end(&t, ""), MSG_ACCEPT);
	stub_free(&t);
}

/* A logical header (its folded lines together) over --max-header is refused, not cut. */
static void
test_header_too_long(void **state)
{
	struct stub t;

	(void)state;
	message_stub(&t, "header /x/ WARN\n");
	t.opts.max_header = 40;
	assert_int_equal(message_begin(&t.s, 1), 0);
	line(&t, "Received: from a\r\n"); /* 16 + 2 */
	line(&t, " by b with c\r\n");     /* 12 + 2: 32 */
	assert_int_equal(end(&t, ""), MSG_ACCEPT);
	assert_int_equal(message_begin(&t.s, 1), 0);
	line(&t, "Received: from a\r\n");
	line(&t, " by b with c\r\n");
	line(&t, " id 12345\r\n"); /* 9 + 2: 43 */
	line(&t, "\r\n");
	assert_int_equal(end(&t, "552 5.3.4 Message header too long"), MSG_TOO_BIG);
	stub_free(&t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_streamed),         cmocka_unit_test(test_rewrite_to_dot),
	    cmocka_unit_test(test_held_reject),      cmocka_unit_test(test_held_sent),
	    cmocka_unit_test(test_streamed_refused), cmocka_unit_test(test_learn_size),
	    cmocka_unit_test(test_size_limit),       cmocka_unit_test(test_hold_spills),
	    cmocka_unit_test(test_hold_no_spool),    cmocka_unit_test(test_spool_file),
	    cmocka_unit_test(test_pieces),           cmocka_unit_test(test_header_too_long),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
