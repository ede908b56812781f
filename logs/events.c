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
#include <unistd.h>

#include <event2/event.h>

#include "logs/log.h"

/* What is kept between passes at most; a longer pass (huge events) gives it back. */
#define EVENTS_KEEP (64 * 1024)

static char *events_path;
static int events_fd = -1;
static int events_failing;
static struct event *flush_ev; /* made active when a line waits: runs later in the pass */
static char *pending;
static size_t pending_len, pending_cap;
static pthread_mutex_t *shared_lock; /* with worker processes */
static void (*before_write)(void);   /* writes what the lines point at (the journal) */

static int
events_open_fd(const char *path)
{
	if (strcmp(path, "-") == 0)
		return STDOUT_FILENO;
	return open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0640);
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
	close(events_fd);
	events_fd = fd;
	events_failing = 0;
	log_info("events file %s reopened", events_path);
	return 0;
}

void
events_before_write(void (*fn)(void))
{
	before_write = fn;
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

/* Writes it all, going on after a partial write. */
static void
events_put(const char *line, size_t len)
{
	size_t off = 0;
	ssize_t n;

	events_lock();
	while (off < len) {
		n = write(events_fd, line + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (!events_failing)
				log_warn("events file %s: write failed", events_path);
			events_failing = 1;
			break;
		}
		off += (size_t)n;
	}
	events_unlock();
}

/* Writes the pass's lines: whole lines in one write, so appenders never interleave in one. */
static void
events_flush(void)
{
	if (pending_len > 0 && before_write != NULL)
		before_write();
	if (pending_len > 0)
		events_put(pending, pending_len);
	pending_len = 0;
	if (pending_cap > EVENTS_KEEP) {
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

	while (cap < pending_len + len)
		cap *= 2;
	if (cap != pending_cap) {
		if ((p = realloc(pending, cap)) == NULL) {
			events_flush();
			events_put(line, len);
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
	if (flush_ev != NULL)
		event_free(flush_ev);
	flush_ev = NULL;
	if (events_fd > STDERR_FILENO)
		close(events_fd);
	events_fd = -1;
	free(events_path);
	events_path = NULL;
}
