#ifndef SMTPTAP_RULES_H
#define SMTPTAP_RULES_H

#include <stddef.h>
#include <stdio.h>

/*
 * Filter rules (issue 3): one rule a line,
 *
 *	SCOPE  [!]/PATTERN/FLAGS  ACTION  [TEXT]
 *
 * A line whose first non-blank character is '#' is a comment (a '#' later in a line is part
 * of the pattern or the text: replies and headers may contain one), blank lines are skipped,
 * fields are separated by spaces or tabs, TEXT runs to the end of the line without its
 * trailing blanks.  Scope and action names are matched without regard to case.  "\/" in a
 * pattern is a slash; any other backslash sequence goes to PCRE2 as written.  Flags: i x s m
 * u g; g only matters to REWRITE.  Every pattern is compiled once, with the JIT where there
 * is one; CR, LF and CRLF all count as newlines for ^ $ and '.' under m (a folded header
 * keeps its line breaks).  Columns in errors count octets from 1.
 *
 * Lines are given without their final line end, as lengths: they may hold NUL and invalid
 * UTF-8; a 'u' pattern never fails on invalid UTF-8, it just does not match across it.
 */

enum rule_scope {
	SCOPE_HELO,
	SCOPE_MAIL,
	SCOPE_RCPT,
	SCOPE_COMMAND,
	SCOPE_HEADER,
	SCOPE_BODY,
	SCOPE_BANNER,
	SCOPE_REPLY,
	SCOPE_CAPABILITY,
	SCOPE_SENDER,    /* the address of MAIL FROM, parsed (smtp/address.h) */
	SCOPE_RECIPIENT, /* the address of RCPT TO, parsed */
	SCOPE_CLIENT,    /* "ADDRESS NAME" of the client, once at connect */
	SCOPE_COUNT
};

enum rule_action {
	ACT_NONE, /* as a verdict: no rule ended the evaluation, the line goes on */
	ACT_REJECT,
	ACT_REWRITE,
	ACT_IGNORE,
	ACT_PREPEND,
	ACT_WARN,
	ACT_DISCONNECT,
	ACT_PASS
};

#define RULES_REJECT_DEFAULT "550 5.7.1 Rejected by policy"
#define RULES_DISCONNECT_DEFAULT "421 4.7.0 Closing connection"
#define RULES_CLIENT_REJECT_DEFAULT "554 5.7.1 Access denied"

struct ruleset;

/* One rule that acted on a line, for the transcript and the session's JSON event. */
struct rule_hit {
	int rule;         /* 0 .. rules_count() - 1, in file order */
	const char *file; /* owned by the ruleset */
	unsigned int line;
	enum rule_scope scope;
	enum rule_action action;
	int failed; /* the rule could not be evaluated (match limit, ...): see tempfail */
	const char *text;          /* reply, WARN or PREPEND text, or why it failed; may be NULL */
	const unsigned char *orig; /* the whole line as this rule saw it */
	size_t orig_len;
	const unsigned char *repl; /* REWRITE: the whole line after it, else NULL */
	size_t repl_len;
};

/*
 * What rules_apply() decided for one line.  Zero it (or rule_outcome_init()) once, reuse it
 * for every line (its buffers are kept), rule_outcome_free() it at the end.  Everything it
 * points to stays valid until the next rules_apply() or reset on it, and while the ruleset
 * lives.
 */
struct rule_outcome {
	enum rule_action verdict;  /* NONE, PASS (send line), REJECT, IGNORE, DISCONNECT */
	const unsigned char *line; /* the line to send: the caller's or a rewritten one */
	size_t len;
	int rewritten;        /* line differs from the caller's (a REWRITE acted) */
	const char *reply;    /* REJECT/DISCONNECT: the reply, without CRLF */
	int tempfail;         /* REJECT because a rule failed on a client's line: reply is 451 */
	const char **prepend; /* PREPEND lines to insert before this one, in order */
	size_t nprepend;
	struct rule_hit *hits; /* every rule that acted, in order */
	size_t nhits;
	size_t nwarnings; /* hits that are WARN or failed */

	/* private */
	unsigned char *buf[3]; /* two for REWRITEs, one for rules_apply_envelope() */
	size_t bufsize[3];
	size_t hitsize, prependsize;
};

/*
 * Reads and compiles the rule files in the order given.  Returns NULL when any file has an
 * error, after printing every error of every file to errors (if not NULL), one a line, as
 * "FILE:LINE:COLUMN: message" ("FILE:0:0: ..." when the file cannot be read).  nfiles may be
 * 0: an empty ruleset.  The ruleset is reference counted, starting at 1.
 */
struct ruleset *rules_load(const char *const *files, int nfiles, FILE *errors);
/* The same, and warnings (nested quantifiers...) to warnings if not NULL: --check-rules. */
struct ruleset *rules_load_warn(const char *const *files, int nfiles, FILE *errors,
                                FILE *warnings);

/* Takes one more reference (a session keeps the rules it started with across a reload). */
struct ruleset *rules_ref(struct ruleset *);

/* Drops a reference; the last one frees the ruleset.  NULL is fine. */
void rules_free(struct ruleset *);

/* Rules and files loaded, and a rule's origin by index (for hit counters in the event). */
int rules_count(const struct ruleset *);
int rules_nfiles(const struct ruleset *);
void rules_describe(const struct ruleset *, int rule, const char **file, unsigned int *line,
                    enum rule_scope *, enum rule_action *);

/* Whether any header or body rule REJECTs or DISCONNECTs: then messages must be held. */
int rules_holds_messages(const struct ruleset *);

/* Whether any rule has this scope (e.g. a header/body rule means CHUNKING must go). */
int rules_has_scope(const struct ruleset *, enum rule_scope);

/*
 * Runs one line through the rules of the given scopes, all of them merged in file order
 * (files in the order loaded, then line order), whatever the order of scopes[].  The core
 * passes, for instance:
 *	HELO/EHLO/LHLO	{ SCOPE_HELO, SCOPE_COMMAND }	MAIL	{ SCOPE_MAIL, SCOPE_COMMAND }
 *	RCPT		{ SCOPE_RCPT, SCOPE_COMMAND }	other	{ SCOPE_COMMAND }
 *	header		{ SCOPE_HEADER }		body	{ SCOPE_BODY } (un-stuffed)
 *	greeting line	{ SCOPE_BANNER, SCOPE_REPLY }
 *	EHLO reply line after the first		{ SCOPE_CAPABILITY, SCOPE_REPLY }
 *	any other reply line			{ SCOPE_REPLY }
 * always with the whole line: a capability rule sees it without its first four octets
 * ("250-") and its REWRITE replaces only that part.
 *
 * REWRITE, WARN and PREPEND go on with the (rewritten) line; REJECT, IGNORE, DISCONNECT
 * and PASS end the evaluation.  A negated rule acts when its pattern does not match.  A rule
 * whose match fails (match limit) is skipped and recorded as a failed hit.  Resets out
 * first.  Returns out->verdict, or -1 when memory ran out (the caller ends the session).
 * rs may be NULL (no rules).
 */
int rules_apply(const struct ruleset *rs, const enum rule_scope *scopes, int nscopes,
                const unsigned char *line, size_t len, struct rule_outcome *out);

/*
 * A MAIL or RCPT line: its address (parsed from arg, argoff octets into the line, as
 * smtp/address.h reads it) goes through the rules of addrscope (SCOPE_SENDER or
 * SCOPE_RECIPIENT) first, then the line, rebuilt with the rewritten address if a REWRITE acted
 * ("MAIL FROM:<new>" and the parameters as they came), through the line scopes.  A PASS or a
 * refusal of the address ends the evaluation.  The hits of both are in out.  Returns as
 * rules_apply().
 */
int rules_apply_envelope(const struct ruleset *rs, enum rule_scope addrscope,
                         const enum rule_scope *scopes, int nscopes, const unsigned char *line,
                         size_t len, size_t argoff, struct rule_outcome *out);

void rule_outcome_init(struct rule_outcome *);
void rule_outcome_reset(struct rule_outcome *); /* forgets the last line, keeps buffers */
void rule_outcome_free(struct rule_outcome *);

/* Names as written in rule files ("capability", "REJECT"); "?" when out of range. */
const char *rules_scope_name(enum rule_scope);
const char *rules_action_name(enum rule_action);

#endif
