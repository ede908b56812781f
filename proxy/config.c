/*
 * The configuration file (--config): the command line's long options, one a line, without
 * their dashes.  This module only reads lines into name/value pairs; options.c applies them
 * with the parser the command line goes through, so a value means the same in both places.
 */
#include "proxy/config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Longer lines are refused: no setting comes near it, and a bound keeps the reader simple. */
#define CONFIG_MAX_LINE 4096
#define CONFIG_MAX_ENTRIES 1024

/* White space as the SMTP tokeniser sees it: a tab pasted from an editor is a separator. */
static int
config_space(int c)
{
	return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r';
}

static char *
config_trim(char *s)
{
	size_t len;

	while (config_space((unsigned char)*s))
		s++;
	len = strlen(s);
	while (len > 0 && config_space((unsigned char)s[len - 1]))
		s[--len] = '\0';
	return s;
}

/* Cuts a comment: `#` at the start of the line or after white space (a value may hold `#`). */
static void
config_cut_comment(char *s)
{
	for (char *p = s; *p != '\0'; p++)
		if (*p == '#' && (p == s || config_space((unsigned char)p[-1]))) {
			*p = '\0';
			return;
		}
}

static int
config_add(struct config *cfg, const char *where, const char *name, const char *value)
{
	struct config_entry *e;

	if (cfg->n == CONFIG_MAX_ENTRIES)
		return -1;
	e = realloc(cfg->entries, (cfg->n + 1) * sizeof(*e));
	if (e == NULL)
		return -1;
	cfg->entries = e;
	e = &cfg->entries[cfg->n];
	memset(e, 0, sizeof(*e));
	snprintf(e->where, sizeof(e->where), "%s", where);
	e->name = strdup(name);
	e->value = value != NULL ? strdup(value) : NULL;
	if (e->name == NULL || (value != NULL && e->value == NULL)) {
		free(e->name);
		free(e->value);
		return -1;
	}
	cfg->n++;
	return 0;
}

/* One line: 0 (a setting added or nothing to add), or -1 with the problem written. */
static int
config_line(struct config *cfg, char *line, size_t len, const char *where, FILE *err)
{
	char *name, *value;

	if (memchr(line, '\0', len) != NULL) {
		fprintf(err, "%s: a NUL byte in the line\n", where);
		return -1;
	}
	config_cut_comment(line);
	name = config_trim(line);
	if (*name == '\0')
		return 0;
	for (value = name; *value != '\0' && !config_space((unsigned char)*value); value++)
		;
	if (*value != '\0')
		*value++ = '\0';
	value = config_trim(value);
	if (name[0] == '-') {
		fprintf(err, "%s: %s: write the name without dashes\n", where, name);
		return -1;
	}
	if (config_add(cfg, where, name, *value != '\0' ? value : NULL) != 0) {
		fprintf(err, "%s: too many settings or out of memory\n", where);
		return -1;
	}
	return 0;
}

struct config *
config_read(const char *path, FILE *err, int *nerrors)
{
	struct config *cfg;
	char *line = NULL, where[320];
	size_t cap = 0;
	ssize_t len;
	unsigned lineno = 0, errors = 0;
	FILE *f;

	if ((f = fopen(path, "r")) == NULL) {
		fprintf(err, "%s: %s\n", path, strerror(errno));
		++*nerrors;
		return NULL;
	}
	if ((cfg = calloc(1, sizeof(*cfg))) == NULL) {
		fclose(f);
		fprintf(err, "%s: out of memory\n", path);
		++*nerrors;
		return NULL;
	}
	while ((len = getline(&line, &cap, f)) >= 0) {
		snprintf(where, sizeof(where), "%s:%u", path, ++lineno);
		if (len > 0 && line[len - 1] == '\n')
			line[--len] = '\0';
		if (len > CONFIG_MAX_LINE) {
			fprintf(err, "%s: line longer than %d bytes\n", where, CONFIG_MAX_LINE);
			errors++;
			continue;
		}
		errors += config_line(cfg, line, (size_t)len, where, err) != 0;
	}
	if (ferror(f)) {
		fprintf(err, "%s: %s\n", path, strerror(errno));
		errors++;
	}
	free(line);
	fclose(f);
	*nerrors += (int)errors;
	return cfg;
}

void
config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < cfg->n; i++) {
		free(cfg->entries[i].name);
		free(cfg->entries[i].value);
	}
	free(cfg->entries);
	free(cfg);
}
