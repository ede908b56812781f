#ifndef SMTPTAP_CONFIG_H
#define SMTPTAP_CONFIG_H

#include <stddef.h>
#include <stdio.h>

/* One setting of a configuration file: the long option's name and its value. */
struct config_entry {
	char *name;
	char *value; /* NULL: the line had the name alone (a flag) */
	char where[320]; /* "FILE:LINE", the prefix of any message about it */
};

/* A configuration file read into settings, in file order. */
struct config {
	struct config_entry *entries;
	size_t n;
};

/*
 * Reads FILE: one setting a line (`name value`), blank lines and `#` comments skipped.
 * Returns the valid lines' settings (NULL when the file cannot be read); every problem is
 * written to err as `FILE:LINE: message` (`FILE: message` for the file) and counted in
 * *nerrors, so that a check reports a bad line and a bad value together.
 */
struct config *config_read(const char *path, FILE *err, int *nerrors);
void config_free(struct config *cfg);

#endif
