#ifndef SMTPTAP_FILTER_H
#define SMTPTAP_FILTER_H

#include <stddef.h>

#include "filters/rules.h"

struct session;

/*
 * The session's side of the rules: runs a line through the rules a session started with,
 * records every hit in the transcript and counts it for the JSON event.
 */

/* Takes a reference to the rules in force as the session starts. */
int filter_session_init(struct session *s, struct ruleset *rules);
void filter_session_free(struct session *s);

/* Whether the session's rules have any rule of this scope. */
int filter_has(const struct session *s, enum rule_scope scope);

/* A line a REWRITE made longer than --max-line: refused, the rewrite never sent. */
#define FILTER_TOO_LONG_REPLY "500 5.5.2 Line too long after rewriting"

/* Runs one line (without its line end) through the rules of its scopes; the outcome is in
 * s->outcome.  Returns the verdict, or -1 when memory ran out (the session is closed). */
int filter_line(struct session *s, const enum rule_scope *scopes, int nscopes,
                const unsigned char *line, size_t len);

/* The scopes a client command line is tried against. */
int filter_command_scopes(int verb, enum rule_scope scopes[2]);

/* Runs a command line through its rules: for MAIL and RCPT, its address first (the sender and
 * recipient scopes), then the line.  As filter_line(). */
int filter_command(struct session *s, int verb, const unsigned char *arg, const unsigned char *line,
                   size_t len);

/* Runs the client ("ADDRESS NAME") through the client rules once, at connect.  Returns 1 when
 * a rule refused it (answered and closed), 0 to go on, -1 when the session was closed. */
int filter_client(struct session *s);

#endif
