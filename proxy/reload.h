#ifndef SMTPTAP_RELOAD_H
#define SMTPTAP_RELOAD_H

struct proxy;

/* Keeps the command line, which each reload applies again over the file. */
void reload_init(int argc, char **argv);

/*
 * SIGHUP with --config: reads the file and the command line again and, when all of it is
 * valid and the rules and TLS contexts load, puts the new settings in force for sessions
 * that start from now on, all together.  A problem anywhere keeps the whole old
 * configuration (and is logged).  Settings only a restart can change (listeners, workers,
 * log directory, keep-days, events file, user, ...) keep their old values, with a line saying so.
 * Returns 0 when the new configuration is in force.
 */
int reload_config(struct proxy *px);

/*
 * Whether SO_MARK mark can be set on an upstream socket as the process runs now (0; mark 0
 * always can), else -1 with errno: start-up and each reload try it before taking the value.
 */
int reload_mark_settable(unsigned mark);

#endif
