/* Message content under header and body rules: logical headers, stuffing, holding. */
#include "proxy/message.h"

#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "logs/journal.h"
#include "logs/transcript.h"
#include "proxy/filter.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/conn.h"
#include "proxy/side.h"
#include "smtp/smtp.h"

/* Small enough for the whole struct to stay under 1 KiB: malloc's thread cache serves it. */
#define MESSAGE_STAGE 832

struct message {
	int holding;
	int in_headers;
	enum message_verdict verdict;
	const char *reply;     /* a refusal: static, or a rule's (the session holds its rules) */
	unsigned char *header; /* the logical header being gathered (physical lines, CRLF) */
	size_t headerlen, headersize;
	unsigned char *longline; /* a line over --max-line, gathered from its pieces */
	size_t longlen, longsize;
	struct evbuffer *held; /* held content, in memory */
	int held_fd;           /* held content beyond --hold-memory, or -1 */
	size_t held_file;      /* octets in held_fd */
	size_t size;           /* the message's size as RFC 1870 counts it */
	size_t wire;           /* octets held, dot-stuffing included */
	/* Finished content gathered here and moved on in bulk: upstream at the end of each
	 * line, or into the hold when full. */
	size_t staged;
	unsigned char stage[MESSAGE_STAGE];
};
_Static_assert(sizeof(struct message) <= 1024, "struct message outgrew malloc's thread cache");

void
message_learn_size(struct session *s, unsigned long long size)
{
	if (size > 0 && (s->server_size == 0 || size < s->server_size))
		s->server_size = size;
}

int
message_holding(const struct session *s)
{
	return s->msg != NULL && s->msg->holding;
}

void
message_free(struct session *s)
{
	struct message *m = s->msg;

	if (m == NULL)
		return;
	free(m->header);
	free(m->longline);
	if (m->held != NULL)
		evbuffer_free(m->held);
	if (m->held_fd >= 0)
		close(m->held_fd);
	free(m);
	s->msg = NULL;
}

int
message_begin(struct session *s, int holding)
{
	struct message *m;

	message_free(s);
	/* Not calloc: the stage needs no zeroing. */
	if ((m = malloc(sizeof(*m))) == NULL)
		return -1;
	memset(m, 0, offsetof(struct message, stage));
	m->reply = "";
	m->holding = holding;
	m->in_headers = 1;
	m->held_fd = -1;
	m->held = holding ? evbuffer_new() : NULL;
	s->msg = m;
	if (holding && m->held == NULL) {
		message_free(s);
		return -1;
	}
	return 0;
}

/*
 * Content the proxy will not take: too big, too long a line or header for the rules to
 * inspect, or a held message it could not write.  Nothing more of the message is kept or
 * sent; the end of data gets the reply (and, streamed, the session ends there, so the server
 * never sees an end of data for what it got).
 */
static void
message_untaken(struct session *s, const char *reply, const char *why)
{
	struct message *m = s->msg;

	if (m->verdict != MSG_ACCEPT)
		return;
	m->verdict = MSG_TOO_BIG;
	m->reply = reply;
	if (m->held != NULL)
		evbuffer_drain(m->held, evbuffer_get_length(m->held));
	if (m->held_fd >= 0) {
		/* The spool's space goes back at once, not at the end of data. */
		close(m->held_fd);
		m->held_fd = -1;
		m->held_file = 0;
	}
	m->staged = 0;
	m->headerlen = 0;
	m->longlen = 0;
	session_warn(s, "message refused at its end (%s): %s", why, reply);
}

int
message_spool_open(void)
{
	if (journal_dir_fd() < 0)
		return -1;
	return openat(journal_dir_fd(), ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
}

/*
 * Moves held content beyond --hold-memory to an unlinked file in the log directory.  When it
 * can't (no file, a full disk), the message is refused 451 4.3.0, as Postfix answers a queue
 * file write error: it never stays in memory beyond --hold-memory.
 */
static void
message_spill(struct session *s, struct message *m)
{
	if (m->held_fd < 0 && (m->held_fd = message_spool_open()) < 0) {
		message_untaken(s, "451 4.3.0 Error writing message file", "no temporary file");
		return;
	}
	while (evbuffer_get_length(m->held) > 0) {
		int n = evbuffer_write(m->held, m->held_fd);
		if (n <= 0) {
			message_untaken(s, "451 4.3.0 Error writing message file",
			                "temporary file write failed");
			return;
		}
		m->held_file += (size_t)n;
	}
}

/*
 * What a held message keeps in memory, counted as it arrives: the held content, and the
 * header or long line being gathered (bounded by --max-header).  Past --hold-memory, the held
 * content moves to the file.
 */
static void
message_pressure(struct session *s)
{
	struct message *m = s->msg;

	if (m->holding && m->verdict == MSG_ACCEPT &&
	    evbuffer_get_length(m->held) + m->staged + m->headerlen + m->longlen >
	        s->px->opts->hold_memory) {
		message_spill(s, m);
	}
}

/* Hands finished content on: upstream, or into the hold (a file past --hold-memory). */
static void
message_put(struct session *s, const void *p, size_t len)
{
	struct message *m = s->msg;

	if (!m->holding) {
		side_write(&s->server, p, len, NULL);
		return;
	}
	if (m->verdict != MSG_ACCEPT)
		return;
	evbuffer_add(m->held, p, len);
	if (evbuffer_get_length(m->held) > s->px->opts->hold_memory)
		message_spill(s, m);
}

/* Moves the staged content on. */
static void
message_flush(struct session *s)
{
	struct message *m = s->msg;
	size_t n = m->staged;

	if (n == 0)
		return;
	m->staged = 0;
	message_put(s, m->stage, n);
}

/* Stages finished content; what is too big for the stage goes on behind what was staged. */
static void
message_stage(struct session *s, const void *p, size_t len)
{
	struct message *m = s->msg;

	if (m->staged + len > sizeof(m->stage)) {
		message_flush(s);
		if (len > sizeof(m->stage)) {
			message_put(s, p, len);
			return;
		}
	}
	memcpy(m->stage + m->staged, p, len);
	m->staged += len;
}

/*
 * Counts len octets of finished content against the message (and the server's SIZE) when
 * it is held; whether they are to be kept.
 */
static int
message_count(struct session *s, size_t len, int counted)
{
	struct message *m = s->msg;
	size_t limit = s->px->opts->max_message;

	if (m->verdict != MSG_ACCEPT)
		return !m->holding && m->verdict != MSG_TOO_BIG; /* refused: nothing more is kept */
	/* RFC 1870: the size counts CRLFs but not the dots of dot-stuffing. */
	if (counted)
		m->size += len;
	m->wire += len;
	/* The server's SIZE from any EHLO reply of the session (the client's, or the proxy's
	 * own in the upstream set-up), whatever the client said; --max-message in any case. */
	if (s->server_size > 0 && s->server_size < limit)
		limit = (size_t)s->server_size;
	if (m->size > limit) {
		message_untaken(s, "552 5.3.4 Message size exceeds fixed limit",
		                "over the size limit");
		return 0;
	}
	return 1;
}

/* Where finished content goes: upstream now, or the hold. */
static void
message_out_counted(struct session *s, const void *p, size_t len, int counted)
{
	if (message_count(s, len, counted))
		message_stage(s, p, len);
}

static void
message_out(struct session *s, const void *p, size_t len)
{
	message_out_counted(s, p, len, 1);
}

/* Writes one line (no CR or LF in it) stuffed and ended with CRLF. */
static void
message_out_line(struct session *s, const unsigned char *p, size_t n)
{
	struct message *m = s->msg;
	size_t dot = n > 0 && p[0] == '.';

	if (dot && !message_count(s, 1, 0))
		return;
	if (!message_count(s, n + 2, 1))
		return;
	if (m->staged + dot + n + 2 > sizeof(m->stage)) {
		if (dot)
			message_stage(s, ".", 1);
		message_stage(s, p, n);
		message_stage(s, "\r\n", 2);
		return;
	}
	/* The common case: a line that fits goes to the stage in one piece. */
	if (dot)
		m->stage[m->staged] = '.';
	memcpy(m->stage + m->staged + dot, p, n);
	memcpy(m->stage + m->staged + dot + n, "\r\n", 2);
	m->staged += dot + n + 2;
}

/* Writes text as lines, each stuffed and ended with CRLF (text's own breaks may be any). */
static void
message_out_lines(struct session *s, const unsigned char *text, size_t len)
{
	size_t off = 0;
	struct smtp_line l;

	do {
		smtp_line_cut_any(text + off, len - off, &l);
		message_out_line(s, l.data, smtp_line_text(&l));
		off += l.len;
	} while (off < len);
}

/*
 * A header as the rules left it, written as one header field whatever the rewrite made of
 * its folding: an empty physical line would end the header section there (the rest of the
 * header going out as body, past the body rules), and a later line without leading white
 * space would start a field of its own.  Such lines are dropped, or folded with a space.
 */
static void
message_out_header(struct session *s, const unsigned char *text, size_t len)
{
	size_t off = 0, n;
	struct smtp_line l;
	int mended = 0;

	do {
		smtp_line_cut_any(text + off, len - off, &l);
		n = smtp_line_text(&l);
		if (n == 0) {
			mended = 1;
		} else if (off > 0 && l.data[0] != ' ' && l.data[0] != '\t') {
			/* Folded with a space: a line that starts with one needs no stuffing dot. */
			mended = 1;
			message_out(s, " ", 1);
			message_out(s, l.data, n);
			message_out(s, "\r\n", 2);
		} else {
			message_out_line(s, l.data, n);
		}
		off += l.len;
	} while (off < len);
	if (mended)
		session_warn(s, "a rewritten header kept as one field: empty lines dropped, "
		                "lines without leading white space folded");
}

/* A REJECT or DISCONNECT from a header or body rule: remembered for the end of data. */
static void
message_refuse(struct session *s, int verdict)
{
	struct message *m = s->msg;

	if (m->verdict != MSG_ACCEPT)
		return;
	m->verdict = verdict == ACT_DISCONNECT ? MSG_DISCONNECT : MSG_REJECT;
	m->reply = s->outcome.reply != NULL ? s->outcome.reply : RULES_REJECT_DEFAULT;
	if (m->held != NULL)
		evbuffer_drain(m->held, evbuffer_get_length(m->held));
	m->staged = 0;
}

/* Runs a finished logical line (header or body, un-stuffed) through the rules and out. */
static void
message_filter(struct session *s, enum rule_scope scope, const unsigned char *line, size_t len)
{
	size_t i;
	int v = filter_line(s, &scope, 1, line, len);

	if (v < 0)
		return;
	for (i = 0; i < s->outcome.nprepend; i++)
		message_out_lines(s, (const unsigned char *)s->outcome.prepend[i],
		                  strlen(s->outcome.prepend[i]));
	if (v == ACT_REJECT || v == ACT_DISCONNECT) {
		if (s->msg->holding)
			message_refuse(s, v);
		else /* part of it went already: the server must never see its end */
			message_untaken(
			    s, s->outcome.reply != NULL ? s->outcome.reply : RULES_REJECT_DEFAULT,
			    "refused while streamed");
		return;
	}
	if (v == ACT_IGNORE)
		return;
	if (scope == SCOPE_HEADER && s->outcome.len == 0) {
		/* An empty line would end the header section early: the header goes instead. */
		session_warn(s, "a header rewritten to nothing was removed");
		return;
	}
	if (scope == SCOPE_HEADER && s->outcome.rewritten)
		message_out_header(s, s->outcome.line, s->outcome.len);
	else
		message_out_lines(s, s->outcome.line, s->outcome.len);
}

/* The header gathered so far (its physical lines un-stuffed, breaks kept) goes through. */
static void
message_flush_header(struct session *s)
{
	struct message *m = s->msg;
	size_t len = m->headerlen;

	if (len == 0)
		return;
	/* The logical line is given without its final line end. */
	while (len > 0 && (m->header[len - 1] == '\n' || m->header[len - 1] == '\r'))
		len--;
	message_filter(s, SCOPE_HEADER, m->header, len);
	m->headerlen = 0;
}

/* Appends to a growing buffer; -1 (the session closed) when memory runs out. */
static int
message_grow(struct session *s, unsigned char **buf, size_t *len, size_t *size,
             const unsigned char *p, size_t n)
{
	size_t want = *size;
	unsigned char *b;

	if (*len + n > want) {
		while (want < *len + n)
			want = want * 2 + 256;
		if ((b = realloc(*buf, want)) == NULL) {
			session_close(s, "error");
			return -1;
		}
		*buf = b;
		*size = want;
	}
	memcpy(*buf + *len, p, n);
	*len += n;
	return 0;
}

/*
 * Adds a physical line (un-stuffed, without its end) and CRLF to the header gathered.  A
 * logical header over --max-header (Postfix's header_size_limit) is not cut, as Postfix
 * cuts it: what is cut off would pass uninspected, so the message is refused.
 */
static void
message_add_header(struct session *s, const unsigned char *text, size_t n)
{
	struct message *m = s->msg;

	if (m->headerlen + n + 2 > s->px->opts->max_header) {
		message_untaken(s, "552 5.3.4 Message header too long", "header over --max-header");
		return;
	}
	if (message_grow(s, &m->header, &m->headerlen, &m->headersize, text, n) != 0 ||
	    message_grow(s, &m->header, &m->headerlen, &m->headersize,
	                 (const unsigned char *)"\r\n", 2) != 0)
		return;
	message_pressure(s);
}

/* Gathers a content line into the message: a header line, or a body line through the rules. */
static void
message_take(struct session *s, const unsigned char *line, size_t len)
{
	struct message *m = s->msg;
	const unsigned char *text = line;
	size_t n = smtp_content_unstuff(&text, len);

	if (m->verdict == MSG_TOO_BIG)
		return; /* nothing more is inspected or kept */
	if (!m->in_headers) {
		message_filter(s, SCOPE_BODY, text, n);
		return;
	}
	if (n > 0 && (text[0] == ' ' || text[0] == '\t') && m->headerlen > 0) {
		message_add_header(s, text, n);
		return;
	}
	message_flush_header(s);
	if (n == 0) {
		m->in_headers = 0;
		message_out(s, "\r\n", 2);
		return;
	}
	message_add_header(s, text, n);
}

void
message_line(struct session *s, const unsigned char *line, size_t len)
{
	message_take(s, line, len);
	/* Streamed content leaves with each line, as if written directly. */
	if (s->msg != NULL && !s->msg->holding)
		message_flush(s);
}

/*
 * A line over --max-line arrives in pieces: they are gathered (up to --max-header) and the
 * whole line goes through the rules as any other, so a header keeps its place and a word
 * split between pieces is still seen.  A longer line can't be inspected: the message is
 * refused, never relayed unfiltered.
 */
void
message_piece(struct session *s, const unsigned char *piece, size_t len, int first, int last)
{
	struct message *m = s->msg;
	size_t cap = s->px->opts->max_header;

	if (first)
		m->longlen = 0;
	if (m->verdict == MSG_TOO_BIG)
		return;
	/* The line end is not part of the length a header's limit counts. */
	if (m->longlen + len > cap + 2) {
		message_untaken(s, "552 5.3.4 Message line too long to inspect",
		                "line over --max-header");
		return;
	}
	if (message_grow(s, &m->longline, &m->longlen, &m->longsize, piece, len) != 0)
		return;
	message_pressure(s);
	if (!last)
		return;
	len = m->longlen;
	m->longlen = 0;
	message_take(s, m->longline, len);
	if (s->msg != NULL && !s->msg->holding)
		message_flush(s);
}

enum message_verdict
message_end(struct session *s, const char **reply)
{
	struct message *m = s->msg;

	message_flush_header(s);
	message_flush(s);
	*reply = m->reply;
	return m->verdict;
}

/*
 * The held file joins the server's output mapped, not as a sendfile segment: the relay writes
 * plain sockets itself from the output's memory (session.c's side_send).  The segment owns
 * the descriptor from here on.
 */
static int
message_add_held_file(struct evbuffer *out, struct message *m)
{
	struct evbuffer_file_segment *seg;
	int rc;

	seg = evbuffer_file_segment_new(m->held_fd, 0, (ev_off_t)m->held_file,
	                                EVBUF_FS_CLOSE_ON_FREE | EVBUF_FS_DISABLE_SENDFILE);
	if (seg == NULL)
		return -1;
	m->held_fd = -1;
	rc = evbuffer_add_file_segment(out, seg, 0, (ev_off_t)m->held_file);
	evbuffer_file_segment_free(seg);
	return rc;
}

int
message_send_held(struct session *s)
{
	struct message *m = s->msg;
	struct evbuffer *out;

	if (m == NULL || s->server.bev == NULL || (out = evbuffer_new()) == NULL)
		return -1;
	message_flush(s);
	if (m->held_fd >= 0 && message_add_held_file(out, m) != 0) {
		evbuffer_free(out);
		return -1;
	}
	evbuffer_add_buffer(out, m->held);
	evbuffer_add(out, ".\r\n", 3);
	side_write_buffer(&s->server, out);
	evbuffer_free(out);
	transcript_event(s->transcript, "held message sent upstream octets=%zu size=%zu", m->wire,
	                 m->size);
	message_free(s);
	return 0;
}
