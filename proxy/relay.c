/*
 * The relay's plumbing, shared by both directions: lines cut from a side's input (capped
 * before they are read), moved unchanged to the peer or discarded, recorded, and the queue
 * of the proxy's own replies.  client.c and server.c follow the SMTP dialogue on top of it.
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
#include "proxy/relay.h"
#include "proxy/reply_edit.h"
#include "proxy/session.h"
#include "proxy/tx.h"

/* What a side sent and the relay has not dealt with yet. */
struct evbuffer *
side_input(struct side *x)
{
	side_commit(x);
	return bufferevent_get_input(x->bev);
}

/*
 * Finds the next line in a side's input, capped at --max-line before it is read: returns 1
 * with a line or a max-line piece, 0 when more input is needed.  A piece never ends in the
 * CR of a CRLF (PITFALLS 15): that CR starts the next unit, so the line end is seen whole.
 */
int
side_next_unit(struct side *x, size_t max, struct unit *u)
{
	struct smtp_line l;

	/* Units relayed but not yet moved stay at the head: the next one starts after them. */
	if (!smtp_line_next(bufferevent_get_input(x->bev), x->relayed, max, &x->scanned, &l))
		return 0;
	u->data = l.data;
	u->len = l.len;
	u->complete = l.complete;
	return 1;
}

/*
 * Message lines relayed unchanged are moved to the peer together, once the relay stops
 * for input or meets a line it must treat otherwise: one evbuffer move (and its callbacks)
 * per read instead of one per line.
 */
void
side_forward_later(struct side *x, size_t len)
{
	if (x->relayed_drop)
		side_commit(x);
	x->octets += len;
	x->relayed += len;
}

void
side_discard_later(struct side *x, size_t len)
{
	if (x->relayed > 0 && !x->relayed_drop)
		side_commit(x);
	x->relayed_drop = 1;
	x->octets += len;
	x->relayed += len;
}

void
side_commit(struct side *x)
{
	struct session *s = x->s;
	struct side *peer = x->dir == SIDE_CLIENT ? &s->server : &s->client;
	size_t len = x->relayed;
	int drop = x->relayed_drop;

	x->relayed = 0;
	x->relayed_drop = 0;
	if (len == 0 || x->bev == NULL)
		return;
	if (drop || peer->bev == NULL)
		evbuffer_drain(bufferevent_get_input(x->bev), len);
	else
		evbuffer_remove_buffer(bufferevent_get_input(x->bev),
		                       bufferevent_get_output(peer->bev), len);
}

/* Moves the unit to the peer, unchanged, and counts it. */
void
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

int
relay_no_server(const struct session *s)
{
	return s->server.bev == NULL;
}

void
side_discard(struct side *x, size_t len)
{
	x->octets += len;
	evbuffer_drain(side_input(x), len);
}

/*
 * The one write point: octets onto a side's output, on their way to it, recorded as kind
 * ("P:" a reply of the proxy's own, "U:" a line of its own upstream), or with kind NULL not
 * again (what was recorded as it came in, "C:"/"S:", in the form it goes out).  Nothing goes
 * to a side already closed, nor is recorded as if it had.
 */
void
side_write(struct side *to, const void *p, size_t len, const char *kind)
{
	if (to->bev == NULL)
		return;
	evbuffer_add(bufferevent_get_output(to->bev), p, len);
	if (kind != NULL)
		transcript_data(to->s->transcript, kind, p, len);
}

/* All of buf onto a side's output (moved, not copied: file segments stay so), unrecorded. */
void
side_write_buffer(struct side *to, struct evbuffer *buf)
{
	if (to->bev == NULL) {
		evbuffer_drain(buf, evbuffer_get_length(buf));
		return;
	}
	evbuffer_add_buffer(bufferevent_get_output(to->bev), buf);
}

/* Records a unit, as "C:"/"S:" or, for a later piece of a long line, "C+"/"S+". */
void
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

/* Sends the proxy's own replies that have come to the head of the queue. */
void
relay_flush_local(struct session *s)
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
		if (head->disconnect) {
			pipeline_pop(&s->pipeline);
			session_close(s, "rule_disconnect");
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
relay_answer_locally(struct session *s, const char *reply)
{
	if (pipeline_push_local(&s->pipeline, reply) == NULL) {
		session_close(s, "error");
		return;
	}
	relay_flush_local(s);
}

struct pending *
relay_expect(struct session *s, enum smtp_verb verb)
{
	struct pending *p = pipeline_push(&s->pipeline, verb);

	if (p == NULL)
		session_close(s, "error");
	else
		p->tx = s->tx;
	return p;
}

void
relay_raw(struct side *x)
{
	size_t n = evbuffer_get_length(side_input(x));

	x->raw_octets += n;
	side_forward(x, n);
}

/* The waiting client may go on: what it already sent is processed from the loop. */
void
relay_resume_client(struct session *s)
{
	side_resume(&s->client, PAUSE_WAIT);
	session_schedule_client(s);
}

/* Sends a line of the proxy's own to the server, recorded as "U:". */
void
relay_send_upstream(struct session *s, const char *line)
{
	side_write(&s->server, line, strlen(line), "U:");
}

/* Our own command to the server, whose reply the client never sees. */
void
relay_quiet_upstream(struct session *s, const char *line, enum smtp_verb verb)
{
	struct pending *p;

	relay_send_upstream(s, line);
	if ((p = relay_expect(s, verb)) != NULL)
		p->quiet = 1;
}

/* DATA was answered 354: message content follows. */
void
relay_message_start(struct session *s)
{
	session_enter_state(s, ST_MESSAGE);
	s->msg_line_start = 1;
	s->msg_in_headers = 1;
	s->msg_hidden_lines = s->msg_hidden_octets = 0;
	s->msg_bare_seen = 0;
}

/*
 * The server is going: every command the client still waits on gets a reply, the proxy's
 * own where it has one, else the server's 421 (or ours); our own RSET needs none.
 */
void
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
