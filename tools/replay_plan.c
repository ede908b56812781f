/* The replay's plan: the client's side of a recorded session, cut at the replies it awaited. */
#include "tools/replay_plan.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "smtp/smtp.h"

#define PLAN_PENDING 256

enum pend_type { PEND_CMD, PEND_SKIP, PEND_OWN };
enum plan_mode { MODE_COMMAND, MODE_DATA, MODE_SASL };

struct builder {
	struct plan *p;
	const struct plan_options *o;
	const struct plan_record *recs;
	size_t n, i;
	int greeted;
	enum plan_mode mode;
	int in_bdat;
	uint64_t bdat_left;
	long content; /* the step gathering message content, or -1 */
	unsigned long content_lines;
	int pend_type[PLAN_PENDING], pend_verb[PLAN_PENDING];
	long pend_step[PLAN_PENDING]; /* the command's STEP_SEND (the content's for "."), or -1 */
	long pend_chunk[PLAN_PENDING]; /* a BDAT's chunk (its content's step), or -1 */
	int phead, pcount;
	int bdat_pend; /* the BDAT whose chunk is being gathered, in pend_* */
	/* DATA and its 354 when the proxy answered DATA itself (it held the message), or -1. */
	long held_data, held_expect;
	int held_refused; /* the proxy refused a held message: its RSET upstream follows */
	int tls_recorded, tls_done, helo_seen;
	unsigned char *helo; /* the first EHLO/HELO line, sent again after an added STARTTLS */
	size_t helolen;
	/* The reply being gathered. */
	char *reply_shown;
	int reply_code;
	int reply_own; /* the proxy's own ("P:"), not the server's */
	unsigned reply_lines;
};

static int
plan_fail(struct builder *b, const char *why)
{
	if (b->p->why[0] == '\0')
		snprintf(b->p->why, sizeof(b->p->why), "%s", why);
	return -1;
}

static struct step *
plan_add(struct builder *b, enum step_kind kind)
{
	struct step *s;

	if (b->p->nsteps == b->p->cap) {
		size_t cap = b->p->cap ? b->p->cap * 2 : 64;

		if ((s = realloc(b->p->steps, cap * sizeof(*s))) == NULL)
			return NULL;
		b->p->steps = s;
		b->p->cap = cap;
	}
	s = &b->p->steps[b->p->nsteps++];
	memset(s, 0, sizeof(*s));
	s->kind = kind;
	return s;
}

static int
plan_send(struct builder *b, const unsigned char *p, size_t n, const char *shown)
{
	struct step *s = plan_add(b, STEP_SEND);

	if (s == NULL || (s->data = malloc(n ? n : 1)) == NULL)
		return plan_fail(b, "out of memory");
	memcpy(s->data, p, n);
	s->len = n;
	s->shown = shown != NULL ? strdup(shown) : NULL;
	return 0;
}

static int
plan_text(struct builder *b, enum step_kind kind, const char *text, int code, int critical)
{
	struct step *s = plan_add(b, kind);

	if (s == NULL || (s->shown = strdup(text)) == NULL)
		return plan_fail(b, "out of memory");
	s->code = code;
	s->critical = critical;
	return 0;
}

/* Message content (DATA's lines, a BDAT chunk): gathered in one step, shown as a count. */
static int
plan_content(struct builder *b, const unsigned char *p, size_t n)
{
	struct step *s;
	unsigned char *q;

	if (b->content < 0) {
		if (plan_send(b, p, 0, NULL) != 0)
			return -1;
		b->content = (long)b->p->nsteps - 1;
		b->content_lines = 0;
	}
	s = &b->p->steps[b->content];
	if ((q = realloc(s->data, s->len + n + 1)) == NULL)
		return plan_fail(b, "out of memory");
	s->data = q;
	memcpy(s->data + s->len, p, n);
	s->len += n;
	b->content_lines++;
	return 0;
}

static void
plan_content_end(struct builder *b)
{
	struct step *s;
	char shown[96];

	if (b->content < 0)
		return;
	s = &b->p->steps[b->content];
	snprintf(shown, sizeof(shown), "C: (message content: %lu records, %zu octets)",
	         b->content_lines, s->len);
	free(s->shown);
	s->shown = strdup(shown);
	b->content = -1;
}

static void
plan_push(struct builder *b, int type, int verb, long step)
{
	int k;

	if (b->pcount == PLAN_PENDING) { /* more than any pipelined group: the oldest goes */
		b->phead = (b->phead + 1) % PLAN_PENDING;
		b->pcount--;
	}
	k = (b->phead + b->pcount++) % PLAN_PENDING;
	b->pend_type[k] = type;
	b->pend_verb[k] = verb;
	b->pend_step[k] = step;
	b->pend_chunk[k] = -1;
}

/* The command just planned awaits its reply, which may yet say it was never relayed. */
static void
plan_push_sent(struct builder *b, int verb)
{
	plan_push(b, PEND_CMD, verb, (long)b->p->nsteps - 1);
}

/*
 * A command of the proxy's own ("U:"): after a held message's end, before its "." (trial.c);
 * that DATA of its own hands the held message to the server.
 */
static void
plan_push_own(struct builder *b)
{
	long step;
	int k;

	if (b->pcount > 0 && b->pcount < PLAN_PENDING) {
		k = (b->phead + b->pcount - 1) % PLAN_PENDING;
		if (b->pend_type[k] == PEND_CMD && b->pend_verb[k] == VERB_EOD) {
			step = b->pend_step[k];
			b->pend_type[k] = PEND_OWN;
			b->pend_step[k] = -1;
			plan_push(b, PEND_CMD, VERB_EOD, step);
			b->held_data = b->held_expect = -1;
			return;
		}
	}
	plan_push(b, PEND_OWN, VERB_UNKNOWN, -1);
}

static void
plan_pop(struct builder *b)
{
	b->phead = (b->phead + 1) % PLAN_PENDING;
	b->pcount--;
}

/* A record's octets, escaping undone, into a new buffer. */
static unsigned char *
plan_octets(const struct plan_record *r, size_t *n)
{
	unsigned char *p = malloc(r->len + 3);

	if (p != NULL && journal_unescape(r->text, r->len, p, n) != 0) {
		free(p);
		return NULL;
	}
	return p;
}

static int
plan_next_is_piece(const struct builder *b, char side)
{
	return b->i + 1 < b->n && b->recs[b->i + 1].kind[0] == side && b->recs[b->i + 1].kind[1] == '+';
}

/* A record of a BDAT chunk: its CRLF back unless it ends the chunk without one. */
static int
plan_chunk_record(struct builder *b)
{
	size_t n;
	unsigned char *p = plan_octets(&b->recs[b->i], &n);
	int rc;

	if (p == NULL)
		return plan_fail(b, "bad escape in a record");
	if ((n == 0 || p[n - 1] != '\n') && !plan_next_is_piece(b, 'C') && b->bdat_left >= n + 2) {
		p[n++] = '\r';
		p[n++] = '\n';
	}
	if (n > b->bdat_left) {
		free(p);
		return plan_fail(b, "a BDAT chunk was not recorded in full (--record headers or "
		                    "none, or refused by the proxy)");
	}
	b->bdat_left -= n;
	rc = plan_content(b, p, n);
	free(p);
	if (rc == 0)
		b->pend_chunk[b->bdat_pend] = b->content;
	if (rc == 0 && b->bdat_left == 0) {
		b->in_bdat = 0;
		plan_content_end(b);
	}
	return rc;
}

/* A client line: a record and its "C+" pieces, with its CRLF back (none after a bare LF). */
static unsigned char *
plan_client_line(struct builder *b, size_t *n, char **shown)
{
	unsigned char *line = NULL, *p, *q;
	size_t len = 0, k, slen = 3;
	char *s = strdup("C: ");

	for (;;) {
		const struct plan_record *r = &b->recs[b->i];

		if ((p = plan_octets(r, &k)) == NULL || (q = realloc(line, len + k + 2)) == NULL) {
			free(p);
			free(line);
			free(s);
			return NULL;
		}
		line = q;
		memcpy(line + len, p, k);
		len += k;
		free(p);
		if (s != NULL && (s = realloc(s, slen + r->len + 1)) != NULL) {
			memcpy(s + slen, r->text, r->len);
			slen += r->len;
			s[slen] = '\0';
		}
		if (!plan_next_is_piece(b, 'C'))
			break;
		b->i++;
	}
	if (len == 0 || line[len - 1] != '\n') {
		line[len++] = '\r';
		line[len++] = '\n';
	}
	*n = len;
	*shown = s;
	return line;
}

/* AUTH with --auth: PLAIN with the given credentials, in place of the recorded exchange. */
static int
plan_auth(struct builder *b)
{
	size_t ul = strlen(b->o->auth_user), pl = strlen(b->o->auth_password), n = ul + pl + 2;
	unsigned char *raw = malloc(n), *b64 = malloc(4 * ((n + 2) / 3) + 16);
	char *line;
	int len, rc = -1;

	if (raw == NULL || b64 == NULL)
		goto out;
	raw[0] = '\0';
	memcpy(raw + 1, b->o->auth_user, ul);
	raw[ul + 1] = '\0';
	memcpy(raw + ul + 2, b->o->auth_password, pl);
	EVP_EncodeBlock(b64, raw, (int)n);
	if ((len = asprintf(&line, "AUTH PLAIN %s\r\n", b64)) < 0)
		goto out;
	rc = plan_send(b, (unsigned char *)line, (size_t)len, "C: AUTH PLAIN [--auth credentials]");
	OPENSSL_cleanse(line, (size_t)len);
	free(line);
out:
	if (raw != NULL)
		OPENSSL_cleanse(raw, n);
	free(raw);
	free(b64);
	return rc;
}

static int
plan_note_skip(struct builder *b, const char *shown, const char *why)
{
	char *t;
	int rc;

	if (asprintf(&t, "%s  (not sent: %s)", shown, why) < 0)
		return plan_fail(b, "out of memory");
	rc = plan_text(b, STEP_NOTE, t, 0, 0);
	free(t);
	return rc;
}

/*
 * Whether a client line is the recorder's marker in place of a SASL response ("[redacted]",
 * "[redacted user=NAME]"): one pipelined behind an AUTH the server refused reached the server
 * as a line of its own, but what it said is not in the journal.
 */
static int
plan_is_redacted(const unsigned char *line, size_t bare)
{
	return bare >= 10 && memcmp(line, "[redacted", 9) == 0 && line[bare - 1] == ']';
}

/* A client command. */
static int
plan_command(struct builder *b, unsigned char *line, size_t n, const char *shown)
{
	struct smtp_command cmd;
	size_t bare = n >= 2 && line[n - 2] == '\r' ? n - 2 : n - 1;
	uint64_t size;
	int last;

	if (plan_is_redacted(line, bare)) {
		plan_push(b, PEND_SKIP, VERB_SASL, -1);
		return plan_note_skip(b, shown, "a SASL response, redacted");
	}
	smtp_parse_command(line, bare, &cmd);
	if (smtp_verb_info(cmd.verb)->handler == SMTP_HANDLE_REFUSE) {
		char why[64];

		/* Replay runs on the proxy's host, which the server trusts to speak for clients. */
		snprintf(why, sizeof(why), "the proxy never relays a client's %s",
		         smtp_verb_info(cmd.verb)->name);
		plan_push(b, PEND_SKIP, (int)cmd.verb, -1);
		return plan_note_skip(b, shown, why);
	}
	if (cmd.verb == VERB_AUTH) {
		if (b->o->auth_user == NULL) {
			plan_push(b, PEND_SKIP, VERB_AUTH, -1);
			return plan_note_skip(b, shown, "AUTH needs --auth USER:PASSWORD");
		}
		if (plan_auth(b) != 0)
			return -1;
		plan_push_sent(b, VERB_AUTH);
		return 0;
	}
	if (cmd.verb == VERB_STARTTLS && !b->o->starttls) {
		plan_push(b, PEND_SKIP, VERB_STARTTLS, -1);
		return plan_note_skip(b, shown, "no --starttls");
	}
	if ((cmd.verb == VERB_EHLO || cmd.verb == VERB_HELO || cmd.verb == VERB_LHLO) &&
	    b->helo == NULL && (b->helo = malloc(n)) != NULL) {
		memcpy(b->helo, line, n);
		b->helolen = n;
	}
	if (plan_send(b, line, n, shown) != 0)
		return -1;
	b->p->steps[b->p->nsteps - 1].verb = (int)cmd.verb;
	plan_push_sent(b, (int)cmd.verb);
	if (cmd.verb == VERB_BDAT && smtp_parse_bdat(cmd.arg, cmd.arglen, &size, &last) == 0 &&
	    size > 0) {
		b->in_bdat = 1;
		b->bdat_left = size;
		b->bdat_pend = (b->phead + b->pcount - 1) % PLAN_PENDING;
		b->content = -1;
	}
	return 0;
}

static int
plan_client(struct builder *b)
{
	unsigned char *line;
	char *shown = NULL;
	size_t n;
	int rc = 0;

	if (b->in_bdat)
		return plan_chunk_record(b);
	if ((line = plan_client_line(b, &n, &shown)) == NULL)
		return plan_fail(b, "bad escape in a record");
	if (b->mode == MODE_SASL) {
		/* SASL data answering a 334: redacted, never sent again (--auth speaks for it). */
	} else if (b->mode == MODE_DATA) {
		rc = plan_content(b, line, n);
		if (rc == 0 && n == 3 && line[0] == '.') {
			long content = b->content;

			plan_content_end(b);
			plan_push(b, PEND_CMD, VERB_EOD, content);
			b->mode = MODE_COMMAND;
		}
	} else {
		rc = plan_command(b, line, n, shown != NULL ? shown : "C: ?");
	}
	free(line);
	free(shown);
	return rc;
}

/* --starttls on a session recorded in clear: STARTTLS after the first EHLO, then it again. */
static int
plan_add_starttls(struct builder *b)
{
	static const unsigned char cmd[] = "STARTTLS\r\n";

	b->tls_done = 1;
	if (plan_send(b, cmd, sizeof(cmd) - 1, "C: STARTTLS  (--starttls)") != 0 ||
	    plan_text(b, STEP_EXPECT, "(not recorded)", 0, 1) != 0 ||
	    plan_text(b, STEP_STARTTLS, "", 0, 0) != 0)
		return -1;
	if (b->helo == NULL)
		return 0;
	return plan_send(b, b->helo, b->helolen, "C: (the EHLO again, inside TLS)") != 0 ||
	               plan_text(b, STEP_EXPECT, "(not recorded)", 0, 0) != 0
	           ? -1
	           : 0;
}

/* A step planned already becomes a note: what it would have sent or expected, and why not. */
static int
plan_step_unsent(struct builder *b, long k, const char *why)
{
	struct step *s;
	char *t;

	if (k < 0)
		return 0;
	s = &b->p->steps[k];
	if (asprintf(&t, "%s%s  (%s)", s->kind == STEP_EXPECT ? "  recorded " : "",
	             s->shown != NULL ? s->shown : "C: ?", why) < 0)
		return plan_fail(b, "out of memory");
	if (s->data != NULL)
		OPENSSL_cleanse(s->data, s->len);
	free(s->data);
	free(s->shown);
	s->data = NULL;
	s->len = 0;
	s->shown = t;
	s->kind = STEP_NOTE;
	return 0;
}

/*
 * The proxy answered a message's end itself.  A message it held (its own 354) never reached
 * the server: DATA, its 354 and the content are not replayed.  Of a message it streamed, only
 * the end was kept back, so the server never took it.
 */
static int
plan_unsend_message(struct builder *b, long k, const char *why)
{
	struct step *s;
	char *t;

	if (b->held_data >= 0) {
		if (plan_step_unsent(b, b->held_data, why) != 0 ||
		    plan_step_unsent(b, b->held_expect, "the proxy's own: not expected now") != 0)
			return -1;
		b->held_data = b->held_expect = -1;
		b->held_refused = 1;
		return plan_step_unsent(b, k, why);
	}
	if (k < 0 || (s = &b->p->steps[k])->kind != STEP_SEND || s->len < 3 ||
	    memcmp(s->data + s->len - 3, ".\r\n", 3) != 0)
		return 0;
	s->len -= 3;
	if (asprintf(&t, "%s  (its end %s)", s->shown, why) < 0)
		return plan_fail(b, "out of memory");
	free(s->shown);
	s->shown = t;
	return 0;
}

/*
 * Whether a command the proxy answered itself is replayed all the same: a DATA it answered
 * 354 (it held the message, and handed it on with a DATA of its own, "U:"), and with
 * --starttls a STARTTLS it answered 220 (its own TLS, which the replay does with the server).
 */
static int
plan_goes_on(const struct builder *b, int verb)
{
	return (verb == VERB_DATA && b->reply_code == 354) ||
	       (verb == VERB_STARTTLS && b->reply_code / 100 == 2 && b->o->starttls);
}

/*
 * A reply of the proxy's own ("P:") to a command that crossed no further (a client's
 * XCLIENT, a rule's REJECT, a line too long): what was planned for it is not sent, a BDAT's
 * chunk with it (alone, the server would read the chunk as commands).
 */
static int
plan_unsend(struct builder *b, int verb, long step, long chunk)
{
	char *why;
	int rc;

	if (asprintf(&why, "not sent: the proxy answered it, P: %s",
	             b->reply_shown != NULL ? b->reply_shown : "") < 0)
		return plan_fail(b, "out of memory");
	rc = verb == VERB_EOD ? plan_unsend_message(b, step, why) : plan_step_unsent(b, step, why);
	if (rc == 0)
		rc = plan_step_unsent(b, chunk, why);
	free(why);
	return rc;
}

/* A whole reply recorded: which command it answered decides what the replay expects. */
static int
plan_reply_done(struct builder *b)
{
	int code = b->reply_code, type, verb, rc = 0;
	const char *shown = b->reply_shown != NULL ? b->reply_shown : "";
	long step, chunk;

	if (b->in_bdat)
		return plan_fail(b, "a BDAT chunk was not recorded in full (--record headers or none)");
	if (!b->greeted) {
		b->greeted = 1;
		return plan_text(b, STEP_EXPECT, shown, code, 0);
	}
	if (b->pcount == 0) {
		char *t;

		if (asprintf(&t, "  recorded %s  (a reply to no command: not expected now)", shown) < 0)
			return plan_fail(b, "out of memory");
		rc = plan_text(b, STEP_NOTE, t, 0, 0);
		free(t);
		return rc;
	}
	type = b->pend_type[b->phead];
	verb = b->pend_verb[b->phead];
	step = b->pend_step[b->phead];
	chunk = b->pend_chunk[b->phead];
	if (type == PEND_OWN) {
		plan_pop(b);
		return 0;
	}
	if (verb == VERB_AUTH && code == 334) {
		b->mode = MODE_SASL;
		return 0;
	}
	plan_pop(b);
	if (b->mode == MODE_SASL)
		b->mode = MODE_COMMAND;
	if (type == PEND_SKIP)
		return 0;
	if (b->reply_own && !plan_goes_on(b, verb))
		return plan_unsend(b, verb, step, chunk);
	rc = plan_text(b, STEP_EXPECT, shown,
	               code, (verb == VERB_DATA && code == 354) || verb == VERB_STARTTLS);
	if (rc == 0 && b->reply_own && verb == VERB_DATA) {
		b->held_data = step;
		b->held_expect = (long)b->p->nsteps - 1;
	}
	if (rc == 0 && verb == VERB_DATA && code == 354) {
		b->mode = MODE_DATA;
		b->content = -1;
	}
	if (rc == 0 && verb == VERB_STARTTLS && code / 100 == 2)
		rc = plan_text(b, STEP_STARTTLS, "", 0, 0);
	if (rc == 0 && (verb == VERB_EHLO || verb == VERB_HELO || verb == VERB_LHLO) &&
	    b->o->starttls && !b->tls_recorded && !b->tls_done)
		rc = plan_add_starttls(b);
	return rc;
}

static int
plan_server(struct builder *b)
{
	const struct plan_record *r = &b->recs[b->i];
	int last;

	if (r->kind[1] == '+')
		return 0; /* the rest of a long reply line */
	if (b->reply_lines == 0) {
		free(b->reply_shown);
		b->reply_shown = strndup(r->text, r->len);
		b->reply_code = r->len >= 3 ? atoi(r->text) : 0;
		b->reply_own = r->kind[0] == 'P';
	}
	b->reply_lines++;
	last = !(r->len >= 4 && r->text[3] == '-');
	if (!last)
		return 0;
	if (b->reply_lines > 1) {
		char *t;

		if (asprintf(&t, "%s (+%u lines)", b->reply_shown, b->reply_lines - 1) >= 0) {
			free(b->reply_shown);
			b->reply_shown = t;
		}
	}
	b->reply_lines = 0;
	return plan_reply_done(b);
}

/*
 * A line of the proxy's own to the server ("U:"): its reply is not the client's.  The RSET
 * after a held message it refused is sent in its place, so that the server's transaction
 * ends as it did then.
 */
static int
plan_upstream(struct builder *b)
{
	static const unsigned char rset[] = "RSET\r\n";
	const struct plan_record *r = &b->recs[b->i];

	if (!b->greeted) /* before the greeting: a PROXY header, no reply */
		return 0;
	if (!b->held_refused || r->len != 4 || strncasecmp(r->text, "RSET", 4) != 0) {
		plan_push_own(b);
		return 0;
	}
	b->held_refused = 0;
	if (plan_send(b, rset, sizeof(rset) - 1,
	              "U: RSET  (the proxy's own, after the message it refused)") != 0)
		return -1;
	plan_push_sent(b, VERB_RSET);
	return 0;
}

/* An event record: some say the session can't be sent again as it was. */
static int
plan_event(struct builder *b)
{
	static const char *const unreplayable[] = {
	    "message content not recorded", "message body not recorded",
	    "refused bdat chunk discarded", NULL};
	const struct plan_record *r = &b->recs[b->i];
	size_t k;

	for (k = 0; unreplayable[k] != NULL; k++)
		if (r->len >= strlen(unreplayable[k]) &&
		    memcmp(r->text, unreplayable[k], strlen(unreplayable[k])) == 0)
			return plan_fail(b, r->len > 0 && r->text[0] == 'r'
			                        ? "a BDAT chunk was refused by the proxy and not recorded"
			                        : "the session was recorded without its message content "
			                          "(--record headers or none)");
	return 0;
}

int
plan_build(struct plan *p, const struct plan_record *recs, size_t n, const struct plan_options *o)
{
	struct builder b;
	int rc = 0;

	memset(p, 0, sizeof(*p));
	memset(&b, 0, sizeof(b));
	b.p = p;
	b.o = o;
	b.recs = recs;
	b.n = n;
	b.content = -1;
	b.held_data = b.held_expect = -1;
	for (b.i = 0; b.i < n; b.i++)
		if (recs[b.i].kind[0] == 'C' && recs[b.i].len >= 8 &&
		    strncasecmp(recs[b.i].text, "STARTTLS", 8) == 0)
			b.tls_recorded = 1;
	for (b.i = 0; rc == 0 && b.i < n; b.i++) {
		switch (recs[b.i].kind[0]) {
		case 'C':
			rc = plan_client(&b);
			break;
		case 'S':
		case 'P':
			rc = plan_server(&b);
			break;
		case 'U':
			rc = plan_upstream(&b);
			break;
		case '*':
			rc = plan_event(&b);
			break;
		}
	}
	if (rc == 0 && b.in_bdat)
		rc = plan_fail(&b, "a BDAT chunk was not recorded in full (--record headers or none)");
	if (rc == 0)
		plan_content_end(&b);
	free(b.reply_shown);
	free(b.helo);
	return rc;
}

void
plan_free(struct plan *p)
{
	size_t i;

	for (i = 0; i < p->nsteps; i++) {
		if (p->steps[i].data != NULL)
			OPENSSL_cleanse(p->steps[i].data, p->steps[i].len);
		free(p->steps[i].data);
		free(p->steps[i].shown);
	}
	free(p->steps);
	p->steps = NULL;
	p->nsteps = p->cap = 0;
}
