#ifndef SMTPTAP_CLIENT_H
#define SMTPTAP_CLIENT_H

/*
 * The client's direction (client.c): commands, SASL, DATA content, BDAT chunks.  Below
 * server.c, which hands it the turn after a reply; above relay.c.
 */

#include <stddef.h>

struct session;

/* Consumes what the client has sent, as far as the SMTP state allows (session.c). */
void relay_client(struct session *s);
/* The client is gone. */
void relay_client_gone(struct session *s);
/* The handshake with a client after its STARTTLS is done. */
void relay_client_secured(struct session *s);

/* Sends the proxy's own replies that have come to the head of the queue. */
void client_flush_local(struct session *s);
/* The server's reply to a RSET or EHLO sent while a message was being chunked. */
void client_chunking_reset(struct session *s, int code);
/* Queues a reply of the proxy's own in its pipelining turn, and sends what can go. */
void client_answer_locally(struct session *s, const char *reply);
/*
 * Records client input that will never be relayed (an unfinished last line, lines left
 * behind a 421) as it would have been: commands as they are, AUTH lines and SASL responses,
 * finished or not, redacted.
 */
void client_record_unrelayed(struct session *s, const unsigned char *p, size_t n);

#endif
