#ifndef SMTPTAP_TRANSCRIPT_H
#define SMTPTAP_TRANSCRIPT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>
#include <sys/types.h>

#include "logs/journal.h"

struct event_base;
struct transcript;

/*
 * Opens (creating 0750) the log directory and starts the once-a-second flush; removes
 * journals older than keep_days days (-1: none); -1 on error.
 */
int transcript_init(struct event_base *base, const char *log_dir, int keep_days);
void transcript_shutdown(void);

/*
 * Starts a session's records in the journal of the day it starts (LOGDIR/YYYY-MM-DD.log) with
 * its first record, "* session client=... listener=... upstream=...".  relpath receives the
 * journal's name under the log directory.  Returns NULL (errno set) when there is none.
 */
struct transcript *transcript_open(const char *id, const struct timeval *start, const char *client,
                                   const char *listener, const char *upstream, char *relpath,
                                   size_t relsize);

/* Records one line as it crossed ("C:", "S:", "P:", "C+", "S+"), CRLF stripped. */
void transcript_data(struct transcript *t, const char *kind, const unsigned char *line, size_t n);

/*
 * The same for a line taken among many (a message's), stamped with now (transcript_now, read
 * once for them all); as_is: the line before its CRLF needs no escaping (escape_plain_span).
 */
void transcript_line(struct transcript *t, const char *now, const char *kind,
                     const unsigned char *line, size_t n, int as_is);

/*
 * A message line from the client, in the one pass that tells whether it can be recorded as
 * it is: scans at most lim octets of line for the run escaping leaves unchanged
 * (escape_plain_span) and, where that run ends with CRLF, records it as "C:" stamped with
 * now while it scans.  Returns the run's length; *len is the line's, CRLF included, when it
 * was recorded, else 0 (nothing recorded: transcript_line records it).
 */
size_t transcript_line_plain(struct transcript *t, const char *now, const unsigned char *line,
                             size_t lim, size_t *len);

/* The time now as records show it, in a buffer of the module's: valid until the next call. */
const char *transcript_now(void);

/*
 * Between hold and release, records share the first clock reading: the lines of one read
 * arrived together.  Outside, each record reads the clock.
 */
void transcript_clock_hold(void);
void transcript_clock_release(void);

/* Records kind, then n octets of text (escaped), then the redaction marker for a secret. */
void transcript_redacted(struct transcript *t, const char *kind, const unsigned char *text,
                         size_t n, const char *user);

/* Records an event line, marked "*". */
void transcript_event(struct transcript *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * The same for an event every session records, made of the strings of parts one after the
 * other (a NULL ends them): what transcript_event makes of "%s%s...", without a printf,
 * which cost more than the rest of the record.
 */
void transcript_event_parts(struct transcript *t, const char *const *parts);

/* v in decimal, for an event's parts: written at the end of buf, which has the room below. */
#define TRANSCRIPT_DECIMAL_ROOM 24
const char *transcript_decimal(char *buf, uint64_t v);

/* Writes what the transcript holds now, not at the next flush tick or at its close. */
void transcript_sync(struct transcript *t);
/*
 * fn(arg, file, offset): the journal file (YYYY-MM-DD.log) and the byte offset of the
 * session's first record (-1: not written).  Called after the batch that writes the records
 * still buffered (no write forced per session), at once when there are none.  Returns -1
 * when fn will not be called (t NULL, memory short).
 */
int transcript_locate(struct transcript *t, journal_wait_fn *fn, void *arg);
/* Ends the session's recording (its records are written with the next batch); t may be NULL. */
void transcript_close(struct transcript *t);

/* Whether the latest transcript write or creation failed (disk full, permissions...). */
int transcript_failing(void);

/* Hands the log directory to the user the proxy will run as (--user). */
int transcript_chown_dir(uid_t uid, gid_t gid);

/* Failed journal writes since start (disk full...); logged once until one succeeds. */
uint64_t transcript_write_errors(void);

/* Formats tv as 2026-11-26T10:37:28.123456Z into buf (at least 32 octets). */
void transcript_timestamp(const struct timeval *tv, char *buf, size_t size);

#endif
