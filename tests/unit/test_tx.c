/*
 * Unit tests for proxy/tx.c (a session's transactions, for its event) and proxy/pipeline.c
 * (the queue of commands awaiting replies).  tx.c needs no live session: only the session's
 * transaction fields, set up here on a zeroed struct session.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/pipeline.h"
#include "proxy/conn.h"
#include "smtp/smtp.h"
#include "proxy/tx.h"

static struct session *
session_stub(void)
{
	struct session *s = calloc(1, sizeof(*s));

	assert_non_null(s);
	TAILQ_INIT(&s->txs);
	pipeline_init(&s->pipeline);
	return s;
}

static void
session_stub_free(struct session *s)
{
	struct tx *tx;

	while ((tx = TAILQ_FIRST(&s->txs)) != NULL) {
		TAILQ_REMOVE(&s->txs, tx, entry);
		tx_free(tx);
	}
	tx_free(s->tx_spare);
	pipeline_clear(&s->pipeline);
	free(s->helo);
	free(s);
}

static void
command(struct smtp_command *cmd, const char *line)
{
	smtp_parse_command((const unsigned char *)line, strlen(line), cmd);
}

/* MAIL, two RCPTs and the end of data, with the server's codes as they come back. */
static void
test_transaction(void **state)
{
	struct session *s = session_stub();
	struct smtp_command cmd;
	struct pending *p;
	struct tx *tx;

	(void)state;
	command(&cmd, "HELO client.example extra");
	tx_helo(s, &cmd);
	assert_string_equal(s->helo, "client.example");
	command(&cmd, "MAIL FROM: <a@example.com> SIZE=10");
	tx_begin(s, &cmd);
	assert_non_null(tx = s->tx);
	assert_string_equal(tx->mail_from, "<a@example.com>");
	assert_string_equal(tx->mail_params, "SIZE=10");
	command(&cmd, "RCPT TO:<b@example.net>");
	assert_int_equal(tx_rcpt(s, &cmd), 0);
	command(&cmd, "RCPT TO:<c@example.net>");
	assert_int_equal(tx_rcpt(s, &cmd), 1);
	assert_false(tx_accepted(tx));

	p = pipeline_push(&s->pipeline, VERB_RCPT);
	p->tx = tx;
	p->rcpt_index = 1;
	s->reply.text = "2.1.5 Ok";
	tx_reply(s, p, 250);
	assert_int_equal(tx->rcpts[1].code, 250);
	assert_string_equal(tx->rcpts[1].text, "2.1.5 Ok");
	assert_null(tx->rcpts[0].text);
	assert_int_equal(tx->rcpts[0].code, 0);
	assert_true(tx_accepted(tx));

	/* The final reply closes the transaction and keeps the server's text. */
	p = pipeline_push(&s->pipeline, VERB_EOD);
	p->tx = tx;
	s->reply.text = "2.0.0 Ok: queued";
	tx_reply(s, p, 250);
	assert_int_equal(tx->code, 250);
	assert_string_equal(tx->text, "2.0.0 Ok: queued");
	assert_null(s->tx);
	assert_int_equal(s->ntx, 1);
	session_stub_free(s);
}

/* A refused MAIL is recorded with the proxy's code and opens no transaction. */
static void
test_refused(void **state)
{
	struct session *s = session_stub();
	struct smtp_command cmd;
	struct tx *tx;

	(void)state;
	command(&cmd, "MAIL FROM:<x@evil.example>");
	tx_refused(s, &cmd, 550);
	assert_null(s->tx);
	assert_non_null(tx = TAILQ_FIRST(&s->txs));
	assert_int_equal(tx->mail_code, 550);
	command(&cmd, "MAIL FROM:<a@b>");
	tx_begin(s, &cmd);
	command(&cmd, "RCPT TO:<y@evil.example>");
	tx_refused(s, &cmd, 554);
	assert_int_equal(s->tx->nrcpt, 1);
	assert_int_equal(s->tx->rcpts[0].code, 554);
	/* A RCPT outside any transaction is not tracked. */
	s->tx = NULL;
	assert_int_equal(tx_rcpt(s, &cmd), -1);
	session_stub_free(s);
}

/* A BDAT chunk's 250 does not end the transaction; its LAST one does. */
static void
test_bdat_reply(void **state)
{
	struct session *s = session_stub();
	struct smtp_command cmd;
	struct pending *p;
	struct tx *tx;

	(void)state;
	command(&cmd, "MAIL FROM:<a@b>");
	tx_begin(s, &cmd);
	tx = s->tx;
	p = pipeline_push(&s->pipeline, VERB_BDAT);
	p->tx = tx;
	tx_reply(s, p, 250);
	assert_int_equal(tx->code, 0);
	assert_ptr_equal(s->tx, tx);
	p->last = 1;
	tx_reply(s, p, 250);
	assert_int_equal(tx->code, 250);
	assert_null(s->tx);
	session_stub_free(s);
}

/* Past the recorded maximum, transactions are still followed, in one reused struct. */
static void
test_unrecorded(void **state)
{
	struct session *s = session_stub();
	struct smtp_command cmd;
	int i;

	(void)state;
	command(&cmd, "MAIL FROM:<a@b>");
	for (i = 0; i < 1002; i++)
		tx_begin(s, &cmd);
	assert_int_equal(s->ntx, 1000);
	assert_int_equal(s->tx_unrecorded, 2);
	assert_ptr_equal(s->tx, s->tx_spare);
	session_stub_free(s);
}

/* Local replies wait their turn, count as no server reply, and are copies. */
static void
test_pipeline_local(void **state)
{
	struct pipeline p;
	char reply[] = "250 2.0.0 own\r\n";
	struct pending *e;

	(void)state;
	pipeline_init(&p);
	assert_non_null(pipeline_push_local(&p, reply));
	assert_non_null(pipeline_push(&p, VERB_RCPT));
	assert_non_null(e = pipeline_push_local(&p, "221 bye\r\n"));
	assert_int_equal(e->rcpt_index, -1);
	reply[0] = '5';
	assert_int_equal(p.count, 3);
	assert_int_equal(p.remote, 1);
	assert_string_equal(pipeline_head(&p)->local_reply, "250 2.0.0 own\r\n");
	pipeline_pop(&p);
	assert_int_equal(p.remote, 1);
	assert_int_equal(pipeline_head(&p)->verb, VERB_RCPT);
	pipeline_pop(&p);
	assert_int_equal(p.remote, 0);
	pipeline_clear(&p);
	assert_int_equal(p.count, 0);
}

/* The queue id each MTA names in its reply to the end of data, and none where there is none. */
static void
test_queue_id(void **state)
{
	static const struct {
		const char *text, *id;
	} cases[] = {
	    {"2.0.0 Ok: queued as 4Xq2Yb1kz9", "4Xq2Yb1kz9"},  /* Postfix */
	    {"2.0.0 Ok: queued as 4Xq2Yb1kz9 ", "4Xq2Yb1kz9"}, /* Postfix, trailing space */
	    {"OK id=1rAbCd-0001Ab-Cd", "1rAbCd-0001Ab-Cd"},    /* Exim */
	    {"OK id=1vXyZw-000000003Kq-1aBc", "1vXyZw-000000003Kq-1aBc"}, /* Exim 4.97 ids */
	    {"2.0.0 wB6NX5fa012345 Message accepted for delivery", "wB6NX5fa012345"}, /* Sendmail */
	    {"2.0.0 5f3c1b2a Message accepted for delivery", "5f3c1b2a"}, /* OpenSMTPD */
	    {"2.6.0 <6b36518e-14b1@example.com> [InternalId=23138874] Queued mail for delivery",
	     "23138874"}, /* Exchange */
	    {"2.6.0 <a@b> [InternalId=5287183860161, Hostname=EX01.example.com] 11540 bytes in "
	     "0.120, 93.5 KB/sec Queued mail for delivery",
	     "5287183860161"}, /* Exchange Online */
	};
	static const char *const none[] = {"2.0.0 Ok",      "2.0.0 Message accepted for delivery",
	                                   "Great success", "2.0.0 Ok: queued as ",
	                                   "OK valid=1",    ""};
	char id[64];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(tx_queue_id(cases[i].text, id, sizeof(id)), 0);
		assert_string_equal(id, cases[i].id);
	}
	for (i = 0; i < sizeof(none) / sizeof(none[0]); i++)
		assert_int_equal(tx_queue_id(none[i], id, sizeof(id)), -1);
	assert_int_equal(tx_queue_id(NULL, id, sizeof(id)), -1);
	/* An id longer than the buffer is none, not a cut one. */
	assert_int_equal(tx_queue_id("Ok: queued as 0123456789", id, 8), -1);
}

/* MAIL's address alone, its parameters apart, split on any white space as servers do. */
static void
test_mail_params(void **state)
{
	static const struct {
		const char *line, *from, *params;
	} cases[] = {
	    {"MAIL FROM:<a@example.com>", "<a@example.com>", NULL},
	    {"MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME", "<a@example.com>",
	     "SIZE=100 BODY=8BITMIME"},
	    {"MAIL FROM:<>\tSIZE=1 ", "<>", "SIZE=1"},
	    {"MAIL FROM: <\"a b>\"@example.com> SMTPUTF8", "<\"a b>\"@example.com>", "SMTPUTF8"},
	    {"MAIL FROM:a@example.com SIZE=5", "a@example.com", "SIZE=5"},
	    /* VT, FF and CR part parameters as space and tab do (Postfix's smtpd_token). */
	    {"MAIL FROM:<a@example.com>\vSIZE=10\f\rBODY=8BITMIME\t \tRET=HDRS",
	     "<a@example.com>", "SIZE=10 BODY=8BITMIME RET=HDRS"},
	    /* Inside a parameter, a control octet is escaped like any recorded octet. */
	    {"MAIL FROM:<> ENVID=a\x01" "b", "<>", "ENVID=a\\x01b"},
	};
	struct smtp_command cmd;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct session *s = session_stub();

		command(&cmd, cases[i].line);
		tx_begin(s, &cmd);
		assert_non_null(s->tx);
		assert_string_equal(s->tx->mail_from, cases[i].from);
		if (cases[i].params == NULL)
			assert_null(s->tx->mail_params);
		else
			assert_string_equal(s->tx->mail_params, cases[i].params);
		session_stub_free(s);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_transaction),    cmocka_unit_test(test_refused),
	    cmocka_unit_test(test_bdat_reply),     cmocka_unit_test(test_unrecorded),
	    cmocka_unit_test(test_pipeline_local), cmocka_unit_test(test_queue_id),
	    cmocka_unit_test(test_mail_params),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
