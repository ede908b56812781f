#ifndef SMTPTAP_CHECK_H
#define SMTPTAP_CHECK_H

/*
 * smtptap --check-rules FILE...: loads every rule file as the proxy would and exits.
 * argv[0] is "--check-rules" itself, the files follow (each may be preceded by "--rules", so
 * the proxy's own arguments can be reused).  Errors go to stderr as FILE:LINE:COLUMN: message;
 * on success one line "N rules in M files OK" goes to stdout.  Returns the exit status:
 * 0 when every rule is valid, 1 on any error, 2 on a usage error.
 */
int rules_check_main(int argc, char **argv);

#endif
