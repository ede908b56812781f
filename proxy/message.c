/* Message content under header and body rules: logical headers, stuffing, holding. */
#include "proxy/message.h"

#include <fcntl.h>
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
#include "proxy/session.h"

struct message {
	int holding;
	int in_headers;
	enum message_verdict verdict;
	char reply[600];
	struct evbuffer *header; /* the logical header being gathered (physical lines, CRLF) */
	struct evbuffer *held;   /* held content, in memory */
	int held_fd;             /* held content beyond --hold-memory, or -1 */
	size_t held_file;        /* octets in held_fd */
	size_t size; /* the message's size as RFC 1870 counts it */
	size_t wire; /* octets held, dot-stuffing included */
};

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
	if (m->header != NULL)
		evbuffer_free(m->header);
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
	if ((m = calloc(1, sizeof(*m))) == NULL)
		return -1;
	m->holding = holding;
	m->in_headers = 1;
	m->held_fd = -1;
	m->header = evbuffer_new();
	m->held = holding ? evbuffer_new() : NULL;
	s->msg = m;
	if (m->header == NULL || (holding && m->held == NULL)) {
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

/* Where finished content goes: upstream now, or the hold. */
static void
message_out_counted(struct session *s, const void *p, size_t len, int counted)
{
	struct message *m = s->msg;

	if (!m->holding) {
		if (s->server.bev != NULL)
			evbuffer_add(bufferevent_get_output(s->server.bev), p, len);
		return;
	}
	if (m->verdict != MSG_ACCEPT)
		return; /* refused already: nothing more is kept */
	/* RFC 1870: the size counts CRLFs but not the dots of dot-stuffing. */
	if (counted)
		m->size += len;
	m->wire += len;
	if (s->server_size > 0 && m->size > s->server_size) {
		m->verdict = MSG_TOO_BIG;
		snprintf(m->reply, sizeof(m->reply), "552 5.3.4 Message size exceeds fixed limit");
		evbuffer_drain(m->held, evbuffer_get_length(m->held));
		return;
	}
	evbuffer_add(m->held, p, len);
	if (evbuffer_get_length(m->held) > s->px->opts->hold_memory)
		message_spill(s, m);
}

static void
message_out(struct session *s, const void *p, size_t len)
{
	message_out_counted(s, p, len, 1);
}

/* Writes text as lines, each stuffed and ended with CRLF (text's own breaks may be any). */
static void
message_out_lines(struct session *s, const unsigned char *text, size_t len)
{
	size_t off = 0, n, brk;
	const unsigned char *p;

	do {
		p = text + off;
		for (n = 0; off + n < len && p[n] != '\r' && p[n] != '\n'; n++)
			;
		if (n > 0 && p[0] == '.')
			message_out_counted(s, ".", 1, 0);
		message_out(s, p, n);
		message_out(s, "\r\n", 2);
		brk = off + n < len ? 1 : 0;
		if (brk && p[n] == '\r' && off + n + 1 < len && p[n + 1] == '\n')
			brk = 2;
		off += n + brk;
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
	snprintf(m->reply, sizeof(m->reply), "%s", s->outcome.reply);
	if (m->held != NULL)
		evbuffer_drain(m->held, evbuffer_get_length(m->held));
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
	size_t len = evbuffer_get_length(m->header);
	const unsigned char *h;

	if (len == 0)
		return;
	h = evbuffer_pullup(m->header, (ev_ssize_t)len);
	/* The logical line is given without its final line end. */
	while (len > 0 && (h[len - 1] == '\n' || h[len - 1] == '\r'))
		len--;
	if (h != NULL)
		message_filter(s, SCOPE_HEADER, h, len);
	evbuffer_drain(m->header, evbuffer_get_length(m->header));
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

void
message_line(struct session *s, const unsigned char *line, size_t len)
{
	struct message *m = s->msg;
	const unsigned char *text = line;
	size_t n = message_unstuff(&text, len);

	if (!m->in_headers) {
		message_filter(s, SCOPE_BODY, text, n);
		return;
	}
	if (n > 0 && (text[0] == ' ' || text[0] == '\t') && evbuffer_get_length(m->header) > 0) {
		evbuffer_add(m->header, text, n);
		evbuffer_add(m->header, "\r\n", 2);
		return;
	}
	message_flush_header(s);
	if (n == 0) {
		m->in_headers = 0;
		message_out(s, "\r\n", 2);
		return;
	}
	evbuffer_add(m->header, text, n);
	evbuffer_add(m->header, "\r\n", 2);
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
}

enum message_verdict
message_end(struct session *s, const char **reply)
{
	struct message *m = s->msg;

	message_flush_header(s);
	*reply = m->reply;
	return m->verdict;
}

int
message_send_held(struct session *s)
{
	struct message *m = s->msg;
	struct evbuffer *out;

	if (m == NULL || s->server.bev == NULL)
		return -1;
	out = bufferevent_get_output(s->server.bev);
	if (m->held_fd >= 0) {
		/* The file goes out by the kernel (sendfile) where it can. */
		if (evbuffer_add_file(out, m->held_fd, 0, (ev_off_t)m->held_file) != 0)
			return -1;
		m->held_fd = -1;
	}
	evbuffer_add_buffer(out, m->held);
	evbuffer_add(out, ".\r\n", 3);
	transcript_event(s->transcript, "held message sent upstream octets=%zu size=%zu", m->wire,
	                 m->size);
	message_free(s);
	return 0;
}
