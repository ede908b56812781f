/*
 * The events file: JSON lines written by jansson, O_APPEND.  The lines of the sessions that
 * end in one pass of the event loop go out in one write(2), at the end of that pass: under
 * load several sessions end together, and a write per line was a system call per session.
 */
#include "logs/events.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "logs/log.h"

/* What is kept between passes at most; a longer pass (huge events) gives it back. */
#define EVENTS_KEEP (64 * 1024)
/*
 * Lines waiting for a reader that does not keep up (a pipe nobody reads): beyond this they
 * are dropped and counted, as Postfix's log service drops rather than blocks mail.  The
 * loop never waits on the events file (PITFALLS 18).
 */
#define EVENTS_QUEUE_MAX (256 * 1024)

static char *events_path;
static int events_fd = -1;
static int events_failing;
static struct event *flush_ev; /* made active when a line waits: runs later in the pass */
static struct event *write_ev; /* a pipe or socket that was full: flush when writable */
static struct event_base *events_base;
static uint64_t dropped;       /* lines dropped since the queue last emptied */
static uint64_t dropped_total; /* lines dropped since start (the metrics read it) */
static char *pending;
static size_t pending_len, pending_cap;
static pthread_mutex_t *shared_lock; /* with worker processes */

/*
 * A pipe or socket written without blocking.  Standard output that is a pipe is opened again
 * through /proc, so that O_NONBLOCK is set on a description of our own, not on the one the
 * shell that started us shares.
 */
static int
events_nonblock(int fd)
{
	struct stat st;
	int own, fl;

	if (fstat(fd, &st) != 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
		return fd;
	if (fd == STDOUT_FILENO && S_ISFIFO(st.st_mode) &&
	    (own = open("/proc/self/fd/1", O_WRONLY | O_NONBLOCK | O_CLOEXEC)) >= 0)
		return own;
	if ((fl = fcntl(fd, F_GETFL)) >= 0)
		(void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	return fd;
}

static int
events_open_fd(const char *path)
{
	int fd;

	if (strcmp(path, "-") == 0)
		return events_nonblock(STDOUT_FILENO);
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0640);
	return fd >= 0 ? events_nonblock(fd) : fd;
}

static void events_flush(void);

static void
events_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	events_flush();
}

int
events_open(struct event_base *base, const char *path)
{
	int fd;

	if ((flush_ev = event_new(base, -1, 0, events_flush_cb, NULL)) == NULL)
		return -1;
	if ((fd = events_open_fd(path)) < 0)
		return -1;
	events_base = base;
	free(events_path);
	events_path = strdup(path);
	events_fd = fd;
	return 0;
}

int
events_reopen(void)
{
	int fd;

	events_flush(); /* what was written before the signal goes to the old file */
	if (events_path == NULL || strcmp(events_path, "-") == 0)
		return 0;
	if ((fd = events_open_fd(events_path)) < 0) {
		log_warn("events file %s: reopen failed, keeping the old one", events_path);
		return -1;
	}
	log_event_drop(&write_ev);
	if (events_fd > STDERR_FILENO)
		close(events_fd);
	events_fd = fd;
	events_failing = 0;
	log_info("events file %s reopened", events_path);
	return 0;
}

void
events_share_lock(pthread_mutex_t *lock)
{
	shared_lock = lock;
}

/* A worker killed while it held the lock leaves it to be taken over, not dead for all. */
static void
events_lock(void)
{
	if (shared_lock != NULL && pthread_mutex_lock(shared_lock) == EOWNERDEAD)
		pthread_mutex_consistent(shared_lock);
}

static void
events_unlock(void)
{
	if (shared_lock != NULL)
		pthread_mutex_unlock(shared_lock);
}

/* The reader takes no more: go on when it does, from the loop. */
static void
events_wait_writable(void)
{
	if (write_ev == NULL && events_base != NULL)
		write_ev = event_new(events_base, events_fd, EV_WRITE, events_flush_cb, NULL);
	if (write_ev != NULL)
		event_add(write_ev, NULL);
}

/*
 * Writes what it can of the queue without blocking; the rest stays queued.  Returns the
 * octets written.  (Between workers, a line is whole in the file as long as the reader
 * keeps up; a line cut by a full pipe goes on at the next write, which another worker's
 * line may precede.)
 */
static size_t
events_put(const char *line, size_t len)
{
	size_t off;
	int blocked;

	events_lock();
	off = log_write_some(events_fd, line, len, &blocked);
	if (off < len && blocked) {
		events_wait_writable();
	} else if (off < len) {
		if (!events_failing)
			log_warn("events file %s: write failed", events_path);
		events_failing = 1;
		off = len; /* lost */
	}
	events_unlock();
	return off;
}

/* Writes the pass's lines: whole lines in one write, so appenders never interleave in one. */
static void
events_flush(void)
{
	if (pending != NULL)
		log_queue_write(pending, &pending_len, events_put);
	if (pending_len == 0 && dropped > 0) {
		log_warnx("events file %s: %llu event lines dropped: its reader did not keep up",
		          events_path, (unsigned long long)dropped);
		dropped = 0;
	}
	if (pending_len == 0 && pending_cap > EVENTS_KEEP) {
		free(pending);
		pending = NULL;
		pending_cap = 0;
	}
}

/* Queues a line (with its newline) for the end of the pass; written at once without memory. */
static void
events_queue(const char *line, size_t len)
{
	size_t cap = pending_cap > 0 ? pending_cap : 4096;
	char *p;

	/* Full: write now what the file takes (a regular file takes it all), drop if still full. */
	if (pending_len + len > EVENTS_QUEUE_MAX)
		events_flush();
	if (pending_len + len > EVENTS_QUEUE_MAX) {
		dropped_total++;
		if (dropped++ == 0)
			log_warnx("events file %s: its reader does not keep up: dropping event lines "
			          "(counted)",
			          events_path);
		return;
	}
	while (cap < pending_len + len)
		cap *= 2;
	if (cap != pending_cap) {
		if ((p = realloc(pending, cap)) == NULL) {
			dropped++;
			dropped_total++;
			return;
		}
		pending = p;
		pending_cap = cap;
	}
	memcpy(pending + pending_len, line, len);
	pending_len += len;
	if (flush_ev != NULL)
		event_active(flush_ev, EV_TIMEOUT, 1);
}

void
events_write_line(const char *line, size_t len)
{
	if (events_fd < 0)
		return;
	events_queue(line, len); /* whole, with its line end: queued or dropped as one */
}

void
events_write(json_t *obj)
{
	/* Most events fit here: no allocation per session for the dump. */
	static char line[16384];
	const size_t flags = JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(9);
	size_t len;
	char *big, *withnl;

	if (events_fd < 0)
		return;
	len = json_dumpb(obj, line, sizeof(line) - 1, flags);
	if (len > 0 && len < sizeof(line) - 1) {
		line[len++] = '\n';
		events_queue(line, len);
		return;
	}
	if ((big = json_dumps(obj, flags)) == NULL)
		return;
	len = strlen(big);
	if ((withnl = realloc(big, len + 1)) == NULL) {
		free(big);
		return;
	}
	withnl[len] = '\n';
	events_queue(withnl, len + 1);
	free(withnl);
}

void
events_close(void)
{
	events_flush();
	/* A reader that takes nothing must not keep us from exiting: the rest is dropped. */
	if (pending_len > 0)
		log_warnx("events file %s: %zu octets of event lines not written at exit",
		          events_path, pending_len);
	pending_len = 0;
	log_event_drop(&write_ev);
	log_event_drop(&flush_ev);
	if (events_fd > STDERR_FILENO)
		close(events_fd);
	events_fd = -1;
	free(events_path);
	events_path = NULL;
}

uint64_t
events_dropped_total(void)
{
	return dropped_total;
}
