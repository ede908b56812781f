/* EHLO replies, held whole so that extensions can be removed or added safely. */
#include "proxy/ehlo.h"

#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

struct ehlo_line {
	const unsigned char *p;
	size_t len; /* with its line end */
};

#define EHLO_MAX_LINES 256

/* The keyword of an extension line "250-SIZE 100": its text up to a space. */
static int
ehlo_keyword_is(const struct ehlo_line *l, const char *keyword)
{
	size_t klen = strlen(keyword), n = 0;

	if (l->len < 4)
		return 0;
	while (4 + n < l->len && l->p[4 + n] != ' ' && l->p[4 + n] != '\r' && l->p[4 + n] != '\n')
		n++;
	return n == klen && strncasecmp((const char *)l->p + 4, keyword, klen) == 0;
}

static size_t
ehlo_split(const unsigned char *reply, size_t len, struct ehlo_line *lines, size_t max)
{
	size_t n = 0, off = 0;
	const unsigned char *lf;

	while (off < len && n < max) {
		lf = memchr(reply + off, '\n', len - off);
		lines[n].p = reply + off;
		lines[n].len = lf != NULL ? (size_t)(lf - (reply + off)) + 1 : len - off;
		off += lines[n].len;
		n++;
	}
	return n;
}

int
ehlo_offers(const unsigned char *reply, size_t len, const char *keyword)
{
	struct ehlo_line lines[EHLO_MAX_LINES];
	size_t i, n = ehlo_split(reply, len, lines, EHLO_MAX_LINES);

	for (i = 1; i < n; i++)
		if (ehlo_keyword_is(&lines[i], keyword))
			return 1;
	return 0;
}

static int
ehlo_removed(const struct ehlo_line *l, const struct ehlo_policy *pol)
{
	int i;

	for (i = 0; i < pol->nremove; i++)
		if (ehlo_keyword_is(l, pol->remove[i]))
			return 1;
	return 0;
}

/* Writes a line with the separator its new place needs. */
static void
ehlo_emit(struct evbuffer *out, const unsigned char *p, size_t len, int last)
{
	if (len < 3) {
		evbuffer_add(out, p, len); /* not a reply line: as it came */
		return;
	}
	evbuffer_add(out, p, 3);
	evbuffer_add(out, last ? " " : "-", 1);
	if (len > 4)
		evbuffer_add(out, p + 4, len - 4);
	else
		evbuffer_add(out, "\r\n", 2);
}

int
ehlo_edit(const unsigned char *reply, size_t len, const struct ehlo_policy *pol,
          struct evbuffer *out, struct evbuffer *notes)
{
	struct ehlo_line lines[EHLO_MAX_LINES];
	size_t i, n = ehlo_split(reply, len, lines, EHLO_MAX_LINES), kept = 0, lastkept = 0;
	int keep[EHLO_MAX_LINES], changes = 0, add;

	if (n == 0 || len < 3) {
		evbuffer_add(out, reply, len);
		return 0;
	}
	for (i = 0; i < n; i++) {
		keep[i] = i == 0 || !ehlo_removed(&lines[i], pol);
		if (!keep[i]) {
			changes++;
			if (notes != NULL) {
				evbuffer_add(notes, "removed ", 8);
				evbuffer_add(notes, lines[i].p + 4,
				             lines[i].len > 4 ? lines[i].len - 4 : 0);
			}
		}
		if (keep[i]) {
			kept++;
			lastkept = i;
		}
	}
	add = pol->add != NULL && lines[0].len >= 3 && !ehlo_offers(reply, len, pol->add);
	for (i = 0; i < n; i++)
		if (keep[i])
			ehlo_emit(out, lines[i].p, lines[i].len, !add && i == lastkept);
	if (add) {
		evbuffer_add(out, lines[0].p, 3);
		evbuffer_add_printf(out, " %s\r\n", pol->add);
		if (notes != NULL)
			evbuffer_add_printf(notes, "added %s\r\n", pol->add);
		changes++;
	}
	return changes;
}

unsigned long long
ehlo_size(const unsigned char *reply, size_t len)
{
	struct ehlo_line lines[EHLO_MAX_LINES];
	size_t i, j, n = ehlo_split(reply, len, lines, EHLO_MAX_LINES);
	unsigned long long v = 0;

	for (i = 1; i < n; i++) {
		if (!ehlo_keyword_is(&lines[i], "SIZE") || lines[i].len <= 9)
			continue;
		for (j = 9; j < lines[i].len && lines[i].p[j] >= '0' && lines[i].p[j] <= '9'; j++)
			if (v < 1000000000000ULL)
				v = v * 10 + (unsigned long long)(lines[i].p[j] - '0');
		return v;
	}
	return 0;
}

int
ehlo_line_removed(const unsigned char *line, size_t len, const struct ehlo_policy *pol)
{
	struct ehlo_line l = {line, len};

	return ehlo_removed(&l, pol);
}

void
ehlo_line_emit(struct evbuffer *out, const unsigned char *line, size_t len, int last)
{
	if (len < 3) {
		evbuffer_add(out, line, len);
		return;
	}
	ehlo_emit(out, line, len, last);
}
