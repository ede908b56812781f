#ifndef SMTPTAP_SERVER_H
#define SMTPTAP_SERVER_H

/*
 * The server's direction (server.c): replies matched to pending commands, held and edited,
 * a 421 answering everything pending.  Below upstream.c, above client.c.
 */

struct pending;
struct session;

/* Consumes what the server has sent (upstream.c, which takes the set-up's replies). */
void relay_server(struct session *s);
/* The server is gone; answer what is pending. */
void relay_server_gone(struct session *s);
/* What a reply to a pending command does to the session (the greeting's, during set-up). */
void server_reply_effect(struct session *s, const struct pending *p, int code);

#endif
