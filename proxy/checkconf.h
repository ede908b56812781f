#ifndef SMTPTAP_CHECKCONF_H
#define SMTPTAP_CHECKCONF_H

struct options;

/*
 * --check-config (as `nginx -t`, `postfix check`): with the options already parsed (and
 * nproblems found doing it, each already written), loads and compiles the rules, loads the
 * certificate and key and checks that they match, and checks that the log directory and the
 * files a SIGHUP re-reads are accessible to --user.  Binds nothing, resolves nothing.
 * Prints `configuration ok` (exit status 0) or every problem (1).
 */
int checkconf_main(const struct options *o, int nproblems);

#endif
