#ifndef SMTPTAP_EVENTS_H
#define SMTPTAP_EVENTS_H

#include <jansson.h>

/* The events file: one JSON object per finished session, "-" for standard output. */
int events_open(const char *path);
/* Reopens the file after a rotation (SIGHUP); keeps the old one on failure. */
int events_reopen(void);
/* Writes obj as one line; write errors are logged once and counted. */
void events_write(json_t *obj);
void events_close(void);

#endif
