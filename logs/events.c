/* The events file: JSON lines written by jansson, one write(2) each, O_APPEND. */
#include "logs/events.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "logs/log.h"

static char *events_path;
static int events_fd = -1;
static int events_failing;

static int
events_open_fd(const char *path)
{
	if (strcmp(path, "-") == 0)
		return STDOUT_FILENO;
	return open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0640);
}

int
events_open(const char *path)
{
	int fd;

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
events_write(json_t *obj)
{
	char *line, *withnl;
	size_t len, off = 0;
	ssize_t n;

	if (events_fd < 0)
		return;
	if ((line = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(9))) ==
	    NULL)
		return;
	len = strlen(line);
	/* One write per event, so concurrent appenders never interleave within a line. */
	if ((withnl = realloc(line, len + 2)) == NULL) {
		free(line);
		return;
	}
	line = withnl;
	line[len++] = '\n';
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
	free(line);
}

void
events_close(void)
{
	if (events_fd > STDERR_FILENO)
		close(events_fd);
	events_fd = -1;
	free(events_path);
	events_path = NULL;
}
