#ifndef SMTPTAP_LOG_H
#define SMTPTAP_LOG_H

#include <stddef.h>

/* The program's own log: stderr by default, syslog on request. */
void log_init(int use_syslog, int verbose);
enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARNING, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };
/* --log-level: lines below it are not written (fatal ones always are). */
void log_set_level(int level);
struct event_base;
/* The loop that writes queued log lines once a full pipe takes them again. */
void log_set_base(struct event_base *base);
/* Names the process in every line from now on ("worker 2"). */
void log_set_tag(const char *tag);
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/*
 * An info line of a session's: with the loop running, written with the others of the same
 * pass at its end (one write(2) for the sessions that ended together, not two per session).
 */
void log_session(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/*
 * Writes what it can of p to the non-blocking fd: the octets written.  Short of n, *blocked
 * says whether fd takes no more for now (EAGAIN) or the write failed (errno says why).  The
 * log, the events file share it.
 */
size_t log_write_some(int fd, const void *p, size_t n, int *blocked);
/* Writes the head of a queue of *len octets with put(), which says how much it took; the rest
 * moves to the front (the log's and the events file's queues). */
void log_queue_write(char *q, size_t *len, size_t (*put)(const char *, size_t));
struct event;
/* Frees *ev, if any, and forgets it: the teardown of the logs' own events. */
void log_event_drop(struct event **ev);
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
