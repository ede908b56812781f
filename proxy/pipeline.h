#ifndef SMTPTAP_PIPELINE_H
#define SMTPTAP_PIPELINE_H

#include <stddef.h>
#include <sys/queue.h>

#include "smtp/smtp.h"

struct tx;

/*
 * The queue of commands awaiting a reply (RFC 2920).  Server replies answer its head in
 * order; a reply the proxy makes itself waits in the queue for its turn, so it never overtakes
 * the server's replies to earlier commands.
 */
struct pending {
	TAILQ_ENTRY(pending) entry;
	enum smtp_verb verb;
	int last;          /* BDAT ... LAST */
	int rcpt_index;    /* which RCPT of the transaction, or -1 */
	struct tx *tx;     /* the transaction the command belongs to, or NULL */
	char *local_reply; /* CRLF-terminated lines the proxy sends itself, or NULL */
	int starttls;      /* the local reply is our 220 to STARTTLS: the handshake follows */
	int hold_decide;   /* a held DATA: at its turn, our 354 or the server's DATA */
	int quiet;         /* the server's reply to our own command: not for the client */
	/* After the local reply the session closes, for this reason (a rule's DISCONNECT:
	 * "rule_disconnect"); NULL when it goes on. */
	const char *disconnect;
	/* A RSET or EHLO sent while a message was being chunked: the client waits for its reply,
	 * which ends that message when it is a 2xx. */
	int ends_chunking;
};

struct pipeline {
	TAILQ_HEAD(, pending) queue;
	size_t count;
	size_t remote; /* entries the server will answer */
};

void pipeline_init(struct pipeline *p);
/* Appends a command for the server to answer; NULL when out of memory. */
struct pending *pipeline_push(struct pipeline *p, enum smtp_verb verb);
/* Appends a reply of the proxy's own (one or more CRLF-terminated lines). */
struct pending *pipeline_push_local(struct pipeline *p, const char *reply);
struct pending *pipeline_head(const struct pipeline *p);
void pipeline_pop(struct pipeline *p);
void pipeline_clear(struct pipeline *p);

#endif
