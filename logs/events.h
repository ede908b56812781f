#ifndef SMTPTAP_EVENTS_H
#define SMTPTAP_EVENTS_H

#include <stdint.h>

#include <jansson.h>
#include <pthread.h>

struct event_base;

/*
 * The events file: one JSON object per finished session, "-" for standard output.  Lines
 * are written at the end of the loop pass that made them, and by events_close.
 */
int events_open(struct event_base *base, const char *path);
/*
 * Worker processes append to one file (or pipe): each write is made under this lock, shared
 * between processes, so that lines of two workers never interleave, even in a pipe.
 */
void events_share_lock(pthread_mutex_t *lock);
/* Reopens the file after a rotation (SIGHUP); keeps the old one on failure. */
int events_reopen(void);
/* Queues obj as one line; write errors are logged once and counted. */
void events_write(json_t *obj);
/* Queues a line made elsewhere (the event line's own JSON writer), ending with its "\n". */
void events_write_line(const char *line, size_t len);
void events_close(void);

/* Event lines dropped since start because the events file's reader did not keep up. */
uint64_t events_dropped_total(void);

#endif
