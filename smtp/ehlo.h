#ifndef SMTPTAP_EHLO_H
#define SMTPTAP_EHLO_H

#include <stddef.h>

#include "smtp/smtp.h"

struct evbuffer;

/*
 * Edits an EHLO reply held whole: removes extension lines by keyword and adds one, then
 * sets the separators again so that every line but the last is "250-" and the last "250 "
 * (never a reply without a line: the first line, the server's name, always stays).
 */
struct ehlo_policy {
	const char *const *remove; /* keywords to remove, any case */
	int nremove;
	const char *add; /* keyword line to add when absent, or NULL */
};

/* Reads the CRLF-terminated lines of reply; writes the edited reply to out; notes each
 * change as "removed KEYWORD..." / "added ..." lines into notes (may be NULL).  Returns the
 * number of changes. */
int ehlo_edit(const unsigned char *reply, size_t len, const struct ehlo_policy *pol,
              struct evbuffer *out, struct evbuffer *notes);

/* Whether one reply line (line end included) is an extension the policy removes. */
int ehlo_line_removed(const unsigned char *line, size_t len, const struct ehlo_policy *pol);
/* Writes one reply line with the separator its place needs ("250-" or, last, "250 "). */
void ehlo_line_emit(struct evbuffer *out, const unsigned char *line, size_t len, int last);

/* The SIZE limit the EHLO reply announces (RFC 1870), 0 when none. */
unsigned long long ehlo_size(const unsigned char *reply, size_t len);

/* Whether the EHLO reply offers keyword (any case). */
int ehlo_offers(const unsigned char *reply, size_t len, const char *keyword);
/* Whether one line of an EHLO reply (not its first) is the extension keyword (any case). */
int ehlo_line_is(const unsigned char *line, size_t len, const char *keyword);

/*
 * The extensions a client's command needs (STARTTLS, AUTH, CHUNKING for BDAT), which the
 * proxy refuses once a capability rule removed them from the EHLO reply.  Sets of them are
 * bits: ehlo_gates[i] is 1u << i.
 */
struct ehlo_gate {
	enum smtp_verb verb;
	const char *keyword; /* as the EHLO reply names it */
	const char *name;    /* as the refusal names it */
};
#define EHLO_NGATES 3
extern const struct ehlo_gate ehlo_gates[EHLO_NGATES];

/* The gates one line of an EHLO reply offers. */
unsigned ehlo_gates_of_line(const unsigned char *line, size_t len);
/* The gates a whole EHLO reply offers. */
unsigned ehlo_gates_of(const unsigned char *reply, size_t len);
/* The name of the gate verb needs, when it is among the set hidden; else NULL. */
const char *ehlo_gate_hidden(unsigned hidden, enum smtp_verb verb);

#endif
