/*
 * --accept-proxy: a connection from a listed balancer begins with a PROXY header (v1 or v2,
 * proxyproto.c) naming the client.  Until it is whole nothing is recorded or relayed; a
 * header that is invalid, late or cut short closes the connection without a greeting.
 */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "logs/log.h"
#include "logs/transcript.h"
#include "smtp/proxyproto.h"
#include "proxy/relay.h"
#include "proxy/session.h"

/* The header was not valid: recorded (from the balancer's address), then closed. */
static void
proxyin_fail(struct session *s, const char *why)
{
	(void)session_open_transcript(s);
	transcript_event(s->transcript, "proxy header refused reason=\"%s\"", why);
	log_warnx("session=%s PROXY header from %s refused: %s", s->id, s->client_addr, why);
	session_close(s, "proxy_header");
}

/* The header is whole: the session is the client's from here, the balancer kept as "via". */
static void
proxyin_done(struct session *s, const struct proxyproto_header *h)
{
	snprintf(s->via, sizeof(s->via), "%s", s->client_addr);
	if (h->local) {
		s->proxy_local = 1; /* the balancer's own check: a session from its address */
	} else if (h->addrs.family != AF_UNSPEC) {
		s->peer = h->addrs;
		proxyproto_format(&s->peer, 0, s->client_addr, sizeof(s->client_addr));
	}
	event_del(s->timer);
	session_begin(s, s->proxy_implicit_tls);
	if (s->transcript != NULL)
		transcript_event(s->transcript, "proxy header v%d%s", h->version,
		                 h->local ? " local" : "");
}

void
proxyin_read(struct session *s)
{
	struct evbuffer *in = side_input(&s->client);
	size_t len = evbuffer_get_length(in), want;
	struct proxyproto_header h;
	const unsigned char *p;
	const char *why;

	want = len < PROXYPROTO_V2_FIXED + PROXYPROTO_V2_MAX_LEN
	           ? len
	           : PROXYPROTO_V2_FIXED + PROXYPROTO_V2_MAX_LEN;
	if (want == 0)
		return;
	p = evbuffer_pullup(in, (ev_ssize_t)want);
	switch (proxyproto_parse(p, want, &h, &why)) {
	case PROXYPROTO_MORE:
		return;
	case PROXYPROTO_INVALID:
		proxyin_fail(s, why);
		return;
	case PROXYPROTO_DONE:
		evbuffer_drain(in, h.len);
		s->client.scanned = 0;
		proxyin_done(s, &h);
		return;
	}
}

void
proxyin_timeout(struct session *s)
{
	proxyin_fail(s, "no whole PROXY header within 5 seconds");
}

void
proxyin_gone(struct session *s)
{
	proxyin_fail(s, "connection closed before a whole PROXY header");
}
