#ifndef SMTPTAP_TRIAL_H
#define SMTPTAP_TRIAL_H

#include <stddef.h>

#include "filters/rules.h"

/*
 * smtptap --test-rules FILE... --transcript TRANSCRIPT: runs the lines of a recorded session
 * through the rules, each line in the scopes the proxy would have given it, and prints on
 * stdout what each rule would have done, so that a policy can be tried on real traffic before
 * it goes live.  argv[0] is "--test-rules" itself; rule files may be preceded by "--rules",
 * "--transcript=T" works too.  Only lines some rule acts on are printed:
 *
 *	TRANSCRIPT:LINE: C: MAIL FROM:<a@evil.example>
 *		FILE:LINE: mail REJECT: 550 5.7.1 Sender domain not permitted
 *
 * then a summary "N lines tried, M rule hits".  Returns the exit status: 0 (whatever the rules
 * did), 1 on a bad rule file or transcript, 2 on a usage error.
 */
int rules_trial_main(int argc, char **argv);

/*
 * How --test-rules reads a recorded client command: its verb (an enum smtp_verb), the scopes
 * of its rules (scopes_command()) and, in *seen, how much of the line the rules see (an AUTH
 * line up to its mechanism).  The proxy's parser and command table, so the two agree.
 */
int trial_command_scopes(const unsigned char *p, size_t n, enum rule_scope scopes[2], size_t *seen);

#endif
