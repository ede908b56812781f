/* The scopes of a client command: the command table's rule class as rule scopes. */
#include "filters/scopes.h"

#include "smtp/smtp.h"

int
scopes_command(int verb, enum rule_scope scopes[2])
{
	switch (smtp_verb_info((enum smtp_verb)verb)->rules) {
	case SMTP_RULES_HELO:
		scopes[0] = SCOPE_HELO;
		break;
	case SMTP_RULES_MAIL:
		scopes[0] = SCOPE_MAIL;
		break;
	case SMTP_RULES_RCPT:
		scopes[0] = SCOPE_RCPT;
		break;
	case SMTP_RULES_COMMAND:
	default:
		scopes[0] = SCOPE_COMMAND;
		return 1;
	}
	scopes[1] = SCOPE_COMMAND;
	return 2;
}
