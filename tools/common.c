/* The options every tool takes (--log-dir, --events) and their defaults. */
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

void
tool_common_finish(struct tool_common *c)
{
	if (c->events != NULL)
		return;
	snprintf(c->events_buf, sizeof(c->events_buf), "%s/events.jsonl", c->log_dir);
	c->events = c->events_buf;
}
