/* Server replies held whole and edited: rules per line, then the EHLO extensions. */
#include "proxy/reply_edit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "logs/escape.h"
#include "logs/transcript.h"
#include "smtp/ehlo.h"
#include "proxy/filter.h"
#include "proxy/message.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/conn.h"

/* A held reply's lines, as many as it has (a reply is held up to 64 KiB: bounded). */
struct reply_lines {
	const unsigned char **p;
	size_t *len;
	int *removed;
	unsigned char **own; /* rewritten copies we free */
	size_t n;
	int changed; /* a rule rewrote or removed a line */
	int crlf;    /* every line ends in CRLF */
};

int
reply_edit_wanted(const struct session *s)
{
	return filter_has(s, SCOPE_REPLY) || filter_has(s, SCOPE_BANNER) ||
	       filter_has(s, SCOPE_CAPABILITY);
}

static void
reply_lines_free(struct reply_lines *rl)
{
	size_t i;

	for (i = 0; rl->own != NULL && i < rl->n; i++)
		free(rl->own[i]);
	free(rl->p);
	free(rl->len);
	free(rl->removed);
	free(rl->own);
}

/* Splits the held reply into lines without their line ends; -1 when memory ran out. */
static int
reply_split(const unsigned char *reply, size_t len, struct reply_lines *rl)
{
	size_t off, n, count = 0;
	struct smtp_line l;

	memset(rl, 0, sizeof(*rl));
	rl->crlf = 1;
	for (off = 0; off < len; off += l.len, count++)
		smtp_line_cut(reply + off, len - off, &l);
	if (count == 0)
		return 0;
	rl->p = calloc(count, sizeof(*rl->p));
	rl->len = calloc(count, sizeof(*rl->len));
	rl->removed = calloc(count, sizeof(*rl->removed));
	rl->own = calloc(count, sizeof(*rl->own));
	if (rl->p == NULL || rl->len == NULL || rl->removed == NULL || rl->own == NULL) {
		reply_lines_free(rl);
		return -1;
	}
	for (off = 0; off < len; off += n, rl->n++) {
		smtp_line_cut(reply + off, len - off, &l);
		n = l.len;
		rl->p[rl->n] = reply + off;
		rl->len[rl->n] = smtp_line_len(reply + off, n);
		if (rl->len[rl->n] + 2 != n || reply[off + n - 2] != '\r')
			rl->crlf = 0;
	}
	return 0;
}

static int
reply_scopes(enum smtp_verb answers, int code, size_t i, enum rule_scope scopes[2])
{
	if (answers == VERB_GREETING) {
		scopes[0] = SCOPE_BANNER;
		scopes[1] = SCOPE_REPLY;
		return 2;
	}
	if ((answers == VERB_EHLO || answers == VERB_LHLO) && code == 250 && i > 0) {
		scopes[0] = SCOPE_CAPABILITY;
		scopes[1] = SCOPE_REPLY;
		return 2;
	}
	scopes[0] = SCOPE_REPLY;
	return 1;
}

/*
 * Whether a rewritten reply line keeps its code's class (the first digit).  What the client
 * is told must be what the proxy acts on: a 250 to RCPT made 550 would leave the recipient
 * accepted by the server and the message delivered to it, so a reply rule may not change a
 * code's class (refuse a command with a command rule instead).  A line without a code may
 * not gain one.
 */
static int
reply_same_class(const unsigned char *was, size_t wlen, const unsigned char *now, size_t nlen)
{
	int coded = wlen >= 3 && was[0] >= '0' && was[0] <= '9' && was[1] >= '0' && was[1] <= '9' &&
	            was[2] >= '0' && was[2] <= '9';

	if (!coded)
		return nlen < 3 || now[0] < '0' || now[0] > '9';
	return nlen >= 3 && now[0] == was[0] && now[1] >= '0' && now[1] <= '9' && now[2] >= '0' &&
	       now[2] <= '9' && (nlen == 3 || now[3] == ' ' || now[3] == '-');
}

/*
 * Runs line i of a reply (without its line end) through the rules: 1 when a rule removed it,
 * 0 when it stays (*p and *len then the line to send, a rewritten one in *own, the caller's
 * to free), -1 when the session had to close.
 */
static int
reply_rule_line(struct session *s, enum smtp_verb answers, int code, size_t i,
                const unsigned char **p, size_t *len, unsigned char **own)
{
	enum rule_scope scopes[2];
	int v;

	v = filter_line(s, scopes, reply_scopes(answers, code, i, scopes), *p, *len);
	if (v < 0)
		return -1;
	if (v == ACT_IGNORE)
		return 1;
	if (!s->outcome.rewritten)
		return 0;
	if (!reply_same_class(*p, *len, s->outcome.line, s->outcome.len)) {
		session_warn(s, "a reply rule may not change a reply's class: the server's "
		                "line kept");
		return 0;
	}
	if ((*own = malloc(s->outcome.len + 1)) == NULL) {
		session_close(s, "error");
		return -1;
	}
	memcpy(*own, s->outcome.line, s->outcome.len);
	*p = *own;
	*len = s->outcome.len;
	return 0;
}

/* Runs each line through the rules; returns -1 when the session had to close. */
static int
reply_apply_rules(struct session *s, struct reply_lines *rl, enum smtp_verb answers, int code)
{
	size_t i;
	int v;

	for (i = 0; i < rl->n; i++) {
		v = reply_rule_line(s, answers, code, i, &rl->p[i], &rl->len[i], &rl->own[i]);
		if (v < 0)
			return -1;
		rl->removed[i] = v;
		if (v == 1 || rl->own[i] != NULL)
			rl->changed = 1;
	}
	return 0;
}

/*
 * Whether smtp_reply_rebuild() would give back the reply as it came: every line ends in CRLF,
 * and each "NNN" line has '-' after its code, the last ' ' (or nothing).
 */
static int
reply_as_is(const struct reply_lines *rl)
{
	const unsigned char *p;
	size_t i, len;

	if (!rl->crlf)
		return 0;
	for (i = 0; i < rl->n; i++) {
		p = rl->p[i];
		len = rl->len[i];
		if (len < 3 || p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9' || p[2] < '0' ||
		    p[2] > '9' || (len > 3 && p[3] != '-' && p[3] != ' '))
			continue; /* not "NNN": copied as it is */
		if (i + 1 < rl->n ? len == 3 || p[3] != '-' : len > 3 && p[3] != ' ')
			return 0;
	}
	return 1;
}

/* The EHLO extensions we handle ourselves, edited whatever the server offered. */
static void
reply_edit_policy(struct session *s, struct ehlo_policy *pol, const char *remove[6])
{
	const struct options *o = s->px->opts;

	remove[0] = "XCLIENT";
	remove[1] = "XFORWARD";
	pol->remove = remove;
	pol->nremove = 2;
	pol->add = NULL;
	if (o->tls_mode == TLS_STRIP || (o->tls_mode == TLS_TERMINATE && s->client.tls))
		remove[pol->nremove++] = "STARTTLS";
	/* BDAT content is not split into lines: header and body rules could not see it. */
	if (filter_has(s, SCOPE_HEADER) || filter_has(s, SCOPE_BODY))
		remove[pol->nremove++] = "CHUNKING";
	if (o->tls_mode == TLS_TERMINATE && !s->client.tls)
		pol->add = "STARTTLS";
}

static void
reply_edit_ehlo(struct session *s, const unsigned char *reply, size_t len,
                const struct ehlo_policy *pol, struct evbuffer *out)
{
	struct evbuffer *notes = evbuffer_new();
	char *line, *esc;
	size_t n;

	message_learn_size(s, ehlo_size(reply, len));
	ehlo_edit(reply, len, pol, out, notes);
	while (notes != NULL && (line = evbuffer_readln(notes, &n, EVBUFFER_EOL_CRLF)) != NULL) {
		/* A removed line is the server's text, maybe a hostile one's: escaped. */
		esc = escape_strdup((const unsigned char *)line, n);
		transcript_event(s->transcript, "ehlo reply edited: %s", esc != NULL ? esc : "");
		free(esc);
		free(line);
	}
	if (notes != NULL)
		evbuffer_free(notes);
}

const char *
reply_edit_hidden(const struct session *s, enum smtp_verb verb)
{
	return ehlo_gate_hidden(s->caps_hidden, verb);
}

/* The extensions offered before the rules and gone after them. */
static unsigned
reply_caps_removed(const unsigned char *before, size_t blen, const unsigned char *after,
                   size_t alen)
{
	return ehlo_gates_of(before, blen) & ~ehlo_gates_of(after, alen);
}

/*
 * Applies the rules to a held reply, whatever its number of lines; returns the rebuilt reply
 * (heap) or NULL to send it as is.  Never NULL for a reply a rule changed: when memory runs
 * out the session is closed instead (callers look at its phase).
 */
static unsigned char *
reply_rebuild(struct session *s, const unsigned char *reply, size_t len, enum smtp_verb answers,
              int code, size_t *outlen)
{
	struct reply_lines rl;
	unsigned char *out = NULL;
	int all_removed = 0;

	if (!reply_edit_wanted(s))
		return NULL;
	if (reply_split(reply, len, &rl) != 0) {
		session_close(s, "error");
		return NULL;
	}
	if (rl.n > 0 && reply_apply_rules(s, &rl, answers, code) == 0 &&
	    (rl.changed || !reply_as_is(&rl))) {
		out = smtp_reply_rebuild(rl.p, rl.len, rl.removed, rl.n, outlen, &all_removed);
		if (out == NULL)
			session_close(s, "error");
		else if (all_removed)
			session_warn(
			    s, "rules would remove every line of a reply: its last line kept");
	}
	reply_lines_free(&rl);
	return out;
}

/*
 * An EHLO reply: the rules, then the extensions the proxy handles.  The STARTTLS the proxy
 * adds meets the capability rules too, and an extension a rule removed is never added back:
 * a client that uses it anyway is refused (reply_edit_hidden).
 */
static void
reply_edit_send_ehlo(struct session *s, const unsigned char *reply, size_t len,
                     struct evbuffer *out)
{
	const char *remove[6];
	struct ehlo_policy pol;
	struct evbuffer *with = NULL;
	unsigned char *rebuilt;
	size_t outlen = 0;

	reply_edit_policy(s, &pol, remove);
	if (pol.add != NULL && reply_edit_wanted(s) && len >= 3 &&
	    !ehlo_offers(reply, len, pol.add) && (with = evbuffer_new()) != NULL) {
		evbuffer_add(with, reply, len);
		evbuffer_add_printf(with, "%.3s %s\r\n", (const char *)reply, pol.add);
		len = evbuffer_get_length(with);
		reply = evbuffer_pullup(with, (ev_ssize_t)len);
	}
	rebuilt = reply != NULL ? reply_rebuild(s, reply, len, VERB_EHLO, 250, &outlen) : NULL;
	if (reply == NULL || s->phase == PHASE_CLOSING) {
		free(rebuilt);
		if (with != NULL)
			evbuffer_free(with);
		return;
	}
	s->caps_hidden = rebuilt != NULL ? reply_caps_removed(reply, len, rebuilt, outlen) : 0;
	if (reply_edit_hidden(s, VERB_STARTTLS) != NULL)
		pol.add = NULL;
	if (rebuilt != NULL)
		reply_edit_ehlo(s, rebuilt, outlen, &pol, out);
	else
		reply_edit_ehlo(s, reply, len, &pol, out);
	free(rebuilt);
	if (with != NULL)
		evbuffer_free(with);
}

void
reply_edit_in_place(struct session *s, struct evbuffer *held, enum smtp_verb answers, int code)
{
	size_t len = evbuffer_get_length(held), outlen = 0;
	const unsigned char *reply = evbuffer_pullup(held, (ev_ssize_t)len);
	unsigned char *rebuilt;

	rebuilt = reply != NULL ? reply_rebuild(s, reply, len, answers, code, &outlen) : NULL;
	if (rebuilt == NULL)
		return;
	evbuffer_drain(held, len);
	evbuffer_add(held, rebuilt, outlen);
	free(rebuilt);
}

void
reply_edit_send(struct session *s, struct evbuffer *held, enum smtp_verb answers, int code)
{
	size_t len = evbuffer_get_length(held);
	const unsigned char *reply = evbuffer_pullup(held, (ev_ssize_t)len);
	struct evbuffer *out;

	if (s->client.bev == NULL || s->phase == PHASE_CLOSING) {
		evbuffer_drain(held, len);
		return;
	}
	if ((answers == VERB_EHLO || answers == VERB_LHLO) && code == 250 && reply != NULL) {
		if ((out = evbuffer_new()) == NULL) {
			evbuffer_drain(held, len);
			session_close(s, "error");
			return;
		}
		reply_edit_send_ehlo(s, reply, len, out);
		evbuffer_drain(held, evbuffer_get_length(held));
		if (s->phase != PHASE_CLOSING)
			side_write_buffer(&s->client, out);
		evbuffer_free(out);
		return;
	}
	/* Edited where it is held, then moved whole: no copy of the reply, no second buffer. */
	reply_edit_in_place(s, held, answers, code);
	if (s->phase == PHASE_CLOSING) {
		evbuffer_drain(held, evbuffer_get_length(held));
		return;
	}
	side_write_buffer(&s->client, held);
}

/* What the reply being streamed answers: the pending command's verb, if any (a 421 may come
 * with nothing pending). */
static enum smtp_verb
reply_stream_answers(const struct session *s)
{
	const struct pending *head = pipeline_head(&s->pipeline);

	return head != NULL ? head->verb : VERB_UNKNOWN;
}

/* Whether the reply being streamed is an EHLO (LHLO) reply's 250, with extension lines. */
static int
reply_stream_ehlo(const struct session *s)
{
	enum smtp_verb v = reply_stream_answers(s);

	return (v == VERB_EHLO || v == VERB_LHLO) && s->reply.code == 250;
}


/* The line kept back goes to the client with the separator its place needs ("NNN-" or,
 * last, "NNN "). */
static void
reply_edit_emit_kept(struct session *s, int last)
{
	struct evbuffer *kept = s->reply.held, *line = evbuffer_new();
	size_t n = evbuffer_get_length(kept);

	if (line == NULL) {
		session_close(s, "error");
		return;
	}
	ehlo_line_emit(line, evbuffer_pullup(kept, (ev_ssize_t)n), n, last);
	evbuffer_drain(kept, n);
	side_write_buffer(&s->client, line);
	evbuffer_free(line);
}

/*
 * The long reply ends: the line kept back goes last.  With none (every line after one too
 * long to edit was removed, or every line), what the client has is still open: an empty
 * "NNN " line of our own ends it, legal in any reply (smtp-sink ends its EHLO reply so).
 */
static void
reply_edit_stream_end(struct session *s)
{
	char line[16];
	int n;

	if (evbuffer_get_length(s->reply.held) > 0) {
		reply_edit_emit_kept(s, 1);
		return;
	}
	n = snprintf(line, sizeof(line), "%03d \r\n", s->reply.code);
	transcript_event(s->transcript, "%s edited: added an empty last line",
	                 reply_stream_ehlo(s) ? "ehlo reply" : "reply");
	side_write(&s->client, line, (size_t)n, NULL);
}

/*
 * A whole line of a long reply: the rules, then (an EHLO reply's extension) the proxy's own
 * policy, as for a reply held whole.  Removed, or kept back while the line before it goes.
 */
static void
reply_edit_stream_line(struct session *s, const unsigned char *line, size_t len, int last)
{
	const char *remove[6];
	struct ehlo_policy pol = {remove, 0, NULL};
	const unsigned char *p = line;
	size_t n = smtp_line_len(line, len), i = s->reply.stream_lines++;
	unsigned char *own = NULL;
	int ehlo = reply_stream_ehlo(s), removed = 0;

	if (reply_edit_wanted(s)) {
		removed =
		    reply_rule_line(s, reply_stream_answers(s), s->reply.code, i, &p, &n, &own);
		if (removed < 0)
			return;
	}
	if (ehlo && i > 0) {
		/* What a rule took away stays away (reply_edit_hidden). */
		s->caps_hidden |= ehlo_gates_of_line(line, len) & ~(removed ? 0u : ehlo_gates_of_line(p, n));
		reply_edit_policy(s, &pol, remove);
		if (!removed && ehlo_line_removed(p, n, &pol)) {
			removed = 1;
			transcript_event(s->transcript,
			                 "ehlo reply edited: removed a line of a long reply");
		}
	}
	if (!removed) {
		if (evbuffer_get_length(s->reply.held) > 0)
			reply_edit_emit_kept(s, 0);
		if (own != NULL) {
			evbuffer_add(s->reply.held, p, n);
			evbuffer_add(s->reply.held, "\r\n", 2);
		} else {
			evbuffer_add(s->reply.held, line, len);
		}
	}
	free(own);
	if (last)
		reply_edit_stream_end(s);
}

/*
 * The first piece of a line too long to edit (over --max-line): whether the whole line is
 * removed.  A rule that would see it can't, so it goes (fail closed: a rule is never skipped
 * unseen); an extension the proxy removes itself is known by its keyword, in the first piece.
 */
static int
reply_stream_drops(struct session *s, const unsigned char *p, size_t len)
{
	const char *remove[6];
	enum rule_scope scopes[2];
	struct ehlo_policy pol;
	size_t i = s->reply.stream_lines;
	int ext = reply_stream_ehlo(s) && i > 0, k;

	for (k = reply_scopes(reply_stream_answers(s), s->reply.code, i, scopes) - 1; k >= 0; k--)
		if (filter_has(s, scopes[k]))
			break;
	if (k >= 0) {
		session_warn(s, "a reply line over %zu octets is too long for the rules: removed",
		             s->px->opts->max_line);
		if (ext)
			s->caps_hidden |= ehlo_gates_of_line(p, len);
		return 1;
	}
	if (!ext)
		return 0;
	reply_edit_policy(s, &pol, remove);
	if (!ehlo_line_removed(p, len, &pol))
		return 0;
	transcript_event(s->transcript, "ehlo reply edited: removed a line of a long reply");
	return 1;
}

int
reply_edit_stream_unit(struct session *s, const struct unit *u, int cont, int last)
{
	if (!cont && u->complete) {
		reply_edit_stream_line(s, u->data, u->len, last);
		return 0;
	}
	if (!cont) {
		s->reply.stream_drop = reply_stream_drops(s, u->data, u->len);
		s->reply.stream_lines++;
		/* A line too long to edit goes as it came (its own separator), after the line
		 * kept back: that one is not the last. */
		if (!s->reply.stream_drop && evbuffer_get_length(s->reply.held) > 0)
			reply_edit_emit_kept(s, 0);
	}
	if (!s->reply.stream_drop)
		return 1;
	if (u->complete && last)
		reply_edit_stream_end(s);
	return 0;
}

/*
 * A reply too long to hold whole (over 64 KiB: a hostile server) is still edited, line by
 * line, keeping one line back so the separators can be set right at its end.
 */
void
reply_edit_stream_begin(struct session *s, struct evbuffer *was)
{
	size_t len = evbuffer_get_length(was), off = 0;
	struct evbuffer *all = evbuffer_new();
	const unsigned char *p;
	struct smtp_line l;
	struct unit u;

	server_enter_mode(s, SRV_STREAM);
	s->reply.stream_lines = 0;
	s->reply.stream_drop = 0;
	if (reply_stream_ehlo(s))
		s->caps_hidden = 0; /* this reply's own, as its lines pass */
	if (all == NULL || (s->reply.held == NULL && (s->reply.held = evbuffer_new()) == NULL)) {
		if (all != NULL)
			evbuffer_free(all);
		session_close(s, "error");
		return;
	}
	evbuffer_add_buffer(all, was);
	evbuffer_drain(s->reply.held, evbuffer_get_length(s->reply.held));
	if ((p = evbuffer_pullup(all, -1)) == NULL && len > 0)
		session_close(s, "error");
	while (p != NULL && off < len && s->phase != PHASE_CLOSING) {
		smtp_line_cut(p + off, len - off, &l);
		u.data = l.data;
		u.len = l.len;
		u.complete = l.complete;
		/* A line held whole never ends the reply (it would have ended there); one without
		 * its end is the start of the line being read, too long to edit. */
		if (reply_edit_stream_unit(s, &u, 0, u.complete ? 0 : s->reply.last_line))
			side_write(&s->client, u.data, u.len, NULL);
		off += l.len;
	}
	evbuffer_free(all);
}
