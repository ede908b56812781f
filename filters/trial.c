/*
 * The --test-rules mode: replay a recorded transcript through the rules.  The scopes of each
 * line are inferred the way the proxy tracks a session: commands by verb, the message between
 * a 354 and its ".", headers up to the first empty line (folded ones joined), the first reply
 * as the banner, the lines after the first of an EHLO reply as capabilities.  BDAT content
 * (after its "* bdat chunk octets=N" record) is N octets of no lines: no rule sees it.
 */
#include "filters/trial.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp/address.h"
#include "smtp/ehlo.h"
#include "filters/rules.h"
#include "filters/scopes.h"
#include "logs/escape.h"
#include "smtp/smtp.h"

#define TRIAL_PENDING 64 /* commands awaiting a reply, more than any pipelined group */
#define TRIAL_OWN (-1)   /* a command the proxy itself sent upstream */

enum trial_mode { MODE_COMMAND, MODE_HEADER, MODE_BODY };

/* A growable octet string. */
struct bytes {
	unsigned char *p;
	size_t len, size;
};

struct trial {
	const struct ruleset *rs;
	struct rule_outcome out;
	const char *name;
	unsigned long lineno;

	/* The logical line being assembled from a record and its "+" pieces. */
	struct bytes line;
	char kind; /* 'C', 'S', 'P', or 0 when none */
	unsigned long line_at;

	/* Client side. */
	enum trial_mode mode;
	int sasl; /* the last reply was a 334: the next client line is SASL data */
	struct bytes header;
	unsigned long header_at;
	const char *msg_reply; /* a header or body rule refused the message */
	int line_bare;    /* the line being handled ended in a bare LF (or CR, split at it) */
	int after_bare;   /* the last content line did: a "." now is content, not the end */
	int bare_split;   /* the proxy warned of a bare line end: it splits lines at a bare CR */
	int pending[TRIAL_PENDING]; /* enum smtp_verb, or TRIAL_OWN */
	int phead, pcount;
	unsigned long long chunk_left; /* octets of BDAT content still to come */

	/* Server side. */
	int greeted;
	int in_reply; /* inside a multi-line reply */
	int reply_is_ehlo;
	int reply_lines, reply_ignored;
	unsigned caps_before, caps_after; /* of ehlo_gates[], in the EHLO reply so far */
	unsigned caps_hidden; /* offered by the server and removed by a capability rule */

	unsigned long ntried, nhits;
	unsigned long serial; /* the session's number, for the per-rule summary */
	char id[64];
};

/* Per rule of the ruleset: its hits, in how many sessions (the summary at the end). */
struct trial_tally {
	unsigned long hits, sessions, last_serial;
};
static struct trial_tally *tally;

static int
bytes_put(struct bytes *b, const void *p, size_t n)
{
	unsigned char *q;
	size_t size;

	if (b->len + n + 1 > b->size) {
		size = (b->len + n + 1) * 2;
		if ((q = realloc(b->p, size)) == NULL)
			return -1;
		b->p = q;
		b->size = size;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

static void
trial_error(struct trial *t, const char *msg)
{
	fprintf(stderr, "%s:%lu: %s\n", t->name, t->lineno, msg);
}

/* Prints a line as the transcript has it, with the record it came from. */
static void
trial_print_line(struct trial *t, unsigned long at, const char *kind, const unsigned char *p,
                 size_t n)
{
	char *e = escape_strdup(p, n);

	printf("%s:%lu: %s %s\n", t->name, at, kind, e != NULL ? e : "?");
	free(e);
}

static void
trial_print_hit(const struct rule_hit *h)
{
	char *e = NULL;

	printf("\t%s:%u: %s %s", h->file, h->line, rules_scope_name(h->scope),
	       rules_action_name(h->action));
	if (h->failed) {
		/* As the proxy does: a client's line is answered 451, a server's rule skipped. */
		if (h->scope == SCOPE_BANNER || h->scope == SCOPE_REPLY ||
		    h->scope == SCOPE_CAPABILITY)
			printf(" failed, rule skipped: %s\n", h->text);
		else
			printf(" failed, line answered 451 4.3.0: %s\n", h->text);
		return;
	}
	switch (h->action) {
	case ACT_REWRITE:
		e = escape_strdup(h->repl, h->repl_len);
		printf(": %s\n", e != NULL ? e : "?");
		free(e);
		break;
	case ACT_IGNORE:
		printf(": line removed\n");
		break;
	case ACT_PASS:
		printf(": no further rule\n");
		break;
	default:
		printf("%s%s\n", h->text != NULL ? ": " : "", h->text != NULL ? h->text : "");
	}
}

static int trial_report(struct trial *t, int v, unsigned long at, const char *kind,
                        const unsigned char *p, size_t n);

/* Runs one logical line through the rules of its scopes and prints what they did. */
static int
trial_run(struct trial *t, const enum rule_scope *scopes, int nscopes, unsigned long at,
          const char *kind, const unsigned char *p, size_t n)
{
	int v;

	v = rules_apply(t->rs, scopes, nscopes, p, n, &t->out);
	return trial_report(t, v, at, kind, p, n);
}

/* Prints what the rules did to one line (v: their verdict, -1 on ENOMEM). */
static int
trial_report(struct trial *t, int v, unsigned long at, const char *kind, const unsigned char *p,
             size_t n)
{
	size_t i;

	t->ntried++;
	if (v == -1) {
		fprintf(stderr, "smtptap: --test-rules: %s\n", strerror(ENOMEM));
		return -1;
	}
	if (t->out.nhits == 0)
		return v;
	trial_print_line(t, at, kind, p, n);
	for (i = 0; i < t->out.nhits; i++) {
		struct trial_tally *k = &tally[t->out.hits[i].rule];

		trial_print_hit(&t->out.hits[i]);
		k->hits++;
		if (k->last_serial != t->serial) {
			k->last_serial = t->serial;
			k->sessions++;
		}
	}
	t->nhits += t->out.nhits;
	return v;
}

/*
 * Whether the proxy answers a command itself before any rule sees it (client.c): a line with
 * a NUL (500), a client's XCLIENT/XFORWARD/PROXY (550), a command whose extension a
 * capability rule removed (502).
 */
static int
trial_answered_locally(const struct trial *t, const unsigned char *p, size_t n, int verb)
{
	if (memchr(p, '\0', n) != NULL || smtp_verb_info(verb)->handler == SMTP_HANDLE_REFUSE)
		return 1;
	return ehlo_gate_hidden(t->caps_hidden, (enum smtp_verb)verb) != NULL;
}

static void
trial_push(struct trial *t, int verb)
{
	if (t->pcount == TRIAL_PENDING) {
		t->phead = (t->phead + 1) % TRIAL_PENDING;
		t->pcount--;
	}
	t->pending[(t->phead + t->pcount++) % TRIAL_PENDING] = verb;
}

/*
 * A command the proxy itself sent upstream ("U:"): its reply is not the client's.  After a
 * held message's end of data, our DATA goes before the "." that waits for the final reply.
 */
static void
trial_push_own(struct trial *t)
{
	int *last;

	if (t->pcount > 0 && t->pcount < TRIAL_PENDING) {
		last = &t->pending[(t->phead + t->pcount - 1) % TRIAL_PENDING];
		if (*last == VERB_EOD) {
			*last = TRIAL_OWN;
			trial_push(t, VERB_EOD);
			return;
		}
	}
	trial_push(t, TRIAL_OWN);
}

static int
trial_peek(const struct trial *t)
{
	return t->pcount > 0 ? t->pending[t->phead] : VERB_UNKNOWN;
}

static void
trial_pop(struct trial *t)
{
	if (t->pcount == 0)
		return;
	t->phead = (t->phead + 1) % TRIAL_PENDING;
	t->pcount--;
}

int
trial_command_scopes(const unsigned char *p, size_t n, enum rule_scope scopes[2], size_t *seen)
{
	struct smtp_command cmd;

	/* The proxy's own parser and command table: split on any white space, as servers do. */
	smtp_parse_command(p, n, &cmd);
	*seen = cmd.verb == VERB_AUTH ? smtp_auth_visible(p, n, &cmd) : n;
	scopes_command(cmd.verb, scopes);
	return cmd.verb;
}

/* A client command: its verb picks the scopes, and it waits for its reply. */
static int
trial_command(struct trial *t, const unsigned char *p, size_t n)
{
	enum rule_scope scopes[2] = {SCOPE_COMMAND, SCOPE_COMMAND};
	struct smtp_command cmd;
	size_t seen;
	int verb, v;

	verb = trial_command_scopes(p, n, scopes, &seen);
	if (trial_answered_locally(t, p, n, verb)) {
		trial_push(t, VERB_UNKNOWN); /* its reply is the proxy's "P:" */
		return 0;
	}
	trial_push(t, verb);
	smtp_parse_command(p, n, &cmd);
	if ((verb == VERB_MAIL || verb == VERB_RCPT) && cmd.arg != NULL) {
		/* The address first, as the proxy does (filter_command, rules_apply_envelope). */
		v = rules_apply_envelope(t->rs, verb == VERB_MAIL ? SCOPE_SENDER : SCOPE_RECIPIENT,
		                         scopes, 2, p, n, (size_t)(cmd.arg - p), &t->out);
		return trial_report(t, v, t->line_at, "C:", p, n) == -1 ? -1 : 0;
	}
	/* Both scopes are tried (a lone "command" twice is harmless): what the proxy does. */
	return trial_run(t, scopes, 2, t->line_at, "C:", p, seen) == -1 ? -1 : 0;
}

/* Runs a header or a body line through its scope's rules; a refusal refuses the message. */
static int
trial_content(struct trial *t, enum rule_scope scope, unsigned long at, const unsigned char *p,
              size_t n)
{
	int v = trial_run(t, &scope, 1, at, "C:", p, n);

	if (v == -1)
		return -1;
	if ((v == ACT_REJECT || v == ACT_DISCONNECT) && t->msg_reply == NULL)
		t->msg_reply = t->out.reply;
	return 0;
}

/* Ends the header being assembled, if any, and runs it through the header rules. */
static int
trial_header_flush(struct trial *t)
{
	int rc;

	if (t->header.len == 0)
		return 0;
	rc = trial_content(t, SCOPE_HEADER, t->header_at, t->header.p, t->header.len);
	t->header.len = 0;
	return rc;
}

/*
 * A line of the message: a header (folded ones joined with their CRLF) or a body line, as
 * the rules see it (smtp_content_unstuff): without any line end, and without a stuffing dot.  The
 * end of data is only <CRLF>.<CRLF>: a "." after a bare line end, or ending bare, is content.
 */
static int
trial_message(struct trial *t, const unsigned char *p, size_t n)
{
	int eod = n == 1 && p[0] == '.' && !t->line_bare && !t->after_bare;

	t->after_bare = t->line_bare;
	n = smtp_content_unstuff(&p, n);
	if (eod) {
		if (trial_header_flush(t) == -1)
			return -1;
		if (t->msg_reply != NULL)
			printf("%s:%lu: end of message: refused with \"%s\", never sent upstream\n",
			       t->name, t->line_at, t->msg_reply);
		t->msg_reply = NULL;
		t->mode = MODE_COMMAND;
		/* The end of data waits for its reply like a command. */
		trial_push(t, VERB_EOD);
		return 0;
	}
	if (t->mode == MODE_HEADER) {
		if (n > 0 && (p[0] == ' ' || p[0] == '\t') && t->header.len > 0)
			return bytes_put(&t->header, "\r\n", 2) == -1 ? -1
			                                              : bytes_put(&t->header, p, n);
		if (trial_header_flush(t) == -1)
			return -1;
		if (n == 0) {
			t->mode = MODE_BODY;
			return 0;
		}
		t->header_at = t->line_at;
		return bytes_put(&t->header, p, n);
	}
	return trial_content(t, SCOPE_BODY, t->line_at, p, n);
}

static int
trial_client(struct trial *t, const unsigned char *p, size_t n)
{
	if (t->mode != MODE_COMMAND)
		return trial_message(t, p, n);
	if (t->sasl) {
		/* SASL data answering a 334: no rule sees it. */
		t->sasl = 0;
		return 0;
	}
	return trial_command(t, p, n);
}

/* Follows replies (server's or proxy's own) to learn the banner, EHLO, 334 and 354. */
static void
trial_reply_end(struct trial *t, const unsigned char *p, size_t n)
{
	if (t->reply_lines > 0 && t->reply_ignored == t->reply_lines)
		printf("%s:%lu: every line of this reply removed: the last one is kept, with a "
		       "warning\n",
		       t->name, t->line_at);
	t->in_reply = 0;
	if (t->reply_is_ehlo)
		t->caps_hidden = t->caps_before & ~t->caps_after;
	if (!t->greeted) {
		t->greeted = 1;
		return;
	}
	if (trial_peek(t) == TRIAL_OWN) {
		trial_pop(t);
		return;
	}
	if (t->chunk_left > 0 && t->pcount == 1 && trial_peek(t) == VERB_BDAT)
		t->chunk_left = 0; /* the reply to the chunk's BDAT: its content was not recorded */
	if (n >= 3 && memcmp(p, "334", 3) == 0) {
		t->sasl = 1;
		return;
	}
	if (n >= 3 && memcmp(p, "354", 3) == 0) {
		t->mode = MODE_HEADER;
		t->after_bare = 0;
		t->header.len = 0;
		t->msg_reply = NULL;
	}
	trial_pop(t);
}

static int
trial_server(struct trial *t, const unsigned char *p, size_t n, int own)
{
	enum rule_scope scopes[2] = {SCOPE_REPLY, SCOPE_REPLY};
	int v = ACT_NONE;

	if (!t->in_reply) {
		t->in_reply = 1;
		t->reply_lines = t->reply_ignored = 0;
		/* As the proxy: the lines after the first of a 250 to EHLO or LHLO. */
		t->reply_is_ehlo = t->greeted &&
		                   (trial_peek(t) == VERB_EHLO || trial_peek(t) == VERB_LHLO) &&
		                   n >= 3 && memcmp(p, "250", 3) == 0;
		t->caps_before = t->caps_after = 0;
	}
	/* The reply to our own command upstream never reached the client: no rule saw it. */
	if (t->greeted && trial_peek(t) == TRIAL_OWN)
		own = 1;
	if (!own) {
		if (!t->greeted)
			scopes[0] = SCOPE_BANNER;
		else if (t->reply_is_ehlo && t->reply_lines > 0)
			scopes[0] = SCOPE_CAPABILITY;
		if ((v = trial_run(t, scopes, 2, t->line_at, "S:", p, n)) == -1)
			return -1;
		t->reply_lines++;
		if (v == ACT_IGNORE)
			t->reply_ignored++;
		if (scopes[0] == SCOPE_CAPABILITY) {
			t->caps_before |= ehlo_gates_of_line(p, n);
			if (v != ACT_IGNORE)
				t->caps_after |= t->out.rewritten ? ehlo_gates_of_line(t->out.line, t->out.len)
				                                  : ehlo_gates_of_line(p, n);
		}
	}
	if (n < 4 || p[3] != '-')
		trial_reply_end(t, p, n);
	return 0;
}

/*
 * A record of BDAT content: opaque octets, as to the proxy (no command, header or body rule).
 * Counted off the chunk: the record's text, and the CRLF it was recorded without when the
 * chunk still holds one (a record cut at the chunk's end has no line end; a bare LF is in
 * the text).
 */
static void
trial_chunk(struct trial *t, const unsigned char *p, size_t n)
{
	unsigned long long octets = n;

	if ((n == 0 || p[n - 1] != '\n') && octets + 2 <= t->chunk_left)
		octets += 2;
	t->chunk_left -= octets < t->chunk_left ? octets : t->chunk_left;
}

/* Handles the logical line assembled so far, once no further "+" piece can follow. */
static int
trial_flush(struct trial *t)
{
	unsigned char *p = t->line.p;
	size_t n = t->line.len;
	char kind = t->kind;

	t->kind = 0;
	if (kind == 0)
		return 0;
	/* A line that ended in a bare LF carries it; the rules see the line without it. */
	if (kind == 'C' && t->chunk_left > 0) {
		trial_chunk(t, p, n);
		return 0;
	}
	t->line_bare = n > 0 && (p[n - 1] == '\n' || (p[n - 1] == '\r' && t->bare_split));
	if (n > 0 && p[n - 1] == '\n')
		n--;
	if (kind == 'C')
		return trial_client(t, p, n);
	if (kind == 'U') {
		trial_push_own(t);
		return 0;
	}
	return trial_server(t, p, n, kind == 'P');
}


/*
 * "bdat chunk octets=N": the BDAT command is whole (a "C+" after this record is content
 * continuing a line of the chunk before), and N octets of content follow.
 */
static int
trial_bdat(struct trial *t, const unsigned char *p, size_t n)
{
	char num[24];

	if (trial_flush(t) == -1)
		return -1;
	snprintf(num, sizeof(num), "%.*s", (int)(n < 20 ? n : 20), p);
	t->chunk_left = strtoull(num, NULL, 10);
	if (t->chunk_left > 0 &&
	    (rules_has_scope(t->rs, SCOPE_HEADER) || rules_has_scope(t->rs, SCOPE_BODY)))
		printf("%s:%lu: BDAT: refused 502 by the proxy under header or body rules, which "
		       "can't see chunks\n",
		       t->name, t->lineno);
	return 0;
}

/*
 * An event record: "connect client=ADDR:PORT ..." runs the client rules on "ADDR unknown", as
 * the proxy does at connect; "bdat chunk" starts BDAT content; other events are skipped.
 */
static int
trial_event(struct trial *t, const unsigned char *p, size_t n)
{
	static const char bdat[] = "bdat chunk octets=";
	static const char bare[] = "warning bare CR or LF in message content";

	static const enum rule_scope scope = SCOPE_CLIENT;
	static const char pre[] = "connect client=";
	const unsigned char *a, *end;
	char subject[128];
	size_t alen;
	int len;

	while (n > 0 && *p == ' ') {
		p++;
		n--;
	}
	if (n > sizeof(bdat) - 1 && memcmp(p, bdat, sizeof(bdat) - 1) == 0)
		return trial_bdat(t, p + sizeof(bdat) - 1, n - (sizeof(bdat) - 1));
	if (n >= sizeof(bare) - 1 && memcmp(p, bare, sizeof(bare) - 1) == 0)
		t->bare_split = 1; /* --bare-newline normalize: a CR ending a record ended a line */
	if (n < sizeof(pre) - 1 || memcmp(p, pre, sizeof(pre) - 1) != 0 ||
	    !rules_has_scope(t->rs, SCOPE_CLIENT))
		return 0;
	a = p + sizeof(pre) - 1;
	n -= sizeof(pre) - 1;
	end = memchr(a, ' ', n);
	alen = end != NULL ? (size_t)(end - a) : n;
	if (alen > 0 && a[0] == '[' && (end = memchr(a, ']', alen)) != NULL) {
		a++;
		alen = (size_t)(end - a);
	} else if ((end = memrchr(a, ':', alen)) != NULL) {
		alen = (size_t)(end - a);
	}
	len = snprintf(subject, sizeof(subject), "%.*s unknown", (int)(alen > 64 ? 64 : alen), a);
	return trial_run(t, &scope, 1, t->lineno, "client", (const unsigned char *)subject,
	                 (size_t)len) == -1 ? -1 : 0;
}

/* Parses one record "TIMESTAMP KIND TEXT"; header lines and events are skipped. */
static int
trial_record(struct trial *t, unsigned char *s, size_t n)
{
	unsigned char *sp, *text;
	size_t tlen;
	char kind[3];

	if (n == 0 || s[0] == '#')
		return 0;
	if ((sp = memchr(s, ' ', n)) == NULL || sp == s || (size_t)(sp - s) + 3 > n) {
		trial_error(t, "not a transcript record");
		return -1;
	}
	memcpy(kind, sp + 1, 2);
	kind[2] = '\0';
	if (kind[0] == '*')
		return trial_event(t, sp + 3, (size_t)(s + n - (sp + 3)));
	text = sp + 3;
	if (text < s + n && *text == ' ')
		text++;
	else if (text != s + n) {
		trial_error(t, "not a transcript record");
		return -1;
	}
	if (strchr("CSPU", kind[0]) == NULL || (kind[1] != ':' && kind[1] != '+')) {
		trial_error(t, "unknown record kind");
		return -1;
	}
	if (escape_undo(text, (size_t)(s + n - text), text, &tlen) == -1) {
		trial_error(t, "bad escape in a line");
		return -1;
	}
	if (kind[1] == '+' && t->kind == kind[0])
		return bytes_put(&t->line, text, tlen);
	if (trial_flush(t) == -1)
		return -1;
	t->kind = kind[0];
	t->line_at = t->lineno;
	t->line.len = 0;
	return bytes_put(&t->line, text, tlen);
}

/* The sessions a file holds: a journal's interleaved by id, or `show` output one by one. */
struct trial_split {
	const struct ruleset *rs;
	const char *name;
	struct trial **open; /* sessions still expecting records */
	size_t nopen, cap;
	struct trial *current; /* records without an id column go here */
	unsigned long lineno, nsessions, ntried, nhits;
};

static struct trial *
trial_split_new(struct trial_split *sp, const char *id)
{
	struct trial *t, **v;

	if (sp->nopen == sp->cap) {
		sp->cap = sp->cap ? sp->cap * 2 : 16;
		if ((v = realloc(sp->open, sp->cap * sizeof(*v))) == NULL)
			return NULL;
		sp->open = v;
	}
	if ((t = calloc(1, sizeof(*t))) == NULL)
		return NULL;
	t->rs = sp->rs;
	t->name = sp->name;
	rule_outcome_init(&t->out);
	snprintf(t->id, sizeof(t->id), "%s", id);
	t->serial = ++sp->nsessions;
	sp->open[sp->nopen++] = t;
	return t;
}

/* A session ends (its close record, or the end of the input): its last line is run. */
static int
trial_split_end(struct trial_split *sp, struct trial *t)
{
	size_t i;
	int rc = trial_flush(t);

	if (rc == 0)
		rc = trial_header_flush(t);
	sp->ntried += t->ntried;
	sp->nhits += t->nhits;
	for (i = 0; i < sp->nopen && sp->open[i] != t; i++)
		;
	if (i < sp->nopen)
		sp->open[i] = sp->open[--sp->nopen];
	if (sp->current == t)
		sp->current = NULL;
	rule_outcome_free(&t->out);
	free(t->line.p);
	free(t->header.p);
	free(t);
	return rc;
}

static struct trial *
trial_split_find(struct trial_split *sp, const char *id)
{
	size_t i;

	for (i = sp->nopen; i-- > 0;)
		if (strcmp(sp->open[i]->id, id) == 0)
			return sp->open[i];
	return trial_split_new(sp, id);
}

/* Whether the n octets at p are a record kind ("C:", "S+", "*"...). */
static int
trial_is_kind(const unsigned char *p, size_t n)
{
	return (n == 1 && p[0] == '*') ||
	       (n == 2 && strchr("CSPU", p[0]) != NULL && (p[1] == ':' || p[1] == '+'));
}

/* Whether a line (without its id column) has a timestamp and a kind: "TS KIND[ TEXT]". */
static int
trial_split_whole(const unsigned char *s, size_t n)
{
	const unsigned char *a = memchr(s, ' ', n), *b;

	if (a == NULL || a - s != 27 || s[26] != 'Z')
		return 0;
	b = memchr(a + 1, ' ', (size_t)(s + n - (a + 1)));
	return trial_is_kind(a + 1, (size_t)((b != NULL ? b : s + n) - (a + 1)));
}

/*
 * One line of the input: a "# session ID" header starts a session (per-session layout), a
 * journal record "TS ID KIND TEXT" goes to its session without the id column.
 */
static int
trial_split_line(struct trial_split *sp, unsigned char *s, size_t n)
{
	unsigned char *a, *b;
	char id[64];
	struct trial *t;
	int rc, close;

	if (n > 10 && memcmp(s, "# session ", 10) == 0) {
		snprintf(id, sizeof(id), "%.*s", (int)(n - 10 > 60 ? 60 : n - 10), s + 10);
		if (sp->current != NULL && trial_split_end(sp, sp->current) != 0)
			return -1;
		return (sp->current = trial_split_new(sp, id)) != NULL ? 0 : -1;
	}
	if (n == 0 || s[0] == '#')
		return 0;
	t = sp->current;
	a = memchr(s, ' ', n);
	b = a != NULL ? memchr(a + 1, ' ', (size_t)(s + n - (a + 1))) : NULL;
	if (b != NULL && !trial_is_kind(a + 1, (size_t)(b - (a + 1))) && b - a - 1 < 60) {
		snprintf(id, sizeof(id), "%.*s", (int)(b - a - 1), a + 1);
		t = trial_split_find(sp, id);
		memmove(a, b, (size_t)(s + n - b)); /* without the id column */
		n -= (size_t)(b - a);
	}
	if (n > 0 && s[0] >= '0' && s[0] <= '9' && !trial_split_whole(s, n)) {
		/* A record cut short by a crash mid-write: the journal goes on after it. */
		fprintf(stderr, "%s:%lu: torn record skipped\n", sp->name, sp->lineno);
		return 0;
	}
	if (t == NULL && (t = sp->current = trial_split_new(sp, "")) == NULL)
		return -1;
	t->lineno = sp->lineno;
	close = a != NULL && n > (size_t)(a - s) + 9 && memcmp(a, " * close ", 9) == 0;
	rc = trial_record(t, s, n);
	if (rc == 0 && close && t != sp->current)
		rc = trial_split_end(sp, t);
	return rc;
}

static int
trial_read(struct trial_split *sp, FILE *fp)
{
	unsigned char *buf = NULL;
	size_t size = 0, len;
	ssize_t n;
	int rc = 0;

	sp->lineno = 0;
	sp->current = NULL;
	while (rc == 0 && (n = getline((char **)&buf, &size, fp)) != -1) {
		sp->lineno++;
		len = (size_t)n;
		if (len > 0 && buf[len - 1] == '\n')
			len--;
		else if (len > 0)
			break; /* a torn last line (a crash mid-write): not a record */
		rc = trial_split_line(sp, buf, len);
	}
	if (rc == 0 && ferror(fp)) {
		fprintf(stderr, "%s: %s\n", sp->name, strerror(errno));
		rc = -1;
	}
	while (sp->nopen > 0)
		if (trial_split_end(sp, sp->open[sp->nopen - 1]) != 0)
			rc = -1;
	free(buf);
	return rc;
}

/* Sorts argv into rule files and transcripts; -1 (reported) on a usage error. */
static int
trial_args(int argc, char **argv, const char **files, int *nfiles, const char **transcripts,
           int *ntranscripts)
{
	int i, after = 0;

	*nfiles = *ntranscripts = 0;
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--transcript") == 0 && i + 1 < argc) {
			transcripts[(*ntranscripts)++] = argv[++i];
			after = 1;
		} else if (strncmp(argv[i], "--transcript=", 13) == 0) {
			transcripts[(*ntranscripts)++] = argv[i] + 13;
			after = 1;
		} else if (strcmp(argv[i], "--rules") == 0 && i + 1 < argc)
			files[(*nfiles)++] = argv[++i];
		else if (argv[i][0] == '-' && argv[i][1] != '\0') {
			fprintf(stderr, "smtptap: --test-rules: unknown option '%s'\n", argv[i]);
			return -1;
		} else if (after) /* --transcript FILE...: a day's journal, several files */
			transcripts[(*ntranscripts)++] = argv[i];
		else
			files[(*nfiles)++] = argv[i];
	}
	if (*nfiles == 0 || *ntranscripts == 0) {
		fprintf(stderr, "usage: smtptap --test-rules FILE... --transcript TRANSCRIPT...\n");
		return -1;
	}
	return 0;
}

/* The summary: totals, then each rule that hit, with its hits and sessions. */
static void
trial_summary(const struct trial_split *sp, const struct ruleset *rs)
{
	const char *file;
	unsigned int line;
	enum rule_scope scope;
	enum rule_action action;
	int i;

	printf("%lu session%s, %lu line%s tried, %lu rule hit%s\n", sp->nsessions,
	       sp->nsessions == 1 ? "" : "s", sp->ntried, sp->ntried == 1 ? "" : "s", sp->nhits,
	       sp->nhits == 1 ? "" : "s");
	for (i = 0; i < rules_count(rs); i++) {
		if (tally[i].hits == 0)
			continue;
		rules_describe(rs, i, &file, &line, &scope, &action);
		printf("\t%s:%u: %s %s: %lu hit%s in %lu session%s\n", file, line,
		       rules_scope_name(scope), rules_action_name(action), tally[i].hits,
		       tally[i].hits == 1 ? "" : "s", tally[i].sessions,
		       tally[i].sessions == 1 ? "" : "s");
	}
}

/* Loads the rules, replays every session of the transcripts, prints the summary. */
static int
trial_start(const char **files, int nfiles, const char **transcripts, int ntranscripts)
{
	struct trial_split sp;
	struct ruleset *rs;
	FILE *fp;
	int rc = 0, i;

	if ((rs = rules_load(files, nfiles, stderr)) == NULL)
		return 1;
	memset(&sp, 0, sizeof(sp));
	sp.rs = rs;
	if ((tally = calloc((size_t)rules_count(rs) + 1, sizeof(*tally))) == NULL) {
		rules_free(rs);
		return 1;
	}
	for (i = 0; rc == 0 && i < ntranscripts; i++) {
		sp.name = transcripts[i];
		if ((fp = fopen(sp.name, "r")) == NULL) {
			fprintf(stderr, "%s: %s\n", sp.name, strerror(errno));
			rc = -1;
			break;
		}
		rc = trial_read(&sp, fp);
		fclose(fp);
	}
	if (rc == 0)
		trial_summary(&sp, rs);
	free(sp.open);
	free(tally);
	tally = NULL;
	rules_free(rs);
	return rc == 0 && fflush(stdout) == 0 ? 0 : 1;
}

int
rules_trial_main(int argc, char **argv)
{
	const char **files, **transcripts;
	int nfiles, ntranscripts, rc;

	files = calloc(argc > 0 ? (size_t)argc : 1, sizeof(*files));
	transcripts = calloc(argc > 0 ? (size_t)argc : 1, sizeof(*transcripts));
	if (files == NULL || transcripts == NULL) {
		fprintf(stderr, "smtptap: %s\n", strerror(ENOMEM));
		free(files);
		free(transcripts);
		return 1;
	}
	if (trial_args(argc, argv, files, &nfiles, transcripts, &ntranscripts) == -1)
		rc = 2;
	else
		rc = trial_start(files, nfiles, transcripts, ntranscripts);
	free(files);
	free(transcripts);
	return rc;
}
