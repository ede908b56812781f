#ifndef SMTPTAP_RELAY_H
#define SMTPTAP_RELAY_H

/*
 * Internal to the relay (relay.c, client.c, server.c, upstream.c): the plumbing both
 * directions share.  Other modules use the entry points declared in session.h.
 */

#include <stddef.h>

#include "proxy/session.h"
#include "proxy/smtp.h"

struct evbuffer;
struct options;
struct pending;
struct session;
struct side;
struct tx;

/* One unit of input: a whole line (complete) or a piece of an over-long one. */
struct unit {
	size_t len;   /* octets, line end included */
	int complete; /* ends with LF */
	const unsigned char *data;
};

struct evbuffer *side_input(struct side *x);
int side_next_unit(struct side *x, size_t max, struct unit *u);
void side_forward(struct side *x, size_t len);
/* Relays the unit with the units before it, in one move by side_commit (message lines). */
void side_forward_later(struct side *x, size_t len);
/* Drops the unit with the units before it (a held or filtered message's original lines). */
void side_discard_later(struct side *x, size_t len);
/* Moves what side_forward_later relayed to the peer (or drops what side_discard_later
 * dropped): the input is then whole again. */
void side_commit(struct side *x);
int relay_no_server(const struct session *s);
void side_discard(struct side *x, size_t len);
void side_record(struct side *x, const struct unit *u);
void side_write(struct side *to, const void *p, size_t len, const char *kind);
void side_write_buffer(struct side *to, struct evbuffer *buf);
void relay_flush_local(struct session *s);
void relay_answer_locally(struct session *s, const char *reply);
struct pending *relay_expect(struct session *s, enum smtp_verb verb);
void relay_raw(struct side *x);
void relay_resume_client(struct session *s);
void relay_send_upstream(struct session *s, const char *line);
void relay_quiet_upstream(struct session *s, const char *line, enum smtp_verb verb);
void relay_message_start(struct session *s);
void relay_answer_pending(struct session *s, const char *reply);

/* client.c */
void client_hold_decide(struct session *s, struct tx *tx);
void client_starttls(struct session *s);
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
void upstream_setup_step(struct session *s);
/* Whether the upstream leg is set up (TLS, XCLIENT) before the client sees the greeting. */
int upstream_setup_wanted(const struct options *o);
/* --forward-client proxy-v1/v2: the PROXY header, first on the upstream connection; -1 when
 * the session was closed instead. */
int upstream_proxy_header(struct session *s);

/* proxyin.c: reads a balancer's PROXY header (--accept-proxy); the session goes on, or
 * closes, once it is whole. */
void proxyin_read(struct session *s);
/* proxyin.c: no whole header in time. */
void proxyin_timeout(struct session *s);
/* proxyin.c: the balancer closed before its header was whole. */
void proxyin_gone(struct session *s);

#endif
