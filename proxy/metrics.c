/*
 * Prometheus metrics (--metrics ADDR:PORT, issue 18).  Sessions are counted once, as they end
 * (report.c hands over the session with every fact the event has), plus the upstream connect
 * time as it happens.  The counters are in shared memory, one block per worker slot, each
 * written only by its worker, so a worker that dies loses nothing it counted and its successor
 * goes on in the same block; a scrape adds the blocks up.  Label sets are bounded: reasons,
 * classes, mechanisms and results come from fixed lists ("other" for the rest), rule hits go
 * to a table of METRICS_RULE_SLOTS labels (FILE:LINE and action) filled as rules are first
 * counted, and beyond it to one "other" row.  Only GET /metrics is served.
 *
 * The scrapes share the loop (and the descriptors) with the SMTP sessions, so the HTTP side
 * takes little: at most METRICS_MAX_CONNS connections at once (the rest wait in the listen
 * queue), and accepts pause for a moment when the descriptors run out.
 */
#include "proxy/metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "filters/rules.h"
#include "smtp/hostport.h"
#include "logs/events.h"
#include "logs/log.h"
#include "logs/transcript.h"
#include "proxy/proxy.h"
#include "proxy/conn.h" /* reads a finished session, as report.c does */

#define METRICS_RULE_SLOTS 1024
#define METRICS_LABEL_MAX 256
#define METRICS_HTTP_TIMEOUT 10
/* A scraper needs one or two; a few more for people with curl.  The cap keeps a crowd of
 * metrics clients from taking the descriptors the SMTP sessions need. */
#define METRICS_MAX_CONNS 16
#define METRICS_ACCEPT_PAUSE_MSECS 500
#define METRICS_SWEEP_MSECS 200
/* What a connection may have read and not yet parsed: more than a whole request (the headers
 * are capped at 8192), so a request always fits, and little enough to bound a pipelining
 * client that never reads its replies. */
#define METRICS_READ_MAX 16384

typedef _Atomic uint64_t counter;

static const char *const reasons[] = {
    "quit",         "client_closed",       "server_closed",     "upstream_unreachable",
    "connect_timeout", "idle_timeout",     "server_421",        "shutdown",
    "error",        "bare_newline",        "log_failure",       "client_tls_failed",
    "upstream_tls_failed", "rule_disconnect", "other"};
#define NREASONS (sizeof(reasons) / sizeof(reasons[0]))

static const char *const classes[] = {"2xx", "4xx", "5xx"};
#define NCLASSES 3

static const char *const mechanisms[] = {
    "PLAIN",         "LOGIN",       "CRAM-MD5",    "DIGEST-MD5", "SCRAM-SHA-1",
    "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "XOAUTH2", "OAUTHBEARER",
    "EXTERNAL",      "GSSAPI",      "NTLM",        "ANONYMOUS",  "other"};
#define NMECHS (sizeof(mechanisms) / sizeof(mechanisms[0]))

/* success: a 2xx; failure: 4xx or 5xx (a cancelled exchange too: the server answers 501);
 * none: no final reply (the session ended in the middle). */
static const char *const auth_results[] = {"success", "failure", "none"};
#define NAUTHRESULTS 3

static const char *const legs[] = {"client", "upstream"};
static const char *const tls_results[] = {"ok", "failed"};

static const double connect_buckets[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                         0.5,   1,     2.5,  5,     10,   30};
static const double duration_buckets[] = {0.01, 0.05, 0.1, 0.5,  1,    5,   10,
                                          30,   60,   300, 600, 1800, 3600};
#define NBUCKETS 13

/* Non-cumulative bucket counts (the last: beyond every bound); the sum in microseconds. */
struct histogram {
	counter bucket[NBUCKETS + 1];
	counter count;
	counter sum_us;
};

/* What one worker slot has counted. */
struct metrics_counts {
	counter sessions[NREASONS];
	counter messages[NCLASSES];
	counter recipients[NCLASSES];
	counter octets[2]; /* received from the client, from the server */
	counter auth[NMECHS][NAUTHRESULTS];
	counter tls[2][2]; /* [leg][result] */
	counter rule_hits[METRICS_RULE_SLOTS + 1]; /* the last: rules beyond the table */
	counter journal_errors;
	counter events_dropped;
	struct histogram connect;
	struct histogram duration;
};

struct metrics_rule {
	char label[METRICS_LABEL_MAX]; /* FILE:LINE */
	int action;                    /* enum rule_action */
};

struct metrics_shm {
	pthread_mutex_t lock; /* taken only to add a rule's label to the table */
	_Atomic unsigned nrules;
	struct metrics_rule rules[METRICS_RULE_SLOTS];
	struct metrics_counts worker[]; /* nworkers */
};

/* A ruleset's rule numbers turned into slots of the table (-1: the "other" row). */
struct rule_map {
	struct ruleset *rs; /* referenced: its address is not reused while mapped */
	int n;
	int *slot;
};

static struct metrics_shm *shm;
static size_t shm_size;
static unsigned nworkers;
static struct proxy *mpx;
static struct evhttp *http;
static struct evhttp_bound_socket *bound;
static struct evconnlistener *mlev;  /* bound's, NULL once evhttp_free has freed it */
static struct event *resume_ev;      /* ends a pause after EMFILE */
static struct bufferevent *conns[METRICS_MAX_CONNS]; /* HTTP connections open now */
static unsigned nconns;
static struct event *sweep_ev;       /* looks for the connections evhttp has freed */
static struct event_base *own_base; /* the supervisor's, with workers; else NULL */
static int in_worker;
static uint64_t journal_seen;     /* this process's transcript write errors already counted */
static uint64_t dropped_seen;     /* ... and its dropped event lines */
static struct rule_map maps[2];   /* the rules now in force and those of a reload before */
static unsigned map_next;
static int sigfd = -1;
static struct event *sig_ev, *tick_ev;
static int sig_caught;

static void
count_add(counter *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static uint64_t
count_get(counter *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

static struct metrics_counts *
metrics_mine(void)
{
	unsigned w = mpx->worker < nworkers ? mpx->worker : 0;

	return &shm->worker[w];
}

static void
histogram_observe(struct histogram *h, const double *bounds, double v)
{
	unsigned i = 0;

	if (v < 0)
		v = 0;
	while (i < NBUCKETS && v > bounds[i])
		i++;
	count_add(&h->bucket[i], 1);
	count_add(&h->count, 1);
	count_add(&h->sum_us, (uint64_t)(v * 1e6));
}

static unsigned
metrics_reason(const char *reason)
{
	for (unsigned i = 0; reason != NULL && i < NREASONS - 1; i++)
		if (strcmp(reason, reasons[i]) == 0)
			return i;
	return NREASONS - 1;
}

/* 0, 1, 2 for 2xx, 4xx, 5xx; -1 for anything else (no reply, 3xx). */
static int
metrics_class(int code)
{
	switch (code / 100) {
	case 2:
		return 0;
	case 4:
		return 1;
	case 5:
		return 2;
	default:
		return -1;
	}
}

static unsigned
metrics_mechanism(const char *mech)
{
	for (unsigned i = 0; i < NMECHS - 1; i++)
		if (strcasecmp(mech, mechanisms[i]) == 0)
			return i;
	return NMECHS - 1;
}

/* The slot of a label in the shared table, added when new; -1 when the table is full. */
static int
metrics_rule_slot(const char *label, int action)
{
	unsigned n = atomic_load(&shm->nrules), i;
	int slot = -1;

	for (i = 0; i < n; i++)
		if (shm->rules[i].action == action && strcmp(shm->rules[i].label, label) == 0)
			return (int)i;
	if (pthread_mutex_lock(&shm->lock) == EOWNERDEAD)
		pthread_mutex_consistent(&shm->lock);
	n = atomic_load(&shm->nrules); /* another worker may have added it meanwhile */
	for (i = 0; i < n && slot < 0; i++)
		if (shm->rules[i].action == action && strcmp(shm->rules[i].label, label) == 0)
			slot = (int)i;
	if (slot < 0 && n < METRICS_RULE_SLOTS) {
		snprintf(shm->rules[n].label, sizeof(shm->rules[n].label), "%s", label);
		shm->rules[n].action = action;
		atomic_store(&shm->nrules, n + 1); /* published once the label is written */
		slot = (int)n;
	}
	pthread_mutex_unlock(&shm->lock);
	return slot;
}

static void
rule_map_clear(struct rule_map *m)
{
	rules_free(m->rs);
	free(m->slot);
	memset(m, 0, sizeof(*m));
}

/* The slots of rs's rules, worked out once per ruleset (again only after two reloads). */
static const struct rule_map *
metrics_rule_map(struct ruleset *rs)
{
	struct rule_map *m;
	const char *file;
	unsigned int line;
	enum rule_scope scope;
	enum rule_action action;
	char label[METRICS_LABEL_MAX];

	for (unsigned i = 0; i < 2; i++)
		if (maps[i].rs == rs)
			return &maps[i];
	m = &maps[map_next];
	map_next = (map_next + 1) % 2;
	rule_map_clear(m);
	m->n = rules_count(rs);
	if ((m->slot = calloc((size_t)m->n + 1, sizeof(*m->slot))) == NULL)
		return NULL;
	m->rs = rules_ref(rs);
	for (int i = 0; i < m->n; i++) {
		rules_describe(rs, i, &file, &line, &scope, &action);
		snprintf(label, sizeof(label), "%s:%u", file, line);
		m->slot[i] = metrics_rule_slot(label, (int)action);
	}
	return m;
}

static void
metrics_rules(struct metrics_counts *c, const struct session *s)
{
	const struct rule_map *m;

	if (s->rules == NULL || s->rule_hits == NULL ||
	    (m = metrics_rule_map(s->rules)) == NULL)
		return;
	for (int i = 0; i < m->n; i++)
		if (s->rule_hits[i] > 0)
			count_add(&c->rule_hits[m->slot[i] >= 0 ? m->slot[i] : METRICS_RULE_SLOTS],
			          s->rule_hits[i]);
}

static void
metrics_transactions(struct metrics_counts *c, const struct session *s)
{
	const struct tx *tx;
	int k;

	TAILQ_FOREACH(tx, &s->txs, entry) {
		if ((k = metrics_class(tx->code)) >= 0)
			count_add(&c->messages[k], 1);
		for (size_t i = 0; i < tx->nrcpt; i++)
			if ((k = metrics_class(tx->rcpts[i].code)) >= 0)
				count_add(&c->recipients[k], 1);
	}
}

/* Handshakes, as the session's end tells them (passthrough TLS is none of ours). */
static void
metrics_tls(struct metrics_counts *c, const struct session *s)
{
	if (s->client_tls != NULL && s->client_tls->up)
		count_add(&c->tls[0][0], 1);
	else if (s->client_tls_error != NULL)
		count_add(&c->tls[0][1], 1);
	if (s->upstream_tls != NULL && s->upstream_tls->up)
		count_add(&c->tls[1][0], 1);
	else if (s->close_reason != NULL && strcmp(s->close_reason, "upstream_tls_failed") == 0)
		count_add(&c->tls[1][1], 1);
}

/* Adds to a counter what a process-wide total gained since *seen, which follows it. */
static void
count_since(counter *c, uint64_t total, uint64_t *seen)
{
	if (total > *seen) {
		count_add(c, total - *seen);
		*seen = total;
	}
}

void
metrics_session_end(const struct session *s, double duration)
{
	struct metrics_counts *c;
	int k;

	if (shm == NULL)
		return;
	c = metrics_mine();
	count_add(&c->sessions[metrics_reason(s->close_reason)], 1);
	histogram_observe(&c->duration, duration_buckets, duration);
	count_add(&c->octets[0], s->client.octets);
	count_add(&c->octets[1], s->server.octets);
	metrics_transactions(c, s);
	if (s->auth.used) {
		k = metrics_class(s->auth.code);
		count_add(&c->auth[metrics_mechanism(s->auth.mech)][k == 0 ? 0 : k > 0 ? 1 : 2], 1);
	}
	metrics_tls(c, s);
	metrics_rules(c, s);
	/* The journal's and the events file's own counts, per process: what is new since. */
	count_since(&c->journal_errors, transcript_write_errors(), &journal_seen);
	count_since(&c->events_dropped, events_dropped_total(), &dropped_seen);
}

void
metrics_upstream_connected(const struct timeval *start)
{
	struct timeval now;

	if (shm == NULL)
		return;
	gettimeofday(&now, NULL);
	histogram_observe(&metrics_mine()->connect, connect_buckets,
	                  (double)(now.tv_sec - start->tv_sec) +
	                      (double)(now.tv_usec - start->tv_usec) / 1e6);
}

/* ---- The text format ------------------------------------------------------------------ */

static uint64_t
sum(size_t offset)
{
	uint64_t total = 0;

	for (unsigned w = 0; w < nworkers; w++)
		total += count_get((counter *)((char *)&shm->worker[w] + offset));
	return total;
}

#define SUM(field) sum(offsetof(struct metrics_counts, field))

static void
family(struct evbuffer *b, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value: backslash, double quote and line feed escaped, as the format wants. */
static void
label_value(struct evbuffer *b, const char *v)
{
	for (; *v != '\0'; v++) {
		if (*v == '\\' || *v == '"')
			evbuffer_add_printf(b, "\\%c", *v);
		else if (*v == '\n')
			evbuffer_add(b, "\\n", 2);
		else
			evbuffer_add(b, v, 1);
	}
}

static void
write_histogram(struct evbuffer *b, const char *name, size_t offset, const double *bounds)
{
	uint64_t cumulative = 0;
	unsigned i;

	for (i = 0; i <= NBUCKETS; i++) {
		cumulative += sum(offset + offsetof(struct histogram, bucket) + i * sizeof(counter));
		if (i < NBUCKETS)
			evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i],
			                    (unsigned long long)cumulative);
		else
			evbuffer_add_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name,
			                    (unsigned long long)cumulative);
	}
	evbuffer_add_printf(b, "%s_sum %.6f\n%s_count %llu\n", name,
	                    (double)sum(offset + offsetof(struct histogram, sum_us)) / 1e6, name,
	                    (unsigned long long)sum(offset + offsetof(struct histogram, count)));
}

static void
write_classes(struct evbuffer *b, const char *name, size_t offset)
{
	for (unsigned i = 0; i < NCLASSES; i++)
		evbuffer_add_printf(b, "%s{class=\"%s\"} %llu\n", name, classes[i],
		                    (unsigned long long)sum(offset + i * sizeof(counter)));
}

static void
write_sessions(struct evbuffer *b)
{
	family(b, "smtptap_sessions_open", "gauge", "Sessions open now.");
	evbuffer_add_printf(b, "smtptap_sessions_open %u\n", proxy_sessions_total(mpx));
	family(b, "smtptap_sessions_total", "counter", "Sessions ended, by reason.");
	for (unsigned i = 0; i < NREASONS; i++)
		evbuffer_add_printf(b, "smtptap_sessions_total{reason=\"%s\"} %llu\n", reasons[i],
		                    (unsigned long long)SUM(sessions[i]));
	family(b, "smtptap_messages_total", "counter",
	       "Messages by the class of their final reply.");
	write_classes(b, "smtptap_messages_total", offsetof(struct metrics_counts, messages));
	family(b, "smtptap_recipients_total", "counter", "Recipients by the class of their reply.");
	write_classes(b, "smtptap_recipients_total", offsetof(struct metrics_counts, recipients));
	family(b, "smtptap_octets_total", "counter", "Octets received from each side.");
	evbuffer_add_printf(b, "smtptap_octets_total{direction=\"client\"} %llu\n",
	                    (unsigned long long)SUM(octets[0]));
	evbuffer_add_printf(b, "smtptap_octets_total{direction=\"server\"} %llu\n",
	                    (unsigned long long)SUM(octets[1]));
}

static void
write_auth_tls(struct evbuffer *b)
{
	family(b, "smtptap_auth_total", "counter", "AUTH exchanges by mechanism and result.");
	for (unsigned m = 0; m < NMECHS; m++)
		for (unsigned r = 0; r < NAUTHRESULTS; r++)
			evbuffer_add_printf(
			    b, "smtptap_auth_total{mechanism=\"%s\",result=\"%s\"} %llu\n",
			    mechanisms[m], auth_results[r], (unsigned long long)SUM(auth[m][r]));
	family(b, "smtptap_tls_handshakes_total", "counter", "TLS handshakes by leg and result.");
	for (unsigned l = 0; l < 2; l++)
		for (unsigned r = 0; r < 2; r++)
			evbuffer_add_printf(b,
			                    "smtptap_tls_handshakes_total{leg=\"%s\",result=\"%s\"} "
			                    "%llu\n",
			                    legs[l], tls_results[r], (unsigned long long)SUM(tls[l][r]));
}

static void
write_rules(struct evbuffer *b)
{
	unsigned n = atomic_load(&shm->nrules);

	family(b, "smtptap_rule_hits_total", "counter",
	       "Rule hits by rule (FILE:LINE) and action; rule=\"other\": beyond the first 1024 "
	       "rules counted.");
	for (unsigned i = 0; i < n; i++) {
		evbuffer_add_printf(b, "smtptap_rule_hits_total{rule=\"");
		label_value(b, shm->rules[i].label);
		evbuffer_add_printf(b, "\",action=\"%s\"} %llu\n",
		                    rules_action_name((enum rule_action)shm->rules[i].action),
		                    (unsigned long long)SUM(rule_hits[i]));
	}
	evbuffer_add_printf(b, "smtptap_rule_hits_total{rule=\"other\",action=\"other\"} %llu\n",
	                    (unsigned long long)SUM(rule_hits[METRICS_RULE_SLOTS]));
}

static void
metrics_render(struct evbuffer *b)
{
	write_sessions(b);
	write_auth_tls(b);
	write_rules(b);
	family(b, "smtptap_upstream_connect_seconds", "histogram",
	       "From accepting the client to the upstream connection being up.");
	write_histogram(b, "smtptap_upstream_connect_seconds",
	                offsetof(struct metrics_counts, connect), connect_buckets);
	family(b, "smtptap_session_duration_seconds", "histogram", "Session durations.");
	write_histogram(b, "smtptap_session_duration_seconds",
	                offsetof(struct metrics_counts, duration), duration_buckets);
	family(b, "smtptap_journal_write_errors_total", "counter",
	       "Failed writes of the session records (transcripts).");
	evbuffer_add_printf(b, "smtptap_journal_write_errors_total %llu\n",
	                    (unsigned long long)SUM(journal_errors));
	family(b, "smtptap_events_dropped_total", "counter", "Event lines dropped.");
	evbuffer_add_printf(b, "smtptap_events_dropped_total %llu\n",
	                    (unsigned long long)SUM(events_dropped));
}

/* ---- HTTP ----------------------------------------------------------------------------- */

static void
metrics_http_cb(struct evhttp_request *req, void *arg)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct evbuffer *b;

	(void)arg;
	if (path == NULL || strcmp(path, "/metrics") != 0) {
		evhttp_send_error(req, HTTP_NOTFOUND, NULL);
		return;
	}
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		evhttp_add_header(out, "Allow", "GET");
		evhttp_send_error(req, 405, "Method Not Allowed");
		return;
	}
	if ((b = evbuffer_new()) == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	metrics_render(b);
	evhttp_add_header(out, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, HTTP_OK, "OK", b);
	evbuffer_free(b);
}

/* Accepts while there is room under the cap and no pause is running. */
static void
metrics_accepting(void)
{
	if (mlev == NULL)
		return;
	/* A pause runs while its timer is pending. */
	if (nconns < METRICS_MAX_CONNS && !evtimer_pending(resume_ev, NULL))
		evconnlistener_enable(mlev);
	else
		evconnlistener_disable(mlev);
}

/*
 * Lets go of the buffer events evhttp has freed.  evhttp 2.1 has no hook for a connection that
 * ends before its first request, so each one's buffer event is ours (metrics_bev_cb) and holds
 * a reference of ours: when evhttp frees the connection, its bufferevent_free only clears the
 * callbacks (evhttp always sets an event callback), and the socket closes here.
 */
static void
metrics_sweep(void)
{
	bufferevent_event_cb eventcb;
	unsigned i = 0;

	while (i < nconns) {
		bufferevent_getcb(conns[i], NULL, NULL, &eventcb, NULL);
		if (eventcb != NULL) {
			i++;
			continue;
		}
		bufferevent_decref(conns[i]);
		conns[i] = conns[--nconns];
	}
	metrics_accepting();
}

/* Sweeps every METRICS_SWEEP_MSECS while there are connections. */
static void
metrics_sweep_later(void)
{
	struct timeval again = {0, METRICS_SWEEP_MSECS * 1000};

	if (nconns > 0 && !evtimer_pending(sweep_ev, NULL))
		evtimer_add(sweep_ev, &again);
}

static void
metrics_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	metrics_sweep();
	metrics_sweep_later();
}

/* evhttp's buffer event for each connection it accepts, counted until evhttp is done with it. */
static struct bufferevent *
metrics_bev_cb(struct event_base *base, void *arg)
{
	struct bufferevent *bev;

	(void)arg;
	/* Full: not reached, the listener is off then.  NULL: evhttp makes its own, uncounted. */
	if (nconns >= METRICS_MAX_CONNS ||
	    (bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE)) == NULL)
		return NULL;
	/* evhttp keeps reading while a reply is pending (to see a close); this stops it. */
	bufferevent_setwatermark(bev, EV_READ, 0, METRICS_READ_MAX);
	bufferevent_incref(bev);
	conns[nconns++] = bev; /* swept later: evhttp sets its callbacks after this returns */
	metrics_accepting();
	metrics_sweep_later();
	return bev;
}

static void
metrics_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	metrics_accepting();
}

/* Out of descriptors: stop accepting for a moment rather than retry on every turn of the loop
 * (libevent would, warning each time); the rest is logged and left. */
static void
metrics_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct timeval pause = {0, METRICS_ACCEPT_PAUSE_MSECS * 1000};
	int err = EVUTIL_SOCKET_ERROR();

	(void)lev;
	(void)arg;
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		log_warnx("accept on metrics: %s; pausing accepts for %d ms", strerror(err),
		          METRICS_ACCEPT_PAUSE_MSECS);
		event_add(resume_ev, &pause);
		metrics_accepting();
		return;
	}
	if (err != EAGAIN && err != EINTR && err != ECONNABORTED)
		log_warnx("accept on metrics: %s", strerror(err));
}

/* The listening socket, ours rather than evhttp's so that accept errors come to us. */
static struct evconnlistener *
metrics_bind(struct event_base *base, const char *host, const char *port)
{
	struct evutil_addrinfo hints, *ai = NULL;
	struct evconnlistener *lev;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_NUMERICHOST | EVUTIL_AI_NUMERICSERV;
	if (evutil_getaddrinfo(host, port, &hints, &ai) != 0 || ai == NULL)
		return NULL;
	lev = evconnlistener_new_bind(base, NULL, NULL,
	                              LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
	                                  LEV_OPT_REUSEABLE,
	                              128, ai->ai_addr, (int)ai->ai_addrlen);
	evutil_freeaddrinfo(ai);
	return lev;
}

static int
metrics_listen(struct event_base *base, const char *addr)
{
	char *host, *port, *end;
	const char *why;
	unsigned long p;
	struct evconnlistener *lev = NULL;

	if (hostport_split(addr, &host, &port, &why) != 0)
		return -1;
	p = strtoul(port, &end, 10);
	if (*end == '\0' && p > 0 && p < 65536 &&
	    (resume_ev = evtimer_new(base, metrics_resume_cb, NULL)) != NULL &&
	    (sweep_ev = evtimer_new(base, metrics_sweep_cb, NULL)) != NULL &&
	    (http = evhttp_new(base)) != NULL && (lev = metrics_bind(base, host, port)) != NULL) {
		evhttp_set_gencb(http, metrics_http_cb, NULL);
		evhttp_set_bevcb(http, metrics_bev_cb, NULL);
		evhttp_set_timeout(http, METRICS_HTTP_TIMEOUT);
		evhttp_set_max_headers_size(http, 8192);
		evhttp_set_max_body_size(http, 0);
		/* evhttp sets its accept callback; the error callback stays ours. */
		if ((bound = evhttp_bind_listener(http, lev)) != NULL) {
			mlev = lev;
			evconnlistener_set_error_cb(mlev, metrics_accept_error_cb);
		} else
			evconnlistener_free(lev);
	}
	free(host);
	free(port);
	return bound != NULL ? 0 : -1;
}

int
metrics_init(struct proxy *px, const char *addr, unsigned n)
{
	pthread_mutexattr_t attr;

	mpx = px;
	px->session_ended = metrics_session_end;
	px->upstream_connected = metrics_upstream_connected;
	nworkers = n > 0 ? n : 1;
	shm_size = sizeof(*shm) + nworkers * sizeof(struct metrics_counts);
	shm = mmap(NULL, shm_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED) {
		shm = NULL;
		return -1;
	}
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&shm->lock, &attr);
	pthread_mutexattr_destroy(&attr);
	/* With workers the supervisor serves, from a loop of its own: px->base holds the
	 * listeners, which only the workers may accept on. */
	if (nworkers > 1 && (own_base = event_base_new()) == NULL)
		return -1;
	if (metrics_listen(own_base != NULL ? own_base : px->base, addr) != 0)
		return -1;
	log_info("metrics on http://%s/metrics", addr);
	return 0;
}

/* ---- The supervisor's wait ------------------------------------------------------------ */

static void
metrics_signal_cb(evutil_socket_t fd, short what, void *arg)
{
	struct signalfd_siginfo si;

	(void)what;
	(void)arg;
	if (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		sig_caught = (int)si.ssi_signo;
		event_base_loopbreak(own_base);
	}
}

static void
metrics_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	event_base_loopbreak(own_base);
}

int
metrics_sigwait(const sigset_t *set, int seconds)
{
	struct timespec ts = {seconds, 0};
	struct timeval tv = {seconds, 0};

	if (own_base == NULL)
		return sigtimedwait(set, NULL, &ts);
	/* The signals stay blocked: they are read from a signalfd, between scrapes. */
	if (sigfd < 0) {
		if ((sigfd = signalfd(-1, set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 ||
		    (sig_ev = event_new(own_base, sigfd, EV_READ | EV_PERSIST, metrics_signal_cb,
		                        NULL)) == NULL ||
		    event_add(sig_ev, NULL) != 0 ||
		    (tick_ev = evtimer_new(own_base, metrics_tick_cb, NULL)) == NULL)
			fatal("metrics: signalfd");
	}
	sig_caught = 0;
	evtimer_add(tick_ev, &tv);
	event_base_dispatch(own_base);
	evtimer_del(tick_ev);
	return sig_caught > 0 ? sig_caught : -1;
}

void
metrics_in_worker(void)
{
	/*
	 * The loop is the supervisor's (one epoll instance for both): freeing it here would
	 * change the supervisor's.  Only the descriptors go; the rest stays, reachable, unused.
	 */
	in_worker = 1;
	if (bound != NULL && own_base != NULL)
		close(evhttp_bound_socket_get_fd(bound));
	if (sigfd >= 0)
		close(sigfd);
	sigfd = -1;
}

void
metrics_free(void)
{
	for (unsigned i = 0; i < 2; i++)
		rule_map_clear(&maps[i]);
	if (in_worker || shm == NULL)
		return;
	if (sig_ev != NULL)
		event_free(sig_ev);
	if (tick_ev != NULL)
		event_free(tick_ev);
	if (sigfd >= 0)
		close(sigfd);
	mlev = NULL; /* evhttp_free frees it, then the connections, whose ends come here */
	if (http != NULL)
		evhttp_free(http);
	while (nconns > 0)
		bufferevent_decref(conns[--nconns]);
	if (resume_ev != NULL)
		event_free(resume_ev);
	if (sweep_ev != NULL)
		event_free(sweep_ev);
	if (own_base != NULL)
		event_base_free(own_base);
	munmap(shm, shm_size);
	shm = NULL;
}
