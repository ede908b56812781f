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

#include "logs/escape.h"
#include "logs/log.h"
#include "logs/redact.h"
#include "logs/transcript.h"
#include "smtp/ehlo.h"
#include "proxy/message.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "smtp/proxyproto.h"
#include "proxy/relay.h"
#include "proxy/server.h"
#include "proxy/upstream.h"
#include "proxy/reply_edit.h"
#include "proxy/conn.h"

/* The upstream leg is as secure as it will get: the client gets the greeting now. */
static void
upstream_ready(struct session *s)
{
	struct pending *head = pipeline_head(&s->pipeline);

	s->setup.active = 0;
	if (s->setup.greeting != NULL)
		reply_edit_send(s, s->setup.greeting, VERB_GREETING, 220);
	if (s->phase == PHASE_CLOSING)
		return;
	if (head != NULL && head->verb == VERB_GREETING) {
		server_reply_effect(s, head, 220);
		if (s->phase != PHASE_CLOSING)
			pipeline_pop(&s->pipeline);
	}
}

/* The upstream leg cannot be set up as required: 421 4.7.0, nothing relayed. */
static void
upstream_refused(struct session *s, const char *why, const char *text, const char *reason)
{
	transcript_event(s->transcript, "upstream set-up failed reason=\"%s\"", why);
	log_warnx("session=%s set-up with %s failed: %s", s->id, s->px->upstream_text, why);
	session_refuse(s, "421 4.7.0", text, reason);
}

static void
upstream_tls_refused(struct session *s, const char *why)
{
	transcript_event(s->transcript, "tls upstream failed reason=\"%s\"", why);
	upstream_refused(s, why, "Upstream server does not offer TLS", "upstream_tls_failed");
}

/* Whether the upstream leg is to be secured with STARTTLS before the greeting: in terminate
 * and strip modes, and under require in any mode (the client's certificate has no part in it). */
static int
upstream_wants_tls(const struct options *o)
{
	if (o->upstream_tls == UPSTREAM_REQUIRE)
		return 1;
	return o->tls_mode != TLS_PASSTHROUGH && o->upstream_tls == UPSTREAM_STARTTLS;
}

int
upstream_setup_wanted(const struct options *o)
{
	return upstream_wants_tls(o) || o->forward_client == FORWARD_XCLIENT;
}

/* After EHLO (and TLS when it came): name the client with XCLIENT, or greet the client. */
static void
upstream_identify(struct session *s)
{
	char cmd[256];

	if (s->px->opts->forward_client != FORWARD_XCLIENT) {
		upstream_ready(s);
		return;
	}
	if (s->xclient_attrs < 0) {
		session_warn(s, "the server does not offer XCLIENT: the client's address cannot be "
		                "forwarded");
		log_warnx(
		    "session=%s upstream %s does not offer XCLIENT (--forward-client xclient)",
		    s->id, s->upstream_addr);
		upstream_refused(s, "the server does not offer XCLIENT",
		                 "Cannot forward the client's address", "xclient_refused");
		return;
	}
	if (proxyproto_xclient(&s->peer, s->xclient_attrs, cmd, sizeof(cmd)) == 0) {
		upstream_refused(s, "no client address to forward with XCLIENT (ADDR not offered?)",
		                 "Cannot forward the client's address", "xclient_refused");
		return;
	}
	relay_send_upstream(s, cmd);
	session_enter_phase(s, PHASE_UPSTREAM_XCLIENT);
}

/* TLS with the server could not be had: go on in clear, unless it is required. */
static void
upstream_plain(struct session *s, const char *why)
{
	if (s->px->opts->upstream_tls == UPSTREAM_REQUIRE) {
		upstream_tls_refused(s, why);
		return;
	}
	transcript_event(s->transcript, "upstream leg stays in clear: %s", why);
	upstream_identify(s);
}

/* The server refused our own EHLO: record its reply as the reason, and tell the operator. */
static void
upstream_ehlo_refused(struct session *s, const unsigned char *reply, size_t len)
{
	char *text = escape_strdup(reply, smtp_line_len(reply, len));
	char why[600];

	snprintf(why, sizeof(why), "the server refused our EHLO %s: %s", s->px->opts->helo_name,
	         text != NULL ? text : "");
	log_warnx("session=%s upstream %s refused EHLO %s: %s", s->id, s->upstream_addr,
	          s->px->opts->helo_name, text != NULL ? text : "");
	free(text);
	s->xclient_attrs = -1;
	if (s->px->opts->forward_client == FORWARD_XCLIENT) {
		upstream_refused(s, why, "Cannot forward the client's address", "xclient_refused");
		return;
	}
	if (!upstream_wants_tls(s->px->opts)) {
		upstream_ready(s);
		return;
	}
	if (s->px->opts->upstream_tls == UPSTREAM_REQUIRE) {
		transcript_event(s->transcript, "tls upstream failed reason=\"%s\"", why);
		upstream_refused(s, why, "Upstream server refused EHLO, no TLS",
		                 "upstream_tls_failed");
		return;
	}
	transcript_event(s->transcript, "upstream leg stays in clear: %s", why);
	upstream_ready(s);
}

static void
upstream_send_ehlo(struct session *s)
{
	char ehlo[300];

	snprintf(ehlo, sizeof(ehlo), "EHLO %s\r\n", s->px->opts->helo_name);
	relay_send_upstream(s, ehlo);
	session_enter_phase(s, PHASE_UPSTREAM_EHLO);
}

/* The server's reply to our EHLO: on to STARTTLS, to XCLIENT, or to the client. */
static void
upstream_ehlo_reply(struct session *s, const unsigned char *reply, size_t len, int code)
{
	if (code != 250) {
		upstream_ehlo_refused(s, reply, len);
		return;
	}
	s->xclient_attrs = proxyproto_xclient_offer(reply, len);
	/* The server's SIZE holds for a client that says HELO too. */
	message_learn_size(s, ehlo_size(reply, len));
	if (!upstream_wants_tls(s->px->opts) || s->server.tls) {
		upstream_identify(s);
		return;
	}
	if (!ehlo_offers(reply, len, "STARTTLS")) {
		upstream_plain(s, "the server does not offer STARTTLS");
		return;
	}
	relay_send_upstream(s, "STARTTLS\r\n");
	session_enter_phase(s, PHASE_UPSTREAM_STARTTLS);
}

/* The server's reply to our XCLIENT: a new greeting is the client's greeting. */
static void
upstream_xclient_reply(struct session *s, int code)
{
	char why[300];

	if (code != 220) {
		snprintf(why, sizeof(why), "the server refused XCLIENT (%d)", code);
		session_warn(s, "%s", why);
		log_warnx("session=%s upstream %s refused XCLIENT with %d", s->id, s->upstream_addr,
		          code);
		upstream_refused(s, why, "Cannot forward the client's address", "xclient_refused");
		return;
	}
	evbuffer_drain(s->setup.greeting, evbuffer_get_length(s->setup.greeting));
	evbuffer_add_buffer(s->setup.greeting, s->setup.reply);
	s->forwarded = "xclient";
	upstream_ready(s);
}

/*
 * The server's greeting refuses the session (not 220).  It goes to the client as it is: no
 * TLS and no XCLIENT can be had from a server that takes no command.  Where that set-up is
 * required (XCLIENT, --upstream-tls require) the session ends after the greeting, so that
 * nothing of the client reaches the server under the proxy's address or in clear; else the
 * client goes on as the server lets it.
 */
static void
upstream_greeting_refused(struct session *s, int code)
{
	const struct options *o = s->px->opts;
	int required = o->forward_client == FORWARD_XCLIENT || o->upstream_tls == UPSTREAM_REQUIRE;

	if (required) {
		transcript_event(s->transcript,
		                 "upstream set-up failed reason=\"the server refused the session (%d)\"",
		                 code);
		log_warnx("session=%s set-up with %s failed: the server refused the session (%d)",
		          s->id, s->px->upstream_text, code);
	} else if (upstream_wants_tls(o)) {
		transcript_event(s->transcript,
		                 "upstream leg stays in clear: the server refused the session");
	}
	upstream_ready(s);
	if (s->phase == PHASE_CLOSING)
		return;
	if (code == 421)
		session_close(s, "server_421");
	else if (required)
		session_close(s, "server_refused");
}

/* A reply during the upstream set-up: greeting, our EHLO, STARTTLS, (EHLO again), XCLIENT. */
static void
upstream_setup_step(struct session *s)
{
	size_t len = evbuffer_get_length(s->setup.reply), stale;
	const unsigned char *reply = evbuffer_pullup(s->setup.reply, (ev_ssize_t)len);
	int code = s->reply.code;

	server_enter_mode(s, SRV_NONE);
	switch (s->phase) {
	case PHASE_GREETING:
		if (s->setup.greeting == NULL && (s->setup.greeting = evbuffer_new()) == NULL) {
			session_close(s, "error");
			return;
		}
		evbuffer_add_buffer(s->setup.greeting, s->setup.reply);
		if (code != 220) {
			upstream_greeting_refused(s, code);
			return;
		}
		upstream_send_ehlo(s);
		break;
	case PHASE_UPSTREAM_EHLO:
		upstream_ehlo_reply(s, reply, len, code);
		break;
	case PHASE_UPSTREAM_STARTTLS:
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
		session_enter_phase(s, PHASE_UPSTREAM_TLS);
		if (session_start_tls(s, &s->server) != 0)
			upstream_tls_refused(s, "TLS set-up failed");
		break;
	case PHASE_UPSTREAM_XCLIENT:
		upstream_xclient_reply(s, code);
		break;
	default:
		break;
	}
	if (s->setup.reply != NULL)
		evbuffer_drain(s->setup.reply, evbuffer_get_length(s->setup.reply));
}

void
relay_upstream_secured(struct session *s)
{
	/* After our STARTTLS, the greeting came before it; with implicit TLS it comes now. */
	if (s->setup.active && s->setup.greeting != NULL) {
		/* RFC 3207 4.2: the server forgot our EHLO; XCLIENT needs it again. */
		if (s->px->opts->forward_client == FORWARD_XCLIENT)
			upstream_send_ehlo(s);
		else
			upstream_ready(s);
		return;
	}
	/* Implicit TLS: the greeting comes now, over TLS (and the set-up, if any, from it). */
	session_enter_phase(s, PHASE_GREETING);
	upstream_relay(s);
}

void
upstream_relay(struct session *s)
{
	for (;;) {
		relay_server(s);
		if (!s->setup.reply_done)
			return;
		s->setup.reply_done = 0;
		upstream_setup_step(s);
	}
}

int
upstream_proxy_header(struct session *s)
{
	int version = s->px->opts->forward_client == FORWARD_PROXY_V1 ? 1 : 2;
	unsigned char hdr[PROXYPROTO_OUT_MAX];
	size_t n;

	if (s->px->opts->forward_client != FORWARD_PROXY_V1 &&
	    s->px->opts->forward_client != FORWARD_PROXY_V2)
		return 0;
	if ((n = proxyproto_encode(version, &s->peer, hdr, sizeof(hdr))) == 0) {
		/* Without it the server would take the proxy for the client: relay nothing. */
		upstream_refused(s, "no client address for the PROXY header",
		                 "Cannot forward the client's address", "proxy_header_failed");
		return -1;
	}
	/* v1 is a text line like any we send; v2 is binary, recorded escaped all the same. */
	side_write(&s->server, hdr, n, "U:");
	s->forwarded = version == 1 ? "proxy-v1" : "proxy-v2";
	return 0;
}
