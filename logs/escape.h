#ifndef SMTPTAP_ESCAPE_H
#define SMTPTAP_ESCAPE_H

#include <stddef.h>

struct evbuffer;

/*
 * Appends n octets of p to out so that the result is safe to print on a terminal and still
 * says exactly which octets crossed: backslash becomes "\\", tab stays, other control
 * characters, C1 controls, bidirectional overrides and isolates (U+202A-U+202E,
 * U+2066-U+2069: they would reorder what is shown after them) and octets that are not valid
 * UTF-8 become "\xHH".
 */
void escape_append(struct evbuffer *out, const unsigned char *p, size_t n);

/* Same, into dst, which has room for 4 * n octets; returns the length written. */
size_t escape_into(char *dst, const unsigned char *p, size_t n);

/*
 * The length of p's leading run of octets that escaping leaves as they are (printable ASCII
 * but backslash, and tab), looked at sixteen at a time: for a message line, where its CRLF
 * starts when it needs no escaping, found in the one scan.
 */
size_t escape_plain_span(const unsigned char *p, size_t n);

/*
 * The same, copying the run to dst in the same pass (a message line's record): dst has room
 * for n octets, and what follows the run in it up to n is left undefined.
 */
size_t escape_plain_copy(char *dst, const unsigned char *p, size_t n);

/*
 * For text made of parts escaped already and text of the proxy's own (an event's): what
 * escape_into does, but a backslash stays as it is (it starts an escape there).  The span is
 * the length of p's leading run left unchanged; into writes at most 4 * n octets.
 */
size_t escape_text_span(const unsigned char *p, size_t n);
size_t escape_text_into(char *dst, const unsigned char *p, size_t n);

/* As escape_append, into a NUL-terminated heap string (for JSON and the program's log); NULL
 * on ENOMEM. */
char *escape_strdup(const unsigned char *p, size_t n);

/*
 * Undoes the escaping ("\\" and "\xHH"; every other octet stands for itself) of n octets of
 * text into out, which may be text itself (the result is never longer); the length in
 * *outlen.  -1 on an escape the writer never makes.
 */
int escape_undo(const unsigned char *text, size_t n, unsigned char *out, size_t *outlen);

#endif
