/*
 * The server's direction: replies, matched to pending commands in order (RFC 2920), held
 * whole where they are edited, a 421 answering everything pending, and our own commands'
 * replies kept from the client.
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
#include "smtp/ehlo.h"
#include "proxy/filter.h"
#include "proxy/message.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/client.h"
#include "proxy/relay.h"
#include "proxy/server.h"
#include "proxy/reply_edit.h"
#include "proxy/conn.h"
#include "proxy/tx.h"

/* Longest reply held whole for editing; a longer one is relayed as it comes. */
#define REPLY_HOLD_MAX 65536

static void server_protocol_error(struct session *s, const char *why);

/* STARTTLS accepted without a certificate of ours: from here on, bytes both ways. */
static void
server_start_passthrough(struct session *s)
{
	size_t stale_c = evbuffer_get_length(side_input(&s->client));
	size_t stale_s = evbuffer_get_length(side_input(&s->server));

		transcript_event(s->transcript,
	                 "starttls passthrough: bytes after this point are relayed unparsed");
	/* CVE-2011-0411: plaintext sent before the handshake is never relayed into it. */
	if (stale_c > 0) {
		session_warn(s,
		             "discarded %zu octets the client sent after STARTTLS before the 220",
		             stale_c);
		side_discard(&s->client, stale_c);
	}
	if (stale_s > 0) {
		session_warn(s, "discarded %zu octets the server sent after its 220 to STARTTLS",
		             stale_s);
		side_discard(&s->server, stale_s);
	}
	session_enter_phase(s, PHASE_RAW);
	relay_resume_client(s);
}

/* What a completed reply means for the command it answers. */
void
server_reply_effect(struct session *s, const struct pending *p, int code)
{
	tx_reply(s, p, code);
	if (p->ends_chunking)
		client_chunking_reset(s, code);
	switch (p->verb) {
	case VERB_HELO:
		s->server_chunking = 0;
		break;
	case VERB_EHLO:
	case VERB_LHLO:
		/* What the server itself offered, whatever the client was shown. */
		s->server_chunking = code == 250 && s->reply.chunking;
		break;
	case VERB_GREETING:
		session_enter_phase(s, PHASE_RELAYING);
		client_enter_mode(s, MODE_COMMAND);
		relay_resume_client(s);
		break;
	case VERB_DATA:
		if (code == 354)
			relay_message_start(s);
		else
			client_enter_mode(s, MODE_COMMAND);
		if (code == 354 && (filter_has(s, SCOPE_HEADER) || filter_has(s, SCOPE_BODY)) &&
		    message_begin(s, 0) != 0) {
			session_close(s, "error");
			return;
		}
		if (code == 354 && session_client_gone(s)) {
			session_close(s, "client_closed");
			return;
		}
		relay_resume_client(s);
		break;
	case VERB_AUTH:
	case VERB_SASL:
		s->auth.code = code;
		free(s->auth.text);
		s->auth.text = s->reply.text != NULL ? strdup(s->reply.text) : NULL;
		client_enter_mode(s, code == 334 ? MODE_SASL : MODE_COMMAND);
		relay_resume_client(s);
		break;
	case VERB_STARTTLS:
		if (code == 220) {
			server_start_passthrough(s);
			break;
		}
		client_enter_mode(s, MODE_COMMAND);
		relay_resume_client(s);
		break;
	case VERB_QUIT:
		s->quit_answered = 1;
		break;
	case VERB_EOD:
		if (client_in_mode(s, MODE_AWAIT)) {
			/* A held message's final reply: the client may go on. */
			client_enter_mode(s, MODE_COMMAND);
			relay_resume_client(s);
		}
		break;
	default:
		break;
	}
}

/*
 * A 421 from the server: every pending command gets it, then the client is closed.  relayed:
 * it was too long to hold, and went to the client as it came (or edited line by line).
 */
static void
server_421(struct session *s, int relayed)
{
	size_t len = evbuffer_get_length(s->reply.copy);
	char *copy;
	struct pending *head = pipeline_head(&s->pipeline);

	/* The server's own 421 answers the head (or nothing, when idle), as it was sent. */
	client_flush_local(s);
	head = pipeline_head(&s->pipeline);
	if (relayed) {
		/* Too long to copy: the head had it as it came, the rest get ours. */
		char lost[SESSION_REPLY_MAX];

		if (head != NULL)
			pipeline_pop(&s->pipeline);
		session_own_reply(s, lost, sizeof(lost), "421 4.4.2", "Connection to upstream lost");
		relay_answer_pending(s, lost);
		session_close(s, "server_421");
		return;
	}
	/* The reply rules see a 421 too (a host name to hide is in it as in any other). */
	reply_edit_in_place(s, s->reply.copy, head != NULL ? head->verb : VERB_UNKNOWN, 421);
	if (s->phase == PHASE_CLOSING)
		return;
	len = evbuffer_get_length(s->reply.copy);
	if (head == NULL || !(head->quiet && head->verb == VERB_RSET))
		side_write(&s->client, evbuffer_pullup(s->reply.copy, (ev_ssize_t)len), len, NULL);
	if (head != NULL)
		pipeline_pop(&s->pipeline);
	copy = malloc(len + 1);
	if (copy != NULL) {
		evbuffer_copyout(s->reply.copy, copy, len);
		copy[len] = '\0';
	}
	if (copy != NULL)
		relay_answer_pending(s, copy);
	free(copy);
	session_close(s, "server_421");
}

/* The held message's DATA was refused: that reply is the client's answer to its dot. */
static void
server_held_refused(struct session *s, int code)
{
	if (s->tx != NULL) {
		s->tx->code = code;
		free(s->tx->text);
		s->tx->text = s->reply.text != NULL ? strdup(s->reply.text) : NULL;
		s->tx = NULL;
	}
	reply_edit_send(s, s->reply.held, VERB_DATA, code);
	message_free(s);
	client_enter_mode(s, MODE_COMMAND);
	relay_resume_client(s);
}

/*
 * Keeps the text of a reply's last line, escaped, in the session's buffer for it: one buffer
 * for all of a session's replies, not an allocation and a free for each.  NULL when memory
 * is short, as escape_strdup would leave it.
 */
static void
server_reply_text(struct session *s, const unsigned char *p, size_t n)
{
	size_t need;
	char *t;

	if (n > (SIZE_MAX - 1) / 4 - 64) {
		need = 0;
	} else {
		need = 4 * n + 1;
		if (need <= s->reply.textcap) {
			s->reply.text[escape_into(s->reply.text, p, n)] = '\0';
			return;
		}
		need = need < 128 ? 128 : need;
	}
	if (need == 0 || (t = realloc(s->reply.text, need)) == NULL) {
		free(s->reply.text);
		s->reply.text = NULL;
		s->reply.textcap = 0;
		return;
	}
	s->reply.text = t;
	s->reply.textcap = need;
	t[escape_into(t, p, n)] = '\0';
}

#define SERVER_ODD_TEXT "4.3.0 Unexpected reply from the server, try again later"

/* The held message's DATA got neither 354 nor a refusal: 451 4.3.0 for the client's dot. */
static void
server_held_odd(struct session *s, int code)
{
	session_warn(s, "server answered DATA for a held message with %d: answered 451 4.3.0",
	             code);
	evbuffer_drain(s->reply.held, evbuffer_get_length(s->reply.held));
	evbuffer_add_printf(s->reply.held, "451 %s\r\n", SERVER_ODD_TEXT);
	server_reply_text(s, (const unsigned char *)SERVER_ODD_TEXT, strlen(SERVER_ODD_TEXT));
	server_held_refused(s, 451);
}

/* The reply to a command of our own (RSET, a held message's DATA): not relayed as such. */
static void
server_quiet_done(struct session *s, int code)
{
	struct pending *head = pipeline_head(&s->pipeline);
	enum smtp_verb verb = head->verb;

	pipeline_pop(&s->pipeline);
	if (verb == VERB_DATA && code == 354) {
		evbuffer_drain(s->reply.held, evbuffer_get_length(s->reply.held));
		if (message_send_held(s) != 0) {
			session_close(s, "error");
			return;
		}
		relay_expect(s, VERB_EOD);
	} else if (verb == VERB_DATA && (code < 400 || code > 599)) {
		/* Not 354, not a refusal: the server never took the body.  The client must not
		 * hear a success (a 2xx here looks like a delivery). */
		server_held_odd(s, code);
	} else if (verb == VERB_DATA) {
		server_held_refused(s, code);
	} else {
		evbuffer_drain(s->reply.held, evbuffer_get_length(s->reply.held));
	}
	if (s->phase == PHASE_CLOSING)
		return;
	client_flush_local(s);
	if (session_client_gone(s) && s->pipeline.remote == 0)
		session_close(s, s->quit_answered ? "quit" : "client_closed");
}

static void
server_reply_done(struct session *s)
{
	struct pending *head = pipeline_head(&s->pipeline);
	int code = s->reply.code;
	enum server_mode mode = s->reply.mode;

	server_enter_mode(s, SRV_NONE);
	if (code == 421) {
		server_421(s, mode == SRV_RELAY || mode == SRV_STREAM);
		return;
	}
	if (head == NULL || head->local_reply != NULL) {
		session_warn(s, "server sent a reply (%d) with no command pending", code);
		return;
	}
	if (mode == SRV_QUIET) {
		server_quiet_done(s, code);
		return;
	}
	if (mode == SRV_HOLD)
		reply_edit_send(s, s->reply.held, head->verb, code);
	server_reply_effect(s, head, code);
	if (s->phase == PHASE_CLOSING)
		return;
	pipeline_pop(&s->pipeline);
	client_flush_local(s);
	if (session_client_gone(s) && s->pipeline.remote == 0)
		session_close(s, s->quit_answered ? "quit" : "client_closed");
}

/* Whether this reply is held whole: a 250 to EHLO/LHLO, or any reply rules may edit. */
static int
server_holds_reply(struct session *s, int code)
{
	struct pending *head = pipeline_head(&s->pipeline);

	if (head == NULL || head->local_reply != NULL)
		return 0;
	if (reply_edit_wanted(s))
		return 1;
	return code == 250 && (head->verb == VERB_EHLO || head->verb == VERB_LHLO);
}

/* Where the lines of the reply being read are held, or NULL when they go on at once. */
static struct evbuffer *
server_hold(struct session *s)
{
	switch (s->reply.mode) {
	case SRV_SETUP:
		return s->setup.reply;
	case SRV_421:
		return s->reply.copy;
	case SRV_HOLD:
	case SRV_QUIET:
		return s->reply.held;
	default:
		return NULL; /* SRV_STREAM keeps its line back in held_reply itself */
	}
}

/*
 * A held reply passed the hold limit (a hostile server): a reply held to be edited (an EHLO
 * reply, any reply the rules may edit, a 421 they may) is edited line by line from here on, a
 * 421 no rule edits goes to the client as it comes, and a reply the client was never to see
 * (the set-up, our own commands) ends the session; so does a greeting the rules would have
 * to edit.  Returns where to hold the line now, NULL to relay it.
 */
static struct evbuffer *
server_hold_overflow(struct session *s)
{
	session_warn(s, "reply over %d octets", REPLY_HOLD_MAX);
	if (s->reply.mode == SRV_SETUP && s->phase == PHASE_GREETING &&
	    s->px->opts->forward_client != FORWARD_XCLIENT && !filter_has(s, SCOPE_BANNER) &&
	    !filter_has(s, SCOPE_REPLY)) {
		/* The client may read the greeting now; it still may not talk until the
		 * upstream leg is secured.  (Under XCLIENT the greeting the client gets is a
		 * later one: a greeting this long is an error.) */
		server_enter_mode(s, SRV_RELAY);
		side_write_buffer(&s->client, s->setup.reply);
		return NULL;
	}
	if (s->reply.mode == SRV_SETUP || s->reply.mode == SRV_QUIET) {
		server_protocol_error(s, "reply too long");
		return NULL;
	}
	if (s->reply.mode == SRV_421 && !reply_edit_wanted(s)) {
		server_enter_mode(s, SRV_RELAY);
		side_write_buffer(&s->client, s->reply.copy);
		return NULL;
	}
	reply_edit_stream_begin(s, s->reply.mode == SRV_421 ? s->reply.copy : s->reply.held);
	return NULL;
}

/* The server broke the protocol beyond relaying: what is pending gets 421, then close. */
static void
server_protocol_error(struct session *s, const char *why)
{
	char reply[SESSION_REPLY_MAX];

	transcript_event(s->transcript, "upstream protocol error: %s", why);
	session_own_reply(s, reply, sizeof(reply), "421 4.4.2", "Upstream protocol error");
	client_flush_local(s);
	if (pipeline_head(&s->pipeline) == NULL)
		session_reply(s, reply);
	relay_answer_pending(s, reply);
	session_close(s, "upstream_error");
}

static void
server_reply_route(struct session *s, const struct unit *u)
{
	struct evbuffer *hold = server_hold(s);
	int cont = s->server.in_piece;

	if (hold != NULL && evbuffer_get_length(hold) + u->len > REPLY_HOLD_MAX &&
	    (hold = server_hold_overflow(s)) == NULL && s->phase == PHASE_CLOSING)
		return;
	side_record(&s->server, u);
	if (s->reply.mode == SRV_STREAM) {
		if (reply_edit_stream_unit(s, u, cont, s->reply.last_line))
			side_forward(&s->server, u->len);
		else
			side_discard(&s->server, u->len);
		return;
	}
	if (hold == NULL) {
		side_forward(&s->server, u->len);
		return;
	}
	evbuffer_add(hold, u->data, u->len);
	side_discard(&s->server, u->len);
}

/* Starts a reply on its first line: where its lines will be held, if anywhere. */
static int
server_reply_begin(struct session *s, int code)
{
	struct evbuffer **hold = NULL;
	enum server_mode mode = SRV_RELAY;

	s->reply.code = code;
	s->reply.chunking = 0;
	if (s->setup.active) {
		hold = &s->setup.reply;
		mode = SRV_SETUP;
	} else if (code == 421) {
		hold = &s->reply.copy;
		mode = SRV_421;
	} else if (pipeline_head(&s->pipeline) != NULL && pipeline_head(&s->pipeline)->quiet) {
		hold = &s->reply.held;
		mode = SRV_QUIET;
	} else if (server_holds_reply(s, code)) {
		hold = &s->reply.held;
		mode = SRV_HOLD;
	}
	server_enter_mode(s, mode);
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
server_reply_unit(struct session *s, const struct unit *u)
{
	struct smtp_reply_line r;
	struct pending *head;

	if (!s->server.in_piece) {
		if (smtp_parse_reply(u->data, smtp_line_len(u->data, u->len), &r) != 0)
			session_warn(s, "malformed reply line from the server");
		if (s->reply.mode == SRV_NONE) {
			if (server_reply_begin(s, r.code) != 0)
				return;
		} else if ((head = pipeline_head(&s->pipeline)) != NULL &&
		           (head->verb == VERB_EHLO || head->verb == VERB_LHLO) &&
		           ehlo_line_is(u->data, u->len, "CHUNKING")) {
			s->reply.chunking = 1;
		}
		if (r.last)
			server_reply_text(s, r.text, r.textlen);
		s->reply.last_line = r.last;
	}
	server_reply_route(s, u);
	if (u->complete && s->reply.last_line) {
		if (s->setup.active)
			s->setup.reply_done = 1; /* upstream.c's to take: ends this read */
		else
			server_reply_done(s);
	}
}

void
relay_server(struct session *s)
{
	struct unit u;

	while (s->phase != PHASE_CLOSING && s->server.bev != NULL && !s->setup.reply_done) {
		if (s->phase == PHASE_RAW) {
			relay_raw(&s->server);
			return;
		}
		if (s->phase == PHASE_UPSTREAM_TLS)
			return;
		if (!side_next_unit(&s->server, s->px->opts->max_line, &u))
			return;
		server_reply_unit(s, &u);
	}
}

void
relay_server_gone(struct session *s)
{
	char lost[SESSION_REPLY_MAX];

	relay_server(s);
	if (s->phase == PHASE_CLOSING)
		return;
	if (s->phase == PHASE_RAW || (s->quit_answered && s->pipeline.remote == 0)) {
		session_close(s, s->quit_answered ? "quit" : "server_closed");
		return;
	}
	session_own_reply(s, lost, sizeof(lost), "421 4.4.2", "Connection to upstream lost");
	if (s->pipeline.count == 0)
		session_reply(s, lost);
	relay_answer_pending(s, lost);
	session_close(s, "server_closed");
}
