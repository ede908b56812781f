#ifndef SMTPTAP_ADDRESS_H
#define SMTPTAP_ADDRESS_H

#include <stddef.h>

/*
 * The address of a MAIL FROM or RCPT TO argument, read as Postfix's smtpd reads it (issue 17):
 * the keyword ("FROM" or "TO") and its colon, any white space (space, tab, VT, FF, CR), then the
 * path with or without its angle brackets, then the ESMTP parameters.  The address is Postfix's
 * internal form of it (smtpd's extract_addr: tok822_parse, tok822_internalize), what Postfix's
 * access maps look up: comments ("(...)") and the white space between tokens are gone, quoted
 * strings lose their quotes and backslash escapes are undone ("\"a b\"@x" is "a b@x",
 * "<b\\ob @ x (c)>" is "bob@x"), a phrase before "<...>" is dropped, as is a source route
 * ("<@a,@b:user@host>"); the domain (after the last '@') is lower-cased (IDNA left as it is) and
 * loses its trailing dots.  "<>" is the empty address.  No I/O: unit-tested and fuzzed alone.
 */
struct address {
	int ok;          /* the argument had the keyword, a colon and a readable path */
	size_t path_off; /* the path in the argument: "<...>" or the bare address */
	size_t path_len;
	size_t params_off; /* the ESMTP parameters, after the path and its white space */
	size_t params_len;
	size_t len; /* the address, in the caller's buffer */
};

/*
 * Parses arg (len octets, the command line after its verb and white space) into a, writing
 * the address into buf, which holds at least len + 1 octets (the address is never longer than
 * the argument; it is NUL-terminated).  When the argument cannot be read (no keyword, a bracket
 * or quoted string never closed, two addresses where Postfix takes one), a->ok is 0 and buf
 * holds what follows the colon (or the whole argument), without its surrounding white space:
 * a rule still sees something to match.
 */
void address_parse(const unsigned char *arg, size_t len, const char *keyword, struct address *a,
                   unsigned char *buf);

/* The most octets address_path() writes for an address of n octets. */
#define ADDRESS_PATH_MAX(n) (2 * (n) + 4)

/*
 * Writes the address addr (n octets, in the internal form address_parse() gives) to out as an
 * RFC 5321 path: "<local@domain>", the local part quoted when it is not a dot-atom ("<\"a
 * b\"@x>").  Returns the octets written, or -1 when no path says it: a control octet, '<' or
 * '>' anywhere, an empty local part before an '@', a domain that is neither a host name nor an
 * address literal, or the empty address when empty_ok is 0 ("<>" is for senders alone).
 */
long address_path(const unsigned char *addr, size_t n, int empty_ok, unsigned char *out);

/* The white space Postfix's smtpd_token splits a command on. */
int address_is_space(int c);

#endif
