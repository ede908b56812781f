/*
 * Unit tests for filters/scopes.c and the command classification of --test-rules
 * (filters/trial.c): the proxy and --test-rules must give every client line the same verb and
 * the same rule scopes (issue 15).  Every recorded client line of the fuzz corpus goes through
 * both, and through a plain reading of RFC 5321 as a server tokenises (any white space).
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "filters/scopes.h"
#include "filters/trial.h"
#include "proxy/filter.h"
#include "smtp/smtp.h"

#define U(s) ((const unsigned char *)(s))
#define CORPUS "tests/fuzz/corpus"

struct counts {
	int lines, mail, rcpt, helo, command;
};

/* The verb a server sees: the first word, ended by any of Postfix's white space. */
static enum smtp_verb
server_verb(const unsigned char *p, size_t n)
{
	size_t i = 0, start, len;
	int v;

	while (i < n && strchr(" \t\v\f\r", p[i]) != NULL && p[i] != '\0')
		i++;
	start = i;
	while (i < n && (p[i] == '\0' || strchr(" \t\v\f\r", p[i]) == NULL))
		i++;
	len = i - start;
	for (v = VERB_FIRST_COMMAND; v <= VERB_LAST_COMMAND; v++) {
		const char *name = smtp_verb_name((enum smtp_verb)v);
		if (strlen(name) == len && strncasecmp(name, (const char *)p + start, len) == 0)
			return (enum smtp_verb)v;
	}
	return VERB_UNKNOWN;
}

/* One client line: the proxy's verb and scopes, the trial's, and a server's verb agree. */
static void
check_line(const unsigned char *p, size_t n, struct counts *c)
{
	enum rule_scope proxy[2] = {SCOPE_COUNT, SCOPE_COUNT},
	                trial[2] = {SCOPE_COUNT, SCOPE_COUNT};
	struct smtp_command cmd;
	int np, verb;
	size_t seen;

	n = smtp_line_len(p, n);
	smtp_parse_command(p, n, &cmd);
	np = filter_command_scopes(cmd.verb, proxy);
	verb = trial_command_scopes(p, n, trial, &seen);
	assert_int_equal(verb, cmd.verb);
	assert_int_equal(cmd.verb, server_verb(p, n));
	assert_int_equal(trial[0], proxy[0]);
	if (np == 2)
		assert_int_equal(trial[1], proxy[1]);
	assert_true(seen <= n);
	c->lines++;
	c->mail += proxy[0] == SCOPE_MAIL;
	c->rcpt += proxy[0] == SCOPE_RCPT;
	c->helo += proxy[0] == SCOPE_HELO;
	c->command += proxy[0] == SCOPE_COMMAND;
}

static void
check_lines(const unsigned char *p, size_t n, struct counts *c)
{
	const unsigned char *lf;
	size_t len;

	while (n > 0) {
		lf = memchr(p, '\n', n);
		len = lf != NULL ? (size_t)(lf - p) + 1 : n;
		check_line(p, len, c);
		p += len;
		n -= len;
	}
}

static unsigned char *
read_all(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	unsigned char *buf = NULL;
	long size;

	assert_non_null(fp);
	assert_int_equal(fseek(fp, 0, SEEK_END), 0);
	size = ftell(fp);
	rewind(fp);
	buf = malloc((size_t)size + 1);
	assert_non_null(buf);
	*len = fread(buf, 1, (size_t)size, fp);
	fclose(fp);
	return buf;
}

/* The client's pieces of a session seed: every second one, after the server's greeting. */
static void
check_session(const unsigned char *p, size_t n, struct counts *c)
{
	size_t piece = 0, i = 0, start = 0;

	if (n > 2 && p[0] == '#' && p[1] == '!') {
		const unsigned char *lf = memchr(p, '\n', n);
		start = i = lf != NULL ? (size_t)(lf - p) + 1 : n;
	}
	for (; i <= n; i++) {
		/* Pieces are separated by "\n~~\n" or "\n~.\n", which belong to neither. */
		int sep = i + 4 <= n && p[i] == '\n' && p[i + 1] == '~' &&
		          (p[i + 2] == '~' || p[i + 2] == '.') && p[i + 3] == '\n';
		if (!sep && i < n)
			continue;
		if (piece % 2 == 1)
			check_lines(p + start, i - start, c);
		piece++;
		i += sep ? 3 : 0;
		start = i + 1;
	}
}

static void
check_corpus(const char *target, struct counts *c)
{
	char dir[256], path[512];
	struct dirent *d;
	unsigned char *buf;
	size_t len;
	DIR *dp;

	snprintf(dir, sizeof(dir), "%s/%s", CORPUS, target);
	assert_non_null(dp = opendir(dir));
	while ((d = readdir(dp)) != NULL) {
		if (d->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, d->d_name);
		buf = read_all(path, &len);
		if (strcmp(target, "session") == 0)
			check_session(buf, len, c);
		else
			check_lines(buf, len, c);
		free(buf);
	}
	closedir(dp);
}

/* Every recorded client line of the fuzz corpus: the proxy and --test-rules agree. */
static void
test_corpus_agrees(void **state)
{
	struct counts c = {0};

	(void)state;
	check_corpus("command", &c);
	check_corpus("session", &c);
	/* Not vacuous: the corpus was read, and it holds lines of every command scope. */
	assert_true(c.lines >= 100);
	assert_true(c.mail > 0 && c.rcpt > 0 && c.helo > 0 && c.command > 0);
}

/* The case --test-rules once got wrong: a tab (or VT, FF) after the verb. */
static void
test_white_space_after_verb(void **state)
{
	static const char *lines[] = {"MAIL\tFROM:<a@evil>", "MAIL\vFROM:<a@evil>",
	                              "MAIL\fFROM:<a@evil>", "mail\rFROM:<a@evil>",
	                              "\tMAIL FROM:<a@evil>"};
	enum rule_scope scopes[2];
	size_t i, seen;

	(void)state;
	for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		assert_int_equal(trial_command_scopes(U(lines[i]), strlen(lines[i]), scopes, &seen),
		                 VERB_MAIL);
		assert_int_equal(scopes[0], SCOPE_MAIL);
		assert_int_equal(scopes[1], SCOPE_COMMAND);
		assert_int_equal(seen, strlen(lines[i]));
	}
}

/* The scopes of each verb, as the proxy has always given them. */
static void
test_scopes_per_verb(void **state)
{
	static const struct {
		enum smtp_verb verb;
		int n;
		enum rule_scope first;
	} rows[] = {
	    {VERB_HELO, 2, SCOPE_HELO},       {VERB_EHLO, 2, SCOPE_HELO},
	    {VERB_LHLO, 2, SCOPE_HELO},       {VERB_MAIL, 2, SCOPE_MAIL},
	    {VERB_RCPT, 2, SCOPE_RCPT},       {VERB_DATA, 1, SCOPE_COMMAND},
	    {VERB_AUTH, 1, SCOPE_COMMAND},    {VERB_UNKNOWN, 1, SCOPE_COMMAND},
	    {VERB_XCLIENT, 1, SCOPE_COMMAND},
	};
	enum rule_scope scopes[2];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		assert_int_equal(scopes_command(rows[i].verb, scopes), rows[i].n);
		assert_int_equal(scopes[0], rows[i].first);
		if (rows[i].n == 2)
			assert_int_equal(scopes[1], SCOPE_COMMAND);
	}
}

/* An AUTH line: rules see the verb and the mechanism, never the initial response. */
static void
test_auth_visible(void **state)
{
	enum rule_scope scopes[2];
	size_t seen;

	(void)state;
	assert_int_equal(trial_command_scopes(U("AUTH PLAIN AGFAYg=="), 19, scopes, &seen),
	                 VERB_AUTH);
	assert_int_equal(seen, 10);
	assert_int_equal(trial_command_scopes(U("AUTH PLAIN\tAGFAYg=="), 19, scopes, &seen),
	                 VERB_AUTH);
	assert_int_equal(seen, 10);
	assert_int_equal(trial_command_scopes(U("AUTH LOGIN"), 10, scopes, &seen), VERB_AUTH);
	assert_int_equal(seen, 10);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_corpus_agrees),
	    cmocka_unit_test(test_white_space_after_verb),
	    cmocka_unit_test(test_scopes_per_verb),
	    cmocka_unit_test(test_auth_visible),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
