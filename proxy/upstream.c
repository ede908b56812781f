/*
 * Securing the upstream leg before the client sees anything: the greeting is held while
 * the proxy sends its own EHLO and STARTTLS and handshakes, then relayed.
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

/* The upstream leg is as secure as it will get: the client gets the greeting now. */
static void
upstream_ready(struct session *s)
{
	struct pending *head = pipeline_head(&s->pipeline);

	s->upstream_setup = 0;
	if (s->greeting != NULL)
		reply_edit_send(s, s->greeting, VERB_GREETING, 220);
	if (s->closing)
		return;
	if (head != NULL && head->verb == VERB_GREETING) {
		server_reply_effect(s, head, 220);
		if (!s->closing)
			pipeline_pop(&s->pipeline);
	}
}

static void
upstream_refused(struct session *s, const char *why)
{
	char reply[512];

	transcript_event(s->transcript, "tls upstream failed reason=\"%s\"", why);
	log_warnx("session=%s TLS with %s failed: %s", s->id, s->px->upstream_text, why);
	snprintf(reply, sizeof(reply), "421 4.7.0 %s Upstream server does not offer TLS\r\n",
	         s->px->opts->hostname);
	session_reply(s, reply);
	session_close(s, "upstream_tls_failed");
}

/* TLS with the server could not be had: go on in clear, unless it is required. */
static void
upstream_plain(struct session *s, const char *why)
{
	if (s->px->opts->upstream_tls == UPSTREAM_REQUIRE) {
		upstream_refused(s, why);
		return;
	}
	transcript_event(s->transcript, "upstream leg stays in clear: %s", why);
	upstream_ready(s);
}

/* A reply during the upstream set-up: greeting, then our EHLO, then our STARTTLS. */
void
upstream_setup_step(struct session *s)
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
			upstream_plain(s, "the server refused the session");
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
			upstream_plain(s, "the server does not offer STARTTLS");
			break;
		}
		relay_send_upstream(s, "STARTTLS\r\n");
		session_enter_state(s, ST_UPSTREAM_STARTTLS);
		break;
	case ST_UPSTREAM_STARTTLS:
		if (code != 220) {
			upstream_plain(s, "the server refused STARTTLS");
			break;
		}
		if ((stale = evbuffer_get_length(side_input(&s->server))) > 0) {
			session_warn(s,
			             "discarded %zu octets the server sent after its 220 to "
			             "STARTTLS",
			             stale);
			side_discard(&s->server, stale);
		}
		session_enter_state(s, ST_UPSTREAM_TLS);
		if (session_start_tls(s, &s->server) != 0)
			upstream_refused(s, "TLS set-up failed");
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
		upstream_ready(s);
		return;
	}
	/* Implicit TLS: the greeting comes now, over TLS. */
	session_enter_state(s, ST_GREETING);
	relay_server(s);
}
