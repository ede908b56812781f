#ifndef SMTPTAP_RELAY_H
#define SMTPTAP_RELAY_H

/*
 * The plumbing both directions share, below client.c, server.c and upstream.c: the queue of
 * commands awaiting a reply, our own lines to the server, raw relaying after STARTTLS.
 */

#include "proxy/conn.h"
#include "smtp/smtp.h"

struct pending;
struct session;
struct side;

int relay_no_server(const struct session *s);
struct pending *relay_expect(struct session *s, enum smtp_verb verb);
void relay_raw(struct side *x);
/* The waiting client may go on: what it already sent is processed from the loop. */
void relay_resume_client(struct session *s);
/* Sends a line of the proxy's own to the server, recorded as "U:". */
void relay_send_upstream(struct session *s, const char *line);
/* Our own command to the server, whose reply the client never sees. */
void relay_quiet_upstream(struct session *s, const char *line, enum smtp_verb verb);
/* DATA was answered 354: message content follows. */
void relay_message_start(struct session *s);
/* The server is going: every command the client still waits on gets a reply. */
void relay_answer_pending(struct session *s, const char *reply);

#endif
