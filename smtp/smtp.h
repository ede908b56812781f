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
	VERB_COUNT
};

/* The command verbs the parser knows lie between these (the rest are reply subjects). */
#define VERB_FIRST_COMMAND VERB_HELO
#define VERB_LAST_COMMAND VERB_PROXY

/*
 * The rules that see a command besides the "command" rules: a grammar-level name for it, so
 * that the grammar does not depend on filters/ (rules_command_scopes() maps it to scopes).
 */
enum smtp_rule_class {
	SMTP_RULES_COMMAND, /* only the "command" rules */
	SMTP_RULES_HELO,
	SMTP_RULES_MAIL,
	SMTP_RULES_RCPT,
};

/* What the session does with a command: one kind of handling each (OpenSMTPD's commands[]). */
enum smtp_handler {
	SMTP_HANDLE_RELAY,    /* forwarded as it is (after the rules), its reply relayed */
	SMTP_HANDLE_REFUSE,   /* never forwarded: the proxy refuses it (a client's XCLIENT) */
	SMTP_HANDLE_STARTTLS, /* answered by the proxy or relayed, by --tls-mode; TLS follows */
	SMTP_HANDLE_SASL,     /* SASL data follows each 334; its argument may be a secret */
	SMTP_HANDLE_DATA,     /* message content follows its 354, up to <CRLF>.<CRLF> */
	SMTP_HANDLE_BDAT,     /* a chunk of exactly the size it names follows, no lines */
};

/* What a command changes in the session's tracked state (and the event it leads to). */
enum smtp_track {
	SMTP_TRACK_NONE,
	SMTP_TRACK_HELO, /* the client's name */
	SMTP_TRACK_MAIL, /* a transaction begins */
	SMTP_TRACK_RCPT, /* a recipient of the transaction */
	SMTP_TRACK_RSET, /* the transaction is forgotten */
};

/* One row of the command table: everything smtptap decides by a verb, in one place. */
struct smtp_verb_info {
	const char *name; /* as sent ("MAIL"), or lower case for what is not a command */
	enum smtp_rule_class rules;
	int awaits_reply; /* the client must wait for the reply before sending more (RFC 2920) */
	enum smtp_handler handler;
	enum smtp_track track;
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

struct evbuffer;

/* A view of one line, or of a piece of an over-long one, at the head of an evbuffer. */
struct smtp_line {
	const unsigned char *data; /* valid until the buffer is changed */
	size_t len;                /* octets, line end included */
	int complete;              /* ends with LF */
};

/*
 * The next line of in after its first skip octets, capped at max octets before it is read:
 * returns 1 with a whole line (up to and with its LF) or, when max octets hold no LF, a piece
 * of the line; 0 when more input is needed (or memory ran out).  A piece never ends in CR:
 * it stops one short, so that a CR and the LF after it stay together in the next piece, one
 * CRLF however the input was cut.  *scanned (may be NULL) carries across calls how far the
 * search for LF already went in a partial line, so that a slow line is not searched again
 * from its start; the caller zeroes it when it takes the line.
 */
int smtp_line_next(struct evbuffer *in, size_t skip, size_t max, size_t *scanned,
                   struct smtp_line *l);

/*
 * The flat-buffer variant: the first line of the len octets at p, up to and with its LF, or
 * all of them (complete 0) when they hold no LF.  For text already whole in memory (a held
 * reply, a chunk as read, input that will never be relayed); len 0 gives an empty line.
 */
void smtp_line_cut(const unsigned char *p, size_t len, struct smtp_line *l);

/*
 * As smtp_line_cut, but a bare CR ends a line too: a line ends at its LF, its CRLF, or a CR
 * that no LF follows (one last in p included).  For message content, where a bare CR is a
 * line end to the strict reader (SMTP smuggling hides "\r.\r" there), and for texts whose
 * own breaks may be any.
 */
void smtp_line_cut_any(const unsigned char *p, size_t len, struct smtp_line *l);

/* The octets of a cut line without its line end (LF, CRLF or a bare CR). */
size_t smtp_line_text(const struct smtp_line *l);

/*
 * Rebuilds one multi-line server reply after lines were removed or edited.  lines[i]
 * (lens[i] octets, "250-SIZE 100", no line end) are the n >= 1 lines as they would go out,
 * removed[i] set for those to drop.  Returns a heap buffer, length in *outlen, holding the
 * kept lines each ending in CRLF, the last with "NNN " and the others with "NNN-" (a bare
 * "NNN" already last stays so); a line that is not "NNN" followed by a separator or nothing
 * is copied unchanged.  When every line is marked, the last one is kept and *all_removed is
 * set, for the caller to record a warning.  NULL on ENOMEM.
 */
unsigned char *smtp_reply_rebuild(const unsigned char *const *lines, const size_t *lens,
                                  const int *removed, size_t n, size_t *outlen, int *all_removed);

/* Strips a CRLF or LF line end: the length of line without it. */
size_t smtp_line_len(const unsigned char *line, size_t len);

/*
 * A content line (of DATA) as the message holds it: *line moved past the stuffing dot, the
 * length without the line end.  A lone "." is content, not a stuffed empty line: one that
 * reaches a reader of content ended bare, or followed a bare line end, since the end of data
 * (only <CRLF>.<CRLF>) was taken before.  The proxy's message rules and --test-rules both
 * read content this way.
 */
size_t smtp_content_unstuff(const unsigned char **line, size_t len);

/* Sorts a client command line (without line end) by its verb. */
void smtp_parse_command(const unsigned char *line, size_t len, struct smtp_command *cmd);

/*
 * Splits an AUTH command's argument (cmd->arg) as servers do (Postfix's smtpd_token: words
 * part at any white space): AUTH PLAIN<TAB>secret is PLAIN with an initial response.
 */
void smtp_parse_auth(const unsigned char *arg, size_t len, struct smtp_auth *a);

/*
 * Whether name is a SASL mechanism name (RFC 4422 3.1: 1-20 of A-Z 0-9 - _, any case) that
 * can't be a base64 credential: one with a '-' or '_', or a known name of letters and digits.
 */
int smtp_sasl_name(const unsigned char *name, size_t len);

/* Whether a line (without line end) could be a SASL response: base64 octets only. */
int smtp_sasl_shaped(const unsigned char *line, size_t len);

/*
 * The part of an AUTH command line (cmd parsed from it) that rules may see and a log may
 * keep: the verb and the mechanism, never the initial response after them; the verb alone
 * when the first word is no SASL mechanism name (it may be the credential itself).
 */
size_t smtp_auth_visible(const unsigned char *line, size_t len, const struct smtp_command *cmd);

/* Parses a server reply line (without line end); returns 0, or -1 when it is malformed. */
int smtp_parse_reply(const unsigned char *line, size_t len, struct smtp_reply_line *r);

/* The largest BDAT size a server takes: Postfix reads it into an off_t. */
#define SMTP_BDAT_MAX ((uint64_t)INT64_MAX)

/*
 * Parses a BDAT argument (cmd->arg: no white space before it) as Postfix's smtpd does:
 * "SIZE [LAST]", words apart at any white space (smtpd_token), white space after them
 * allowed, SIZE all digits up to SMTP_BDAT_MAX, LAST in any case.  Returns 0, or -1 when
 * malformed (*size and *last untouched then).
 */
int smtp_parse_bdat(const unsigned char *arg, size_t len, uint64_t *size, int *last);

/* The table's row for a verb (VERB_UNKNOWN's for one out of range); never NULL. */
const struct smtp_verb_info *smtp_verb_info(enum smtp_verb verb);

const char *smtp_verb_name(enum smtp_verb verb);

/* Whether the client must wait for this command's reply before sending more (RFC 2920). */
int smtp_verb_awaits_reply(enum smtp_verb verb);

#endif
