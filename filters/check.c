/* The --check-rules mode: compile every rule, report every error, start nothing (smtpd -n). */
#include "filters/check.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filters/rules.h"

/*
 * Collects the file names of argv[1..] in place, dropping "--rules" before a name;
 * -1 on an unknown option.
 */
static int
check_files(int argc, char **argv, const char **files)
{
	int i, n = 0;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--rules") == 0 && i + 1 < argc)
			i++;
		else if (argv[i][0] == '-' && argv[i][1] != '\0') {
			fprintf(stderr, "smtptap: %s: unknown option '%s'\n", argv[0], argv[i]);
			return -1;
		}
		files[n++] = argv[i];
	}
	return n;
}

int
rules_check_main(int argc, char **argv)
{
	const char **files;
	struct ruleset *rs;
	int n, nrules;

	if ((files = calloc(argc > 0 ? (size_t)argc : 1, sizeof(*files))) == NULL) {
		fprintf(stderr, "smtptap: %s\n", strerror(ENOMEM));
		return 1;
	}
	if ((n = check_files(argc, argv, files)) <= 0) {
		if (n == 0)
			fprintf(stderr, "smtptap: --check-rules: no rule file given\n");
		free(files);
		return 2;
	}
	rs = rules_load_warn(files, n, stderr, stderr);
	free(files);
	if (rs == NULL)
		return 1;
	nrules = rules_count(rs);
	printf("%d rule%s in %d file%s OK\n", nrules, nrules == 1 ? "" : "s", n, n == 1 ? "" : "s");
	rules_free(rs);
	return fflush(stdout) == 0 ? 0 : 1;
}
