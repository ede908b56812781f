/*
 * The client's direction: commands (with their rules, AUTH redaction and the commands the
 * proxy answers itself), SASL data, DATA content up to <CRLF>.<CRLF> only, BDAT chunks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "logs/escape.h"
#include "logs/log.h"
#include "logs/redact.h"
#include "logs/transcript.h"
#include "proxy/filter.h"
#include "proxy/message.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/client.h"
#include "proxy/relay.h"
#include "proxy/reply_edit.h"
#include "proxy/conn.h"
#include "proxy/tx.h"

/* Our 220 to STARTTLS is on its way: drop what the client pipelined after it, then TLS. */
static void
client_starttls(struct session *s)
{
	size_t stale = evbuffer_get_length(side_input(&s->client));

	/* CVE-2011-0411: plaintext sent before the handshake is never acted on. */
	if (stale > 0) {
		session_warn(s,
		             "discarded %zu octets the client sent after STARTTLS before the "
		             "handshake",
		             stale);
		side_discard(&s->client, stale);
	}
	session_enter_phase(s, PHASE_CLIENT_TLS);
	if (session_start_tls(s, &s->client) != 0) {
		transcript_event(s->transcript, "tls client failed reason=\"TLS set-up failed\"");
		session_close(s, "client_tls_failed");
	}
}

/*
 * Records a SASL response (initial or after a 334) as a marker that keeps only the user:
 * prefix (the AUTH line up to the response, as it crossed) and then "[redacted...]".
 */
static void
client_record_sasl(struct session *s, const unsigned char *prefix, size_t prefixlen,
                   const unsigned char *b64, size_t len)
{
	char user[REDACT_USER_MAX];

	user[0] = '\0';
	if (s->auth.user[0] == '\0' &&
	    redact_sasl_user(s->auth.mech, s->auth.step, (const char *)b64, len, user,
	                     sizeof(user)) == 1)
		snprintf(s->auth.user, sizeof(s->auth.user), "%s", user);
	transcript_redacted(s->transcript, "C:", prefix, prefixlen, user[0] != '\0' ? user : NULL);
	s->auth.step++;
}

/*
 * An AUTH command: recorded as it crossed up to its initial response (whatever white space
 * separates them), the response redacted.  Returns how much of the line rules may see.
 */
static size_t
client_auth(struct session *s, const unsigned char *line, size_t n, const struct smtp_command *cmd)
{
	struct smtp_auth a;
	size_t mlen;

	smtp_parse_auth(cmd->arg, cmd->arglen, &a);
	mlen = smtp_sasl_name(a.mech, a.mechlen) ? a.mechlen : 0;
	memcpy(s->auth.mech, a.mech != NULL ? (const char *)a.mech : "", mlen);
	s->auth.mech[mlen] = '\0';
	s->auth.user[0] = '\0';
	s->auth.step = 0;
	s->auth.used = 1;
	s->auth.open = 1;
	if (cmd->arg == NULL || (mlen > 0 && a.resp == NULL))
		transcript_data(s->transcript, "C:", line, n);
	else if (mlen > 0)
		client_record_sasl(s, line, (size_t)(a.resp - line), a.resp, a.resp_word);
	else
		client_record_sasl(s, line, (size_t)(cmd->arg - line), NULL, 0);
	return smtp_auth_visible(line, n, cmd);
}

static void client_chunk_unended(struct session *s);

/*
 * A command the proxy answers itself and after which it reads nothing more from the client:
 * the reply takes its turn among the pipelined ones, then the session ends for reason.
 */
static void
client_refuse_and_close(struct session *s, const struct unit *u, const char *reply,
                        const char *reason)
{
	struct pending *p;

	side_discard(&s->client, u->len);
	client_enter_mode(s, MODE_AWAIT);
	if ((p = pipeline_push_local(&s->pipeline, reply)) == NULL) {
		session_close(s, "error");
		return;
	}
	p->disconnect = reason;
	client_flush_local(s);
}

/*
 * A BDAT whose size can't be read where the server offered CHUNKING: where its chunk ends is
 * unknown, and any guess lets the server run as commands octets the rules took for a chunk,
 * or the other way round.  Answered as Postfix answers it (521, and it hangs up), never
 * forwarded, and nothing after it is read.
 */
static void
client_bdat_malformed(struct session *s, const struct unit *u)
{
	session_warn(s, "malformed BDAT: where its chunk ends is unknown, session ended");
	client_refuse_and_close(s, u, "521 5.5.4 Syntax: BDAT count [LAST]\r\n", "bdat_syntax");
}

/*
 * A chunk that would take the message past --max-message: as for DATA, the server never gets
 * the message's end (this BDAT is not forwarded, and the chunks before it are dropped as the
 * session ends); the client gets 552 in its turn.
 */
static void
client_bdat_too_big(struct session *s, const struct unit *u)
{
	session_warn(s, "message over --max-message (%zu octets): session ended",
	             s->px->opts->max_message);
	client_refuse_and_close(s, u, "552 5.3.4 Message size exceeds fixed limit\r\n",
	                        "message_too_big");
}

/*
 * Whether a command may end the message being chunked (a RSET or EHLO): the client then
 * waits for its reply, since only a 2xx says the server forgot the chunks.  Counted on or
 * forgotten at once, a pipelined next message would be refused, or "RSET x" would let a
 * client start over on the limit while the server still holds the chunks.
 */
static int
client_may_end_chunking(const struct session *s, const struct smtp_command *cmd)
{
	enum smtp_track track = smtp_verb_info(cmd->verb)->track;

	return s->chunk.sent != s->chunk.message_start &&
	       (track == SMTP_TRACK_HELO || track == SMTP_TRACK_RSET);
}

/* Whether a chunk of size octets takes the message being chunked past --max-message. */
static int
client_chunk_too_big(const struct session *s, uint64_t size)
{
	uint64_t max = s->px->opts->max_message;
	uint64_t sofar = s->chunk.sent - s->chunk.message_start;

	return size > max || sofar > max - size;
}

/*
 * Whether a BDAT about to be forwarded is refused instead: its size can't be read, or its
 * chunk would take the message past --max-message.  Else *size and *last are its own.
 */
static int
client_bdat_refused(struct session *s, const struct unit *u, const struct smtp_command *cmd,
                    uint64_t *size, int *last)
{
	if (smtp_parse_bdat(cmd->arg, cmd->arglen, size, last) != 0) {
		client_bdat_malformed(s, u);
		return 1;
	}
	if (client_chunk_too_big(s, *size)) {
		client_bdat_too_big(s, u);
		return 1;
	}
	return 0;
}

/* A BDAT command: the chunk that follows is exactly its size, never lines. */
static void
client_bdat(struct session *s, struct pending *p, uint64_t size, int last)
{
	p->last = last;
	if (s->tx != NULL) {
		s->tx->size += size;
		s->tx->data = 1;
	}
	s->chunk.sent += size;
	if (last) /* the server's message ends with it, taken or not */
		s->chunk.message_start = s->chunk.sent;
	transcript_event(s->transcript, "bdat chunk octets=%llu last=%s", (unsigned long long)size,
	                 last ? "yes" : "no");
	s->chunk.left = size;
	s->chunk.last = last;
	if (size > 0)
		client_enter_mode(s, MODE_CHUNK);
	else if (last)
		client_chunk_unended(s);
}

/* Answers a local reply for a command that must not reach the server. */
static void
client_refuse(struct session *s, const struct unit *u, const char *reply)
{
	side_record(&s->client, u);
	side_discard(&s->client, u->len);
	client_answer_locally(s, reply);
}

/*
 * Commands the proxy answers itself: a client's XCLIENT/XFORWARD/PROXY (it must not claim
 * another identity to the server; a balancer's PROXY header is read before, by proxyin.c)
 * and STARTTLS when we terminate or strip TLS.  Returns 1 when the command was handled here.
 */
static int
client_command_local(struct session *s, const struct unit *u, const struct smtp_command *cmd)
{
	const struct options *o = s->px->opts;
	enum smtp_handler h = smtp_verb_info(cmd->verb)->handler;
	struct pending *p;

	if (h == SMTP_HANDLE_REFUSE) {
		session_warn(s, "client's own %s refused", smtp_verb_name(cmd->verb));
		client_refuse(s, u, "550 5.7.0 Command not permitted\r\n");
		return 1;
	}
	if (h != SMTP_HANDLE_STARTTLS || o->tls_mode == TLS_PASSTHROUGH)
		return 0;
	if (o->tls_mode == TLS_STRIP) {
		client_refuse(s, u, "454 4.7.0 TLS not available\r\n");
		return 1;
	}
	if (s->client.tls) {
		client_refuse(s, u, "503 5.5.1 TLS already active\r\n");
		return 1;
	}
	side_record(&s->client, u);
	side_discard(&s->client, u->len);
	client_enter_mode(s, MODE_AWAIT);
	if ((p = pipeline_push_local(&s->pipeline, "220 2.0.0 Ready to start TLS\r\n")) == NULL) {
		session_close(s, "error");
		return 1;
	}
	p->starttls = 1;
	client_flush_local(s);
	return 1;
}

/* What the rules decided for a command that is not forwarded: REJECT or DISCONNECT. */
static void
client_command_refused(struct session *s, const struct unit *u, const struct smtp_command *cmd,
                       int verdict, const char *text)
{
	char reply[600];
	struct pending *p;
	uint64_t size;
	int last;

	snprintf(reply, sizeof(reply), "%s\r\n", text);
	/* cmd points into the client's input: use it before the line is drained. */
	tx_refused(s, cmd, atoi(reply));
	size = 0;
	if (cmd->verb == VERB_BDAT && smtp_parse_bdat(cmd->arg, cmd->arglen, &size, &last) != 0 &&
	    s->server_chunking && verdict != ACT_DISCONNECT) {
		/* Refused or not, the chunk to throw away has no known end. */
		client_bdat_malformed(s, u);
		return;
	}
	side_discard(&s->client, u->len);
	if ((p = pipeline_push_local(&s->pipeline, reply)) == NULL) {
		session_close(s, "error");
		return;
	}
	if (verdict == ACT_DISCONNECT) {
		p->disconnect = "rule_disconnect";
		client_enter_mode(s, MODE_AWAIT);
	} else if (size > 0 && s->server_chunking) {
		/* RFC 3030: the chunk of a refused BDAT is still read, and thrown away. */
		s->chunk.left = size;
		s->chunk.discard = 1;
		client_enter_mode(s, MODE_CHUNK);
	}
	client_flush_local(s);
}

/* Tracks what a command means for the session (HELO name, transaction). */
static int
client_command_track(struct session *s, const struct smtp_command *cmd)
{
	switch (smtp_verb_info(cmd->verb)->track) {
	case SMTP_TRACK_HELO:
		tx_helo(s, cmd);
		break;
	case SMTP_TRACK_MAIL:
		tx_begin(s, cmd);
		break;
	case SMTP_TRACK_RCPT:
		return tx_rcpt(s, cmd);
	case SMTP_TRACK_RSET:
		s->tx = NULL;
		break;
	default:
		break;
	}
	return -1;
}

/* Sends the command on: the client's own octets, or the rules' rewrite of it. */
static void
client_command_send(struct session *s, const struct unit *u, const unsigned char *tail,
                    size_t taillen)
{
	if (!s->outcome.rewritten || relay_no_server(s)) {
		side_forward(&s->client, u->len);
		return;
	}
	side_write(&s->server, s->outcome.line, s->outcome.len, NULL);
	side_write(&s->server, tail, taillen, NULL);
	side_write(&s->server, "\r\n", 2, NULL);
	side_discard(&s->client, u->len);
}

/*
 * DATA while rules may refuse a message at its end: the proxy holds the message, so DATA
 * waits for its turn among the pipelined replies, when the recipients' fate is known.
 */
static void
client_hold_data(struct session *s, const struct unit *u)
{
	struct pending *p;

	side_discard(&s->client, u->len);
	client_enter_mode(s, MODE_AWAIT);
	if ((p = pipeline_push_local(&s->pipeline, "")) == NULL) {
		session_close(s, "error");
		return;
	}
	p->hold_decide = 1;
	p->tx = s->tx;
	client_flush_local(s);
}

/* A held DATA's turn: our own 354 when a recipient was accepted, else the server decides. */
static void
client_hold_decide(struct session *s, struct tx *tx)
{
	if (!tx_accepted(tx) || relay_no_server(s)) {
		/* The server's own error (no valid recipients) reaches the client. */
		side_write(&s->server, "DATA\r\n", 6, NULL);
		transcript_event(s->transcript,
		                 "no recipient accepted: DATA relayed to the server");
		relay_expect(s, VERB_DATA);
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

/*
 * Whether a command line may still be SASL data: after an AUTH, until the exchange is known
 * to be over.  A client that pipelined its responses behind AUTH (AUTH LOGIN, user, password)
 * sent them before it saw the server's reply; when that reply was not 334 they arrive here
 * as commands.  A line of base64 octets that is no verb is taken as such a response; the
 * first line that is a command ends the exchange.
 */
static int
client_sasl_late(struct session *s, const unsigned char *line, size_t n,
                 const struct smtp_command *cmd)
{
	if (!s->auth.open)
		return 0;
	if (cmd->verb == VERB_UNKNOWN && smtp_sasl_shaped(line, n))
		return 1;
	s->auth.open = 0;
	return 0;
}

/* A SASL response that came too late for its exchange: redacted, relayed, never filtered. */
static void
client_sasl_relay_late(struct session *s, const struct unit *u, size_t n)
{
	client_record_sasl(s, NULL, 0, u->data, n);
	side_forward(&s->client, u->len);
	relay_expect(s, VERB_UNKNOWN);
}

/*
 * A command whose extension a capability rule removed from the EHLO reply: answered 502
 * 5.5.1 by the proxy, never relayed (a rule that hides STARTTLS or AUTH means it).
 */
static int
client_capability_hidden(struct session *s, const struct unit *u, const struct smtp_command *cmd,
                         size_t n)
{
	const char *name = reply_edit_hidden(s, cmd->verb);
	char text[128];

	if (name == NULL)
		return 0;
	if (cmd->verb == VERB_AUTH) {
		(void)client_auth(s, u->data, n, cmd); /* recorded redacted */
		s->auth.open = 0;
	} else {
		side_record(&s->client, u);
	}
	session_warn(s, "%s refused: a capability rule removed it", name);
	snprintf(text, sizeof(text), "502 5.5.1 %s not available", name);
	client_command_refused(s, u, cmd, ACT_REJECT, text);
	return 1;
}

/*
 * A line with a NUL, refused or left unrelayed: recorded as it came, but for an AUTH, read
 * up to the NUL (as the server reads it) or whole, whose words after the verb are redacted:
 * "AUTH\0 PLAIN <response>" and "AUTH PLAIN <response>\0" hold a credential.
 */
static void
client_record_nul(struct session *s, const unsigned char *line, size_t n,
                  const unsigned char *nul)
{
	struct smtp_command whole, cut;
	size_t keep = (size_t)(nul - line) + 1;

	smtp_parse_command(line, n, &whole);
	smtp_parse_command(line, keep - 1, &cut);
	if (whole.verb != VERB_AUTH && cut.verb != VERB_AUTH) {
		transcript_data(s->transcript, "C:", line, n);
		return;
	}
	if (whole.verb == VERB_AUTH)
		keep = whole.arg != NULL ? (size_t)(whole.arg - line) : smtp_line_len(line, n);
	transcript_redacted(s->transcript, "C:", line, keep, NULL);
}

/*
 * A command line with a NUL in it.  Servers read commands as C strings and cut them there
 * (Postfix does): the server and the rules would read two commands, "RCPT TO:x@y\0junk" or
 * "DATA\0" (DATA to the server, no verb to us).  Refused, never forwarded.
 */
static int
client_command_nul(struct session *s, const struct unit *u, size_t n)
{
	const unsigned char *nul = memchr(u->data, '\0', n);

	if (nul == NULL)
		return 0;
	client_record_nul(s, u->data, u->len, nul);
	side_discard(&s->client, u->len);
	session_warn(s, "a command with a NUL refused");
	client_answer_locally(s, "500 5.5.2 Error: NUL in command\r\n");
	return 1;
}

/* Tracks a client command, runs it through the rules, and relays it. */
static void
client_command(struct session *s, const struct unit *u)
{
	size_t n = smtp_line_len(u->data, u->len);
	struct smtp_command cmd;
	struct pending *p;
	size_t seen = n; /* what the rules see of the line */
	uint64_t chunk = 0; /* a BDAT's size and LAST, once read */
	int rcpt, verdict, last = 0;

	smtp_parse_command(u->data, n, &cmd);
	if (cmd.verb != VERB_BDAT)
		client_chunk_unended(s);
	if (client_command_nul(s, u, n))
		return;
	if (client_sasl_late(s, u->data, n, &cmd)) {
		client_sasl_relay_late(s, u, n);
		return;
	}
	if (client_capability_hidden(s, u, &cmd, n))
		return;
	if (client_command_local(s, u, &cmd))
		return;
	if (cmd.verb == VERB_AUTH) {
		/* SASL material never meets a rule: a hit would record the secret. */
		seen = client_auth(s, u->data, n, &cmd);
	} else {
		side_record(&s->client, u);
	}
	verdict = filter_command(s, cmd.verb, cmd.arg, u->data, seen);
	if (verdict < 0)
		return;
	if (verdict == ACT_REJECT || verdict == ACT_DISCONNECT) {
		client_command_refused(s, u, &cmd, verdict, s->outcome.reply);
		return;
	}
	if (cmd.verb == VERB_BDAT && s->server_chunking &&
	    (filter_has(s, SCOPE_HEADER) || filter_has(s, SCOPE_BODY))) {
		/* CHUNKING is hidden while message rules apply: BDAT would slip past them. */
		session_warn(s, "BDAT refused: header and body rules can't see chunks");
		client_command_refused(s, u, &cmd, ACT_REJECT,
		                       "502 5.5.1 BDAT not available: CHUNKING not offered");
		return;
	}
	if (s->outcome.rewritten && cmd.verb != VERB_AUTH)
		smtp_parse_command(s->outcome.line, s->outcome.len, &cmd);
	if (cmd.verb == VERB_BDAT && !s->server_chunking) {
		/* The server would read the chunk as commands: so do we, and it gets none of it. */
		session_warn(s, "BDAT refused: the server did not offer CHUNKING");
		client_command_refused(s, u, &cmd, ACT_REJECT,
		                       "502 5.5.1 BDAT not available: CHUNKING not offered");
		return;
	}
	if (cmd.verb == VERB_BDAT && client_bdat_refused(s, u, &cmd, &chunk, &last))
		return;
	if (cmd.verb == VERB_DATA && s->rules != NULL && rules_holds_messages(s->rules)) {
		client_hold_data(s, u);
		return;
	}
	rcpt = client_command_track(s, &cmd);
	client_command_send(s, u, u->data + seen, n - seen);
	if ((p = relay_expect(s, cmd.verb)) == NULL)
		return;
	p->rcpt_index = rcpt;
	if (cmd.verb == VERB_BDAT) {
		client_bdat(s, p, chunk, last);
		return;
	}
	p->ends_chunking = client_may_end_chunking(s, &cmd);
	if (p->ends_chunking || smtp_verb_awaits_reply(cmd.verb))
		client_enter_mode(s, MODE_AWAIT);
}

/* One line (or the unfinished last one) of unrelayed client input in a command state. */
static void
client_record_unrelayed_line(struct session *s, const unsigned char *line, size_t n, int sasl)
{
	const unsigned char *nul;
	struct smtp_command cmd;
	size_t len = n;

	/* An unfinished line's CR may be the start of its CRLF: not part of a response. */
	if (len > 0 && line[len - 1] == '\r')
		len--;
	smtp_parse_command(line, len, &cmd);
	/* SASL first: a raw response may hold NULs ("\0user\0password"), and stays redacted. */
	if (sasl ? !(len == 1 && line[0] == '*') : client_sasl_late(s, line, len, &cmd)) {
		client_record_sasl(s, NULL, 0, line, len);
		return;
	}
	if ((nul = memchr(line, '\0', len)) != NULL) {
		client_record_nul(s, line, n, nul);
		return;
	}
	if (cmd.verb == VERB_AUTH)
		(void)client_auth(s, line, n, &cmd);
	else
		transcript_data(s->transcript, "C:", line, n);
}

void
client_record_unrelayed(struct session *s, const unsigned char *p, size_t n)
{
	struct smtp_line l;
	size_t off = 0;
	int sasl = client_in_mode(s, MODE_SASL);

	if (client_in_mode(s, MODE_MESSAGE) || client_in_mode(s, MODE_CHUNK) ||
	    s->phase == PHASE_RAW) {
		transcript_data(s->transcript, s->client.in_piece ? "C+" : "C:", p, n);
		return;
	}
	if (client_in_mode(s, MODE_SKIP)) {
		/* The rest of an over-long line: left out, as its start was. */
		smtp_line_cut(p, n, &l);
		off = l.len;
		sasl = s->skip_return == MODE_SASL;
	}
	for (; off < n; off += l.len) {
		smtp_line_cut(p + off, n - off, &l);
		client_record_unrelayed_line(s, l.data, smtp_line_len(l.data, l.len), sasl);
		sasl = 0;
	}
}

/* A command line longer than --max-line: not forwarded, answered 500 in its turn. */
static void
client_line_too_long(struct session *s, const struct unit *u)
{
	session_warn(s, "command line longer than %zu octets: not forwarded, answered 500",
	             s->px->opts->max_line);
	s->skipped = u->len;
	side_discard(&s->client, u->len);
	client_answer_locally(s, "500 5.5.2 Line too long\r\n");
	s->skip_return = s->mode;
	client_enter_mode(s, MODE_SKIP);
}

/*
 * A SASL response longer than --max-line: never forwarded, and recorded only as a redacted
 * marker.  The server still waits for a response to its 334, so it is not answered here
 * (the client would take the exchange as over while the server took its next command as the
 * response): once the line is skipped, the exchange is cancelled upstream (client_skip).
 */
static void
client_sasl_too_long(struct session *s, const struct unit *u)
{
	client_record_sasl(s, NULL, 0, NULL, 0);
	session_warn(s, "SASL response longer than %zu octets: not forwarded, exchange cancelled",
	             s->px->opts->max_line);
	s->skipped = u->len;
	side_discard(&s->client, u->len);
	s->skip_return = MODE_SASL;
	client_enter_mode(s, MODE_SKIP);
}

/*
 * In place of a response too long to forward, "*" (RFC 4954 4: the server answers 501 and
 * the exchange ends); the server's reply is the client's answer.  Sent only once the whole
 * line is skipped: that reply ends the SASL mode, and the rest of the line must not then be
 * read as commands.
 */
static void
client_sasl_cancel(struct session *s)
{
	relay_send_upstream(s, "*\r\n");
	if (relay_expect(s, VERB_SASL) != NULL)
		client_enter_mode(s, MODE_AWAIT);
}

static void
client_skip(struct session *s, const struct unit *u)
{
	s->skipped += u->len;
	side_discard(&s->client, u->len);
	if (!u->complete)
		return;
	transcript_event(s->transcript, "discarded over-long line octets=%llu",
	                 (unsigned long long)s->skipped);
	if (s->skip_return == MODE_SASL)
		client_sasl_cancel(s);
	else
		client_enter_mode(s, s->skip_return);
}

static void
client_sasl(struct session *s, const struct unit *u)
{
	size_t n = smtp_line_len(u->data, u->len);

	if (n == 1 && u->data[0] == '*')
		side_record(&s->client, u);
	else
		client_record_sasl(s, NULL, 0, u->data, n);
	side_forward(&s->client, u->len);
	if (relay_expect(s, VERB_SASL) != NULL)
		client_enter_mode(s, MODE_AWAIT);
}

/* Records a content line as far as --record allows; counts what it leaves out. */
static void
client_record_content(struct session *s, const struct unit *u)
{
	enum record_level level = s->px->opts->record;
	int blank = u->complete && !s->client.in_piece && smtp_line_len(u->data, u->len) == 0;

	if (level == RECORD_BODY || (level == RECORD_HEADERS && s->content.in_headers)) {
		side_record(&s->client, u);
	} else {
		s->content.hidden_lines += u->complete;
		s->content.hidden_octets += u->len;
		s->client.in_piece = !u->complete;
	}
	if (blank)
		s->content.in_headers = 0;
}

/* The end of a held message: refused by the proxy, or handed to the server now. */
static void
client_held_end(struct session *s)
{
	const char *reply;
	char line[640];
	enum message_verdict v = message_end(s, &reply);

	if (v == MSG_ACCEPT) {
		client_enter_mode(s, MODE_AWAIT);
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
	client_answer_locally(s, line);
	if (s->phase == PHASE_CLOSING)
		return;
	/* The server forgets the transaction; its reply to our RSET is not the client's. */
	relay_quiet_upstream(s, "RSET\r\n", VERB_RSET);
	client_enter_mode(s, MODE_COMMAND);
}

/*
 * A streamed message the proxy would not take (too big, a line or header the rules could not
 * inspect): the server got part of it but never gets its end, so the session ends here and
 * the server discards it.
 */
static void
client_streamed_refused(struct session *s, const struct unit *u, const char *reply)
{
	char line[640];

	snprintf(line, sizeof(line), "%s\r\n", reply);
	side_discard(&s->client, u->len);
	message_free(s);
	transcript_event(s->transcript, "streamed message refused: its end not sent upstream");
	session_reply(s, line);
	session_close(s, "message_refused");
}

static void
client_end_of_data(struct session *s, const struct unit *u)
{
	if (s->content.hidden_octets > 0 || s->content.hidden_lines > 0)
		transcript_event(s->transcript, "message %s not recorded lines=%llu octets=%llu",
		                 s->px->opts->record == RECORD_NONE ? "content" : "body",
		                 (unsigned long long)s->content.hidden_lines,
		                 (unsigned long long)s->content.hidden_octets);
	side_record(&s->client, u);
	if (message_holding(s)) {
		side_discard(&s->client, u->len);
		client_held_end(s);
		return;
	}
	if (s->msg != NULL) {
		const char *reply;

		/* Streaming: a header still being gathered (no body) goes out before the end. */
		if (message_end(s, &reply) != MSG_ACCEPT) {
			client_streamed_refused(s, u, reply);
			return;
		}
		message_free(s);
	}
	side_forward(&s->client, u->len);
	relay_expect(s, VERB_EOD);
	if (s->phase != PHASE_CLOSING)
		client_enter_mode(s, MODE_COMMAND);
}

/* How a content line ends: CRLF, a bare LF or CR, or not at all (a piece). */
enum line_end { END_CRLF, END_BARE, END_NONE };

static enum line_end
client_line_end(const struct unit *u)
{
	if (!u->complete)
		return END_NONE;
	if (u->data[u->len - 1] == '\n' && u->len >= 2 && u->data[u->len - 2] == '\r')
		return END_CRLF;
	return END_BARE;
}

/*
 * Under --bare-newline normalize or reject, a bare CR inside a content line ends a line
 * too (SMTP smuggling hides "\r.\r" there): shorten the unit to end at it.  A CR last in a
 * piece is bare as well: side_next_unit never ends a piece with the CR of a CRLF.
 */
static void
client_split_bare_cr(struct unit *u)
{
	struct smtp_line l;

	smtp_line_cut_any(u->data, u->len, &l);
	u->len = l.len;
	u->complete = l.complete;
}

/* A content line that ended bare: relayed with CRLF, a lone "." stuffed so it stays content. */
static void
client_content_normalized(struct session *s, const struct unit *u)
{
	size_t n = u->len - 1;

	if (n == 1 && u->data[0] == '.')
		side_write(&s->server, ".", 1, NULL);
	side_write(&s->server, u->data, n, NULL);
	side_write(&s->server, "\r\n", 2, NULL);
	side_discard(&s->client, u->len);
}

/* A bare line end under --bare-newline reject: nothing of the message is delivered. */
static void
client_bare_reject(struct session *s)
{
	session_warn(s, "bare CR or LF in message content: rejected, upstream closed");
	session_reply(s, "550 5.5.2 Bare CR or LF in message content not accepted\r\n");
	session_close(s, "bare_newline");
}

/*
 * Whether a well-formed content line goes upstream as the client sent it: nothing held or
 * filtered (no message rules), a server to take it, and line ends checked (not
 * --bare-newline pass, where every line is forwarded at once).
 */
static int
client_relays_as_sent(const struct session *s)
{
	return s->msg == NULL && s->px->opts->bare_newline != BARE_PASS && !relay_no_server(s);
}

/*
 * A relayed message (no rules on it) past --max-message: the server never gets its end, so
 * it takes none of it; the client is told, and the session ends.
 */
static void
client_relayed_too_big(struct session *s)
{
	session_warn(s, "message over --max-message (%zu octets): session ended",
	             s->px->opts->max_message);
	session_reply(s, "552 5.3.4 Message size exceeds fixed limit\r\n");
	session_close(s, "message_too_big");
}

/* A line of DATA content; the end is only <CRLF>.<CRLF>. */
static void
client_content(struct session *s, const struct unit *u)
{
	int at_start = s->content.line_start && !s->client.in_piece;
	enum bare_newline bare = s->px->opts->bare_newline;
	enum line_end end = client_line_end(u);
	int lone_dot = !s->client.in_piece && u->complete && smtp_line_len(u->data, u->len) == 1 &&
	               u->data[0] == '.';
	int eod = at_start && u->len == 3 && memcmp(u->data, ".\r\n", 3) == 0;
	int plain = !eod && end != END_BARE && !lone_dot && client_relays_as_sent(s);

	struct unit moved;

	/*
	 * Lines relayed unchanged wait to be moved together; anything else goes after them.
	 * Lines waiting to be dropped need no such care: they go nowhere.
	 */
	if (!plain && s->client.relayed > 0 && !s->client.relayed_drop) {
		side_commit(&s->client);
		moved = *u; /* now at the head of the input */
		moved.data = evbuffer_pullup(side_input(&s->client), (ev_ssize_t)u->len);
		if (moved.data == NULL) {
			session_close(s, "error");
			return;
		}
		u = &moved;
	}
	s->client.in_piece_before = s->client.in_piece;

	if (eod) {
		client_end_of_data(s, u);
		return;
	}
	if (end == END_BARE && bare == BARE_REJECT) {
		client_bare_reject(s);
		return;
	}
	if (end == END_BARE && bare == BARE_NORMALIZE && !s->content.bare_seen) {
		s->content.bare_seen = 1;
		session_warn(s, "bare CR or LF in message content: relayed as CRLF");
	}
	client_record_content(s, u);
	if (s->tx != NULL) {
		s->tx->size += u->len;
		s->tx->data = 1;
	}
	if (s->msg == NULL && s->tx != NULL && s->tx->size > s->px->opts->max_message) {
		client_relayed_too_big(s);
		return;
	}
	s->content.line_start = end == END_CRLF;
	if (s->msg != NULL) {
		if (u->complete && !s->client.in_piece_before)
			message_line(s, u->data, u->len);
		else
			message_piece(s, u->data, u->len, !s->client.in_piece_before, u->complete);
		side_discard_later(&s->client, u->len);
	} else if (bare == BARE_PASS || relay_no_server(s)) {
		side_forward(&s->client, u->len);
	} else if (end == END_BARE) {
		client_content_normalized(s, u);
	} else if (lone_dot) {
		/* ".\r\n" after a bare line end is content here, so it must be upstream too. */
		side_write(&s->server, ".", 1, NULL);
		side_forward(&s->client, u->len);
	} else {
		side_forward_later(&s->client, u->len);
	}
}

/*
 * BDAT content that ended mid-line with nothing to continue it (the LAST chunk's end, or a
 * command after the chunk): its last record had no line end, which the transcript must say.
 */
static void
client_chunk_unended(struct session *s)
{
	if (!s->chunk.in_piece)
		return;
	s->chunk.in_piece = 0;
	transcript_event(s->transcript, "bdat content ends without a line end");
}

/*
 * Records BDAT content as the lines it happens to hold.  A chunk or a read may end mid-line:
 * the rest of that line, in the next read or chunk, is then a further piece ("C+"), as for a
 * line over --max-line, so the records say exactly which octets crossed.
 */
static void
client_chunk_record(struct session *s, const unsigned char *p, size_t take)
{
	size_t off = 0;
	struct smtp_line l;
	struct unit u;

	s->client.in_piece = s->chunk.in_piece;
	while (off < take) {
		smtp_line_cut(p + off, take - off, &l);
		u.data = l.data;
		u.len = l.len;
		u.complete = l.complete;
		side_record(&s->client, &u);
		off += u.len;
	}
	/* The command after the chunk is a record of its own, never a piece. */
	s->chunk.in_piece = s->client.in_piece;
	s->client.in_piece = 0;
}

/* BDAT content: relayed raw; recorded (under body) as the lines it happens to hold. */
static int
client_chunk(struct session *s)
{
	struct evbuffer *in = side_input(&s->client);
	size_t avail = evbuffer_get_length(in), take;
	const unsigned char *p;
	int record = s->px->opts->record == RECORD_BODY;

	take = avail < s->chunk.left ? avail : (size_t)s->chunk.left;
	if (take == 0)
		return 0;
	if (s->chunk.discard) {
		side_discard(&s->client, take);
		s->chunk.left -= take;
		if (s->chunk.left == 0) {
			transcript_event(s->transcript, "refused bdat chunk discarded");
			s->chunk.discard = 0;
			client_enter_mode(s, MODE_COMMAND);
			return 1;
		}
		return 0;
	}
	if (record && (p = evbuffer_pullup(in, (ev_ssize_t)take)) != NULL) {
		/* A CR last in a read, with more of the chunk to come, waits for its LF. */
		if (take < s->chunk.left && p[take - 1] == '\r' && --take == 0)
			return 0;
		client_chunk_record(s, p, take);
	}
	side_forward(&s->client, take);
	s->chunk.left -= take;
	if (s->chunk.left > 0)
		return 0;
	if (s->chunk.last)
		client_chunk_unended(s);
	client_enter_mode(s, MODE_COMMAND);
	return 1;
}

/* Handles one client unit in a line-based state. */
static void
client_unit(struct session *s, struct unit *u)
{
	switch (s->mode) {
	case MODE_COMMAND:
		if (!u->complete)
			client_line_too_long(s, u);
		else
			client_command(s, u);
		break;
	case MODE_SASL:
		if (!u->complete)
			client_sasl_too_long(s, u);
		else
			client_sasl(s, u);
		break;
	case MODE_SKIP:
		client_skip(s, u);
		break;
	case MODE_MESSAGE:
		if (s->px->opts->bare_newline != BARE_PASS)
			client_split_bare_cr(u);
		client_content(s, u);
		break;
	default:
		break;
	}
}

/*
 * Whether the next message lines may take the common way: relayed as sent, recorded whole,
 * the last line ended with CRLF and nothing waits to be dropped.
 */
static int
client_content_plain(const struct session *s)
{
	return client_in_mode(s, MODE_MESSAGE) && client_relays_as_sent(s) &&
	       s->px->opts->record == RECORD_BODY && s->content.line_start && !s->client.in_piece &&
	       !s->client.relayed_drop;
}

/* A line that goes upstream as it came: ends in CRLF, no other CR in it, not "." alone. */
static int
client_plain_line(const unsigned char *p, size_t len)
{
	if (len < 2 || p[len - 2] != '\r' || (len == 3 && p[0] == '.'))
		return 0;
	return memchr(p, '\r', len - 2) == NULL;
}

/* A plain message line taken by the run loop: counted as client_content would. */
static inline void
client_took_plain(struct session *s, size_t len)
{
	if (len == 2)
		s->content.in_headers = 0;
	if (s->tx != NULL) {
		s->tx->size += len;
		s->tx->data = 1;
	}
	s->client.octets += len;
	s->client.relayed += len;
	if (s->tx != NULL && s->tx->size > s->px->opts->max_message)
		client_relayed_too_big(s); /* the run stops: the session is closing */
}

/*
 * Message lines taken a run at a time from the input's first chain: one look into the buffer
 * per read instead of one per line.  Plain lines (the common case: client_content's `plain`)
 * are counted, recorded and left in place to move together; any other line goes through
 * client_unit as ever.  One scan per line (escape_plain_span) finds where its CRLF is when
 * it needs no escaping, the common case again; other lines are searched for their LF.
 * The loop stops as soon as a line was not left in place, to be moved or dropped later
 * (side_forward_later, side_discard_later): anything else may have changed the input, and
 * then the octets left in place no longer match the run's offset.  Returns the number of
 * lines taken.
 */
static size_t
client_content_run(struct session *s)
{
	struct side *x = &s->client;
	size_t max = s->px->opts->max_line, off = x->relayed, lim, len, k, taken = 0, rec;
	int plain = client_content_plain(s), as_is;
	const char *now = NULL; /* read when a plain line needs it, once per stretch of them */
	struct evbuffer_iovec v;
	const unsigned char *p;
	struct smtp_line l;
	struct unit u;

	if (evbuffer_peek(x->in, -1, NULL, &v, 1) < 1)
		return 0;
	p = v.iov_base;
	while (off < v.iov_len && client_in_mode(s, MODE_MESSAGE) && x->bev != NULL &&
	       x->relayed == off) {
		lim = v.iov_len - off < max ? v.iov_len - off : max;
		rec = 0;
		/* The scan pays only where a plain line can be recorded as it is, and records it
		 * as it goes where it can (not a line starting with a dot: it may end the data). */
		if (plain && p[off] != '.') {
			if (now == NULL)
				now = transcript_now();
			k = transcript_line_plain(s->transcript, now, p + off, lim, &rec);
		} else {
			k = plain ? escape_plain_span(p + off, lim) : 0;
		}
		if (rec > 0) {
			/* Recorded first: past --max-message, client_took_plain closes the session,
			 * which drains the input p points into. */
			x->scanned = 0;
			taken++;
			client_took_plain(s, rec);
			off += rec;
			continue;
		}
		as_is = plain && k + 2 <= lim && p[off + k] == '\r' && p[off + k + 1] == '\n';
		if (as_is) {
			len = k + 2;
		} else {
			smtp_line_cut(p + off + k, lim - k, &l);
			if (!l.complete)
				break;
			len = k + l.len;
		}
		x->scanned = 0;
		taken++;
		if (as_is ? !(len == 3 && p[off] == '.')
		          : plain && client_plain_line(p + off, len)) {
			/* Recorded first: past --max-message, client_took_plain closes the session,
			 * which drains the input p points into. */
			if (now == NULL)
				now = transcript_now();
			transcript_line(s->transcript, now, "C:", p + off, len, as_is);
			client_took_plain(s, len);
			off += len;
			continue;
		}
		u.data = p + off;
		u.len = len;
		u.complete = 1;
		client_unit(s, &u);
		off += len;
		plain = client_content_plain(s);
		now = NULL; /* client_unit's records took a later time */
	}
	return taken;
}

/* One step of the client's input while relaying, in its mode: 0 when it must wait. */
static int
client_relay_step(struct session *s)
{
	struct unit u;

	switch (s->mode) {
	case MODE_AWAIT:
		side_pause(&s->client, PAUSE_WAIT);
		return 0;
	case MODE_CHUNK:
		return client_chunk(s);
	default:
		/* Lines may bring replies of our own: not while the client takes none. */
		if (session_client_full(s))
			return 0;
		if (s->mode == MODE_MESSAGE && client_content_run(s) > 0)
			return 1;
		if (!side_next_unit(&s->client, s->px->opts->max_line, &u))
			return 0;
		client_unit(s, &u);
		return 1;
	}
}

static void
relay_client_units(struct session *s)
{
	while (s->phase != PHASE_CLOSING && s->client.bev != NULL) {
		switch (s->phase) {
		case PHASE_CLIENT_TLS:
			return;
		case PHASE_PROXY_HEADER: /* read by the session's owner (proxyin.c) */
			return;
		case PHASE_CONNECTING:
		case PHASE_GREETING:
		case PHASE_UPSTREAM_EHLO:
		case PHASE_UPSTREAM_STARTTLS:
		case PHASE_UPSTREAM_TLS:
		case PHASE_UPSTREAM_XCLIENT:
			if (!s->early_talker && evbuffer_get_length(side_input(&s->client)) > 0) {
				s->early_talker = 1;
				session_warn(s,
				             "early talker: client sent %zu octets before the "
				             "greeting",
				             evbuffer_get_length(side_input(&s->client)));
			}
			side_pause(&s->client, PAUSE_WAIT);
			return;
		case PHASE_RAW:
			relay_raw(&s->client);
			return;
		case PHASE_CLOSING:
			return;
		case PHASE_RELAYING:
			if (!client_relay_step(s))
				return;
			break;
		}
	}
}

void
relay_client(struct session *s)
{
	relay_client_units(s);
	side_commit(&s->client);
}

void
relay_client_secured(struct session *s)
{
	if (s->phase != PHASE_CLIENT_TLS)
		return; /* implicit TLS: the session goes on as it is */
	/* RFC 3207 4.2: everything learnt before TLS is forgotten; the client starts again. */
	free(s->helo);
	s->helo = NULL;
	s->tx = NULL;
	s->server_chunking = 0; /* offered again only in the reply to a new EHLO */
	session_enter_phase(s, PHASE_RELAYING);
	client_enter_mode(s, MODE_COMMAND);
	/* The server must forget too: a transaction begun in clear does not go on in TLS. */
	if (!relay_no_server(s))
		relay_quiet_upstream(s, "RSET\r\n", VERB_RSET);
	relay_resume_client(s);
}

void
relay_client_gone(struct session *s)
{
	side_pause(&s->client, PAUSE_EOF);
	if (client_in_mode(s, MODE_MESSAGE) || client_in_mode(s, MODE_CHUNK)) {
		/* Never let a partial message end: closing upstream makes the server drop it. */
		session_warn(s, "client closed during the message: upstream closed, nothing "
		                "delivered");
		session_close(s, "client_closed");
		return;
	}
	if (s->phase == PHASE_RAW || s->pipeline.remote == 0 || s->phase == PHASE_CONNECTING) {
		session_close(s, s->quit_answered ? "quit" : "client_closed");
		return;
	}
	/* Commands are pending (a QUIT, say): their replies still go to the client, and the
	 * server hears of the EOF (PITFALLS 9, 17). */
	session_client_eof(s);
}

/* Sends the proxy's own replies that have come to the head of the queue. */
void
client_flush_local(struct session *s)
{
	struct pending *head;

	while ((head = pipeline_head(&s->pipeline)) != NULL && head->local_reply != NULL) {
		if (head->hold_decide) {
			struct tx *tx = head->tx;

			pipeline_pop(&s->pipeline);
			client_hold_decide(s, tx);
			return;
		}
		session_reply(s, head->local_reply);
		if (head->disconnect != NULL) {
			const char *reason = head->disconnect;

			pipeline_pop(&s->pipeline);
			session_close(s, reason);
			return;
		}
		if (head->starttls) {
			pipeline_pop(&s->pipeline);
			client_starttls(s);
			return;
		}
		pipeline_pop(&s->pipeline);
	}
}

void
client_chunking_reset(struct session *s, int code)
{
	if (code / 100 == 2)
		s->chunk.message_start = s->chunk.sent;
	client_enter_mode(s, MODE_COMMAND);
	relay_resume_client(s);
}

void
client_answer_locally(struct session *s, const char *reply)
{
	if (pipeline_push_local(&s->pipeline, reply) == NULL) {
		session_close(s, "error");
		return;
	}
	client_flush_local(s);
}
