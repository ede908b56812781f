/* smtptap: an SMTP traffic recording proxy.  Start-up, signals and shutdown. */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "filters/check.h"
#include "filters/rules.h"
#include "filters/trial.h"
#include "logs/escape.h"
#include "logs/events.h"
#include "logs/log.h"
#include "logs/journal.h"
#include "logs/transcript.h"
#include "proxy/addr.h"
#include "proxy/checkconf.h"
#include "proxy/listener.h"
#include "proxy/notify.h"
#include "proxy/options.h"
#include "proxy/pidfile.h"
#include "proxy/proxy.h"
#include "proxy/reload.h"
#include "proxy/session.h"
#include "proxy/tls.h"
#include "proxy/workers.h"
#include "tools/tools.h"

/* Each session holds a client socket and an upstream socket (transcripts open per flush). */
#define FDS_PER_SESSION 2

static struct proxy proxy;

static void
shutdown_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	log_info("signal %d received", (int)sig);
	notify_stopping();
	proxy_shutdown(arg);
}

/* Loads the rule files; NULL (with every error logged) when any is bad. */
static struct ruleset *
load_rules(const struct options *o, int at_start)
{
	struct ruleset *rs;
	char *errors = NULL, *line, *save = NULL;
	size_t size = 0;
	FILE *mem;

	if (at_start)
		return rules_load(o->rules, o->nrules, stderr);
	if ((mem = open_memstream(&errors, &size)) == NULL)
		return NULL;
	rs = rules_load(o->rules, o->nrules, mem);
	fclose(mem);
	for (line = strtok_r(errors, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save))
		log_warnx("rules: %s", line);
	free(errors);
	return rs;
}

/* SIGHUP: new rules for sessions that start from now on, if every file is valid. */
static void
reload_rules(struct proxy *px)
{
	struct ruleset *rs;

	if (px->opts->nrules == 0)
		return;
	if ((rs = load_rules(px->opts, 0)) == NULL) {
		log_warnx("rules reload failed: keeping the old rules");
		return;
	}
	rules_free(px->rules);
	px->rules = rs;
	log_info("rules reloaded: %d rules", rules_count(rs));
}

/* SIGHUP: a rotated events file, a renewed certificate, edited rules. */
static void
reload_all(struct proxy *px)
{
	notify_reloading();
	events_reopen();
	journal_reopen();
	if (px->opts->config_file != NULL) {
		reload_config(px); /* rules and certificates too, with the rest or not at all */
	} else {
		tls_reload();
		reload_rules(px);
	}
	notify_ready();
}

static void
hup_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	reload_all(arg);
}

/* Raises the descriptor limit to what --max-sessions needs, as far as allowed. */
static void
raise_fd_limit(unsigned max_sessions)
{
	rlim_t want = (rlim_t)max_sessions * FDS_PER_SESSION + 64;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
		return;
	if (rl.rlim_max < want) {
		struct rlimit root = {want, want};
		if (setrlimit(RLIMIT_NOFILE, &root) == 0)
			return;
	}
	rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
	setrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < want)
		log_warnx("file descriptor limit %llu is below the %llu that --max-sessions %u "
		          "needs",
		          (unsigned long long)rl.rlim_cur, (unsigned long long)want, max_sessions);
}

static void
open_outputs(struct options *o)
{
	static char events_default[4096];

	if (transcript_init(proxy.base, o->log_dir, o->keep_days) != 0)
		fatal("log directory %s", o->log_dir);
	if (o->events_off)
		return;
	if (o->events == NULL) {
		snprintf(events_default, sizeof(events_default), "%s/events.jsonl", o->log_dir);
		o->events = events_default;
	}
	if (events_open(proxy.base, o->events) != 0)
		fatal("events file %s", o->events);
	events_before_write(journal_flush_all);
}

/* --user: after the listeners are bound, root goes for good (setgroups, setgid, setuid). */
static void
drop_privileges(const struct options *o)
{
	struct passwd *pw;

	if (o->user == NULL) {
		if (geteuid() == 0)
			log_warnx("running as root: consider --user");
		return;
	}
	if ((pw = getpwnam(o->user)) == NULL)
		fatalx("--user %s: no such user", o->user);
	if (transcript_chown_dir(pw->pw_uid, pw->pw_gid) != 0)
		fatal("log directory %s: chown to %s", o->log_dir, o->user);
	if (o->events != NULL && strcmp(o->events, "-") != 0 &&
	    chown(o->events, pw->pw_uid, pw->pw_gid) != 0)
		fatal("events file %s: chown to %s", o->events, o->user);
	if (setgroups(1, &pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0)
		fatal("dropping privileges to %s", o->user);
	if (pw->pw_uid != 0 && (setuid(0) == 0 || geteuid() == 0))
		fatalx("dropping privileges to %s: root could be regained", o->user);
	log_info("running as %s (uid %u)", o->user, (unsigned)pw->pw_uid);
}

static void
add_signals(struct event *ev[3])
{
	ev[0] = evsignal_new(proxy.base, SIGTERM, shutdown_cb, &proxy);
	ev[1] = evsignal_new(proxy.base, SIGINT, shutdown_cb, &proxy);
	ev[2] = evsignal_new(proxy.base, SIGHUP, hup_cb, &proxy);
	for (int i = 0; i < 3; i++)
		if (ev[i] == NULL || event_add(ev[i], NULL) != 0)
			fatalx("signal handlers");
}

/*
 * What every session needs of --upstream, worked out once: a numeric address parsed and
 * formatted (only a name goes to the resolver per session), and the text for the event line.
 */
static void
upstream_prepare(struct proxy *px, const struct options *o)
{
	px->upstream_salen = addr_numeric(o->upstream_host, o->upstream_port, &px->upstream_sa);
	if (px->upstream_salen > 0)
		addr_format((struct sockaddr *)&px->upstream_sa, px->upstream_sa_text,
		            sizeof(px->upstream_sa_text));
	px->upstream_text = escape_strdup((const unsigned char *)o->upstream, strlen(o->upstream));
	if (px->upstream_text == NULL)
		fatalx("out of memory");
	/* PITFALLS 20: a server that trusts its own host would relay for every client. */
	if (o->forward_client == FORWARD_NONE && addr_host_is_local(o->upstream_host))
		log_warnx("--upstream %s is on this host and --forward-client is none: the server "
		          "sees every client as the proxy's own address (an open relay if it trusts "
		          "local clients, as Postfix's default mynetworks does); use --forward-client "
		          "xclient, proxy-v1 or proxy-v2",
		          o->upstream);
}

/* The loop that serves sessions, in this process or in each worker. */
static void
serve(struct proxy *px)
{
	struct event *signals[3];

	/* Made here, not before the workers fork: each resolver has its own socket. */
	px->dns = evdns_base_new(px->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
	if (px->dns == NULL)
		fatalx("resolver set-up failed");
	add_signals(signals);
	workers_signals_ready();
	if (px->shared == NULL) /* one process: up now (the supervisor says it for workers) */
		notify_started();
	event_base_dispatch(px->base);
	if (transcript_write_errors() > 0)
		log_warnx("transcript write errors since start: %llu",
		          (unsigned long long)transcript_write_errors());
	for (int i = 0; i < 3; i++)
		event_free(signals[i]);
	evdns_base_free(px->dns, 0);
}

int
main(int argc, char **argv)
{
	static struct options opts;
	int i;

	/* `smtptap show ...`: a word, not an option, names a tool. */
	if ((i = tools_main(argc, argv)) >= 0)
		return i;
	if (argc > 1 && strcmp(argv[1], "--check-rules") == 0)
		return rules_check_main(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "--test-rules") == 0)
		return rules_trial_main(argc - 1, argv + 1);
	i = options_build(argc, argv, &opts, stderr);
	if (opts.check_config)
		return checkconf_main(&opts, i);
	if (i > 0)
		return 2;
	log_init(opts.use_syslog, opts.verbose);
	log_set_level(opts.log_level);
	notify_init();
	reload_init(argc, argv);
	raise_fd_limit(opts.max_sessions);
	proxy.opts = &opts;
	TAILQ_INIT(&proxy.sessions);
	/*
	 * libevent's default clock (the coarse monotonic one) is precise enough for timeouts;
	 * transcript times do not come from it (transcript.c reads the clock).  So no
	 * EVENT_BASE_FLAG_PRECISE_TIMER, whose timerfd costs a system call per loop pass.
	 */
	if ((proxy.base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	upstream_prepare(&proxy, &opts);
	if ((proxy.rules = load_rules(&opts, 1)) == NULL)
		fatalx("rule files have errors");
	umask(027);
	open_outputs(&opts);
	if (tls_init(&opts) != 0)
		fatalx("TLS set-up failed (certificate, key or CA file)");
	for (i = 0; i < opts.nlisten; i++)
		if (listener_add(&proxy, opts.listen[i], 0, opts.workers) != 0)
			fatal("--listen %s", opts.listen[i]);
	for (i = 0; i < opts.nlisten_tls; i++)
		if (listener_add(&proxy, opts.listen_tls[i], 1, opts.workers) != 0)
			fatal("--listen-tls %s", opts.listen_tls[i]);
	signal(SIGPIPE, SIG_IGN);
	if (opts.pid_file != NULL && pidfile_open(opts.pid_file) != 0)
		fatal("--pid-file %s", opts.pid_file);
	drop_privileges(&opts);
	log_info("smtptap %s relaying to %s", SMTPTAP_VERSION, opts.upstream);
	if (opts.no_transcripts || opts.events_off) /* so that nobody looks for them in vain */
		log_info("not recording:%s%s", opts.no_transcripts ? " no transcripts" : "",
		         opts.events_off ? " no events" : "");
	if (opts.workers == 1 || workers_run(&proxy, opts.workers, reload_all) == WORKERS_IN_WORKER)
		serve(&proxy);
	log_info("exiting");
	pidfile_remove();
	if (proxy.grace_timer != NULL)
		event_free(proxy.grace_timer);
	listener_close_all();
	transcript_shutdown();
	tls_cleanup();
	rules_free(proxy.rules);
	events_close();
	event_base_free(proxy.base);
	free(proxy.upstream_text);
	return 0;
}
