#ifndef SMTPTAP_METRICS_H
#define SMTPTAP_METRICS_H

#include <signal.h>
#include <sys/time.h>

struct proxy;
struct session;

/*
 * --metrics ADDR:PORT: Prometheus text format at /metrics (issue 18).  The counters live in
 * shared memory mapped before the workers fork, one block per worker slot that only its worker
 * writes; a scrape sums them.  The supervisor serves the scrapes (the single process with
 * --workers 1).  Every hook does nothing when --metrics is not given.
 */

/* Maps the counters and binds the HTTP listener (before the workers fork); -1 on failure. */
int metrics_init(struct proxy *px, const char *addr, unsigned nworkers);
/* Releases what metrics_init and the hooks took (the supervisor's or the single process's). */
void metrics_free(void);

/* A session has ended: counts it, its messages, recipients, AUTH, TLS, octets and rule hits. */
void metrics_session_end(const struct session *s, double duration);
/* The upstream connection is up: the time since the session started (accept). */
void metrics_upstream_connected(const struct timeval *start);
/* An event line could not be written and was dropped (for logs/events.c). */

/*
 * The supervisor's wait: sigtimedwait(2) for the signals of set, at most seconds, serving
 * scrapes meanwhile.  Returns the signal, or -1 when none came in time.
 */
int metrics_sigwait(const sigset_t *set, int seconds);
/* In a new worker: lets go of the supervisor's sockets (its loop is left alone). */
void metrics_in_worker(void);

#endif
