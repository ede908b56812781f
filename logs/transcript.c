/*
 * Session transcripts.  Lines are buffered per session and written at most once a second
 * (or when the buffer grows), so recording never stalls the event loop beyond a page-cache
 * write; a write error is logged once per transcript, counted, and relaying goes on.
 */
#include "logs/transcript.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
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

/*
 * A transcript holds no descriptor between flushes: ten thousand idle sessions must not
 * need ten thousand more open files.  Each flush appends through a fresh open.
 */
struct transcript {
	TAILQ_ENTRY(transcript) entry;
	struct evbuffer *buf;
	int failed;
	int dirty;
	char path[96]; /* under the log directory: DAY/NAME */
	char day[16];  /* DAY */
	char name[64];
};

static TAILQ_HEAD(, transcript) transcripts = TAILQ_HEAD_INITIALIZER(transcripts);
static struct event *flush_timer;
static int log_dir_fd = -1;
static uint64_t write_errors;
static int failing; /* the latest write or create failed */

static void
transcript_write_failed(struct transcript *t)
{
	write_errors++;
	failing = 1;
	if (!t->failed)
		log_warn("transcript %s: write failed, dropping its lines", t->name);
	t->failed = 1;
	evbuffer_drain(t->buf, evbuffer_get_length(t->buf));
}

/* Opens the transcript to append, following no symlink at either level of its path. */
static int
transcript_reopen(const struct transcript *t)
{
	int dirfd, fd, saved;

	dirfd = openat(log_dir_fd, t->day, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dirfd < 0)
		return -1;
	fd = openat(dirfd, t->name, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
	saved = errno;
	close(dirfd);
	errno = saved;
	return fd;
}

static void
transcript_flush(struct transcript *t)
{
	int fd;

	t->dirty = 0;
	if (evbuffer_get_length(t->buf) == 0)
		return;
	fd = transcript_reopen(t);
	if (fd < 0) {
		transcript_write_failed(t);
		return;
	}
	while (evbuffer_get_length(t->buf) > 0) {
		if (evbuffer_write(t->buf, fd) < 0) {
			if (errno == EINTR)
				continue;
			transcript_write_failed(t);
			close(fd);
			return;
		}
	}
	if (close(fd) != 0) {
		transcript_write_failed(t);
		return;
	}
	failing = 0;
}

static void
transcript_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct transcript *t;

	(void)fd;
	(void)what;
	(void)arg;
	TAILQ_FOREACH(t, &transcripts, entry)
	if (t->dirty)
		transcript_flush(t);
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
	if (log_dir_fd >= 0)
		close(log_dir_fd);
	log_dir_fd = -1;
}

void
transcript_timestamp(const struct timeval *tv, char *buf, size_t size)
{
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
	for (i = 25; i >= 20; i--) {
		buf[i] = (char)('0' + usec % 10);
		usec /= 10;
	}
	buf[26] = 'Z';
	buf[27] = '\0';
}

/* Opens the day's directory under the log directory, refusing a planted symlink. */
static int
transcript_day_dir(const struct tm *tm)
{
	char day[16];
	int fd;

	strftime(day, sizeof(day), "%Y-%m-%d", tm);
	if (mkdirat(log_dir_fd, day, 0750) != 0 && errno != EEXIST)
		return -1;
	fd = openat(log_dir_fd, day, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return fd;
}

static void
transcript_header(struct transcript *t, const char *id, const struct timeval *start,
                  const char *client, const char *listener, const char *upstream)
{
	char ts[32];

	transcript_timestamp(start, ts, sizeof(ts));
	evbuffer_add_printf(t->buf,
	                    "# smtptap %s transcript\n# session %s\n# start %s\n# client %s\n"
	                    "# listener %s\n# upstream %s\n",
	                    SMTPTAP_VERSION, id, ts, client, listener, upstream);
}

struct transcript *
transcript_open(const char *id, const struct timeval *start, const char *client,
                const char *listener, const char *upstream, char *relpath, size_t relsize)
{
	struct transcript *t;
	struct tm tm;
	char name[64];
	int dirfd, fd, saved;

	if (log_dir_fd < 0) {
		errno = EBADF;
		return NULL;
	}
	gmtime_r(&start->tv_sec, &tm);
	if ((dirfd = transcript_day_dir(&tm)) < 0) {
		failing = 1;
		return NULL;
	}
	strftime(name, sizeof(name), "%H%M%S", &tm);
	snprintf(name + 6, sizeof(name) - 6, ".%06ld-%s.log", (long)start->tv_usec, id);
	fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
	saved = errno;
	close(dirfd);
	if (fd < 0) {
		if (saved != EEXIST)
			failing = 1;
		errno = saved;
		return NULL;
	}
	close(fd);
	if ((t = calloc(1, sizeof(*t))) == NULL || (t->buf = evbuffer_new()) == NULL) {
		free(t);
		errno = ENOMEM;
		return NULL;
	}
	snprintf(t->path, sizeof(t->path), "%04d-%02d-%02d/%s", tm.tm_year + 1900, tm.tm_mon + 1,
	         tm.tm_mday, name);
	snprintf(relpath, relsize, "%s", t->path);
	strftime(t->day, sizeof(t->day), "%Y-%m-%d", &tm);
	snprintf(t->name, sizeof(t->name), "%s", name);
	TAILQ_INSERT_TAIL(&transcripts, t, entry);
	transcript_header(t, id, start, client, listener, upstream);
	/* Written at once: each session start tells whether transcripts can be written. */
	transcript_flush(t);
	return t;
}

/* Starts a record: timestamp, kind, space. */
static void
transcript_begin(struct transcript *t, const char *kind)
{
	struct timeval now;
	char ts[32];

	gettimeofday(&now, NULL);
	transcript_timestamp(&now, ts, sizeof(ts));
	ts[27] = ' ';
	evbuffer_add(t->buf, ts, 28);
	evbuffer_add(t->buf, kind, strlen(kind));
	evbuffer_add(t->buf, " ", 1);
}

static void
transcript_end(struct transcript *t)
{
	evbuffer_add(t->buf, "\n", 1);
	t->dirty = 1;
	if (evbuffer_get_length(t->buf) >= TRANSCRIPT_FLUSH_AT)
		transcript_flush(t);
}

void
transcript_data(struct transcript *t, const char *kind, const unsigned char *line, size_t n)
{
	if (t == NULL)
		return;
	if (n >= 2 && line[n - 2] == '\r' && line[n - 1] == '\n')
		n -= 2;
	transcript_begin(t, kind);
	escape_append(t->buf, line, n);
	transcript_end(t);
}

void
transcript_redacted(struct transcript *t, const char *kind, const char *text, size_t len,
                    const char *user)
{
	if (t == NULL)
		return;
	transcript_begin(t, kind);
	escape_append(t->buf, (const unsigned char *)text, strlen(text));
	redact_marker(t->buf, len, user);
	transcript_end(t);
}

void
transcript_event(struct transcript *t, const char *fmt, ...)
{
	va_list ap;

	if (t == NULL)
		return;
	transcript_begin(t, "*");
	va_start(ap, fmt);
	evbuffer_add_vprintf(t->buf, fmt, ap);
	va_end(ap);
	transcript_end(t);
}

void
transcript_close(struct transcript *t)
{
	if (t == NULL)
		return;
	transcript_flush(t);
	TAILQ_REMOVE(&transcripts, t, entry);
	evbuffer_free(t->buf);
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
