/* The pid file (see pidfile.h). */
#include "proxy/pidfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <unistd.h>

#include "logs/log.h"

static int pidfile_fd = -1;
static const char *pidfile_path;
static pid_t pidfile_owner;

int
pidfile_open(const char *path)
{
	pidfile_fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (pidfile_fd < 0)
		return -1;
	/* Another smtptap running with this pid file holds the lock: two would fight over it. */
	if (flock(pidfile_fd, LOCK_EX | LOCK_NB) != 0) {
		if (errno == EWOULDBLOCK)
			errno = EADDRINUSE;
		close(pidfile_fd);
		pidfile_fd = -1;
		return -1;
	}
	pidfile_path = path;
	return 0;
}

void
pidfile_write(void)
{
	char buf[32];
	int len;

	if (pidfile_fd < 0 || pidfile_owner != 0)
		return;
	pidfile_owner = getpid();
	len = snprintf(buf, sizeof(buf), "%ld\n", (long)pidfile_owner);
	if (ftruncate(pidfile_fd, 0) != 0 || pwrite(pidfile_fd, buf, (size_t)len, 0) != len)
		log_warn("--pid-file %s", pidfile_path);
}

void
pidfile_remove(void)
{
	if (pidfile_fd < 0 || pidfile_owner != getpid())
		return;
	if (unlink(pidfile_path) != 0 && ftruncate(pidfile_fd, 0) != 0)
		log_warn("--pid-file %s: neither removed nor emptied", pidfile_path);
	close(pidfile_fd);
	pidfile_fd = -1;
}
