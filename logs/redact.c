/* SASL credentials in a transcript: keep the user name, never the secret nor its length. */
#include "logs/redact.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "logs/escape.h"

/* Finds the user name in one decoded client response; 1 if found, with *name and *namelen. */
typedef int (*redact_user_fn)(int, unsigned char *, size_t, unsigned char **, size_t *);

static int redact_plain(int, unsigned char *, size_t, unsigned char **, size_t *);
static int redact_login(int, unsigned char *, size_t, unsigned char **, size_t *);
static int redact_cram_md5(int, unsigned char *, size_t, unsigned char **, size_t *);
static int redact_xoauth2(int, unsigned char *, size_t, unsigned char **, size_t *);
static int redact_oauthbearer(int, unsigned char *, size_t, unsigned char **, size_t *);

static const struct {
	const char *name;
	redact_user_fn user;
} redact_mechs[] = {
    {"PLAIN", redact_plain},
    {"LOGIN", redact_login},
    {"CRAM-MD5", redact_cram_md5},
    {"XOAUTH2", redact_xoauth2},
    {"OAUTHBEARER", redact_oauthbearer},
};

static int
redact_b64char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/';
}

/* Decodes padded base64 into a new buffer of *cap octets (free with OPENSSL_clear_free). */
static unsigned char *
redact_b64decode(const char *b64, size_t len, size_t *outlen, size_t *cap)
{
	unsigned char *d;
	size_t pad = 0, i;
	int r;

	if (len == 0 || len % 4 != 0 || len > INT_MAX)
		return NULL;
	while (pad < 2 && b64[len - 1 - pad] == '=')
		pad++;
	/* EVP_DecodeBlock takes '=' anywhere as 'A' and skips blanks: allow neither. */
	for (i = 0; i < len - pad; i++)
		if (!redact_b64char((unsigned char)b64[i]))
			return NULL;
	*cap = len / 4 * 3;
	if ((d = malloc(*cap)) == NULL)
		return NULL;
	r = EVP_DecodeBlock(d, (const unsigned char *)b64, (int)len);
	if (r < 0 || (size_t)r != *cap) {
		OPENSSL_clear_free(d, *cap);
		return NULL;
	}
	/* The count includes a zero octet for each '='. */
	*outlen = *cap - pad;
	return d;
}

/* PLAIN: authzid NUL authcid NUL passwd; the user is authcid, or authzid if authcid is empty. */
static int
redact_plain(int step, unsigned char *d, size_t n, unsigned char **name, size_t *namelen)
{
	unsigned char *z1, *z2;

	if (step != 0 || (z1 = memchr(d, '\0', n)) == NULL)
		return 0;
	if ((z2 = memchr(z1 + 1, '\0', n - (size_t)(z1 + 1 - d))) == NULL)
		return 0;
	if (z2 > z1 + 1) {
		*name = z1 + 1;
		*namelen = (size_t)(z2 - z1 - 1);
	} else {
		*name = d;
		*namelen = (size_t)(z1 - d);
	}
	return 1;
}

/* LOGIN: the first response is the user name, the second the password. */
static int
redact_login(int step, unsigned char *d, size_t n, unsigned char **name, size_t *namelen)
{
	if (step != 0)
		return 0;
	*name = d;
	*namelen = n;
	return 1;
}

/* CRAM-MD5: "user SP hexdigest"; the user may itself hold spaces. */
static int
redact_cram_md5(int step, unsigned char *d, size_t n, unsigned char **name, size_t *namelen)
{
	unsigned char *sp;

	if (step != 0 || (sp = memrchr(d, ' ', n)) == NULL)
		return 0;
	*name = d;
	*namelen = (size_t)(sp - d);
	return 1;
}

/* XOAUTH2: "user=NAME ^A auth=Bearer TOKEN ^A ^A". */
static int
redact_xoauth2(int step, unsigned char *d, size_t n, unsigned char **name, size_t *namelen)
{
	unsigned char *end;

	if (step != 0 || n < 5 || memcmp(d, "user=", 5) != 0)
		return 0;
	if ((end = memchr(d, '\x01', n)) == NULL)
		return 0;
	*name = d + 5;
	*namelen = (size_t)(end - d - 5);
	return 1;
}

/* Undoes the "=2C" and "=3D" escapes of a GS2 saslname in place; -1 on any other '='. */
static int
redact_saslname(unsigned char *s, size_t n, size_t *outlen)
{
	size_t i, o = 0;

	for (i = 0; i < n; i++) {
		if (s[i] != '=') {
			s[o++] = s[i];
			continue;
		}
		if (n - i < 3)
			return -1;
		if (s[i + 1] == '2' && (s[i + 2] == 'C' || s[i + 2] == 'c'))
			s[o++] = ',';
		else if (s[i + 1] == '3' && (s[i + 2] == 'D' || s[i + 2] == 'd'))
			s[o++] = '=';
		else
			return -1;
		i += 2;
	}
	*outlen = o;
	return 0;
}

/* OAUTHBEARER (RFC 7628): GS2 header "n,a=NAME," then ^A-separated key=value pairs. */
static int
redact_oauthbearer(int step, unsigned char *d, size_t n, unsigned char **name, size_t *namelen)
{
	unsigned char *c1, *c2, *a;

	if (step != 0 || n == 0 || (d[0] != 'n' && d[0] != 'y' && d[0] != 'p'))
		return 0;
	if ((c1 = memchr(d, ',', n)) == NULL)
		return 0;
	a = c1 + 1;
	if ((size_t)(a - d) + 2 > n || a[0] != 'a' || a[1] != '=')
		return 0;
	a += 2;
	if ((c2 = memchr(a, ',', n - (size_t)(a - d))) == NULL)
		return 0;
	if (redact_saslname(a, (size_t)(c2 - a), namelen) == -1)
		return 0;
	*name = a;
	return 1;
}

int
redact_sasl_user(const char *mech, int step, const char *b64, size_t len, char *user,
                 size_t usersize)
{
	unsigned char *d, *name = NULL;
	size_t i, n, cap, namelen = 0;
	int found = 0;

	if (usersize == 0)
		return 0;
	user[0] = '\0';
	for (i = 0; i < sizeof(redact_mechs) / sizeof(redact_mechs[0]); i++)
		if (strcasecmp(mech, redact_mechs[i].name) == 0)
			break;
	if (i == sizeof(redact_mechs) / sizeof(redact_mechs[0]))
		return 0;
	if ((d = redact_b64decode(b64, len, &n, &cap)) == NULL)
		return 0;
	if (n > 0)
		found = redact_mechs[i].user(step, d, n, &name, &namelen);
	/* An empty name, or one with a NUL the caller could not see, is not a name. */
	if (found && (namelen == 0 || memchr(name, '\0', namelen) != NULL))
		found = 0;
	if (found) {
		if (namelen > usersize - 1)
			namelen = usersize - 1;
		memcpy(user, name, namelen);
		user[namelen] = '\0';
	}
	OPENSSL_clear_free(d, cap);
	return found;
}

void
redact_marker(struct evbuffer *out, const char *user)
{
	evbuffer_add(out, "[redacted", 9);
	if (user != NULL && user[0] != '\0') {
		evbuffer_add(out, " user=", 6);
		escape_append(out, (const unsigned char *)user, strlen(user));
	}
	evbuffer_add(out, "]", 1);
}
