/*
 * smtptap show SESSION...: each session as a standalone transcript, in the per-session
 * layout (the "# session", "# start", "# client", "# listener", "# upstream" header, then the
 * records without the id column), or with --json one object per record.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tools/common.h"
#include "tools/lookup.h"
#include "tools/tools.h"

static const char show_usage[] =
    "usage: smtptap show [-c FILE] [--log-dir DIR] [--events FILE] [--json] SESSION...\n"
    "  prints each session's records as a standalone transcript (--json: one JSON object\n"
    "  per record: time, session, kind, text)\n";

struct show {
	int json;
	int records;
	int nids; /* session ids on the command line */
};

/* The header, from the session's first record ("* session client=... listener=..."). */
static void
show_header(const struct jrecord *r, const char *id)
{
	static const char *const keys[] = {"client", "listener", "upstream"};
	char v[1024];
	size_t i;

	printf("# smtptap " SMTPTAP_VERSION " transcript\n# session %s\n# start %s\n", id, r->ts);
	for (i = 0; i < 3; i++) {
		if (journal_event_value(r->text, r->textlen, keys[i], v, sizeof(v)) != 0)
			snprintf(v, sizeof(v), "-");
		printf("# %s %s\n", keys[i], v);
	}
}

/* A record as JSON; its text is printable already (show_record_cb), so UTF-8. */
static int
show_json(const struct jrecord *r)
{
	json_t *o = json_object();
	char *s;

	json_object_set_new(o, "time", json_string(r->ts));
	json_object_set_new(o, "session", json_string(r->id));
	json_object_set_new(o, "kind", json_string(r->kind));
	json_object_set_new(o, "text", json_stringn(r->text, r->textlen));
	s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (s == NULL) {
		fprintf(stderr, "smtptap show: session %s: out of memory\n", r->id);
		return -1;
	}
	puts(s);
	free(s);
	return 0;
}

static int
show_record(const struct jrecord *r, struct show *sh)
{
	int first = sh->records++ == 0;
	int is_session = r->kind[0] == '*' && r->textlen >= 8 && memcmp(r->text, "session ", 8) == 0;

	if (sh->json)
		return show_json(r);
	if (first)
		show_header(r, r->id);
	if (first && is_session)
		return 0;
	printf("%s %s %.*s\n", r->ts, r->kind, (int)r->textlen, r->text);
	return 0;
}

/* A record shown with its text fit for a terminal (a tampered journal's escaped). */
static int
show_record_cb(const struct jrecord *r, void *arg)
{
	struct jrecord safe = *r;
	char *owned;
	int rc;

	if ((safe.text = journal_printable(r->text, r->textlen, &safe.textlen, &owned)) == NULL) {
		fprintf(stderr, "smtptap show: session %s: out of memory\n", r->id);
		return -1;
	}
	rc = show_record(&safe, arg);
	free(owned);
	return rc;
}

/* show's own arguments: --json and the session ids (counted). */
static int
show_arg(void *arg, int argc, char **argv, int *i)
{
	struct show *sh = arg;

	(void)argc;
	if (strcmp(argv[*i], "--json") == 0)
		sh->json = 1;
	else if (argv[*i][0] == '-') {
		fprintf(stderr, "smtptap show: unknown option %s\n%s", argv[*i], show_usage);
		return -1;
	} else
		sh->nids++;
	return 1;
}

/* Shows each session named on the command line; 1 when one is missing or unreadable. */
static int
show_sessions(const struct tool_common *c, int argc, char **argv, struct show *sh)
{
	int i, k, rc = 0;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--log-dir") == 0 || strcmp(argv[i], "--events") == 0) {
			i++;
			continue;
		}
		if (argv[i][0] == '-')
			continue;
		sh->records = 0;
		k = session_records(c, argv[i], show_record_cb, sh);
		if (k == 1) {
			fprintf(stderr, "smtptap show: session %s: not found in %s\n", argv[i],
			        c->log_dir);
			rc = 1;
		} else if (k < 0) {
			rc = 1;
		}
	}
	return rc;
}

int
tool_show_main(int argc, char **argv)
{
	struct tool_common c;
	struct show sh = {0};
	int rc;

	if ((rc = tool_common_args(&c, argc, argv, "show", show_usage, show_arg, &sh)) !=
	    TOOL_ARGS_OK)
		return rc;
	if (sh.nids == 0) {
		fputs(show_usage, stderr);
		return 2;
	}
	tool_common_finish(&c);
	rc = show_sessions(&c, argc, argv, &sh);
	if (fflush(stdout) != 0)
		rc = 1;
	return rc;
}
