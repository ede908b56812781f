#ifndef SMTPTAP_PROXY_H
#define SMTPTAP_PROXY_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "proxy/options.h"

struct event_base;
struct evdns_base;
struct session;

/*
 * What the worker processes share (--workers), in memory mapped before they are forked: each
 * worker's session count, so that --max-sessions holds for all of them together, and the
 * events file's lock.  A count is one word that only its worker changes: when a worker dies,
 * the supervisor sets it to 0 and nothing else is off, wherever the worker was killed.
 */
struct proxy_shared {
	atomic_uint of_worker[OPT_MAX_WORKERS]; /* slots beyond --workers stay 0 */
	pthread_mutex_t events_lock;
	pthread_mutex_t journal_lock; /* a journal batch is written under it */
};

/* What all sessions share: the loop, the resolver, the options and the session list. */
struct proxy {
	struct event_base *base;
	struct evdns_base *dns;
	/* A numeric --upstream, parsed once: only a name needs the resolver per session. */
	struct sockaddr_storage upstream_sa;
	socklen_t upstream_salen;
	char upstream_sa_text[64]; /* upstream_sa formatted: a session need not ask getpeername */
	char *upstream_text;       /* --upstream as given, escaped once for the event line */
	const struct options *opts;
	TAILQ_HEAD(, session) sessions;
	unsigned nsessions;
	int shutting_down;
	struct event *grace_timer;
	struct ruleset *rules;       /* in force for sessions that start now */
	struct proxy_shared *shared; /* NULL with one process */
	unsigned worker;             /* this process's worker slot (0 with one process) */
	/*
	 * The modules above the sessions, called back from below (the dependencies run one
	 * way): the listeners (listener_add sets them) and --metrics (metrics_init).  NULL:
	 * none listening (the fuzz targets), no --metrics.
	 */
	const char *(*our_listener)(const struct sockaddr *sa, int fd);  /* listener_serving */
	void (*loop_note)(int fd);                                       /* listener_loop_note */
	void (*session_ended)(const struct session *s, double duration); /* metrics_session_end */
	void (*upstream_connected)(const struct timeval *start); /* metrics_upstream_connected */
};

/* Takes a place for a new session under --max-sessions: 0, or -1 when all are taken. */
int proxy_session_admit(struct proxy *px);
/* Sessions open in all workers (in this process when there are none). */
unsigned proxy_sessions_total(const struct proxy *px);
/* Gives back a place admit took: its session ended, or none came of it. */
void proxy_session_unadmit(struct proxy *px);

/* Called by a session as it is freed: lets a shutdown end when the last one goes. */
void proxy_session_gone(struct proxy *px);

#endif
