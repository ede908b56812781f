/* The program's own log, after OpenBSD's log.c: warn appends strerror, fatal exits. */
#include "logs/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

static int log_syslog;
static int log_verbose;
static int log_level = LOG_LEVEL_INFO;
static char log_tag[32];

void
log_init(int use_syslog, int verbose)
{
	log_syslog = use_syslog;
	log_verbose = verbose;
	if (use_syslog)
		openlog("smtptap", LOG_PID | LOG_NDELAY, LOG_MAIL);
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
log_vwrite(int pri, const char *level, const char *fmt, va_list ap, const char *err)
{
	char msg[2048];
	size_t tag = strlen(log_tag);

	memcpy(msg, log_tag, tag);
	vsnprintf(msg + tag, sizeof(msg) - tag, fmt, ap);
	if (log_syslog) {
		if (err)
			syslog(pri, "%s: %s", msg, err);
		else
			syslog(pri, "%s", msg);
		return;
	}
	if (err)
		fprintf(stderr, "smtptap: %s: %s: %s\n", level, msg, err);
	else
		fprintf(stderr, "smtptap: %s: %s\n", level, msg);
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
