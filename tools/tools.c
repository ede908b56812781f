/* `smtptap WORD ...`: the tools' dispatch and the options they share. */
#include "tools/tools.h"

#include <stdio.h>
#include <string.h>

/* The daemon's default (proxy/options.c). */
#define TOOLS_LOG_DIR_DEFAULT "smtptap-logs"

static const struct {
	const char *name;
	int (*run)(int, char **); /* a tool's entry point, given its own argv */
} tools[] = {
    {"show", tool_show_main},
    {"sessions", tool_sessions_main},
    {"tail", tool_tail_main},
    {"replay", tool_replay_main},
};

int
tools_main(int argc, char **argv)
{
	size_t i;

	if (argc < 2)
		return -1;
	for (i = 0; i < sizeof(tools) / sizeof(tools[0]); i++)
		if (strcmp(argv[1], tools[i].name) == 0)
			return tools[i].run(argc - 1, argv + 1);
	return -1;
}

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

void
tool_common_finish(struct tool_common *c)
{
	if (c->events != NULL)
		return;
	snprintf(c->events_buf, sizeof(c->events_buf), "%s/events.jsonl", c->log_dir);
	c->events = c->events_buf;
}
