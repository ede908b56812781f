/*
 * --accept-proxy: a connection from a listed balancer begins with a PROXY header (v1 or v2,
 * proxyproto.c) naming the client.  Until it is whole nothing is recorded or relayed; the
 * session's owner closes the connection without a greeting when it is invalid, late or cut
 * short.
 */
#include "proxy/proxyin.h"

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>

#include "logs/transcript.h"
#include "smtp/proxyproto.h"
#include "proxy/conn.h"

/* The header is whole: the session is the client's from here, the balancer kept as "via". */
static void
proxyin_take(struct session *s, const struct proxyproto_header *h)
{
	snprintf(s->via, sizeof(s->via), "%s", s->client_addr);
	s->proxy_version = h->version;
	if (h->local) {
		s->proxy_local = 1; /* the balancer's own check: a session from its address */
	} else if (h->addrs.family != AF_UNSPEC) {
		s->peer = h->addrs;
		proxyproto_format(&s->peer, 0, s->client_addr, sizeof(s->client_addr));
	}
}

enum proxyin_result
proxyin_read(struct session *s, const char **why)
{
	struct evbuffer *in = side_input(&s->client);
	size_t len = evbuffer_get_length(in), want;
	struct proxyproto_header h;
	const unsigned char *p;

	want = len < PROXYPROTO_V2_FIXED + PROXYPROTO_V2_MAX_LEN
	           ? len
	           : PROXYPROTO_V2_FIXED + PROXYPROTO_V2_MAX_LEN;
	if (want == 0)
		return PROXYIN_MORE;
	p = evbuffer_pullup(in, (ev_ssize_t)want);
	switch (proxyproto_parse(p, want, &h, why)) {
	case PROXYPROTO_MORE:
		return PROXYIN_MORE;
	case PROXYPROTO_INVALID:
		return PROXYIN_INVALID;
	case PROXYPROTO_DONE:
		break;
	}
	evbuffer_drain(in, h.len);
	s->client.scanned = 0;
	proxyin_take(s, &h);
	return PROXYIN_DONE;
}

void
proxyin_record(struct session *s)
{
	if (s->transcript != NULL)
		transcript_event(s->transcript, "proxy header v%d%s", s->proxy_version,
		                 s->proxy_local ? " local" : "");
}
