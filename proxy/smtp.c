/* SMTP syntax: a table of verbs (OpenSMTPD's commands[]) and the reply-line grammar. */
#include "proxy/smtp.h"

#include <string.h>
#include <strings.h>

static const struct {
	const char *name;
	enum smtp_verb verb;
} smtp_verbs[] = {
    {"HELO", VERB_HELO},       {"EHLO", VERB_EHLO},         {"LHLO", VERB_LHLO},
    {"MAIL", VERB_MAIL},       {"RCPT", VERB_RCPT},         {"DATA", VERB_DATA},
    {"BDAT", VERB_BDAT},       {"RSET", VERB_RSET},         {"QUIT", VERB_QUIT},
    {"NOOP", VERB_NOOP},       {"AUTH", VERB_AUTH},         {"STARTTLS", VERB_STARTTLS},
    {"VRFY", VERB_VRFY},       {"EXPN", VERB_EXPN},         {"HELP", VERB_HELP},
    {"XCLIENT", VERB_XCLIENT}, {"XFORWARD", VERB_XFORWARD},
    {"PROXY", VERB_PROXY},
};

static const char *smtp_extra_names[] = {
    [VERB_GREETING] = "greeting",
    [VERB_SASL] = "sasl",
    [VERB_EOD] = "end-of-data",
    [VERB_LOCAL] = "local",
};

int
smtp_is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r';
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

void
smtp_parse_command(const unsigned char *line, size_t len, struct smtp_command *cmd)
{
	size_t i, start = 0, verblen = 0;

	cmd->verb = VERB_UNKNOWN;
	cmd->arg = NULL;
	cmd->arglen = 0;
	/* Split as servers do (Postfix's smtpd_token): " XCLIENT" is XCLIENT to them. */
	while (start < len && smtp_is_space(line[start]))
		start++;
	while (start + verblen < len && !smtp_is_space(line[start + verblen]))
		verblen++;
	for (i = 0; i < sizeof(smtp_verbs) / sizeof(smtp_verbs[0]); i++) {
		const char *name = smtp_verbs[i].name;
		if (strlen(name) == verblen &&
		    strncasecmp(name, (const char *)line + start, verblen) == 0) {
			cmd->verb = smtp_verbs[i].verb;
			break;
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

int
smtp_sasl_name(const unsigned char *name, size_t len)
{
	size_t i;

	if (name == NULL || len == 0 || len > 20)
		return 0;
	for (i = 0; i < len; i++) {
		unsigned char c = name[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return 0;
	}
	return 1;
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

int
smtp_parse_bdat(const unsigned char *arg, size_t len, uint64_t *size, int *last)
{
	size_t i = 0;
	uint64_t n = 0;

	if (arg == NULL || len == 0 || arg[0] < '0' || arg[0] > '9')
		return -1;
	for (; i < len && arg[i] >= '0' && arg[i] <= '9'; i++) {
		if (n > (UINT64_MAX - 9) / 10)
			return -1;
		n = n * 10 + (uint64_t)(arg[i] - '0');
	}
	*size = n;
	*last = 0;
	while (i < len && (arg[i] == ' ' || arg[i] == '\t'))
		i++;
	if (i == len)
		return 0;
	if (len - i == 4 && strncasecmp((const char *)arg + i, "LAST", 4) == 0) {
		*last = 1;
		return 0;
	}
	return -1;
}

const char *
smtp_verb_name(enum smtp_verb verb)
{
	size_t i;

	for (i = 0; i < sizeof(smtp_verbs) / sizeof(smtp_verbs[0]); i++)
		if (smtp_verbs[i].verb == verb)
			return smtp_verbs[i].name;
	if (verb < sizeof(smtp_extra_names) / sizeof(smtp_extra_names[0]) &&
	    smtp_extra_names[verb] != NULL)
		return smtp_extra_names[verb];
	return "unknown";
}

int
smtp_verb_awaits_reply(enum smtp_verb verb)
{
	return verb == VERB_DATA || verb == VERB_AUTH || verb == VERB_STARTTLS || verb == VERB_SASL;
}
