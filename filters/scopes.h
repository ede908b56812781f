#ifndef SMTPTAP_SCOPES_H
#define SMTPTAP_SCOPES_H

#include "filters/rules.h"

/*
 * Which rules see a client command: the scopes of its verb (an enum smtp_verb), read from the
 * command table.  The proxy and --test-rules both ask here, so they cannot disagree.  Returns
 * the number of scopes written (1 or 2), the verb's own scope first.
 */
int scopes_command(int verb, enum rule_scope scopes[2]);

#endif
