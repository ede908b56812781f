/* The session's JSON event, built with jansson when the session ends. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "logs/escape.h"
#include "logs/events.h"
#include "logs/log.h"
#include "logs/transcript.h"
#include "proxy/filter.h"
#include "proxy/metrics.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/session.h"
#include "proxy/tx.h"

/* Peer text goes into JSON escaped as in transcripts, so it is always valid UTF-8. */
static json_t *
report_string(const char *s)
{
	char *esc;
	json_t *j;

	if (s == NULL)
		return json_null();
	if ((esc = escape_strdup((const unsigned char *)s, strlen(s))) == NULL)
		return json_null();
	j = json_string(esc);
	free(esc);
	return j != NULL ? j : json_null();
}

/*
 * Text valid UTF-8 by construction, so jansson need not check it again: peer octets stored
 * already escaped (NUL included, made safe as they arrived), or text of ours (ids, times,
 * addresses: ASCII).  NULL gives null.
 */
static json_t *
report_valid(const char *s)
{
	json_t *j;

	if (s == NULL)
		return json_null();
	j = json_string_nocheck(s);
	return j != NULL ? j : json_null();
}

/* Sets a key of ours (ASCII literals) without jansson's UTF-8 check and format parsing. */
static void
report_set(json_t *o, const char *key, json_t *value)
{
	json_object_set_new_nocheck(o, key, value);
}

static json_t *
report_code(int code)
{
	return code > 0 ? json_integer(code) : json_null();
}

/* One transaction; built key by key, as a session may carry a thousand of them. */
static json_t *
report_tx(const struct tx *tx)
{
	json_t *rcpts = json_array(), *o = json_object(), *r;
	size_t i;

	if (rcpts == NULL || o == NULL) {
		json_decref(rcpts);
		json_decref(o);
		return json_null();
	}
	for (i = 0; i < tx->nrcpt; i++) {
		if ((r = json_object()) == NULL)
			break;
		report_set(r, "to", report_valid(tx->rcpts[i].to));
		report_set(r, "code", report_code(tx->rcpts[i].code));
		json_array_append_new(rcpts, r);
	}
	report_set(o, "mail_from", report_valid(tx->mail_from));
	report_set(o, "mail_code", report_code(tx->mail_code));
	report_set(o, "rcpt", rcpts);
	report_set(o, "size", json_integer((json_int_t)tx->size));
	report_set(o, "code", report_code(tx->code));
	report_set(o, "text", report_valid(tx->code > 0 ? tx->text : NULL));
	return o;
}

static json_t *
report_transactions(const struct session *s)
{
	json_t *a = json_array();
	struct tx *tx;

	TAILQ_FOREACH(tx, &s->txs, entry)
	json_array_append_new(a, report_tx(tx));
	return a;
}

static json_t *
report_tls_leg(const struct tls_info *t, int upstream)
{
	if (t == NULL || !t->up)
		return json_null();
	if (upstream)
		return json_pack("{s:s,s:s,s:o,s:s}", "version", t->version, "cipher", t->cipher,
		                 "subject", report_string(t->subject), "verify", t->verify);
	return json_pack("{s:s,s:s,s:o}", "version", t->version, "cipher", t->cipher, "sni",
	                 report_string(t->sni[0] ? t->sni : NULL));
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
report_extras(const struct session *s, json_t *o)
{
	json_t *tls;

	if (s->tls_passthrough || s->client_tls != NULL || s->upstream_tls != NULL ||
	    s->client_tls_error != NULL) {
		tls = json_pack("{s:s,s:o,s:o}", "mode", report_tls_mode(s), "client",
		                report_tls_leg(s->client_tls, 0), "upstream",
		                report_tls_leg(s->upstream_tls, 1));
		if (s->client_tls_error != NULL)
			json_object_set_new(tls, "client_error", report_string(s->client_tls_error));
		if (s->tls_passthrough) {
			json_object_set_new(tls, "client_octets",
			                    json_integer((json_int_t)s->client.raw_octets));
			json_object_set_new(tls, "server_octets",
			                    json_integer((json_int_t)s->server.raw_octets));
		}
		json_object_set_new(o, "tls", tls);
	}
	if (s->auth_used)
		json_object_set_new(o, "auth",
		                    json_pack("{s:o,s:o,s:o}", "mechanism",
		                              report_string(s->auth_mech[0] ? s->auth_mech : NULL),
		                              "user",
		                              report_string(s->auth_user[0] ? s->auth_user : NULL),
		                              "code", report_code(s->auth_code)));
}

/* Appends to a bounded line; once full, it stays full (the log line ends with "..."). */
static void __attribute__((format(printf, 4, 5)))
report_append(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (*len >= size - 1)
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf + *len, size - *len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= size - *len) {
		*len = size - 1;
		memcpy(buf + size - 4, "...", 4);
	} else {
		*len += (size_t)n;
	}
}

static const char *
report_or(const char *s, const char *none)
{
	return s != NULL && s[0] != '\0' ? s : none;
}

/*
 * The session in one line of the program's log, Postfix-style, with what an operator greps
 * for: client, HELO, each transaction's sender, recipients and final code, the reason it
 * ended.  Peer text in it was escaped as it arrived.
 */
static void
report_log_line(const struct session *s, double duration)
{
	char line[1800];
	size_t len = 0;
	const struct tx *tx;

	report_append(line, sizeof(line), &len, "session=%s client=%s helo=<%s>", s->id,
	              s->client_addr, report_or(s->helo, ""));
	TAILQ_FOREACH(tx, &s->txs, entry) {
		report_append(line, sizeof(line), &len, " from=%s", report_or(tx->mail_from, "<>"));
		for (size_t i = 0; i < tx->nrcpt; i++)
			report_append(line, sizeof(line), &len, " to=%s:%d",
			              report_or(tx->rcpts[i].to, "<>"), tx->rcpts[i].code);
		report_append(line, sizeof(line), &len, " code=%d", tx->code);
	}
	report_append(line, sizeof(line), &len, " reason=%s duration=%.3f",
	              report_or(s->close_reason, "-"), duration);
	log_info("%s", line);
}

/*
 * The event, built key by key: json_pack would parse its format and check every string
 * again, once per session.
 */
void
report_write(struct session *s, const struct timeval *end)
{
	char start_ts[32], end_ts[32];
	double duration = (double)(end->tv_sec - s->start.tv_sec) +
	                  (double)(end->tv_usec - s->start.tv_usec) / 1e6;
	json_t *o;

	report_log_line(s, duration);
	metrics_session_end(s, duration);
	if (s->px->opts->events_off || (o = json_object()) == NULL)
		return;
	transcript_timestamp(&s->start, start_ts, sizeof(start_ts));
	transcript_timestamp(end, end_ts, sizeof(end_ts));
	report_set(o, "session", report_valid(s->id));
	report_set(o, "start", report_valid(start_ts));
	report_set(o, "end", report_valid(end_ts));
	report_set(o, "duration", json_real(duration));
	report_set(o, "client", report_valid(s->client_addr));
	report_set(o, "listener", report_valid(s->listener_addr));
	report_set(o, "upstream", report_valid(s->px->upstream_text));
	report_set(o, "upstream_address", report_valid(s->upstream_addr));
	report_set(o, "transcript",
	           report_valid(s->transcript_path[0] ? s->transcript_path : NULL));
	report_set(o, "helo", report_valid(s->helo));
	report_set(o, "early_talker", json_boolean(s->early_talker));
	if (s->forwarded != NULL)
		report_set(o, "forwarded", report_valid(s->forwarded));
	if (s->via[0] != '\0')
		report_set(o, "via", report_valid(s->via));
	if (s->proxy_local)
		report_set(o, "local", json_true());
	if (s->original_len > 0)
		report_set(o, "original_destination", report_valid(s->original_text));
	report_extras(s, o);
	report_set(o, "transactions", report_transactions(s));
	if (s->tx_unrecorded > 0)
		report_set(o, "transactions_unrecorded", json_integer(s->tx_unrecorded));
	if (s->rules != NULL)
		report_set(o, "rules", filter_report(s));
	report_set(o, "client_octets", json_integer((json_int_t)s->client.octets));
	report_set(o, "server_octets", json_integer((json_int_t)s->server.octets));
	report_set(o, "reason", report_valid(s->close_reason));
	report_set(o, "warnings", json_integer(s->warnings));
	events_write(o);
	json_decref(o);
}
