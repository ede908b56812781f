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

/* Writes it all, going on after a partial write. */
static void
events_put(const char *line, size_t len)
{
	size_t off = 0;
	ssize_t n;

	while (off < len) {
		n = write(events_fd, line + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (!events_failing)
				log_warn("events file %s: write failed", events_path);
			events_failing = 1;
			return;
		}
		off += (size_t)n;
	}
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
		/* One write per event, so concurrent appenders never interleave within a line. */
		line[len++] = '\n';
		events_put(line, len);
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
	events_put(withnl, len + 1);
	free(withnl);
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
