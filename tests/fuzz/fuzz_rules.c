/*
 * libFuzzer target: the rule-file parser and engine.  The input is a rule file, optionally
 * followed by a line "%%" and sample lines (split on LF) to run through the rules; without
 * one, a fixed set of sample lines is used.  The file is written to a temporary file and
 * loaded with rules_load_warn (errors and --check-rules warnings to /dev/null); every sample
 * line goes through every scope alone and through the scope sets the core uses; the lines are
 * then rebuilt as one reply with those a capability rule IGNOREs removed (smtp_reply_rebuild);
 * the ruleset is freed.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "filters/rules.h"
#include "smtp/smtp.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_SAMPLES 32

static char path[] = "/tmp/fuzz_rules.XXXXXX";
static FILE *devnull;

#define NUL_SAMPLE "body line with \0 a NUL and \xff\xfe invalid UTF-8"

static const char *const default_samples[] = {
    "EHLO client.example",
    "MAIL FROM:<alice@example.com> SIZE=1234",
    "RCPT TO:<bob@competitor.example>",
    "VRFY postmaster",
    "Subject: confidential report",
    "\tfolded header\r\n continuation",
    NUL_SAMPLE,
    "220 mx.example ESMTP",
    "250-STARTTLS",
    "250 SIZE 10240000",
};

static const enum rule_scope combos[][2] = {
    {SCOPE_HELO, SCOPE_COMMAND},  {SCOPE_MAIL, SCOPE_COMMAND},	  {SCOPE_RCPT, SCOPE_COMMAND},
    {SCOPE_BANNER, SCOPE_REPLY}, {SCOPE_CAPABILITY, SCOPE_REPLY},
};

static void
unlink_path(void)
{
	unlink(path);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int fd;

	(void)argc;
	(void)argv;
	if ((fd = mkstemp(path)) < 0 || (devnull = fopen("/dev/null", "w")) == NULL)
		abort();
	close(fd);
	atexit(unlink_path);
	return 0;
}

/* Checks what rules_apply says of one line against the header's promises. */
static void
check_outcome(const struct ruleset *rs, int rc, const struct rule_outcome *o)
{
	size_t i;

	if (rc == -1)
		return;
	if (rc != (int)o->verdict || o->line == NULL)
		abort();
	if ((o->verdict == ACT_REJECT || o->verdict == ACT_DISCONNECT) && o->reply == NULL)
		abort();
	if (o->nprepend > 0 && o->prepend == NULL)
		abort();
	for (i = 0; i < o->nprepend; i++)
		if (o->prepend[i] == NULL)
			abort();
	for (i = 0; i < o->nhits; i++)
		if (o->hits[i].rule < 0 || o->hits[i].rule >= rules_count(rs) ||
		    o->hits[i].file == NULL || o->hits[i].orig == NULL)
			abort();
	if (o->nwarnings > o->nhits)
		abort();
}

static void
apply_all(const struct ruleset *rs, const unsigned char *const *lines, const size_t *lens,
	  size_t n)
{
	struct rule_outcome out;
	enum rule_scope one;
	int removed[MAX_SAMPLES] = {0}, all_removed = 0, rc;
	unsigned char *reply;
	size_t i, k, outlen;

	rule_outcome_init(&out);
	for (i = 0; i < n; i++) {
		for (one = 0; one < SCOPE_COUNT; one++) {
			rc = rules_apply(rs, &one, 1, lines[i], lens[i], &out);
			check_outcome(rs, rc, &out);
		}
		for (k = 0; k < sizeof(combos) / sizeof(combos[0]); k++) {
			rc = rules_apply(rs, combos[k], 2, lines[i], lens[i], &out);
			check_outcome(rs, rc, &out);
			if (combos[k][0] == SCOPE_CAPABILITY && rc == ACT_IGNORE)
				removed[i] = 1;
		}
	}
	rule_outcome_free(&out);
	if (n == 0)
		return;
	reply = smtp_reply_rebuild(lines, lens, removed, n, &outlen, &all_removed);
	free(reply);
}

static void
inspect(const struct ruleset *rs)
{
	const char *file;
	unsigned int line;
	enum rule_scope scope;
	enum rule_action action;
	int i;

	for (i = 0; i < rules_count(rs); i++) {
		rules_describe(rs, i, &file, &line, &scope, &action);
		if (file == NULL || scope >= SCOPE_COUNT || line == 0)
			abort();
		(void)rules_scope_name(scope);
		(void)rules_action_name(action);
	}
	(void)rules_holds_messages(rs);
	for (scope = 0; scope < SCOPE_COUNT; scope++)
		(void)rules_has_scope(rs, scope);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char sep[] = "\n%%\n";
	const unsigned char *lines[MAX_SAMPLES], *p, *lf, *end = data + size;
	const char *files[2] = {path, path};
	size_t lens[MAX_SAMPLES], n = 0, rulelen = size;
	struct ruleset *rs;
	FILE *fp;

	p = memmem(data, size, sep, sizeof(sep) - 1);
	if (p != NULL) {
		rulelen = (size_t)(p - data) + 1;
		for (p += sizeof(sep) - 1; p < end && n < MAX_SAMPLES; p = lf + 1) {
			lf = memchr(p, '\n', (size_t)(end - p));
			if (lf == NULL)
				lf = end;
			lines[n] = p;
			lens[n++] = (size_t)(lf - p);
		}
	} else {
		for (; n < sizeof(default_samples) / sizeof(default_samples[0]); n++) {
			lines[n] = (const unsigned char *)default_samples[n];
			lens[n] = strlen(default_samples[n]);
		}
		lens[6] = sizeof(NUL_SAMPLE) - 1; /* the one holding a NUL */
	}
	if ((fp = fopen(path, "w")) == NULL)
		abort();
	if (fwrite(data, 1, rulelen, fp) != rulelen || fclose(fp) != 0)
		abort();
	/* The same file twice: rules of several files merge in file order. */
	rs = rules_load_warn(files, 1 + (size > 0 && data[0] == '#'), devnull, devnull);
	if (rs == NULL)
		return 0;
	inspect(rs);
	apply_all(rules_ref(rs), lines, lens, n);
	rules_free(rs);
	rules_free(rs);
	return 0;
}
