#ifndef SMTPTAP_CONN_H
#define SMTPTAP_CONN_H

/*
 * A session as the relay's modules see it (client.c, server.c, upstream.c, relay.c and what
 * they use): its state and the few things any of them may do to it.  Below them all: it
 * calls none of them.  What only the session's owner does (opening, connecting, the loop's
 * callbacks, freeing) is behind struct conn_ops, set by session.c; the modules above the
 * sessions (listeners, metrics, main) see session.h only.
 */

#include <netinet/in.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include "filters/rules.h"
#include "proxy/pipeline.h"
#include "proxy/side.h"
#include "smtp/proxyproto.h"

struct bufferevent;
struct event;
struct proxy;
struct session;
struct transcript;

/*
 * What the session's owner (session.c) does when a module asks: the modules below it name
 * the request, the owner carries it out (relayd's relay callbacks, libevent's own).
 */
struct conn_ops {
	/* Every way out: records the end, closes upstream now, the client once its output is
	 * sent. */
	void (*close)(struct session *s, const char *reason);
	/* Layers TLS on a side (bufferevent_openssl filter) and sets its callbacks again. */
	int (*start_tls)(struct session *s, struct side *x);
	/* The client closed its write half with commands still unanswered. */
	void (*client_eof)(struct session *s);
};

/* Why reading from a side is paused (a bitmask: reading resumes when it is empty). */
#define PAUSE_PEER_FULL 0x01 /* the peer's output is above the high mark */
#define PAUSE_WAIT 0x02      /* the client waits for a reply before it may go on */
#define PAUSE_EOF 0x04       /* the side has closed its write half */
#define PAUSE_OWN_FULL 0x08  /* the client's own output (replies) is above the high mark */

/* Past this many commands awaiting a reply, the client stops being read (our own replies
 * queue behind a slow server's without bound otherwise). */
#define PIPELINE_HIGH 1024

/*
 * A session id: 64 random bits in hex.  It names the session's records in a day's journal
 * (grep ID): 32 bits, as at first, made two sessions share an id about once in 100 runs of
 * 10,000 sessions, and some hundred times a day at a million sessions a day.
 */
#define SESSION_ID_DIGITS 16

/* What the transcript and the event say of a leg's TLS. */
struct tls_info {
	int up;
	char version[16];
	char cipher[64];
	char sni[256];
	char subject[256];
	char verify[128];
};

/*
 * Where a session is in its life; changed only through session_enter_phase().  Only while
 * PHASE_RELAYING is the client read as SMTP, in its mode (enum client_mode).
 */
enum session_phase {
	PHASE_CONNECTING,        /* connecting upstream */
	PHASE_GREETING,          /* waiting for the server's greeting */
	PHASE_RELAYING,          /* both directions relayed, the client read in its mode */
	PHASE_RAW,               /* after STARTTLS without a certificate: bytes both ways */
	PHASE_UPSTREAM_EHLO,     /* our own EHLO to the server, before its STARTTLS */
	PHASE_UPSTREAM_STARTTLS, /* our own STARTTLS to the server */
	PHASE_UPSTREAM_TLS,      /* handshake with the server */
	PHASE_UPSTREAM_XCLIENT,  /* our own XCLIENT, naming the client to the server */
	PHASE_PROXY_HEADER,      /* reading a balancer's PROXY header (--accept-proxy) */
	PHASE_CLIENT_TLS,        /* handshake with the client after its STARTTLS */
	PHASE_CLOSING,           /* session_close() was called: the last phase, never left */
};

/* How the client's input is read while relaying; changed only through client_enter_mode(). */
enum client_mode {
	MODE_COMMAND, /* client lines are commands */
	MODE_AWAIT,   /* the client waits for the reply to DATA, AUTH, STARTTLS or SASL */
	MODE_SASL,    /* the next client line answers a 334 */
	MODE_MESSAGE, /* DATA content, until <CRLF>.<CRLF> */
	MODE_CHUNK,   /* BDAT content: exactly chunk_left octets */
	MODE_SKIP,    /* discarding the rest of an over-long command line */
};

/*
 * Where the server's reply being read goes; changed only through server_enter_mode().  The
 * mode is chosen on a reply's first line and ends (SRV_NONE) with its last.
 */
enum server_mode {
	SRV_NONE,   /* no reply open: the next line begins one */
	SRV_RELAY,  /* on to the client as it comes */
	SRV_HOLD,   /* held whole (held_reply), edited, then relayed */
	SRV_QUIET,  /* answers our own command (RSET, a held message's DATA): never relayed */
	SRV_STREAM, /* a reply over the hold limit edited line by line, one line kept back (held) */
	SRV_SETUP,  /* during the upstream set-up: held (setup_reply) for upstream.c */
	SRV_421,    /* a 421, held (reply_copy) to answer every pending command */
};

struct rcpt {
	char *to;
	int code;
	char *text; /* the reply's text (its last line), escaped */
};

/* One mail transaction, from MAIL to the reply to its end of data (OpenSMTPD's smtp_tx). */
struct tx {
	TAILQ_ENTRY(tx) entry;
	char *mail_from;   /* the address alone, <...> */
	char *mail_params; /* its ESMTP parameters, or NULL */
	int mail_code;
	char *mail_text;
	struct rcpt *rcpts;
	size_t nrcpt;
	uint64_t size;
	int data; /* content was sent (DATA's 354, a BDAT): the size means something */
	int code;
	char *text;
};

/*
 * A session's parts, each changed by the module named (the others may read them).
 */

/* server.c: the server's reply being read. */
struct reply_reader {
	enum server_mode mode; /* where it goes (a 421 in SRV_RELAY was too long to hold) */
	int code;
	int last_line;         /* the current line ends the reply */
	int chunking;          /* an extension line of the reply is CHUNKING */
	struct evbuffer *copy; /* a 421's lines, to answer every pending command */
	struct evbuffer *held; /* a reply held whole, to edit it (reply_edit.c) */
	size_t stream_lines;   /* SRV_STREAM: lines of the reply so far (reply_edit.c) */
	int stream_drop;       /* SRV_STREAM: the line too long to edit being read is removed */
	char *text;            /* text of the reply's last line, escaped (server_reply_text) */
	size_t textcap;        /* the room text has: reused from reply to reply */
};

/* client.c: AUTH (never the secret itself). */
struct auth_state {
	char mech[32];
	char user[256];
	int step;
	int code;
	char *text; /* the reply's text */
	int used;
	int open; /* an AUTH was sent and no command since: base64 lines may be SASL data */
};

/* client.c: DATA content, up to <CRLF>.<CRLF>. */
struct content_reader {
	int line_start; /* the previous content line ended in CRLF */
	int in_headers;
	int bare_seen; /* a bare line end was normalized in this message */
	uint64_t hidden_lines;
	uint64_t hidden_octets;
};

/* client.c: a BDAT chunk. */
struct chunk_reader {
	uint64_t left;
	int discard;  /* the chunk of a refused BDAT: read and thrown away */
	int last;     /* the chunk is the message's last (BDAT ... LAST) */
	int in_piece; /* content recorded so far ends mid-line: more of it is "C+" */
	/*
	 * --max-message over BDAT: the octets of every chunk sent upstream in the session, and
	 * that count where the message being chunked began.  Not the transaction's (tx) count: a
	 * server keeps the chunks through a MAIL it refuses (Postfix: "nested MAIL command"), or
	 * a RSET it refuses ("RSET x").
	 */
	uint64_t sent;
	uint64_t message_start;
};

/*
 * upstream.c: securing the upstream leg (TLS, XCLIENT) before the client sees the greeting,
 * a phase of the session across several replies (each read in SRV_SETUP).
 */
struct upstream_setup {
	int active;
	int reply_done;            /* a reply of the set-up is whole: upstream_relay() takes it */
	struct evbuffer *reply;    /* the server's reply during the set-up */
	struct evbuffer *greeting; /* the greeting, held until the upstream leg is secured */
};

struct session {
	TAILQ_ENTRY(session) entry;
	const struct conn_ops *ops; /* the owner's (session.c) */
	struct proxy *px;
	char id[20]; /* SESSION_ID_DIGITS hex digits */
	struct side client;
	struct side server;
	enum session_phase phase;
	enum session_phase closed_in; /* the phase session_close() ended */
	enum client_mode mode;        /* the client's, while PHASE_RELAYING */
	enum client_mode skip_return; /* mode to go back to after MODE_SKIP */
	struct pipeline pipeline;
	struct event *timer; /* connect timeout, idle timeout or close linger, by state */
	/* Goes on with the client's input from the loop (session_schedule_client). */
	struct event *resume;
	struct timeval start;
	time_t last_activity;
	struct transcript *transcript;
	char transcript_path[96];
	char client_addr[64];
	char listener_addr[64];
	char upstream_addr[64];
	char upstream_local[64]; /* our end of the upstream connection */
	/* ... as an address, once connected (the loop check at accept looks at it) */
	struct sockaddr_storage upstream_local_sa;
	socklen_t upstream_local_len;
	char *helo;

	/* The client's identity: its and the listener's addresses (from the balancer's PROXY
	 * header under --accept-proxy), and how it was told to the server. */
	struct proxyproto_addrs peer;
	char via[64];           /* the balancer's address, when a PROXY header named the client */
	int proxy_local;        /* a v2 LOCAL header: the balancer's own session (health check) */
	int proxy_version;      /* the PROXY header's version (1 or 2), 0 without one */
	int xclient_attrs;      /* what the server's EHLO offered for XCLIENT, -1: no XCLIENT */
	const char *forwarded;  /* "xclient", "proxy-v1", "proxy-v2", or NULL */
	int proxy_implicit_tls; /* TLS from the first byte after the PROXY header */
	/* --upstream original: where the client was going (REDIRECT's SO_ORIGINAL_DST, TPROXY's
	 * local address), the upstream of this session; original_len 0 otherwise. */
	union {
		struct sockaddr sa;
		struct sockaddr_in in4;
		struct sockaddr_in6 in6;
	} original;
	socklen_t original_len;
	char original_text[64];

	struct content_reader content; /* client.c's: message content */
	struct chunk_reader chunk;     /* client.c's: BDAT chunks */
	struct message *msg;           /* a message under header/body rules, or NULL */
	uint64_t server_size;          /* the server's SIZE limit, 0 when it set none */
	/* BDAT is a chunk only where the server offered CHUNKING in its reply to this session's
	 * EHLO (RFC 3030); elsewhere the server reads the octets as commands, and so do we. */
	int server_chunking;
	uint64_t skipped;

	struct reply_reader reply; /* server.c's: the reply being read */
	struct auth_state auth;    /* client.c's: AUTH, never the secret itself */
	unsigned caps_hidden;      /* extensions a capability rule removed from the EHLO reply */

	struct upstream_setup setup;   /* upstream.c's: securing the upstream leg first */
	struct tls_info *client_tls;   /* allocated once a handshake is done: idle sessions */
	struct tls_info *upstream_tls; /* stay small */
	char *client_tls_error;        /* why the client's handshake failed */
	int early_talker;
	int quit_answered;
	time_t client_gone_at;   /* when the client closed its write half (session_client_gone) */
	int server_shut_pending; /* shut the server's write half once its output is sent */
	time_t linger_until;     /* a closing session is freed by then at the latest */
	unsigned warnings;
	const char *close_reason;

	/* Rules: those in force as the session started (a reload doesn't change them). */
	struct ruleset *rules;
	struct rule_outcome outcome;
	unsigned *rule_hits;
	unsigned rule_failures; /* rules that could not be evaluated (logged once) */

	TAILQ_HEAD(, tx) txs;
	struct tx *tx;       /* the transaction commands now belong to, or NULL */
	struct tx *tx_spare; /* reused for transactions beyond what an event records */
	unsigned ntx;
	unsigned tx_unrecorded;
};

/* Every way out (struct conn_ops's close). */
void session_close(struct session *s, const char *reason);

/* Layers TLS on a side (struct conn_ops's start_tls); -1 when it can't. */
int session_start_tls(struct session *s, struct side *x);

/*
 * The client closed its write half with commands still unanswered: the server's write half
 * is shut too (it sees EOF), and the session ends when the server closes, when the last reply
 * is in, or after a short linger (struct conn_ops's client_eof).
 */
void session_client_eof(struct session *s);

/* Room for a reply of the proxy's own. */
#define SESSION_REPLY_MAX 512

/*
 * A reply of the proxy's own, "STATUS HOSTNAME TEXT<CRLF>" (status: "421 4.4.2", say), into
 * buf; a text too long is cut, the line still ended.
 */
void session_own_reply(const struct session *s, char *buf, size_t size, const char *status,
                       const char *text);

/* The proxy cannot go on: its reply (as session_own_reply) to the client, then close. */
void session_refuse(struct session *s, const char *status, const char *text, const char *reason);

/* Sends a reply of the proxy's own to the client now, recorded as "P:". */
void session_reply(struct session *s, const char *reply);

/*
 * Whether the client must not be read on: replies wait for it above the high mark, or too
 * many commands wait for theirs.  Pauses it (PAUSE_OWN_FULL) when so.
 */
int session_client_full(struct session *s);

/* Whether the client closed its write half: its side stays paused for EOF for good. */
int session_client_gone(const struct session *s);

/* Records a warning in the transcript and counts it. */
void session_warn(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * The client's input is processed from the loop, never from inside the server's callbacks
 * (tmux's event_once): a nested call could drain a buffer under its caller's view of a line.
 */
void session_schedule_client(struct session *s);

/* The one way to change each state, logged at debug level. */
void session_enter_phase(struct session *s, enum session_phase phase);
const char *session_phase_name(enum session_phase phase);
/* Whether the session relays and reads the client in mode. */
int client_in_mode(const struct session *s, enum client_mode mode);
void client_enter_mode(struct session *s, enum client_mode mode);
const char *client_mode_name(enum client_mode mode);
/* Where the reply being read goes from here. */
void server_enter_mode(struct session *s, enum server_mode mode);
const char *server_mode_name(enum server_mode mode);

/* Reading a side: paused for a reason (PAUSE_*), read again once no reason is left. */
void side_pause(struct side *x, int why);
void side_resume(struct side *x, int why);
void side_read_on(struct side *x);
void side_read_off(struct side *x);

#endif
