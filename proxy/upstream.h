#ifndef SMTPTAP_UPSTREAM_H
#define SMTPTAP_UPSTREAM_H

/*
 * The upstream leg's set-up (upstream.c): EHLO, STARTTLS and XCLIENT before the greeting
 * goes to the client, or a PROXY header first.  Below session.c, above server.c.
 */

struct options;
struct session;

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
/* The handshake with the server is done: the greeting may go to the client. */
void relay_upstream_secured(struct session *s);

#endif
