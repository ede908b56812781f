/* EHLO replies, held whole so that extensions can be removed or added safely. */
#include "smtp/ehlo.h"

#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "smtp/smtp.h"

struct ehlo_line {
	const unsigned char *p;
	size_t len; /* with its line end */
};

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

/* The next line of a reply from *off (any number of them: no fixed table); 0 at the end. */
static int
ehlo_next(const unsigned char *reply, size_t len, size_t *off, struct ehlo_line *l)
{
	struct smtp_line line;

	if (*off >= len)
		return 0;
	smtp_line_cut(reply + *off, len - *off, &line);
	l->p = line.data;
	l->len = line.len;
	*off += l->len;
	return 1;
}

int
ehlo_offers(const unsigned char *reply, size_t len, const char *keyword)
{
	struct ehlo_line l;
	size_t off = 0, i;

	for (i = 0; ehlo_next(reply, len, &off, &l); i++)
		if (i > 0 && ehlo_keyword_is(&l, keyword))
			return 1;
	return 0;
}

int
ehlo_line_is(const unsigned char *line, size_t len, const char *keyword)
{
	struct ehlo_line l = {line, len};

	return ehlo_keyword_is(&l, keyword);
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
	/* The old separator goes; a line without one ("250\r\n") keeps all it has. */
	size_t rest = len > 3 && (p[3] == '-' || p[3] == ' ') ? 4 : 3;

	evbuffer_add(out, p, 3);
	evbuffer_add(out, last ? " " : "-", 1);
	if (len > rest)
		evbuffer_add(out, p + rest, len - rest);
	else
		evbuffer_add(out, "\r\n", 2);
}

int
ehlo_edit(const unsigned char *reply, size_t len, const struct ehlo_policy *pol,
          struct evbuffer *out, struct evbuffer *notes)
{
	struct ehlo_line l, first;
	size_t off = 0, i, lastkept = 0;
	int changes = 0, add;

	if (len < 3 || !ehlo_next(reply, len, &off, &first)) {
		evbuffer_add(out, reply, len);
		return 0;
	}
	/* First pass: which kept line is the last (the first line, the server's name, stays). */
	for (i = 1; ehlo_next(reply, len, &off, &l); i++) {
		if (!ehlo_removed(&l, pol)) {
			lastkept = i;
			continue;
		}
		changes++;
		if (notes != NULL) {
			evbuffer_add(notes, "removed ", 8);
			evbuffer_add(notes, l.p + 4, l.len > 4 ? l.len - 4 : 0);
		}
	}
	add = pol->add != NULL && first.len >= 3 && !ehlo_offers(reply, len, pol->add);
	/* Second pass: the kept lines, each with the separator its new place needs. */
	for (off = 0, i = 0; ehlo_next(reply, len, &off, &l); i++)
		if (i == 0 || !ehlo_removed(&l, pol))
			ehlo_emit(out, l.p, l.len, !add && i == lastkept);
	if (add) {
		evbuffer_add(out, first.p, 3);
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
	struct ehlo_line l;
	size_t off = 0, i, j;
	unsigned long long v = 0;

	for (i = 0; ehlo_next(reply, len, &off, &l); i++) {
		if (i == 0 || !ehlo_keyword_is(&l, "SIZE") || l.len <= 9)
			continue;
		for (j = 9; j < l.len && l.p[j] >= '0' && l.p[j] <= '9'; j++)
			if (v < 1000000000000ULL)
				v = v * 10 + (unsigned long long)(l.p[j] - '0');
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

const struct ehlo_gate ehlo_gates[EHLO_NGATES] = {
    {VERB_STARTTLS, "STARTTLS", "STARTTLS"},
    {VERB_AUTH, "AUTH", "AUTH"},
    {VERB_BDAT, "CHUNKING", "BDAT"},
};

unsigned
ehlo_gates_of_line(const unsigned char *line, size_t len)
{
	unsigned bits = 0;
	size_t i;

	for (i = 0; i < EHLO_NGATES; i++)
		if (ehlo_line_is(line, len, ehlo_gates[i].keyword))
			bits |= 1u << i;
	return bits;
}

unsigned
ehlo_gates_of(const unsigned char *reply, size_t len)
{
	struct ehlo_line l;
	unsigned bits = 0;
	size_t off = 0, i;

	/* One pass over the reply, its first line (the server's name) left out. */
	for (i = 0; ehlo_next(reply, len, &off, &l); i++)
		if (i > 0)
			bits |= ehlo_gates_of_line(l.p, l.len);
	return bits;
}

const char *
ehlo_gate_hidden(unsigned hidden, enum smtp_verb verb)
{
	size_t i;

	for (i = 0; i < EHLO_NGATES; i++)
		if (ehlo_gates[i].verb == verb && (hidden & (1u << i)))
			return ehlo_gates[i].name;
	return NULL;
}
