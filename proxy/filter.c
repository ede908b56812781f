/* The session's side of the rules: apply, record, count. */
#include "proxy/filter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filters/scopes.h"
#include "logs/escape.h"
#include "logs/log.h"
#include "logs/transcript.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/conn.h"
#include "smtp/smtp.h"

int
filter_session_init(struct session *s, struct ruleset *rules)
{
	rule_outcome_init(&s->outcome);
	if (rules == NULL || rules_count(rules) == 0)
		return 0;
	s->rules = rules_ref(rules);
	s->rule_hits = calloc((size_t)rules_count(rules), sizeof(*s->rule_hits));
	return s->rule_hits != NULL ? 0 : -1;
}

void
filter_session_free(struct session *s)
{
	rule_outcome_free(&s->outcome);
	rules_free(s->rules);
	s->rules = NULL;
	free(s->rule_hits);
	s->rule_hits = NULL;
}

int
filter_has(const struct session *s, enum rule_scope scope)
{
	return s->rules != NULL && rules_has_scope(s->rules, scope);
}

int
filter_command_scopes(int verb, enum rule_scope scopes[2])
{
	return scopes_command(verb, scopes);
}

/* Whether --record keeps this scope's lines out of the transcript, rule hits included. */
static int
filter_content_hidden(const struct session *s, enum rule_scope scope)
{
	enum record_level level = s->px->opts->record;

	return (scope == SCOPE_HEADER && level == RECORD_NONE) ||
	       (scope == SCOPE_BODY && level != RECORD_BODY);
}

/* Records one hit: which rule, what it did, the line before and after. */
static void
filter_record_hit(struct session *s, const struct rule_hit *h)
{
	int hidden = filter_content_hidden(s, h->scope);
	char *orig = hidden ? NULL : escape_strdup(h->orig, h->orig_len);
	char *repl = !hidden && h->repl != NULL ? escape_strdup(h->repl, h->repl_len) : NULL;
	char *text =
	    h->text != NULL ? escape_strdup((const unsigned char *)h->text, strlen(h->text)) : NULL;

	transcript_event(s->transcript, "rule %s:%u %s%s scope=%s %s%s%s%s%s%s%s%s", h->file,
	                 h->line, rules_action_name(h->action),
	                 !h->failed            ? ""
	                 : s->outcome.tempfail ? " (failed, answered 451)"
	                                       : " (failed, skipped)",
	                 rules_scope_name(h->scope), hidden ? "(line not recorded)" : "line=\"",
	                 orig != NULL ? orig : "", hidden ? "" : "\"",
	                 repl != NULL ? " sent=\"" : "", repl != NULL ? repl : "",
	                 repl != NULL ? "\"" : "", text != NULL ? " text=" : "",
	                 text != NULL ? text : "");
	free(orig);
	free(repl);
	free(text);
	if (h->rule >= 0 && s->rule_hits != NULL)
		s->rule_hits[h->rule]++;
	if (h->action == ACT_WARN || h->failed)
		s->warnings++;
}

/*
 * A rule that could not be evaluated: a warning in the transcript, and in the log once per
 * session (a client can send a hostile line a thousand times; the operator needs to hear of
 * it once, with the rule to fix).
 */
static void
filter_failed(struct session *s, const struct rule_hit *h)
{
	const char *what = s->outcome.tempfail ? "line answered 451 4.3.0" : "rule skipped";

	session_warn(s, "rule %s:%u could not be evaluated (%s): %s", h->file, h->line,
	             h->text != NULL ? h->text : "error", what);
	s->warnings--; /* filter_record_hit counted it already */
	if (s->rule_failures++ == 0)
		log_warnx("session=%s rule %s:%u could not be evaluated (%s): %s", s->id, h->file,
		          h->line, h->text != NULL ? h->text : "error", what);
}

/* Records the hits of the last evaluation; the verdict, or -1 (session closed) on ENOMEM. */
static int
filter_record(struct session *s, int v)
{
	size_t i;

	if (v < 0) {
		session_close(s, "error");
		return -1;
	}
	for (i = 0; i < s->outcome.nhits; i++) {
		filter_record_hit(s, &s->outcome.hits[i]);
		if (s->outcome.hits[i].failed)
			filter_failed(s, &s->outcome.hits[i]);
	}
	return v;
}

/* The longest physical line of text (a rewritten header may hold several), its end left out. */
static size_t
filter_longest_line(const unsigned char *p, size_t len)
{
	const unsigned char *lf;
	size_t longest = 0, n;

	while (len > 0) {
		lf = memchr(p, '\n', len);
		n = lf != NULL ? (size_t)(lf - p) : len;
		if (n > longest)
			longest = n;
		if (lf == NULL)
			break;
		len -= n + 1;
		p = lf + 1;
	}
	return longest;
}

/*
 * A REWRITE may not make a line longer than --max-line (three /x/g rules can grow a line a
 * thousandfold): the line is refused 500 5.5.2, recorded, and the rewrite is never sent.
 * A reply line keeps the server's text; a message is refused at its end.
 */
static int
filter_bound(struct session *s, int v, const unsigned char *line, size_t len)
{
	size_t longest, limit = s->px->opts->max_line;

	if (v < 0 || !s->outcome.rewritten || v == ACT_REJECT || v == ACT_DISCONNECT)
		return v;
	/* A message line over --max-line was gathered whole, up to --max-header: its rewrite
	 * may be as long. */
	if (filter_longest_line(line, len) + 2 > limit && s->px->opts->max_header + 2 > limit)
		limit = s->px->opts->max_header + 2;
	longest = filter_longest_line(s->outcome.line, s->outcome.len);
	if (longest + 2 <= limit)
		return v;
	session_warn(s, "a rule rewrote a line to %zu octets, over --max-line: refused 500 5.5.2",
	             longest + 2);
	s->outcome.rewritten = 0;
	s->outcome.line = line;
	s->outcome.len = len;
	s->outcome.verdict = ACT_REJECT;
	s->outcome.reply = FILTER_TOO_LONG_REPLY;
	return ACT_REJECT;
}

int
filter_command(struct session *s, int verb, const unsigned char *arg, const unsigned char *line,
               size_t len)
{
	enum rule_scope scopes[2];
	int n = filter_command_scopes(verb, scopes);
	enum rule_scope addrscope = verb == VERB_MAIL ? SCOPE_SENDER : SCOPE_RECIPIENT;

	if (s->rules == NULL || (verb != VERB_MAIL && verb != VERB_RCPT) || arg == NULL ||
	    arg < line || arg > line + len)
		return filter_line(s, scopes, n, line, len);
	return filter_bound(
	    s,
	    filter_record(s, rules_apply_envelope(s->rules, addrscope, scopes, n, line, len,
	                                          (size_t)(arg - line), &s->outcome)),
	    line, len);
}

/* The client as a client rule sees it: "ADDRESS NAME", the address without port or brackets.
 * NAME is "unknown": smtptap looks up no reverse name (no DNS in the session path). */
static size_t
filter_client_subject(const struct session *s, char *buf, size_t size)
{
	const char *a = s->client_addr, *end;

	if (a[0] == '[' && (end = strchr(a, ']')) != NULL)
		a++;
	else if ((end = strrchr(a, ':')) == NULL)
		end = a + strlen(a);
	return (size_t)snprintf(buf, size, "%.*s unknown", (int)(end - a), a);
}

int
filter_client(struct session *s)
{
	static const enum rule_scope scope = SCOPE_CLIENT;
	char subject[128], reply[640];
	size_t n;
	int v;

	if (!filter_has(s, SCOPE_CLIENT))
		return 0;
	n = filter_client_subject(s, subject, sizeof(subject));
	v = filter_line(s, &scope, 1, (const unsigned char *)subject, n < sizeof(subject) ? n : 0);
	if (v < 0)
		return -1;
	if (v != ACT_REJECT && v != ACT_DISCONNECT)
		return 0;
	/* Postfix's smtpd_client_restrictions with smtpd_delay_reject=no: the greeting is the
	 * refusal, and the server is never asked. */
	snprintf(reply, sizeof(reply), "%s\r\n", s->outcome.reply);
	session_reply(s, reply);
	session_close(s, "client_rejected");
	return 1;
}

int
filter_line(struct session *s, const enum rule_scope *scopes, int nscopes,
            const unsigned char *line, size_t len)
{
	if (s->rules == NULL) {
		rule_outcome_reset(&s->outcome);
		s->outcome.verdict = ACT_NONE;
		s->outcome.line = line;
		s->outcome.len = len;
		return ACT_NONE;
	}
	return filter_bound(
	    s, filter_record(s, rules_apply(s->rules, scopes, nscopes, line, len, &s->outcome)),
	    line, len);
}
