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
/*
 * A tool's own arguments at argv[*i]: 1 when it took argv[*i] (and any value after it), 0 when
 * it is not one of them, -1 on a problem it has written.
 */
typedef int tool_arg_fn(void *arg, int argc, char **argv, int *i);
/* What tool_common_args returns when the tool goes on. */
#define TOOL_ARGS_OK (-1)
/*
 * Walks argv: --log-dir, --events and --help here (usage goes to stdout), the rest through
 * own(); what own() does not take is "smtptap TOOL: unknown argument".  TOOL_ARGS_OK, or the
 * status the tool exits with: 0 after --help, 2 on a problem.
 */
int tool_common_args(struct tool_common *c, int argc, char **argv, const char *tool,
                     const char *usage, tool_arg_fn *own, void *arg);
/* Works out the events file's default once --log-dir is known. */
void tool_common_finish(struct tool_common *c);

#endif
