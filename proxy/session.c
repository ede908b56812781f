/*
 * A session: the client, the server, the timers, and the one way out (session_close).
 * Sockets close at once; the memory is freed from the loop afterwards, so a callback may
 * end its own session safely (tmux's server_client_unref).
 */
#include "proxy/session.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "logs/escape.h"
#include "logs/log.h"
#include "logs/transcript.h"
#include "proxy/addr.h"
#include "proxy/filter.h"
#include "proxy/message.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/proxyin.h"
#include "proxy/client.h"
#include "proxy/relay.h"
#include "proxy/server.h"
#include "proxy/upstream.h"
#include "proxy/report.h"
#include "proxy/session.h"
#include "proxy/tls.h"
#include "proxy/tx.h"

/* A plain socket's read: a 4 KiB message and its headers in one. */
#define SIDE_READ_SIZE 16384
/* Chains written by one sendmsg: a session's output rarely has more than a few. */
#define SIDE_SEND_IOV 16
/* How long a closing session may take to hand its last replies to the client. */
#define CLOSE_LINGER_SECS 10
/* How often a closing session checks that its last octets have left (a TLS filter's socket
 * buffer has no callback of ours). */
#define CLOSE_POLL_USECS 20000
/*
 * How long the server may take to answer what a client sent before it closed its write half
 * (a QUIT's 221, say): a client that sends a line and closes must not hold a session (and a
 * place under --max-sessions) for the whole idle timeout behind a slow server.
 */
#define CLIENT_EOF_LINGER_SECS 10
/* RFC 5321 4.5.3.2.6: a client waits 10 minutes for the reply to the end of data. */
#define EOD_REPLY_SECS 600

static void session_read_cb(struct bufferevent *bev, void *arg);
static void session_write_cb(struct bufferevent *bev, void *arg);
static void session_event_cb(struct bufferevent *bev, short what, void *arg);
static void session_event(struct side *x, struct bufferevent *bev, short what);
static void session_upstream_connected(struct session *s);
static int side_direct(struct session *s, struct side *x);
static unsigned session_idle_limit(struct session *s);
static int session_awaits_eod(struct session *s);
static void session_end(struct session *s, const char *reason);
static void session_begin(struct session *s, int implicit_tls);
static void session_proxy_refused(struct session *s, const char *why);
static void session_client_input(struct session *s);
static void session_note_local(struct session *s);
static int session_open_transcript(struct session *s);
static int session_tls_start(struct session *s, struct side *x);
static void session_client_half_closed(struct session *s);
static void side_plain_end(struct side *x);

/* What the relay's modules ask of the session's owner (proxy/conn.h). */
static const struct conn_ops session_ops = {
    .close = session_end,
    .start_tls = session_tls_start,
    .client_eof = session_client_half_closed,
};

/* The session id: SESSION_ID_DIGITS hex digits and a NUL into id, without printf. */
static void
session_hex_id(char *id, uint64_t r)
{
	_Static_assert(SESSION_ID_DIGITS < sizeof(((struct session *)0)->id), "room for the id");
	static const char hex[] = "0123456789abcdef";
	int i;

	for (i = SESSION_ID_DIGITS - 1; i >= 0; i--, r >>= 4)
		id[i] = hex[r & 0xf];
	id[SESSION_ID_DIGITS] = '\0';
}

/* src into dst of size octets, cut if need be, always NUL-terminated. */
static void
session_copy_text(char *dst, size_t size, const char *src)
{
	size_t n = strnlen(src, size - 1);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

/*
 * One sendmsg(2) of what the output holds (up to SIDE_SEND_IOV chains).  send and recv take
 * a shorter way through the kernel than writev and readv, which go through the file layer
 * first.  An error leaves the output as it is: the buffer event's own write meets it again
 * and reports it.
 */
static void
side_send(struct side *x, evutil_socket_t fd)
{
	struct evbuffer *out = x->out;
	struct evbuffer_iovec v[SIDE_SEND_IOV];
	struct iovec iov[SIDE_SEND_IOV];
	struct msghdr mh;
	ssize_t n;
	int i, nv;

	nv = evbuffer_peek(out, -1, NULL, v, SIDE_SEND_IOV);
	if (nv > SIDE_SEND_IOV)
		nv = SIDE_SEND_IOV;
	for (i = 0; i < nv; i++) {
		iov[i].iov_base = v[i].iov_base;
		iov[i].iov_len = v[i].iov_len;
	}
	if (nv == 1) {
		/* The usual case (a reply, a read's worth): send(2), no msghdr to copy in. */
		n = send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT);
	} else {
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = iov;
		mh.msg_iovlen = (size_t)nv;
		n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	if (n <= 0)
		return;
	if (out == x->plain_out) {
		evbuffer_drain(out, (size_t)n);
		return;
	}
	/* A buffer event keeps its output's front frozen but while it writes itself. */
	evbuffer_unfreeze(out, 1);
	evbuffer_drain(out, (size_t)n);
	evbuffer_freeze(out, 1);
}

/*
 * What the kernel did not take goes to the buffer event, which writes it when the socket
 * can take more; what is written meanwhile queues behind it there (session_write_cb goes
 * back to the plain output once it is all gone).
 */
static void
side_write_later(struct side *x)
{
	struct evbuffer *bev_out = bufferevent_get_output(x->bev);

	if (x->out == x->plain_out) {
		evbuffer_add_buffer(bev_out, x->plain_out); /* onto its end: only its front is frozen */
		x->out = bev_out;
	}
	bufferevent_enable(x->bev, EV_WRITE);
}

/*
 * A plain socket's output is written at once, by the callback that produced it, as HAProxy
 * does: waiting for the loop to report the socket writable costs two epoll_ctl calls per
 * reply.  Only what the kernel does not take (or an error) is left to the buffer event's
 * own write path, whose callback turns it off again once the output is empty.
 */
static void
side_flush(struct side *x)
{
	struct evbuffer *out;

	if (x->bev == NULL || !x->direct)
		return;
	/* Most calls find nothing to write: that is asked first, the write's state after. */
	out = x->out;
	if (evbuffer_get_length(out) == 0 || (bufferevent_get_enabled(x->bev) & EV_WRITE))
		return;
	/* The read event's descriptor: bufferevent_getfd is a control call, 65 instructions. */
	side_send(x, x->rd != NULL ? event_get_fd(x->rd) : bufferevent_getfd(x->bev));
	if (evbuffer_get_length(out) > 0)
		side_write_later(x);
}

static void
session_flush(struct session *s)
{
	if (s->phase == PHASE_CLOSING)
		return;
	side_flush(&s->client);
	side_flush(&s->server);
}

/*
 * A client paused because of its own output (PITFALLS 16): read on once it has taken half
 * of it and half the replies it waits on have gone, then go on with what it already sent.
 */
static void
session_client_drained(struct session *s)
{
	struct side *c = &s->client;

	if (!(c->paused & PAUSE_OWN_FULL) || s->phase == PHASE_CLOSING || c->bev == NULL)
		return;
	if (evbuffer_get_length(c->out) > SIDE_HIGH_MARK / 2 ||
	    s->pipeline.count > PIPELINE_HIGH / 2)
		return;
	side_resume(c, PAUSE_OWN_FULL);
	session_schedule_client(s);
}

static void
side_plain_free(struct side *x)
{
	if (x->plain_in != NULL)
		evbuffer_free(x->plain_in);
	if (x->plain_out != NULL)
		evbuffer_free(x->plain_out);
	x->plain_in = x->plain_out = NULL;
}

/* Closes a side's socket, and its read event first. */
static void
side_release(struct side *x)
{
	if (x->rd != NULL)
		event_free(x->rd);
	x->rd = NULL;
	if (x->bev != NULL)
		bufferevent_free(x->bev);
	x->bev = NULL;
	x->in = x->out = NULL;
	side_plain_free(x);
}

static void
session_free(struct session *s)
{
	struct proxy *px = s->px;
	struct tx *tx;

	side_release(&s->client);
	side_release(&s->server);
	if (s->timer != NULL)
		event_free(s->timer);
	if (s->resume != NULL)
		event_free(s->resume);
	transcript_close(s->transcript);
	filter_session_free(s);
	message_free(s);
	pipeline_clear(&s->pipeline);
	while ((tx = TAILQ_FIRST(&s->txs)) != NULL) {
		TAILQ_REMOVE(&s->txs, tx, entry);
		tx_free(tx);
	}
	tx_free(s->tx_spare);
	if (s->reply.copy != NULL)
		evbuffer_free(s->reply.copy);
	if (s->setup.reply != NULL)
		evbuffer_free(s->setup.reply);
	if (s->setup.greeting != NULL)
		evbuffer_free(s->setup.greeting);
	if (s->reply.held != NULL)
		evbuffer_free(s->reply.held);
	free(s->reply.text);
	free(s->helo);
	free(s->auth.text);
	free(s->client_tls);
	free(s->client_tls_error);
	free(s->upstream_tls);
	TAILQ_REMOVE(&px->sessions, s, entry);
	px->nsessions--;
	free(s);
	proxy_session_gone(px);
}

static void
session_free_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	session_free(arg);
}

/* Frees the session from the loop, after the callback that asked has returned. */
static void
session_free_later(struct session *s)
{
	struct timeval now = {0, 0};

	event_del(s->timer);
	event_assign(s->timer, s->px->base, -1, 0, session_free_cb, s);
	event_add(s->timer, &now);
}

/* Octets still on their way to the client: ours, and a TLS filter's socket buffer. */
static size_t
session_client_pending(struct session *s)
{
	struct bufferevent *under = bufferevent_get_underlying(s->client.bev);
	size_t n = evbuffer_get_length(s->client.out);

	if (under != NULL)
		n += evbuffer_get_length(bufferevent_get_output(under));
	return n;
}

/* Whether the client's TLS handshake has begun and not finished. */
static int
session_client_handshaking(struct session *s)
{
	return s->client.bev != NULL && !s->client.tls &&
	       bufferevent_openssl_get_ssl(s->client.bev) != NULL;
}

/* A closing session: free it once the client has its last octets, or the linger is over. */
static void
session_linger_check(struct session *s)
{
	struct timeval poll = {0, CLOSE_POLL_USECS};

	if (s->client.bev == NULL || session_client_pending(s) == 0) {
		session_free(s);
		return;
	}
	if (time(NULL) >= s->linger_until) {
		log_debug("session=%s client did not take its last replies in time", s->id);
		session_free(s);
		return;
	}
	event_add(s->timer, &poll);
}

/*
 * What the client sent that was never relayed (an unfinished last line, commands left
 * behind a 421): recorded and counted all the same, since the transcript is the record of
 * what each side said.
 */
static void
session_record_unrelayed(struct session *s)
{
	struct evbuffer *in;
	const unsigned char *p;
	size_t n;

	if (s->client.bev == NULL)
		return;
	in = s->client.in;
	if ((n = evbuffer_get_length(in)) == 0)
		return;
	transcript_event(s->transcript, "client input not relayed octets=%zu", n);
	if ((p = evbuffer_pullup(in, (ev_ssize_t)n)) != NULL)
		client_record_unrelayed(s, p, n);
	s->client.octets += n;
	evbuffer_drain(in, n);
}

/* The session's last record, "close reason=R client_octets=N server_octets=N". */
static void
session_close_event(struct session *s, const char *reason)
{
	char c[TRANSCRIPT_DECIMAL_ROOM], sv[TRANSCRIPT_DECIMAL_ROOM];

	transcript_event_parts(s->transcript,
	                       (const char *const[]){"close reason=", reason, " client_octets=",
	                                             transcript_decimal(c, s->client.octets),
	                                             " server_octets=",
	                                             transcript_decimal(sv, s->server.octets),
	                                             NULL});
}

static void
session_end(struct session *s, const char *reason)
{
	struct timeval now, poll = {0, CLOSE_POLL_USECS};

	if (s->phase == PHASE_CLOSING)
		return;
	s->close_reason = reason;
	session_record_unrelayed(s); /* reads the client's mode, kept until the phase changes */
	session_enter_phase(s, PHASE_CLOSING);
	gettimeofday(&now, NULL);
	if (s->closed_in == PHASE_RAW)
		transcript_event(s->transcript,
		                 "close reason=%s client_octets=%llu server_octets=%llu "
		                 "tls_client_octets=%llu tls_server_octets=%llu",
		                 reason, (unsigned long long)s->client.octets,
		                 (unsigned long long)s->server.octets,
		                 (unsigned long long)s->client.raw_octets,
		                 (unsigned long long)s->server.raw_octets);
	else
		session_close_event(s, reason);
	report_write(s, &now); /* and the session's one log line, its summary */
	side_release(&s->server);
	if (s->client.bev == NULL) {
		session_free_later(s);
		return;
	}
	if (session_client_handshaking(s) && strcmp(reason, "idle_timeout") == 0) {
		session_free_later(s); /* a stalled handshake can be told nothing */
		return;
	}
	/* A handshake in progress must read to finish, so that our reply can reach the client. */
	if (!session_client_handshaking(s))
		side_read_off(&s->client);
	side_flush(&s->client);
	if (session_client_pending(s) == 0) {
		session_free_later(s);
		return;
	}
	/* Deliver what is pending to the client first; the write callback or the poll frees. */
	bufferevent_setwatermark(s->client.bev, EV_WRITE, 0, 0);
	bufferevent_enable(s->client.bev, EV_WRITE);
	s->linger_until = time(NULL) + CLOSE_LINGER_SECS;
	event_del(s->timer);
	event_add(s->timer, &poll);
}

/* The server's write half, once all that is queued for it has gone (a plain socket only:
 * a TLS leg would need its close_notify; the linger bounds that session instead). */
static void
session_shut_server(struct session *s)
{
	struct side *x = &s->server;

	if (x->bev == NULL || !x->direct)
		return;
	side_flush(x);
	if (evbuffer_get_length(x->out) > 0) {
		s->server_shut_pending = 1;
		return;
	}
	s->server_shut_pending = 0;
	if (shutdown(bufferevent_getfd(x->bev), SHUT_WR) != 0)
		log_debug("session=%s shutdown upstream: %s", s->id, strerror(errno));
}

static void
session_client_half_closed(struct session *s)
{
	struct timeval tv = {CLIENT_EOF_LINGER_SECS, 0};

	s->client_gone_at = time(NULL);
	transcript_event(s->transcript,
	                 "client closed its side: upstream shut for writing, "
	                 "waiting %d seconds at most for its replies",
	                 CLIENT_EOF_LINGER_SECS);
	session_shut_server(s);
	if (!session_awaits_eod(s) && session_idle_limit(s) > CLIENT_EOF_LINGER_SECS) {
		event_del(s->timer);
		event_add(s->timer, &tv);
	}
}

/* The linger after the client's EOF is over, the server still owes replies: it ends here. */
static void
session_client_eof_expired(struct session *s)
{
	char reply[SESSION_REPLY_MAX];

	transcript_event(s->transcript,
	                 "the server did not answer within %d seconds of the "
	                 "client's close",
	                 CLIENT_EOF_LINGER_SECS);
	session_own_reply(s, reply, sizeof(reply), "421 4.4.2",
	                  "No reply from the server, closing connection");
	relay_answer_pending(s, reply);
	session_end(s, s->quit_answered ? "quit" : "client_closed");
}

/* px->sessions, named for TAILQ_LAST and TAILQ_PREV. */
TAILQ_HEAD(session_list, session);

struct session *
session_newest(struct proxy *px)
{
	struct session_list *list = (struct session_list *)&px->sessions;

	return TAILQ_LAST(list, session_list);
}

struct session *
session_older(struct session *s)
{
	return TAILQ_PREV(s, session_list, entry);
}

int
session_upstream_fd(struct session *s)
{
	return s->server.bev != NULL ? bufferevent_getfd(s->server.bev) : -1;
}

int
session_upstream_connecting(struct session *s, struct sockaddr_storage *local, socklen_t *len)
{
	if (s->phase != PHASE_CONNECTING && s->phase != PHASE_GREETING)
		return 0;
	/*
	 * Its address is kept once known (session_note_local: at connect(2), or for a connect by
	 * name once the socket has its port); asking at every accept was some getsockname(2)
	 * calls per session.  Without a port yet it can't be any client's peer.
	 */
	if (s->upstream_local_len == 0)
		session_note_local(s);
	if (s->upstream_local_len == 0)
		return 0;
	*local = s->upstream_local_sa;
	*len = s->upstream_local_len;
	return 1;
}

void
session_shutdown_all(struct proxy *px)
{
	struct session *s, *next;

	for (s = TAILQ_FIRST(&px->sessions); s != NULL; s = next) {
		next = TAILQ_NEXT(s, entry);
		session_shutdown(s);
	}
}

void
session_shutdown(struct session *s)
{
	if (s->phase == PHASE_CLOSING)
		return;
	session_refuse(s, "421 4.3.2", "Service shutting down", "shutdown");
}

/* Whether the server works on a message's end: its reply may take minutes. */
static int
session_awaits_eod(struct session *s)
{
	struct pending *head = pipeline_head(&s->pipeline);

	return head != NULL && (head->verb == VERB_EOD || (head->verb == VERB_BDAT && head->last));
}

/* The idle limit in force now: longer while the server works on a message's end. */
static unsigned
session_idle_limit(struct session *s)
{
	unsigned limit = s->px->opts->idle_timeout;

	if (session_awaits_eod(s) && limit < EOD_REPLY_SECS)
		limit = EOD_REPLY_SECS;
	return limit;
}

static void
session_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	struct timeval tv = {0, 0};
	char reply[SESSION_REPLY_MAX];
	time_t now = time(NULL), idle;
	unsigned limit;

	(void)fd;
	(void)what;
	if (s->phase == PHASE_CLOSING) {
		session_linger_check(s);
		return;
	}
	if (s->phase == PHASE_PROXY_HEADER) {
		session_proxy_refused(s, "no whole PROXY header within 5 seconds");
		return;
	}
	if (s->phase == PHASE_CONNECTING) {
		session_own_reply(s, reply, sizeof(reply), "421 4.4.1",
		                  "Upstream unreachable: connection timed out");
		transcript_event(s->transcript, "upstream failed reason=\"connect timeout\"");
		log_warnx("session=%s connect to %s: timed out after %u s", s->id,
		          s->px->upstream_text, s->px->opts->connect_timeout);
		session_reply(s, reply);
		session_end(s, "connect_timeout");
		return;
	}
	idle = now - s->last_activity;
	limit = session_idle_limit(s);
	/* After the client's EOF a short linger, but for the reply to a message's end. */
	if (session_client_gone(s) && !session_awaits_eod(s) &&
	    now - s->client_gone_at >= CLIENT_EOF_LINGER_SECS) {
		session_client_eof_expired(s);
		return;
	}
	if (idle >= (time_t)limit) {
		session_own_reply(s, reply, sizeof(reply), "421 4.4.2",
		                  "Idle timeout, closing connection");
		transcript_event(s->transcript, "idle timeout after %u seconds%s", limit,
		                 session_client_handshaking(s) ? " in the client's TLS handshake"
		                                               : "");
		if (!session_client_handshaking(s))
			session_reply(s, reply);
		session_end(s, "idle_timeout");
		return;
	}
	tv.tv_sec = (time_t)limit - idle;
	if (session_client_gone(s) && !session_awaits_eod(s) &&
	    tv.tv_sec > s->client_gone_at + CLIENT_EOF_LINGER_SECS - now)
		tv.tv_sec = s->client_gone_at + CLIENT_EOF_LINGER_SECS - now;
	event_add(s->timer, &tv);
}

static struct side *
session_peer(struct side *x)
{
	return x->dir == SIDE_CLIENT ? &x->s->server : &x->s->client;
}

/* Stops reading a side whose peer already has more than the high mark to send. */
static void
side_check_backpressure(struct side *x)
{
	struct side *peer = session_peer(x);

	if (x->s->phase == PHASE_CLOSING || peer->bev == NULL)
		return;
	if (evbuffer_get_length(peer->out) >= SIDE_HIGH_MARK)
		side_pause(x, PAUSE_PEER_FULL);
}

static void
session_read_cb(struct bufferevent *bev, void *arg)
{
	struct side *x = arg;
	struct session *s = x->s;

	if (s->phase == PHASE_CLOSING)
		return;
	(void)bev;
	if (x->paused) {
		side_read_off(x); /* paused lazily by side_pause */
		return;
	}
	s->last_activity = time(NULL);
	/* The records of one read, plain or TLS, share its time: its lines arrived together. */
	transcript_clock_hold();
	if (x->dir == SIDE_CLIENT)
		session_client_input(s);
	else
		upstream_relay(s);
	side_check_backpressure(x);
	session_flush(s);
	if (x->dir == SIDE_SERVER && s->phase != PHASE_CLOSING) {
		session_client_drained(s); /* replies went to the client: it may go on */
		session_flush(s);
	}
	(void)session_client_full(s);
	transcript_clock_release();
}

/* The server closed: what it sent before is taken first, then what is pending answered. */
static void
session_server_gone(struct session *s)
{
	upstream_relay(s);
	relay_server_gone(s);
}

/* The balancer's PROXY header was not valid: recorded (from its address), then closed. */
static void
session_proxy_refused(struct session *s, const char *why)
{
	(void)session_open_transcript(s);
	transcript_event(s->transcript, "proxy header refused reason=\"%s\"", why);
	log_warnx("session=%s PROXY header from %s refused: %s", s->id, s->client_addr, why);
	session_end(s, "proxy_header");
}

/* The client's input: a balancer's PROXY header first where one is awaited, then SMTP. */
static void
session_client_input(struct session *s)
{
	const char *why = NULL;

	if (s->phase == PHASE_PROXY_HEADER) {
		switch (proxyin_read(s, &why)) {
		case PROXYIN_MORE:
			return;
		case PROXYIN_INVALID:
			session_proxy_refused(s, why);
			return;
		case PROXYIN_DONE:
			event_del(s->timer);
			session_begin(s, s->proxy_implicit_tls);
			proxyin_record(s);
			break;
		}
	}
	relay_client(s);
}

/* The client's turn, scheduled by session_schedule_client: as a read of it would go on. */
static void
session_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;

	(void)fd;
	(void)what;
	if (s->phase == PHASE_CLOSING || s->client.bev == NULL)
		return;
	transcript_clock_hold();
	session_client_input(s);
	side_check_backpressure(&s->client);
	session_flush(s);
	(void)session_client_full(s);
	transcript_clock_release();
}

/*
 * Work scheduled for the client before an end of input is done before that end is handled:
 * its lines were sent (or answered) first.
 */
static void
session_settle_client(struct session *s)
{
	if (!event_pending(s->resume, EV_TIMEOUT, NULL))
		return;
	event_del(s->resume);
	session_resume_cb(-1, EV_TIMEOUT, s);
}

static void
session_write_cb(struct bufferevent *bev, void *arg)
{
	struct side *x = arg;
	struct session *s = x->s;
	struct side *peer = session_peer(x);

	if (s->phase == PHASE_CLOSING) {
		if (x->dir == SIDE_CLIENT && session_client_pending(s) == 0)
			session_free_later(s);
		return;
	}
	if (x->direct && evbuffer_get_length(x->out) == 0) {
		bufferevent_disable(bev, EV_WRITE); /* side_flush writes again */
		if (x->plain_out != NULL)
			x->out = x->plain_out;
		if (x->dir == SIDE_SERVER && s->server_shut_pending)
			session_shut_server(s);
	}
	if (peer->paused & PAUSE_PEER_FULL) {
		side_resume(peer, PAUSE_PEER_FULL);
		/* What the peer sent while paused is already buffered: go on with it. */
		if (peer->dir == SIDE_CLIENT) {
			session_schedule_client(s);
		} else {
			upstream_relay(s);
			side_check_backpressure(peer);
		}
	}
	if (x->dir == SIDE_CLIENT)
		session_client_drained(s);
	session_flush(s);
}

/* Records a leg's TLS parameters once its handshake is done. */
static void
session_tls_done(struct session *s, struct side *x)
{
	SSL *ssl = bufferevent_openssl_get_ssl(x->bev);
	struct tls_info **tp = x->dir == SIDE_CLIENT ? &s->client_tls : &s->upstream_tls;
	struct tls_info *t;
	const char *sni;
	char *esc;

	x->tls = 1;
	if (*tp == NULL && (*tp = calloc(1, sizeof(**tp))) == NULL) {
		session_end(s, "error");
		return;
	}
	t = *tp;
	t->up = 1;
	snprintf(t->version, sizeof(t->version), "%s", tls_version(ssl));
	snprintf(t->cipher, sizeof(t->cipher), "%s", tls_cipher(ssl));
	if (x->dir == SIDE_CLIENT) {
		sni = tls_sni(ssl);
		snprintf(t->sni, sizeof(t->sni), "%s", sni != NULL ? sni : "");
		/* The client's name is peer text: escaped (an ESC or a LF would forge records). */
		esc = escape_strdup((const unsigned char *)t->sni, strlen(t->sni));
		transcript_event(s->transcript, "tls client started version=%s cipher=%s sni=%s",
		                 t->version, t->cipher, esc != NULL && esc[0] ? esc : "-");
		free(esc);
		return;
	}
	tls_peer_subject(ssl, t->subject, sizeof(t->subject));
	snprintf(t->verify, sizeof(t->verify), "%s", tls_verify_result(ssl));
	transcript_event(s->transcript,
	                 "tls upstream started version=%s cipher=%s subject=\"%s\" verify=\"%s\"",
	                 t->version, t->cipher, t->subject, t->verify);
}

/* A handshake failed: record OpenSSL's reason, tell the client where it can still hear. */
static void
session_tls_failed(struct session *s, struct side *x, const char *why)
{
	char reason[256];
	SSL *ssl = x->bev != NULL ? bufferevent_openssl_get_ssl(x->bev) : NULL;
	long verify = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;

	if (why == NULL) {
		tls_error_reason(x->bev, reason, sizeof(reason));
		why = reason;
	}
	if (x->dir == SIDE_CLIENT) {
		/* Nothing more can go through a failed handshake (only its alert still leaves):
		 * replies queued for the client would keep the session for the whole linger. */
		if (x->bev != NULL && bufferevent_get_underlying(x->bev) != NULL)
			evbuffer_drain(x->out, evbuffer_get_length(x->out));
		transcript_event(s->transcript, "tls client failed reason=\"%s\"", why);
		free(s->client_tls_error);
		s->client_tls_error = strdup(why);
		session_end(s, "client_tls_failed");
		return;
	}
	if (verify != X509_V_OK)
		why = X509_verify_cert_error_string(verify);
	transcript_event(s->transcript, "tls upstream failed reason=\"%s\"", why);
	log_warnx("session=%s TLS with %s failed: %s", s->id, s->px->upstream_text, why);
	session_refuse(s, "421 4.7.0", "TLS with the upstream server failed", "upstream_tls_failed");
}

static int
session_tls_start(struct session *s, struct side *x)
{
	SSL *ssl = x->dir == SIDE_CLIENT ? tls_accept_ssl() : tls_connect_ssl();
	struct bufferevent *tlsbev;

	if (ssl == NULL)
		return -1;
	/* The filter writes through the socket's buffer event, which must write on its own. */
	side_flush(x);
	side_plain_end(x);
	x->direct = 0;
	if (x->rd != NULL) {
		event_free(x->rd); /* the socket's buffer event reads for the filter */
		x->rd = NULL;
	}
	bufferevent_enable(x->bev, EV_WRITE);
	tlsbev = bufferevent_openssl_filter_new(s->px->base, x->bev, ssl,
	                                        x->dir == SIDE_CLIENT ? BUFFEREVENT_SSL_ACCEPTING
	                                                              : BUFFEREVENT_SSL_CONNECTING,
	                                        BEV_OPT_CLOSE_ON_FREE);
	if (tlsbev == NULL) {
		SSL_free(ssl);
		return -1;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(tlsbev, 1);
	/* The new buffer event has none of the old one's settings: set them again. */
	x->bev = tlsbev;
	x->in = bufferevent_get_input(tlsbev);
	x->out = bufferevent_get_output(tlsbev);
	bufferevent_setcb(tlsbev, session_read_cb, session_write_cb, session_event_cb, x);
	/* The high mark also stops the TLS filter from filling the socket's buffer without end. */
	bufferevent_setwatermark(tlsbev, EV_WRITE, SIDE_HIGH_MARK / 2, SIDE_HIGH_MARK);
	x->paused &= ~PAUSE_WAIT;
	if (x->paused == 0)
		bufferevent_enable(tlsbev, EV_READ | EV_WRITE);
	return 0;
}

/* A CONNECTED event: TCP to the server, or a handshake completed on either leg. */
static void
session_connected(struct session *s, struct side *x)
{
	if (x->dir == SIDE_CLIENT) {
		session_tls_done(s, x);
		if (s->phase != PHASE_CLOSING)
			relay_client_secured(s);
		return;
	}
	if (s->phase == PHASE_CONNECTING) {
		session_upstream_connected(s);
		return;
	}
	session_tls_done(s, x);
	if (s->phase != PHASE_CLOSING)
		relay_upstream_secured(s);
}

/*
 * Replies and commands are small and must not wait for Nagle (nginx's tcp_nodelay).  A
 * listener's accepted sockets inherit it: listener_add sets it once for all of them.
 */
int
session_nodelay(int fd)
{
	int one = 1;

	return fd >= 0 ? setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) : -1;
}

/*
 * A session whose upstream is one of our own listeners (a name that resolves to us, a
 * wildcard listener and a local address, an original destination that is smtptap itself):
 * refused, and the session it made there too.  fd: the upstream socket once connected, else -1.
 */
static int
session_refuse_if_us(struct session *s, const struct sockaddr *dst, int fd)
{
	const char *l;

	if (s->px->our_listener == NULL || (l = s->px->our_listener(dst, fd)) == NULL)
		return 0;
	if (fd >= 0 && s->px->loop_note != NULL)
		s->px->loop_note(fd);
	session_refuse_loop(s, l);
	return 1;
}

/* The upstream connection came back to one of our own listeners. */
static int
session_upstream_is_us(struct session *s)
{
	int fd = bufferevent_getfd(s->server.bev);
	const struct sockaddr *peer = (const struct sockaddr *)&s->px->upstream_sa;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (s->px->upstream_salen == 0) {
		if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
			return 0;
		peer = (const struct sockaddr *)&ss;
	}
	return session_refuse_if_us(s, peer, fd);
}

void
session_refuse_loop(struct session *s, const char *listener)
{
	transcript_event(s->transcript, "upstream failed reason=\"it is our own listener %s\"",
	                 listener);
	log_warnx("session=%s connect to %s: it is smtptap's own listener %s", s->id,
	          s->original_len > 0 ? s->original_text : s->px->upstream_text, listener);
	session_refuse(s, "421 4.3.0", "Upstream is this proxy itself", "upstream_loop");
}

static void
session_upstream_connected(struct session *s)
{
	struct timeval idle = {(time_t)s->px->opts->idle_timeout, 0};
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	(void)session_nodelay(bufferevent_getfd(s->server.bev));
	if (session_upstream_is_us(s))
		return;
	if (side_direct(s, &s->server) != 0) {
		session_end(s, "error");
		return;
	}
	if (s->px->upstream_salen > 0)
		session_copy_text(s->upstream_addr, sizeof(s->upstream_addr),
		                  s->px->upstream_sa_text);
	else if (getpeername(bufferevent_getfd(s->server.bev), (struct sockaddr *)&ss, &len) == 0)
		addr_format((struct sockaddr *)&ss, s->upstream_addr, sizeof(s->upstream_addr));
	if (s->upstream_local_len == 0)
		session_note_local(s); /* connected by name: not known before */
	if (s->upstream_local_len > 0)
		addr_format((struct sockaddr *)&s->upstream_local_sa, s->upstream_local,
		             sizeof(s->upstream_local));
	transcript_event_parts(s->transcript, (const char *const[]){"upstream connected address=",
	                                                            s->upstream_addr, NULL});
	if (s->px->upstream_connected != NULL)
		s->px->upstream_connected(&s->start);
	if (upstream_proxy_header(s) != 0)
		return;
	if (pipeline_push(&s->pipeline, VERB_GREETING) == NULL) {
		session_end(s, "error");
		return;
	}
	s->last_activity = time(NULL);
	event_del(s->timer);
	event_add(s->timer, &idle);
	if (s->px->opts->upstream_tls == UPSTREAM_IMPLICIT) {
		session_enter_phase(s, PHASE_UPSTREAM_TLS);
		if (session_tls_start(s, &s->server) != 0)
			session_tls_failed(s, &s->server, "TLS set-up failed");
		return;
	}
	session_enter_phase(s, PHASE_GREETING);
	side_read_on(&s->server);
}

static void
session_upstream_failed(struct session *s, const char *why)
{
	char text[SESSION_REPLY_MAX];

	transcript_event(s->transcript, "upstream failed reason=\"%s\"", why);
	log_warnx("session=%s connect to %s: %s", s->id, s->px->upstream_text, why);
	snprintf(text, sizeof(text), "Upstream unreachable: %s", why);
	session_refuse(s, "421 4.4.1", text, "upstream_unreachable");
}

static const char *
session_error_reason(struct bufferevent *bev, short what)
{
	int dnserr = bufferevent_socket_get_dns_error(bev);

	if (dnserr != 0)
		return evutil_gai_strerror(dnserr);
	if ((what & BEV_EVENT_ERROR) && EVUTIL_SOCKET_ERROR() != 0)
		return evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
	return "connection closed";
}

static void
session_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct side *x = arg;

	session_event(x, bev, what);
	session_flush(x->s);
}

static void
session_event(struct side *x, struct bufferevent *bev, short what)
{
	struct session *s = x->s;

	if ((what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) && s->phase != PHASE_CLOSING)
		session_settle_client(s);
	if (s->phase == PHASE_CLOSING) {
		/* A client finishing its handshake while we close: it will get our last reply. */
		if ((what & BEV_EVENT_CONNECTED) && x->dir == SIDE_CLIENT && !x->tls)
			session_tls_done(s, x);
		/* A client gone (in its handshake, say) can be told nothing more: no linger. */
		else if (x->dir == SIDE_CLIENT && (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
			session_free_later(s);
		return;
	}
	if (what & BEV_EVENT_CONNECTED) {
		session_connected(s, x);
		return;
	}
	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
		return;
	if (x->dir == SIDE_SERVER && s->phase == PHASE_CONNECTING) {
		/* Accepted, then reset before the loop saw the connection complete: the server
		 * closed before its greeting, as when the reset comes a moment later. */
		if ((what & BEV_EVENT_ERROR) && EVUTIL_SOCKET_ERROR() == ECONNRESET) {
			transcript_event(s->transcript,
			                 "server error reason=\"%s\" before the greeting",
			                 session_error_reason(bev, what));
			session_server_gone(s);
			return;
		}
		session_upstream_failed(s, session_error_reason(bev, what));
		return;
	}
	if ((x->dir == SIDE_SERVER && s->phase == PHASE_UPSTREAM_TLS) ||
	    (x->dir == SIDE_CLIENT && !x->tls && bufferevent_openssl_get_ssl(bev) != NULL)) {
		session_tls_failed(s, x, NULL);
		return;
	}
	if (x->dir == SIDE_CLIENT && s->phase == PHASE_PROXY_HEADER) {
		side_pause(&s->client, PAUSE_EOF);
		session_proxy_refused(s, "connection closed before a whole PROXY header");
	} else if (x->dir == SIDE_CLIENT) {
		if (what & BEV_EVENT_ERROR)
			transcript_event(s->transcript, "client error reason=\"%s\"",
			                 session_error_reason(bev, what));
		relay_client_gone(s);
	} else {
		if (what & BEV_EVENT_ERROR)
			transcript_event(s->transcript, "server error reason=\"%s\"",
			                 session_error_reason(bev, what));
		session_server_gone(s);
	}
}

/*
 * Reads a plain socket with one recv(2) of up to SIDE_READ_SIZE octets into a buffer shared
 * by every session (the loop runs one callback at a time), then copies what came into the
 * input.  The buffer event's own read asks FIONREAD first and takes 4 KiB at most (libevent
 * 2.1's EVBUFFER_MAX_READ); reserving the space in the input instead allocates a 32 KiB chain
 * for each read, where a reply of 20 octets needs a 1 KiB one.
 */
static void
side_read_cb(evutil_socket_t fd, short what, void *arg)
{
	static unsigned char buf[SIDE_READ_SIZE];
	struct side *x = arg;
	struct evbuffer *in = x->in;
	ssize_t n;
	int rc, saved;

	(void)what;
	n = recv(fd, buf, sizeof(buf), 0);
	saved = errno;
	if (n > 0) {
		if (in == x->plain_in) {
			rc = evbuffer_add(in, buf, (size_t)n);
		} else {
			/* A buffer event keeps its input's end frozen but while it reads itself. */
			evbuffer_unfreeze(in, 0);
			rc = evbuffer_add(in, buf, (size_t)n);
			evbuffer_freeze(in, 0);
		}
		if (rc == 0) {
			session_read_cb(x->bev, x);
			return;
		}
		saved = ENOMEM;
		n = -1;
	} else if (n < 0 && (saved == EAGAIN || saved == EWOULDBLOCK || saved == EINTR)) {
		return;
	}
	side_read_off(x);
	errno = saved;
	session_event_cb(x->bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), x);
}

/*
 * A plain connected socket: read by side_read_cb into its own input, written by side_flush
 * from its own output.  Buffers of the buffer event that already hold something are kept.
 */
static int
side_direct(struct session *s, struct side *x)
{
	x->rd = event_new(s->px->base, bufferevent_getfd(x->bev), EV_READ | EV_PERSIST,
	                  side_read_cb, x);
	if (x->rd == NULL)
		return -1;
	x->direct = 1;
	bufferevent_disable(x->bev, EV_READ | EV_WRITE);
	if (evbuffer_get_length(x->in) == 0 && evbuffer_get_length(x->out) == 0 &&
	    (x->plain_in = evbuffer_new()) != NULL && (x->plain_out = evbuffer_new()) != NULL) {
		x->in = x->plain_in;
		x->out = x->plain_out;
	} else {
		side_plain_free(x);
	}
	return 0;
}

/*
 * The end of the plain buffers, when TLS begins on the socket: what they hold goes to the
 * buffer event's, through which the TLS filter reads and writes: the input in front of
 * nothing (the buffer event read nothing meanwhile), the output behind what it still writes.
 */
static void
side_plain_end(struct side *x)
{
	struct evbuffer *bin, *bout;

	if (x->plain_in == NULL)
		return;
	bin = bufferevent_get_input(x->bev);
	bout = bufferevent_get_output(x->bev);
	evbuffer_unfreeze(bin, 0);
	evbuffer_add_buffer(bin, x->plain_in);
	evbuffer_freeze(bin, 0);
	evbuffer_add_buffer(bout, x->plain_out);
	x->in = bin;
	x->out = bout;
	side_plain_free(x);
}

static void
side_setup(struct session *s, struct side *x, enum side_dir dir, struct bufferevent *bev)
{
	x->s = s;
	x->peer = dir == SIDE_CLIENT ? &s->server : &s->client;
	x->dir = dir;
	x->bev = bev;
	x->in = bufferevent_get_input(bev);
	x->out = bufferevent_get_output(bev);
	bufferevent_setcb(bev, session_read_cb, session_write_cb, session_event_cb, x);
	bufferevent_setwatermark(bev, EV_WRITE, SIDE_HIGH_MARK / 2, SIDE_HIGH_MARK);
}

static void
session_make_id(struct session *s)
{
	/* Drawn 64 at a time: one getrandom call per session was one system call in 25. */
	static uint64_t pool[64];
	static size_t left;
	uint64_t r;

	if (left == 0 && getrandom(pool, sizeof(pool), 0) == (ssize_t)sizeof(pool))
		left = sizeof(pool) / sizeof(pool[0]);
	r = left > 0 ? pool[--left] : (uint64_t)random() << 32 ^ (uint64_t)random();
	session_hex_id(s->id, r);
}

static int
session_open_transcript(struct session *s)
{
	static int warned;
	int tries;

	if (s->px->opts->no_transcripts)
		return 0; /* no file, and no "transcript" in the event */
	for (tries = 0; tries < 3; tries++) {
		s->transcript = transcript_open(s->id, &s->start, s->client_addr, s->listener_addr,
		                                s->px->opts->upstream, s->transcript_path,
		                                sizeof(s->transcript_path));
		if (s->transcript != NULL || errno != EEXIST)
			break;
		session_make_id(s);
	}
	if (s->transcript == NULL) {
		if (!warned)
			log_warn("session=%s transcript not created", s->id);
		warned = 1;
		s->transcript_path[0] = '\0';
		return -1;
	}
	warned = 0;
	s->client.transcript = s->server.transcript = s->transcript;
	if (s->via[0] != '\0')
		transcript_event(s->transcript, "connect client=%s listener=%s via=%s%s",
		                 s->client_addr, s->listener_addr, s->via,
		                 s->proxy_local ? " local=yes" : "");
	else if (s->original_len > 0)
		transcript_event(s->transcript,
		                 "connect client=%s listener=%s original_destination=%s",
		                 s->client_addr, s->listener_addr, s->original_text);
	else
		transcript_event_parts(s->transcript,
		                       (const char *const[]){"connect client=", s->client_addr,
		                                             " listener=", s->listener_addr, NULL});
	/*
	 * Under tempfail, each session's start must tell whether transcripts can be written;
	 * otherwise the header goes out with the first flush (one write fewer per session).
	 */
	if (s->px->opts->log_failure_tempfail)
		transcript_sync(s->transcript);
	return 0;
}

/* --on-log-failure tempfail: a session that can't be recorded doesn't happen. */
static void
session_unrecorded(struct session *s)
{
	session_refuse(s, "451 4.3.0", "Session cannot be recorded, try again later", "log_failure");
}

/*
 * The upstream socket made here rather than by libevent, when it needs an option before it
 * connects: --upstream-mark's SO_MARK, so that a firewall rule exempts the proxy's own traffic
 * from interception.  The buffer event owns it from here.  -1 with errno.
 */
static int
session_upstream_socket(struct session *s, int family)
{
	unsigned mark = s->px->opts->upstream_mark;
	int fd, saved;

	if (mark == 0)
		return 0; /* libevent makes it */
	if ((fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
		saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	if (bufferevent_setfd(s->server.bev, fd) != 0) {
		close(fd);
		errno = ENOMEM;
		return -1;
	}
	return 0;
}

/*
 * The upstream socket's own address, kept: connect(2) gave it its port at once, and the
 * event, the loop check at accept and the server's log all want it (one getsockname(2) a
 * session, not one for each).
 */
static void
session_note_local(struct session *s)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int fd = session_upstream_fd(s);

	if (fd >= 0 && getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
	    addr_port((struct sockaddr *)&ss) > 0) {
		s->upstream_local_sa = ss;
		s->upstream_local_len = len;
	}
}

/* Connects to a numeric address: --upstream's, or the session's original destination. */
static int
session_connect_to(struct session *s, const struct sockaddr *sa, socklen_t len)
{
	char why[128];

	if (session_upstream_socket(s, sa->sa_family) != 0) {
		snprintf(why, sizeof(why), "upstream socket (--upstream-mark): %s",
		         strerror(errno));
		session_upstream_failed(s, why);
		return -1;
	}
	if (bufferevent_socket_connect(s->server.bev, sa, (int)len) == 0) {
		session_note_local(s);
		return 0;
	}
	if (s->phase != PHASE_CLOSING)
		session_upstream_failed(s, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	return -1;
}

static int
session_connect(struct session *s)
{
	const struct options *o = s->px->opts;
	struct timeval tv = {(time_t)o->connect_timeout, 0};

	event_add(s->timer, &tv);
	if (s->original_len > 0) {
		/* A client that came to smtptap itself (not diverted) would send it round again. */
		if (session_refuse_if_us(s, &s->original.sa, -1))
			return -1;
		return session_connect_to(s, &s->original.sa, s->original_len);
	}
	if (o->upstream_original) {
		/* No original destination could be read: nowhere to go. */
		session_upstream_failed(s, "no original destination");
		return -1;
	}
	if (s->px->upstream_salen > 0)
		return session_connect_to(s, (struct sockaddr *)&s->px->upstream_sa,
		                          s->px->upstream_salen);
	if (bufferevent_socket_connect_hostname(s->server.bev, s->px->dns, AF_UNSPEC,
	                                        o->upstream_host, atoi(o->upstream_port)) != 0) {
		if (s->phase != PHASE_CLOSING)
			session_upstream_failed(s, "connect failed");
		return -1;
	}
	return 0;
}

/* A session with its two buffer events, not yet connected anywhere. */
static struct session *
session_create(struct proxy *px, int fd, const struct sockaddr *sa, const char *listener,
               int server_fd)
{
	struct bufferevent *cb, *sb;
	struct session *s;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return NULL;
	s->ops = &session_ops;
	s->px = px;
	cb = bufferevent_socket_new(px->base, fd, BEV_OPT_CLOSE_ON_FREE);
	sb = bufferevent_socket_new(px->base, server_fd, BEV_OPT_CLOSE_ON_FREE);
	s->timer = evtimer_new(px->base, session_timer_cb, s);
	s->resume = event_new(px->base, -1, 0, session_resume_cb, s);
	if (cb != NULL) {
		side_setup(s, &s->client, SIDE_CLIENT, cb);
		if (side_direct(s, &s->client) != 0)
			goto fail;
	}
	if (cb == NULL || sb == NULL || s->timer == NULL || s->resume == NULL)
		goto fail;
	session_make_id(s);
	/* The clock the transcript's records read: the connect record never precedes it. */
	gettimeofday(&s->start, NULL);
	s->last_activity = s->start.tv_sec;
	pipeline_init(&s->pipeline);
	TAILQ_INIT(&s->txs);
	if (sa != NULL)
		addr_format(sa, s->client_addr, sizeof(s->client_addr));
	else
		snprintf(s->client_addr, sizeof(s->client_addr), "local");
	session_copy_text(s->listener_addr, sizeof(s->listener_addr), listener);
	session_copy_text(s->upstream_addr, sizeof(s->upstream_addr), px->opts->upstream);
	side_setup(s, &s->server, SIDE_SERVER, sb);
	TAILQ_INSERT_TAIL(&px->sessions, s, entry);
	px->nsessions++;
	if (filter_session_init(s, px->rules) != 0)
		log_warnx("session=%s out of memory for rule counters", s->id);
	s->setup.active = upstream_setup_wanted(px->opts);
	s->xclient_attrs = -1;
	return s;
fail:
	/* The caller still owns the sockets: freeing the buffer events must not close them. */
	if (s->client.rd != NULL)
		event_free(s->client.rd);
	if (cb != NULL) {
		bufferevent_setfd(cb, -1);
		bufferevent_free(cb);
	}
	if (sb != NULL) {
		bufferevent_setfd(sb, -1);
		bufferevent_free(sb);
	}
	if (s->timer != NULL)
		event_free(s->timer);
	if (s->resume != NULL)
		event_free(s->resume);
	free(s);
	return NULL;
}

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h */
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv6/ip6_tables.h */
#endif

/*
 * --upstream original: where the client was going.  A REDIRECT (DNAT) connection's original
 * destination is in conntrack (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST); without one, the
 * accepted socket's own address is it: TPROXY's (--listen-transparent), or smtptap's own
 * listener for a client that came straight to it, which session_connect refuses as a loop.
 */
static void
session_find_original(struct session *s, int fd)
{
	socklen_t len = sizeof(s->original);
	struct sockaddr_storage local;
	socklen_t llen = sizeof(local);

	if (getsockname(fd, (struct sockaddr *)&local, &llen) != 0)
		return;
	if (local.ss_family == AF_INET6 &&
	    IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&local)->sin6_addr))
		return; /* listeners are IPv6-only: not reached */
	if ((local.ss_family == AF_INET &&
	     getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &s->original, &len) == 0) ||
	    (local.ss_family == AF_INET6 &&
	     getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &s->original, &len) == 0)) {
		s->original_len = len;
	} else if (llen <= sizeof(s->original)) {
		memcpy(&s->original, &local, llen);
		s->original_len = llen;
	}
	if (s->original_len > 0) {
		addr_format(&s->original.sa, s->original_text, sizeof(s->original_text));
		session_copy_text(s->upstream_addr, sizeof(s->upstream_addr), s->original_text);
	}
}

/*
 * The client's address and the listener's, for --forward-client and --accept-proxy (one
 * getsockname(2) more per session, only when they are used).  Under --upstream original the
 * destination a PROXY header names is the original one.
 */
static void
session_identify(struct session *s, int fd, const struct sockaddr *sa)
{
	const struct options *o = s->px->opts;
	struct sockaddr_storage local;
	socklen_t len = sizeof(local);

	if (o->upstream_original)
		session_find_original(s, fd);
	if (o->forward_client == FORWARD_NONE && o->naccept_proxy == 0)
		return;
	if (s->original_len > 0)
		(void)proxyproto_addrs_from(&s->peer, sa, &s->original.sa);
	else if (getsockname(fd, (struct sockaddr *)&local, &len) == 0)
		(void)proxyproto_addrs_from(&s->peer, sa, (struct sockaddr *)&local);
}

struct session *
session_new(struct proxy *px, int fd, const struct sockaddr *sa, int salen, const char *listener,
            int implicit_tls)
{
	struct session *s;
	struct timeval header_limit = {PROXY_HEADER_SECS, 0};

	(void)salen;
	if ((s = session_create(px, fd, sa, listener, -1)) == NULL)
		return NULL;
	session_identify(s, fd, sa);
	if (sa != NULL && options_accept_proxy_from(px->opts, sa)) {
		/* A balancer: its PROXY header names the client before anything else. */
		s->proxy_implicit_tls = implicit_tls;
		session_enter_phase(s, PHASE_PROXY_HEADER);
		event_add(s->timer, &header_limit);
		side_read_on(&s->client);
		return s;
	}
	session_begin(s, implicit_tls);
	return s;
}

static void
session_begin(struct session *s, int implicit_tls)
{
	struct proxy *px = s->px;

	session_enter_phase(s, PHASE_CONNECTING);
	/* TCP_NODELAY: inherited from the listener (listener_add). */
	if ((session_open_transcript(s) != 0 || transcript_failing()) &&
	    px->opts->log_failure_tempfail) {
		session_unrecorded(s);
		return;
	}
	log_debug("session=%s connect client=%s", s->id, s->client_addr);
	/* Read the client from the start, to see an early talker and a client that leaves. */
	side_read_on(&s->client);
	if (implicit_tls && session_tls_start(s, &s->client) != 0) {
		session_tls_failed(s, &s->client, "TLS set-up failed");
		return;
	}
	if (filter_client(s) != 0)
		return; /* refused at connect: the server is never asked */
	session_connect(s);
}

struct session *
session_new_connected(struct proxy *px, int client_fd, int server_fd)
{
	struct session *s;

	if ((s = session_create(px, client_fd, NULL, "local", server_fd)) == NULL)
		return NULL;
	session_open_transcript(s);
	side_read_on(&s->client);
	session_upstream_connected(s);
	return s;
}
