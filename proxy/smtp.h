#ifndef SMTPTAP_SMTP_H
#define SMTPTAP_SMTP_H

#include <stddef.h>
#include <stdint.h>

/* SMTP syntax the proxy needs to follow a dialogue: command verbs and reply lines. */

enum smtp_verb {
	VERB_UNKNOWN,
	VERB_HELO,
	VERB_EHLO,
	VERB_LHLO,
	VERB_MAIL,
	VERB_RCPT,
	VERB_DATA,
	VERB_BDAT,
	VERB_RSET,
	VERB_QUIT,
	VERB_NOOP,
	VERB_AUTH,
	VERB_STARTTLS,
	VERB_VRFY,
	VERB_EXPN,
	VERB_HELP,
	VERB_XCLIENT,
	VERB_XFORWARD,
	VERB_PROXY, /* a PROXY protocol line: only a balancer's, before anything else */
	/* Not commands: what else a reply can answer. */
	VERB_GREETING,
	VERB_SASL,
	VERB_EOD,
	VERB_LOCAL,
};

struct smtp_command {
	enum smtp_verb verb;
	const unsigned char *arg; /* after the verb and its spaces; NULL when none */
	size_t arglen;
};

struct smtp_reply_line {
	int code; /* 100..599, or 0 when the line is not a reply line */
	int last; /* "250 " or "250" ends a reply; "250-" continues it */
	const unsigned char *text;
	size_t textlen;
};

/* An AUTH argument split as servers split it: "MECHANISM [initial-response]". */
struct smtp_auth {
	const unsigned char *mech; /* the first word (NULL when none), any white space around it */
	size_t mechlen;
	const unsigned char *resp; /* all after the mechanism and its white space; NULL if none */
	size_t resplen;
	size_t resp_word; /* the length of resp's first word: the initial response proper */
};

/* The white space that separates SMTP words for real servers: space, tab, VT, FF, CR. */
int smtp_is_space(unsigned char c);

/* Strips a CRLF or LF line end: the length of line without it. */
size_t smtp_line_len(const unsigned char *line, size_t len);

/* Sorts a client command line (without line end) by its verb. */
void smtp_parse_command(const unsigned char *line, size_t len, struct smtp_command *cmd);

/*
 * Splits an AUTH command's argument (cmd->arg) as servers do (Postfix's smtpd_token: words
 * part at any white space): AUTH PLAIN<TAB>secret is PLAIN with an initial response.
 */
void smtp_parse_auth(const unsigned char *arg, size_t len, struct smtp_auth *a);

/* Whether name is a SASL mechanism name (RFC 4422 3.1: 1-20 of A-Z 0-9 - _, any case). */
int smtp_sasl_name(const unsigned char *name, size_t len);

/* Whether a line (without line end) could be a SASL response: base64 octets only. */
int smtp_sasl_shaped(const unsigned char *line, size_t len);

/* Parses a server reply line (without line end); returns 0, or -1 when it is malformed. */
int smtp_parse_reply(const unsigned char *line, size_t len, struct smtp_reply_line *r);

/* Parses a BDAT argument: "SIZE [LAST]"; returns 0, or -1 when malformed. */
int smtp_parse_bdat(const unsigned char *arg, size_t len, uint64_t *size, int *last);

const char *smtp_verb_name(enum smtp_verb verb);

/* Whether the client must wait for this command's reply before sending more (RFC 2920). */
int smtp_verb_awaits_reply(enum smtp_verb verb);

#endif
