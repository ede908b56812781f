/* The session's JSON event, written when the session ends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logs/escape.h"
#include "logs/events.h"
#include "logs/json.h"
#include "logs/log.h"
#include "logs/transcript.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/conn.h"
#include "proxy/report.h"
#include "proxy/tx.h"

/*
 * The event line is written by our own JSON writer (logs/json.c): jansson's dump cost more
 * instructions per session than a blind relay's whole session.  Text in it is valid UTF-8 by
 * construction: peer octets stored already escaped (made safe as they arrived), or text of
 * ours (ids, times, addresses: ASCII).
 */
static struct json_writer jw;

/* Raw peer text (a TLS name, an AUTH user), escaped as in transcripts first. */
static void
report_string(const char *s)
{
	char *esc;

	if (s == NULL || (esc = escape_strdup((const unsigned char *)s, strlen(s))) == NULL) {
		jw_null(&jw);
		return;
	}
	jw_str(&jw, esc);
	free(esc);
}

static void
report_kv(const char *key, const char *value)
{
	jw_key(&jw, key);
	jw_str(&jw, value);
}

static void
report_code(const char *key, int code)
{
	jw_key(&jw, key);
	jw_int_or_null(&jw, code, code > 0);
}

/*
 * ESMTP parameters, one string each, split at space and tab: the only white space left raw
 * in the escaped text tx.c keeps (a VT, FF or CR between two parameters stays inside one
 * string, as \x0b, \x0c, \x0d).
 */
static void
report_params(const char *params)
{
	const char *p = params, *end;

	jw_key(&jw, "mail_params");
	jw_open(&jw, '[');
	while (p != NULL && *p != '\0') {
		while (*p == ' ' || *p == '\t')
			p++;
		for (end = p; *end != '\0' && *end != ' ' && *end != '\t'; end++)
			;
		if (end > p)
			jw_strn(&jw, p, (size_t)(end - p));
		p = end;
	}
	jw_close(&jw, ']');
}

/* One transaction; written key by key, as a session may carry a thousand of them. */
static void
report_tx(const struct tx *tx)
{
	char queue_id[128];
	size_t i;

	jw_open(&jw, '{');
	report_kv("mail_from", tx->mail_from);
	report_params(tx->mail_params);
	report_code("mail_code", tx->mail_code);
	report_kv("mail_text", tx->mail_code > 0 ? tx->mail_text : NULL);
	jw_key(&jw, "rcpt");
	jw_open(&jw, '[');
	for (i = 0; i < tx->nrcpt; i++) {
		jw_open(&jw, '{');
		report_kv("to", tx->rcpts[i].to);
		report_code("code", tx->rcpts[i].code);
		report_kv("text", tx->rcpts[i].code > 0 ? tx->rcpts[i].text : NULL);
		jw_close(&jw, '}');
	}
	jw_close(&jw, ']');
	jw_key(&jw, "size");
	jw_int_or_null(&jw, (long long)tx->size, tx->data);
	report_code("code", tx->code);
	report_kv("text", tx->code > 0 ? tx->text : NULL);
	report_kv("queue_id", tx->code / 100 == 2 && tx_queue_id(tx->text, queue_id,
	                                                         sizeof(queue_id)) == 0
	                          ? queue_id
	                          : NULL);
	jw_close(&jw, '}');
}

static void
report_transactions(const struct session *s)
{
	struct tx *tx;

	jw_key(&jw, "transactions");
	jw_open(&jw, '[');
	TAILQ_FOREACH(tx, &s->txs, entry)
	report_tx(tx);
	jw_close(&jw, ']');
}

static void
report_tls_leg(const char *key, const struct tls_info *t, int upstream)
{
	jw_key(&jw, key);
	if (t == NULL || !t->up) {
		jw_null(&jw);
		return;
	}
	jw_open(&jw, '{');
	report_kv("version", t->version);
	report_kv("cipher", t->cipher);
	if (upstream) {
		jw_key(&jw, "subject");
		report_string(t->subject);
		report_kv("verify", t->verify);
	} else {
		jw_key(&jw, "sni");
		report_string(t->sni[0] ? t->sni : NULL);
	}
	jw_close(&jw, '}');
}

static const char *
report_tls_mode(const struct session *s)
{
	switch (s->px->opts->tls_mode) {
	case TLS_TERMINATE:
		return "terminate";
	case TLS_STRIP:
		return "strip";
	default:
		return "passthrough";
	}
}

static void
report_tls(const struct session *s)
{
	jw_key(&jw, "tls");
	jw_open(&jw, '{');
	report_kv("mode", report_tls_mode(s));
	report_tls_leg("client", s->client_tls, 0);
	report_tls_leg("upstream", s->upstream_tls, 1);
	if (s->client_tls_error != NULL) {
		jw_key(&jw, "client_error");
		report_string(s->client_tls_error);
	}
	if (s->closed_in == PHASE_RAW) {
		jw_key(&jw, "client_octets");
		jw_int(&jw, (long long)s->client.raw_octets);
		jw_key(&jw, "server_octets");
		jw_int(&jw, (long long)s->server.raw_octets);
	}
	jw_close(&jw, '}');
}

static void
report_extras(const struct session *s)
{
	if (s->closed_in == PHASE_RAW || s->client_tls != NULL || s->upstream_tls != NULL ||
	    s->client_tls_error != NULL)
		report_tls(s);
	if (s->auth.used) {
		jw_key(&jw, "auth");
		jw_open(&jw, '{');
		jw_key(&jw, "mechanism");
		report_string(s->auth.mech[0] ? s->auth.mech : NULL);
		jw_key(&jw, "user");
		report_string(s->auth.user[0] ? s->auth.user : NULL);
		report_code("code", s->auth.code);
		report_kv("text", s->auth.code > 0 ? s->auth.text : NULL);
		jw_close(&jw, '}');
	}
}

/* The rules that hit, with their hit counts. */
static void
report_rules(const struct session *s)
{
	const char *file;
	unsigned int line;
	enum rule_scope scope;
	enum rule_action action;
	char where[512];
	int i;

	jw_key(&jw, "rules");
	jw_open(&jw, '[');
	for (i = 0; s->rule_hits != NULL && i < rules_count(s->rules); i++) {
		if (s->rule_hits[i] == 0)
			continue;
		rules_describe(s->rules, i, &file, &line, &scope, &action);
		snprintf(where, sizeof(where), "%s:%u", file, line);
		jw_open(&jw, '{');
		report_kv("rule", where);
		report_kv("scope", rules_scope_name(scope));
		report_kv("action", rules_action_name(action));
		jw_key(&jw, "hits");
		jw_int(&jw, (long long)s->rule_hits[i]);
		jw_close(&jw, '}');
	}
	jw_close(&jw, ']');
}

/*
 * An event line waiting for its session's records to be written: the line with a null where
 * the transcript's place goes (at), and room after it to put the place instead.
 */
#define REPORT_PLACE_MAX 80 /* {"file":"YYYY-MM-DD.log","offset":N} */
struct report_wait {
	size_t len, at;
	char line[];
};

/* Where the session's records start: {"file": "YYYY-MM-DD.log", "offset": N}, or null. */
static void
report_place(struct json_writer *w, const char *file, int64_t offset)
{
	if (offset < 0) {
		jw_null(w);
		return;
	}
	jw_open(w, '{');
	jw_key(w, "file");
	jw_str(w, file);
	jw_key(w, "offset");
	jw_int(w, (long long)offset);
	jw_close(w, '}');
}

/* The journal wrote (or lost) the batch holding the session's first record: the line goes. */
static void
report_located(void *arg, const char *file, int64_t offset)
{
	static struct json_writer place;
	struct report_wait *rw = arg;
	char *null = rw->line + rw->at;

	jw_reset(&place);
	report_place(&place, file, offset);
	if (!place.failed && place.len <= REPORT_PLACE_MAX) {
		memmove(null + place.len, null + 4, rw->len - rw->at - 4);
		memcpy(null, place.buf, place.len);
		events_write_line(rw->line, rw->len - 4 + place.len);
	}
	free(rw);
}

/*
 * The line made, with a null at at: written now if the session's place is known, else
 * when the journal has written its records (an event never points past the file's end).
 */
static void
report_emit(const struct session *s, size_t at)
{
	struct report_wait *rw;

	if (s->transcript == NULL || at == 0) {
		events_write_line(jw.buf, jw.len);
		return;
	}
	if ((rw = malloc(sizeof(*rw) + jw.len + REPORT_PLACE_MAX)) == NULL)
		return;
	memcpy(rw->line, jw.buf, jw.len);
	rw->len = jw.len;
	rw->at = at;
	if (transcript_locate(s->transcript, report_located, rw) != 0) {
		events_write_line(jw.buf, jw.len); /* with a null place */
		free(rw);
	}
}

/* Appends to a bounded line; once full, it stays full (the log line ends with "..."). */
static void
report_put(char *buf, size_t size, size_t *len, const char *s)
{
	size_t n = strlen(s);

	if (*len >= size - 1)
		return;
	if (n >= size - *len) {
		memcpy(buf + *len, s, size - 1 - *len);
		*len = size - 1;
		memcpy(buf + size - 4, "...", 4);
		return;
	}
	memcpy(buf + *len, s, n + 1);
	*len += n;
}

/* An integer, in decimal (without printf: the line is made for every session). */
static void
report_put_int(char *buf, size_t size, size_t *len, long long v)
{
	char num[24], *p = num + sizeof(num);
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

	*--p = '\0';
	do
		*--p = (char)('0' + u % 10);
	while ((u /= 10) != 0);
	if (v < 0)
		*--p = '-';
	report_put(buf, size, len, p);
}

static const char *
report_or(const char *s, const char *none)
{
	return s != NULL && s[0] != '\0' ? s : none;
}

/*
 * The session in one line of the program's log, Postfix-style, with what an operator greps
 * for: client, HELO, each transaction's sender, recipients and final code, the reason it
 * ended.  Peer text in it was escaped as it arrived.  Made piece by piece: with a printf per
 * piece it cost 7,700 instructions a session.
 */
static void
report_log_line(const struct session *s, double duration)
{
	char line[1800];
	size_t len = 0;
	const struct tx *tx;
	long long ms = duration > 0 ? (long long)(duration * 1000.0 + 0.5) : 0;
	char frac[5] = {'.', (char)('0' + ms / 100 % 10), (char)('0' + ms / 10 % 10),
	                (char)('0' + ms % 10), '\0'};

	line[0] = '\0';
	report_put(line, sizeof(line), &len, "session=");
	report_put(line, sizeof(line), &len, s->id);
	report_put(line, sizeof(line), &len, " client=");
	report_put(line, sizeof(line), &len, s->client_addr);
	report_put(line, sizeof(line), &len, " helo=<");
	report_put(line, sizeof(line), &len, report_or(s->helo, ""));
	report_put(line, sizeof(line), &len, ">");
	TAILQ_FOREACH(tx, &s->txs, entry) {
		report_put(line, sizeof(line), &len, " from=");
		report_put(line, sizeof(line), &len, report_or(tx->mail_from, "<>"));
		for (size_t i = 0; i < tx->nrcpt; i++) {
			report_put(line, sizeof(line), &len, " to=");
			report_put(line, sizeof(line), &len, report_or(tx->rcpts[i].to, "<>"));
			report_put(line, sizeof(line), &len, ":");
			report_put_int(line, sizeof(line), &len, tx->rcpts[i].code);
		}
		report_put(line, sizeof(line), &len, " code=");
		report_put_int(line, sizeof(line), &len, tx->code);
	}
	report_put(line, sizeof(line), &len, " reason=");
	report_put(line, sizeof(line), &len, report_or(s->close_reason, "-"));
	report_put(line, sizeof(line), &len, " duration=");
	report_put_int(line, sizeof(line), &len, ms / 1000);
	report_put(line, sizeof(line), &len, frac);
	log_session("%s", line);
}

/* The event, written key by key into one line. */
void
report_write(struct session *s, const struct timeval *end)
{
	char start_ts[32], end_ts[32];
	size_t at;
	double duration = (double)(end->tv_sec - s->start.tv_sec) +
	                  (double)(end->tv_usec - s->start.tv_usec) / 1e6;

	report_log_line(s, duration);
	if (s->px->session_ended != NULL)
		s->px->session_ended(s, duration);
	if (s->px->opts->events_off)
		return;
	transcript_timestamp(&s->start, start_ts, sizeof(start_ts));
	transcript_timestamp(end, end_ts, sizeof(end_ts));
	jw_reset(&jw);
	jw_open(&jw, '{');
	report_kv("session", s->id);
	report_kv("start", start_ts);
	report_kv("end", end_ts);
	jw_key(&jw, "duration");
	jw_duration(&jw,
	            (long long)(end->tv_sec - s->start.tv_sec) * 1000000 +
	                (long long)(end->tv_usec - s->start.tv_usec),
	            duration);
	report_kv("client", s->client_addr);
	report_kv("listener", s->listener_addr);
	report_kv("upstream", s->px->upstream_text);
	report_kv("upstream_address", s->upstream_addr);
	report_kv("upstream_local", s->upstream_local[0] ? s->upstream_local : NULL);
	jw_key(&jw, "transcript");
	at = jw.len;
	jw_null(&jw); /* its place, put there by report_emit */
	report_kv("helo", s->helo);
	jw_key(&jw, "early_talker");
	jw_bool(&jw, s->early_talker);
	if (s->forwarded != NULL)
		report_kv("forwarded", s->forwarded);
	if (s->via[0] != '\0')
		report_kv("via", s->via);
	if (s->proxy_local) {
		jw_key(&jw, "local");
		jw_bool(&jw, 1);
	}
	if (s->original_len > 0)
		report_kv("original_destination", s->original_text);
	report_extras(s);
	report_transactions(s);
	if (s->tx_unrecorded > 0) {
		jw_key(&jw, "transactions_unrecorded");
		jw_int(&jw, s->tx_unrecorded);
	}
	if (s->rules != NULL)
		report_rules(s);
	jw_key(&jw, "client_octets");
	jw_int(&jw, (long long)s->client.octets);
	jw_key(&jw, "server_octets");
	jw_int(&jw, (long long)s->server.octets);
	report_kv("reason", s->close_reason);
	jw_key(&jw, "warnings");
	jw_int(&jw, s->warnings);
	jw_close(&jw, '}');
	jw_newline(&jw);
	if (!jw.failed)
		report_emit(s, at);
}
