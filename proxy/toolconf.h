#ifndef SMTPTAP_TOOLCONF_H
#define SMTPTAP_TOOLCONF_H

/*
 * `smtptap TOOL -c FILE ...`: the tools read the daemon's configuration file for its
 * log-dir and events, as the daemon given the same file would.  Builds the argv the tool
 * runs with: the tool's word, --log-dir and --events from the file, then the arguments
 * given but -c FILE (so that a --log-dir given on the command line still wins).  0 with
 * *nargv (to free) when argv names a tool, -1 when it does not; 2 after a message when the
 * file can't be read or holds a bad line.
 */
int toolconf_args(int argc, char **argv, int *nargc, char ***nargv);

#endif
