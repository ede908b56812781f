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

#include <netdb.h>

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
#include "proxy/metrics.h"
#include "proxy/notify.h"
#include "proxy/options.h"
#include "proxy/pidfile.h"
#include "proxy/proxy.h"
#include "proxy/reload.h"
#include "proxy/session.h"
#include "proxy/tls.h"
#include "proxy/toolconf.h"
#include "proxy/workers.h"
#include "tools/tools.h"

/* Each session holds a client socket and an upstream socket (transcripts open per flush). */
#define FDS_PER_SESSION 2

static struct proxy proxy;
/* What existed before smtptap started: --user takes over only what smtptap created. */
static int log_dir_existed, events_existed;

/*
 * The event loop.  epoll's changes are kept until the loop next waits and then made at once
 * (libevent's changelist): a session's upstream socket, watched for writing while it
 * connects, then for reading, costs one epoll_ctl for the change instead of a delete and an
 * add, and a side paused and resumed within one pass costs none.  smtptap never dup(2)s a
 * socket it watches, the case where the changelist misbehaves.
 */
static struct event_base *
main_event_base(void)
{
	struct event_config *cfg = event_config_new();
	struct event_base *base;

	if (cfg == NULL)
		return NULL;
	event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	return base;
}

/* --grace is over: the sessions still open are closed. */
static void
grace_over_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy *px = arg;

	(void)fd;
	(void)what;
	log_info("grace period over: closing %u sessions", px->nsessions);
	session_shutdown_all(px);
}

/* Closes the listeners at once; sessions get --grace seconds, then the loop ends. */
static void
shutdown_begin(struct proxy *px)
{
	struct timeval grace = {(time_t)px->opts->grace, 0};

	if (px->shutting_down)
		return;
	px->shutting_down = 1;
	listener_close_all();
	log_info("listeners closed, %u sessions open, grace %u s", px->nsessions, px->opts->grace);
	if (px->nsessions == 0) {
		event_base_loopexit(px->base, NULL);
		return;
	}
	px->grace_timer = evtimer_new(px->base, grace_over_cb, px);
	event_add(px->grace_timer, &grace);
}

static void
shutdown_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	log_info("signal %d received", (int)sig);
	notify_stopping();
	shutdown_begin(arg);
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

/* --check-rules anywhere on a command line: the --rules files, then the other arguments. */
static int
check_rules(const struct options *o)
{
	const char *argv[sizeof(o->rules) / sizeof(o->rules[0]) + 1];

	argv[0] = "--check-rules";
	memcpy(argv + 1, o->rules, (size_t)o->nrules * sizeof(o->rules[0]));
	return rules_check_main(o->nrules + 1, (char **)argv);
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
	struct stat st;

	log_dir_existed = stat(o->log_dir, &st) == 0;
	if (transcript_init(proxy.base, o->log_dir, o->keep_days) != 0)
		fatal("log directory %s", o->log_dir);
	if (o->events_off)
		return;
	if (o->events == NULL) {
		snprintf(events_default, sizeof(events_default), "%s/events.jsonl", o->log_dir);
		o->events = events_default;
	}
	events_existed = strcmp(o->events, "-") == 0 || stat(o->events, &st) == 0;
	if (events_open(proxy.base, o->events) != 0)
		fatal("events file %s", o->events);
}

/*
 * After dropping root: what the user must write (exit 1 when it can't: nothing would be
 * recorded) and what SIGHUP re-reads (a warning: the reload would fail, not the start).
 */
static void
check_user_access(const struct options *o)
{
	int i;

	if (!o->no_transcripts && access(o->log_dir, W_OK | X_OK) != 0)
		fatal("log directory %s existed and %s cannot write there (smtptap changes the "
		      "owner of a directory it creates, only)",
		      o->log_dir, o->user);
	if (o->events != NULL && strcmp(o->events, "-") != 0 && access(o->events, W_OK) != 0)
		fatal("events file %s existed and %s cannot write it", o->events, o->user);
	for (i = 0; i < o->nrules; i++)
		if (access(o->rules[i], R_OK) != 0)
			log_warn("--rules %s: %s cannot read it, so SIGHUP cannot reload it", o->rules[i],
			         o->user);
	if (o->tls_cert != NULL && access(o->tls_cert, R_OK) != 0)
		log_warn("--tls-cert %s: %s cannot read it, so SIGHUP cannot reload it",
		         o->tls_cert, o->user);
	if (o->tls_key != NULL && access(o->tls_key, R_OK) != 0)
		log_warn("--tls-key %s: %s cannot read it, so SIGHUP cannot reload it", o->tls_key,
		         o->user);
}

/* --user: after the listeners are bound, root goes for good (setgroups, setgid, setuid). */
static void
drop_privileges(const struct options *o)
{
	uid_t uid = (uid_t)o->user_uid;
	gid_t gid = (gid_t)o->user_gid;

	if (o->user == NULL) {
		if (geteuid() == 0)
			log_warnx("running as root: consider --user");
		return;
	}
	if (!log_dir_existed && transcript_chown_dir(uid, gid) != 0)
		fatal("log directory %s: chown to %s", o->log_dir, o->user);
	if (!events_existed && o->events != NULL && chown(o->events, uid, gid) != 0)
		fatal("events file %s: chown to %s", o->events, o->user);
	if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
		fatal("dropping privileges to %s", o->user);
	if (uid != 0 && (setuid(0) == 0 || geteuid() == 0))
		fatalx("dropping privileges to %s: root could be regained", o->user);
	check_user_access(o);
	log_info("running as %s (uid %u)", o->user, (unsigned)uid);
}

/*
 * --upstream one of our own listeners would loop until --max-sessions is full.  A numeric
 * address is checked here; a name when it is resolved, per session (DNS may change, and the
 * start does not wait on a resolver): session_upstream_connected refuses it with 421 4.3.0.
 */
static void
check_upstream_not_us(const struct proxy *px, const struct options *o)
{
	const char *l;

	if (px->upstream_salen == 0)
		return;
	if ((l = listener_serving((const struct sockaddr *)&px->upstream_sa, -1)) == NULL)
		return;
	fprintf(stderr, "smtptap: --upstream %s: that is smtptap's own listener %s\n", o->upstream,
	        l);
	exit(2);
}

/* Start-up lines so that nobody looks in vain for what is not recorded. */
static void
log_not_recorded(const struct options *o)
{
	if (o->no_transcripts || o->events_off)
		log_info("not recording:%s%s", o->no_transcripts ? " no transcripts" : "",
		         o->events_off ? " no events" : "");
	if (o->tls_mode == TLS_PASSTHROUGH)
		log_info("no --tls-cert: a session that uses STARTTLS is relayed unrecorded after it "
		         "(most clients do; --tls-cert records them)");
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
}

/* PITFALLS 20: a server that trusts its own host would relay for every client. */
static void
warn_identity_hidden(const struct options *o)
{
	if (o->forward_client == FORWARD_NONE && addr_host_is_local(o->upstream_host))
		log_warnx("--upstream %s is on this host and --forward-client is none: the server "
		          "sees every client as the proxy's own address (an open relay if it trusts "
		          "local clients, as Postfix's default mynetworks does); use --forward-client "
		          "xclient, proxy-v1 or proxy-v2",
		          o->upstream);
	/* After a client's STARTTLS a passthrough session is a byte relay: nothing is refused. */
	if (o->forward_client == FORWARD_XCLIENT && o->tls_mode == TLS_PASSTHROUGH)
		log_warnx("--forward-client xclient with --tls-mode passthrough: after a client's "
		          "STARTTLS smtptap relays what it can't read, a client's own XCLIENT "
		          "included; the server must not take XCLIENT from the address it forwards "
		          "(Postfix checks smtpd_authorized_xclient_hosts against it and refuses), "
		          "or give --tls-cert so that smtptap terminates TLS");
}

/*
 * --upstream-mark needs CAP_NET_ADMIN for SO_MARK, as the process runs (after --user): tried
 * once here, so that a mark that can't be set stops the start rather than every session.
 */
static void
check_upstream_mark(const struct options *o)
{
	if (reload_mark_settable(o->upstream_mark) != 0)
		fatal("--upstream-mark %u: SO_MARK (needs CAP_NET_ADMIN%s)", o->upstream_mark,
		      o->user != NULL ? ", which --user gives up" : "");
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

/*
 * What the command line asks for when it is not the proxy: a tool (`smtptap show ...`: a
 * word, not an option, names one), --test-rules, --check-config, --check-rules, or a bad
 * option.  Their exit status; -1 when the proxy is to start, with o filled.
 */
static int
main_mode(int argc, char **argv, struct options *o)
{
	char **targv;
	int rc, targc;

	if ((rc = toolconf_args(argc, argv, &targc, &targv)) == 0) {
		rc = tools_main(targc, targv);
		free(targv);
		return rc;
	}
	if (rc > 0)
		return rc;
	if (argc > 1 && strcmp(argv[1], "--test-rules") == 0)
		return rules_trial_main(argc - 1, argv + 1);
	rc = options_build(argc, argv, o, stderr);
	if (o->check_config)
		return checkconf_main(o, rc);
	if (rc > 0)
		return 2;
	if (o->check_rules)
		return check_rules(o);
	return -1;
}

/* The process before it listens: its log, limits, loop, rules, outputs and TLS. */
static void
start_up(int argc, char **argv, struct options *o)
{
	log_init(o->use_syslog, o->verbose);
	log_set_level(o->log_level);
	notify_init();
	reload_init(argc, argv);
	raise_fd_limit(o->max_sessions);
	proxy.opts = o;
	TAILQ_INIT(&proxy.sessions);
	/*
	 * libevent's default clock (the coarse monotonic one) is precise enough for timeouts;
	 * transcript times do not come from it (transcript.c reads the clock).  So no
	 * EVENT_BASE_FLAG_PRECISE_TIMER, whose timerfd costs a system call per loop pass.
	 */
	if ((proxy.base = main_event_base()) == NULL)
		fatalx("event_base_new failed");
	log_set_base(proxy.base);
	upstream_prepare(&proxy, o);
	if ((proxy.rules = load_rules(o, 1)) == NULL)
		fatalx("rule files have errors");
	umask(027);
	open_outputs(o);
	if (tls_init(o) != 0)
		fatalx("TLS set-up failed (certificate, key or CA file)");
}

/* Binds every --listen, --listen-tls and --listen-transparent (as root, before --user). */
static void
listen_all(const struct options *o)
{
	char err[512];
	int i;

	for (i = 0; i < o->nlisten; i++)
		if (listener_add(&proxy, o->listen[i], 0, o->workers, err, sizeof(err)) != 0)
			fatalx("--listen %s: %s", o->listen[i], err);
	for (i = 0; i < o->nlisten_tls; i++)
		if (listener_add(&proxy, o->listen_tls[i], 1, o->workers, err, sizeof(err)) != 0)
			fatalx("--listen-tls %s: %s", o->listen_tls[i], err);
	for (i = 0; i < o->nlisten_transparent; i++)
		if (listener_add_transparent(&proxy, o->listen_transparent[i], o->workers, err,
		                             sizeof(err)) != 0)
			fatalx("--listen-transparent %s: %s", o->listen_transparent[i], err);
}

/* The process after its loop ended: everything start_up and listen_all made, let go. */
static void
shut_down(void)
{
	log_info("exiting");
	pidfile_remove();
	if (proxy.grace_timer != NULL)
		event_free(proxy.grace_timer);
	listener_close_all();
	metrics_free();
	transcript_shutdown();
	tls_cleanup();
	rules_free(proxy.rules);
	events_close();
	log_set_base(NULL);
	event_base_free(proxy.base);
	free(proxy.upstream_text);
}

int
main(int argc, char **argv)
{
	static struct options opts;
	int rc;

	if ((rc = main_mode(argc, argv, &opts)) >= 0)
		return rc;
	start_up(argc, argv, &opts);
	listen_all(&opts);
	check_upstream_not_us(&proxy, &opts);
	warn_identity_hidden(&opts);
	listener_log_all();
	if (opts.metrics != NULL && metrics_init(&proxy, opts.metrics, opts.workers) != 0)
		fatal("--metrics %s", opts.metrics);
	signal(SIGPIPE, SIG_IGN);
	if (opts.pid_file != NULL && pidfile_open(opts.pid_file) != 0)
		fatal("--pid-file %s", opts.pid_file);
	drop_privileges(&opts);
	check_upstream_mark(&opts);
	log_info("smtptap %s relaying to %s", SMTPTAP_VERSION, opts.upstream);
	log_not_recorded(&opts);
	if (opts.workers == 1 || workers_run(&proxy, opts.workers, reload_all) == WORKERS_IN_WORKER)
		serve(&proxy);
	shut_down();
	return 0;
}
