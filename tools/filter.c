/* The session filters of `sessions` (on events) and `tail` (on records as they come). */
#include "tools/filter.h"

#include "logs/redact.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
	NEED_FROM = 1 << 0,
	NEED_TO = 1 << 1,
	NEED_USER = 1 << 2,
	NEED_CODE = 1 << 3,
	NEED_REASON = 1 << 4,
	NEED_RULE = 1 << 5,
};

void
filter_format_time(time_t t, char out[32])
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%S.000000Z", &tm);
}

int
filter_parse_time(const char *s, time_t now, char out[32], time_t *at)
{
	static const long unit_secs[] = {['s'] = 1, ['m'] = 60, ['h'] = 3600, ['d'] = 86400,
	                                 ['w'] = 604800};
	struct tm tm;
	char *end;
	const char *rest;
	long n, unit;
	time_t t;

	n = strtol(s, &end, 10);
	if (end != s && n >= 0 && end[0] != '\0' && end[1] == '\0' && strchr("smhdw", end[0]) &&
	    s[0] != '-' && s[0] != '+') {
		unit = unit_secs[(unsigned char)end[0]];
		/* Further back than the epoch is the epoch (n * unit would overflow first). */
		t = n > now / unit ? 0 : now - (time_t)n * unit;
	} else {
		memset(&tm, 0, sizeof(tm));
		if ((rest = strptime(s, "%Y-%m-%d", &tm)) == NULL)
			return -1;
		if (*rest == 'T' || *rest == ' ') {
			const char *r2 = strptime(rest + 1, "%H:%M:%S", &tm);

			if (r2 == NULL)
				r2 = strptime(rest + 1, "%H:%M", &tm);
			if (r2 == NULL)
				return -1;
			rest = r2;
			if (*rest == '.')
				for (rest++; isdigit((unsigned char)*rest); rest++)
					;
		}
		if (*rest == 'Z')
			rest++;
		if (*rest != '\0')
			return -1;
		t = timegm(&tm);
	}
	filter_format_time(t, out);
	if (at != NULL)
		*at = t;
	return 0;
}

/* --client ADDR or ADDR/LEN. */
static int
filter_parse_cidr(struct tool_filter *f, const char *s)
{
	char host[64], *slash, *end;
	long len;

	snprintf(host, sizeof(host), "%s", s);
	if ((slash = strchr(host, '/')) != NULL)
		*slash = '\0';
	if (inet_pton(AF_INET, host, f->net) == 1)
		f->family = AF_INET;
	else if (inet_pton(AF_INET6, host, f->net) == 1)
		f->family = AF_INET6;
	else
		return -1;
	f->prefix = f->family == AF_INET ? 32 : 128;
	if (slash != NULL) {
		len = strtol(slash + 1, &end, 10);
		if (slash[1] == '\0' || *end != '\0' || len < 0 || len > (long)f->prefix)
			return -1;
		f->prefix = (unsigned)len;
	}
	f->has_client = 1;
	return 0;
}

/* --code 550 or 5xx. */
static int
filter_parse_code(struct tool_filter *f, const char *s)
{
	if (strlen(s) != 3 || s[0] < '1' || s[0] > '5')
		return -1;
	if (strcasecmp(s + 1, "xx") == 0) {
		f->code = s[0] - '0';
		return 0;
	}
	if (!isdigit((unsigned char)s[1]) || !isdigit((unsigned char)s[2]))
		return -1;
	f->code = atoi(s);
	return 0;
}

static int
filter_bad(const char *opt, const char *value, const char *why)
{
	fprintf(stderr, "smtptap: %s %s: %s\n", opt, value, why);
	return -1;
}

int
filter_option(struct tool_filter *f, int argc, char **argv, int *i, time_t now)
{
	static const char *const names[] = {"--client", "--from", "--to",   "--user", "--since",
	                                    "--until",  "--reason", "--code", "--rule", NULL};
	const char *opt = argv[*i], *v;
	int k;

	for (k = 0; names[k] != NULL && strcmp(opt, names[k]) != 0; k++)
		;
	if (names[k] == NULL)
		return 0;
	if (*i + 1 >= argc)
		return filter_bad(opt, "", "needs a value");
	v = argv[++*i];
	switch (k) {
	case 0:
		return filter_parse_cidr(f, v) == 0 ? 1 : filter_bad(opt, v, "not an address or CIDR");
	case 1:
		f->from = v;
		return 1;
	case 2:
		f->to = v;
		return 1;
	case 3:
		f->user = v;
		return 1;
	case 4:
	case 5:
		if (filter_parse_time(v, now, k == 4 ? f->since : f->until,
		                      k == 4 ? &f->since_at : NULL) != 0)
			return filter_bad(opt, v, "not a time (ISO 8601 in UTC, or 30m, 2h, 1d, 1w)");
		return 1;
	case 6:
		f->reason = v;
		return 1;
	case 7:
		return filter_parse_code(f, v) == 0 ? 1 : filter_bad(opt, v, "not a code (550, 5xx)");
	default:
		f->rule = v;
		return 1;
	}
}

int
filter_arg(void *f, int argc, char **argv, int *i)
{
	return filter_option(f, argc, argv, i, ((struct tool_filter *)f)->now);
}

int
filter_client_matches(const struct tool_filter *f, const char *client)
{
	unsigned char a[16];
	char host[64];
	const char *p = client, *e;
	size_t n;
	unsigned full, rest;

	if (!f->has_client)
		return 1;
	if (client == NULL)
		return 0;
	if (*p == '[') {
		p++;
		e = strchr(p, ']');
	} else {
		e = strchr(p, ':');
		if (e != NULL && strchr(e + 1, ':') != NULL) /* a bare IPv6 address */
			e = NULL;
	}
	n = e != NULL ? (size_t)(e - p) : strlen(p);
	if (n >= sizeof(host))
		return 0;
	memcpy(host, p, n);
	host[n] = '\0';
	if (inet_pton(f->family, host, a) != 1)
		return 0;
	full = f->prefix / 8;
	rest = f->prefix % 8;
	if (memcmp(a, f->net, full) != 0)
		return 0;
	return rest == 0 || ((a[full] ^ f->net[full]) & (0xff00 >> rest)) == 0;
}

int
filter_address_matches(const char *want, const char *addr)
{
	const char *p, *e, *at;
	size_t n, wn;

	if (want == NULL)
		return 1;
	if (addr == NULL)
		return 0;
	/* The address alone: "<a@b> SIZE=1" and "a@b" alike. */
	p = addr;
	while (*p == ' ')
		p++;
	if (*p == '<') {
		p++;
		e = strchr(p, '>');
	} else {
		e = strchr(p, ' ');
	}
	n = e != NULL ? (size_t)(e - p) : strlen(p);
	wn = strlen(want);
	if (strcmp(want, "<>") == 0)
		return n == 0;
	if (want[0] == '<' && wn >= 2 && want[wn - 1] == '>') {
		want++;
		wn -= 2;
	}
	if (want[0] == '@') {
		at = memrchr(p, '@', n);
		return at != NULL && (size_t)(p + n - at) == wn && strncasecmp(at, want, wn) == 0;
	}
	return n == wn && strncasecmp(p, want, n) == 0;
}

int
filter_code_matches(const struct tool_filter *f, long code)
{
	if (f->code == 0)
		return 1;
	if (f->code < 10)
		return code / 100 == f->code;
	return code == f->code;
}

int
filter_rule_matches(const char *want, const char *rule)
{
	const char *colon, *base;
	size_t n;

	if (want == NULL)
		return 1;
	if (rule == NULL)
		return 0;
	if (strcmp(want, rule) == 0)
		return 1;
	colon = strrchr(rule, ':');
	n = colon != NULL ? (size_t)(colon - rule) : strlen(rule);
	if (strlen(want) == n && strncmp(want, rule, n) == 0)
		return 1;
	base = memrchr(rule, '/', n);
	base = base != NULL ? base + 1 : rule;
	n -= (size_t)(base - rule);
	return strlen(want) == n && strncmp(want, base, n) == 0;
}

/* Whether an AUTH user is --user's: the one test of sessions (events) and tail (records). */
static int
filter_user_matches(const struct tool_filter *f, const char *user)
{
	return user != NULL && strcmp(user, f->user) == 0;
}

static const char *
json_str(json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static int
filter_code_json(const struct tool_filter *f, json_t *v)
{
	return json_is_integer(v) && filter_code_matches(f, (long)json_integer_value(v));
}

/* Whether one transaction holds the wanted sender, recipient and code. */
static void
filter_tx(const struct tool_filter *f, json_t *tx, unsigned *need)
{
	size_t i;
	json_t *r;

	if (filter_address_matches(f->from, json_str(tx, "mail_from")))
		*need &= ~(unsigned)NEED_FROM;
	if (filter_code_json(f, json_object_get(tx, "mail_code")) ||
	    filter_code_json(f, json_object_get(tx, "data_code")) ||
	    filter_code_json(f, json_object_get(tx, "code")))
		*need &= ~(unsigned)NEED_CODE;
	json_array_foreach(json_object_get(tx, "rcpt"), i, r)
	{
		if (filter_address_matches(f->to, json_str(r, "to")))
			*need &= ~(unsigned)NEED_TO;
		if (filter_code_json(f, json_object_get(r, "code")))
			*need &= ~(unsigned)NEED_CODE;
	}
}

int
filter_event(const struct tool_filter *f, json_t *ev)
{
	struct filter_progress p;
	const char *start = json_str(ev, "start");
	size_t i;
	json_t *v;

	filter_progress_init(f, &p);
	if (!filter_client_matches(f, json_str(ev, "client")))
		return 0;
	if (f->since[0] != '\0' && (start == NULL || strcmp(start, f->since) < 0))
		return 0;
	if (f->until[0] != '\0' && (start == NULL || strcmp(start, f->until) > 0))
		return 0;
	json_array_foreach(json_object_get(ev, "transactions"), i, v)
	filter_tx(f, v, &p.need);
	if (f->user != NULL &&
	    filter_user_matches(f, json_str(json_object_get(ev, "auth"), "user")))
		p.need &= ~(unsigned)NEED_USER;
	if (f->reason != NULL && json_str(ev, "reason") != NULL &&
	    strcmp(json_str(ev, "reason"), f->reason) == 0)
		p.need &= ~(unsigned)NEED_REASON;
	json_array_foreach(json_object_get(ev, "rules"), i, v)
	if (filter_rule_matches(f->rule, json_str(v, "rule")))
		p.need &= ~(unsigned)NEED_RULE;
	return p.need == 0;
}

void
filter_progress_init(const struct tool_filter *f, struct filter_progress *p)
{
	p->need = 0;
	p->started = 0;
	p->sasl = 0;
	if (f->from != NULL)
		p->need |= NEED_FROM;
	if (f->to != NULL)
		p->need |= NEED_TO;
	if (f->user != NULL)
		p->need |= NEED_USER;
	if (f->code != 0)
		p->need |= NEED_CODE;
	if (f->reason != NULL)
		p->need |= NEED_REASON;
	if (f->rule != NULL)
		p->need |= NEED_RULE;
}

/* Whether text starts with the command verb (any case) and then white space or its end. */
static int
filter_verb(const struct jrecord *r, const char *verb, size_t n)
{
	return r->textlen >= n && strncasecmp(r->text, verb, n) == 0;
}

/* A session's first record: the client's address and the start decide at once. */
static int
filter_first(const struct tool_filter *f, const struct jrecord *r)
{
	char client[128];

	if (f->has_client &&
	    (journal_event_value(r->text, r->textlen, "client", client, sizeof(client)) != 0 ||
	     !filter_client_matches(f, client)))
		return FILTER_NEVER;
	if (f->since[0] != '\0' && strcmp(r->ts, f->since) < 0)
		return FILTER_NEVER;
	if (f->until[0] != '\0' && strcmp(r->ts, f->until) > 0)
		return FILTER_NEVER;
	return FILTER_MAYBE;
}

/*
 * The user an AUTH record or a SASL response names: its text ends in the recorder's marker
 * "[redacted user=NAME]" (NAME escaped), the first "[redacted" in it (what comes before is
 * "AUTH" and a mechanism's name).  0, or -1 when it names none.
 */
static int
filter_record_user(const struct jrecord *r, char *user, size_t size)
{
	static const char mark[] = "[redacted user=";
	const char *m = memmem(r->text, r->textlen, "[redacted", 9), *name;
	size_t n, len;

	if (m == NULL || r->textlen - (size_t)(m - r->text) < sizeof(mark) ||
	    memcmp(m, mark, sizeof(mark) - 1) != 0 || r->text[r->textlen - 1] != ']')
		return -1;
	name = m + sizeof(mark) - 1;
	n = (size_t)(r->text + r->textlen - 1 - name);
	if (n >= size || journal_unescape(name, n, (unsigned char *)user, &len) != 0 ||
	    memchr(user, '\0', len) != NULL)
		return -1;
	user[len] = '\0';
	return 0;
}

/*
 * Whether a client record holds the user the session authenticated as, as its event's
 * auth.user does: only an AUTH command or the response to a 334 can, where the recorder
 * itself wrote the marker (any other line is the client's own text).
 */
static int
filter_record_names_user(const struct tool_filter *f, const struct jrecord *r, int answers_334)
{
	char user[REDACT_USER_MAX * 4];

	if (!answers_334 && !(filter_verb(r, "AUTH", 4) && r->textlen > 4 &&
	                      (r->text[4] == ' ' || r->text[4] == '\t')))
		return 0;
	return filter_record_user(r, user, sizeof(user)) == 0 && filter_user_matches(f, user);
}

/* A client record: MAIL, RCPT, an AUTH naming its user. */
static void
filter_client_record(const struct tool_filter *f, struct filter_progress *p,
                     const struct jrecord *r)
{
	int answers_334 = p->sasl;

	p->started = 1;
	p->sasl = 0;
	if ((p->need & NEED_FROM) && filter_verb(r, "MAIL FROM:", 10) &&
	    filter_address_matches(f->from, r->text + 10))
		p->need &= ~(unsigned)NEED_FROM;
	if ((p->need & NEED_TO) && filter_verb(r, "RCPT TO:", 8) &&
	    filter_address_matches(f->to, r->text + 8))
		p->need &= ~(unsigned)NEED_TO;
	if ((p->need & NEED_USER) && filter_record_names_user(f, r, answers_334))
		p->need &= ~(unsigned)NEED_USER;
}

/* A reply line: its code for --code; a 334 makes the next client record SASL data. */
static void
filter_reply_record(const struct tool_filter *f, struct filter_progress *p,
                    const struct jrecord *r)
{
	int code = r->textlen >= 3 && isdigit((unsigned char)r->text[0]) ? atoi(r->text) : 0;

	p->sasl = code == 334 && (r->textlen == 3 || r->text[3] == ' ');
	if (p->started && (p->need & NEED_CODE) && code != 0 && filter_code_matches(f, code))
		p->need &= ~(unsigned)NEED_CODE;
}

/* An event record: the close's reason, a rule's hit. */
static void
filter_event_record(const struct tool_filter *f, struct filter_progress *p,
                    const struct jrecord *r)
{
	char v[512];

	if ((p->need & NEED_REASON) && r->textlen > 6 && memcmp(r->text, "close ", 6) == 0 &&
	    journal_event_value(r->text, r->textlen, "reason", v, sizeof(v)) == 0 &&
	    strcmp(v, f->reason) == 0)
		p->need &= ~(unsigned)NEED_REASON;
	if ((p->need & NEED_RULE) && r->textlen > 5 && memcmp(r->text, "rule ", 5) == 0) {
		const char *sp = memchr(r->text + 5, ' ', r->textlen - 5);
		size_t n = sp != NULL ? (size_t)(sp - (r->text + 5)) : r->textlen - 5;

		snprintf(v, sizeof(v), "%.*s", (int)n, r->text + 5);
		if (filter_rule_matches(f->rule, v))
			p->need &= ~(unsigned)NEED_RULE;
	}
}

int
filter_record(const struct tool_filter *f, struct filter_progress *p, const struct jrecord *r)
{
	int first = !p->started && r->kind[0] == '*' && r->textlen >= 8 &&
	            (memcmp(r->text, "session ", 8) == 0 || memcmp(r->text, "connect ", 8) == 0);

	if (first && filter_first(f, r) == FILTER_NEVER)
		return FILTER_NEVER;
	if (r->kind[0] == 'C' && r->kind[1] == ':')
		filter_client_record(f, p, r);
	else if (r->kind[0] == '*')
		filter_event_record(f, p, r);
	else if ((r->kind[0] == 'S' || r->kind[0] == 'P') && r->kind[1] == ':')
		filter_reply_record(f, p, r);
	if (p->need == 0)
		return FILTER_MATCH;
	if (r->kind[0] == '*' && r->textlen >= 6 && memcmp(r->text, "close ", 6) == 0)
		return FILTER_NEVER;
	return FILTER_MAYBE;
}
