#ifndef SMTPTAP_TOOLS_COMMON_H
#define SMTPTAP_TOOLS_COMMON_H

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

#endif
