/*
 * The relay's plumbing, shared by both directions on top of the sides (side.c): the queue
 * of the proxy's own replies and of the commands awaiting a reply.  client.c and server.c
 * follow the SMTP dialogue on top of it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "proxy/relay.h"
#include "proxy/conn.h"

int
relay_no_server(const struct session *s)
{
	return s->server.bev == NULL;
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
	client_enter_mode(s, MODE_MESSAGE);
	s->content.line_start = 1;
	s->content.in_headers = 1;
	s->content.hidden_lines = s->content.hidden_octets = 0;
	s->content.bare_seen = 0;
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
