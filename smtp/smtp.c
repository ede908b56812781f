/* SMTP syntax: a table of verbs (OpenSMTPD's commands[]) and the reply-line grammar. */
#include "smtp/smtp.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

/*
 * The command table: one row per verb, indexed by it.  The parser, the rules' scopes (for the
 * proxy and --test-rules alike), the pipelining wait and the session's handling all read it.
 */
/* clang-format off */
#define ROW(name, rules, awaits, handler, track) \
	{name, SMTP_RULES_##rules, awaits, SMTP_HANDLE_##handler, SMTP_TRACK_##track}
static const struct smtp_verb_info smtp_verbs[VERB_COUNT] = {
	/*                   name           rules    awaits handler   track */
	[VERB_UNKNOWN]  = ROW("unknown",     COMMAND, 0, RELAY,    NONE),
	[VERB_HELO]     = ROW("HELO",        HELO,    0, RELAY,    HELO),
	[VERB_EHLO]     = ROW("EHLO",        HELO,    0, RELAY,    HELO),
	[VERB_LHLO]     = ROW("LHLO",        HELO,    0, RELAY,    HELO),
	[VERB_MAIL]     = ROW("MAIL",        MAIL,    0, RELAY,    MAIL),
	[VERB_RCPT]     = ROW("RCPT",        RCPT,    0, RELAY,    RCPT),
	[VERB_DATA]     = ROW("DATA",        COMMAND, 1, DATA,     NONE),
	[VERB_BDAT]     = ROW("BDAT",        COMMAND, 0, BDAT,     NONE),
	[VERB_RSET]     = ROW("RSET",        COMMAND, 0, RELAY,    RSET),
	[VERB_QUIT]     = ROW("QUIT",        COMMAND, 0, RELAY,    NONE),
	[VERB_NOOP]     = ROW("NOOP",        COMMAND, 0, RELAY,    NONE),
	[VERB_AUTH]     = ROW("AUTH",        COMMAND, 1, SASL,     NONE),
	[VERB_STARTTLS] = ROW("STARTTLS",    COMMAND, 1, STARTTLS, NONE),
	[VERB_VRFY]     = ROW("VRFY",        COMMAND, 0, RELAY,    NONE),
	[VERB_EXPN]     = ROW("EXPN",        COMMAND, 0, RELAY,    NONE),
	[VERB_HELP]     = ROW("HELP",        COMMAND, 0, RELAY,    NONE),
	[VERB_XCLIENT]  = ROW("XCLIENT",     COMMAND, 0, REFUSE,   NONE),
	[VERB_XFORWARD] = ROW("XFORWARD",    COMMAND, 0, REFUSE,   NONE),
	[VERB_PROXY]    = ROW("PROXY",       COMMAND, 0, REFUSE,   NONE),
	/* Not commands: what else a reply can answer. */
	[VERB_GREETING] = ROW("greeting",    COMMAND, 0, RELAY,    NONE),
	[VERB_SASL]     = ROW("sasl",        COMMAND, 1, RELAY,    NONE),
	[VERB_EOD]      = ROW("end-of-data", COMMAND, 0, RELAY,    NONE),
	[VERB_LOCAL]    = ROW("local",       COMMAND, 0, RELAY,    NONE),
};
#undef ROW
/* clang-format on */

const struct smtp_verb_info *
smtp_verb_info(enum smtp_verb verb)
{
	if ((unsigned int)verb >= VERB_COUNT)
		verb = VERB_UNKNOWN;
	return &smtp_verbs[verb];
}

int
smtp_is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r';
}

static int
smtp_is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/*
 * Where the first LF is in [from, lim) of in: -1 when there is none.  *head is set to the
 * input's first lim octets when they lie in its first chunk (most lines do: a memchr there,
 * no evbuffer_ptr walk, no pullup), else to NULL.
 */
static ev_ssize_t
smtp_find_lf(struct evbuffer *in, size_t from, size_t lim, const unsigned char **head)
{
	struct evbuffer_ptr start, eol;
	struct evbuffer_iovec v;
	const unsigned char *q;
	size_t eol_len;

	*head = NULL;
	if (evbuffer_peek(in, (ev_ssize_t)lim, NULL, &v, 1) == 1 && v.iov_len >= lim) {
		*head = v.iov_base;
		q = from < lim ? memchr(*head + from, '\n', lim - from) : NULL;
		return q != NULL ? q - *head : -1;
	}
	if (from >= lim)
		return -1;
	if (evbuffer_ptr_set(in, &start, from, EVBUFFER_PTR_SET) != 0)
		return -1;
	eol = evbuffer_search_eol(in, &start, &eol_len, EVBUFFER_EOL_LF);
	return eol.pos >= 0 && (size_t)eol.pos < lim ? eol.pos : -1;
}

int
smtp_line_next(struct evbuffer *in, size_t skip, size_t max, size_t *scanned, struct smtp_line *l)
{
	size_t total = evbuffer_get_length(in), avail, lim, from;
	const unsigned char *p;
	ev_ssize_t lf;
	unsigned char last;

	if (total <= skip || max == 0)
		return 0;
	avail = total - skip;
	lim = avail < max ? avail : max;
	from = scanned != NULL && *scanned < lim ? *scanned : 0;
	lf = smtp_find_lf(in, skip + from, skip + lim, &p);
	if (lf >= 0) {
		l->len = (size_t)lf - skip + 1;
		l->complete = 1;
	} else if (avail >= max) {
		l->len = max;
		l->complete = 0;
	} else {
		if (scanned != NULL)
			*scanned = avail;
		return 0;
	}
	if (p == NULL && (p = evbuffer_pullup(in, (ev_ssize_t)(skip + l->len))) == NULL)
		return 0;
	last = p[skip + l->len - 1];
	/* A CR that ends a piece goes with the next one, where its LF may follow. */
	if (!l->complete && last == '\r' && l->len > 1)
		l->len--;
	if (scanned != NULL)
		*scanned = 0;
	l->data = p + skip;
	return 1;
}

void
smtp_line_cut(const unsigned char *p, size_t len, struct smtp_line *l)
{
	const unsigned char *lf = len > 0 ? memchr(p, '\n', len) : NULL;

	l->data = p;
	l->complete = lf != NULL;
	l->len = lf != NULL ? (size_t)(lf - p) + 1 : len;
}

void
smtp_line_cut_any(const unsigned char *p, size_t len, struct smtp_line *l)
{
	const unsigned char *cr;

	smtp_line_cut(p, len, l);
	cr = l->len > 0 ? memchr(p, '\r', l->len) : NULL;
	/* CR LF can only be the line's end: the line stops at its first LF. */
	if (cr != NULL && (size_t)(cr - p) + 1 < l->len && cr[1] == '\n')
		return;
	if (cr != NULL) {
		l->len = (size_t)(cr - p) + 1;
		l->complete = 1;
	}
}

size_t
smtp_line_text(const struct smtp_line *l)
{
	if (!l->complete)
		return l->len;
	if (l->data[l->len - 1] == '\n')
		return smtp_line_len(l->data, l->len);
	return l->len - 1; /* a bare CR */
}

size_t
smtp_line_len(const unsigned char *line, size_t len)
{
	if (len > 0 && line[len - 1] == '\n') {
		len--;
		if (len > 0 && line[len - 1] == '\r')
			len--;
	}
	return len;
}

/*
 * A verb of at most eight octets as one number, each octet ORed with 0x20 (lower case for a
 * letter), the first in the low octet: the names are all letters, so equal numbers mean equal
 * names in any case, as strncasecmp would say, without a call per row of the table.
 */
static uint64_t
smtp_verb_key(const unsigned char *p, size_t n)
{
	uint64_t k = 0;
	size_t i;

	for (i = 0; i < n; i++)
		k |= (uint64_t)(p[i] | 0x20) << (8 * i);
	return k;
}

/* The commands' names as smtp_verb_key makes them, by verb (0 for the rest). */
#define K(a, b, c, d, e, f, g, h)                                                               \
	((uint64_t)(a) | (uint64_t)(b) << 8 | (uint64_t)(c) << 16 | (uint64_t)(d) << 24 |          \
	 (uint64_t)(e) << 32 | (uint64_t)(f) << 40 | (uint64_t)(g) << 48 | (uint64_t)(h) << 56)
#define K4(a, b, c, d) K(a, b, c, d, 0, 0, 0, 0)
static const uint64_t smtp_verb_keys[VERB_COUNT] = {
    [VERB_HELO] = K4('h', 'e', 'l', 'o'),
    [VERB_EHLO] = K4('e', 'h', 'l', 'o'),
    [VERB_LHLO] = K4('l', 'h', 'l', 'o'),
    [VERB_MAIL] = K4('m', 'a', 'i', 'l'),
    [VERB_RCPT] = K4('r', 'c', 'p', 't'),
    [VERB_DATA] = K4('d', 'a', 't', 'a'),
    [VERB_BDAT] = K4('b', 'd', 'a', 't'),
    [VERB_RSET] = K4('r', 's', 'e', 't'),
    [VERB_QUIT] = K4('q', 'u', 'i', 't'),
    [VERB_NOOP] = K4('n', 'o', 'o', 'p'),
    [VERB_AUTH] = K4('a', 'u', 't', 'h'),
    [VERB_STARTTLS] = K('s', 't', 'a', 'r', 't', 't', 'l', 's'),
    [VERB_VRFY] = K4('v', 'r', 'f', 'y'),
    [VERB_EXPN] = K4('e', 'x', 'p', 'n'),
    [VERB_HELP] = K4('h', 'e', 'l', 'p'),
    [VERB_XCLIENT] = K('x', 'c', 'l', 'i', 'e', 'n', 't', 0),
    [VERB_XFORWARD] = K('x', 'f', 'o', 'r', 'w', 'a', 'r', 'd'),
    [VERB_PROXY] = K('p', 'r', 'o', 'x', 'y', 0, 0, 0),
};
#undef K4
#undef K

void
smtp_parse_command(const unsigned char *line, size_t len, struct smtp_command *cmd)
{
	size_t i, start = 0, verblen = 0;
	uint64_t key;

	cmd->verb = VERB_UNKNOWN;
	cmd->arg = NULL;
	cmd->arglen = 0;
	/* Split as servers do (Postfix's smtpd_token): " XCLIENT" is XCLIENT to them. */
	while (start < len && smtp_is_space(line[start]))
		start++;
	while (start + verblen < len && !smtp_is_space(line[start + verblen]))
		verblen++;
	if (verblen > 0 && verblen <= 8) {
		key = smtp_verb_key(line + start, verblen);
		for (i = VERB_FIRST_COMMAND; i <= VERB_LAST_COMMAND; i++) {
			if (smtp_verb_keys[i] == key) {
				cmd->verb = (enum smtp_verb)i;
				break;
			}
		}
	}
	i = start + verblen;
	while (i < len && smtp_is_space(line[i]))
		i++;
	if (i < len) {
		cmd->arg = line + i;
		cmd->arglen = len - i;
	}
}

void
smtp_parse_auth(const unsigned char *arg, size_t len, struct smtp_auth *a)
{
	size_t i = 0, start;

	memset(a, 0, sizeof(*a));
	while (arg != NULL && i < len && smtp_is_space(arg[i]))
		i++;
	if (arg == NULL || i == len)
		return;
	start = i;
	while (i < len && !smtp_is_space(arg[i]))
		i++;
	a->mech = arg + start;
	a->mechlen = i - start;
	while (i < len && smtp_is_space(arg[i]))
		i++;
	if (i == len)
		return;
	a->resp = arg + i;
	a->resplen = len - i;
	while (a->resp_word < a->resplen && !smtp_is_space(a->resp[a->resp_word]))
		a->resp_word++;
}

/*
 * Mechanism names made of letters and digits only, as registered with IANA (and XOAUTH2, in
 * wide use).  Any other such word may as well be base64: the credential itself, sent as
 * "AUTH <response>" with the mechanism left out.
 */
static const char *const smtp_sasl_known[] = {
    "ANONYMOUS", "EXTERNAL", "GSSAPI",  "LOGIN", "NTLM",   "OAUTH10A", "OAUTHBEARER", "OPENID20",
    "OTP",       "PLAIN",    "SAML20",  "SECURID", "SKEY", "SPNEGO",   "XOAUTH",      "XOAUTH2",
};

static int
smtp_sasl_known_name(const unsigned char *name, size_t len)
{
	size_t i;

	for (i = 0; i < sizeof(smtp_sasl_known) / sizeof(smtp_sasl_known[0]); i++)
		if (strlen(smtp_sasl_known[i]) == len &&
		    strncasecmp(smtp_sasl_known[i], (const char *)name, len) == 0)
			return 1;
	return 0;
}

int
smtp_sasl_name(const unsigned char *name, size_t len)
{
	int marked = 0; /* a '-' or '_': never in base64, so no credential */
	size_t i;

	if (name == NULL || len == 0 || len > 20)
		return 0;
	for (i = 0; i < len; i++) {
		unsigned char c = name[i];

		if (c == '-' || c == '_')
			marked = 1;
		else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
			return 0;
	}
	return marked || smtp_sasl_known_name(name, len);
}

int
smtp_sasl_shaped(const unsigned char *line, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char c = line[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '+' || c == '/' || c == '='))
			return 0;
	}
	return 1;
}

size_t
smtp_auth_visible(const unsigned char *line, size_t len, const struct smtp_command *cmd)
{
	struct smtp_auth a;
	size_t end;

	if (cmd->arg == NULL)
		return len;
	smtp_parse_auth(cmd->arg, cmd->arglen, &a);
	if (smtp_sasl_name(a.mech, a.mechlen))
		return (size_t)(a.mech + a.mechlen - line);
	/* No mechanism name: the first word may be the credential itself. */
	end = (size_t)(cmd->arg - line);
	while (end > 0 && smtp_is_space(line[end - 1]))
		end--;
	return end;
}

/* Appends one reply line with its separator forced to sep ('-' or ' '), and CRLF. */
static size_t
smtp_reply_put(unsigned char *dst, const unsigned char *p, size_t len, int sep, int keep)
{
	size_t o = 0;

	/* Only a well-formed "NNN" prefix has a separator to fix; the rest goes as it came. */
	if (len >= 3 && smtp_is_digit(p[0]) && smtp_is_digit(p[1]) && smtp_is_digit(p[2]) &&
	    !keep && (len == 3 || p[3] == '-' || p[3] == ' ')) {
		memcpy(dst, p, 3);
		dst[3] = (unsigned char)sep;
		o = 4;
		if (len > 4) {
			memcpy(dst + 4, p + 4, len - 4);
			o = len;
		}
	} else {
		memcpy(dst, p, len);
		o = len;
	}
	dst[o++] = '\r';
	dst[o++] = '\n';
	return o;
}

unsigned char *
smtp_reply_rebuild(const unsigned char *const *lines, const size_t *lens, const int *removed,
                   size_t n, size_t *outlen, int *all_removed)
{
	unsigned char *buf;
	size_t i, last = 0, size = 0, o = 0;
	int any = 0;

	*all_removed = 0;
	*outlen = 0;
	for (i = 0; i < n; i++) {
		size += lens[i] + 3;
		if (!removed[i]) {
			any = 1;
			last = i;
		}
	}
	if (n == 0 || (buf = malloc(size + 1)) == NULL)
		return NULL;
	if (!any) {
		*all_removed = 1;
		last = n - 1;
	}
	for (i = 0; i < n; i++) {
		if (i == last)
			/* A bare "250" that was already last stays as it came. */
			o += smtp_reply_put(buf + o, lines[i], lens[i], ' ', lens[i] == 3);
		else if (!removed[i])
			o += smtp_reply_put(buf + o, lines[i], lens[i], '-', 0);
	}
	buf[o] = '\0';
	*outlen = o;
	return buf;
}

int
smtp_parse_reply(const unsigned char *line, size_t len, struct smtp_reply_line *r)
{
	r->code = 0;
	r->last = 1;
	r->text = line;
	r->textlen = len;
	if (len < 3 || line[0] < '1' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
	    line[2] < '0' || line[2] > '9')
		return -1;
	if (len > 3 && line[3] != ' ' && line[3] != '-')
		return -1;
	r->code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	r->last = len == 3 || line[3] == ' ';
	r->text = len > 4 ? line + 4 : line + len;
	r->textlen = len > 4 ? len - 4 : 0;
	return 0;
}

/* Skips the white space at arg[i], as Postfix's smtpd_token does between words. */
static size_t
smtp_skip_space(const unsigned char *arg, size_t len, size_t i)
{
	while (i < len && smtp_is_space(arg[i]))
		i++;
	return i;
}

int
smtp_parse_bdat(const unsigned char *arg, size_t len, uint64_t *size, int *last)
{
	size_t i = 0;
	uint64_t n = 0;
	unsigned d;

	if (arg == NULL || len == 0 || !smtp_is_digit(arg[0]))
		return -1;
	for (; i < len && smtp_is_digit(arg[i]); i++) {
		d = arg[i] - '0';
		/* Past an off_t the server refuses it (Postfix: 521, and it hangs up). */
		if (n > (SMTP_BDAT_MAX - d) / 10)
			return -1;
		n = n * 10 + d;
	}
	if (i < len && !smtp_is_space(arg[i]))
		return -1;
	i = smtp_skip_space(arg, len, i);
	if (i < len && (len - i < 4 || strncasecmp((const char *)arg + i, "LAST", 4) != 0 ||
	                smtp_skip_space(arg, len, i + 4) != len))
		return -1;
	*size = n;
	*last = i < len;
	return 0;
}

const char *
smtp_verb_name(enum smtp_verb verb)
{
	return smtp_verb_info(verb)->name;
}

int
smtp_verb_awaits_reply(enum smtp_verb verb)
{
	return smtp_verb_info(verb)->awaits_reply;
}

size_t
smtp_content_unstuff(const unsigned char **line, size_t len)
{
	while (len > 0 && ((*line)[len - 1] == '\n' || (*line)[len - 1] == '\r'))
		len--;
	if (len > 1 && (*line)[0] == '.') {
		(*line)++;
		len--;
	}
	return len;
}
