/* The options every tool takes (--log-dir, --events, --help) and their defaults. */
#include "tools/common.h"

#include <stdio.h>
#include <string.h>

/* The daemon's default (proxy/options.c). */
#define TOOLS_LOG_DIR_DEFAULT "smtptap-logs"

void
tool_common_init(struct tool_common *c)
{
	c->log_dir = TOOLS_LOG_DIR_DEFAULT;
	c->events = NULL;
	c->events_buf[0] = '\0';
}

int
tool_common_option(struct tool_common *c, int argc, char **argv, int *i)
{
	const char *opt = argv[*i];
	const char **dst;

	if (strcmp(opt, "--log-dir") == 0)
		dst = &c->log_dir;
	else if (strcmp(opt, "--events") == 0)
		dst = &c->events;
	else
		return 0;
	if (*i + 1 >= argc || argv[*i + 1][0] == '\0') {
		fprintf(stderr, "smtptap: %s needs a value\n", opt);
		return -1;
	}
	*dst = argv[++*i];
	return 1;
}

int
tool_common_args(struct tool_common *c, int argc, char **argv, const char *tool, const char *usage,
                 tool_arg_fn *own, void *arg)
{
	int i, k;

	tool_common_init(c);
	for (i = 1; i < argc; i++) {
		if ((k = tool_common_option(c, argc, argv, &i)) == 0) {
			if (strcmp(argv[i], "--help") == 0) {
				fputs(usage, stdout);
				return 0;
			}
			k = own(arg, argc, argv, &i);
		}
		if (k == 0)
			fprintf(stderr, "smtptap %s: unknown argument %s\n%s", tool, argv[i],
			        usage);
		if (k <= 0)
			return 2;
	}
	return TOOL_ARGS_OK;
}

void
tool_common_finish(struct tool_common *c)
{
	if (c->events != NULL)
		return;
	snprintf(c->events_buf, sizeof(c->events_buf), "%s/events.jsonl", c->log_dir);
	c->events = c->events_buf;
}
