#ifndef SMTPTAP_REPORT_H
#define SMTPTAP_REPORT_H

#include <sys/time.h>

struct session;

/* The session's JSON event line, and the Postfix-style summary in the program's log. */
void report_write(struct session *s, const struct timeval *end);

#endif
