/*
 * The SMTP tracker: consumes what each side sent, as far as the SMTP state allows, records
 * it, and moves it to the other side unchanged.  The client's lines are commands, SASL
 * data, message content or BDAT chunks; the server's lines are replies, matched to the
 * pending commands in order (RFC 2920).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "logs/log.h"
#include "logs/redact.h"
#include "logs/transcript.h"
#include "proxy/ehlo.h"
#include "proxy/filter.h"
#include "proxy/message.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/reply_edit.h"
#include "proxy/session.h"

#define TX_MAX_RECORDED 1000
/* Longest reply held whole for editing; a longer one is relayed as it comes. */
#define REPLY_HOLD_MAX 65536

static void relay_setup_step(struct session *s);
static void relay_hold_decide(struct session *s);
static void relay_resume_client(struct session *s);
static void relay_send_upstream(struct session *s, const char *line);
static void relay_message_start(struct session *s);
static void relay_client_starttls(struct session *s);

/* One unit of input: a whole line (complete) or a piece of an over-long one. */
struct unit {
	size_t len;	/* octets, line end included */
	int complete;	/* ends with LF */
	const unsigned char *data;
};

static struct evbuffer *
side_input(struct side *x)
{
	return bufferevent_get_input(x->bev);
}

/*
 * Finds the next line in a side's input, capped at --max-line before it is read: returns 1
 * with a line or a max-line piece, 0 when more input is needed.
 */
static int
side_next_unit(struct side *x, size_t max, struct unit *u)
{
	struct evbuffer *in = side_input(x);
	size_t avail = evbuffer_get_length(in);
	struct evbuffer_ptr start, eol;
	size_t eol_len;

	if (avail == 0)
		return 0;
	if (x->scanned > 0 && x->scanned < avail)
		evbuffer_ptr_set(in, &start, x->scanned, EVBUFFER_PTR_SET);
	else
		evbuffer_ptr_set(in, &start, 0, EVBUFFER_PTR_SET);
	eol = evbuffer_search_eol(in, &start, &eol_len, EVBUFFER_EOL_LF);
	if (eol.pos >= 0 && (size_t)eol.pos < max) {
		u->len = (size_t)eol.pos + 1;
		u->complete = 1;
	} else if (avail >= max) {
		u->len = max;
		u->complete = 0;
	} else {
		x->scanned = avail;
		return 0;
	}
	x->scanned = 0;
	u->data = evbuffer_pullup(in, (ev_ssize_t)u->len);
	return u->data != NULL;
}

/* Moves the unit to the peer, unchanged, and counts it. */
static void
side_forward(struct side *x, size_t len)
{
	struct session *s = x->s;
	struct side *peer = x->dir == SIDE_CLIENT ? &s->server : &s->client;

	x->octets += len;
	if (peer->bev == NULL) {
		evbuffer_drain(side_input(x), len);
		return;
	}
	evbuffer_remove_buffer(side_input(x), bufferevent_get_output(peer->bev), len);
}

static int
server_gone(const struct session *s)
{
	return s->server.bev == NULL;
}

static void
side_discard(struct side *x, size_t len)
{
	x->octets += len;
	evbuffer_drain(side_input(x), len);
}

/* Records a unit, as "C:"/"S:" or, for a later piece of a long line, "C+"/"S+". */
static void
side_record(struct side *x, const struct unit *u)
{
	const char *kind;

	if (x->dir == SIDE_CLIENT)
		kind = x->in_piece ? "C+" : "C:";
	else
		kind = x->in_piece ? "S+" : "S:";
	transcript_data(x->s->transcript, kind, u->data, u->len);
	x->in_piece = !u->complete;
}

/* Our 220 to STARTTLS is on its way: drop what the client pipelined after it, then TLS. */
static void
relay_client_starttls(struct session *s)
{
	size_t stale = evbuffer_get_length(side_input(&s->client));

	/* CVE-2011-0411: plaintext sent before the handshake is never acted on. */
	if (stale > 0) {
		session_warn(s, "discarded %zu octets the client sent after STARTTLS before the "
				"handshake",
			     stale);
		side_discard(&s->client, stale);
	}
	session_enter_state(s, ST_CLIENT_TLS);
	if (session_start_tls(s, &s->client) != 0) {
		transcript_event(s->transcript, "tls client failed reason=\"TLS set-up failed\"");
		session_close(s, "client_tls_failed");
	}
}

/* Sends the proxy's own replies that have come to the head of the queue. */
static void
relay_flush_local(struct session *s)
{
	struct pending *head;

	while ((head = pipeline_head(&s->pipeline)) != NULL && head->local_reply != NULL) {
		if (head->hold_decide) {
			pipeline_pop(&s->pipeline);
			relay_hold_decide(s);
			return;
		}
		session_reply(s, head->local_reply);
		if (head->disconnect) {
			pipeline_pop(&s->pipeline);
			session_close(s, "rule_disconnect");
			return;
		}
		if (head->starttls) {
			pipeline_pop(&s->pipeline);
			relay_client_starttls(s);
			return;
		}
		pipeline_pop(&s->pipeline);
	}
}

static void
relay_answer_locally(struct session *s, const char *reply)
{
	if (pipeline_push_local(&s->pipeline, reply) == NULL) {
		session_close(s, "error");
		return;
	}
	relay_flush_local(s);
}

static struct pending *
relay_expect(struct session *s, enum smtp_verb verb)
{
	struct pending *p = pipeline_push(&s->pipeline, verb);

	if (p == NULL)
		session_close(s, "error");
	return p;
}

static char *
relay_strndup(const unsigned char *p, size_t n)
{
	char *s = malloc(n + 1);

	if (s != NULL) {
		memcpy(s, p, n);
		s[n] = '\0';
	}
	return s;
}

/* The path of "MAIL FROM:<a@b> SIZE=1" or "RCPT TO:<c@d>": the argument after the colon. */
static char *
relay_path(const struct smtp_command *cmd)
{
	const unsigned char *colon;
	size_t off;

	if (cmd->arg == NULL)
		return strdup("");
	colon = memchr(cmd->arg, ':', cmd->arglen);
	off = colon != NULL ? (size_t)(colon - cmd->arg) + 1 : 0;
	while (off < cmd->arglen && cmd->arg[off] == ' ')
		off++;
	return relay_strndup(cmd->arg + off, cmd->arglen - off);
}

static void
relay_tx_begin(struct session *s, const struct smtp_command *cmd)
{
	struct tx *tx;

	s->tx = NULL;
	if (s->ntx >= TX_MAX_RECORDED || (tx = calloc(1, sizeof(*tx))) == NULL)
		return;
	tx->mail_from = relay_path(cmd);
	tx->mail_code = 0;
	tx->code = 0;
	TAILQ_INSERT_TAIL(&s->txs, tx, entry);
	s->ntx++;
	s->tx = tx;
}

static int
relay_tx_rcpt(struct session *s, const struct smtp_command *cmd)
{
	struct tx *tx = s->tx;
	struct rcpt *r;

	if (tx == NULL || tx->nrcpt >= 10000)
		return -1;
	if ((r = realloc(tx->rcpts, (tx->nrcpt + 1) * sizeof(*r))) == NULL)
		return -1;
	tx->rcpts = r;
	r[tx->nrcpt].to = relay_path(cmd);
	r[tx->nrcpt].code = 0;
	return (int)tx->nrcpt++;
}

static void
relay_helo(struct session *s, const struct smtp_command *cmd)
{
	size_t n = 0;

	while (cmd->arg != NULL && n < cmd->arglen && cmd->arg[n] != ' ')
		n++;
	free(s->helo);
	s->helo = relay_strndup(cmd->arg != NULL ? cmd->arg : (const unsigned char *)"", n);
	s->tx = NULL;
}

/* Records a SASL response (initial or after a 334) as a marker that keeps only the user. */
static void
relay_record_sasl(struct session *s, const char *prefix, const unsigned char *b64, size_t len)
{
	char user[REDACT_USER_MAX];

	user[0] = '\0';
	if (s->auth_user[0] == '\0' &&
	    redact_sasl_user(s->auth_mech, s->auth_step, (const char *)b64, len, user,
			     sizeof(user)) == 1)
		snprintf(s->auth_user, sizeof(s->auth_user), "%s", user);
	transcript_redacted(s->transcript, "C:", prefix, len,
			    user[0] != '\0' ? user : NULL);
	s->auth_step++;
}

static void
relay_auth(struct session *s, const struct smtp_command *cmd)
{
	size_t mlen = 0, off;
	char prefix[64];

	while (cmd->arg != NULL && mlen < cmd->arglen && cmd->arg[mlen] != ' ')
		mlen++;
	if (mlen >= sizeof(s->auth_mech))
		mlen = sizeof(s->auth_mech) - 1;
	memcpy(s->auth_mech, cmd->arg != NULL ? (const char *)cmd->arg : "", mlen);
	s->auth_mech[mlen] = '\0';
	s->auth_user[0] = '\0';
	s->auth_step = 0;
	s->auth_used = 1;
	off = mlen;
	while (cmd->arg != NULL && off < cmd->arglen && cmd->arg[off] == ' ')
		off++;
	if (cmd->arg == NULL || off >= cmd->arglen) {
		snprintf(prefix, sizeof(prefix), "AUTH %s", s->auth_mech);
		transcript_data(s->transcript, "C:", (const unsigned char *)prefix, strlen(prefix));
		return;
	}
	snprintf(prefix, sizeof(prefix), "AUTH %s ", s->auth_mech);
	relay_record_sasl(s, prefix, cmd->arg + off, cmd->arglen - off);
}

/* A BDAT command: the chunk that follows is exactly its size, never lines. */
static void
relay_bdat(struct session *s, const struct smtp_command *cmd, struct pending *p)
{
	uint64_t size;
	int last;

	if (smtp_parse_bdat(cmd->arg, cmd->arglen, &size, &last) != 0)
		return; /* the server will refuse it; no chunk follows */
	p->last = last;
	if (s->tx != NULL)
		s->tx->size += size;
	transcript_event(s->transcript, "bdat chunk octets=%llu last=%s",
			 (unsigned long long)size, last ? "yes" : "no");
	s->chunk_left = size;
	if (size > 0)
		session_enter_state(s, ST_CHUNK);
}

/* Answers a local reply for a command that must not reach the server. */
static void
relay_refuse(struct session *s, const struct unit *u, const char *reply)
{
	side_record(&s->client, u);
	side_discard(&s->client, u->len);
	relay_answer_locally(s, reply);
}

/*
 * Commands the proxy answers itself: a client's XCLIENT/XFORWARD (it must not claim
 * another identity to the server) and STARTTLS when we terminate or strip TLS.  Returns 1
 * when the command was handled here.
 */
static int
relay_command_local(struct session *s, const struct unit *u, const struct smtp_command *cmd)
{
	const struct options *o = s->px->opts;
	struct pending *p;

	if (cmd->verb == VERB_XCLIENT || cmd->verb == VERB_XFORWARD) {
		session_warn(s, "client's own %s refused", smtp_verb_name(cmd->verb));
		relay_refuse(s, u, "550 5.7.0 Command not permitted\r\n");
		return 1;
	}
	if (cmd->verb != VERB_STARTTLS || o->tls_mode == TLS_PASSTHROUGH)
		return 0;
	if (o->tls_mode == TLS_STRIP) {
		relay_refuse(s, u, "454 4.7.0 TLS not available\r\n");
		return 1;
	}
	if (s->client.tls) {
		relay_refuse(s, u, "503 5.5.1 TLS already active\r\n");
		return 1;
	}
	side_record(&s->client, u);
	side_discard(&s->client, u->len);
	session_enter_state(s, ST_AWAIT);
	if ((p = pipeline_push_local(&s->pipeline, "220 2.0.0 Ready to start TLS\r\n")) == NULL) {
		session_close(s, "error");
		return 1;
	}
	p->starttls = 1;
	relay_flush_local(s);
	return 1;
}

/* A refused MAIL or RCPT still shows in the event, with the proxy's reply code. */
static void
relay_tx_refused(struct session *s, const struct smtp_command *cmd, int code)
{
	int i;

	if (cmd->verb == VERB_MAIL) {
		relay_tx_begin(s, cmd);
		if (s->tx != NULL)
			s->tx->mail_code = code;
		s->tx = NULL;
	} else if (cmd->verb == VERB_RCPT && (i = relay_tx_rcpt(s, cmd)) >= 0) {
		s->tx->rcpts[i].code = code;
	}
}

/* What the rules decided for a command that is not forwarded: REJECT or DISCONNECT. */
static void
relay_command_refused(struct session *s, const struct unit *u, const struct smtp_command *cmd,
		      int verdict)
{
	char reply[600];
	struct pending *p;
	uint64_t size;
	int last;

	snprintf(reply, sizeof(reply), "%s\r\n", s->outcome.reply);
	side_discard(&s->client, u->len);
	relay_tx_refused(s, cmd, atoi(reply));
	if ((p = pipeline_push_local(&s->pipeline, reply)) == NULL) {
		session_close(s, "error");
		return;
	}
	if (verdict == ACT_DISCONNECT) {
		p->disconnect = 1;
		session_enter_state(s, ST_AWAIT);
	} else if (cmd->verb == VERB_BDAT &&
		   smtp_parse_bdat(cmd->arg, cmd->arglen, &size, &last) == 0 && size > 0) {
		/* RFC 3030: the chunk of a refused BDAT is still read, and thrown away. */
		s->chunk_left = size;
		s->chunk_discard = 1;
		session_enter_state(s, ST_CHUNK);
	}
	relay_flush_local(s);
}

/* Tracks what a command means for the session (HELO name, transaction). */
static int
relay_command_track(struct session *s, const struct smtp_command *cmd)
{
	switch (cmd->verb) {
	case VERB_HELO:
	case VERB_EHLO:
	case VERB_LHLO:
		relay_helo(s, cmd);
		break;
	case VERB_MAIL:
		relay_tx_begin(s, cmd);
		break;
	case VERB_RCPT:
		return relay_tx_rcpt(s, cmd);
	case VERB_RSET:
		s->tx = NULL;
		break;
	default:
		break;
	}
	return -1;
}

/* Sends the command on: the client's own octets, or the rules' rewrite of it. */
static void
relay_command_send(struct session *s, const struct unit *u)
{
	if (!s->outcome.rewritten || server_gone(s)) {
		side_forward(&s->client, u->len);
		return;
	}
	side_discard(&s->client, u->len);
	evbuffer_add(bufferevent_get_output(s->server.bev), s->outcome.line, s->outcome.len);
	evbuffer_add(bufferevent_get_output(s->server.bev), "\r\n", 2);
}

/*
 * DATA while rules may refuse a message at its end: the proxy holds the message, so DATA
 * waits for its turn among the pipelined replies, when the recipients' fate is known.
 */
static void
relay_hold_data(struct session *s, const struct unit *u)
{
	struct pending *p;

	side_discard(&s->client, u->len);
	session_enter_state(s, ST_AWAIT);
	if ((p = pipeline_push_local(&s->pipeline, "")) == NULL) {
		session_close(s, "error");
		return;
	}
	p->hold_decide = 1;
	relay_flush_local(s);
}

static int
relay_tx_accepted(const struct tx *tx)
{
	size_t i;

	for (i = 0; tx != NULL && i < tx->nrcpt; i++)
		if (tx->rcpts[i].code / 100 == 2)
			return 1;
	return 0;
}

/* A held DATA's turn: our own 354 when a recipient was accepted, else the server decides. */
static void
relay_hold_decide(struct session *s)
{
	struct pending *p;

	if (!relay_tx_accepted(s->tx) || server_gone(s)) {
		/* The server's own error (no valid recipients) reaches the client. */
		if (!server_gone(s))
			evbuffer_add(bufferevent_get_output(s->server.bev), "DATA\r\n", 6);
		transcript_event(s->transcript, "no recipient accepted: DATA relayed to the server");
		if ((p = relay_expect(s, VERB_DATA)) == NULL)
			return;
		return;
	}
	if (message_begin(s, 1) != 0) {
		session_close(s, "error");
		return;
	}
	transcript_event(s->transcript, "holding the message: rules may refuse it at its end");
	session_reply(s, "354 End data with <CR><LF>.<CR><LF>\r\n");
	relay_message_start(s);
	relay_resume_client(s);
}

/* Tracks a client command, runs it through the rules, and relays it. */
static void
relay_command(struct session *s, const struct unit *u)
{
	size_t n = smtp_line_len(u->data, u->len);
	enum rule_scope scopes[2];
	struct smtp_command cmd;
	struct pending *p;
	int rcpt, verdict = ACT_NONE;

	smtp_parse_command(u->data, n, &cmd);
	if (relay_command_local(s, u, &cmd))
		return;
	rule_outcome_reset(&s->outcome);
	if (cmd.verb == VERB_AUTH) {
		/* SASL material never meets a rule: a hit would record the secret. */
		relay_auth(s, &cmd);
	} else {
		side_record(&s->client, u);
		verdict = filter_line(s, scopes, filter_command_scopes(cmd.verb, scopes), u->data, n);
	}
	if (verdict < 0)
		return;
	if (verdict == ACT_REJECT || verdict == ACT_DISCONNECT) {
		relay_command_refused(s, u, &cmd, verdict);
		return;
	}
	if (s->outcome.rewritten)
		smtp_parse_command(s->outcome.line, s->outcome.len, &cmd);
	if (cmd.verb == VERB_DATA && s->rules != NULL && rules_holds_messages(s->rules)) {
		relay_hold_data(s, u);
		return;
	}
	rcpt = relay_command_track(s, &cmd);
	relay_command_send(s, u);
	if ((p = relay_expect(s, cmd.verb)) == NULL)
		return;
	p->rcpt_index = rcpt;
	if (cmd.verb == VERB_BDAT)
		relay_bdat(s, &cmd, p);
	else if (smtp_verb_awaits_reply(cmd.verb))
		session_enter_state(s, ST_AWAIT);
}

/* A command line longer than --max-line: not forwarded, answered 500 in its turn. */
static void
relay_command_too_long(struct session *s, const struct unit *u)
{
	transcript_event(s->transcript,
			 "warning command line longer than %zu octets: not forwarded, answered 500",
			 s->px->opts->max_line);
	s->warnings++;
	s->skipped = u->len;
	side_discard(&s->client, u->len);
	relay_answer_locally(s, "500 5.5.2 Line too long\r\n");
	s->skip_return = s->state;
	session_enter_state(s, ST_SKIP);
}

static void
relay_skip(struct session *s, const struct unit *u)
{
	s->skipped += u->len;
	side_discard(&s->client, u->len);
	if (u->complete) {
		transcript_event(s->transcript, "discarded over-long line octets=%llu",
				 (unsigned long long)s->skipped);
		session_enter_state(s, s->skip_return);
	}
}

static void
relay_sasl(struct session *s, const struct unit *u)
{
	size_t n = smtp_line_len(u->data, u->len);

	if (n == 1 && u->data[0] == '*')
		side_record(&s->client, u);
	else
		relay_record_sasl(s, "", u->data, n);
	side_forward(&s->client, u->len);
	if (relay_expect(s, VERB_SASL) != NULL)
		session_enter_state(s, ST_AWAIT);
}

/* Records a content line as far as --record allows; counts what it leaves out. */
static void
relay_record_content(struct session *s, const struct unit *u)
{
	enum record_level level = s->px->opts->record;
	int blank = u->complete && !s->client.in_piece && smtp_line_len(u->data, u->len) == 0;

	if (level == RECORD_BODY || (level == RECORD_HEADERS && s->msg_in_headers)) {
		side_record(&s->client, u);
	} else {
		s->msg_hidden_lines += u->complete;
		s->msg_hidden_octets += u->len;
		s->client.in_piece = !u->complete;
	}
	if (blank)
		s->msg_in_headers = 0;
}

/* Our own command to the server, whose reply the client never sees. */
static void
relay_quiet_upstream(struct session *s, const char *line, enum smtp_verb verb)
{
	struct pending *p;

	relay_send_upstream(s, line);
	if ((p = relay_expect(s, verb)) != NULL)
		p->quiet = 1;
}

/* The end of a held message: refused by the proxy, or handed to the server now. */
static void
relay_held_end(struct session *s)
{
	const char *reply;
	char line[640];
	enum message_verdict v = message_end(s, &reply);

	if (v == MSG_ACCEPT) {
		session_enter_state(s, ST_AWAIT);
		relay_quiet_upstream(s, "DATA\r\n", VERB_DATA);
		return;
	}
	snprintf(line, sizeof(line), "%s\r\n", reply);
	if (s->tx != NULL) {
		s->tx->code = atoi(reply);
		free(s->tx->text);
		s->tx->text = strdup(reply + (strlen(reply) > 4 ? 4 : strlen(reply)));
		s->tx = NULL;
	}
	message_free(s);
	transcript_event(s->transcript, "held message refused: nothing sent upstream");
	if (v == MSG_DISCONNECT) {
		session_reply(s, line);
		session_close(s, "rule_disconnect");
		return;
	}
	relay_answer_locally(s, line);
	if (s->closing)
		return;
	/* The server forgets the transaction; its reply to our RSET is not the client's. */
	relay_quiet_upstream(s, "RSET\r\n", VERB_RSET);
	session_enter_state(s, ST_COMMAND);
}

static void
relay_end_of_data(struct session *s, const struct unit *u)
{
	if (s->msg_hidden_octets > 0 || s->msg_hidden_lines > 0)
		transcript_event(s->transcript, "message %s not recorded lines=%llu octets=%llu",
				 s->px->opts->record == RECORD_NONE ? "content" : "body",
				 (unsigned long long)s->msg_hidden_lines,
				 (unsigned long long)s->msg_hidden_octets);
	side_record(&s->client, u);
	if (message_holding(s)) {
		side_discard(&s->client, u->len);
		relay_held_end(s);
		return;
	}
	message_free(s);
	side_forward(&s->client, u->len);
	relay_expect(s, VERB_EOD);
	if (!s->closing)
		session_enter_state(s, ST_COMMAND);
}

/* How a content line ends: CRLF, a bare LF or CR, or not at all (a piece). */
enum line_end { END_CRLF, END_BARE, END_NONE };

static enum line_end
relay_line_end(const struct unit *u)
{
	if (!u->complete)
		return END_NONE;
	if (u->data[u->len - 1] == '\n' && u->len >= 2 && u->data[u->len - 2] == '\r')
		return END_CRLF;
	return END_BARE;
}

/*
 * Under --bare-newline normalize or reject, a bare CR inside a content line ends a line
 * too (SMTP smuggling hides "\r.\r" there): shorten the unit to end at it.
 */
static void
relay_split_bare_cr(struct unit *u)
{
	const unsigned char *cr;
	size_t off = 0, i;

	while (off < u->len && (cr = memchr(u->data + off, '\r', u->len - off)) != NULL) {
		i = (size_t)(cr - u->data);
		if (i + 1 == u->len)
			return; /* CR last in a piece: whether LF follows is not known yet */
		if (u->data[i + 1] != '\n') {
			u->len = i + 1;
			u->complete = 1;
			return;
		}
		off = i + 1;
	}
}

/* A content line that ended bare: relayed with CRLF, a lone "." stuffed so it stays content. */
static void
relay_content_normalized(struct session *s, const struct unit *u)
{
	struct evbuffer *out = bufferevent_get_output(s->server.bev);
	size_t n = u->len - 1;

	if (n == 1 && u->data[0] == '.')
		evbuffer_add(out, ".", 1);
	evbuffer_add(out, u->data, n);
	evbuffer_add(out, "\r\n", 2);
	side_discard(&s->client, u->len);
}

/* A bare line end under --bare-newline reject: nothing of the message is delivered. */
static void
relay_bare_reject(struct session *s)
{
	session_warn(s, "bare CR or LF in message content: rejected, upstream closed");
	session_reply(s, "550 5.5.2 Bare CR or LF in message content not accepted\r\n");
	session_close(s, "bare_newline");
}

/* A line of DATA content; the end is only <CRLF>.<CRLF>. */
static void
relay_content(struct session *s, const struct unit *u)
{
	int at_start = s->msg_line_start && !s->client.in_piece;
	enum bare_newline bare = s->px->opts->bare_newline;
	enum line_end end = relay_line_end(u);
	int lone_dot = !s->client.in_piece && u->complete && smtp_line_len(u->data, u->len) == 1 &&
		       u->data[0] == '.';

	s->client.in_piece_before = s->client.in_piece;

	if (at_start && u->len == 3 && memcmp(u->data, ".\r\n", 3) == 0) {
		relay_end_of_data(s, u);
		return;
	}
	if (end == END_BARE && bare == BARE_REJECT) {
		relay_bare_reject(s);
		return;
	}
	if (end == END_BARE && bare == BARE_NORMALIZE && !s->msg_bare_seen) {
		s->msg_bare_seen = 1;
		session_warn(s, "bare CR or LF in message content: relayed as CRLF");
	}
	relay_record_content(s, u);
	if (s->tx != NULL)
		s->tx->size += u->len;
	s->msg_line_start = end == END_CRLF;
	if (s->msg != NULL) {
		if (u->complete && !s->client.in_piece_before)
			message_line(s, u->data, u->len);
		else
			message_piece(s, u->data, u->len, !s->client.in_piece_before);
		side_discard(&s->client, u->len);
	} else if (bare == BARE_PASS || server_gone(s)) {
		side_forward(&s->client, u->len);
	} else if (end == END_BARE) {
		relay_content_normalized(s, u);
	} else if (lone_dot) {
		/* ".\r\n" after a bare line end is content here, so it must be upstream too. */
		evbuffer_add(bufferevent_get_output(s->server.bev), ".", 1);
		side_forward(&s->client, u->len);
	} else {
		side_forward(&s->client, u->len);
	}
}

/* BDAT content: relayed raw; recorded (under body) as the lines it happens to hold. */
static int
relay_chunk(struct session *s)
{
	struct evbuffer *in = side_input(&s->client);
	size_t avail = evbuffer_get_length(in), take, off = 0;
	const unsigned char *p, *lf;
	struct unit u;

	take = avail < s->chunk_left ? avail : (size_t)s->chunk_left;
	if (take == 0)
		return 0;
	if (s->chunk_discard) {
		side_discard(&s->client, take);
		s->chunk_left -= take;
		if (s->chunk_left == 0) {
			transcript_event(s->transcript, "refused bdat chunk discarded");
			s->chunk_discard = 0;
			session_enter_state(s, ST_COMMAND);
			return 1;
		}
		return 0;
	}
	if (s->px->opts->record == RECORD_BODY && (p = evbuffer_pullup(in, (ev_ssize_t)take))) {
		while (off < take) {
			lf = memchr(p + off, '\n', take - off);
			u.data = p + off;
			u.len = lf != NULL ? (size_t)(lf - (p + off)) + 1 : take - off;
			u.complete = lf != NULL;
			side_record(&s->client, &u);
			off += u.len;
		}
	}
	side_forward(&s->client, take);
	s->chunk_left -= take;
	if (s->chunk_left > 0)
		return 0;
	s->client.in_piece = 0;
	session_enter_state(s, ST_COMMAND);
	return 1;
}

static void
relay_raw(struct side *x)
{
	size_t n = evbuffer_get_length(side_input(x));

	x->raw_octets += n;
	side_forward(x, n);
}

/* Handles one client unit in a line-based state. */
static void
relay_client_unit(struct session *s, struct unit *u)
{
	switch (s->state) {
	case ST_COMMAND:
		if (u->complete)
			relay_command(s, u);
		else
			relay_command_too_long(s, u);
		break;
	case ST_SASL:
		if (u->complete)
			relay_sasl(s, u);
		else
			relay_command_too_long(s, u);
		break;
	case ST_SKIP:
		relay_skip(s, u);
		break;
	case ST_MESSAGE:
		if (s->px->opts->bare_newline != BARE_PASS)
			relay_split_bare_cr(u);
		relay_content(s, u);
		break;
	default:
		break;
	}
}

void
relay_client(struct session *s)
{
	struct unit u;

	while (!s->closing && s->client.bev != NULL) {
		switch (s->state) {
		case ST_CLIENT_TLS:
			return;
		case ST_CONNECTING:
		case ST_GREETING:
		case ST_UPSTREAM_EHLO:
		case ST_UPSTREAM_STARTTLS:
		case ST_UPSTREAM_TLS:
			if (!s->early_talker &&
			    evbuffer_get_length(side_input(&s->client)) > 0) {
				s->early_talker = 1;
				session_warn(s, "early talker: client sent %zu octets before the "
						"greeting",
					     evbuffer_get_length(side_input(&s->client)));
			}
			side_pause(&s->client, PAUSE_WAIT);
			return;
		case ST_AWAIT:
			side_pause(&s->client, PAUSE_WAIT);
			return;
		case ST_RAW:
			relay_raw(&s->client);
			return;
		case ST_CHUNK:
			if (!relay_chunk(s))
				return;
			break;
		case ST_CLOSING:
			return;
		default:
			if (!side_next_unit(&s->client, s->px->opts->max_line, &u))
				return;
			relay_client_unit(s, &u);
			break;
		}
	}
}

/* The waiting client may go on: process what it already sent. */
static void
relay_resume_client(struct session *s)
{
	side_resume(&s->client, PAUSE_WAIT);
	relay_client(s);
}

/* STARTTLS accepted without a certificate of ours: from here on, bytes both ways. */
static void
relay_start_passthrough(struct session *s)
{
	size_t stale_c = evbuffer_get_length(side_input(&s->client));
	size_t stale_s = evbuffer_get_length(side_input(&s->server));

	s->tls_passthrough = 1;
	transcript_event(s->transcript,
			 "starttls passthrough: bytes after this point are relayed unparsed");
	/* CVE-2011-0411: plaintext sent before the handshake is never relayed into it. */
	if (stale_c > 0) {
		session_warn(s, "discarded %zu octets the client sent after STARTTLS before the 220",
			     stale_c);
		side_discard(&s->client, stale_c);
	}
	if (stale_s > 0) {
		session_warn(s, "discarded %zu octets the server sent after its 220 to STARTTLS",
			     stale_s);
		side_discard(&s->server, stale_s);
	}
	session_enter_state(s, ST_RAW);
	relay_resume_client(s);
}

static void
relay_tx_reply(struct session *s, const struct pending *p, int code)
{
	struct tx *tx = s->tx;

	if (tx == NULL)
		return;
	switch (p->verb) {
	case VERB_MAIL:
		tx->mail_code = code;
		break;
	case VERB_RCPT:
		if (p->rcpt_index >= 0 && (size_t)p->rcpt_index < tx->nrcpt)
			tx->rcpts[p->rcpt_index].code = code;
		break;
	case VERB_EOD:
	case VERB_BDAT:
		if (p->verb == VERB_BDAT && !p->last && code / 100 == 2)
			break;
		tx->code = code;
		free(tx->text);
		tx->text = s->reply_text != NULL ? strdup(s->reply_text) : NULL;
		s->tx = NULL;
		break;
	default:
		break;
	}
}

/* DATA was answered 354: message content follows. */
static void
relay_message_start(struct session *s)
{
	session_enter_state(s, ST_MESSAGE);
	s->msg_line_start = 1;
	s->msg_in_headers = 1;
	s->msg_hidden_lines = s->msg_hidden_octets = 0;
	s->msg_bare_seen = 0;
}

/* What a completed reply means for the command it answers. */
static void
relay_reply_effect(struct session *s, const struct pending *p, int code)
{
	relay_tx_reply(s, p, code);
	switch (p->verb) {
	case VERB_GREETING:
		session_enter_state(s, ST_COMMAND);
		relay_resume_client(s);
		break;
	case VERB_DATA:
		if (code == 354)
			relay_message_start(s);
		else
			session_enter_state(s, ST_COMMAND);
		if (code == 354 && (filter_has(s, SCOPE_HEADER) || filter_has(s, SCOPE_BODY)) &&
		    message_begin(s, 0) != 0) {
			session_close(s, "error");
			return;
		}
		if (code == 354 && s->client_gone) {
			session_close(s, "client_closed");
			return;
		}
		relay_resume_client(s);
		break;
	case VERB_AUTH:
	case VERB_SASL:
		s->auth_code = code;
		session_enter_state(s, code == 334 ? ST_SASL : ST_COMMAND);
		relay_resume_client(s);
		break;
	case VERB_STARTTLS:
		if (code == 220) {
			relay_start_passthrough(s);
			break;
		}
		session_enter_state(s, ST_COMMAND);
		relay_resume_client(s);
		break;
	case VERB_QUIT:
		s->quit_answered = 1;
		break;
	case VERB_EOD:
		if (s->state == ST_AWAIT) {
			/* A held message's final reply: the client may go on. */
			session_enter_state(s, ST_COMMAND);
			relay_resume_client(s);
		}
		break;
	default:
		break;
	}
}

/*
 * The server is going: every command the client still waits on gets a reply, the proxy's
 * own where it has one, else the server's 421 (or ours); our own RSET needs none.
 */
static void
relay_answer_pending(struct session *s, const char *reply)
{
	struct pending *p;

	while ((p = pipeline_head(&s->pipeline)) != NULL) {
		if (p->quiet && p->verb == VERB_RSET)
			;
		else if (p->local_reply != NULL && !p->hold_decide && !p->starttls)
			session_reply(s, p->local_reply);
		else
			session_reply(s, reply);
		pipeline_pop(&s->pipeline);
	}
}

/* A 421 from the server: every pending command gets it, then the client is closed. */
static void
relay_server_421(struct session *s)
{
	size_t len = evbuffer_get_length(s->reply_copy);
	char *copy;
	struct pending *head = pipeline_head(&s->pipeline);

	/* The server's own 421 answers the head (or nothing, when idle), as it was sent. */
	relay_flush_local(s);
	head = pipeline_head(&s->pipeline);
	if (s->client.bev != NULL && (head == NULL || !(head->quiet && head->verb == VERB_RSET)))
		evbuffer_add(bufferevent_get_output(s->client.bev),
			     evbuffer_pullup(s->reply_copy, (ev_ssize_t)len), len);
	if (head != NULL)
		pipeline_pop(&s->pipeline);
	copy = malloc(len + 1);
	if (copy != NULL) {
		evbuffer_copyout(s->reply_copy, copy, len);
		copy[len] = '\0';
	}
	if (copy != NULL)
		relay_answer_pending(s, copy);
	free(copy);
	session_close(s, "server_421");
}

/* The held message's DATA was refused: that reply is the client's answer to its dot. */
static void
relay_held_refused(struct session *s, int code)
{
	if (s->tx != NULL) {
		s->tx->code = code;
		free(s->tx->text);
		s->tx->text = s->reply_text != NULL ? strdup(s->reply_text) : NULL;
		s->tx = NULL;
	}
	evbuffer_add_buffer(bufferevent_get_output(s->client.bev), s->held_reply);
	message_free(s);
	session_enter_state(s, ST_COMMAND);
	relay_resume_client(s);
}

/* The reply to a command of our own (RSET, a held message's DATA): not relayed as such. */
static void
relay_quiet_done(struct session *s, int code)
{
	struct pending *head = pipeline_head(&s->pipeline);
	enum smtp_verb verb = head->verb;

	s->reply_quiet = 0;
	pipeline_pop(&s->pipeline);
	if (verb == VERB_DATA && code == 354) {
		evbuffer_drain(s->held_reply, evbuffer_get_length(s->held_reply));
		if (message_send_held(s) != 0) {
			session_close(s, "error");
			return;
		}
		relay_expect(s, VERB_EOD);
	} else if (verb == VERB_DATA) {
		relay_held_refused(s, code);
	} else {
		evbuffer_drain(s->held_reply, evbuffer_get_length(s->held_reply));
	}
	if (s->closing)
		return;
	relay_flush_local(s);
	if (s->client_gone && s->pipeline.remote == 0)
		session_close(s, s->quit_answered ? "quit" : "client_closed");
}

static void
relay_reply_done(struct session *s)
{
	struct pending *head = pipeline_head(&s->pipeline);
	int code = s->reply_code;

	s->reply_open = 0;
	if (code == 421) {
		relay_server_421(s);
		return;
	}
	if (head == NULL || head->local_reply != NULL) {
		session_warn(s, "server sent a reply (%d) with no command pending", code);
		return;
	}
	if (s->reply_quiet) {
		relay_quiet_done(s, code);
		return;
	}
	if (s->reply_hold) {
		s->reply_hold = 0;
		reply_edit_send(s, s->held_reply, head->verb, code);
	}
	relay_reply_effect(s, head, code);
	if (s->closing)
		return;
	pipeline_pop(&s->pipeline);
	relay_flush_local(s);
	if (s->client_gone && s->pipeline.remote == 0)
		session_close(s, s->quit_answered ? "quit" : "client_closed");
}

/* Whether this reply is held whole: a 250 to EHLO/LHLO, or any reply rules may edit. */
static int
relay_holds_reply(struct session *s, int code)
{
	struct pending *head = pipeline_head(&s->pipeline);

	if (head == NULL || head->local_reply != NULL)
		return 0;
	if (reply_edit_wanted(s))
		return 1;
	return code == 250 && (head->verb == VERB_EHLO || head->verb == VERB_LHLO);
}

/* Where a server line goes: held (EHLO, 421, set-up), or on to the client at once. */
static void
relay_reply_route(struct session *s, const struct unit *u)
{
	struct evbuffer *hold = NULL;

	if (s->upstream_setup)
		hold = s->setup_reply;
	else if (s->reply_code == 421)
		hold = s->reply_copy;
	else if (s->reply_quiet)
		hold = s->held_reply;
	else if (s->reply_hold && evbuffer_get_length(s->held_reply) + u->len > REPLY_HOLD_MAX) {
		/* Too big to be a real reply worth editing: relay it as it is, from here on. */
		session_warn(s, "reply over %d octets relayed unedited", REPLY_HOLD_MAX);
		evbuffer_add_buffer(bufferevent_get_output(s->client.bev), s->held_reply);
		s->reply_hold = 0;
	} else if (s->reply_hold)
		hold = s->held_reply;
	side_record(&s->server, u);
	if (hold == NULL) {
		side_forward(&s->server, u->len);
		return;
	}
	evbuffer_add(hold, u->data, u->len);
	side_discard(&s->server, u->len);
}

/* Starts a reply on its first line: where its lines will be held, if anywhere. */
static int
relay_reply_begin(struct session *s, int code)
{
	struct evbuffer **hold = NULL;

	s->reply_code = code;
	s->reply_open = 1;
	s->reply_hold = 0;
	s->reply_quiet = 0;
	if (s->upstream_setup)
		hold = &s->setup_reply;
	else if (code == 421)
		hold = &s->reply_copy;
	else if (pipeline_head(&s->pipeline) != NULL && pipeline_head(&s->pipeline)->quiet) {
		hold = &s->held_reply;
		s->reply_quiet = 1;
	} else if (relay_holds_reply(s, code)) {
		hold = &s->held_reply;
		s->reply_hold = 1;
	}
	if (hold == NULL)
		return 0;
	if (*hold == NULL && (*hold = evbuffer_new()) == NULL) {
		session_close(s, "error");
		return -1;
	}
	evbuffer_drain(*hold, evbuffer_get_length(*hold));
	return 0;
}

/* One server line: a reply line, or a further piece of an over-long one. */
static void
relay_reply_unit(struct session *s, const struct unit *u)
{
	struct smtp_reply_line r;

	if (!s->server.in_piece) {
		if (smtp_parse_reply(u->data, smtp_line_len(u->data, u->len), &r) != 0)
			session_warn(s, "malformed reply line from the server");
		if (!s->reply_open && relay_reply_begin(s, r.code) != 0)
			return;
		if (r.last) {
			free(s->reply_text);
			s->reply_text = relay_strndup(r.text, r.textlen);
		}
		s->reply_last_line = r.last;
	}
	relay_reply_route(s, u);
	if (u->complete && s->reply_last_line) {
		if (s->upstream_setup)
			relay_setup_step(s);
		else
			relay_reply_done(s);
	}
}

void
relay_server(struct session *s)
{
	struct unit u;

	while (!s->closing && s->server.bev != NULL) {
		if (s->state == ST_RAW) {
			relay_raw(&s->server);
			return;
		}
		if (s->state == ST_UPSTREAM_TLS)
			return;
		if (!side_next_unit(&s->server, s->px->opts->max_line, &u))
			return;
		relay_reply_unit(s, &u);
	}
}

/* Sends a line of the proxy's own to the server, recorded as "U:". */
static void
relay_send_upstream(struct session *s, const char *line)
{
	evbuffer_add(bufferevent_get_output(s->server.bev), line, strlen(line));
	transcript_data(s->transcript, "U:", (const unsigned char *)line, strlen(line));
}

/* The upstream leg is as secure as it will get: the client gets the greeting now. */
static void
relay_upstream_ready(struct session *s)
{
	struct pending *head = pipeline_head(&s->pipeline);

	s->upstream_setup = 0;
	if (s->greeting != NULL)
		reply_edit_send(s, s->greeting, VERB_GREETING, 220);
	if (s->closing)
		return;
	if (head != NULL && head->verb == VERB_GREETING) {
		relay_reply_effect(s, head, 220);
		if (!s->closing)
			pipeline_pop(&s->pipeline);
	}
}

static void
relay_upstream_refused(struct session *s, const char *why)
{
	char reply[512];

	transcript_event(s->transcript, "tls upstream failed reason=\"%s\"", why);
	snprintf(reply, sizeof(reply), "421 4.7.0 %s Upstream server does not offer TLS\r\n",
		 s->px->opts->hostname);
	session_reply(s, reply);
	session_close(s, "upstream_tls_failed");
}

/* TLS with the server could not be had: go on in clear, unless it is required. */
static void
relay_upstream_plain(struct session *s, const char *why)
{
	if (s->px->opts->upstream_tls == UPSTREAM_REQUIRE) {
		relay_upstream_refused(s, why);
		return;
	}
	transcript_event(s->transcript, "upstream leg stays in clear: %s", why);
	relay_upstream_ready(s);
}

/* A reply during the upstream set-up: greeting, then our EHLO, then our STARTTLS. */
static void
relay_setup_step(struct session *s)
{
	size_t len = evbuffer_get_length(s->setup_reply), stale;
	const unsigned char *reply = evbuffer_pullup(s->setup_reply, (ev_ssize_t)len);
	int code = s->reply_code;
	char ehlo[300];

	s->reply_open = 0;
	switch (s->state) {
	case ST_GREETING:
		if (s->greeting == NULL && (s->greeting = evbuffer_new()) == NULL) {
			session_close(s, "error");
			return;
		}
		evbuffer_add_buffer(s->greeting, s->setup_reply);
		if (code != 220) {
			relay_upstream_plain(s, "the server refused the session");
			if (code == 421 && !s->closing)
				session_close(s, "server_421");
			return;
		}
		snprintf(ehlo, sizeof(ehlo), "EHLO %s\r\n", s->px->opts->hostname);
		relay_send_upstream(s, ehlo);
		session_enter_state(s, ST_UPSTREAM_EHLO);
		break;
	case ST_UPSTREAM_EHLO:
		if (code != 250 || !ehlo_offers(reply, len, "STARTTLS")) {
			relay_upstream_plain(s, "the server does not offer STARTTLS");
			break;
		}
		relay_send_upstream(s, "STARTTLS\r\n");
		session_enter_state(s, ST_UPSTREAM_STARTTLS);
		break;
	case ST_UPSTREAM_STARTTLS:
		if (code != 220) {
			relay_upstream_plain(s, "the server refused STARTTLS");
			break;
		}
		if ((stale = evbuffer_get_length(side_input(&s->server))) > 0) {
			session_warn(s, "discarded %zu octets the server sent after its 220 to "
					"STARTTLS",
				     stale);
			side_discard(&s->server, stale);
		}
		session_enter_state(s, ST_UPSTREAM_TLS);
		if (session_start_tls(s, &s->server) != 0)
			relay_upstream_refused(s, "TLS set-up failed");
		break;
	default:
		break;
	}
	evbuffer_drain(s->setup_reply, evbuffer_get_length(s->setup_reply));
}

void
relay_upstream_secured(struct session *s)
{
	if (s->upstream_setup) {
		relay_upstream_ready(s);
		return;
	}
	/* Implicit TLS: the greeting comes now, over TLS. */
	session_enter_state(s, ST_GREETING);
	relay_server(s);
}

void
relay_client_secured(struct session *s)
{
	if (s->state != ST_CLIENT_TLS)
		return; /* implicit TLS: the session goes on as it is */
	/* RFC 3207 4.2: everything learnt before TLS is forgotten; the client starts again. */
	free(s->helo);
	s->helo = NULL;
	s->tx = NULL;
	session_enter_state(s, ST_COMMAND);
	relay_resume_client(s);
}

void
relay_server_gone(struct session *s)
{
	char lost[512];

	relay_server(s);
	if (s->closing)
		return;
	if (s->state == ST_RAW || (s->quit_answered && s->pipeline.remote == 0)) {
		session_close(s, s->quit_answered ? "quit" : "server_closed");
		return;
	}
	snprintf(lost, sizeof(lost), "421 4.4.2 %s Connection to upstream lost\r\n",
		 s->px->opts->hostname);
	if (s->pipeline.count == 0)
		session_reply(s, lost);
	relay_answer_pending(s, lost);
	session_close(s, "server_closed");
}

void
relay_client_gone(struct session *s)
{
	s->client_gone = 1;
	side_pause(&s->client, PAUSE_EOF);
	if (s->state == ST_MESSAGE || s->state == ST_CHUNK) {
		/* Never let a partial message end: closing upstream makes the server drop it. */
		session_warn(s, "client closed during the message: upstream closed, nothing "
				"delivered");
		session_close(s, "client_closed");
		return;
	}
	if (s->state == ST_RAW || s->pipeline.remote == 0 || s->state == ST_CONNECTING) {
		session_close(s, s->quit_answered ? "quit" : "client_closed");
		return;
	}
	/* Commands are pending (a QUIT, say): their replies still go to the client. */
}
