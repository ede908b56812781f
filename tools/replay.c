/*
 * smtptap replay SESSION --to HOST:PORT [--starttls] [--auth USER:PASSWORD]: sends the client's
 * side of a recorded session again and prints each recorded reply beside the new one.  A
 * command-line tool, not the daemon: plain blocking I/O with timeouts.  Exit 0 when every
 * reply code matches, 1 when one differs, 2 when the session can't be replayed.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "smtp/ehlo.h"
#include "smtp/hostport.h"
#include "smtp/smtp.h"
#include "tools/common.h"
#include "tools/lookup.h"
#include "tools/replay_plan.h"
#include "tools/tools.h"

static const char replay_usage[] =
    "usage: smtptap replay [-c FILE] [--log-dir DIR] [--events FILE] SESSION --to HOST:PORT\n"
    "                      [--starttls] [--auth USER:PASSWORD] [--timeout SECS]\n"
    "  sends the client's side of a recorded session again and prints each recorded reply\n"
    "  beside the new one; exit 0 when every reply code matches, 1 when one differs, 2 when\n"
    "  the session can't be replayed (not found, recorded without its content)\n";

struct conn {
	int fd;
	SSL_CTX *ctx;
	SSL *ssl;
	char buf[16384];
	size_t len, start;
	const char *host;
	int chunking; /* the server's reply to the last EHLO offered CHUNKING (RFC 3030) */
};

struct collect {
	struct plan_record *recs;
	size_t n, cap;
	int failed;
};

static int
collect_cb(const struct jrecord *r, void *arg)
{
	struct collect *c = arg;
	struct plan_record *p;

	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 256;
		if ((p = realloc(c->recs, c->cap * sizeof(*p))) == NULL) {
			c->failed = 1;
			return -1;
		}
		c->recs = p;
	}
	p = &c->recs[c->n];
	memcpy(p->kind, r->kind, sizeof(p->kind));
	if ((p->text = strndup(r->text, r->textlen)) == NULL) {
		c->failed = 1;
		return -1;
	}
	p->len = r->textlen;
	c->n++;
	return 0;
}

/* Connects with a time limit, then sets the time limit of every read and write. */
static int
conn_open(struct conn *c, const char *hostport, int timeout)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL, *ai;
	struct timeval tv = {timeout, 0};
	char *host = NULL, *port = NULL;
	const char *why = NULL;
	int rc;

	if (hostport_split(hostport, &host, &port, &why) != 0) {
		fprintf(stderr, "smtptap replay: --to %s: %s\n", hostport, why ? why : "bad address");
		return -1;
	}
	if ((rc = getaddrinfo(host, port, &hints, &res)) != 0) {
		fprintf(stderr, "smtptap replay: --to %s: %s\n", hostport, gai_strerror(rc));
		free(host);
		free(port);
		return -1;
	}
	c->fd = -1;
	for (ai = res; ai != NULL && c->fd < 0; ai = ai->ai_next) {
		if ((c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0)) < 0)
			continue;
		setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) != 0) {
			rc = errno;
			close(c->fd);
			c->fd = -1;
			errno = rc;
		}
	}
	freeaddrinfo(res);
	free(port);
	c->host = host;
	if (c->fd < 0) {
		fprintf(stderr, "smtptap replay: --to %s: %s\n", hostport, strerror(errno));
		return -1;
	}
	return 0;
}

static void
conn_close(struct conn *c)
{
	if (c->ssl != NULL) {
		SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
	}
	SSL_CTX_free(c->ctx);
	if (c->fd >= 0)
		close(c->fd);
	free((char *)c->host);
}

static int
conn_write(struct conn *c, const unsigned char *p, size_t n)
{
	ssize_t w;

	while (n > 0) {
		if (c->ssl != NULL) {
			int k = SSL_write(c->ssl, p, n > 1 << 30 ? 1 << 30 : (int)n);

			w = k > 0 ? k : -1;
		} else {
			w = send(c->fd, p, n, MSG_NOSIGNAL);
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* One line from the server, CRLF stripped; -1 on close, time-out or error. */
static int
conn_line(struct conn *c, char *line, size_t size)
{
	char *nl;
	ssize_t r;
	size_t n;

	for (;;) {
		nl = memchr(c->buf + c->start, '\n', c->len - c->start);
		if (nl != NULL) {
			n = (size_t)(nl - (c->buf + c->start));
			if (n > 0 && nl[-1] == '\r')
				n--;
			if (n >= size)
				n = size - 1;
			memcpy(line, c->buf + c->start, n);
			line[n] = '\0';
			c->start = (size_t)(nl - c->buf) + 1;
			return 0;
		}
		if (c->start > 0) {
			memmove(c->buf, c->buf + c->start, c->len - c->start);
			c->len -= c->start;
			c->start = 0;
		}
		if (c->len == sizeof(c->buf)) /* a line past the buffer: its start is enough */
			c->len = 0;
		if (c->ssl != NULL) {
			int k = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof(c->buf) - c->len));

			r = k > 0 ? k : -1;
		} else {
			r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		c->len += (size_t)r;
	}
}

/* A whole reply: its code, its first line, how many lines, whether it offers CHUNKING. */
static int
conn_reply(struct conn *c, int *code, char *first, size_t size, int *chunking)
{
	char line[4096];
	unsigned lines = 0;

	*chunking = 0;
	for (;;) {
		if (conn_line(c, line, sizeof(line)) != 0)
			return -1;
		if (lines++ == 0) {
			snprintf(first, size, "%s", line);
			*code = atoi(line);
		}
		if (ehlo_line_is((const unsigned char *)line, strlen(line), "CHUNKING"))
			*chunking = 1;
		if (strlen(line) < 4 || line[3] != '-')
			break;
	}
	if (lines > 1) {
		size_t n = strlen(first);

		snprintf(first + n, size - n, " (+%u lines)", lines - 1);
	}
	return 0;
}

static int
conn_starttls(struct conn *c)
{
	if ((c->ctx = SSL_CTX_new(TLS_client_method())) == NULL ||
	    (c->ssl = SSL_new(c->ctx)) == NULL)
		return -1;
	/* A test tool: the server's certificate is not checked. */
	SSL_set_verify(c->ssl, SSL_VERIFY_NONE, NULL);
	SSL_set_tlsext_host_name(c->ssl, c->host);
	SSL_set_fd(c->ssl, c->fd);
	c->len = c->start = 0; /* nothing read in clear survives the handshake */
	if (SSL_connect(c->ssl) != 1) {
		unsigned long e = ERR_get_error();

		fprintf(stderr, "smtptap replay: TLS handshake failed: %s\n",
		        e ? ERR_reason_error_string(e) : "connection closed");
		return -1;
	}
	return 0;
}

/* Prints a reply beside the recorded one; 1 when the codes differ. */
static int
replay_compare(const struct step *s, int ok, int code, const char *now)
{
	int differs = !ok || (s->code != 0 && code != s->code);

	printf("  recorded %s\n", s->shown);
	printf("  now      %s%s\n", ok ? now : "(connection closed or timed out)",
	       differs ? "   <<< differs" : "");
	return differs;
}

/*
 * A BDAT the server was not offered CHUNKING for: it would read the chunk as commands, and
 * every reply after would be out of step.  The replay stops there, as differing.
 */
static int
replay_bdat_refused(struct conn *c, const struct step *s)
{
	if (s->verb != VERB_BDAT || c->chunking)
		return 0;
	printf("replay: stopping here: the server does not offer CHUNKING, so the recorded "
	       "BDAT can't be sent   <<< differs\n");
	conn_write(c, (const unsigned char *)"QUIT\r\n", 6);
	return 1;
}

/* Runs the plan; the number of replies whose code differs, -1 when it could not go on. */
static int
replay_run(struct conn *c, const struct plan *p, unsigned *nreplies)
{
	unsigned char *pend = NULL;
	size_t npend = 0, i;
	int differ = 0, code = 0, ok, closed = 0, chunking = 0, helo = 0;
	char now[4200];

	for (i = 0; i < p->nsteps; i++) {
		const struct step *s = &p->steps[i];

		switch (s->kind) {
		case STEP_NOTE:
			printf("%s\n", s->shown);
			break;
		case STEP_SEND:
			if (!closed && replay_bdat_refused(c, s)) {
				free(pend);
				return differ + 1;
			}
			if (s->verb != VERB_UNKNOWN)
				helo = s->verb == VERB_EHLO || s->verb == VERB_LHLO;
			printf("%s\n", s->shown != NULL ? s->shown : "C: ?");
			if (!closed) {
				unsigned char *q = realloc(pend, npend + s->len);

				if (q == NULL)
					goto fail;
				pend = q;
				memcpy(pend + npend, s->data, s->len);
				npend += s->len;
			}
			break;
		case STEP_EXPECT:
			if (!closed && npend > 0 && conn_write(c, pend, npend) != 0)
				closed = 1;
			npend = 0;
			ok = !closed && conn_reply(c, &code, now, sizeof(now), &chunking) == 0;
			if (!ok)
				closed = 1;
			if (ok && helo) /* what the server offers now, not what was recorded */
				c->chunking = chunking && code == 250;
			helo = 0;
			(*nreplies)++;
			if (replay_compare(s, ok, code, now)) {
				differ++;
				if (s->critical && !closed) {
					printf("replay: stopping here: what follows depends on that reply\n");
					conn_write(c, (const unsigned char *)"QUIT\r\n", 6);
					free(pend);
					return differ;
				}
			}
			break;
		case STEP_STARTTLS:
			if (!closed && conn_starttls(c) != 0)
				goto fail;
			break;
		}
	}
	if (!closed && npend > 0)
		conn_write(c, pend, npend);
	free(pend);
	return differ;
fail:
	free(pend);
	return -1;
}

/* What the command line asks of a replay. */
struct replay {
	struct tool_common tc;
	struct plan_options po;
	const char *id, *to;
	const char *auth; /* --auth USER:PASSWORD, split into po by replay_check */
	int timeout;
};

/* replay's own arguments: the session, --to, --starttls, --auth, --timeout. */
static int
replay_arg(void *arg, int argc, char **argv, int *i)
{
	struct replay *r = arg;
	const char *a = argv[*i];

	if (strcmp(a, "--starttls") == 0) {
		r->po.starttls = 1;
	} else if (strcmp(a, "--to") == 0 && *i + 1 < argc) {
		r->to = argv[++*i];
	} else if (strcmp(a, "--auth") == 0 && *i + 1 < argc) {
		r->auth = argv[++*i];
	} else if (strcmp(a, "--timeout") == 0 && *i + 1 < argc) {
		r->timeout = atoi(argv[++*i]);
	} else if (a[0] != '-' && r->id == NULL) {
		r->id = a;
	} else {
		fprintf(stderr, "smtptap replay: bad argument %s\n%s", a, replay_usage);
		return -1;
	}
	return 1;
}

/* The arguments taken together: 0, or 2 with the problem written. */
static int
replay_check(struct replay *r)
{
	const char *colon;

	if (r->id == NULL || r->to == NULL || r->timeout <= 0) {
		fputs(replay_usage, stderr);
		return 2;
	}
	if (r->auth == NULL)
		return 0;
	if ((colon = strchr(r->auth, ':')) == NULL) {
		fprintf(stderr, "smtptap replay: --auth needs USER:PASSWORD\n");
		return 2;
	}
	r->po.auth_user = strndup(r->auth, (size_t)(colon - r->auth));
	r->po.auth_password = colon + 1;
	return 0;
}

/* The session's records from the journal: 0, or 2 with the problem written. */
static int
replay_collect(const struct replay *r, struct collect *col)
{
	int rc = session_records(&r->tc, r->id, collect_cb, col);

	if (rc == 1 || col->n == 0) {
		fprintf(stderr, "smtptap replay: session %s: not found in %s\n", r->id,
		        r->tc.log_dir);
		return 2;
	}
	return rc < 0 || col->failed ? 2 : 0;
}

/* Plays the plan to --to: 0 when every reply code is as recorded, 1 when one differs, else 2. */
static int
replay_to(const struct replay *r, const struct plan *plan)
{
	struct conn c = {.fd = -1};
	unsigned nreplies = 0;
	int differ;

	if (conn_open(&c, r->to, r->timeout) != 0)
		return 2;
	printf("replay of session %s to %s\n", r->id, r->to);
	differ = replay_run(&c, plan, &nreplies);
	conn_close(&c);
	if (differ < 0)
		return 2;
	if (differ == 0)
		printf("replay: %u replies, every code as recorded\n", nreplies);
	else
		printf("replay: %d of %u replies differ\n", differ, nreplies);
	return differ == 0 ? 0 : 1;
}

int
tool_replay_main(int argc, char **argv)
{
	struct replay r = {.timeout = 30};
	struct collect col = {0};
	struct plan plan;
	int rc;

	rc = tool_common_args(&r.tc, argc, argv, "replay", replay_usage, replay_arg, &r);
	if (rc != TOOL_ARGS_OK || (rc = replay_check(&r)) != 0)
		return rc;
	tool_common_finish(&r.tc);
	if ((rc = replay_collect(&r, &col)) == 0) {
		if (plan_build(&plan, col.recs, col.n, &r.po) != 0) {
			fprintf(stderr, "smtptap replay: session %s can't be replayed: %s\n", r.id,
			        plan.why);
			rc = 2;
		} else {
			rc = replay_to(&r, &plan);
		}
		plan_free(&plan);
	}
	for (size_t j = 0; j < col.n; j++)
		free(col.recs[j].text);
	free(col.recs);
	free((char *)r.po.auth_user);
	return rc;
}
