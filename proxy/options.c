/* Command-line options: getopt_long, strict values, exit 2 with one line on any mistake. */
#include "proxy/options.h"

#include "smtp/hostport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <limits.h>
#include <setjmp.h>
#include <stddef.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <netinet/in.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <event2/event.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <pcre2.h>

#include "logs/log.h"
#include "proxy/config.h"

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
	OPT_MAX_HEADER,
	OPT_MAX_MESSAGE,
	OPT_ON_LOG_FAILURE,
	OPT_WORKERS,
	OPT_HELO_NAME,
	OPT_FORWARD_CLIENT,
	OPT_ACCEPT_PROXY,
	OPT_LISTEN_TRANSPARENT,
	OPT_UPSTREAM_MARK,
	OPT_HELP,
	OPT_VERSION,
	OPT_CHECK_CONFIG,
	OPT_PID_FILE,
	OPT_LOG_LEVEL,
	OPT_CHECK_RULES,
	OPT_METRICS,
	OPT_KEEP_DAYS,
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
    {"max-header", required_argument, NULL, OPT_MAX_HEADER},
    {"max-message", required_argument, NULL, OPT_MAX_MESSAGE},
    {"on-log-failure", required_argument, NULL, OPT_ON_LOG_FAILURE},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"helo-name", required_argument, NULL, OPT_HELO_NAME},
    {"forward-client", required_argument, NULL, OPT_FORWARD_CLIENT},
    {"accept-proxy", required_argument, NULL, OPT_ACCEPT_PROXY},
    {"listen-transparent", required_argument, NULL, OPT_LISTEN_TRANSPARENT},
    {"upstream-mark", required_argument, NULL, OPT_UPSTREAM_MARK},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, OPT_HELP},
    {"check-rules", no_argument, NULL, OPT_CHECK_RULES},
    {"version", no_argument, NULL, OPT_VERSION},
    {"config", required_argument, NULL, 'c'},
    {"check-config", no_argument, NULL, OPT_CHECK_CONFIG},
    {"pid-file", required_argument, NULL, OPT_PID_FILE},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"keep-days", required_argument, NULL, OPT_KEEP_DAYS},
    {NULL, 0, NULL, 0},
};

static const char usage_text[] =
    "usage: smtptap --upstream HOST:PORT [options]\n"
    "  --listen ADDR:PORT       listen here (repeatable; default 127.0.0.1:2525)\n"
    "  --upstream HOST:PORT|original  the real SMTP server (original: where each client\n"
    "                           was going, for a transparent interceptor)\n"
    "  --log-dir DIR            the journal, a file a day (default ./smtptap-logs)\n"
    "  --keep-days N            remove journals older than N days (default keep all)\n"
    "  --events FILE|none       JSON line per session, - for stdout (default DIR/events.jsonl)\n"
    "  --record body|headers|none  message content in transcripts (default body)\n"
    "  --no-transcripts         write no transcripts (events and rules still apply)\n"
    "  --bare-newline normalize|reject|pass  bare CR or LF in a message (default normalize)\n"
    "  --max-line BYTES         longest line held (default 65536)\n"
    "  --max-header BYTES       longest header (or content line) the rules inspect; a\n"
    "                           message with a longer one is refused 552 (default 102400)\n"
    "  --max-message BYTES      largest message taken, beyond it 552 (default 52428800)\n"
    "  --max-sessions N         concurrent sessions (default 1000)\n"
    "  --connect-timeout SECS   upstream connect limit (default 30)\n"
    "  --idle-timeout SECS      idle session limit (default 300)\n"
    "  --grace SECS             time sessions get to finish on SIGTERM (default 30)\n"
    "  --workers N|auto         worker processes sharing the listeners (default auto:\n"
    "                           one per CPU online)\n"
    "  --listen-tls ADDR:PORT   implicit-TLS listener, SMTPS (repeatable)\n"
    "  --tls-cert FILE --tls-key FILE  certificate (PEM, chain allowed) and key\n"
    "  --tls-mode terminate|passthrough|strip  client STARTTLS handling\n"
    "                           (default terminate with a certificate, else passthrough)\n"
    "  --upstream-tls starttls|require|implicit|none  TLS to the server (default starttls)\n"
    "  --upstream-ca FILE       CA file for the server's certificate (default system store)\n"
    "  --upstream-verify none|ca|name  server certificate check (default name)\n"
    "  --upstream-name NAME     name checked and sent as SNI (default the --upstream host)\n"
    "  --tls-min-version 1.2|1.3  oldest TLS accepted on both legs (default 1.2)\n"
    "  --helo-name NAME         our EHLO to the server (default this host's full name)\n"
    "  --forward-client none|xclient|proxy-v1|proxy-v2  tell the server the client's\n"
    "                           address (default none: it sees the proxy's)\n"
    "  --accept-proxy CIDR[,CIDR...]  balancers whose connections start with a PROXY\n"
    "                           header (v1 or v2) naming the client\n"
    "  --listen-transparent ADDR:PORT  TPROXY listener (IP_TRANSPARENT; repeatable)\n"
    "  --upstream-mark N        SO_MARK on upstream connections (firewall exemption)\n"
    "  --rules FILE             PCRE2 filter rules (repeatable, read in order)\n"
    "  --hold-memory BYTES      a held message's memory before a temp file (default 1048576)\n"
    "  --check-rules FILE...    check rule files and exit (1 on any error)\n"
    "  --test-rules FILE... --transcript T  show what the rules would do to a transcript\n"
    "  --user NAME              drop root for NAME once the listeners are bound\n"
    "  --on-log-failure continue|tempfail  when transcripts can't be written: relay\n"
    "                           unrecorded, or answer new sessions 451 4.3.0 (default continue)\n"
    "  --syslog                 log to syslog instead of stderr\n"
    "  -v, --verbose            debug logging\n"
    "  -c, --config FILE        settings from FILE, one `name value` a line (the command\n"
    "                           line overrides it)\n"
    "  --check-config [-c FILE] [options]  check everything and exit (1 on any problem)\n"
    "  --pid-file FILE          the process id, written once started, removed at exit\n"
    "  --log-level error|warning|info|debug  the program's own log (default info)\n"
    "  --metrics ADDR:PORT      Prometheus metrics at http://ADDR:PORT/metrics (default off)\n"
    "  -h, --help, --version\n";

static FILE *options_err;         /* where problems go (options_build's err) */
static const char *options_where; /* "FILE:LINE" of the file's setting being applied */
static jmp_buf *options_jmp;      /* set: a problem returns there instead of exiting */

static void __attribute__((noreturn))
options_die(const char *opt, const char *what, const char *value)
{
	FILE *err = options_err != NULL ? options_err : stderr;

	fprintf(err, "%s: ", options_where != NULL ? options_where : "smtptap");
	if (value != NULL)
		fprintf(err, "%s: %s '%s'\n", opt, what, value);
	else
		fprintf(err, "%s: %s\n", opt, what);
	if (options_jmp != NULL)
		longjmp(*options_jmp, 1);
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
	o->workers = options_workers("auto");
	o->keep_days = -1;
	o->upstream_verify = VERIFY_NAME;
	o->hold_memory = 1048576;
	o->max_header = 102400;
	o->max_message = 52428800;
	o->upstream_tls = UPSTREAM_STARTTLS;
	o->tls_min_version = 12;
	o->log_level = LOG_LEVEL_INFO;
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

/*
 * --upstream original: the server's name is not known, so a name check has nothing to check
 * against.  Rather than check less than was asked (the default is name), smtptap refuses to
 * start unless --upstream-name gives the name, or --upstream-verify says ca or none; this only
 * where the proxy itself secures the upstream leg.  --upstream-mark needs a socket of a known
 * family before the connection: a numeric --upstream or original, not a name.
 */
static void
options_check_original(const struct options *o)
{
	int own_tls = o->upstream_tls == UPSTREAM_IMPLICIT || o->upstream_tls == UPSTREAM_REQUIRE ||
	              (o->upstream_tls == UPSTREAM_STARTTLS && o->tls_mode != TLS_PASSTHROUGH);
	unsigned char buf[16];

	if (o->upstream_original && own_tls && o->upstream_verify == VERIFY_NAME &&
	    o->upstream_name == NULL)
		options_die(
		    "--upstream-verify",
		    "name under --upstream original needs --upstream-name "
		    "(the server's name is unknown); or choose --upstream-verify ca or none",
		    NULL);
	if (o->upstream_mark != 0 && !o->upstream_original && o->upstream_host != NULL &&
	    inet_pton(AF_INET, o->upstream_host, buf) != 1 &&
	    inet_pton(AF_INET6, o->upstream_host, buf) != 1)
		options_die("--upstream-mark",
		            "needs a numeric --upstream address or original, not", o->upstream);
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

/* One CIDR of --accept-proxy: "192.0.2.0/24", "2001:db8::/32", or an address alone. */
static void
options_cidr(struct options *o, const char *s, size_t n)
{
	char buf[INET6_ADDRSTRLEN + 8], *slash;
	struct cidr *c;
	unsigned max;

	if (o->naccept_proxy == OPT_MAX_ACCEPT_PROXY)
		options_die("--accept-proxy", "too many networks", NULL);
	if (n == 0 || n >= sizeof(buf))
		options_die("--accept-proxy", "expected ADDRESS[/PREFIX], not", s);
	memcpy(buf, s, n);
	buf[n] = '\0';
	c = &o->accept_proxy[o->naccept_proxy];
	if ((slash = strchr(buf, '/')) != NULL)
		*slash++ = '\0';
	if (inet_pton(AF_INET, buf, c->addr) == 1)
		c->family = AF_INET, max = 32;
	else if (inet_pton(AF_INET6, buf, c->addr) == 1)
		c->family = AF_INET6, max = 128;
	else
		options_die("--accept-proxy", "expected a numeric ADDRESS[/PREFIX], not", buf);
	c->prefix = slash != NULL ? (unsigned)options_number("--accept-proxy",
	                                                     "invalid prefix length", slash, 0, max)
	                          : max;
	o->naccept_proxy++;
}

/* Whether the first bits of two addresses agree. */
static int
options_prefix_match(const unsigned char *a, const unsigned char *b, unsigned bits)
{
	unsigned whole = bits / 8, rest = bits % 8;

	if (memcmp(a, b, whole) != 0)
		return 0;
	return rest == 0 || ((a[whole] ^ b[whole]) & (0xff00 >> rest) & 0xff) == 0;
}

int
options_accept_proxy_from(const struct options *o, const struct sockaddr *sa)
{
	const unsigned char *a;
	int family = sa->sa_family, i;

	if (family == AF_INET)
		a = (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
	else if (family == AF_INET6)
		a = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
	else
		return 0;
	if (family == AF_INET6 && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)(const void *)a)) {
		family = AF_INET; /* a dual-stack listener's IPv4 client */
		a += 12;
	}
	for (i = 0; i < o->naccept_proxy; i++)
		if (o->accept_proxy[i].family == family &&
		    options_prefix_match(a, o->accept_proxy[i].addr, o->accept_proxy[i].prefix))
			return 1;
	return 0;
}

/* Postfix's smtp_helo_name default: this host's fully qualified name, else its short name. */
static void
options_default_helo(struct options *o)
{
	struct addrinfo hints, *res = NULL;

	if (o->helo_name[0] != '\0')
		return;
	snprintf(o->helo_name, sizeof(o->helo_name), "%s", o->hostname);
	memset(&hints, 0, sizeof(hints));
	hints.ai_flags = AI_CANONNAME;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(o->hostname, NULL, &hints, &res) == 0 && res != NULL &&
	    res->ai_canonname != NULL && res->ai_canonname[0] != '\0' &&
	    strlen(res->ai_canonname) < sizeof(o->helo_name))
		snprintf(o->helo_name, sizeof(o->helo_name), "%s", res->ai_canonname);
	if (res != NULL)
		freeaddrinfo(res);
}

/*
 * The option table (tmux's options_table, HAProxy's keyword lists): one row an option, saying
 * how its value is checked and where it goes.  A row's setter reads the rest of the row.
 */
struct opt_row;
typedef void opt_set_fn(struct options *, const struct opt_row *, const char *);

struct opt_row {
	int code; /* getopt_long's value (long_options[]) */
	opt_set_fn *set;
	const char *name;            /* as a problem names it */
	const char *what;            /* the problem with a bad value (or a full list) */
	size_t field;                /* offsetof the value in struct options */
	unsigned long long min, max; /* a number's range; a list's capacity (max) */
	const char *const *words;    /* a word's choices, in the order of its enum */
	size_t count;                /* offsetof a list's length; 0: not a list */
};

#define AT(f) offsetof(struct options, f)
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define CAPACITY(f) NELEM(((struct options *)0)->f)
#define FIELD(o, off, type) ((type *)(void *)((char *)(o) + (off)))

/* Word options store their choice's index through an int: their enums are int-sized. */
_Static_assert(sizeof(enum record_level) == sizeof(int) && sizeof(enum tls_mode) == sizeof(int) &&
                   sizeof(enum bare_newline) == sizeof(int) &&
                   sizeof(enum upstream_tls) == sizeof(int) &&
                   sizeof(enum upstream_verify) == sizeof(int) &&
                   sizeof(enum forward_client) == sizeof(int),
               "a word option's enum is stored as an int");

static void
options_set_flag(struct options *o, const struct opt_row *row, const char *arg)
{
	(void)arg;
	*FIELD(o, row->field, int) = 1;
}

/* A file or a name; what, when set, is the problem with an empty one. */
static void
options_set_string(struct options *o, const struct opt_row *row, const char *arg)
{
	if (row->what != NULL && arg[0] == '\0')
		options_die(row->name, row->what, NULL);
	*FIELD(o, row->field, const char *) = arg;
}

static void
options_set_size(struct options *o, const struct opt_row *row, const char *arg)
{
	*FIELD(o, row->field, size_t) =
	    options_number(row->name, row->what, arg, row->min, row->max);
}

static void
options_set_unsigned(struct options *o, const struct opt_row *row, const char *arg)
{
	*FIELD(o, row->field, unsigned) =
	    (unsigned)options_number(row->name, row->what, arg, row->min, row->max);
}

static void
options_set_int(struct options *o, const struct opt_row *row, const char *arg)
{
	*FIELD(o, row->field, int) =
	    (int)options_number(row->name, row->what, arg, row->min, row->max);
}

static void
options_set_word(struct options *o, const struct opt_row *row, const char *arg)
{
	*FIELD(o, row->field, int) = options_word(row->name, arg, row->words, row->what);
}

/* Adds arg to a repeatable option's list, of cap entries at most. */
static void
options_list_add(const char **list, int *n, size_t cap, const char *opt, const char *full,
                 const char *arg)
{
	if ((size_t)*n == cap)
		options_die(opt, full, NULL);
	list[(*n)++] = arg;
}

static void
options_set_list(struct options *o, const struct opt_row *row, const char *arg)
{
	options_list_add(FIELD(o, row->field, const char *), FIELD(o, row->count, int),
	                 (size_t)row->max, row->name, row->what, arg);
}

/* A listener: ADDR:PORT, checked now, bound later. */
static void
options_set_listen(struct options *o, const struct opt_row *row, const char *arg)
{
	const char *why;
	char *h, *p;

	if ((size_t)*FIELD(o, row->count, int) == row->max)
		options_die(row->name, row->what, NULL);
	if (hostport_split(arg, &h, &p, &why) != 0)
		options_die(row->name, why, arg);
	free(h);
	free(p);
	options_set_list(o, row, arg);
}

static void
options_set_upstream(struct options *o, const struct opt_row *row, const char *arg)
{
	const char *why;

	free(o->upstream_host); /* the file's, which the command line overrides */
	free(o->upstream_port);
	o->upstream_host = o->upstream_port = NULL;
	o->upstream = arg;
	o->upstream_original = strcmp(arg, "original") == 0;
	if (o->upstream_original)
		return; /* each session's own destination */
	if (hostport_split(arg, &o->upstream_host, &o->upstream_port, &why) != 0)
		options_die(row->name, why, arg);
}

static void
options_set_events(struct options *o, const struct opt_row *row, const char *arg)
{
	if (arg[0] == '\0')
		options_die(row->name, row->what, NULL);
	o->events_off = strcmp(arg, "none") == 0;
	o->events = o->events_off ? NULL : arg;
}

static void
options_set_workers(struct options *o, const struct opt_row *row, const char *arg)
{
	(void)row;
	o->workers = options_workers(arg);
}

static void
options_set_verbose(struct options *o, const struct opt_row *row, const char *arg)
{
	(void)row;
	(void)arg;
	o->verbose = 1;
	o->log_level = LOG_LEVEL_DEBUG;
}

static void
options_set_log_level(struct options *o, const struct opt_row *row, const char *arg)
{
	options_set_word(o, row, arg);
	o->verbose = o->log_level == LOG_LEVEL_DEBUG;
}

/* --tls-mode: remembered as given, since its default depends on --tls-cert. */
static void
options_set_tls_mode(struct options *o, const struct opt_row *row, const char *arg)
{
	options_set_word(o, row, arg);
	o->tls_mode_set = 1;
}

static void
options_set_tls_min(struct options *o, const struct opt_row *row, const char *arg)
{
	o->tls_min_version = options_word(row->name, arg, row->words, row->what) == 0 ? 12 : 13;
}

static void
options_set_helo(struct options *o, const struct opt_row *row, const char *arg)
{
	if (arg[0] == '\0' || strlen(arg) >= sizeof(o->helo_name) ||
	    strcspn(arg, " \t\r\n\v\f") != strlen(arg))
		options_die(row->name, row->what, arg);
	snprintf(o->helo_name, sizeof(o->helo_name), "%s", arg);
}

/* --accept-proxy: CIDR[,CIDR...]. */
static void
options_set_accept_proxy(struct options *o, const struct opt_row *row, const char *arg)
{
	const char *p, *comma;

	(void)row;
	for (p = arg;; p = comma + 1) {
		comma = strchr(p, ',');
		options_cidr(o, p, comma != NULL ? (size_t)(comma - p) : strlen(p));
		if (comma == NULL)
			break;
	}
}

/* --upstream-mark: 1 to 0xffffffff, decimal or 0x hex (as nft writes marks). */
static void
options_set_mark(struct options *o, const struct opt_row *row, const char *arg)
{
	unsigned long long v;
	char *end;

	errno = 0;
	if (arg[0] < '0' || arg[0] > '9')
		options_die(row->name, row->what, arg);
	v = strtoull(arg, &end, 0);
	if (errno != 0 || *end != '\0' || v == 0 || v > 0xffffffffULL)
		options_die(row->name, row->what, arg);
	o->upstream_mark = (unsigned)v;
}

/* --metrics: a numeric ADDR:PORT (nothing is resolved), as evhttp will bind it. */
static void
options_set_metrics(struct options *o, const struct opt_row *row, const char *arg)
{
	struct sockaddr_storage ss;
	int len = sizeof(ss);

	memset(&ss, 0, sizeof(ss));
	if (evutil_parse_sockaddr_port(arg, (struct sockaddr *)&ss, &len) != 0 ||
	    ((struct sockaddr_in *)&ss)->sin_port == 0) /* same place in sockaddr_in6 */
		options_die(row->name, row->what, arg);
	o->metrics = arg;
}

static void __attribute__((noreturn))
options_help(struct options *o, const struct opt_row *row, const char *arg)
{
	(void)o;
	(void)row;
	(void)arg;
	fputs(usage_text, stdout);
	exit(0);
}

static void __attribute__((noreturn))
options_version(struct options *o, const struct opt_row *row, const char *arg)
{
	(void)o;
	(void)row;
	(void)arg;
	print_version();
	exit(0);
}

static const char *const record_words[] = {"body", "headers", "none", NULL};
static const char *const bare_words[] = {"normalize", "reject", "pass", NULL};
static const char *const mode_words[] = {"passthrough", "terminate", "strip", NULL};
static const char *const up_words[] = {"starttls", "require", "implicit", "none", NULL};
static const char *const verify_words[] = {"none", "ca", "name", NULL};
static const char *const version_words[] = {"1.2", "1.3", NULL};
static const char *const logfail_words[] = {"continue", "tempfail", NULL};
static const char *const forward_words[] = {"none", "xclient", "proxy-v1", "proxy-v2", NULL};
static const char *const level_words[] = {"error", "warning", "info", "debug", NULL};

/* The kinds of rows: where the value goes, and what bounds it. */
/* clang-format off */
#define FLAG(code, opt, f) {code, options_set_flag, opt, NULL, AT(f), 0, 0, NULL, 0}
#define STRING(code, opt, empty, f) {code, options_set_string, opt, empty, AT(f), 0, 0, NULL, 0}
#define NUMBER(code, set, opt, what, f, lo, hi) {code, set, opt, what, AT(f), lo, hi, NULL, 0}
#define WORD(code, set, opt, what, f, words) {code, set, opt, what, AT(f), 0, 0, words, 0}
#define LIST(code, set, opt, full, f, n) {code, set, opt, full, AT(f), 0, CAPACITY(f), NULL, AT(n)}
#define CHOICE(code, set, opt, what, words) {code, set, opt, what, 0, 0, 0, words, 0}
#define OWN(code, set, opt, what) {code, set, opt, what, 0, 0, 0, NULL, 0}
/* Numbers whose problem states their range: the row's bounds, written once. */
#define SIZE(code, opt, f, lo, hi) NUMBER(code, options_set_size, opt, \
	"invalid size (bytes, " #lo " to " #hi ")", f, lo, hi)
#define DURATION(code, opt, f, lo, hi) NUMBER(code, options_set_unsigned, opt, \
	"invalid duration (seconds, " #lo " to " #hi ")", f, lo, hi)
#define COUNT(code, opt, f, lo, hi) NUMBER(code, options_set_unsigned, opt, \
	"invalid count (" #lo " to " #hi ")", f, lo, hi)
/* clang-format on */

static const struct opt_row opt_rows[] = {
    /* Where it listens and where it relays. */
    LIST(OPT_LISTEN, options_set_listen, "--listen", "too many listeners", listen, nlisten),
    LIST(OPT_LISTEN_TLS, options_set_listen, "--listen-tls", "too many listeners", listen_tls,
         nlisten_tls),
    LIST(OPT_LISTEN_TRANSPARENT, options_set_listen, "--listen-transparent", "too many listeners",
         listen_transparent, nlisten_transparent),
    OWN(OPT_UPSTREAM, options_set_upstream, "--upstream", NULL),
    OWN(OPT_UPSTREAM_MARK, options_set_mark, "--upstream-mark",
        "expected a mark (1 to 0xffffffff), not"),
    /* What it records. */
    STRING(OPT_LOG_DIR, "--log-dir", "empty directory name", log_dir),
    OWN(OPT_EVENTS, options_set_events, "--events", "empty file name"),
    WORD(OPT_RECORD, options_set_word, "--record", "expected body, headers or none, not", record,
         record_words),
    FLAG(OPT_NO_TRANSCRIPTS, "--no-transcripts", no_transcripts),
    NUMBER(OPT_KEEP_DAYS, options_set_int, "--keep-days", "invalid count (0 to 100000 days)",
           keep_days, 0, 100000),
    WORD(OPT_ON_LOG_FAILURE, options_set_word, "--on-log-failure",
         "expected continue or tempfail, not", log_failure_tempfail, logfail_words),
    /* Limits. */
    SIZE(OPT_MAX_LINE, "--max-line", max_line, 1024, 16777216),
    COUNT(OPT_MAX_SESSIONS, "--max-sessions", max_sessions, 1, 1000000),
    DURATION(OPT_CONNECT_TIMEOUT, "--connect-timeout", connect_timeout, 1, 86400),
    DURATION(OPT_IDLE_TIMEOUT, "--idle-timeout", idle_timeout, 1, 86400),
    DURATION(OPT_GRACE, "--grace", grace, 0, 86400),
    SIZE(OPT_HOLD_MEMORY, "--hold-memory", hold_memory, 4096, 1073741824),
    SIZE(OPT_MAX_HEADER, "--max-header", max_header, 1024, 16777216),
    SIZE(OPT_MAX_MESSAGE, "--max-message", max_message, 1024, 17179869184),
    WORD(OPT_BARE_NEWLINE, options_set_word, "--bare-newline",
         "expected normalize, reject or pass, not", bare_newline, bare_words),
    OWN(OPT_WORKERS, options_set_workers, "--workers", NULL),
    /* TLS. */
    STRING(OPT_TLS_CERT, "--tls-cert", NULL, tls_cert),
    STRING(OPT_TLS_KEY, "--tls-key", NULL, tls_key),
    WORD(OPT_TLS_MODE, options_set_tls_mode, "--tls-mode",
         "expected terminate, passthrough or strip, not", tls_mode, mode_words),
    WORD(OPT_UPSTREAM_TLS, options_set_word, "--upstream-tls",
         "expected starttls, require, implicit or none, not", upstream_tls, up_words),
    STRING(OPT_UPSTREAM_CA, "--upstream-ca", NULL, upstream_ca),
    WORD(OPT_UPSTREAM_VERIFY, options_set_word, "--upstream-verify",
         "expected none, ca or name, not", upstream_verify, verify_words),
    STRING(OPT_UPSTREAM_NAME, "--upstream-name", NULL, upstream_name),
    CHOICE(OPT_TLS_MIN_VERSION, options_set_tls_min, "--tls-min-version",
           "expected 1.2 or 1.3, not", version_words),
    /* The client's identity on both sides. */
    OWN(OPT_HELO_NAME, options_set_helo, "--helo-name", "expected a host name, not"),
    WORD(OPT_FORWARD_CLIENT, options_set_word, "--forward-client",
         "expected none, xclient, proxy-v1 or proxy-v2, not", forward_client, forward_words),
    LIST(OPT_ACCEPT_PROXY, options_set_accept_proxy, "--accept-proxy", "too many networks",
         accept_proxy, naccept_proxy),
    /* Rules, the process, the service (issue 18). */
    LIST(OPT_RULES, options_set_list, "--rules", "too many rule files", rules, nrules),
    FLAG(OPT_CHECK_RULES, "--check-rules", check_rules),
    STRING(OPT_USER, "--user", "empty user name", user),
    FLAG(OPT_SYSLOG, "--syslog", use_syslog),
    OWN('v', options_set_verbose, "--verbose", NULL),
    STRING('c', "--config", "empty file name", config_file),
    FLAG(OPT_CHECK_CONFIG, "--check-config", check_config),
    STRING(OPT_PID_FILE, "--pid-file", "empty file name", pid_file),
    WORD(OPT_LOG_LEVEL, options_set_log_level, "--log-level",
         "expected error, warning, info or debug, not", log_level, level_words),
    OWN(OPT_METRICS, options_set_metrics, "--metrics", "expected a numeric ADDR:PORT, not"),
    OWN('h', options_help, "--help", NULL),
    OWN(OPT_HELP, options_help, "--help", NULL),
    OWN(OPT_VERSION, options_version, "--version", NULL),
};

/* options_build's record of the lists the command line started is a bit per row. */
_Static_assert(NELEM(opt_rows) <= 64, "a row's bit in an unsigned long long");

/* The row of an option code; NULL for none (getopt_long returns only codes of the table). */
static const struct opt_row *
options_row(int ch)
{
	for (size_t i = 0; i < NELEM(opt_rows); i++)
		if (opt_rows[i].code == ch)
			return &opt_rows[i];
	return NULL;
}

static void
options_one(struct options *o, int ch, const char *arg)
{
	const struct opt_row *row = options_row(ch);

	if (row != NULL)
		row->set(o, row, arg);
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
	for (; optind < argc; optind++)
		options_list_add(o->rules, &o->nrules, CAPACITY(rules), "--check-rules",
		                 "too many rule files", argv[optind]);
}

static int options_errors;
static int options_running; /* options_rebuild: a process that runs already */

/*
 * Applies one option; a problem is written and counted, and parsing goes on.  (The arguments
 * are volatile for gcc's -Wclobbered, which a build without -flto, Debian's, turns on.)
 */
static void
options_try(struct options *volatile o, volatile int ch, const char *volatile arg,
            const char *where)
{
	jmp_buf jb;

	options_where = where;
	if (setjmp(jb) == 0) {
		options_jmp = &jb;
		options_one(o, ch, arg);
	} else {
		options_errors++;
	}
	options_jmp = NULL;
	options_where = NULL;
}

/* A file's setting name: its option code and whether it takes a value; 0 when unknown. */
static int
options_lookup(const char *name, int *has_arg)
{
	static const char *const not_in_file[] = {"config", "check-config", "check-rules", "help",
	                                          "version", NULL};

	for (int i = 0; not_in_file[i] != NULL; i++)
		if (strcmp(name, not_in_file[i]) == 0)
			return 0;
	for (const struct option *lo = long_options; lo->name != NULL; lo++)
		if (strcmp(name, lo->name) == 0) {
			*has_arg = lo->has_arg == required_argument;
			return lo->val;
		}
	return 0;
}

/*
 * A setting of one value given again in the file: an error naming both lines, as nginx's
 * "directive is duplicate" (the later line silently winning hides an edit gone wrong).  A
 * repeatable one (a row with a count) adds to its list.  first[] holds a row's first line.
 */
static int
options_file_duplicate(const struct config_entry *e, int ch, const struct config_entry **first,
                       FILE *err)
{
	const struct opt_row *row = options_row(ch);
	size_t i;

	if (row == NULL || row->count != 0)
		return 0;
	i = (size_t)(row - opt_rows);
	if (first[i] == NULL) {
		first[i] = e;
		return 0;
	}
	fprintf(err, "%s: %s: given twice (first at %s)\n", e->where, e->name, first[i]->where);
	return 1;
}

static void
options_apply_file(struct options *o, const struct config *cfg, FILE *err)
{
	const struct config_entry *first[NELEM(opt_rows)] = {NULL};

	for (size_t i = 0; i < cfg->n; i++) {
		const struct config_entry *e = &cfg->entries[i];
		int has_arg = 0, ch = options_lookup(e->name, &has_arg);

		if (ch == 0)
			fprintf(err, "%s: unknown setting '%s'\n", e->where, e->name);
		else if (has_arg && e->value == NULL)
			fprintf(err, "%s: %s: missing value\n", e->where, e->name);
		else if (!has_arg && e->value != NULL)
			fprintf(err, "%s: %s: takes no value, not '%s'\n", e->where, e->name, e->value);
		else if (!options_file_duplicate(e, ch, first, err)) {
			options_try(o, ch, e->value, e->where);
			continue;
		}
		options_errors++;
	}
}

/*
 * On the command line, the first of a repeatable option (a row with a count: --listen,
 * --listen-tls, --listen-transparent, --rules, --accept-proxy) empties the list the file
 * made: the command line's list replaces it rather than adding to it.
 */
static void
options_cmdline_list(struct options *o, int ch, unsigned long long *seen)
{
	const struct opt_row *row = options_row(ch);
	unsigned long long bit;

	if (row == NULL || row->count == 0)
		return;
	bit = 1ULL << (row - opt_rows);
	if (*seen & bit)
		return;
	*seen |= bit;
	*FIELD(o, row->count, int) = 0;
}

/* The checks of options together, once all are read; the first problem. */
static void
options_finish(struct options *o)
{
	jmp_buf jb;

	if (setjmp(jb) != 0) {
		options_jmp = NULL;
		options_errors++;
		return;
	}
	options_jmp = &jb;
	if (!o->check_config && !options_running)
		options_user(o); /* an unknown user stops smtptap before anything is bound */
	if (o->upstream == NULL)
		options_die("--upstream", "required (HOST:PORT of the real server)", NULL);
	options_check_tls(o);
	options_check_original(o);
	if (o->no_transcripts && o->log_failure_tempfail)
		options_die("--on-log-failure", "tempfail protects transcripts, and --no-transcripts "
		            "writes none", NULL);
	options_jmp = NULL;
	if (o->nlisten == 0 && o->nlisten_tls == 0 && o->nlisten_transparent == 0)
		o->listen[o->nlisten++] = "127.0.0.1:2525";
	options_default_helo(o);
}

/* First pass over argv: only --config, which is read before the rest. */
static const char *
options_find_config(int argc, char **argv)
{
	const char *file = NULL;
	int ch;

	opterr = 0;
	optind = 0;
	while ((ch = getopt_long(argc, argv, ":vc:", long_options, NULL)) != -1)
		if (ch == 'c')
			file = optarg;
	optind = 0;
	return file;
}

int
options_build(int argc, char **argv, struct options *o, FILE *err)
{
	unsigned long long seen = 0; /* a bit per row of opt_rows */
	int ch;

	options_defaults(o);
	options_err = err;
	options_errors = 0;
	o->config_file = options_find_config(argc, argv);
	if (o->config_file != NULL) {
		if ((o->config = config_read(o->config_file, err, &options_errors)) != NULL)
			options_apply_file(o, o->config, err);
	}
	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":vhc:", long_options, NULL)) != -1) {
		if (ch == '?' && strncmp(argv[optind - 1], "--", 2) == 0) {
			options_unknown(argv[optind - 1]); /* exits 2, with the closest option */
		} else if (ch == '?') {
			fprintf(err, "smtptap: %s: unknown option\n",
			        optopt ? (char[]){'-', (char)optopt, '\0'} : argv[optind - 1]);
			options_errors++;
		} else if (ch == ':') {
			fprintf(err, "smtptap: %s: missing value\n", argv[optind - 1]);
			options_errors++;
		} else {
			options_cmdline_list(o, ch, &seen);
			options_try(o, ch, optarg, NULL);
		}
	}
	if (o->check_rules) {
		/* --check-rules, wherever it stands: the remaining arguments are rule files. */
		options_check_mode(argc, argv, o);
		options_err = NULL;
		return options_errors;
	}
	for (; optind < argc; optind++, options_errors++)
		fprintf(err, "smtptap: %s: unexpected argument\n", argv[optind]);
	if (options_errors == 0)
		options_finish(o);
	options_err = NULL;
	return options_errors;
}

int
options_rebuild(int argc, char **argv, struct options *o, FILE *err)
{
	int n;

	options_running = 1;
	n = options_build(argc, argv, o, err);
	options_running = 0;
	return n;
}

void
options_free(struct options *o)
{
	free(o->upstream_host);
	free(o->upstream_port);
	config_free(o->config);
	o->upstream_host = o->upstream_port = NULL;
	o->config = NULL;
}

void
options_parse(int argc, char **argv, struct options *o)
{
	if (options_build(argc, argv, o, stderr) > 0)
		exit(2);
}
