/*
 * Session transcripts.  Lines are buffered per session and written at most once a second
 * (or when the buffer grows), so recording never stalls the event loop beyond a page-cache
 * write; a write error is logged once per transcript, counted, and relaying goes on.
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
#include "logs/log.h"
#include "logs/redact.h"

#define TRANSCRIPT_FLUSH_AT (32 * 1024)
/* At most this many transcripts keep the descriptor they were created with (see below). */
#define TRANSCRIPT_KEEP_OPEN_MAX 256

/*
 * A transcript holds no descriptor between flush ticks: ten thousand idle sessions must not
 * need ten thousand more open files.  A descriptor, the one a transcript was created with or
 * the one a flush opened, stays open until the next once-a-second tick, for a few hundred
 * transcripts at most: a session of a few milliseconds (one message, then QUIT) writes its
 * whole transcript without opening its file twice, and a busy one opens it once a second,
 * not at every flush (three system calls in four messages of a long session).
 */
struct transcript {
	TAILQ_ENTRY(transcript) entry;
	/*
	 * Records waiting for the next flush: flat memory, written with one write(2).  Freed at
	 * each flush, so that an idle session holds none.
	 */
	char *buf;
	size_t len;
	size_t cap;
	int fd; /* kept open until the next flush tick; else -1 */
	int failed;
	int dirty;
	int recent;    /* something was recorded since the last flush tick */
	char path[96]; /* under the log directory: DAY/NAME */
	char day[16];  /* DAY */
	char name[64];

	/*
	 * Repeated exchanges (transcript_exchange_end): an exchange is the records up to and
	 * including the last line of a reply of the proxy's own (P:).
	 */
	size_t last_rec;  /* where the latest record starts in buf */
	size_t xstart;    /* where the records of the exchange under way start */
	size_t pstart;    /* where the exchange before it starts, when pvalid */
	int xplain;       /* the exchange under way holds only C:, * and P: records */
	int pvalid;       /* buf holds that exchange whole, at [pstart, xstart) */
	unsigned same;    /* exchanges in a row recorded identical */
	uint64_t repeats; /* further identical exchanges, counted, not recorded */
	char rtime[28];   /* the time of the last of them */
};

/*
 * A client that floods a command the proxy answers itself (XCLIENT, a rule's REJECT, an
 * over-long line) made the transcript 17 times its input.  The first REPEAT_KEEP identical
 * exchanges are recorded, the rest counted: one "* repeated N times records=K" record then
 * says that the K records above it came N more times, identical but for their times, the
 * last at the record's own time.  Only exchanges of at most REPEAT_MAX octets count.
 */
#define REPEAT_KEEP 3
#define REPEAT_MAX 2048

#define TS_DAY_LEN 10 /* "YYYY-MM-DD" */

static TAILQ_HEAD(, transcript) transcripts = TAILQ_HEAD_INITIALIZER(transcripts);
static struct event *flush_timer;
static int log_dir_fd = -1;
static int kept_open; /* transcripts holding a descriptor */
/* The day directory last opened, reused while its name still leads to it. */
static int day_fd = -1;
static char day_name[16];
static dev_t day_dev;
static ino_t day_ino;
static uint64_t write_errors;
static int failing; /* the latest write or create failed */

/* The buffer is written or dropped: no exchange is in it any more. */
static void
transcript_exchange_reset(struct transcript *t)
{
	t->xstart = t->pstart = t->last_rec = 0;
	t->pvalid = 0;
}

static void
transcript_write_failed(struct transcript *t)
{
	write_errors++;
	failing = 1;
	if (!t->failed)
		log_warn("transcript %s: write failed, dropping its lines", t->name);
	t->failed = 1;
	t->len = 0;
	transcript_exchange_reset(t);
}

/* Room for n more octets in the buffer; 0, or -1 when memory is short (the record is lost). */
static int
transcript_reserve(struct transcript *t, size_t n)
{
	size_t cap = t->cap < 512 ? 512 : t->cap;
	char *p;

	if (t->len + n <= t->cap)
		return 0;
	while (cap < t->len + n)
		cap *= 2;
	if ((p = realloc(t->buf, cap)) == NULL)
		return -1;
	t->buf = p;
	t->cap = cap;
	return 0;
}

static void
transcript_put(struct transcript *t, const void *p, size_t n)
{
	if (transcript_reserve(t, n) != 0)
		return;
	memcpy(t->buf + t->len, p, n);
	t->len += n;
}

static void
transcript_vprintf(struct transcript *t, const char *fmt, va_list ap)
{
	va_list again;
	int n;

	va_copy(again, ap);
	n = vsnprintf(t->buf != NULL ? t->buf + t->len : NULL, t->cap - t->len, fmt, ap);
	if (n >= 0 && t->len + (size_t)n >= t->cap && transcript_reserve(t, (size_t)n + 1) == 0)
		n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, again);
	va_end(again);
	if (n >= 0 && t->len + (size_t)n < t->cap)
		t->len += (size_t)n;
}

/* Writes it all, going on after a partial write; -1 on error. */
static int
transcript_write(int fd, const char *p, size_t n)
{
	ssize_t w;

	while (n > 0) {
		if ((w = write(fd, p, n)) < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * The day's directory under the log directory, refusing a planted symlink (O_NOFOLLOW).  The
 * one opened last is reused as long as its name still leads to it: one fstatat instead of
 * mkdirat, openat and close for every file.  Holding it open never follows a symlink either.
 * Checked for every file, not once a second: a day directory moved away or removed must not
 * get even one more transcript, which its session's event line would point to wrongly.
 */
static int
transcript_day_fd(const char *day, int create)
{
	struct stat st;
	int fd;

	if (day_fd >= 0 && strcmp(day, day_name) == 0 &&
	    fstatat(log_dir_fd, day, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode) &&
	    st.st_dev == day_dev && st.st_ino == day_ino)
		return day_fd;
	if (create && mkdirat(log_dir_fd, day, 0750) != 0 && errno != EEXIST)
		return -1;
	fd = openat(log_dir_fd, day, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0) {
		close(fd);
		return -1;
	}
	if (day_fd >= 0)
		close(day_fd);
	day_fd = fd;
	snprintf(day_name, sizeof(day_name), "%s", day);
	day_dev = st.st_dev;
	day_ino = st.st_ino;
	return day_fd;
}

/* Opens the transcript to append, following no symlink at either level of its path. */
static int
transcript_reopen(const struct transcript *t)
{
	int dirfd = transcript_day_fd(t->day, 0);

	if (dirfd < 0)
		return -1;
	return openat(dirfd, t->name, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
}

/* Gives back the creation's descriptor, if the transcript still holds it. */
static int
transcript_release(struct transcript *t)
{
	int fd = t->fd;

	if (fd < 0)
		return 0;
	t->fd = -1;
	kept_open--;
	return close(fd);
}

/* Inserts the "* repeated" record of the counted exchanges before the exchange under way. */
static void
transcript_repeat_note(struct transcript *t)
{
	char note[128];
	size_t k = 0, i;
	int n;

	if (t->repeats == 0)
		return;
	for (i = t->pstart; t->pvalid && i < t->xstart; i++)
		k += t->buf[i] == '\n';
	n = snprintf(note, sizeof(note), "%.27s * repeated %llu times records=%zu\n", t->rtime,
	             (unsigned long long)t->repeats, k);
	t->repeats = 0;
	t->same = 0;
	if (n <= 0 || (size_t)n >= sizeof(note) || transcript_reserve(t, (size_t)n) != 0)
		return;
	memmove(t->buf + t->xstart + n, t->buf + t->xstart, t->len - t->xstart);
	memcpy(t->buf + t->xstart, note, (size_t)n);
	t->len += (size_t)n;
	t->last_rec += (size_t)n;
	t->xstart += (size_t)n;
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
transcript_exchange_end(struct transcript *t)
{
	size_t xlen = t->len - t->xstart;
	int small = t->xplain && xlen <= REPEAT_MAX;

	if (small && t->pvalid && t->xstart - t->pstart == xlen &&
	    transcript_records_same(t->buf + t->pstart, t->buf + t->xstart, xlen)) {
		if (t->same >= REPEAT_KEEP) {
			memcpy(t->rtime, t->buf + t->last_rec, 27);
			t->len = t->xstart;
			t->repeats++;
			t->xplain = 1;
			return;
		}
		t->same++;
	} else {
		transcript_repeat_note(t);
		t->same = 1;
	}
	t->pstart = t->xstart;
	t->pvalid = small;
	t->xstart = t->len;
	t->xplain = 1;
}

static void
transcript_flush(struct transcript *t)
{
	int fd = t->fd, ok;

	t->dirty = 0;
	transcript_repeat_note(t);
	if (t->len == 0)
		return;
	if (fd < 0 && (fd = transcript_reopen(t)) < 0) {
		transcript_write_failed(t);
		return;
	}
	ok = transcript_write(fd, t->buf, t->len) == 0;
	if (fd != t->fd) {
		if (ok && kept_open < TRANSCRIPT_KEEP_OPEN_MAX) {
			t->fd = fd; /* until the next tick */
			kept_open++;
		} else if (close(fd) != 0) {
			ok = 0;
		}
	}
	if (!ok) {
		transcript_write_failed(t);
		return;
	}
	failing = 0;
	t->len = 0;
	transcript_exchange_reset(t);
}

/*
 * The buffer's memory goes back at a flush tick when nothing was recorded since the one
 * before: an idle session holds none, and a busy one does not grow it again every second.
 */
static void
transcript_shrink(struct transcript *t, int busy)
{
	if (t->len > 0 || busy)
		return;
	free(t->buf);
	t->buf = NULL;
	t->cap = 0;
}

static void
transcript_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct transcript *t;

	(void)fd;
	(void)what;
	(void)arg;
	TAILQ_FOREACH(t, &transcripts, entry)
	{
		if (t->dirty)
			transcript_flush(t);
		transcript_shrink(t, t->recent);
		t->recent = 0;
		if (transcript_release(t) != 0)
			transcript_write_failed(t);
	}
}

int
transcript_init(struct event_base *base, const char *log_dir)
{
	struct timeval second = {1, 0};

	if (mkdir(log_dir, 0750) != 0 && errno != EEXIST)
		return -1;
	log_dir_fd = open(log_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (log_dir_fd < 0)
		return -1;
	flush_timer = event_new(base, -1, EV_PERSIST, transcript_flush_cb, NULL);
	if (flush_timer == NULL || event_add(flush_timer, &second) != 0)
		return -1;
	return 0;
}

void
transcript_shutdown(void)
{
	if (flush_timer != NULL)
		event_free(flush_timer);
	flush_timer = NULL;
	if (day_fd >= 0)
		close(day_fd);
	day_fd = -1;
	if (log_dir_fd >= 0)
		close(log_dir_fd);
	log_dir_fd = -1;
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

static void
transcript_header(struct transcript *t, const char *id, const char *ts, const char *client,
                  const char *listener, const char *upstream)
{
	const char *parts[] = {"# smtptap " SMTPTAP_VERSION " transcript\n# session ", id,
	                       "\n# start ", ts, "\n# client ", client, "\n# listener ", listener,
	                       "\n# upstream ", upstream, "\n"};
	size_t i;

	/* Pieces put one after the other: a printf here cost more than the rest of the open. */
	for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
		transcript_put(t, parts[i], strlen(parts[i]));
}

/*
 * The day's directory and the file's name, DAY/HHMMSS.uuuuuu-ID.log, cut from the start's
 * record time ("YYYY-MM-DDTHH:MM:SS.uuuuuuZ", formatted once a second): no strftime or
 * printf per session.  An id too long for the name is cut (ids are 8 hex digits).
 */
static void
transcript_names(const char *ts, const char *id, char day[16], char name[64])
{
	size_t idlen = strnlen(id, 64 - sizeof("HHMMSS.uuuuuu-.log"));

	memcpy(day, ts, TS_DAY_LEN);
	day[TS_DAY_LEN] = '\0';
	memcpy(name, ts + 11, 2);     /* HH */
	memcpy(name + 2, ts + 14, 2); /* MM */
	memcpy(name + 4, ts + 17, 2); /* SS */
	memcpy(name + 6, ts + 19, 7); /* .uuuuuu */
	name[13] = '-';
	memcpy(name + 14, id, idlen);
	memcpy(name + 14 + idlen, ".log", 5);
}

struct transcript *
transcript_open(const char *id, const struct timeval *start, const char *client,
                const char *listener, const char *upstream, char *relpath, size_t relsize)
{
	struct transcript *t;
	char ts[32], day[16], name[64];
	int dirfd, fd, saved;

	if (log_dir_fd < 0) {
		errno = EBADF;
		return NULL;
	}
	transcript_timestamp(start, ts, sizeof(ts));
	transcript_names(ts, id, day, name);
	if ((dirfd = transcript_day_fd(day, 1)) < 0) {
		failing = 1;
		return NULL;
	}
	fd = openat(dirfd, name, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	            0640);
	if (fd < 0) {
		if (errno != EEXIST)
			failing = 1;
		return NULL;
	}
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		close(fd);
		errno = ENOMEM;
		return NULL;
	}
	t->fd = fd;
	kept_open++;
	memcpy(t->day, day, TS_DAY_LEN + 1);
	memcpy(t->name, name, strlen(name) + 1);
	memcpy(t->path, day, TS_DAY_LEN);
	t->path[TS_DAY_LEN] = '/';
	memcpy(t->path + TS_DAY_LEN + 1, t->name, strlen(t->name) + 1);
	if (relsize > 0) {
		strncpy(relpath, t->path, relsize - 1);
		relpath[relsize - 1] = '\0';
	}
	TAILQ_INSERT_TAIL(&transcripts, t, entry);
	/* Written with the first records (transcript_sync writes it at once where it must). */
	transcript_header(t, id, ts, client, listener, upstream);
	t->xstart = t->len;
	t->xplain = 1;
	saved = errno;
	if (kept_open > TRANSCRIPT_KEEP_OPEN_MAX && transcript_release(t) != 0)
		transcript_write_failed(t);
	errno = saved;
	return t;
}

/*
 * A record's time, read from the clock (the vDSO's, no system call): once for all the records
 * made while the clock is held (those of one read, session_read_cb), else once per record.
 * Not libevent's cached time: a precise one costs the loop a timerfd_settime call per pass.
 */
static int clock_held;  /* transcript_clock_hold: one reading serves until released */
static int clock_fresh; /* ... and it has been taken */

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
	static char formatted[32];
	struct timeval now;

	if (clock_held && clock_fresh)
		return formatted;
	clock_fresh = clock_held;
	gettimeofday(&now, NULL);
	if (now.tv_sec != last.tv_sec || now.tv_usec != last.tv_usec) {
		transcript_timestamp(&now, formatted, sizeof(formatted));
		last = now;
	}
	return formatted;
}

/* Starts a record: timestamp, kind, space; with room for extra octets after them. */
static int
transcript_stamp(struct transcript *t, const char *now, const char *kind, size_t klen,
                 size_t extra)
{
	size_t i;
	char *p;

	if (transcript_reserve(t, 28 + klen + 1 + extra + 1) != 0)
		return -1;
	/* Exchanges that may repeat are made of the client's lines, events and our replies. */
	if (klen != 1 && !(klen == 2 && kind[1] == ':' && (kind[0] == 'C' || kind[0] == 'P')))
		t->xplain = 0;
	t->last_rec = t->len;
	p = t->buf + t->len;
	memcpy(p, now, 27);
	p[27] = ' ';
	/* A kind is one or two octets: copied in place, not by a call to memcpy. */
	for (i = 0; i < klen; i++)
		p[28 + i] = kind[i];
	p[28 + klen] = ' ';
	t->len += 28 + klen + 1;
	return 0;
}

static int
transcript_begin(struct transcript *t, const char *kind, size_t extra)
{
	return transcript_stamp(t, transcript_now(), kind, strlen(kind), extra);
}

/* Records were added: the flush tick writes them, or now if the buffer has grown enough. */
static void
transcript_written(struct transcript *t)
{
	t->dirty = 1;
	t->recent = 1;
	if (t->len >= TRANSCRIPT_FLUSH_AT)
		transcript_flush(t);
}

static void
transcript_end(struct transcript *t)
{
	transcript_put(t, "\n", 1);
	transcript_written(t);
}

/*
 * One record of peer octets, without their CRLF; 0, or -1 when memory is short.  The caller
 * marks the transcript written (transcript_written).
 */
static int
transcript_record(struct transcript *t, const char *now, const char *kind, size_t klen,
                  const unsigned char *p, size_t n)
{
	size_t plain;

	if (n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n')
		n -= 2;
	if (n > (SIZE_MAX - 64) / 4 || transcript_stamp(t, now, kind, klen, 4 * n) != 0)
		return -1;
	/* The plain start (most often the whole line) in one copy; escaping from where it ends. */
	plain = escape_plain_span(p, n);
	memcpy(t->buf + t->len, p, plain);
	t->len += plain;
	if (plain < n)
		t->len += escape_into(t->buf + t->len, p + plain, n - plain);
	t->buf[t->len++] = '\n';
	return 0;
}

void
transcript_data(struct transcript *t, const char *kind, const unsigned char *line, size_t n)
{
	if (t == NULL || transcript_record(t, transcript_now(), kind, strlen(kind), line, n) != 0)
		return;
	/* The last line of a reply of our own ends an exchange ("NNN-" lines go on). */
	if (kind[0] == 'P' && !(n >= 4 && line[3] == '-'))
		transcript_exchange_end(t);
	transcript_written(t);
}

void
transcript_line(struct transcript *t, const char *now, const char *kind, const unsigned char *line,
                size_t n, int as_is)
{
	size_t klen = strlen(kind);

	if (t == NULL)
		return;
	if (!as_is) {
		if (transcript_record(t, now, kind, klen, line, n) == 0)
			transcript_written(t);
		return;
	}
	/*
	 * As is, it ends with CRLF and the rest is plain: written here, not by transcript_record,
	 * whose escape scan and reserve for escaping cost 2.5% of a long session's instructions.
	 * (An as_is flag on transcript_record instead keeps this copy out, but the record is then
	 * no longer inlined into the message loop: +4% instructions per message, measured.)
	 */
	n -= 2;
	if (transcript_stamp(t, now, kind, klen, n) != 0)
		return;
	memcpy(t->buf + t->len, line, n);
	t->len += n;
	t->buf[t->len++] = '\n';
	transcript_written(t);
}

void
transcript_redacted(struct transcript *t, const char *kind, const unsigned char *text,
                    size_t textlen, const char *user)
{
	struct evbuffer *tmp;
	size_t n;

	if (t == NULL || (tmp = evbuffer_new()) == NULL)
		return;
	escape_append(tmp, text, textlen);
	redact_marker(tmp, user);
	n = evbuffer_get_length(tmp);
	if (transcript_begin(t, kind, n) == 0) {
		evbuffer_remove(tmp, t->buf + t->len, n);
		t->len += n;
		transcript_end(t);
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
transcript_event_escape(struct transcript *t, size_t start)
{
	size_t n = t->len - start, plain = escape_text_span((unsigned char *)t->buf + start, n);
	unsigned char *rest;

	if (plain == n)
		return;
	n -= plain;
	if ((rest = malloc(n)) == NULL) {
		t->len = start + plain;
		return;
	}
	memcpy(rest, t->buf + start + plain, n);
	t->len = start + plain;
	if (n <= (SIZE_MAX - 1) / 4 && transcript_reserve(t, 4 * n + 1) == 0)
		t->len += escape_text_into(t->buf + t->len, rest, n);
	free(rest);
}

void
transcript_event(struct transcript *t, const char *fmt, ...)
{
	va_list ap;
	size_t start;

	if (t == NULL || transcript_begin(t, "*", EVENT_ROOM) != 0)
		return;
	start = t->len;
	va_start(ap, fmt);
	transcript_vprintf(t, fmt, ap);
	va_end(ap);
	transcript_event_escape(t, start);
	transcript_end(t);
}

void
transcript_sync(struct transcript *t)
{
	if (t != NULL)
		transcript_flush(t);
}

void
transcript_close(struct transcript *t)
{
	if (t == NULL)
		return;
	transcript_flush(t);
	if (transcript_release(t) != 0)
		transcript_write_failed(t);
	TAILQ_REMOVE(&transcripts, t, entry);
	free(t->buf);
	free(t);
}

int
transcript_tmpfile(void)
{
	if (log_dir_fd < 0)
		return -1;
	return openat(log_dir_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
}

int
transcript_failing(void)
{
	return failing;
}

int
transcript_chown_dir(uid_t uid, gid_t gid)
{
	return log_dir_fd >= 0 ? fchown(log_dir_fd, uid, gid) : 0;
}

uint64_t
transcript_write_errors(void)
{
	return write_errors;
}
