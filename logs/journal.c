/*
 * The journal's writer.  Every session's records go to one file per UTC day, appended by all
 * workers: a create and close per session (and an inode each) is what a file per session
 * cost.  A process keeps one buffer per day (two days at once around midnight, for sessions
 * that started the day before) and writes it in one writev(2).
 *
 * Torn records: a batch is written under the workers' shared lock, so its file offset is the
 * file's size just before (exact offsets for the event lines) and nobody appends between its
 * pieces; after a short write the rest follows.  If a write fails (disk full), the file is
 * truncated back to its size before the batch, under the same lock, so no half record stays
 * for the next batch to continue.  Where that is not possible (the truncate fails, a worker
 * was killed holding the lock, a file found not ending with a line end at open) the next batch
 * starts with a line end: the torn line ends there, and readers skip lines that don't parse.
 */
#include "logs/journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "logs/log.h"

#define JOURNAL_DAYS 2
/*
 * A finished session's event line waits for its records' batch.  Waiting for the second's
 * tick would hold every event line up to a second; this short delay still gathers the
 * sessions that end together into one write.
 */
#define JOURNAL_SOON_US 20000
/* A buffer grown beyond this by a burst is given back at the next tick. */
#define JOURNAL_KEEP (4 * JOURNAL_FLUSH_AT)

static struct journal days[JOURNAL_DAYS];
static char *dir_path;
static int dir_fd = -1;
static int dir_nofollow; /* the log directory was no symlink at start-up: never one later */
static dev_t dir_dev;
static ino_t dir_ino;
static struct event *tick;
static struct event *soon; /* a flush shortly after a finished session's event line waits */
static pthread_mutex_t *shared_lock;
static int keep;          /* --keep-days, -1: keep everything */
static long pruned_today; /* the day whose rollover was pruned */
static int failing;
static uint64_t write_errors;

static long
journal_today(void)
{
	return (long)(time(NULL) / 86400);
}

void
journal_day_name(long day, char buf[16])
{
	time_t t = (time_t)day * 86400;
	struct tm tm;

	gmtime_r(&t, &tm);
	/* The moduli tell the compiler what the calendar already guarantees: 15 octets at most. */
	snprintf(buf, 16, "%04u-%02u-%02u.log", (unsigned)(tm.tm_year + 1900) % 10000u,
	         (unsigned)(tm.tm_mon + 1) % 100u, (unsigned)tm.tm_mday % 100u);
}

static void
journal_close_file(struct journal *j)
{
	if (j->fd >= 0)
		close(j->fd);
	j->fd = -1;
}

/*
 * The log directory named at start-up, again: opened (created if it has gone) and, if it is
 * not the one held, taken instead, with every day's file closed (they are in the old one).
 */
static int
journal_dir_open(void)
{
	struct stat st;
	int fd;

	if (mkdir(dir_path, 0750) != 0 && errno != EEXIST)
		return -1;
	/*
	 * Opened again by its name after it was removed or replaced: a symlink planted in its
	 * place must not lead the journal elsewhere (a log dir that was a symlink at start-up,
	 * an administrator's choice, is followed).
	 */
	fd = open(dir_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (dir_nofollow ? O_NOFOLLOW : 0));
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0) {
		close(fd);
		return -1;
	}
	if (dir_fd >= 0 && st.st_dev == dir_dev && st.st_ino == dir_ino) {
		close(fd);
		return 0;
	}
	if (dir_fd >= 0) {
		log_info("log directory %s replaced: reopened", dir_path);
		close(dir_fd);
	}
	dir_fd = fd;
	dir_dev = st.st_dev;
	dir_ino = st.st_ino;
	for (int i = 0; i < JOURNAL_DAYS; i++)
		journal_close_file(&days[i]);
	return 0;
}

/* Whether the file ends with a line end (or is empty); a torn record otherwise. */
static int
journal_ends_whole(int fd, off_t size)
{
	char c;

	if (size == 0)
		return 1;
	return pread(fd, &c, 1, size - 1) == 1 && c == '\n';
}

/*
 * O_NONBLOCK: a FIFO planted at the day's name would otherwise stall the loop on its first
 * full pipe; nothing but a regular file is written (journal_not_regular).
 */
static int
journal_open_file(const char *name)
{
	return openat(dir_fd, name, O_RDWR | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK,
	              0640);
}

/* Whether what was opened is no regular file: said once, until a good one comes again. */
static int
journal_not_regular(const char *name, const struct stat *st)
{
	static int warned;

	if (S_ISREG(st->st_mode)) {
		warned = 0;
		return 0;
	}
	if (!warned)
		log_warnx("journal %s: not a regular file: nothing is written to it", name);
	warned = 1;
	errno = EINVAL;
	return 1;
}

/*
 * The day's file, still the one its name leads to (a rotated or removed file, or log
 * directory, is noticed here, at the next batch), with its size: where the batch will land.
 */
static int
journal_file(struct journal *j, off_t *size, int recheck)
{
	struct stat st;
	int fd;

	if (j->fd >= 0 && fstatat(dir_fd, j->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    st.st_dev == j->dev && st.st_ino == j->ino) {
		*size = st.st_size;
		if (recheck && !journal_ends_whole(j->fd, st.st_size))
			j->need_nl = 1;
		return 0;
	}
	journal_close_file(j);
	fd = journal_open_file(j->name);
	if (fd < 0 && errno == ENOENT && journal_dir_open() == 0)
		fd = journal_open_file(j->name);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0 || journal_not_regular(j->name, &st)) {
		close(fd);
		return -1;
	}
	j->fd = fd;
	j->dev = st.st_dev;
	j->ino = st.st_ino;
	j->need_nl = !journal_ends_whole(fd, st.st_size);
	*size = st.st_size;
	return 0;
}

/* A worker killed while it held the lock may have left a torn record: looked for. */
static int
journal_lock(void)
{
	if (shared_lock != NULL && pthread_mutex_lock(shared_lock) == EOWNERDEAD) {
		pthread_mutex_consistent(shared_lock);
		return 1;
	}
	return 0;
}

static void
journal_unlock(void)
{
	if (shared_lock != NULL)
		pthread_mutex_unlock(shared_lock);
}

/* Writes the pieces whole, going on after a short write; -1 on error. */
static int
journal_writev(int fd, struct iovec *iov, int n)
{
	ssize_t w;

	while (n > 0) {
		if ((w = writev(fd, iov, n)) < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (w == 0) {
			errno = EIO;
			return -1;
		}
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

/* Under the lock: the batch at the file's end; its offset there, or -1. */
static int64_t
journal_put(struct journal *j, int recheck)
{
	struct iovec iov[2];
	off_t size;
	int n = 0, nl;

	if (journal_file(j, &size, recheck) != 0)
		return -1;
	nl = j->need_nl;
	if (nl)
		iov[n++] = (struct iovec){.iov_base = "\n", .iov_len = 1};
	iov[n++] = (struct iovec){.iov_base = j->buf, .iov_len = j->len};
	if (journal_writev(j->fd, iov, n) == 0) {
		j->need_nl = 0;
		return (int64_t)size + nl;
	}
	/* Nobody appended since (the lock): what this batch left goes. */
	if (ftruncate(j->fd, size) != 0)
		j->need_nl = 1;
	return -1;
}

/* The marks of the batch just written (or lost) learn their offsets. */
static void
journal_resolve(struct journal *j, int64_t base)
{
	struct journal_mark *m;

	while ((m = TAILQ_FIRST(&j->marks)) != NULL) {
		TAILQ_REMOVE(&j->marks, m, entry);
		m->offset = base >= 0 ? base + (int64_t)m->pos : -1;
		m->pending = 0;
	}
}

/*
 * Those waiting for the batch just written (or lost) are told, after it: taken off first, so
 * that what they do (queue an event line, which may write the journal again) finds them gone.
 */
static void
journal_tell(struct journal *j, int64_t base)
{
	TAILQ_HEAD(, journal_wait) told = TAILQ_HEAD_INITIALIZER(told);
	struct journal_wait *w;

	TAILQ_CONCAT(&told, &j->waits, entry);
	while ((w = TAILQ_FIRST(&told)) != NULL) {
		TAILQ_REMOVE(&told, w, entry);
		if (w->pending)
			w->offset = base >= 0 ? base + (int64_t)w->pos : -1;
		w->fn(w->arg, j->name, w->offset);
		free(w);
	}
}

int
journal_after(struct journal *j, const struct journal_mark *m, journal_wait_fn *fn, void *arg)
{
	struct journal_wait *w;

	if ((w = malloc(sizeof(*w))) == NULL)
		return -1;
	w->pending = m->pending;
	w->pos = m->pos;
	w->offset = m->offset;
	w->fn = fn;
	w->arg = arg;
	TAILQ_INSERT_TAIL(&j->waits, w, entry);
	if (soon != NULL && !evtimer_pending(soon, NULL)) {
		struct timeval delay = {0, JOURNAL_SOON_US};

		evtimer_add(soon, &delay);
	}
	return 0;
}

int
journal_flush(struct journal *j)
{
	int64_t base;
	int recheck, saved;

	if (j->len == 0) {
		journal_tell(j, -1); /* a record that could not be put: not in the file */
		return 0;
	}
	recheck = journal_lock();
	base = dir_fd >= 0 ? journal_put(j, recheck) : -1;
	saved = errno;
	journal_unlock();
	journal_resolve(j, base);
	j->len = 0;
	j->batches++;
	journal_tell(j, base);
	if (base < 0) {
		write_errors++;
		if (!failing) {
			errno = saved;
			log_warn("journal %s: write failed, records dropped", j->name);
		}
		failing = 1;
		return -1;
	}
	if (failing)
		log_info("journal %s: writing again", j->name);
	failing = 0;
	return 0;
}

void
journal_flush_all(void)
{
	for (int i = 0; i < JOURNAL_DAYS; i++)
		if (days[i].day >= 0)
			journal_flush(&days[i]);
}

/* A day no session writes to any more gives its slot and descriptor back. */
static void
journal_release(struct journal *j)
{
	journal_flush(j);
	journal_close_file(j);
	free(j->buf);
	j->buf = NULL;
	j->cap = 0;
	j->day = -1;
}

struct journal *
journal_get(long day)
{
	struct journal *j = NULL;
	int i;

	for (i = 0; i < JOURNAL_DAYS; i++)
		if (days[i].day == day)
			return &days[i];
	for (i = 0; i < JOURNAL_DAYS; i++)
		if (days[i].day < 0)
			j = &days[i];
	if (j == NULL) { /* a third day (a session of more than a day): the oldest goes */
		j = &days[0];
		for (i = 1; i < JOURNAL_DAYS; i++)
			if (days[i].day < j->day)
				j = &days[i];
		journal_release(j);
	}
	j->day = day;
	j->batches++;
	journal_day_name(day, j->name);
	j->len = 0;
	j->need_nl = 0;
	j->recent = 0;
	return j;
}

int
journal_reserve(struct journal *j, size_t n)
{
	size_t cap = j->cap < 4096 ? 4096 : j->cap;
	char *p;

	if (j->len + n <= j->cap)
		return 0;
	if (n > SIZE_MAX / 2 - j->len)
		return -1;
	while (cap < j->len + n)
		cap *= 2;
	if ((p = realloc(j->buf, cap)) == NULL)
		return -1;
	j->buf = p;
	j->cap = cap;
	return 0;
}

void
journal_written(struct journal *j)
{
	j->recent = 1;
	if (j->len >= JOURNAL_FLUSH_AT)
		journal_flush(j);
}

void
journal_mark(struct journal *j, struct journal_mark *m)
{
	m->pos = j->len;
	m->offset = -1;
	m->pending = 1;
	TAILQ_INSERT_TAIL(&j->marks, m, entry);
}

void
journal_unmark(struct journal *j, struct journal_mark *m)
{
	if (!m->pending)
		return;
	TAILQ_REMOVE(&j->marks, m, entry);
	m->pending = 0;
}

/* "YYYY-MM-DD.log" to its day number; -1 for any other name. */
static long
journal_name_day(const char *name)
{
	struct tm tm;
	int y, mo, d, n = 0;

	if (strlen(name) != 14 || sscanf(name, "%4d-%2d-%2d.log%n", &y, &mo, &d, &n) != 3 ||
	    n != 14 || mo < 1 || mo > 12 || d < 1 || d > 31)
		return -1;
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	return (long)(timegm(&tm) / 86400);
}

int
journal_prune(long today, int keep_days)
{
	struct dirent *de;
	DIR *d;
	long day;
	int fd, removed = 0;

	if (keep_days < 0 || dir_fd < 0 || (fd = dup(dir_fd)) < 0)
		return 0;
	if ((d = fdopendir(fd)) == NULL) {
		close(fd);
		return 0;
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL) {
		day = journal_name_day(de->d_name);
		if (day < 0 || day >= today - keep_days)
			continue;
		if (unlinkat(dir_fd, de->d_name, 0) == 0) {
			removed++;
			log_info("journal %s removed (--keep-days %d)", de->d_name, keep_days);
		} else if (errno != ENOENT) {
			log_warn("journal %s: not removed", de->d_name);
		}
	}
	closedir(d);
	return removed;
}

/* Shortly after an event line began to wait: the days that hold waiting lines are written. */
static void
journal_soon_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	for (int i = 0; i < JOURNAL_DAYS; i++)
		if (days[i].day >= 0 && !TAILQ_EMPTY(&days[i].waits))
			journal_flush(&days[i]);
}

/*
 * Once a second: every buffer is written, a day no longer written to is let go, and at a
 * day's rollover the directory is checked again and old days pruned.
 */
static void
journal_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	long today = journal_today();

	(void)fd;
	(void)what;
	(void)arg;
	for (int i = 0; i < JOURNAL_DAYS; i++) {
		struct journal *j = &days[i];

		if (j->day < 0)
			continue;
		journal_flush(j);
		if (j->day != today && !j->recent)
			journal_release(j);
		else if (j->cap > JOURNAL_KEEP) {
			free(j->buf);
			j->buf = NULL;
			j->cap = 0;
		}
		j->recent = 0;
	}
	if (today != pruned_today) {
		pruned_today = today;
		journal_dir_open();
		journal_prune(today, keep);
	}
}

int
journal_init(struct event_base *base, const char *log_dir, int keep_days)
{
	struct timeval second = {1, 0};
	struct stat st;

	for (int i = 0; i < JOURNAL_DAYS; i++) {
		days[i].day = -1;
		days[i].fd = -1;
		TAILQ_INIT(&days[i].marks);
		TAILQ_INIT(&days[i].waits);
	}
	free(dir_path);
	if ((dir_path = strdup(log_dir)) == NULL || journal_dir_open() != 0)
		return -1;
	dir_nofollow = !(lstat(log_dir, &st) == 0 && S_ISLNK(st.st_mode));
	keep = keep_days;
	pruned_today = journal_today();
	journal_prune(pruned_today, keep);
	if (base == NULL)
		return 0;
	tick = event_new(base, -1, EV_PERSIST, journal_tick_cb, NULL);
	if (tick == NULL || event_add(tick, &second) != 0)
		return -1;
	if ((soon = evtimer_new(base, journal_soon_cb, NULL)) == NULL)
		return -1;
	return 0;
}

void
journal_shutdown(void)
{
	for (int i = 0; i < JOURNAL_DAYS; i++)
		if (days[i].day >= 0)
			journal_release(&days[i]);
	log_event_drop(&tick);
	log_event_drop(&soon);
	if (dir_fd >= 0)
		close(dir_fd);
	dir_fd = -1;
}

void
journal_share_lock(pthread_mutex_t *lock)
{
	shared_lock = lock;
}

void
journal_reopen(void)
{
	journal_flush_all();
	if (dir_path != NULL && journal_dir_open() != 0)
		log_warn("log directory %s: not reopened", dir_path);
}

int
journal_failing(void)
{
	return failing;
}

uint64_t
journal_write_errors(void)
{
	return write_errors;
}

int
journal_dir_fd(void)
{
	return dir_fd;
}
