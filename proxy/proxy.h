#ifndef SMTPTAP_PROXY_H
#define SMTPTAP_PROXY_H

#include <sys/queue.h>
#include <sys/socket.h>

struct event_base;
struct evdns_base;
struct options;
struct session;

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
	struct ruleset *rules; /* in force for sessions that start now */
};

/* Called by a session as it is freed: lets a shutdown end when the last one goes. */
void proxy_session_gone(struct proxy *px);
/* Closes the listeners at once; sessions get --grace seconds, then the loop ends. */
void proxy_shutdown(struct proxy *px);

#endif
