/* Mail transactions as the JSON event reports them: MAIL, each RCPT, the final reply. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "logs/escape.h"
#include "logs/log.h"
#include "logs/redact.h"
#include "logs/transcript.h"
#include "proxy/options.h"
#include "proxy/conn.h"
#include "proxy/side.h"
#include "proxy/tx.h"
#include "smtp/address.h"

#define TX_MAX_RECORDED 1000

/* The path of "MAIL FROM:<a@b> SIZE=1" or "RCPT TO:<c@d>": the argument after the colon. */
static char *
tx_path(const struct smtp_command *cmd)
{
	const unsigned char *colon;
	size_t off;

	if (cmd->arg == NULL)
		return strdup("");
	colon = memchr(cmd->arg, ':', cmd->arglen);
	off = colon != NULL ? (size_t)(colon - cmd->arg) + 1 : 0;
	/* Any white space, as the server reads it ("TO:\t<c@d>" is <c@d>). */
	while (off < cmd->arglen && address_is_space(cmd->arg[off]))
		off++;
	return escape_strdup(cmd->arg + off, cmd->arglen - off);
}

/*
 * The parameters as the server reads them, apart at any white space (space, tab, VT, FF,
 * CR), escaped and kept with one space between them: the event splits them there.
 */
static char *
tx_params(const unsigned char *p, size_t n)
{
	unsigned char *joined = malloc(n);
	size_t len = 0, i;
	char *out;

	if (joined == NULL)
		return NULL;
	for (i = 0; i < n; i++)
		if (!address_is_space(p[i]))
			joined[len++] = p[i];
		else if (len > 0 && joined[len - 1] != ' ')
			joined[len++] = ' ';
	out = escape_strdup(joined, len);
	free(joined);
	return out;
}

/*
 * "MAIL FROM:<a@b> SIZE=1 BODY=8BITMIME" split: the address alone into tx->mail_from, the
 * parameters (NULL when none) into tx->mail_params.  A quoted local part may hold a ">" or
 * white space.
 */
static void
tx_mail_split(struct tx *tx, const struct smtp_command *cmd)
{
	const unsigned char *p = cmd->arg, *colon;
	size_t n = cmd->arglen, off, end, rest;
	int quoted = 0;

	if (p == NULL) {
		tx->mail_from = strdup("");
		return;
	}
	colon = memchr(p, ':', n);
	off = colon != NULL ? (size_t)(colon - p) + 1 : 0;
	while (off < n && address_is_space(p[off]))
		off++;
	end = off;
	if (end < n && p[end] == '<') {
		for (end++; end < n; end++) {
			if (p[end] == '\\' && quoted && end + 1 < n)
				end++;
			else if (p[end] == '"')
				quoted = !quoted;
			else if (p[end] == '>' && !quoted)
				break;
		}
		if (end < n)
			end++;
	}
	while (end < n && !address_is_space(p[end]))
		end++;
	tx->mail_from = escape_strdup(p + off, end - off);
	rest = end;
	while (rest < n && address_is_space(p[rest]))
		rest++;
	while (n > rest && address_is_space(p[n - 1]))
		n--;
	if (rest < n)
		tx->mail_params = tx_params(p + rest, n - rest);
}

/* A token of a queue id: letters, digits and the punctuation ids use. */
static size_t
tx_id_span(const char *p)
{
	size_t n = 0;

	while ((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= 'A' && p[n] <= 'Z') ||
	       (p[n] >= '0' && p[n] <= '9') || p[n] == '-' || p[n] == '.' || p[n] == '_')
		n++;
	return n;
}

static int
tx_id_copy(const char *p, size_t n, char *id, size_t size)
{
	/* An enhanced status code (2.0.0) is no id. */
	if (n == 0 || n >= size || (n == 5 && p[1] == '.' && p[3] == '.'))
		return -1;
	memcpy(id, p, n);
	id[n] = '\0';
	return 0;
}

int
tx_queue_id(const char *text, char *id, size_t size)
{
	const char *p;

	if (text == NULL)
		return -1;
	/* Postfix: "2.0.0 Ok: queued as 4Xq2Yb1kz9" */
	if ((p = strcasestr(text, "queued as ")) != NULL)
		return tx_id_copy(p + 10, tx_id_span(p + 10), id, size);
	/* Exchange: "2.6.0 <msgid> [InternalId=23138874, Hostname=...] Queued mail for delivery" */
	if ((p = strstr(text, "[InternalId=")) != NULL)
		return tx_id_copy(p + 12, tx_id_span(p + 12), id, size);
	/* Exim: "OK id=1rAbCd-0001Ab-Cd" */
	for (p = text; (p = strstr(p, "id=")) != NULL; p += 3)
		if (p == text || address_is_space((unsigned char)p[-1]))
			return tx_id_copy(p + 3, tx_id_span(p + 3), id, size);
	/* Sendmail, OpenSMTPD: "2.0.0 wB6NX5fa012345 Message accepted for delivery" */
	if ((p = strstr(text, " Message accepted for delivery")) != NULL ||
	    (p = strstr(text, " message accepted for delivery")) != NULL) {
		const char *start = p;

		while (start > text && !address_is_space((unsigned char)start[-1]))
			start--;
		if (tx_id_span(start) == (size_t)(p - start))
			return tx_id_copy(start, (size_t)(p - start), id, size);
	}
	return -1;
}

/* Empties a transaction for reuse. */
static void
tx_clear(struct tx *tx)
{
	size_t i;

	for (i = 0; i < tx->nrcpt; i++) {
		free(tx->rcpts[i].to);
		free(tx->rcpts[i].text);
	}
	free(tx->rcpts);
	free(tx->mail_from);
	free(tx->mail_params);
	free(tx->mail_text);
	free(tx->text);
	memset(tx, 0, sizeof(*tx));
}

/* The one transaction struct reused for those beyond what an event records. */
static struct tx *
tx_spare(struct session *s)
{
	if (s->tx_spare == NULL)
		s->tx_spare = calloc(1, sizeof(*s->tx_spare));
	else
		tx_clear(s->tx_spare);
	return s->tx_spare;
}

void
tx_begin(struct session *s, const struct smtp_command *cmd)
{
	struct tx *tx;

	s->tx = NULL;
	if (s->ntx >= TX_MAX_RECORDED) {
		/* Not recorded, but followed all the same: rules depend on its recipients. */
		s->tx = tx_spare(s);
		s->tx_unrecorded++;
		return;
	}
	if ((tx = calloc(1, sizeof(*tx))) == NULL)
		return;
	tx_mail_split(tx, cmd);
	tx->mail_code = 0;
	tx->code = 0;
	TAILQ_INSERT_TAIL(&s->txs, tx, entry);
	s->ntx++;
	s->tx = tx;
}

int
tx_rcpt(struct session *s, const struct smtp_command *cmd)
{
	struct tx *tx = s->tx;
	struct rcpt *r;

	if (tx == NULL || tx->nrcpt >= 10000)
		return -1;
	if ((r = realloc(tx->rcpts, (tx->nrcpt + 1) * sizeof(*r))) == NULL)
		return -1;
	tx->rcpts = r;
	r[tx->nrcpt].to = tx_path(cmd);
	r[tx->nrcpt].code = 0;
	r[tx->nrcpt].text = NULL;
	return (int)tx->nrcpt++;
}

void
tx_helo(struct session *s, const struct smtp_command *cmd)
{
	size_t n = 0;

	/* The name is the first word, ended by any white space as the server reads it. */
	while (cmd->arg != NULL && n < cmd->arglen && !address_is_space(cmd->arg[n]))
		n++;
	free(s->helo);
	s->helo = escape_strdup(cmd->arg != NULL ? cmd->arg : (const unsigned char *)"", n);
	s->tx = NULL;
}

/* A refused MAIL or RCPT still shows in the event, with the proxy's reply code. */
void
tx_refused(struct session *s, const struct smtp_command *cmd, int code)
{
	int i;

	if (cmd->verb == VERB_MAIL) {
		/* The server never saw it: a transaction it has open goes on (and its limits). */
		struct tx *open = s->tx;

		if (s->ntx < TX_MAX_RECORDED) {
			tx_begin(s, cmd);
			if (s->tx != NULL)
				s->tx->mail_code = code;
		} else {
			s->tx_unrecorded++; /* the spare may be the open one: left as it is */
		}
		s->tx = open;
	} else if (cmd->verb == VERB_RCPT && (i = tx_rcpt(s, cmd)) >= 0) {
		s->tx->rcpts[i].code = code;
	}
}

int
tx_accepted(const struct tx *tx)
{
	size_t i;

	for (i = 0; tx != NULL && i < tx->nrcpt; i++)
		if (tx->rcpts[i].code / 100 == 2)
			return 1;
	return 0;
}

/* The text of the reply just read, in place of *text. */
static void
tx_text(struct session *s, char **text)
{
	free(*text);
	*text = s->reply.text != NULL ? strdup(s->reply.text) : NULL;
}

void
tx_reply(struct session *s, const struct pending *p, int code)
{
	struct tx *tx = p->tx;

	if (tx == NULL)
		return;
	switch (p->verb) {
	case VERB_MAIL:
		tx->mail_code = code;
		tx_text(s, &tx->mail_text);
		break;
	case VERB_RCPT:
		if (p->rcpt_index >= 0 && (size_t)p->rcpt_index < tx->nrcpt) {
			tx->rcpts[p->rcpt_index].code = code;
			tx_text(s, &tx->rcpts[p->rcpt_index].text);
		}
		break;
	case VERB_DATA:
		if (code == 354)
			tx->data = 1;
		break;
	case VERB_EOD:
	case VERB_BDAT:
		tx->data = 1;
		if (p->verb == VERB_BDAT && !p->last && code / 100 == 2)
			break;
		tx->code = code;
		free(tx->text);
		tx->text = s->reply.text != NULL ? strdup(s->reply.text) : NULL;
		if (s->tx == tx)
			s->tx = NULL;
		break;
	default:
		break;
	}
}

void
tx_free(struct tx *tx)
{
	if (tx == NULL)
		return;
	tx_clear(tx);
	free(tx);
}
