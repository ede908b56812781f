/*
 * Listeners: accept clients, turn away those beyond --max-sessions with a 421, and pause
 * accepting for a moment when out of file descriptors instead of spinning.
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
	log_warnx("refused client=%s reason=max-sessions sessions=%u", client, px->nsessions);
}

static void
listener_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int salen,
                   void *arg)
{
	struct listener *l = arg;
	struct proxy *px = l->px;
	char client[64];

	(void)lev;
	if (px->nsessions >= px->opts->max_sessions) {
		addr_format(sa, client, sizeof(client));
		listener_refuse(px, fd, client);
		return;
	}
	if (session_new(px, fd, sa, salen, l->name, l->implicit_tls) == NULL) {
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

int
listener_add(struct proxy *px, const char *addr, int implicit_tls)
{
	struct sockaddr_storage ss;
	int len = sizeof(ss);
	unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
	struct listener *l;

	memset(&ss, 0, sizeof(ss));
	if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &len) != 0) {
		errno = EINVAL;
		return -1;
	}
	if (ss.ss_family == AF_INET6)
		flags |= LEV_OPT_BIND_IPV6ONLY;
	if ((l = calloc(1, sizeof(*l))) == NULL)
		return -1;
	l->px = px;
	l->implicit_tls = implicit_tls;
	l->lev = evconnlistener_new_bind(px->base, listener_accept_cb, l, flags, 4096,
	                                 (struct sockaddr *)&ss, len);
	if (l->lev == NULL) {
		free(l);
		return -1;
	}
	/* Accepted sockets inherit TCP_NODELAY: one call here, not one per session. */
	if (session_nodelay(evconnlistener_get_fd(l->lev)) != 0)
		log_warn("listening on %s: TCP_NODELAY", addr);
	addr_format((struct sockaddr *)&ss, l->name, sizeof(l->name));
	l->resume = evtimer_new(px->base, listener_resume_cb, l);
	evconnlistener_set_error_cb(l->lev, listener_error_cb);
	SLIST_INSERT_HEAD(&listeners, l, entry);
	log_info("listening on %s%s", l->name, implicit_tls ? " (implicit TLS)" : "");
	return 0;
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
