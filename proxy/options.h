#ifndef SMTPTAP_OPTIONS_H
#define SMTPTAP_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct config;

struct sockaddr;

#define OPT_MAX_LISTEN 16
#define OPT_MAX_WORKERS 64

enum record_level { RECORD_BODY, RECORD_HEADERS, RECORD_NONE };
enum bare_newline { BARE_NORMALIZE, BARE_REJECT, BARE_PASS };
enum tls_mode { TLS_PASSTHROUGH, TLS_TERMINATE, TLS_STRIP };
enum upstream_tls { UPSTREAM_STARTTLS, UPSTREAM_REQUIRE, UPSTREAM_IMPLICIT, UPSTREAM_NONE };
enum upstream_verify { VERIFY_NONE, VERIFY_CA, VERIFY_NAME };
enum forward_client { FORWARD_NONE, FORWARD_XCLIENT, FORWARD_PROXY_V1, FORWARD_PROXY_V2 };

#define OPT_MAX_ACCEPT_PROXY 32

/* One --accept-proxy network: family (AF_INET or AF_INET6), address and prefix length. */
struct cidr {
	int family;
	unsigned char addr[16];
	unsigned prefix;
};

/* Everything the command line sets; read-only once the proxy runs. */
struct options {
	const char *listen[OPT_MAX_LISTEN];
	int nlisten;
	const char *listen_tls[OPT_MAX_LISTEN];
	int nlisten_tls;
	const char *listen_transparent[OPT_MAX_LISTEN]; /* --listen-transparent: IP_TRANSPARENT */
	int nlisten_transparent;
	char *upstream_host;
	char *upstream_port;
	const char *upstream; /* as given, HOST:PORT, or "original" */
	/* --upstream original: each session goes where its client was going (REDIRECT's
	 * SO_ORIGINAL_DST, TPROXY's local address); upstream_host and upstream_port are NULL. */
	int upstream_original;
	unsigned upstream_mark; /* --upstream-mark: SO_MARK on upstream sockets (0: none) */
	const char *log_dir;
	const char *events; /* NULL: LOGDIR/events.jsonl, unless events_off */
	int events_off;     /* --events none */
	int no_transcripts; /* --no-transcripts: events (and the policy) only */
	int keep_days;      /* --keep-days: journals kept; -1: all */
	enum record_level record;
	enum bare_newline bare_newline;
	size_t max_line;
	unsigned max_sessions;
	unsigned connect_timeout;
	unsigned idle_timeout;
	unsigned grace;
	unsigned workers; /* processes; 1: this one serves the sessions itself */
	const char *tls_cert;
	const char *tls_key;
	enum tls_mode tls_mode;
	int tls_mode_set;
	enum upstream_tls upstream_tls;
	const char *upstream_ca;
	enum upstream_verify upstream_verify;
	const char *upstream_name;
	int tls_min_version; /* 12 or 13 */
	const char *rules[OPT_MAX_LISTEN * 4];
	int nrules;
	size_t hold_memory;
	size_t max_header;  /* the longest header or content line the rules inspect */
	size_t max_message; /* the largest message taken (RFC 1870 size) */
	const char *user;
	unsigned user_uid, user_gid; /* --user's, looked up before anything is bound */
	int check_rules;             /* --check-rules: check the rule files and exit */
	int log_failure_tempfail; /* --on-log-failure tempfail */
	int use_syslog;
	int verbose;
	char hostname[256];
	char helo_name[256];          /* --helo-name: our EHLO to the server */
	enum forward_client forward_client;
	struct cidr accept_proxy[OPT_MAX_ACCEPT_PROXY]; /* --accept-proxy: balancers */
	int naccept_proxy;
	/* Service (issue 18): configuration file, check mode, pid file, log level. */
	const char *config_file; /* --config / -c */
	int check_config;        /* --check-config */
	const char *pid_file;
	int log_level;       /* enum log_level (logs/log.h); -v is debug */
	struct config *config; /* the file's settings: the strings above point into it */
	const char *metrics;   /* --metrics ADDR:PORT: Prometheus text at /metrics; NULL: off */
};

/* Fills opts from argv; on a bad option prints one line naming it and exits 2. */
void options_parse(int argc, char **argv, struct options *opts);

/*
 * As options_parse, without exiting: --config's file first, then argv (which overrides it:
 * a single value replaces the file's, and a repeatable option given on the command line
 * replaces the file's whole list).  Every problem is written to err, a file's as
 * `FILE:LINE: message`; returns how many there were.  --help and --version still exit.
 */
int options_build(int argc, char **argv, struct options *opts, FILE *err);
/*
 * options_build for a process that runs already (SIGHUP): --user is not looked up, so that
 * nothing exits; user_uid and user_gid stay 0 (reload.c looks a changed name up itself).
 */
int options_rebuild(int argc, char **argv, struct options *opts, FILE *err);
/* Frees what options_build allocated (not opts itself). */
void options_free(struct options *opts);


/* Whether sa (a client's address) is in one of the --accept-proxy networks. */
int options_accept_proxy_from(const struct options *o, const struct sockaddr *sa);

#endif
