/*
 * A session's state and the few things any relay module may do to it: change its phase or a
 * side's mode (each through one function that logs it), pause and resume reading a side,
 * record a warning, reply on the proxy's behalf, schedule the client's turn.  What only the
 * owner may do (close, TLS, the client's EOF) goes to it through struct conn_ops.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "logs/log.h"
#include "logs/transcript.h"
#include "smtp/smtp.h"
#include "proxy/conn.h"
#include "proxy/options.h"
#include "proxy/proxy.h"

static const char *const phase_names[] = {
    [PHASE_CONNECTING] = "connecting",
    [PHASE_GREETING] = "greeting",
    [PHASE_RELAYING] = "relaying",
    [PHASE_RAW] = "raw",
    [PHASE_CLOSING] = "closing",
    [PHASE_UPSTREAM_EHLO] = "upstream-ehlo",
    [PHASE_UPSTREAM_STARTTLS] = "upstream-starttls",
    [PHASE_UPSTREAM_TLS] = "upstream-tls",
    [PHASE_UPSTREAM_XCLIENT] = "upstream-xclient",
    [PHASE_PROXY_HEADER] = "proxy-header",
    [PHASE_CLIENT_TLS] = "client-tls",
};

static const char *const client_mode_names[] = {
    [MODE_COMMAND] = "command", [MODE_AWAIT] = "await-reply", [MODE_SASL] = "sasl",
    [MODE_MESSAGE] = "message", [MODE_CHUNK] = "chunk",       [MODE_SKIP] = "skip",
};

static const char *const server_mode_names[] = {
    [SRV_NONE] = "none",     [SRV_RELAY] = "relay", [SRV_HOLD] = "hold", [SRV_QUIET] = "quiet",
    [SRV_STREAM] = "stream", [SRV_SETUP] = "setup", [SRV_421] = "421",
};

/* A state's name for the debug log, "?" for a value beyond the table. */
static const char *
state_name(const char *const *names, size_t n, unsigned int i)
{
	return i < n && names[i] != NULL ? names[i] : "?";
}
#define NAME_OF(names, i) state_name(names, sizeof(names) / sizeof(names[0]), (unsigned int)(i))

const char *
session_phase_name(enum session_phase phase)
{
	return NAME_OF(phase_names, phase);
}

void
session_enter_phase(struct session *s, enum session_phase phase)
{
	if (s->phase == phase)
		return;
	if (s->phase == PHASE_CLOSING) {
		/* Closing is the last phase: what follows session_close() must not reopen it. */
		log_debug("session=%s phase closing kept (not %s)", s->id,
		          session_phase_name(phase));
		return;
	}
	log_debug("session=%s phase %s -> %s", s->id, session_phase_name(s->phase),
	          session_phase_name(phase));
	if (phase == PHASE_CLOSING)
		s->closed_in = s->phase;
	s->phase = phase;
}

/* Whether a side is being read now. */
static int
side_reading(struct side *x)
{
	if (x->rd != NULL)
		return event_pending(x->rd, EV_READ, NULL);
	return (bufferevent_get_enabled(x->bev) & EV_READ) != 0;
}

void
side_read_on(struct side *x)
{
	if (x->rd != NULL)
		event_add(x->rd, NULL);
	else
		bufferevent_enable(x->bev, EV_READ);
}

void
side_read_off(struct side *x)
{
	if (x->rd != NULL)
		event_del(x->rd);
	else
		bufferevent_disable(x->bev, EV_READ);
}

void
side_pause(struct side *x, int why)
{
	x->paused |= why;
	if (x->bev == NULL)
		return;
	/*
	 * A client waiting for a reply usually sends nothing meanwhile: it stops being read only
	 * once it does (session_read_cb), which saves two epoll_ctl calls per DATA.
	 */
	if (why == PAUSE_WAIT && evbuffer_get_length(x->in) == 0)
		return;
	side_read_off(x);
}

void
side_resume(struct side *x, int why)
{
	x->paused &= ~why;
	if (x->paused == 0 && x->bev != NULL && x->s->phase != PHASE_CLOSING && !side_reading(x))
		side_read_on(x);
}

int
session_client_gone(const struct session *s)
{
	return (s->client.paused & PAUSE_EOF) != 0;
}

void
session_warn(struct session *s, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	s->warnings++;
	transcript_event(s->transcript, "warning %s", msg);
}

int
session_client_full(struct session *s)
{
	struct side *c = &s->client;

	if (c->paused & PAUSE_OWN_FULL)
		return 1;
	if (s->phase == PHASE_CLOSING || c->bev == NULL)
		return 0;
	if (evbuffer_get_length(c->out) < SIDE_HIGH_MARK &&
	    s->pipeline.count < PIPELINE_HIGH)
		return 0;
	side_pause(c, PAUSE_OWN_FULL);
	return 1;
}

void
session_reply(struct session *s, const char *reply)
{
	size_t len = strlen(reply), off;
	struct smtp_line l;

	/* A record a line, as the client reads them. */
	for (off = 0; off < len; off += l.len) {
		smtp_line_cut((const unsigned char *)reply + off, len - off, &l);
		side_write(&s->client, l.data, l.len, "P:");
	}
}

void
session_schedule_client(struct session *s)
{
	if (s->phase != PHASE_CLOSING)
		event_active(s->resume, EV_TIMEOUT, 1);
}

const char *
client_mode_name(enum client_mode mode)
{
	return NAME_OF(client_mode_names, mode);
}

void
client_enter_mode(struct session *s, enum client_mode mode)
{
	if (s->mode == mode)
		return;
	log_debug("session=%s client %s -> %s", s->id, client_mode_name(s->mode),
	          client_mode_name(mode));
	s->mode = mode;
}

int
client_in_mode(const struct session *s, enum client_mode mode)
{
	return s->phase == PHASE_RELAYING && s->mode == mode;
}

const char *
server_mode_name(enum server_mode mode)
{
	return NAME_OF(server_mode_names, mode);
}

void
server_enter_mode(struct session *s, enum server_mode mode)
{
	if (s->reply.mode == mode)
		return;
	log_debug("session=%s server reply %s -> %s", s->id, server_mode_name(s->reply.mode),
	          server_mode_name(mode));
	s->reply.mode = mode;
}

void
session_close(struct session *s, const char *reason)
{
	s->ops->close(s, reason);
}

int
session_start_tls(struct session *s, struct side *x)
{
	return s->ops->start_tls(s, x);
}

void
session_client_eof(struct session *s)
{
	s->ops->client_eof(s);
}

void
session_own_reply(const struct session *s, char *buf, size_t size, const char *status,
                  const char *text)
{
	int n = snprintf(buf, size, "%s %s %s\r\n", status, s->px->opts->hostname, text);

	/* A text too long for the buffer is cut, and the reply still ends its line. */
	if (n < 0 || (size_t)n >= size)
		memcpy(buf + size - 3, "\r\n", 3);
}

void
session_refuse(struct session *s, const char *status, const char *text, const char *reason)
{
	char reply[SESSION_REPLY_MAX];

	session_own_reply(s, reply, sizeof(reply), status, text);
	session_reply(s, reply);
	session_close(s, reason);
}
