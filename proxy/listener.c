/*
 * Listeners: accept clients, turn away those beyond --max-sessions with a 421, and pause
 * accepting for a moment when out of file descriptors instead of spinning.  With worker
 * processes, each address gets one socket per worker (SO_REUSEPORT): the kernel spreads the
 * clients, and no worker wakes for another's client.
 */
#include "proxy/listener.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "logs/log.h"
#include "proxy/addr.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/session.h"

#define ACCEPT_PAUSE_MSECS 500

struct listener {
	SLIST_ENTRY(listener) entry;
	struct proxy *px;
	struct evconnlistener *lev;
	struct event *resume;
	int implicit_tls;
	unsigned worker; /* the worker slot that accepts on it */
	char name[64];
};

static SLIST_HEAD(, listener) listeners = SLIST_HEAD_INITIALIZER(listeners);

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

/* Binds one socket of ss for worker slot `worker` (shared: SO_REUSEPORT, as every slot's). */
static struct listener *
listener_bind(struct proxy *px, struct sockaddr_storage *ss, int len, int implicit_tls,
              unsigned worker, int shared)
{
	unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
	struct listener *l;

	if (ss->ss_family == AF_INET6)
		flags |= LEV_OPT_BIND_IPV6ONLY;
	if (shared)
		flags |= LEV_OPT_REUSEABLE_PORT;
	if ((l = calloc(1, sizeof(*l))) == NULL)
		return NULL;
	l->px = px;
	l->implicit_tls = implicit_tls;
	l->worker = worker;
	l->lev = evconnlistener_new_bind(px->base, listener_accept_cb, l, flags, 4096,
	                                 (struct sockaddr *)ss, len);
	if (l->lev == NULL) {
		free(l);
		return NULL;
	}
	l->resume = evtimer_new(px->base, listener_resume_cb, l);
	evconnlistener_set_error_cb(l->lev, listener_error_cb);
	SLIST_INSERT_HEAD(&listeners, l, entry);
	return l;
}

int
listener_add(struct proxy *px, const char *addr, int implicit_tls, unsigned workers)
{
	struct sockaddr_storage ss;
	int len = sizeof(ss);
	socklen_t bound_len = sizeof(ss);
	struct listener *l = NULL;
	unsigned w;

	memset(&ss, 0, sizeof(ss));
	if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &len) != 0) {
		errno = EINVAL;
		return -1;
	}
	for (w = 0; w < workers; w++) {
		if ((l = listener_bind(px, &ss, len, implicit_tls, w, workers > 1)) == NULL)
			return -1;
		/* Port 0 picks a port: the other workers' sockets take the same one. */
		if (w == 0 && getsockname(evconnlistener_get_fd(l->lev), (struct sockaddr *)&ss,
		                          &bound_len) != 0)
			return -1;
		addr_format((struct sockaddr *)&ss, l->name, sizeof(l->name));
		/* Accepted sockets inherit TCP_NODELAY: one call here, not one per session. */
		if (session_nodelay(evconnlistener_get_fd(l->lev)) != 0)
			log_warn("listening on %s: TCP_NODELAY", l->name);
	}
	if (l != NULL)
		log_info("listening on %s%s", l->name, implicit_tls ? " (implicit TLS)" : "");
	return 0;
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
