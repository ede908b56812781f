#ifndef SMTPTAP_TOOLS_LOOKUP_H
#define SMTPTAP_TOOLS_LOOKUP_H

#include <jansson.h>

#include "tools/journal_read.h"
#include "tools/common.h"

/*
 * The events file read line by line, forwards or backwards from its end (so that --since
 * does not read a years-long file whole); a torn last line is skipped.  cb returns 0 to go
 * on, 1 to stop.  0, or -1 after a one-line error naming the file.
 */
typedef int (*events_cb)(const char *line, size_t n, void *arg);
int events_forward(const char *path, events_cb cb, void *arg);
int events_backward(const char *path, events_cb cb, void *arg);

/* The event of a session, searched from the end; NULL when absent. */
json_t *events_find(const char *path, const char *id);

/*
 * Calls cb with each record of the session, in order: through its event's transcript
 * {file, offset} when there is one, else by scanning the day files, newest first.  cb
 * returns 0 to go on, 1 to stop, -1 for an error.  0 when found, 1 when not found, -1 on
 * error (reported).  The per-session header fields come from its first record
 * ("* session client=... listener=... upstream=...").
 */
typedef int (*record_cb)(const struct jrecord *r, void *arg);
int session_records(const struct tool_common *c, const char *id, record_cb cb, void *arg);

#endif
