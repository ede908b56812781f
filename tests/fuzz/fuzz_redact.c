/*
 * libFuzzer target: redaction and escaping.  The first octet sizes the user buffer (1..256);
 * the rest is a SASL response, decoded for the user name by every mechanism at every step
 * (redact_sasl_user), then marked (redact_marker) and escaped (escape_append,
 * escape_strdup).  Escaping is checked to be printable and to undo to the octets given.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "logs/escape.h"
#include "logs/redact.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const mechs[] = {"PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER",
				    "plain", "login", "xoauth2", "SCRAM-SHA-256", ""};

static int
hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Escaped text is printable and says exactly which octets crossed: undo it and compare. */
static void
check_escaped(const unsigned char *e, size_t elen, const unsigned char *p, size_t n)
{
	size_t i = 0, o = 0;
	int hi, lo;

	while (i < elen) {
		/* Bidirectional overrides and isolates (U+202A-E, U+2066-9) never stay raw. */
		if (e[i] == 0xe2 && i + 2 < elen &&
		    ((e[i + 1] == 0x80 && e[i + 2] >= 0xaa && e[i + 2] <= 0xae) ||
		     (e[i + 1] == 0x81 && e[i + 2] >= 0xa6 && e[i + 2] <= 0xa9)))
			abort();
		if (e[i] < 0x20 && e[i] != '\t')
			abort();
		if (e[i] == 0x7f)
			abort();
		if (e[i] != '\\') {
			if (o >= n || p[o++] != e[i++])
				abort();
			continue;
		}
		if (i + 1 < elen && e[i + 1] == '\\') {
			if (o >= n || p[o++] != '\\')
				abort();
			i += 2;
			continue;
		}
		if (i + 3 >= elen || e[i + 1] != 'x' || (hi = hexval(e[i + 2])) < 0 ||
		    (lo = hexval(e[i + 3])) < 0)
			abort();
		if (o >= n || p[o++] != (unsigned char)(hi << 4 | lo))
			abort();
		i += 4;
	}
	if (o != n)
		abort();
}

static void
check_escape(const unsigned char *p, size_t n)
{
	struct evbuffer *out = evbuffer_new();
	unsigned char *flat;
	char *s;
	size_t len;

	if (out == NULL)
		return;
	escape_append(out, p, n);
	len = evbuffer_get_length(out);
	flat = evbuffer_pullup(out, (ev_ssize_t)len);
	if (len > 0 && flat == NULL)
		abort();
	check_escaped(flat, len, p, n);
	if ((s = escape_strdup(p, n)) != NULL) {
		if (strlen(s) != len || (len > 0 && memcmp(s, flat, len) != 0))
			abort();
		free(s);
	}
	evbuffer_free(out);
}

static void
check_user(const char *mech, int step, const char *b64, size_t len, size_t usersize)
{
	char *user = malloc(usersize);
	struct evbuffer *out = evbuffer_new();
	int found;

	if (user == NULL || out == NULL)
		goto done;
	memset(user, 'U', usersize);
	found = redact_sasl_user(mech, step, b64, len, user, usersize);
	if (found != 0 && found != 1)
		abort();
	if (memchr(user, '\0', usersize) == NULL)
		abort(); /* always NUL-terminated within the buffer */
	if (found && user[0] == '\0' && usersize > 1)
		abort(); /* an empty name is not a name (a 1-octet buffer only holds the NUL) */
	redact_marker(out, found ? user : NULL);
	if (found)
		check_escape((const unsigned char *)user, strlen(user));
done:
	free(user);
	if (out != NULL)
		evbuffer_free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t usersize, i, len;
	char *b64;
	int step;

	if (size == 0)
		return 0;
	usersize = (size_t)data[0] + 1;
	len = size - 1;
	/* Its own allocation, so that a read past the response is caught. */
	if ((b64 = malloc(len ? len : 1)) == NULL)
		return 0;
	memcpy(b64, data + 1, len);
	for (i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++)
		for (step = 0; step < 3; step++)
			check_user(mechs[i], step, b64, len, usersize);
	check_escape((const unsigned char *)b64, len);
	free(b64);
	return 0;
}
