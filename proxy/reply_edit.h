#ifndef SMTPTAP_REPLY_EDIT_H
#define SMTPTAP_REPLY_EDIT_H

#include "smtp/smtp.h"

struct evbuffer;
struct session;
struct unit;

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

/*
 * A reply over the hold limit (an EHLO reply, or one the rules edit): edited line by line
 * from here on, one line kept back in reply.held so that its separator is set once the next
 * is known; a line too long to edit goes as it came, or (a rule would see it, an extension the
 * proxy removes) not at all.  was holds the reply so far (drained).  Each further unit (a
 * line, or a piece of one longer than --max-line; cont: a later piece) goes to stream_unit,
 * last when the reply ends with its line: 1 when the unit goes to the client as it came, 0
 * when it was taken.  The client always gets a last line.
 */
void reply_edit_stream_begin(struct session *s, struct evbuffer *was);
int reply_edit_stream_unit(struct session *s, const struct unit *u, int cont, int last);

/*
 * The name of the extension a command needs when a capability rule removed it from the last
 * EHLO reply (STARTTLS, AUTH, BDAT's CHUNKING), or NULL: such a command is the proxy's to
 * refuse, never the server's to take.
 */
const char *reply_edit_hidden(const struct session *s, enum smtp_verb verb);

/* Whether replies must be held whole because rules may edit them. */
int reply_edit_wanted(const struct session *s);

#endif
