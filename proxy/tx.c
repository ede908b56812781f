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
#include "proxy/ehlo.h"
#include "proxy/filter.h"
#include "proxy/message.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/relay.h"
#include "proxy/reply_edit.h"
#include "proxy/session.h"
#include "proxy/tx.h"

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
	while (off < cmd->arglen && cmd->arg[off] == ' ')
		off++;
	return escape_strdup(cmd->arg + off, cmd->arglen - off);
}

/* Empties a transaction for reuse. */
static void
tx_clear(struct tx *tx)
{
	size_t i;

	for (i = 0; i < tx->nrcpt; i++)
		free(tx->rcpts[i].to);
	free(tx->rcpts);
	free(tx->mail_from);
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
	tx->mail_from = tx_path(cmd);
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
	return (int)tx->nrcpt++;
}

void
tx_helo(struct session *s, const struct smtp_command *cmd)
{
	size_t n = 0;

	while (cmd->arg != NULL && n < cmd->arglen && cmd->arg[n] != ' ')
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
		tx_begin(s, cmd);
		if (s->tx != NULL)
			s->tx->mail_code = code;
		s->tx = NULL;
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

void
tx_reply(struct session *s, const struct pending *p, int code)
{
	struct tx *tx = p->tx;

	if (tx == NULL)
		return;
	switch (p->verb) {
	case VERB_MAIL:
		tx->mail_code = code;
		break;
	case VERB_RCPT:
		if (p->rcpt_index >= 0 && (size_t)p->rcpt_index < tx->nrcpt)
			tx->rcpts[p->rcpt_index].code = code;
		break;
	case VERB_EOD:
	case VERB_BDAT:
		if (p->verb == VERB_BDAT && !p->last && code / 100 == 2)
			break;
		tx->code = code;
		free(tx->text);
		tx->text = s->reply_text != NULL ? strdup(s->reply_text) : NULL;
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
