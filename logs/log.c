/* The program's own log, after OpenBSD's log.c: warn appends strerror, fatal exits. */
#include "logs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

static int log_syslog;
static int log_verbose;
static int log_level = LOG_LEVEL_INFO;
static char log_tag[32];

/*
 * Standard error, written without blocking when it is a pipe or socket: a reader that stops
 * reading (a full pipe) must not freeze the event loop (PITFALLS 18).  Lines it does not take
 * wait in a bounded queue, written by the next log line or, once the loop runs, when the pipe
 * is writable; beyond the queue they are dropped and counted, and the count is logged when
 * the queue has emptied.
 */
#define LOG_QUEUE_MAX (64 * 1024)
static int log_fd = STDERR_FILENO;
static char log_queue[LOG_QUEUE_MAX];
static size_t log_queued;
static unsigned long long log_dropped;
static struct event *log_write_ev;
static struct event *log_pass_ev; /* made active when session lines wait: the pass's end */
static struct event_base *log_base;

static void log_flush(void);

/*
 * --syslog: datagrams to /dev/log, sent without blocking.  syslog(3) blocks while the syslog
 * daemon is behind (its socket's queue full), and with it the event loop; here a line that
 * can't go now is dropped and counted, and the count is said with the next line that goes.
 */
static int syslog_fd = -1;
static unsigned long long syslog_dropped;
/* The pid each line names: getpid(2) is a system call each time (glibc keeps no copy), so
 * it is kept here, and fork's child handler renews it in every child, workers or any other
 * (0: the handler could not be set, asked each time). */
static pid_t syslog_pid;

static void
syslog_pid_renew(void)
{
	syslog_pid = getpid();
}

static void
syslog_connect(void)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX, .sun_path = "/dev/log"};

	if (syslog_fd < 0)
		syslog_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (syslog_fd >= 0 && connect(syslog_fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		close(syslog_fd);
		syslog_fd = -1;
	}
}

/* One message as syslog(3) writes it: <PRI>TIMESTAMP smtptap[PID]: MSG, facility mail. */
static int
syslog_send(int pri, const char *msg)
{
	char line[2300], stamp[32];
	time_t now = time(NULL);
	struct tm tm;
	int n;

	if (localtime_r(&now, &tm) == NULL || strftime(stamp, sizeof(stamp), "%b %e %H:%M:%S", &tm) == 0)
		stamp[0] = '\0';
	n = snprintf(line, sizeof(line), "<%d>%s smtptap[%ld]: %s", LOG_MAIL | pri, stamp,
	             (long)(syslog_pid > 0 ? syslog_pid : getpid()), msg);
	if (n < 0)
		return -1;
	if ((size_t)n >= sizeof(line))
		n = (int)sizeof(line) - 1;
	if (syslog_fd < 0)
		syslog_connect(); /* the daemon was not there yet, or went away */
	if (syslog_fd >= 0 && send(syslog_fd, line, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) == n)
		return 0;
	if (syslog_fd >= 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
		close(syslog_fd); /* a restarted daemon: connect again for the next line */
		syslog_fd = -1;
	}
	return -1;
}

/* A line to syslog, or dropped and counted; a count waiting goes first. */
static void
syslog_line(int pri, const char *msg)
{
	char note[160];

	if (syslog_dropped > 0) {
		snprintf(note, sizeof(note),
		         "%s%llu log lines dropped: the syslog daemon did not keep up", log_tag,
		         syslog_dropped);
		if (syslog_send(LOG_WARNING, note) != 0) {
			syslog_dropped++;
			return;
		}
		syslog_dropped = 0;
	}
	if (syslog_send(pri, msg) != 0)
		syslog_dropped++;
}

static void
log_write_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	log_flush();
}

size_t
log_write_some(int fd, const void *p, size_t n, int *blocked)
{
	size_t off = 0;
	ssize_t w;

	*blocked = 0;
	while (off < n) {
		w = write(fd, (const char *)p + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			*blocked = w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
			break;
		}
		off += (size_t)w;
	}
	return off;
}

void
log_queue_write(char *q, size_t *len, size_t (*put)(const char *, size_t))
{
	size_t n;

	if (*len == 0)
		return;
	n = put(q, *len);
	memmove(q, q + n, *len - n);
	*len -= n;
}

void
log_event_drop(struct event **ev)
{
	if (*ev != NULL)
		event_free(*ev);
	*ev = NULL;
}

/* Octets of p written now, without blocking. */
static size_t
log_put(const char *p, size_t n)
{
	int blocked;
	size_t off = log_write_some(log_fd, p, n, &blocked);

	if (off == n || !blocked)
		return n; /* all, or nowhere to log to: lost */
	if (log_write_ev == NULL && log_base != NULL)
		log_write_ev = event_new(log_base, log_fd, EV_WRITE, log_write_cb, NULL);
	if (log_write_ev != NULL)
		event_add(log_write_ev, NULL);
	return off;
}

static void
log_flush(void)
{
	char note[128];
	size_t n;
	int len;

	log_queue_write(log_queue, &log_queued, log_put);
	if (log_queued == 0 && log_dropped > 0) {
		len = snprintf(note, sizeof(note),
		               "smtptap: warning: %s%llu log lines dropped: the log's reader did not "
		               "keep up\n",
		               log_tag, log_dropped);
		log_dropped = 0;
		if (len > 0 && (size_t)len < sizeof(note) && (n = log_put(note, (size_t)len)) < (size_t)len) {
			memcpy(log_queue, note + n, (size_t)len - n);
			log_queued = (size_t)len - n;
		}
	}
}

/* One whole line to standard error: written now, queued, or dropped and counted. */
static void
log_line(const char *line, size_t n)
{
	size_t w = 0;

	log_flush();
	if (log_queued == 0)
		w = log_put(line, n);
	if (w == n)
		return;
	if (log_queued + (n - w) > sizeof(log_queue)) {
		log_dropped++;
		return;
	}
	memcpy(log_queue + log_queued, line + w, n - w);
	log_queued += n - w;
}

/* A session's line: queued for the end of the loop's pass (written at once without room). */
static void
log_line_later(const char *line, size_t n)
{
	if (log_pass_ev == NULL && log_base != NULL)
		log_pass_ev = event_new(log_base, -1, 0, log_write_cb, NULL);
	if (log_pass_ev == NULL || log_queued + n > sizeof(log_queue)) {
		log_line(line, n);
		return;
	}
	memcpy(log_queue + log_queued, line, n);
	log_queued += n;
	event_active(log_pass_ev, EV_TIMEOUT, 1);
}

/* Standard error as a pipe: a description of our own, without blocking (events.c does the
 * same for standard output). */
static void
log_nonblock(void)
{
	struct stat st;
	int fd, fl;

	if (fstat(STDERR_FILENO, &st) != 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
		return;
	if (S_ISFIFO(st.st_mode) &&
	    (fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC)) >= 0) {
		log_fd = fd;
		return;
	}
	if ((fl = fcntl(STDERR_FILENO, F_GETFL)) >= 0)
		(void)fcntl(STDERR_FILENO, F_SETFL, fl | O_NONBLOCK);
}

void
log_init(int use_syslog, int verbose)
{
	log_syslog = use_syslog;
	log_verbose = verbose;
	if (use_syslog) {
		if (syslog_pid == 0 && pthread_atfork(NULL, NULL, syslog_pid_renew) == 0)
			syslog_pid_renew();
		syslog_connect();
	} else
		log_nonblock();
}

void
log_set_base(struct event_base *base)
{
	log_flush(); /* what waited for the old loop's pass */
	log_event_drop(&log_write_ev);
	log_event_drop(&log_pass_ev);
	log_base = base;
}

void
log_set_level(int level)
{
	log_level = level;
	log_verbose = level >= LOG_LEVEL_DEBUG;
}

void
log_set_tag(const char *tag)
{
	snprintf(log_tag, sizeof(log_tag), "%s: ", tag);
}

static void
log_vwrite_at(int pri, const char *level, const char *fmt, va_list ap, const char *err,
              int later)
{
	char msg[2048], line[2200];
	size_t tag = strlen(log_tag), lvl = strlen(level), at;
	int n;

	/* The usual line formatted once, in place (a session makes two). */
	if (!log_syslog && err == NULL) {
		memcpy(line, "smtptap: ", 9);
		memcpy(line + 9, level, lvl);
		memcpy(line + 9 + lvl, ": ", 2);
		at = 11 + lvl;
		memcpy(line + at, log_tag, tag);
		n = vsnprintf(line + at + tag, sizeof(msg) - tag, fmt, ap);
		if (n < 0)
			return;
		at += tag + ((size_t)n < sizeof(msg) - tag ? (size_t)n : sizeof(msg) - tag - 1);
		line[at++] = '\n';
		if (later)
			log_line_later(line, at);
		else
			log_line(line, at);
		return;
	}
	memcpy(msg, log_tag, tag);
	vsnprintf(msg + tag, sizeof(msg) - tag, fmt, ap);
	if (log_syslog) {
		if (err) {
			n = snprintf(line, sizeof(line), "%s: %s", msg, err);
			syslog_line(pri, n >= 0 ? line : msg);
		} else {
			syslog_line(pri, msg);
		}
		return;
	}
	if (err)
		n = snprintf(line, sizeof(line), "smtptap: %s: %s: %s\n", level, msg, err);
	else
		n = snprintf(line, sizeof(line), "smtptap: %s: %s\n", level, msg);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line)) {
		n = (int)sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	if (later)
		log_line_later(line, (size_t)n);
	else
		log_line(line, (size_t)n);
}

static void
log_vwrite(int pri, const char *level, const char *fmt, va_list ap, const char *err)
{
	log_vwrite_at(pri, level, fmt, ap, err, 0);
}

void
log_warn(const char *fmt, ...)
{
	const char *err = strerror(errno);
	va_list ap;

	if (log_level < LOG_LEVEL_WARNING)
		return;
	va_start(ap, fmt);
	log_vwrite(LOG_WARNING, "warning", fmt, ap, err);
	va_end(ap);
}

void
log_warnx(const char *fmt, ...)
{
	va_list ap;

	if (log_level < LOG_LEVEL_WARNING)
		return;
	va_start(ap, fmt);
	log_vwrite(LOG_WARNING, "warning", fmt, ap, NULL);
	va_end(ap);
}

void
log_info(const char *fmt, ...)
{
	va_list ap;

	if (log_level < LOG_LEVEL_INFO)
		return;
	va_start(ap, fmt);
	log_vwrite(LOG_INFO, "info", fmt, ap, NULL);
	va_end(ap);
}

void
log_session(const char *fmt, ...)
{
	va_list ap;

	if (log_level < LOG_LEVEL_INFO)
		return;
	va_start(ap, fmt);
	log_vwrite_at(LOG_INFO, "info", fmt, ap, NULL, 1);
	va_end(ap);
}

void
log_debug(const char *fmt, ...)
{
	va_list ap;

	if (!log_verbose)
		return;
	va_start(ap, fmt);
	log_vwrite(LOG_DEBUG, "debug", fmt, ap, NULL);
	va_end(ap);
}

void
fatal(const char *fmt, ...)
{
	const char *err = strerror(errno);
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(LOG_CRIT, "fatal", fmt, ap, err);
	va_end(ap);
	exit(1);
}

void
fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(LOG_CRIT, "fatal", fmt, ap, NULL);
	va_end(ap);
	exit(1);
}
