/*
 * Listeners: accept clients, turn away those beyond --max-sessions with a 421, and pause
 * accepting for a moment when out of file descriptors instead of spinning.  With worker
 * processes, each address gets one socket per worker (SO_REUSEPORT): the kernel spreads the
 * clients, and no worker wakes for another's client.
 */
#include "proxy/listener.h"

#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "smtp/hostport.h"
#include "logs/log.h"
#include "proxy/addr.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/session.h"

#define ACCEPT_PAUSE_MSECS 500
/* Local addresses of our own upstream connections found to come back to us (see below). */
#define LOOP_RING 32

struct listener {
	SLIST_ENTRY(listener) entry;
	struct proxy *px;
	struct evconnlistener *lev;
	struct event *resume;
	int implicit_tls;
	int transparent;            /* IP_TRANSPARENT: takes connections TPROXY diverts to it */
	unsigned worker;            /* the worker slot that accepts on it */
	struct sockaddr_storage ss; /* the bound address */
	char name[64];
};

static SLIST_HEAD(, listener) listeners = SLIST_HEAD_INITIALIZER(listeners);

/*
 * An upstream connection that comes back to us is refused by its session when it connects;
 * the session our listener accepted from it must not connect upstream in turn (each would
 * make the next, without end).  The upstream socket's local address goes here, and the
 * listener closes a client from that address at once.
 */
struct loop_pair {
	struct sockaddr_storage local, peer; /* a connection is known by both ends */
};
static struct loop_pair loop_ring[LOOP_RING];
static unsigned loop_next, loop_count;

/* Same family, address and port. */
static int
listener_same_addr(const struct sockaddr *a, const struct sockaddr *b, int port_too)
{
	const struct sockaddr_in *a4 = (const void *)a, *b4 = (const void *)b;
	const struct sockaddr_in6 *a6 = (const void *)a, *b6 = (const void *)b;

	if (a->sa_family != b->sa_family)
		return 0;
	if (a->sa_family == AF_INET)
		return a4->sin_addr.s_addr == b4->sin_addr.s_addr &&
		       (!port_too || a4->sin_port == b4->sin_port);
	if (a->sa_family == AF_INET6)
		return memcmp(&a6->sin6_addr, &b6->sin6_addr, sizeof(a6->sin6_addr)) == 0 &&
		       (!port_too || a6->sin6_port == b6->sin6_port);
	return 0;
}

/* 0.0.0.0 or [::]: the listener takes every local address. */
static int
listener_wildcard(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_ANY);
	return sa->sa_family == AF_INET6 &&
	       IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)sa)->sin6_addr);
}

/*
 * Whether sa is an address of this host: loopback; else, on a connected socket fd, the kernel
 * picked sa itself as the source (as it does for a connection to one of its own addresses);
 * else (at start, fd -1) an address of an interface.
 */
static int
listener_local(const struct sockaddr *sa, int fd)
{
	struct sockaddr_storage me;
	socklen_t len = sizeof(me);
	struct ifaddrs *ifa, *i;
	int found = 0;

	if (sa->sa_family == AF_INET &&
	    (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127)
		return 1;
	if (sa->sa_family == AF_INET6 &&
	    IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr))
		return 1;
	if (fd == -2) /* loopback only */
		return 0;
	if (fd >= 0)
		return getsockname(fd, (struct sockaddr *)&me, &len) == 0 &&
		       listener_same_addr((struct sockaddr *)&me, sa, 0);
	if (getifaddrs(&ifa) != 0)
		return 0;
	for (i = ifa; i != NULL && !found; i = i->ifa_next)
		found = i->ifa_addr != NULL && listener_same_addr(i->ifa_addr, sa, 0);
	freeifaddrs(ifa);
	return found;
}

const char *
listener_serving(const struct sockaddr *sa, int fd)
{
	struct listener *l;
	int port = addr_port(sa);

	SLIST_FOREACH(l, &listeners, entry)
	{
		const struct sockaddr *ls = (const struct sockaddr *)&l->ss;

		if (ls->sa_family != sa->sa_family || addr_port(ls) != port)
			continue;
		if (listener_same_addr(ls, sa, 1) ||
		    (listener_wildcard(ls) && listener_local(sa, fd)))
			return l->name;
	}
	return NULL;
}

void
listener_loop_note(int fd)
{
	struct loop_pair p;
	socklen_t len = sizeof(p.local), plen = sizeof(p.peer);

	if (getsockname(fd, (struct sockaddr *)&p.local, &len) != 0 ||
	    getpeername(fd, (struct sockaddr *)&p.peer, &plen) != 0)
		return;
	loop_ring[loop_next] = p;
	loop_next = (loop_next + 1) % LOOP_RING;
	if (loop_count < LOOP_RING)
		loop_count++;
}

/*
 * Whether the accepted connection fd from sa is the connection (local, peer) seen from the
 * other end.  Two sockets may share a local address and port when their peers differ, so
 * both ends are compared (the accepted socket's own address only when the rest matches).
 */
static int
listener_same_conn(const struct sockaddr *local, const struct sockaddr *peer,
                   const struct sockaddr *sa, int fd)
{
	struct sockaddr_storage me;
	socklen_t len = sizeof(me);

	return listener_same_addr(local, sa, 1) &&
	       getsockname(fd, (struct sockaddr *)&me, &len) == 0 &&
	       listener_same_addr(peer, (struct sockaddr *)&me, 1);
}

/* How many of the newest sessions a client from a local address is compared with. */
#define LOOP_NEWEST 64

/*
 * A client from this host may be the upstream connection of one of our own sessions that is
 * still connecting (its connection completes as we accept it, before it can look): found by
 * the socket addresses, both are refused.  Only the newest sessions can still be connecting.
 */
static int
listener_loop_client(struct listener *l, const struct sockaddr *sa, int client_fd)
{
	struct sockaddr_storage me, them;
	struct session *s;
	socklen_t len, tlen;
	int n = 0, fd;

	if (!listener_same_addr(sa, (struct sockaddr *)&l->ss, 0) && !listener_local(sa, -2))
		return 0;
	for (s = session_newest(l->px); s != NULL && n < LOOP_NEWEST; s = session_older(s), n++) {
		len = sizeof(me);
		tlen = sizeof(them);
		if (!session_upstream_connecting(s, &me, &len))
			continue;
		if (listener_same_addr((struct sockaddr *)&me, sa, 1) &&
		    (fd = session_upstream_fd(s)) >= 0 &&
		    getpeername(fd, (struct sockaddr *)&them, &tlen) == 0 &&
		    listener_same_conn((struct sockaddr *)&me, (struct sockaddr *)&them, sa,
		                       client_fd)) {
			session_refuse_loop(s, l->name);
			return 1;
		}
	}
	return 0;
}

/* A client that is one of our own upstream connections: taken off the ring when found. */
static int
listener_loop_seen(const struct sockaddr *sa, int fd)
{
	for (unsigned i = 0; i < loop_count; i++)
		if (listener_same_conn((struct sockaddr *)&loop_ring[i].local,
		                       (struct sockaddr *)&loop_ring[i].peer, sa, fd)) {
			memset(&loop_ring[i], 0, sizeof(loop_ring[i]));
			return 1;
		}
	return 0;
}

/* Turns a client away: the 421 goes out in one write on a fresh socket, then close. */
static void
listener_refuse(struct proxy *px, evutil_socket_t fd, const char *client)
{
	char reply[512];
	ssize_t n;

	snprintf(reply, sizeof(reply), "421 4.3.2 %s Too many connections\r\n", px->opts->hostname);
	n = write(fd, reply, strlen(reply));
	(void)n;
	shutdown(fd, SHUT_WR);
	evutil_closesocket(fd);
	log_warnx("refused client=%s reason=max-sessions sessions=%u", client,
	          proxy_sessions_total(px));
}

static void
listener_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int salen,
                   void *arg)
{
	struct listener *l = arg;
	struct proxy *px = l->px;
	char client[64];

	(void)lev;
	if ((loop_count > 0 && listener_loop_seen(sa, fd)) || listener_loop_client(l, sa, fd)) {
		evutil_closesocket(fd);
		return;
	}
	if (proxy_session_admit(px) != 0) {
		addr_format(sa, client, sizeof(client));
		listener_refuse(px, fd, client);
		return;
	}
	if (session_new(px, fd, sa, salen, l->name, l->implicit_tls) == NULL) {
		proxy_session_unadmit(px);
		log_warnx("out of memory: client turned away");
		evutil_closesocket(fd);
	}
}

static void
listener_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct listener *l = arg;

	(void)fd;
	(void)what;
	evconnlistener_enable(l->lev);
}

static void
listener_error_cb(struct evconnlistener *lev, void *arg)
{
	struct listener *l = arg;
	struct timeval pause = {0, ACCEPT_PAUSE_MSECS * 1000};
	int err = EVUTIL_SOCKET_ERROR();

	(void)lev;
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		log_warnx("accept on %s: %s; pausing accepts for %d ms", l->name, strerror(err),
		          ACCEPT_PAUSE_MSECS);
		evconnlistener_disable(l->lev);
		event_add(l->resume, &pause);
		return;
	}
	if (err != EAGAIN && err != EINTR && err != ECONNABORTED)
		log_warnx("accept on %s: %s", l->name, strerror(err));
}

/*
 * A TPROXY listener's socket: IP_TRANSPARENT (IPV6_TRANSPARENT) must be set before bind, which
 * evconnlistener_new_bind gives no place for.  Needs CAP_NET_ADMIN; -1 with errno.
 */
static int
listener_transparent_socket(const struct sockaddr_storage *ss, int len, int shared)
{
	int one = 1, fd, saved;
	int v6 = ss->ss_family == AF_INET6;

	fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    (shared && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
	    (v6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) ||
	    (v6 ? setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one))
	        : setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one))) != 0 ||
	    bind(fd, (const struct sockaddr *)ss, (socklen_t)len) != 0 || listen(fd, 4096) != 0) {
		saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/* Binds one socket of ss for worker slot `worker` (shared: SO_REUSEPORT, as every slot's). */
static struct listener *
listener_bind(struct proxy *px, struct sockaddr_storage *ss, int len, int implicit_tls,
              int transparent, unsigned worker, int shared)
{
	unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
	struct listener *l;
	int fd = -1;

	if (ss->ss_family == AF_INET6)
		flags |= LEV_OPT_BIND_IPV6ONLY;
	if (shared)
		flags |= LEV_OPT_REUSEABLE_PORT;
	if (transparent && (fd = listener_transparent_socket(ss, len, shared)) < 0)
		return NULL;
	if ((l = calloc(1, sizeof(*l))) == NULL) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	l->px = px;
	l->implicit_tls = implicit_tls;
	l->transparent = transparent;
	l->worker = worker;
	if (fd >= 0) {
		/* Backlog 0: listen(2) was called already. */
		l->lev = evconnlistener_new(px->base, listener_accept_cb, l, flags, 0, fd);
		if (l->lev == NULL)
			close(fd);
	} else {
		l->lev = evconnlistener_new_bind(px->base, listener_accept_cb, l, flags, 4096,
		                                 (struct sockaddr *)ss, len);
	}
	if (l->lev == NULL) {
		free(l);
		return NULL;
	}
	l->resume = evtimer_new(px->base, listener_resume_cb, l);
	evconnlistener_set_error_cb(l->lev, listener_error_cb);
	SLIST_INSERT_HEAD(&listeners, l, entry);
	return l;
}

/* Binds one address, one socket per worker; -1 with the reason in err. */
static int
listener_add_one(struct proxy *px, const struct sockaddr *sa, socklen_t salen, int implicit_tls,
                 int transparent, unsigned workers, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	int len = (int)salen;
	socklen_t bound_len = sizeof(ss);
	struct listener *l = NULL;
	unsigned w;
	char text[64];

	memset(&ss, 0, sizeof(ss));
	memcpy(&ss, sa, salen);
	for (w = 0; w < workers; w++) {
		if ((l = listener_bind(px, &ss, len, implicit_tls, transparent, w, workers > 1)) ==
		    NULL) {
			addr_format(sa, text, sizeof(text));
			snprintf(err, errlen, "bind %s%s: %s", text,
			         transparent ? " with IP_TRANSPARENT" : "", strerror(errno));
			return -1;
		}
		/* Port 0 picks a port: the other workers' sockets take the same one. */
		if (w == 0 && getsockname(evconnlistener_get_fd(l->lev), (struct sockaddr *)&ss,
		                          &bound_len) != 0) {
			snprintf(err, errlen, "getsockname: %s", strerror(errno));
			return -1;
		}
		l->ss = ss;
		addr_format((struct sockaddr *)&ss, l->name, sizeof(l->name));
		/* Accepted sockets inherit TCP_NODELAY: one call here, not one per session. */
		if (session_nodelay(evconnlistener_get_fd(l->lev)) != 0)
			log_warn("listening on %s: TCP_NODELAY", l->name);
	}
	return 0;
}

/* The list holds the newest first: the oldest is logged first. */
static void
listener_log_from(struct listener *l)
{
	if (l == NULL)
		return;
	listener_log_from(SLIST_NEXT(l, entry));
	if (l->worker == 0)
		log_info("listening on %s%s", l->name,
		         l->implicit_tls  ? " (implicit TLS)"
		         : l->transparent ? " (transparent)"
		                          : "");
}

void
listener_log_all(void)
{
	listener_log_from(SLIST_FIRST(&listeners));
}

static int
listener_listed_before(const struct addrinfo *res, const struct addrinfo *ai)
{
	for (; res != ai; res = res->ai_next)
		if (listener_same_addr(res->ai_addr, ai->ai_addr, 1))
			return 1;
	return 0;
}

/*
 * A name is resolved once, here (getaddrinfo, at start-up), and every address it has is
 * bound: "localhost" is both 127.0.0.1 and [::1], as with sshd's ListenAddress.
 */
static int
listener_add_kind(struct proxy *px, const char *addr, int implicit_tls, int transparent,
                  unsigned workers, char *err, size_t errlen)
{
	struct addrinfo hints, *res, *ai;
	char *host, *port;
	const char *why;
	int rc, bound = 0;

	px->our_listener = listener_serving;
	px->loop_note = listener_loop_note;

	if (hostport_split(addr, &host, &port, &why) != 0) {
		snprintf(err, errlen, "%s", why);
		return -1;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
		free(host);
		free(port);
		return -1;
	}
	for (ai = res, rc = 0; ai != NULL && rc == 0; ai = ai->ai_next) {
		if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
			continue;
		if (listener_listed_before(res, ai)) /* getaddrinfo may give one twice */
			continue;
		if ((rc = listener_add_one(px, ai->ai_addr, ai->ai_addrlen, implicit_tls,
		                           transparent, workers, err, errlen)) == 0)
			bound++;
	}
	freeaddrinfo(res);
	free(host);
	free(port);
	if (rc == 0 && bound == 0)
		snprintf(err, errlen, "%s: no IPv4 or IPv6 address", addr);
	return rc == 0 && bound > 0 ? 0 : -1;
}

int
listener_add(struct proxy *px, const char *addr, int implicit_tls, unsigned workers, char *err,
             size_t errlen)
{
	return listener_add_kind(px, addr, implicit_tls, 0, workers, err, errlen);
}

int
listener_add_transparent(struct proxy *px, const char *addr, unsigned workers, char *err,
                         size_t errlen)
{
	return listener_add_kind(px, addr, 0, 1, workers, err, errlen);
}

/* In a worker: let go of the other workers' sockets (the supervisor keeps them all). */
void
listener_keep_worker(unsigned worker)
{
	struct listener *l, *next, *keep = NULL;

	for (l = SLIST_FIRST(&listeners); l != NULL; l = next) {
		next = SLIST_NEXT(l, entry);
		if (l->worker == worker) {
			SLIST_NEXT(l, entry) = keep;
			keep = l;
			continue;
		}
		evconnlistener_free(l->lev);
		event_free(l->resume);
		free(l);
	}
	SLIST_FIRST(&listeners) = keep;
}

void
listener_close_all(void)
{
	struct listener *l;

	while ((l = SLIST_FIRST(&listeners)) != NULL) {
		SLIST_REMOVE_HEAD(&listeners, entry);
		evconnlistener_free(l->lev);
		event_free(l->resume);
		free(l);
	}
}
