#ifndef SMTPTAP_REPLY_EDIT_H
#define SMTPTAP_REPLY_EDIT_H

#include "proxy/smtp.h"

struct evbuffer;
struct session;

/*
 * Sends a server reply that was held whole to the client, edited: reply, banner and
 * capability rules line by line, the separators fixed after removals, and for an EHLO reply
 * the extensions the proxy handles itself (XCLIENT, XFORWARD, STARTTLS, CHUNKING).
 * answers is what the reply answers (VERB_GREETING, VERB_EHLO, ...).  Drains held.
 */
void reply_edit_send(struct session *s, struct evbuffer *held, enum smtp_verb answers, int code);

/* Applies the reply rules to a held reply where it is (a 421, copied to every pending
 * command): it stays in held, edited. */
void reply_edit_in_place(struct session *s, struct evbuffer *held, enum smtp_verb answers,
                         int code);

/* An EHLO reply over the hold limit: edited line by line from here on (one line kept back
 * in held_reply).  stream_line takes each further complete line; last ends the reply. */
void reply_edit_stream_begin(struct session *s);
void reply_edit_stream_line(struct session *s, const unsigned char *line, size_t len, int last,
                            struct evbuffer *kept);
/* The line kept back (all of kept) goes to the client with the separator its place needs. */
void reply_edit_emit_kept(struct session *s, struct evbuffer *kept, int last);

/*
 * The name of the extension a command needs when a capability rule removed it from the last
 * EHLO reply (STARTTLS, AUTH, BDAT's CHUNKING), or NULL: such a command is the proxy's to
 * refuse, never the server's to take.
 */
const char *reply_edit_hidden(const struct session *s, enum smtp_verb verb);

/* Whether replies must be held whole because rules may edit them. */
int reply_edit_wanted(const struct session *s);

#endif
