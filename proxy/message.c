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

#include "logs/transcript.h"
#include "proxy/filter.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/relay.h"
#include "proxy/session.h"

/* Small enough for the whole struct to stay under 1 KiB: malloc's thread cache serves it. */
#define MESSAGE_STAGE 832

struct message {
	int holding;
	int in_headers;
	enum message_verdict verdict;
	const char *reply; /* a refusal: static, or a rule's (the session holds its rules) */
	unsigned char *header; /* the logical header being gathered (physical lines, CRLF) */
	size_t headerlen, headersize;
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

/* Moves held content beyond --hold-memory to an unlinked file in the log directory. */
static void
message_spill(struct session *s, struct message *m)
{
	if (m->held_fd < 0 && (m->held_fd = transcript_tmpfile()) < 0) {
		session_warn(s, "no temporary file for a held message: kept in memory");
		return;
	}
	while (evbuffer_get_length(m->held) > 0) {
		int n = evbuffer_write(m->held, m->held_fd);
		if (n <= 0) {
			session_warn(s, "temporary file for a held message failed: kept in memory");
			return;
		}
		m->held_file += (size_t)n;
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

	if (!m->holding)
		return 1;
	if (m->verdict != MSG_ACCEPT)
		return 0; /* refused already: nothing more is kept */
	/* RFC 1870: the size counts CRLFs but not the dots of dot-stuffing. */
	if (counted)
		m->size += len;
	m->wire += len;
	if (s->server_size > 0 && m->size > s->server_size) {
		m->verdict = MSG_TOO_BIG;
		m->reply = "552 5.3.4 Message size exceeds fixed limit";
		evbuffer_drain(m->held, evbuffer_get_length(m->held));
		m->staged = 0;
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
		else
			message_out_lines(s, line, len); /* cannot refuse what already went */
		return;
	}
	if (v == ACT_IGNORE)
		return;
	if (scope == SCOPE_HEADER && s->outcome.len == 0) {
		/* An empty line would end the header section early: the header goes instead. */
		session_warn(s, "a header rewritten to nothing was removed");
		return;
	}
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

/* Adds a physical line (un-stuffed, without its end) and CRLF to the header gathered. */
static void
message_add_header(struct session *s, const unsigned char *text, size_t n)
{
	struct message *m = s->msg;
	size_t size = m->headersize;
	unsigned char *h;

	if (m->headerlen + n + 2 > size) {
		while (size < m->headerlen + n + 2)
			size = size * 2 + 256;
		if ((h = realloc(m->header, size)) == NULL) {
			session_close(s, "error");
			return;
		}
		m->header = h;
		m->headersize = size;
	}
	memcpy(m->header + m->headerlen, text, n);
	memcpy(m->header + m->headerlen + n, "\r\n", 2);
	m->headerlen += n + 2;
}

/* Strips the line end and the stuffing dot: the line as the message holds it. */
static size_t
message_unstuff(const unsigned char **line, size_t len)
{
	while (len > 0 && ((*line)[len - 1] == '\n' || (*line)[len - 1] == '\r'))
		len--;
	if (len > 0 && (*line)[0] == '.') {
		(*line)++;
		len--;
	}
	return len;
}

/* Gathers a content line into the message: a header line, or a body line through the rules. */
static void
message_take(struct session *s, const unsigned char *line, size_t len)
{
	struct message *m = s->msg;
	const unsigned char *text = line;
	size_t n = message_unstuff(&text, len);

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

void
message_piece(struct session *s, const unsigned char *piece, size_t len, int first)
{
	struct message *m = s->msg;

	if (first) {
		message_flush_header(s);
		m->in_headers = 0;
		session_warn(s, "message line over --max-line: relayed in pieces, unfiltered");
	}
	message_out(s, piece, len);
	if (!m->holding)
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
