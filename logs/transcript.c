/*
 * Session transcripts: the records of a session, "TIME ID KIND TEXT", put in the journal's
 * buffer for the day it started (logs/journal.c writes them, at most once a second or when
 * the buffer grows), so recording never stalls the event loop beyond a page-cache write; a
 * write error is logged once, counted, and relaying goes on.
 */
#include "logs/transcript.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "logs/escape.h"
#include "logs/journal.h"
#include "logs/log.h"
#include "logs/redact.h"

/*
 * Room for a record's "TIME ID " prefix (27 + 1 + at most 19 + 1 octets), copied whole: a
 * copy of a fixed size is a few moves, where one of the prefix's own length is a call.
 */
#define STAMP_PREFIX_ROOM 56

/*
 * A session's recorder: where its records go in the journal.  The records themselves are in
 * the journal's buffer for the day the session started, shared by every session of the
 * process.
 */
struct transcript {
	struct journal_mark first; /* the session record: the event line points at it */
	long day;                  /* of the session's start: all its records go to that file */
	struct journal *j;         /* that day's buffer, while it is that day's (j->day) */
	uint64_t serial;           /* this recorder among all of the process */
	size_t idlen;
	char id[20];

	/*
	 * Repeated exchanges (transcript_exchange_end): an exchange is the records up to and
	 * including the last line of a reply of the proxy's own (P:).  Positions are in the
	 * day's buffer, valid while nothing else was put there (j->owner) and it was not written
	 * (j->batches): the buffer is shared by every session of the process.
	 */
	uint64_t batch;   /* j->batches when the positions were taken */
	size_t last_rec;  /* where the latest record starts */
	size_t xstart;    /* where the records of the exchange under way start */
	size_t pstart;    /* where the exchange before it starts, when pvalid */
	size_t precs;     /* its records */
	int xplain;       /* the exchange under way holds only C:, * and P: records */
	int pvalid;       /* the buffer holds that exchange whole, at [pstart, xstart) */
	unsigned same;    /* exchanges in a row recorded identical */
	uint64_t repeats; /* further identical exchanges, counted, not recorded */
	char rtime[28];   /* the time of the last of them */

	/*
	 * "TIME ID " as the records of one clock reading start (transcript_now): made once per
	 * reading and copied whole, not put together piece by piece for every record.
	 */
	uint64_t pfx_gen; /* the reading it was made for (now_gen); 0: none */
	size_t pfx_len;
	char pfx[STAMP_PREFIX_ROOM];
};
_Static_assert(28 + sizeof(((struct transcript *)0)->id) < STAMP_PREFIX_ROOM,
               "the prefix holds the time, the id's whole array and its space");

/*
 * A client that floods a command the proxy answers itself (XCLIENT, a rule's REJECT, an
 * over-long line) made the transcript 17 times its input.  The first REPEAT_KEEP identical
 * exchanges are recorded, the rest counted: one "* repeated N times records=K" record then
 * says that the K records above it came N more times, identical but for their times, the
 * last at the record's own time.  Only exchanges of at most REPEAT_MAX octets count.
 */
#define REPEAT_KEEP 3
#define REPEAT_MAX 2048

/* The buffer records of t go to; NULL when there is none. */
static inline struct journal *
transcript_journal(struct transcript *t)
{
	if (t->j == NULL || t->j->day != t->day)
		t->j = journal_get(t->day);
	return t->j;
}

/* Room for n more octets in the buffer; 0, or -1 when memory is short (the record is lost). */
static inline int
transcript_reserve(struct journal *j, size_t n)
{
	if (j->len + n <= j->cap) /* the common case, without a call */
		return 0;
	return journal_reserve(j, n);
}

static void
transcript_put(struct journal *j, const void *p, size_t n)
{
	if (transcript_reserve(j, n) != 0)
		return;
	memcpy(j->buf + j->len, p, n);
	j->len += n;
}

static void
transcript_vprintf(struct journal *j, const char *fmt, va_list ap)
{
	va_list again;
	int n;

	va_copy(again, ap);
	n = vsnprintf(j->buf != NULL ? j->buf + j->len : NULL, j->cap - j->len, fmt, ap);
	if (n >= 0 && j->len + (size_t)n >= j->cap && transcript_reserve(j, (size_t)n + 1) == 0)
		n = vsnprintf(j->buf + j->len, j->cap - j->len, fmt, again);
	va_end(again);
	if (n >= 0 && j->len + (size_t)n < j->cap)
		j->len += (size_t)n;
}

/*
 * The "* repeated" record of the counted exchanges, put at the end of the buffer (at an
 * exchange's end, before the exchange under way, which is then moved after it).
 */
static void
transcript_repeat_note(struct transcript *t, struct journal *j)
{
	char note[160];
	int n;

	if (t->repeats == 0)
		return;
	n = snprintf(note, sizeof(note), "%.27s %.*s * repeated %llu times records=%zu\n",
	             t->rtime, (int)t->idlen, t->id, (unsigned long long)t->repeats, t->precs);
	t->repeats = 0;
	t->same = 0;
	if (n <= 0 || (size_t)n >= sizeof(note) || transcript_reserve(j, (size_t)n) != 0)
		return;
	if (t->xstart > j->len)
		t->xstart = j->len;
	memmove(j->buf + t->xstart + n, j->buf + t->xstart, j->len - t->xstart);
	memcpy(j->buf + t->xstart, note, (size_t)n);
	j->len += (size_t)n;
	t->last_rec += (size_t)n;
	t->xstart += (size_t)n;
}

/*
 * Before a record of t: if another session's record came in between or the buffer was
 * written, the exchanges can no longer be compared in place: tracking starts over here
 * (with the note of what was counted).
 */
static void
transcript_exchange_check(struct transcript *t, struct journal *j)
{
	if (j->owner == t->serial && j->batches == t->batch)
		return;
	t->xstart = j->len;
	t->pvalid = 0;
	t->xplain = 1;
	transcript_repeat_note(t, j);
	t->xstart = j->len;
	j->owner = t->serial;
	t->batch = j->batches;
}

/* Whether two runs of records of n octets are the same but for their times. */
static int
transcript_records_same(const char *a, const char *b, size_t n)
{
	const char *end = a + n, *nl;
	size_t len;

	while (a < end) {
		if ((nl = memchr(a, '\n', (size_t)(end - a))) == NULL)
			return 0;
		len = (size_t)(nl - a) + 1;
		if (len < 28 || memchr(b, '\n', len) != b + len - 1 ||
		    memcmp(a + 27, b + 27, len - 27) != 0)
			return 0;
		a += len;
		b += len;
	}
	return 1;
}

/*
 * A reply of the proxy's own has ended: the exchange it closes is kept, or, identical to the
 * one before it for the REPEAT_KEEP-th time or more, taken back out of the buffer and counted.
 */
static void
transcript_exchange_end(struct transcript *t, struct journal *j)
{
	size_t xlen = j->len - t->xstart, i;
	int small = t->xplain && xlen <= REPEAT_MAX;

	if (small && t->pvalid && t->xstart - t->pstart == xlen &&
	    transcript_records_same(j->buf + t->pstart, j->buf + t->xstart, xlen)) {
		if (t->same >= REPEAT_KEEP) {
			memcpy(t->rtime, j->buf + t->last_rec, 27);
			j->len = t->xstart;
			t->repeats++;
			t->xplain = 1;
			return;
		}
		t->same++;
	} else {
		transcript_repeat_note(t, j);
		t->same = 1;
	}
	t->pstart = t->xstart;
	t->pvalid = small;
	t->precs = 0;
	for (i = t->pstart; small && i < j->len; i++)
		t->precs += j->buf[i] == '\n';
	t->xstart = j->len;
	t->xplain = 1;
}

int
transcript_init(struct event_base *base, const char *log_dir, int keep_days)
{
	return journal_init(base, log_dir, keep_days);
}

void
transcript_shutdown(void)
{
	journal_shutdown();
}

void
transcript_timestamp(const struct timeval *tv, char *buf, size_t size)
{
	static const char digit_pairs[] = "00010203040506070809101112131415161718192021222324"
	                                   "25262728293031323334353637383940414243444546474849"
	                                   "50515253545556575859606162636465666768697071727374"
	                                   "75767778798081828384858687888990919293949596979899";
	static time_t cached_sec = -1;
	static char cached[24];
	struct tm tm;

	long usec = (long)tv->tv_usec;
	int i;

	/* Every recorded line has one: the date is formatted once a second, not per line. */
	if (tv->tv_sec != cached_sec) {
		gmtime_r(&tv->tv_sec, &tm);
		strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm);
		cached_sec = tv->tv_sec;
	}
	if (size < 28) {
		if (size > 0)
			buf[0] = '\0';
		return;
	}
	memcpy(buf, cached, 19);
	buf[19] = '.';
	/* Two digits at a time: each record has its own microseconds. */
	for (i = 24; i >= 20; i -= 2) {
		memcpy(buf + i, digit_pairs + 2 * (usec % 100), 2);
		usec /= 100;
	}
	buf[26] = 'Z';
	buf[27] = '\0';
}

static int transcript_stamp(struct transcript *t, struct journal *j, const char *now,
                            const char *kind, size_t klen, size_t extra);
static void transcript_event_escape(struct journal *j, size_t start);

/*
 * The session's first record, with what a transcript's header held: "* session client=...
 * listener=... upstream=...", stamped with the session's start.
 */
static void
transcript_header(struct transcript *t, struct journal *j, const char *ts, const char *client,
                  const char *listener, const char *upstream)
{
	const char *parts[] = {"session client=", client, " listener=", listener, " upstream=",
	                       upstream};
	size_t i, start;

	journal_mark(j, &t->first);
	if (transcript_stamp(t, j, ts, "*", 1, 160) != 0)
		return;
	start = j->len;
	/* Pieces put one after the other: a printf here cost more than the rest of the open. */
	for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
		transcript_put(j, parts[i], strlen(parts[i]));
	transcript_event_escape(j, start);
	transcript_put(j, "\n", 1);
}

struct transcript *
transcript_open(const char *id, const struct timeval *start, const char *client,
                const char *listener, const char *upstream, char *relpath, size_t relsize)
{
	static uint64_t serials;
	struct transcript *t;
	struct journal *j;
	char ts[32];

	if (journal_dir_fd() < 0) {
		errno = EBADF;
		return NULL;
	}
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	t->serial = ++serials;
	t->day = (long)(start->tv_sec / 86400);
	t->idlen = strnlen(id, sizeof(t->id) - 1);
	memcpy(t->id, id, t->idlen);
	if ((j = transcript_journal(t)) == NULL) {
		free(t);
		errno = ENOMEM;
		return NULL;
	}
	if (relsize > 0) { /* no snprintf: a session's set-up is short */
		size_t n = strnlen(j->name, sizeof(j->name));

		n = n < relsize - 1 ? n : relsize - 1;
		memcpy(relpath, j->name, n);
		relpath[n] = '\0';
	}
	transcript_timestamp(start, ts, sizeof(ts));
	/* Written with the next batch (transcript_sync writes it at once where it must). */
	transcript_header(t, j, ts, client, listener, upstream);
	j->owner = t->serial;
	t->batch = j->batches;
	t->xstart = j->len;
	t->xplain = 1;
	journal_written(j);
	return t;
}

/*
 * A record's time, read from the clock (the vDSO's, no system call): once for all the records
 * made while the clock is held (those of one read, session_read_cb), else once per record.
 * Not libevent's cached time: a precise one costs the loop a timerfd_settime call per pass.
 */
static int clock_held;  /* transcript_clock_hold: one reading serves until released */
static int clock_fresh; /* ... and it has been taken */
static char now_text[32];    /* the latest reading, formatted */
static uint64_t now_gen = 1; /* changes with now_text: the records' prefixes made for it */

void
transcript_clock_hold(void)
{
	clock_held = 1;
	clock_fresh = 0;
}

void
transcript_clock_release(void)
{
	clock_held = 0;
}

const char *
transcript_now(void)
{
	static struct timeval last = {-1, 0};
	struct timeval now;

	if (clock_held && clock_fresh)
		return now_text;
	clock_fresh = clock_held;
	gettimeofday(&now, NULL);
	if (now.tv_sec != last.tv_sec || now.tv_usec != last.tv_usec) {
		transcript_timestamp(&now, now_text, sizeof(now_text));
		last = now;
		now_gen++;
	}
	return now_text;
}

/* Makes t's record prefix "TIME ID " for the time now (27 octets, as transcript_now gives). */
static void
transcript_prefix(struct transcript *t, const char *now)
{
	memcpy(t->pfx, now, 27);
	t->pfx[27] = ' ';
	/* The id's whole array (a fixed copy is a few moves, one of idlen a call), then the
	 * space over what follows it. */
	memcpy(t->pfx + 28, t->id, sizeof(t->id));
	t->pfx[28 + t->idlen] = ' ';
	t->pfx_len = 28 + t->idlen + 1;
	/* Kept for the next records only when now is the shared reading, which says when it
	 * changes; any other time (a session's start) is made again each time. */
	t->pfx_gen = now == now_text ? now_gen : 0;
}

/* Starts a record: timestamp, session id, kind, space; with room for extra octets after them. */
static int
transcript_stamp(struct transcript *t, struct journal *j, const char *now, const char *kind,
                 size_t klen, size_t extra)
{
	size_t i;
	char *p;

	transcript_exchange_check(t, j); /* may put a record first */
	if (transcript_reserve(j, STAMP_PREFIX_ROOM + klen + 1 + extra + 1) != 0)
		return -1;
	/* Exchanges that may repeat are made of the client's lines, events and our replies. */
	if (klen != 1 && !(klen == 2 && kind[1] == ':' && (kind[0] == 'C' || kind[0] == 'P')))
		t->xplain = 0;
	if (now != now_text || t->pfx_gen != now_gen)
		transcript_prefix(t, now);
	t->last_rec = j->len;
	p = j->buf + j->len;
	memcpy(p, t->pfx, STAMP_PREFIX_ROOM); /* what follows the prefix is written over */
	p += t->pfx_len;
	/* A kind is one or two octets: copied in place, not by a call to memcpy. */
	for (i = 0; i < klen; i++)
		p[i] = kind[i];
	p[klen] = ' ';
	j->len += t->pfx_len + klen + 1;
	return 0;
}

/*
 * transcript_stamp for a record that follows one of t's own with the same time and a kind of
 * two octets (the lines of a message): inlined in the message loop, without the checks that
 * cannot apply.  -1 when it does not apply (transcript_stamp then does the whole work).
 */
static inline int
transcript_stamp_again(struct transcript *t, struct journal *j, const char *now,
                       const char *kind, size_t klen, size_t extra)
{
	char *p;

	if (j->owner != t->serial || j->batches != t->batch || now != now_text ||
	    t->pfx_gen != now_gen || klen != 2 || kind[1] != ':' ||
	    kind[0] != 'C' || j->len + STAMP_PREFIX_ROOM + 3 + extra + 1 > j->cap)
		return -1;
	t->last_rec = j->len;
	p = j->buf + j->len;
	memcpy(p, t->pfx, STAMP_PREFIX_ROOM);
	p += t->pfx_len;
	p[0] = 'C';
	p[1] = ':';
	p[2] = ' ';
	j->len += t->pfx_len + 3;
	return 0;
}

static int
transcript_begin(struct transcript *t, struct journal *j, const char *kind, size_t extra)
{
	return transcript_stamp(t, j, transcript_now(), kind, strlen(kind), extra);
}

static void
transcript_end(struct journal *j)
{
	transcript_put(j, "\n", 1);
	journal_written(j);
}

/*
 * One record of peer octets, without their CRLF; 0, or -1 when memory is short.  The caller
 * marks the buffer written (journal_written).
 */
static int
transcript_record(struct transcript *t, struct journal *j, const char *now, const char *kind,
                  size_t klen, const unsigned char *p, size_t n)
{
	size_t plain;

	if (n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n')
		n -= 2;
	if (n > (SIZE_MAX - 64) / 4 || transcript_stamp(t, j, now, kind, klen, 4 * n) != 0)
		return -1;
	/* The plain start (most often the whole line) in one copy; escaping from where it ends. */
	plain = escape_plain_span(p, n);
	memcpy(j->buf + j->len, p, plain);
	j->len += plain;
	if (plain < n)
		j->len += escape_into(j->buf + j->len, p + plain, n - plain);
	j->buf[j->len++] = '\n';
	return 0;
}

void
transcript_data(struct transcript *t, const char *kind, const unsigned char *line, size_t n)
{
	struct journal *j;

	if (t == NULL || (j = transcript_journal(t)) == NULL ||
	    transcript_record(t, j, transcript_now(), kind, strlen(kind), line, n) != 0)
		return;
	/* The last line of a reply of our own ends an exchange ("NNN-" lines go on). */
	if (kind[0] == 'P' && !(n >= 4 && line[3] == '-'))
		transcript_exchange_end(t, j);
	journal_written(j);
}

void
transcript_line(struct transcript *t, const char *now, const char *kind, const unsigned char *line,
                size_t n, int as_is)
{
	size_t klen = strlen(kind);
	struct journal *j;

	if (t == NULL || (j = transcript_journal(t)) == NULL)
		return;
	if (!as_is) {
		if (transcript_record(t, j, now, kind, klen, line, n) == 0)
			journal_written(j);
		return;
	}
	/*
	 * As is, it ends with CRLF and the rest is plain: written here, not by transcript_record,
	 * whose escape scan and reserve for escaping cost 2.5% of a long session's instructions.
	 * (An as_is flag on transcript_record instead keeps this copy out, but the record is then
	 * no longer inlined into the message loop: +4% instructions per message, measured.)
	 */
	n -= 2;
	if (transcript_stamp_again(t, j, now, kind, klen, n) != 0 &&
	    transcript_stamp(t, j, now, kind, klen, n) != 0)
		return;
	memcpy(j->buf + j->len, line, n);
	j->len += n;
	j->buf[j->len++] = '\n';
	journal_written(j);
}

size_t
transcript_line_plain(struct transcript *t, const char *now, const unsigned char *line,
                      size_t lim, size_t *len)
{
	struct journal *j;
	size_t k, at;
	char *p;

	*len = 0;
	/* As transcript_stamp_again: a record that follows one of t's own with the same time. */
	if (t == NULL || (j = transcript_journal(t)) == NULL || j->owner != t->serial ||
	    j->batches != t->batch || now != now_text || t->pfx_gen != now_gen ||
	    lim > SIZE_MAX / 2 || j->len + STAMP_PREFIX_ROOM + 3 + lim + 1 > j->cap)
		return escape_plain_span(line, lim);
	/* The record is made past the buffer's end, and becomes part of it only if it is one. */
	p = j->buf + j->len;
	memcpy(p, t->pfx, STAMP_PREFIX_ROOM);
	at = t->pfx_len;
	p[at] = 'C';
	p[at + 1] = ':';
	p[at + 2] = ' ';
	at += 3;
	k = escape_plain_copy(p + at, line, lim);
	if (k + 2 > lim || line[k] != '\r' || line[k + 1] != '\n')
		return k;
	p[at + k] = '\n';
	t->last_rec = j->len;
	j->len += at + k + 1;
	journal_written(j);
	*len = k + 2;
	return k;
}

void
transcript_redacted(struct transcript *t, const char *kind, const unsigned char *text,
                    size_t textlen, const char *user)
{
	struct evbuffer *tmp;
	struct journal *j;
	size_t n;

	if (t == NULL || (j = transcript_journal(t)) == NULL || (tmp = evbuffer_new()) == NULL)
		return;
	escape_append(tmp, text, textlen);
	redact_marker(tmp, user);
	n = evbuffer_get_length(tmp);
	if (transcript_begin(t, j, kind, n) == 0) {
		evbuffer_remove(tmp, j->buf + j->len, n);
		j->len += n;
		transcript_end(j);
	}
	evbuffer_free(tmp);
}

/* Room reserved for an event's text: most fit, so it is formatted once. */
#define EVENT_ROOM 160

/*
 * An event's text from start on, made safe as peer octets are: callers escape the peer text
 * they pass (so its backslashes are doubled already), and whatever control octet or
 * bidirectional override still got through (a TLS name, a server's capability line) is
 * escaped here rather than written raw, where it could forge a record or hide one.
 */
static void
transcript_event_escape(struct journal *j, size_t start)
{
	size_t n = j->len - start, plain = escape_text_span((unsigned char *)j->buf + start, n);
	unsigned char *rest;

	if (plain == n)
		return;
	n -= plain;
	if ((rest = malloc(n)) == NULL) {
		j->len = start + plain;
		return;
	}
	memcpy(rest, j->buf + start + plain, n);
	j->len = start + plain;
	if (n <= (SIZE_MAX - 1) / 4 && transcript_reserve(j, 4 * n + 1) == 0)
		j->len += escape_text_into(j->buf + j->len, rest, n);
	free(rest);
}

void
transcript_event_parts(struct transcript *t, const char *const *parts)
{
	struct journal *j;
	size_t start, i;

	if (t == NULL || (j = transcript_journal(t)) == NULL ||
	    transcript_begin(t, j, "*", EVENT_ROOM) != 0)
		return;
	start = j->len;
	for (i = 0; parts[i] != NULL; i++)
		transcript_put(j, parts[i], strlen(parts[i]));
	transcript_event_escape(j, start);
	transcript_end(j);
}

const char *
transcript_decimal(char *buf, uint64_t v)
{
	char *p = buf + TRANSCRIPT_DECIMAL_ROOM - 1;

	*p = '\0';
	do
		*--p = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	return p;
}

void
transcript_event(struct transcript *t, const char *fmt, ...)
{
	struct journal *j;
	va_list ap;
	size_t start;

	if (t == NULL || (j = transcript_journal(t)) == NULL ||
	    transcript_begin(t, j, "*", EVENT_ROOM) != 0)
		return;
	start = j->len;
	va_start(ap, fmt);
	transcript_vprintf(j, fmt, ap);
	va_end(ap);
	transcript_event_escape(j, start);
	transcript_end(j);
}

void
transcript_sync(struct transcript *t)
{
	struct journal *j;

	if (t != NULL && (j = transcript_journal(t)) != NULL)
		journal_flush(j);
}

int
transcript_locate(struct transcript *t, journal_wait_fn *fn, void *arg)
{
	char file[16];

	if (t == NULL)
		return -1;
	/* The counted repeats are said before the event line (which comes after the records). */
	if (t->repeats > 0 && transcript_journal(t) != NULL) {
		transcript_exchange_check(t, t->j);
		transcript_repeat_note(t, t->j);
	}
	/*
	 * Records still in the buffer (the session's, perhaps its first): told after the batch
	 * that writes them, so that the event never comes before any of them.  Writing the
	 * buffer here instead was a write(2) per one-message session.
	 */
	if (transcript_journal(t) != NULL && t->j->len > 0)
		return journal_after(t->j, &t->first, fn, arg);
	if (t->j != NULL)
		memcpy(file, t->j->name, sizeof(file));
	else
		journal_day_name(t->day, file);
	fn(arg, file, t->first.pending ? -1 : t->first.offset);
	return 0;
}

void
transcript_close(struct transcript *t)
{
	if (t == NULL)
		return;
	/* The records stay in the day's buffer for its next write. */
	if (transcript_journal(t) != NULL) {
		if (t->repeats > 0) {
			/* Right after the counted exchanges, before what came since (a QUIT, say):
			 * the note speaks of the records just above it. */
			transcript_exchange_check(t, t->j);
			transcript_repeat_note(t, t->j);
		}
		journal_unmark(t->j, &t->first);
	}
	free(t);
}

int
transcript_failing(void)
{
	return journal_failing();
}

int
transcript_chown_dir(uid_t uid, gid_t gid)
{
	return journal_dir_fd() >= 0 ? fchown(journal_dir_fd(), uid, gid) : 0;
}

uint64_t
transcript_write_errors(void)
{
	return journal_write_errors();
}
