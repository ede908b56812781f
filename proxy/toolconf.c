/*
 * The tools' -c FILE: the daemon's configuration, read for where it records.  Here, above
 * tools/, since the configuration file's reader belongs to the daemon's options.
 */
#include "proxy/toolconf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/config.h"
#include "tools/tools.h"

/* The value of -c FILE, --config FILE or --config=FILE at argv[i], and how many words. */
static int
toolconf_option(int argc, char **argv, int i, const char **file)
{
	if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
		*file = argv[i + 1];
		return 2;
	}
	if (strncmp(argv[i], "--config=", 9) == 0) {
		*file = argv[i] + 9;
		return 1;
	}
	return 0;
}

/*
 * Appends "--NAME VALUE" for the file's setting NAME, the last one the file gives; -1 after a
 * message when that one has no value (the daemon refuses it too).
 */
static int
toolconf_take(const struct config *cfg, const char *name, char **out, int *n, char *flag)
{
	const struct config_entry *last = NULL;

	for (size_t i = 0; i < cfg->n; i++)
		if (strcmp(cfg->entries[i].name, name) == 0)
			last = &cfg->entries[i];
	if (last == NULL)
		return 0;
	if (last->value == NULL) {
		fprintf(stderr, "%s: --%s: missing value\n", last->where, name);
		return -1;
	}
	out[(*n)++] = flag;
	out[(*n)++] = last->value;
	return 0;
}

int
toolconf_args(int argc, char **argv, int *nargc, char ***nargv)
{
	static char log_dir[] = "--log-dir", events[] = "--events";
	static struct config *cfg; /* kept: the values are the new argv's */
	const char *file = NULL;
	char **out;
	int i, n = 0, errors = 0, skip;

	if (argc < 2 || !tools_has(argv[1]))
		return -1;
	if ((out = calloc((size_t)argc + 5, sizeof(*out))) == NULL) {
		fprintf(stderr, "smtptap %s: out of memory\n", argv[1]);
		return 2;
	}
	out[n++] = argv[0];
	out[n++] = argv[1];
	for (i = 2; i < argc && file == NULL; i++)
		(void)toolconf_option(argc, argv, i, &file);
	if (file != NULL) {
		cfg = config_read(file, stderr, &errors);
		if (cfg == NULL || errors > 0 ||
		    toolconf_take(cfg, "log-dir", out, &n, log_dir) != 0 ||
		    toolconf_take(cfg, "events", out, &n, events) != 0) {
			fprintf(stderr, "smtptap %s: %s: not read\n", argv[1], file);
			free(out);
			return 2;
		}
	}
	for (i = 2; i < argc; i += skip)
		if ((skip = toolconf_option(argc, argv, i, &file)) == 0) {
			out[n++] = argv[i];
			skip = 1;
		}
	out[n] = NULL;
	*nargc = n;
	*nargv = out;
	return 0;
}
