#ifndef SMTPTAP_RELAY_H
#define SMTPTAP_RELAY_H

/*
 * Internal to the relay (relay.c, client.c, server.c, upstream.c): the plumbing both
 * directions share.  Other modules use the entry points declared in session.h.
 */

#include <stddef.h>

#include "proxy/conn.h"
#include "proxy/side.h"
#include "smtp/smtp.h"

struct evbuffer;
struct options;
struct pending;
struct session;
struct side;
struct tx;

int relay_no_server(const struct session *s);
struct pending *relay_expect(struct session *s, enum smtp_verb verb);
void relay_raw(struct side *x);
void relay_resume_client(struct session *s);
void relay_send_upstream(struct session *s, const char *line);
void relay_quiet_upstream(struct session *s, const char *line, enum smtp_verb verb);
void relay_message_start(struct session *s);
void relay_answer_pending(struct session *s, const char *reply);

/* client.c */
/* Sends the proxy's own replies that have come to the head of the queue. */
void client_flush_local(struct session *s);
/* Queues a reply of the proxy's own in its pipelining turn, and sends what can go. */
void client_answer_locally(struct session *s, const char *reply);
/*
 * Records client input that will never be relayed (an unfinished last line, lines left
 * behind a 421) as it would have been: commands as they are, AUTH lines and SASL responses,
 * finished or not, redacted.
 */
void client_record_unrelayed(struct session *s, const unsigned char *p, size_t n);

/* server.c */
void server_reply_effect(struct session *s, const struct pending *p, int code);
/* Where the reply being read goes from here: the one way to change it, logged at debug. */
void server_enter_mode(struct session *s, enum server_mode mode);
const char *server_mode_name(enum server_mode mode);

/* upstream.c */
/*
 * The server's input, for the session's owner: its replies relayed, and those of the
 * upstream set-up (EHLO, STARTTLS, XCLIENT before the greeting) taken in turn.
 */
void upstream_relay(struct session *s);
/* Whether the upstream leg is set up (TLS, XCLIENT) before the client sees the greeting. */
int upstream_setup_wanted(const struct options *o);
/* --forward-client proxy-v1/v2: the PROXY header, first on the upstream connection; -1 when
 * the session was closed instead. */
int upstream_proxy_header(struct session *s);

/* The session's owner (session.c): consume what a side has sent, as far as the SMTP state
 * allows. */
void relay_client(struct session *s);
void relay_server(struct session *s);
/* The server is gone; answer what is pending. */
void relay_server_gone(struct session *s);
/* The client is gone. */
void relay_client_gone(struct session *s);
/* The handshake with the server is done: the greeting may go to the client. */
void relay_upstream_secured(struct session *s);
/* The handshake with a client after its STARTTLS is done. */
void relay_client_secured(struct session *s);

#endif
