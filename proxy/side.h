#ifndef SMTPTAP_SIDE_H
#define SMTPTAP_SIDE_H

/*
 * One direction of a session and the one write point: octets cut from a side's input into
 * lines (capped before they are read), moved unchanged to its peer or dropped, recorded, and
 * what the proxy says itself put on a side's output.  Below the session and the trackers:
 * a side knows its peer and its transcript, nothing of SMTP's dialogue.
 */

#include <stddef.h>
#include <stdint.h>

struct bufferevent;
struct event;
struct evbuffer;
struct session;
struct transcript;

/* Past this much output waiting for a peer, the other side stops being read. */
#define SIDE_HIGH_MARK (256 * 1024)

enum side_dir { SIDE_CLIENT, SIDE_SERVER };

/* One direction of a session (relayd's ctl_relay_event). */
struct side {
	struct session *s; /* the session, for the trackers above; side.c never looks in */
	struct side *peer; /* where what this side sends goes */
	struct transcript *transcript; /* where it is recorded, NULL before it is open */
	struct bufferevent *bev;
	struct evbuffer *in;  /* what the side sent, and what goes to it: bev's buffers, kept */
	struct evbuffer *out; /* (each getter is a call into libevent), or the plain ones */
	/*
	 * A plain socket's own buffers (session.c): a buffer event calls back into itself at
	 * every change of its output, some 2,600 instructions a session for nothing while
	 * smtptap writes the socket itself.  out is bev's output only while bev writes what
	 * the kernel did not take.
	 */
	struct evbuffer *plain_in;
	struct evbuffer *plain_out;
	enum side_dir dir;
	int paused;
	int in_piece;        /* the last record was part of a line longer than --max-line */
	int in_piece_before; /* in_piece before the current unit was recorded */
	size_t scanned;      /* input octets already searched for a line end */
	size_t relayed;      /* input octets at the head dealt with, not yet moved (side_commit) */
	int relayed_drop;    /* ... and to be dropped, not moved */
	uint64_t octets;     /* received from this side */
	uint64_t raw_octets; /* of those, after STARTTLS (relayed unparsed) */
	int tls;             /* TLS is up on this leg */
	int direct;          /* a plain connected socket: its output is written at once */
	struct event *rd;    /* reads a plain socket (session.c), or NULL: the buffer event does */
};

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
void side_discard(struct side *x, size_t len);
void side_record(struct side *x, const struct unit *u);
void side_write(struct side *to, const void *p, size_t len, const char *kind);
void side_write_buffer(struct side *to, struct evbuffer *buf);

#endif
