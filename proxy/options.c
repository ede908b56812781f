/* Command-line options: getopt_long, strict values, exit 2 with one line on any mistake. */
#include "proxy/options.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <event2/event.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <pcre2.h>

enum {
	OPT_LISTEN = 256,
	OPT_UPSTREAM,
	OPT_LOG_DIR,
	OPT_EVENTS,
	OPT_RECORD,
	OPT_MAX_LINE,
	OPT_MAX_SESSIONS,
	OPT_CONNECT_TIMEOUT,
	OPT_IDLE_TIMEOUT,
	OPT_GRACE,
	OPT_SYSLOG,
	OPT_NO_TRANSCRIPTS,
	OPT_LISTEN_TLS,
	OPT_TLS_CERT,
	OPT_TLS_KEY,
	OPT_TLS_MODE,
	OPT_UPSTREAM_TLS,
	OPT_UPSTREAM_CA,
	OPT_UPSTREAM_VERIFY,
	OPT_UPSTREAM_NAME,
	OPT_TLS_MIN_VERSION,
	OPT_BARE_NEWLINE,
	OPT_USER,
	OPT_RULES,
	OPT_HOLD_MEMORY,
	OPT_ON_LOG_FAILURE,
	OPT_WORKERS,
	OPT_HELP,
	OPT_VERSION,
	OPT_CHECK_RULES,
};

static const struct option long_options[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"upstream", required_argument, NULL, OPT_UPSTREAM},
    {"log-dir", required_argument, NULL, OPT_LOG_DIR},
    {"events", required_argument, NULL, OPT_EVENTS},
    {"record", required_argument, NULL, OPT_RECORD},
    {"no-transcripts", no_argument, NULL, OPT_NO_TRANSCRIPTS},
    {"max-line", required_argument, NULL, OPT_MAX_LINE},
    {"max-sessions", required_argument, NULL, OPT_MAX_SESSIONS},
    {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"grace", required_argument, NULL, OPT_GRACE},
    {"syslog", no_argument, NULL, OPT_SYSLOG},
    {"listen-tls", required_argument, NULL, OPT_LISTEN_TLS},
    {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
    {"tls-key", required_argument, NULL, OPT_TLS_KEY},
    {"tls-mode", required_argument, NULL, OPT_TLS_MODE},
    {"upstream-tls", required_argument, NULL, OPT_UPSTREAM_TLS},
    {"upstream-ca", required_argument, NULL, OPT_UPSTREAM_CA},
    {"upstream-verify", required_argument, NULL, OPT_UPSTREAM_VERIFY},
    {"upstream-name", required_argument, NULL, OPT_UPSTREAM_NAME},
    {"tls-min-version", required_argument, NULL, OPT_TLS_MIN_VERSION},
    {"bare-newline", required_argument, NULL, OPT_BARE_NEWLINE},
    {"user", required_argument, NULL, OPT_USER},
    {"rules", required_argument, NULL, OPT_RULES},
    {"hold-memory", required_argument, NULL, OPT_HOLD_MEMORY},
    {"on-log-failure", required_argument, NULL, OPT_ON_LOG_FAILURE},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, OPT_HELP},
    {"check-rules", no_argument, NULL, OPT_CHECK_RULES},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static const char usage_text[] =
    "usage: smtptap --upstream HOST:PORT [options]\n"
    "  --listen ADDR:PORT       listen here (repeatable; default 127.0.0.1:2525)\n"
    "  --upstream HOST:PORT     the real SMTP server\n"
    "  --log-dir DIR            transcripts (default ./smtptap-logs)\n"
    "  --events FILE|none       JSON line per session, - for stdout (default DIR/events.jsonl)\n"
    "  --record body|headers|none  message content in transcripts (default body)\n"
    "  --no-transcripts         write no transcripts (events and rules still apply)\n"
    "  --bare-newline normalize|reject|pass  bare CR or LF in a message (default normalize)\n"
    "  --max-line BYTES         longest line held (default 65536)\n"
    "  --max-sessions N         concurrent sessions (default 1000)\n"
    "  --connect-timeout SECS   upstream connect limit (default 30)\n"
    "  --idle-timeout SECS      idle session limit (default 300)\n"
    "  --grace SECS             time sessions get to finish on SIGTERM (default 30)\n"
    "  --workers N|auto         worker processes sharing the listeners (default 1;\n"
    "                           auto: one per CPU)\n"
    "  --listen-tls ADDR:PORT   implicit-TLS listener, SMTPS (repeatable)\n"
    "  --tls-cert FILE --tls-key FILE  certificate (PEM, chain allowed) and key\n"
    "  --tls-mode terminate|passthrough|strip  client STARTTLS handling\n"
    "                           (default terminate with a certificate, else passthrough)\n"
    "  --upstream-tls starttls|require|implicit|none  TLS to the server (default starttls)\n"
    "  --upstream-ca FILE       CA file for the server's certificate (default system store)\n"
    "  --upstream-verify none|ca|name  server certificate check (default name)\n"
    "  --upstream-name NAME     name checked and sent as SNI (default the --upstream host)\n"
    "  --tls-min-version 1.2|1.3  oldest TLS accepted on both legs (default 1.2)\n"
    "  --rules FILE             PCRE2 filter rules (repeatable, read in order)\n"
    "  --hold-memory BYTES      a held message's memory before a temp file (default 1048576)\n"
    "  --check-rules FILE...    check rule files and exit (1 on any error)\n"
    "  --test-rules FILE... --transcript T  show what the rules would do to a transcript\n"
    "  --user NAME              drop root for NAME once the listeners are bound\n"
    "  --on-log-failure continue|tempfail  when transcripts can't be written: relay\n"
    "                           unrecorded, or answer new sessions 451 4.3.0 (default continue)\n"
    "  --syslog                 log to syslog instead of stderr\n"
    "  -v, --verbose            debug logging\n"
    "  -h, --help, --version\n";

static void __attribute__((noreturn))
options_die(const char *opt, const char *what, const char *value)
{
	if (value != NULL)
		fprintf(stderr, "smtptap: %s: %s '%s'\n", opt, what, value);
	else
		fprintf(stderr, "smtptap: %s: %s\n", opt, what);
	exit(2);
}

/* Parses a whole non-negative decimal number within [min, max]. */
static unsigned long long
options_number(const char *opt, const char *what, const char *s, unsigned long long min,
               unsigned long long max)
{
	unsigned long long v;
	char *end;

	errno = 0;
	if (s[0] < '0' || s[0] > '9')
		options_die(opt, what, s);
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		options_die(opt, what, s);
	return v;
}

/* --workers: a count, or "auto" for one per CPU online (as nginx's worker_processes). */
static unsigned
options_workers(const char *arg)
{
	long cpus;

	if (strcmp(arg, "auto") != 0)
		return (unsigned)options_number("--workers", "invalid count (1 to 64, or auto)",
		                                arg, 1, OPT_MAX_WORKERS);
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus < 1)
		return 1;
	return cpus > OPT_MAX_WORKERS ? OPT_MAX_WORKERS : (unsigned)cpus;
}

int
options_split_hostport(const char *s, char **host, char **port, const char **why)
{
	const char *colon, *end;

	if (s[0] == '[') {
		if ((end = strchr(s, ']')) == NULL || end[1] != ':') {
			*why = "expected [ADDRESS]:PORT";
			return -1;
		}
		*host = strndup(s + 1, (size_t)(end - s - 1));
		colon = end + 1;
	} else {
		if ((colon = strrchr(s, ':')) == NULL || colon == s) {
			*why = "expected HOST:PORT";
			return -1;
		}
		if (memchr(s, ':', (size_t)(colon - s)) != NULL) {
			*why = "an IPv6 address needs brackets: [ADDRESS]:PORT";
			return -1;
		}
		*host = strndup(s, (size_t)(colon - s));
	}
	if (colon[1] == '\0' || strspn(colon + 1, "0123456789") != strlen(colon + 1) ||
	    atol(colon + 1) < 1 || atol(colon + 1) > 65535) {
		free(*host);
		*why = "invalid port";
		return -1;
	}
	*port = strdup(colon + 1);
	return 0;
}

static void
options_defaults(struct options *o)
{
	memset(o, 0, sizeof(*o));
	o->log_dir = "smtptap-logs";
	o->record = RECORD_BODY;
	o->max_line = 65536;
	o->max_sessions = 1000;
	o->connect_timeout = 30;
	o->idle_timeout = 300;
	o->grace = 30;
	o->workers = 1;
	o->upstream_verify = VERIFY_NAME;
	o->hold_memory = 1048576;
	o->upstream_tls = UPSTREAM_STARTTLS;
	o->tls_min_version = 12;
	if (gethostname(o->hostname, sizeof(o->hostname) - 1) != 0 || o->hostname[0] == '\0')
		strcpy(o->hostname, "smtptap");
}

/* Picks one of words[] (NULL-terminated); its index. */
static int
options_word(const char *opt, const char *arg, const char *const *words, const char *expected)
{
	int i;

	for (i = 0; words[i] != NULL; i++)
		if (strcmp(arg, words[i]) == 0)
			return i;
	options_die(opt, expected, arg);
}

static void
options_tls(struct options *o, int ch, const char *arg)
{
	static const char *const modes[] = {"passthrough", "terminate", "strip", NULL};
	static const char *const up[] = {"starttls", "require", "implicit", "none", NULL};
	static const char *const verify[] = {"none", "ca", "name", NULL};
	static const char *const versions[] = {"1.2", "1.3", NULL};
	static const char *const bare[] = {"normalize", "reject", "pass", NULL};
	static const char *const logfail[] = {"continue", "tempfail", NULL};

	switch (ch) {
	case OPT_TLS_CERT:
		o->tls_cert = arg;
		break;
	case OPT_TLS_KEY:
		o->tls_key = arg;
		break;
	case OPT_TLS_MODE:
		o->tls_mode = options_word("--tls-mode", arg, modes,
		                           "expected terminate, passthrough or strip, not");
		o->tls_mode_set = 1;
		break;
	case OPT_UPSTREAM_TLS:
		o->upstream_tls = options_word("--upstream-tls", arg, up,
		                               "expected starttls, require, implicit or none, not");
		break;
	case OPT_UPSTREAM_CA:
		o->upstream_ca = arg;
		break;
	case OPT_UPSTREAM_VERIFY:
		o->upstream_verify = options_word("--upstream-verify", arg, verify,
		                                  "expected none, ca or name, not");
		break;
	case OPT_UPSTREAM_NAME:
		o->upstream_name = arg;
		break;
	case OPT_RULES:
		if (o->nrules == (int)(sizeof(o->rules) / sizeof(o->rules[0])))
			options_die("--rules", "too many rule files", NULL);
		o->rules[o->nrules++] = arg;
		break;
	case OPT_HOLD_MEMORY:
		o->hold_memory =
		    options_number("--hold-memory", "invalid size (bytes, 4096 to 1073741824)", arg,
		                   4096, 1073741824);
		break;
	case OPT_USER:
		if (arg[0] == '\0')
			options_die("--user", "empty user name", NULL);
		o->user = arg;
		break;
	case OPT_ON_LOG_FAILURE:
		o->log_failure_tempfail = options_word("--on-log-failure", arg, logfail,
		                                       "expected continue or tempfail, not");
		break;
	case OPT_BARE_NEWLINE:
		o->bare_newline = options_word("--bare-newline", arg, bare,
		                               "expected normalize, reject or pass, not");
		break;
	case OPT_TLS_MIN_VERSION:
		o->tls_min_version = options_word("--tls-min-version", arg, versions,
		                                  "expected 1.2 or 1.3, not") == 0
		                         ? 12
		                         : 13;
		break;
	}
}

/* TLS options that only make sense together. */
static void
options_check_tls(struct options *o)
{
	if ((o->tls_cert == NULL) != (o->tls_key == NULL))
		options_die(o->tls_cert ? "--tls-key" : "--tls-cert",
		            "needed too (a certificate and its key go together)", NULL);
	if (!o->tls_mode_set)
		o->tls_mode = o->tls_cert != NULL ? TLS_TERMINATE : TLS_PASSTHROUGH;
	if (o->tls_mode == TLS_TERMINATE && o->tls_cert == NULL)
		options_die("--tls-mode", "terminate needs --tls-cert and --tls-key", NULL);
	if (o->nlisten_tls > 0 && o->tls_cert == NULL)
		options_die("--listen-tls", "needs --tls-cert and --tls-key", NULL);
	if (o->upstream_name == NULL)
		o->upstream_name = o->upstream_host;
}

/* mimalloc's, when it is the allocator (weak: absent from a MALLOC=libc build). */
int mi_version(void) __attribute__((weak));

/*
 * The version, then what it runs on, as `nginx -V` and `haproxy -vv` tell it: a TLS or
 * pattern problem report needs the library versions more than ours.
 */
static void
print_version(void)
{
	char pcre[32] = "?";
	int mi = mi_version != NULL ? mi_version() : 0;

	pcre2_config(PCRE2_CONFIG_VERSION, pcre);
	printf("smtptap %s\n", SMTPTAP_VERSION);
	printf("libevent %s, %s, PCRE2 %s, jansson %s\n", event_get_version(),
	       OpenSSL_version(OPENSSL_VERSION), pcre, jansson_version_str());
	if (mi > 0)
		printf("allocator: mimalloc %d.%d.%d\n", mi / 100, mi / 10 % 10, mi % 10);
	else
		printf("allocator: the C library's malloc\n");
}

static void
options_one(struct options *o, int ch, const char *arg)
{
	const char *why;
	char *h, *p;

	switch (ch) {
	case OPT_LISTEN:
		if (o->nlisten == OPT_MAX_LISTEN)
			options_die("--listen", "too many listeners", NULL);
		if (options_split_hostport(arg, &h, &p, &why) != 0)
			options_die("--listen", why, arg);
		free(h);
		free(p);
		o->listen[o->nlisten++] = arg;
		break;
	case OPT_UPSTREAM:
		if (options_split_hostport(arg, &o->upstream_host, &o->upstream_port, &why) != 0)
			options_die("--upstream", why, arg);
		o->upstream = arg;
		break;
	case OPT_LOG_DIR:
		if (arg[0] == '\0')
			options_die("--log-dir", "empty directory name", NULL);
		o->log_dir = arg;
		break;
	case OPT_EVENTS:
		if (arg[0] == '\0')
			options_die("--events", "empty file name", NULL);
		o->events_off = strcmp(arg, "none") == 0;
		o->events = o->events_off ? NULL : arg;
		break;
	case OPT_RECORD:
		if (strcmp(arg, "body") == 0)
			o->record = RECORD_BODY;
		else if (strcmp(arg, "headers") == 0)
			o->record = RECORD_HEADERS;
		else if (strcmp(arg, "none") == 0)
			o->record = RECORD_NONE;
		else
			options_die("--record", "expected body, headers or none, not", arg);
		break;
	case OPT_NO_TRANSCRIPTS:
		o->no_transcripts = 1;
		break;
	case OPT_MAX_LINE:
		o->max_line = options_number("--max-line", "invalid size (bytes, 1024 to 16777216)",
		                             arg, 1024, 16777216);
		break;
	case OPT_MAX_SESSIONS:
		o->max_sessions = options_number("--max-sessions", "invalid count (1 to 1000000)",
		                                 arg, 1, 1000000);
		break;
	case OPT_CONNECT_TIMEOUT:
		o->connect_timeout = options_number(
		    "--connect-timeout", "invalid duration (seconds, 1 to 86400)", arg, 1, 86400);
		break;
	case OPT_IDLE_TIMEOUT:
		o->idle_timeout = options_number(
		    "--idle-timeout", "invalid duration (seconds, 1 to 86400)", arg, 1, 86400);
		break;
	case OPT_GRACE:
		o->grace = options_number("--grace", "invalid duration (seconds, 0 to 86400)", arg,
		                          0, 86400);
		break;
	case OPT_SYSLOG:
		o->use_syslog = 1;
		break;
	case OPT_WORKERS:
		o->workers = options_workers(arg);
		break;
	case OPT_LISTEN_TLS:
		if (o->nlisten_tls == OPT_MAX_LISTEN)
			options_die("--listen-tls", "too many listeners", NULL);
		if (options_split_hostport(arg, &h, &p, &why) != 0)
			options_die("--listen-tls", why, arg);
		free(h);
		free(p);
		o->listen_tls[o->nlisten_tls++] = arg;
		break;
	default:
		options_tls(o, ch, arg);
		break;
	case 'v':
		o->verbose = 1;
		break;
	case OPT_CHECK_RULES:
		o->check_rules = 1;
		break;
	case 'h':
	case OPT_HELP:
		fputs(usage_text, stdout);
		exit(0);
	case OPT_VERSION:
		print_version();
		exit(0);
	}
}

/* Edit distance between a and the first n octets of b (both short: option names). */
static size_t
options_distance(const char *a, const char *b, size_t n)
{
	size_t la = strlen(a), row[64], i, j, diag, up;

	if (la >= sizeof(row) / sizeof(row[0]) || n >= sizeof(row) / sizeof(row[0]))
		return SIZE_MAX;
	for (j = 0; j <= n; j++)
		row[j] = j;
	for (i = 1; i <= la; i++) {
		diag = row[0];
		row[0] = i;
		for (j = 1; j <= n; j++) {
			up = row[j];
			row[j] = a[i - 1] == b[j - 1] ? diag : 1 + (diag < up ? diag : up);
			if (row[j - 1] + 1 < row[j])
				row[j] = row[j - 1] + 1;
			diag = up;
		}
	}
	return row[n];
}

/* An unknown long option: one line, with the closest known one when it is close (git's way). */
static void __attribute__((noreturn))
options_unknown(const char *arg)
{
	const char *name = arg + 2, *eq = strchr(name, '='), *best = NULL;
	size_t n = eq != NULL ? (size_t)(eq - name) : strlen(name), d, best_d = SIZE_MAX;
	const struct option *opt;
	char hint[128];
	int prefixed = 0;

	for (opt = long_options; opt->name != NULL; opt++)
		prefixed += strncmp(opt->name, name, n) == 0;
	if (prefixed > 1 && n > 0)
		options_die(arg, "ambiguous option (more than one starts so)", NULL);
	for (opt = long_options; opt->name != NULL; opt++) {
		if (strlen(opt->name) == n && strncmp(opt->name, name, n) == 0) {
			options_die(arg, opt->has_arg == no_argument ? "takes no value"
			                                             : "unexpected value",
			            NULL);
		}
		if ((d = options_distance(opt->name, name, n)) < best_d) {
			best_d = d;
			best = opt->name;
		}
	}
	/* Up to a third of the name mistyped, and at least one slip allowed. */
	if (best != NULL && best_d <= (n / 3 > 1 ? n / 3 : 1) + (n > 4)) {
		snprintf(hint, sizeof(hint), "unknown option (did you mean --%s?)", best);
		options_die(arg, hint, NULL);
	}
	options_die(arg, "unknown option (smtptap --help lists them)", NULL);
}

/* --user: looked up now, so that a wrong name stops smtptap before it binds anything. */
static void
options_user(struct options *o)
{
	struct passwd *pw;

	if (o->user == NULL)
		return;
	errno = 0;
	if ((pw = getpwnam(o->user)) == NULL) { /* a start-up failure (1), not a bad value (2) */
		fprintf(stderr, "smtptap: --user %s: %s\n", o->user,
		        errno != 0 ? strerror(errno) : "no such user");
		exit(1);
	}
	o->user_uid = pw->pw_uid;
	o->user_gid = pw->pw_gid;
}

/* --check-rules, wherever it stands: the rule files are the --rules ones and the arguments. */
static void
options_check_mode(int argc, char **argv, struct options *o)
{
	for (; optind < argc; optind++) {
		if (o->nrules == (int)(sizeof(o->rules) / sizeof(o->rules[0])))
			options_die("--check-rules", "too many rule files", NULL);
		o->rules[o->nrules++] = argv[optind];
	}
}

void
options_parse(int argc, char **argv, struct options *o)
{
	int ch;

	options_defaults(o);
	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":vh", long_options, NULL)) != -1) {
		if (ch == '?' && strncmp(argv[optind - 1], "--", 2) == 0)
			options_unknown(argv[optind - 1]);
		if (ch == '?')
			options_die(optopt ? (char[]){'-', (char)optopt, '\0'} : argv[optind - 1],
			            "unknown option", NULL);
		if (ch == ':')
			options_die(argv[optind - 1], "missing value", NULL);
		options_one(o, ch, optarg);
	}
	if (o->check_rules) {
		options_check_mode(argc, argv, o);
		return;
	}
	if (optind < argc)
		options_die(argv[optind], "unexpected argument", NULL);
	options_user(o);
	if (o->upstream == NULL)
		options_die("--upstream", "required (HOST:PORT of the real server)", NULL);
	options_check_tls(o);
	if (o->no_transcripts && o->log_failure_tempfail)
		options_die("--on-log-failure", "tempfail protects transcripts, and --no-transcripts "
		            "writes none", NULL);
	if (o->nlisten == 0 && o->nlisten_tls == 0)
		o->listen[o->nlisten++] = "127.0.0.1:2525";
}
