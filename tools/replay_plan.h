#ifndef SMTPTAP_REPLAY_PLAN_H
#define SMTPTAP_REPLAY_PLAN_H

#include <stddef.h>

#include "tools/journal_read.h"

/*
 * What `smtptap replay` does, worked out from a session's records before anything is sent:
 * the client's octets exactly as recorded (escaping undone, CRLF put back, pieces joined,
 * message content and BDAT chunks), cut at each reply the original client waited for, so
 * that pipelined groups go out as they went.
 */
enum step_kind {
	STEP_SEND,     /* octets to the server */
	STEP_EXPECT,   /* read one reply, compare its code with the recorded one */
	STEP_STARTTLS, /* the TLS handshake, after a 220 to STARTTLS */
	STEP_NOTE,     /* a line of explanation (a skipped command) */
};

struct step {
	enum step_kind kind;
	unsigned char *data; /* SEND: the octets */
	size_t len;
	char *shown;  /* SEND: what to print ("C: ..." as recorded); EXPECT: the recorded reply */
	int code;     /* EXPECT: the recorded code, 0 when none (not compared) */
	int critical; /* EXPECT: stop when it differs (a 354 the content follows, STARTTLS) */
	int verb;     /* SEND: the command's verb (enum smtp_verb), VERB_UNKNOWN for content */
};

struct plan {
	struct step *steps;
	size_t nsteps, cap;
	char why[256]; /* when the session can't be replayed */
};

struct plan_options {
	int starttls;
	const char *auth_user, *auth_password; /* NULL: AUTH skipped */
};

/* A session's records, as collected. */
struct plan_record {
	char kind[3];
	char *text;
	size_t len;
};

/*
 * Builds the plan; 0, or -1 with plan->why set when the session can't be replayed (its
 * content was not recorded, a BDAT chunk is missing, a bad escape).
 */
int plan_build(struct plan *plan, const struct plan_record *recs, size_t n,
               const struct plan_options *o);
void plan_free(struct plan *plan);

#endif
