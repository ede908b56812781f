#ifndef SMTPTAP_TOOLS_FILTER_H
#define SMTPTAP_TOOLS_FILTER_H

#include <jansson.h>
#include <time.h>

#include "tools/journal_read.h"

/*
 * The session filters `sessions` and `tail` share: --client ADDR|CIDR, --from ADDR, --to ADDR,
 * --user NAME, --since T, --until T, --reason R, --code 5xx|550, --rule NAME.  Each given one
 * must hold.  An address matches case-insensitively, "@domain" any address at that domain,
 * "<>" the null sender.
 */
struct tool_filter {
	int has_client;
	int family;
	unsigned char net[16];
	unsigned prefix;
	const char *from, *to, *user, *reason, *rule;
	int code;       /* 0: none; 100-599 exact; 1-5: a class ("5xx") */
	char since[32]; /* record-time strings, compared as text; "" when not given */
	char until[32];
	time_t since_at; /* since as a time */
	time_t now; /* what relative times count back from (filter_arg) */
};

/*
 * Takes the filter option at argv[*i] (and its value); 1 if it was one, 0 if not, -1 on a
 * bad value (reported on stderr).  now: the time relative ones count from.
 */
int filter_option(struct tool_filter *f, int argc, char **argv, int *i, time_t now);
/* filter_option as a tool's argument callback (tool_arg_fn): f is the filter, with its now. */
int filter_arg(void *f, int argc, char **argv, int *i);

/*
 * Parses T (ISO 8601 in UTC, or "2h", "30m", "1d", "1w" before now) as a record time, and
 * into *at unless NULL.
 */
int filter_parse_time(const char *s, time_t now, char out[32], time_t *at);
/* t as a record time ("2026-12-06T10:45:00.000000Z"), as --since and --until compare. */
void filter_format_time(time_t t, char out[32]);

/* Whether the client "ADDR:PORT" or "[ADDR]:PORT" (or a bare address) is in the filter's net. */
int filter_client_matches(const struct tool_filter *f, const char *client);
/* Whether an address ("<a@b>", "a@b", "<a@b> SIZE=1") matches the filter's want. */
int filter_address_matches(const char *want, const char *addr);
/* Whether a reply code matches --code. */
int filter_code_matches(const struct tool_filter *f, long code);
/* Whether a rule "FILE:LINE" matches --rule NAME (the same, the file, or its base name). */
int filter_rule_matches(const char *want, const char *rule);

/* Whether a session's event (a JSON object) passes every filter. */
int filter_event(const struct tool_filter *f, json_t *ev);

/*
 * Following a session's records (tail): what is still to be seen.  filter_record returns
 * FILTER_MATCH once every filter held (from that record on, the session is printed),
 * FILTER_NEVER when it no longer can, else FILTER_MAYBE.
 */
enum { FILTER_MAYBE, FILTER_MATCH, FILTER_NEVER };

struct filter_progress {
	unsigned need; /* bits of the filters still to hold */
	int started;
	int sasl; /* the last reply was a 334: the next client record is SASL data */
};

void filter_progress_init(const struct tool_filter *f, struct filter_progress *p);
int filter_record(const struct tool_filter *f, struct filter_progress *p, const struct jrecord *r);

#endif
