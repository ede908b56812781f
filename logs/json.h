#ifndef SMTPTAP_JSON_H
#define SMTPTAP_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/*
 * A JSON writer for the event line (as HAProxy and nginx write their JSON logs): appends to a
 * growing buffer, with the commas placed for the caller.  Strings are escaped per RFC 8259
 * and made ASCII (\uXXXX, surrogate pairs beyond the BMP) as jansson's JSON_ENSURE_ASCII
 * did; an octet that is not UTF-8 becomes U+FFFD.  jansson stays for reading.
 */
struct json_writer {
	char *buf;
	size_t len;
	size_t cap;
	int comma;  /* a value was written at this level: the next one needs a comma */
	int failed; /* memory ran short: the line is incomplete and must not be written */
};

void jw_reset(struct json_writer *w);
void jw_free(struct json_writer *w);
void jw_open(struct json_writer *w, char c); /* '{' or '[' */
void jw_close(struct json_writer *w, char c);
/* A key of ours (ASCII, nothing to escape). */
void jw_key(struct json_writer *w, const char *key);

/* Grows the buffer for n more octets; -1 (and failed set) when memory is short. */
int jw_grow(struct json_writer *w, size_t n);

/*
 * jw_key, inlined where it is called: a key is most often a string literal, whose length and
 * copy the compiler then makes constant (an event line has some twenty keys per
 * transaction; strlen and memcpy calls were a third of the writer's instructions).
 */
static inline void
jw_key_inline(struct json_writer *w, const char *key, size_t n)
{
	char *o;

	if (w->failed || (w->len + n + 4 > w->cap && jw_grow(w, n + 4) != 0))
		return;
	o = w->buf + w->len;
	if (w->comma)
		*o++ = ',';
	*o++ = '"';
	memcpy(o, key, n);
	o += n;
	*o++ = '"';
	*o++ = ':';
	w->len = (size_t)(o - w->buf);
	w->comma = 0; /* its value follows */
}
#define jw_key(w, key) jw_key_inline((w), (key), strlen(key))
void jw_str(struct json_writer *w, const char *s); /* NULL: null */
void jw_strn(struct json_writer *w, const char *s, size_t n);
void jw_int(struct json_writer *w, long long v);
void jw_int_or_null(struct json_writer *w, long long v, int present);
void jw_real(struct json_writer *w, double v); /* 9 significant digits */
/*
 * A duration of us microseconds, v seconds (v as computed from the same times): what
 * jw_real(v) writes, made without printf where us has at most nine digits and three or more.
 */
void jw_duration(struct json_writer *w, long long us, double v);
void jw_bool(struct json_writer *w, int v);
void jw_null(struct json_writer *w);
/* Ends the line ("\n"), after the last value. */
void jw_newline(struct json_writer *w);

#endif
