#ifndef SMTPTAP_TOOLS_H
#define SMTPTAP_TOOLS_H

/*
 * The tools in the smtptap binary: `smtptap WORD ...` where WORD names one (show, sessions,
 * tail, replay).  Each reads --log-dir (default as the daemon's) and --events (default
 * LOGDIR/events.jsonl) and has --help.
 */

/* Runs the tool argv[1] names; -1 when argv[1] is not a tool's name (the daemon runs). */
int tools_main(int argc, char **argv);

/* Options every tool takes. */
struct tool_common {
	const char *log_dir;
	const char *events;
	char events_buf[4096];
};

/* Sets the defaults. */
void tool_common_init(struct tool_common *c);
/* Takes --log-dir/--events at argv[*i]: 1 if it was one, 0 if not, -1 on a missing value. */
int tool_common_option(struct tool_common *c, int argc, char **argv, int *i);
/* Works out the events file's default once --log-dir is known. */
void tool_common_finish(struct tool_common *c);

int tool_show_main(int argc, char **argv);
int tool_sessions_main(int argc, char **argv);
int tool_tail_main(int argc, char **argv);
int tool_replay_main(int argc, char **argv);

#endif
