/*
 * libFuzzer target: the server reply parser (smtp_parse_reply) over multi-line input split on
 * LF, as the relay reads it, and the EHLO reply editor (ehlo_edit, ehlo_offers, ehlo_size) on
 * each reply so gathered, ehlo_line_emit on each line.  When every line of a reply is well formed, the edited reply must be too:
 * "NNN-" on every line but the last, "NNN " on the last, and no removed keyword left.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "smtp/ehlo.h"
#include "smtp/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const removed[] = {"XCLIENT", "XFORWARD", "STARTTLS"};

static void
check_reply_line(const unsigned char *line, size_t len, struct smtp_reply_line *r, int *ok)
{
	size_t n = smtp_line_len(line, len);

	if (smtp_parse_reply(line, n, r) != 0) {
		if (r->code != 0 || r->last != 1)
			abort();
		*ok = 0;
		return;
	}
	if (r->code < 100 || r->code > 599 || (r->last != 0 && r->last != 1))
		abort();
	if (r->text < line || r->text + r->textlen > line + n)
		abort();
}

/* The edited reply of a well-formed one is well formed, and the removed keywords are gone. */
static void
check_edited(struct evbuffer *out, int code, size_t nremoved, size_t want_lines)
{
	size_t len = evbuffer_get_length(out), off = 0, n, i;
	unsigned char *p = malloc(len ? len : 1);
	const unsigned char *lf;
	struct smtp_reply_line r;
	size_t nlines = 0;

	if (p == NULL)
		return;
	evbuffer_copyout(out, p, len);
	if (len == 0)
		abort(); /* a reply must never be left with no line */
	while (off < len) {
		lf = memchr(p + off, '\n', len - off);
		if (lf == NULL)
			abort(); /* every line of a complete reply ends */
		n = (size_t)(lf - (p + off)) + 1;
		if (smtp_parse_reply(p + off, smtp_line_len(p + off, n), &r) != 0 || r.code != code)
			abort();
		if (r.last != (off + n == len))
			abort(); /* "NNN " exactly on the last line */
		for (i = 0; off > 0 && i < nremoved; i++)
			if (r.textlen >= strlen(removed[i]) &&
			    strncasecmp((const char *)r.text, removed[i], strlen(removed[i])) == 0 &&
			    (r.textlen == strlen(removed[i]) || r.text[strlen(removed[i])] == ' '))
				abort();
		off += n;
		nlines++;
	}
	if (nlines != want_lines)
		abort(); /* every line not removed is kept */
	free(p);
}

/* Whether a well-formed line (not the first) names keyword k, as an extension. */
static int
names(const unsigned char *line, size_t len, const char *k)
{
	size_t n = 0, klen = strlen(k);

	while (4 + n < len && line[4 + n] != ' ' && line[4 + n] != '\r' && line[4 + n] != '\n')
		n++;
	return len >= 4 && n == klen && strncasecmp((const char *)line + 4, k, klen) == 0;
}

/* How many lines the edited reply must have: all, less the removed, plus one added. */
static size_t
expected_lines(const unsigned char *reply, size_t len, const struct ehlo_policy *pol)
{
	size_t off = 0, n, count = 0;
	const unsigned char *lf;
	int i, gone, offered = 0;

	while (off < len) {
		lf = memchr(reply + off, '\n', len - off);
		n = lf != NULL ? (size_t)(lf - (reply + off)) + 1 : len - off;
		gone = 0;
		for (i = 0; off > 0 && i < pol->nremove; i++)
			gone |= names(reply + off, n, pol->remove[i]);
		if (off > 0 && pol->add != NULL && names(reply + off, n, pol->add))
			offered = 1;
		count += !gone;
		off += n;
	}
	return count + (pol->add != NULL && !offered);
}

/* One line as the relay streams a long EHLO reply: its separator set, nothing read past it. */
static void
check_line_emit(const unsigned char *line, size_t len)
{
	struct evbuffer *out = evbuffer_new();
	int last;

	for (last = 0; out != NULL && last < 2; last++) {
		ehlo_line_emit(out, line, len, last);
		evbuffer_drain(out, evbuffer_get_length(out));
	}
	if (out != NULL)
		evbuffer_free(out);
}

/* A whole reply, as the relay holds an EHLO reply: edited as the relay would. */
static void
check_reply(const unsigned char *reply, size_t len, int wellformed, int code)
{
	struct ehlo_policy pol = {removed, 3, NULL};
	struct evbuffer *out = evbuffer_new(), *notes = evbuffer_new();
	unsigned char *copy = malloc(len);

	if (out != NULL && notes != NULL && copy != NULL) {
		memcpy(copy, reply, len);
		(void)ehlo_offers(copy, len, "STARTTLS");
		(void)ehlo_size(copy, len);
		(void)ehlo_edit(copy, len, &pol, out, notes);
		if (wellformed)
			check_edited(out, code, 3, expected_lines(copy, len, &pol));
		evbuffer_drain(out, evbuffer_get_length(out));
		pol.nremove = 2;
		pol.add = "STARTTLS";
		(void)ehlo_edit(copy, len, &pol, out, NULL);
		if (wellformed)
			check_edited(out, code, 2, expected_lines(copy, len, &pol));
	}
	free(copy);
	if (out != NULL)
		evbuffer_free(out);
	if (notes != NULL)
		evbuffer_free(notes);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const unsigned char *lf;
	size_t off = 0, len, start = 0;
	struct smtp_reply_line r;
	unsigned char *copy;
	int open = 0, ok = 1, code = 0;

	while (off < size) {
		lf = memchr(data + off, '\n', size - off);
		len = lf != NULL ? (size_t)(lf - (data + off)) + 1 : size - off;
		if ((copy = malloc(len)) == NULL)
			return 0;
		memcpy(copy, data + off, len);
		if (!open) {
			start = off;
			ok = 1;
		}
		check_reply_line(copy, len, &r, &ok);
		check_line_emit(copy, len);
		if (!open)
			code = r.code;
		else if (r.code != code)
			ok = 0;
		free(copy);
		off += len;
		open = 1;
		if (r.last && lf != NULL) {
			check_reply(data + start, off - start, ok, code);
			open = 0;
		}
	}
	return 0;
}
