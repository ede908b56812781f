#ifndef SMTPTAP_REDACT_H
#define SMTPTAP_REDACT_H

#include <stddef.h>

struct evbuffer;

/*
 * Credentials never reach a log.  These helpers turn SASL material (RFC 4954) into a marker
 * that keeps only, where it decodes, the user name: not even the length, which would tell
 * an attacker how long a password is.
 */

#define REDACT_USER_MAX 256

/*
 * Decodes the user name carried by a client's SASL response for mechanism mech (as the
 * client named it, any case).  step is 0 for the first client response (the initial response
 * on the AUTH line, or the first line after a 334), 1 for the next, ...  b64 is the base64
 * text without line end.  Writes a NUL-terminated user name (raw octets, at most
 * REDACT_USER_MAX - 1) and returns 1 when the mechanism carries one at that step
 * (PLAIN: authcid, or authzid if authcid is empty; LOGIN: step 0; CRAM-MD5: the part before
 * the space; XOAUTH2: "user=" field; OAUTHBEARER: "a=" field of the GS2 header), else 0.
 */
int redact_sasl_user(const char *mech, int step, const char *b64, size_t len, char *user,
                     size_t usersize);

/* Appends the marker "[redacted]" or "[redacted user=USER]" (USER escaped). */
void redact_marker(struct evbuffer *out, const char *user);

#endif
