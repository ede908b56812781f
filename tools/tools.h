#ifndef SMTPTAP_TOOLS_H
#define SMTPTAP_TOOLS_H

/*
 * The tools in the smtptap binary: `smtptap WORD ...` where WORD names one (show, sessions,
 * tail, replay).  Each reads --log-dir (default as the daemon's) and --events (default
 * LOGDIR/events.jsonl) and has --help; proxy/toolconf.c takes both from the daemon's
 * configuration file (-c FILE) before a tool runs.
 */

/* Runs the tool argv[1] names; -1 when argv[1] is not a tool's name (the daemon runs). */
int tools_main(int argc, char **argv);
/* Whether word names a tool. */
int tools_has(const char *word);

int tool_show_main(int argc, char **argv);
int tool_sessions_main(int argc, char **argv);
int tool_tail_main(int argc, char **argv);
int tool_replay_main(int argc, char **argv);

#endif
