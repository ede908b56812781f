/*
 * libFuzzer target: a whole session, driven from both sides over socketpairs.
 *
 * The input is a dialogue: pieces separated by the octets "\n~~\n", which belong to neither
 * (a piece ending in CRLF is written "...\r\n\n~~\n"), sent in turn by the server (first: its
 * greeting), the client, the server, ...  A piece need not end a line; an empty piece lets a
 * side speak twice.  The separator "\n~.\n" also shuts the write side of the peer that sent
 * the piece before it (a server hanging up mid-dialogue, a client half-closing after QUIT).
 * At the end, the peer whose turn it would be closes first, then the other.  An optional
 * first line "#!LETTERS" picks options:
 *
 *	r p	--bare-newline reject, pass	h n	--record headers, none
 *	s t	--tls-mode strip, terminate	u q i	--upstream-tls none, require, implicit
 *	l	--max-line 1024			m	--hold-memory 4096
 *	R	rules in every scope (below)	T E	--no-transcripts, --events none
 *
 * Each piece is written to the far end of its socketpair and the loop runs until the proxy
 * has done what it can; once both far ends have shut their write side the loop runs until the
 * session is gone.  Everything the proxy sends is read and thrown away.  A session that does
 * not end once both peers have closed is forced closed (FUZZ_SESSION_STRICT=1: abort instead).
 * FUZZ_VERBOSE=1 keeps the program's log on stderr; FUZZ_SESSION_KEEP=1 keeps the transcripts
 * (their directory is named on stderr), to check what a seed reaches.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "filters/rules.h"
#include "logs/events.h"
#include "logs/log.h"
#include "logs/transcript.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/conn.h"
#include "proxy/session.h"
#include "proxy/tls.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SEP_LEN 4 /* "\n~~\n", or "\n~.\n" to close the sender too */
#define ROUNDS_PER_PIECE 4  /* loop turns after each piece */
#define ROUNDS_TO_END 2000  /* loop turns for the session to end once both peers closed */
#define WRITE_TRIES 1000

/* A rule of every scope and action, so that the filters are in the game with 'R'. */
static const char rules_text[] =
    "helo /^EHLO\\s+evil/i REJECT 550 5.7.1 Go away\n"
    "mail /spammer/i REJECT\n"
    "mail /^MAIL FROM:<rewrite@/i REWRITE MAIL FROM:<rewritten@example.com>\n"
    "rcpt /@competitor\\.example>/i REJECT 550 5.7.1 Recipient not permitted\n"
    "rcpt /drop-me/ DISCONNECT\n"
    "command /^(VRFY|EXPN)\\b/i REJECT 502 5.5.1 Command disabled\n"
    "command /^HELP/i WARN help asked\n"
    "command /^NOOP pass/i PASS\n"
    "command /^BDAT 7\\b/i REJECT 554 5.7.1 No chunk of seven\n"
    "header /^Subject:.*spam/i REJECT 550 5.7.1 Spam\n"
    "header /^Subject:/i PREPEND X-Policy: external\n"
    "header /^X-Drop:/i IGNORE\n"
    "header /^From:(.*)$/i REWRITE From:$1 (checked)\n"
    "body /\\bconfidential\\b/i REJECT 550 5.7.1 Confidential content\n"
    "body /^secret.*/ REWRITE .\n"
    "body /disconnect-me/ DISCONNECT\n"
    "body /password/g REWRITE ********\n"
    "body /^drop-line$/ IGNORE\n"
    "banner /ESMTP/ REWRITE ESMTP smtptap\n"
    "banner /evil/ WARN evil banner\n"
    "reply /^550/ WARN refusal\n"
    "reply /^250 .*queued as (\\S+)/ REWRITE 250 2.0.0 queued $1\n"
    "reply /^452/ IGNORE\n"
    "capability /^STARTTLS$/i IGNORE\n"
    "capability /^SIZE/ REWRITE SIZE 1000\n"
    "capability /^8BITMIME$/i IGNORE\n";

static struct proxy px;
static struct options base_opts, tls_opts, cur_opts;
static struct ruleset *no_rules, *all_rules;
static char dir[] = "/tmp/fuzz_session.XXXXXX";
static char logdir[4096], certpath[4096], keypath[4096], rulespath[4096];
static unsigned char sink[65536];
static int strict, keep;
static unsigned long forced; /* sessions that outlived both peers */
static char forced_kinds[16][96]; /* their distinct "state/close reason", named at exit */
static FILE *errout; /* the real stderr: the program's log goes to /dev/null */

static void
die(const char *what)
{
	fprintf(errout, "fuzz_session: %s: %s\n", what, strerror(errno));
	abort();
}

/* A throw-away self-signed certificate, for --tls-mode terminate. */
static void
make_cert(void)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *crt = X509_new();
	FILE *fp;

	if (key == NULL || crt == NULL)
		die("certificate");
	ASN1_INTEGER_set(X509_get_serialNumber(crt), 1);
	X509_gmtime_adj(X509_getm_notBefore(crt), 0);
	X509_gmtime_adj(X509_getm_notAfter(crt), 86400);
	X509_set_pubkey(crt, key);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(crt), "CN", MBSTRING_ASC,
				   (const unsigned char *)"fuzz.example", -1, -1, 0);
	X509_set_issuer_name(crt, X509_get_subject_name(crt));
	if (X509_sign(crt, key, EVP_sha256()) == 0)
		die("certificate signature");
	if ((fp = fopen(certpath, "w")) == NULL || PEM_write_X509(fp, crt) != 1 || fclose(fp) != 0)
		die(certpath);
	if ((fp = fopen(keypath, "w")) == NULL ||
	    PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL) != 1 || fclose(fp) != 0)
		die(keypath);
	X509_free(crt);
	EVP_PKEY_free(key);
}

static void
parse_options(struct options *o, int tls)
{
	char *argv[] = {"smtptap",  "--upstream", "127.0.0.1:25", "--log-dir", logdir,
			"--events", "/dev/null",  "--tls-cert",   certpath,    "--tls-key",
			keypath,    NULL};

	optind = 0; /* getopt starts over */
	options_parse(tls ? 11 : 7, argv, o);
}

static struct ruleset *
load_rules(void)
{
	const char *files[1] = {rulespath};
	struct ruleset *rs;
	FILE *fp;

	if ((fp = fopen(rulespath, "w")) == NULL || fputs(rules_text, fp) == EOF || fclose(fp) != 0)
		die(rulespath);
	if ((rs = rules_load(files, 1, errout)) == NULL) {
		fprintf(errout, "fuzz_session: the built-in rules do not load\n");
		abort();
	}
	return rs;
}

static void
cleanup(void)
{
	char cmd[8192];

	if (forced > 0)
		fprintf(errout, "fuzz_session: %lu sessions outlived both peers, closed by force\n",
			forced);
	for (int i = 0; i < 16 && forced_kinds[i][0] != '\0'; i++)
		fprintf(errout, "fuzz_session:   state/close reason: %s\n", forced_kinds[i]);
	if (keep) {
		fprintf(errout, "fuzz_session: transcripts kept in %s\n", logdir);
		return;
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(errout, "fuzz_session: could not remove %s\n", dir);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	errout = stderr;
	signal(SIGPIPE, SIG_IGN);
	strict = getenv("FUZZ_SESSION_STRICT") != NULL && atoi(getenv("FUZZ_SESSION_STRICT"));
	keep = getenv("FUZZ_SESSION_KEEP") != NULL && atoi(getenv("FUZZ_SESSION_KEEP"));
	if (mkdtemp(dir) == NULL)
		die("mkdtemp");
	atexit(cleanup);
	snprintf(logdir, sizeof(logdir), "%s/logs", dir);
	snprintf(certpath, sizeof(certpath), "%s/cert.pem", dir);
	snprintf(keypath, sizeof(keypath), "%s/key.pem", dir);
	snprintf(rulespath, sizeof(rulespath), "%s/fuzz.rules", dir);
	make_cert();
	parse_options(&base_opts, 0);
	parse_options(&tls_opts, 1);
	/* The program's own log would cost more than the session: quiet unless asked. */
	log_init(0, 0);
	if (getenv("FUZZ_VERBOSE") == NULL && (stderr = fopen("/dev/null", "w")) == NULL)
		die("/dev/null");
	TAILQ_INIT(&px.sessions);
	if ((px.base = event_base_new()) == NULL)
		die("event_base_new");
	if ((px.dns = evdns_base_new(px.base, 0)) == NULL)
		die("evdns_base_new");
	if ((no_rules = rules_load(NULL, 0, NULL)) == NULL)
		die("rules_load");
	all_rules = load_rules();
	if (transcript_init(px.base, logdir, -1) != 0)
		die(logdir);
	if (events_open(px.base, "/dev/null") != 0)
		die("events /dev/null");
	if (tls_init(&tls_opts) != 0)
		die("tls_init");
	return 0;
}

/* Options for this input: main's defaults, changed by the letters of a "#!" first line. */
static size_t
pick_options(const uint8_t *data, size_t size)
{
	const uint8_t *lf;
	size_t i, n;

	cur_opts = base_opts;
	px.rules = no_rules;
	if (size < 2 || data[0] != '#' || data[1] != '!' ||
	    (lf = memchr(data, '\n', size)) == NULL)
		return 0;
	n = (size_t)(lf - data);
	for (i = 2; i < n; i++) {
		switch (data[i]) {
		case 'r':
			cur_opts.bare_newline = BARE_REJECT;
			break;
		case 'p':
			cur_opts.bare_newline = BARE_PASS;
			break;
		case 'h':
			cur_opts.record = RECORD_HEADERS;
			break;
		case 'n':
			cur_opts.record = RECORD_NONE;
			break;
		case 's':
			cur_opts.tls_mode = TLS_STRIP;
			break;
		case 't':
			cur_opts.tls_mode = TLS_TERMINATE;
			cur_opts.tls_cert = tls_opts.tls_cert;
			cur_opts.tls_key = tls_opts.tls_key;
			break;
		case 'u':
			cur_opts.upstream_tls = UPSTREAM_NONE;
			break;
		case 'q':
			cur_opts.upstream_tls = UPSTREAM_REQUIRE;
			break;
		case 'i':
			cur_opts.upstream_tls = UPSTREAM_IMPLICIT;
			break;
		case 'l':
			cur_opts.max_line = 1024;
			break;
		case 'm':
			cur_opts.hold_memory = 4096;
			break;
		case 'R':
			px.rules = all_rules;
			break;
		case 'T':
			cur_opts.no_transcripts = 1;
			break;
		case 'E':
			cur_opts.events_off = 1;
			break;
		default:
			break;
		}
	}
	return n + 1;
}

/* Reads and throws away what the proxy sent to a peer. */
static void
drain(int fd)
{
	while (read(fd, sink, sizeof(sink)) > 0)
		;
}

static void
pump(int rounds, int cfar, int sfar)
{
	int i;

	for (i = 0; i < rounds && px.nsessions > 0; i++) {
		event_base_loop(px.base, EVLOOP_NONBLOCK);
		drain(cfar);
		drain(sfar);
	}
}

/* Writes a piece to a far end, letting the proxy read while the socket is full. */
static void
send_piece(int fd, const uint8_t *p, size_t len, int cfar, int sfar)
{
	ssize_t n;
	int tries = 0;

	while (len > 0 && tries++ < WRITE_TRIES) {
		n = write(fd, p, len);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return; /* the proxy closed this side */
		pump(1, cfar, sfar);
	}
}

static int
session_alive(const struct session *s)
{
	const struct session *t;

	TAILQ_FOREACH(t, &px.sessions, entry)
		if (t == s)
			return 1;
	return 0;
}

/* The phase, or the client's mode while relaying. */
static const char *
session_state_label(const struct session *s)
{
	return s->phase == PHASE_RELAYING ? client_mode_name(s->mode)
	                                  : session_phase_name(s->phase);
}

static void
note_forced(const struct session *s)
{
	char kind[96];
	int i;

	forced++;
	snprintf(kind, sizeof(kind), "%s/%s", session_state_label(s),
	         s->phase == PHASE_CLOSING && s->close_reason != NULL ? s->close_reason : "(open)");
	for (i = 0; i < 16 && forced_kinds[i][0] != '\0'; i++)
		if (strcmp(forced_kinds[i], kind) == 0)
			return;
	if (i < 16)
		snprintf(forced_kinds[i], sizeof(forced_kinds[i]), "%s", kind);
}

static void
drop_output(struct bufferevent *bev)
{
	struct evbuffer *out;

	if (bev != NULL && (out = bufferevent_get_output(bev)) != NULL)
		evbuffer_drain(out, evbuffer_get_length(out));
}

/* The next separator at or after p, and whether it closes the sender; NULL when none. */
static const uint8_t *
next_sep(const uint8_t *p, const uint8_t *end, int *closes)
{
	const uint8_t *q = p;

	while ((q = memmem(q, (size_t)(end - q), "\n~", 2)) != NULL) {
		if (end - q >= SEP_LEN && (q[2] == '~' || q[2] == '.') && q[3] == '\n') {
			*closes = q[2] == '.';
			return q;
		}
		q++;
	}
	return NULL;
}

/* Both peers close, first the one whose turn it is; the loop runs until the session is gone,
 * and ends it by force when it lingers. */
static void
finish(struct session *s, int first, int second, int cfar, int sfar)
{
	shutdown(first, SHUT_WR);
	pump(ROUNDS_PER_PIECE, cfar, sfar);
	shutdown(second, SHUT_WR);
	pump(ROUNDS_TO_END, cfar, sfar);
	if (!session_alive(s))
		return;
	if (strict) {
		fprintf(errout, "fuzz_session: session alive in state %s after both peers closed\n",
		        session_state_label(s));
		abort();
	}
	note_forced(s);
	if (s->phase != PHASE_CLOSING)
		session_close(s, "fuzz");
	pump(ROUNDS_TO_END, cfar, sfar);
	if (session_alive(s) && s->client.bev != NULL) {
		/* Closing, with output the client can never take (a failed TLS leg): drop it. */
		drop_output(s->client.bev);
		drop_output(bufferevent_get_underlying(s->client.bev));
		event_active(s->timer, EV_TIMEOUT, 1);
		pump(ROUNDS_TO_END, cfar, sfar);
	}
	if (session_alive(s)) {
		fprintf(errout, "fuzz_session: session could not be freed\n");
		abort();
	}
}

static int
socket_pair(int fds[2])
{
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
		return -1;
	evutil_make_socket_nonblocking(fds[0]);
	evutil_make_socket_nonblocking(fds[1]);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p, *end = data + size, *sep;
	char path[sizeof(logdir) + 128];
	int c[2], sv[2], turn = 0, closes = 0, fd;
	struct session *s;
	size_t len;

	p = data + pick_options(data, size);
	px.opts = &cur_opts;
	/* Failing here means descriptors leak from session to session (EMFILE): a finding. */
	if (socket_pair(c) != 0 || socket_pair(sv) != 0)
		die("socketpair");
	if ((s = session_new_connected(&px, c[0], sv[0])) == NULL) {
		close(c[0]);
		close(c[1]);
		close(sv[0]);
		close(sv[1]);
		return 0;
	}
	snprintf(path, sizeof(path), "%s/%s", logdir, s->transcript_path);
	pump(ROUNDS_PER_PIECE, c[1], sv[1]);
	while (p < end && px.nsessions > 0) {
		sep = next_sep(p, end, &closes);
		len = sep != NULL ? (size_t)(sep - p) : (size_t)(end - p);
		fd = turn % 2 == 0 ? sv[1] : c[1];
		send_piece(fd, p, len, c[1], sv[1]);
		if (sep != NULL && closes)
			shutdown(fd, SHUT_WR);
		pump(ROUNDS_PER_PIECE, c[1], sv[1]);
		p = sep != NULL ? sep + SEP_LEN : end;
		turn++;
	}
	if (turn % 2 == 0)
		finish(s, sv[1], c[1], c[1], sv[1]);
	else
		finish(s, c[1], sv[1], c[1], sv[1]);
	close(c[1]);
	close(sv[1]);
	if (!keep && path[strlen(logdir) + 1] != '\0')
		unlink(path);
	return 0;
}
