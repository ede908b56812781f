/* sd_notify at the points systemd's Type=notify expects them (see notify.h). */
#include "proxy/notify.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "logs/log.h"
#include "proxy/pidfile.h"

static pid_t notify_pid;

void
notify_init(void)
{
	notify_pid = getpid();
}

static void
notify_send(const char *state)
{
	int rc;

	if (notify_pid == 0 || getpid() != notify_pid)
		return;
	if ((rc = sd_notify(0, state)) < 0)
		log_warnx("sd_notify %s: %s", state, strerror(-rc));
}

void
notify_ready(void)
{
	notify_send("READY=1\nSTATUS=accepting sessions");
}

void
notify_started(void)
{
	pidfile_write();
	notify_ready();
}

/* RELOADING=1 carries the time of the reload (systemd 253's Type=notify-reload wants it). */
void
notify_reloading(void)
{
	struct timespec ts;
	char state[96];

	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
	         (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
	notify_send(state);
}

void
notify_stopping(void)
{
	notify_send("STOPPING=1");
}
