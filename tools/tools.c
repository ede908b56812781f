/* `smtptap WORD ...`: the tools' dispatch. */
#include "tools/tools.h"

#include <string.h>

static const struct {
	const char *name;
	int (*run)(int, char **); /* a tool's entry point, given its own argv */
} tools[] = {
    {"show", tool_show_main},
    {"sessions", tool_sessions_main},
    {"tail", tool_tail_main},
    {"replay", tool_replay_main},
};

/* The tools[] row word names, or -1. */
static int
tools_find(const char *word)
{
	for (size_t i = 0; i < sizeof(tools) / sizeof(tools[0]); i++)
		if (strcmp(word, tools[i].name) == 0)
			return (int)i;
	return -1;
}

int
tools_main(int argc, char **argv)
{
	int i;

	if (argc < 2 || (i = tools_find(argv[1])) < 0)
		return -1;
	return tools[i].run(argc - 1, argv + 1);
}

int
tools_has(const char *word)
{
	return tools_find(word) >= 0;
}
