/*
 * Worker processes (--workers N), after nginx's master and workers.  The start-up (options,
 * rules, outputs, TLS, listeners, privileges) happens once; then the supervisor forks N
 * workers.  Each re-initialises the event loop it inherited, keeps its own socket of every
 * listener (SO_REUSEPORT: the kernel spreads the clients) and serves sessions as a single
 * process would.  The supervisor passes SIGTERM, SIGINT and SIGHUP on, starts a new worker in
 * place of one that dies, and returns when the last has ended after a shutdown.  Each process
 * has its own descriptor table, so N workers hold N times the sessions one process can.
 */
#include "proxy/workers.h"

#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "logs/events.h"
#include "logs/journal.h"
#include "logs/log.h"
#include "proxy/listener.h"
#include "proxy/metrics.h"
#include "proxy/notify.h"
#include "proxy/options.h"
#include "proxy/proxy.h"

/* Beyond --grace, what workers get to end before they are killed. */
#define WORKERS_KILL_SLACK 10

struct worker {
	pid_t pid; /* 0: not running */
	time_t started;
	time_t restart_at; /* when a worker that died young may be started again */
};

static struct worker workers[OPT_MAX_WORKERS];
static unsigned nworkers;
static pid_t supervisor_pid;
static sigset_t worker_mask;  /* the signal mask from before the supervisor blocked any */
static sigset_t handled_mask; /* what the supervisor waits for */
static int stopping;
static time_t kill_at;

/* The memory the workers share: session counts and the events file's lock. */
static struct proxy_shared *
workers_share(void)
{
	struct proxy_shared *sh;
	pthread_mutexattr_t attr;

	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		fatal("shared memory for the workers");
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
	if (pthread_mutex_init(&sh->events_lock, &attr) != 0)
		fatalx("events lock for the workers");
	if (pthread_mutex_init(&sh->journal_lock, &attr) != 0)
		fatalx("journal lock for the workers");
	pthread_mutexattr_destroy(&attr);
	return sh;
}

/* In a fresh worker: its own loop, its own sockets, and no life beyond the supervisor's. */
static void
worker_setup(struct proxy *px, unsigned slot)
{
	char tag[32];

	snprintf(tag, sizeof(tag), "worker %u", slot + 1);
	log_set_tag(tag);
	px->worker = slot;
	/* The supervisor gone (killed): finish the sessions as on SIGTERM, then exit. */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != supervisor_pid)
		fatalx("supervisor gone");
	/* The inherited epoll set is the supervisor's: the loop needs one of its own. */
	if (event_reinit(px->base) != 0)
		fatalx("event loop re-initialisation failed");
	listener_keep_worker(slot);
	metrics_in_worker();
}

/* 0 in the supervisor (or -1 when fork fails), 1 in the new worker. */
static int
worker_start(struct proxy *px, unsigned slot)
{
	pid_t pid;

	fflush(stdout);
	fflush(stderr);
	if ((pid = fork()) < 0) {
		log_warn("worker %u: fork", slot + 1);
		return -1;
	}
	if (pid == 0) {
		worker_setup(px, slot);
		return 1;
	}
	workers[slot].pid = pid;
	workers[slot].started = time(NULL);
	log_info("worker %u started (pid %d)", slot + 1, (int)pid);
	return 0;
}

static void
workers_signal(int sig)
{
	for (unsigned i = 0; i < nworkers; i++)
		if (workers[i].pid > 0)
			kill(workers[i].pid, sig);
}

static unsigned
workers_alive(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < nworkers; i++)
		n += workers[i].pid > 0;
	return n;
}

/* Its places under --max-sessions are free again: its sessions ended with it. */
static void
worker_gone(struct proxy *px, unsigned slot, int status)
{
	unsigned held = atomic_exchange(&px->shared->of_worker[slot], 0);
	time_t now = time(NULL);

	if (stopping && WIFEXITED(status) && WEXITSTATUS(status) == 0)
		log_info("worker %u (pid %d) exited", slot + 1, (int)workers[slot].pid);
	else if (WIFSIGNALED(status))
		log_warnx("worker %u (pid %d) killed by signal %d, %u sessions lost", slot + 1,
		          (int)workers[slot].pid, WTERMSIG(status), held);
	else
		log_warnx("worker %u (pid %d) exited with status %d", slot + 1,
		          (int)workers[slot].pid, WEXITSTATUS(status));
	workers[slot].pid = 0;
	/* One that dies at once would die again: a second between starts, not a fork loop. */
	workers[slot].restart_at = now - workers[slot].started < 1 ? now + 1 : now;
}

static void
workers_reap(struct proxy *px)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		for (unsigned i = 0; i < nworkers; i++)
			if (workers[i].pid == pid)
				worker_gone(px, i, status);
}

/* Starts the workers that are due; 1 when this process has become one of them. */
static int
workers_restart(struct proxy *px)
{
	time_t now = time(NULL);

	if (stopping)
		return 0;
	for (unsigned i = 0; i < nworkers; i++)
		if (workers[i].pid == 0 && workers[i].restart_at <= now && worker_start(px, i) == 1)
			return 1;
	return 0;
}

static void
workers_stop(struct proxy *px, int sig)
{
	if (!stopping) {
		stopping = 1;
		kill_at = time(NULL) + (time_t)px->opts->grace + WORKERS_KILL_SLACK;
		/* No new client waits in a socket that no worker reads any more. */
		listener_close_all();
	}
	workers_signal(sig);
}

/* The supervisor's life: signals in, workers out, until the last worker has ended. */
static int
workers_supervise(struct proxy *px, void (*reload)(struct proxy *))
{
	int sig;

	for (;;) {
		sig = metrics_sigwait(&handled_mask, 1); /* serving scrapes meanwhile */
		if (sig == SIGTERM || sig == SIGINT) {
			log_info("signal %d received: stopping %u workers", sig, workers_alive());
			notify_stopping();
			workers_stop(px, sig);
		} else if (sig == SIGHUP) {
			reload(px);
			workers_signal(SIGHUP);
		}
		workers_reap(px);
		if (stopping && workers_alive() == 0)
			return 0;
		if (stopping && time(NULL) >= kill_at) {
			log_warnx("%u workers still running: killing them", workers_alive());
			workers_signal(SIGKILL);
			kill_at = time(NULL) + WORKERS_KILL_SLACK;
		}
		if (workers_restart(px))
			return 1;
	}
}

enum workers_role
workers_run(struct proxy *px, unsigned n, void (*reload)(struct proxy *))
{
	nworkers = n;
	supervisor_pid = getpid();
	px->shared = workers_share();
	events_share_lock(&px->shared->events_lock);
	journal_share_lock(&px->shared->journal_lock);
	sigemptyset(&handled_mask);
	sigaddset(&handled_mask, SIGTERM);
	sigaddset(&handled_mask, SIGINT);
	sigaddset(&handled_mask, SIGHUP);
	sigaddset(&handled_mask, SIGCHLD);
	/* Blocked before the first fork: a signal to a worker waits until it can handle it. */
	sigprocmask(SIG_BLOCK, &handled_mask, &worker_mask);
	for (unsigned i = 0; i < n; i++) {
		switch (worker_start(px, i)) {
		case 1:
			return WORKERS_IN_WORKER;
		case -1:
			fatalx("could not start %u workers", n);
		}
	}
	notify_started();
	if (workers_supervise(px, reload) == 1)
		return WORKERS_IN_WORKER;
	log_info("all workers ended");
	return WORKERS_SUPERVISED;
}

void
workers_signals_ready(void)
{
	if (supervisor_pid != 0)
		sigprocmask(SIG_SETMASK, &worker_mask, NULL);
}
