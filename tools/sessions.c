/*
 * smtptap sessions [filters] [--json]: one line per matching session, from the events file.
 * With --since the file is read backwards from its end and stops at the first session that
 * ended well before that time (events are written as sessions end), so that a years-long file
 * is not read whole.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "tools/common.h"
#include "tools/filter.h"
#include "tools/lookup.h"
#include "tools/tools.h"

static const char sessions_usage[] =
    "usage: smtptap sessions [-c FILE] [--log-dir DIR] [--events FILE] [filters] [--json]\n"
    "filters (each given one must hold):\n"
    "  --client ADDR|CIDR   the client's address\n"
    "  --from ADDR          a sender (@domain: any at that domain, <> the null sender)\n"
    "  --to ADDR            a recipient\n"
    "  --user NAME          the AUTH user\n"
    "  --since T, --until T the session's start (ISO 8601 UTC, or 30m, 2h, 1d, 1w ago)\n"
    "  --reason R           why the session ended (quit, client_closed, ...)\n"
    "  --code 550|5xx       a MAIL, RCPT or final reply code, exactly or by class\n"
    "  --rule NAME          a rule that hit (FILE:LINE, FILE, or its base name)\n";

/* How far out of order of end times the events file may be (sessions_stop_at). */
#define SESSIONS_DISORDER_SECS 60

struct sessions {
	struct tool_filter f;
	int json;
	int backward;
	char stop[32]; /* backwards: no event ending before this is read */
	char **found; /* backwards: printed at the end, oldest first */
	size_t nfound, capfound;
	int failed;
};

static const char *
str_or(json_t *v, const char *none)
{
	const char *s = json_string_value(v);

	return s != NULL && s[0] != '\0' ? s : none;
}

/* The session in one line: start, id, client, HELO, user, each transaction, reason. */
static char *
sessions_line(json_t *ev)
{
	char *buf = NULL;
	size_t size = 0, i, j;
	json_t *tx, *r, *v;
	FILE *m = open_memstream(&buf, &size);

	if (m == NULL)
		return NULL;
	fprintf(m, "%s %s client=%s helo=<%s>", str_or(json_object_get(ev, "start"), "-"),
	        str_or(json_object_get(ev, "session"), "-"), str_or(json_object_get(ev, "client"), "-"),
	        str_or(json_object_get(ev, "helo"), ""));
	if ((v = json_object_get(json_object_get(ev, "auth"), "user")) != NULL && json_is_string(v))
		fprintf(m, " user=%s", json_string_value(v));
	json_array_foreach(json_object_get(ev, "transactions"), i, tx)
	{
		const char *from = str_or(json_object_get(tx, "mail_from"), "<>");

		fprintf(m, " from=%s%s", from[0] == '<' ? "" : "<", from);
		if (from[0] != '<')
			fputc('>', m);
		json_array_foreach(json_object_get(tx, "rcpt"), j, r)
		fprintf(m, " to=%s:%lld", str_or(json_object_get(r, "to"), "<>"),
		        (long long)json_integer_value(json_object_get(r, "code")));
		if (json_is_integer(json_object_get(tx, "code")))
			fprintf(m, " code=%lld", (long long)json_integer_value(json_object_get(tx, "code")));
		else
			fprintf(m, " code=-");
	}
	fprintf(m, " reason=%s", str_or(json_object_get(ev, "reason"), "-"));
	fclose(m);
	return buf;
}

/*
 * Where the backward read stops: events ending SESSIONS_DISORDER_SECS before --since.  Each
 * worker writes its events in batches (at least once a second), so the file is in order of
 * end times only within a worker: across workers a later end may come before an earlier one.
 */
static void
sessions_stop_at(struct sessions *s)
{
	filter_format_time(s->f.since_at > SESSIONS_DISORDER_SECS ? s->f.since_at - SESSIONS_DISORDER_SECS
	                                                          : 0,
	                   s->stop);
}

/* Keeps one output line (backwards: to print in order at the end). */
static void
sessions_emit(struct sessions *s, char *out)
{
	char **p;

	if (!s->backward) {
		puts(out);
		free(out);
		return;
	}
	if (s->nfound == s->capfound) {
		s->capfound = s->capfound ? s->capfound * 2 : 64;
		if ((p = realloc(s->found, s->capfound * sizeof(*p))) == NULL) {
			free(out);
			s->failed = 1;
			return;
		}
		s->found = p;
	}
	s->found[s->nfound++] = out;
}

static int
sessions_cb(const char *line, size_t n, void *arg)
{
	struct sessions *s = arg;
	json_t *ev;
	const char *end;
	char *out;

	if (n == 0 || (ev = json_loadb(line, n, 0, NULL)) == NULL)
		return 0; /* not an event (a torn or foreign line) */
	if (!json_is_object(ev)) {
		json_decref(ev);
		return 0;
	}
	end = json_string_value(json_object_get(ev, "end"));
	if (s->backward && end != NULL && strcmp(end, s->stop) < 0) {
		json_decref(ev);
		return 1; /* every earlier event ended earlier still */
	}
	if (filter_event(&s->f, ev)) {
		out = s->json ? strndup(line, n) : sessions_line(ev);
		if (out != NULL)
			sessions_emit(s, out);
	}
	json_decref(ev);
	return s->failed;
}

/* sessions' own arguments: the filters and --json. */
static int
sessions_arg(void *arg, int argc, char **argv, int *i)
{
	struct sessions *s = arg;
	int k;

	if ((k = filter_arg(&s->f, argc, argv, i)) != 0)
		return k;
	if (strcmp(argv[*i], "--json") != 0)
		return 0;
	s->json = 1;
	return 1;
}

int
tool_sessions_main(int argc, char **argv)
{
	struct tool_common c;
	struct sessions s;
	int rc;

	memset(&s, 0, sizeof(s));
	s.f.now = time(NULL);
	rc = tool_common_args(&c, argc, argv, "sessions", sessions_usage, sessions_arg, &s);
	if (rc != TOOL_ARGS_OK)
		return rc;
	tool_common_finish(&c);
	s.backward = s.f.since[0] != '\0';
	sessions_stop_at(&s);
	rc = s.backward ? events_backward(c.events, sessions_cb, &s)
	                : events_forward(c.events, sessions_cb, &s);
	while (s.nfound > 0) {
		puts(s.found[--s.nfound]);
		free(s.found[s.nfound]);
	}
	free(s.found);
	if (s.failed)
		fprintf(stderr, "smtptap sessions: out of memory\n");
	return rc != 0 || s.failed || fflush(stdout) != 0 ? 1 : 0;
}
