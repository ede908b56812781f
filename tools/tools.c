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

int
tools_has(const char *word)
{
	for (size_t i = 0; i < sizeof(tools) / sizeof(tools[0]); i++)
		if (strcmp(word, tools[i].name) == 0)
			return 1;
	return 0;
}
