/*
 * smtptap tail [filters]: follows the journal as it grows, across the day's rollover and a
 * rotation (tail -F), and prints the records of matching sessions from the record that makes
 * them match.  Sessions are followed from their first record; one that ends or can no longer
 * match is forgotten, so memory stays bounded by the sessions open at once.  At the start the
 * last TAIL_LOOKBACK octets of each day file are read without printing, to learn the sessions
 * already open (their first records are there): those that match print from their next
 * record.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tools/common.h"
#include "tools/filter.h"
#include "tools/journal_read.h"
#include "tools/tools.h"

#define TAIL_BUCKETS 4096
#define TAIL_MAX_SESSIONS 200000
#define TAIL_POLL_USEC 200000
/* What is read back at the start, to learn the sessions open then: a minute or more of a
 * busy relay's journal, read in well under a second. */
#define TAIL_LOOKBACK (64 << 20)
/* Day files followed at once: a session's records stay in the file of the day it started. */
#define TAIL_FILES 2

static const char tail_usage[] =
    "usage: smtptap tail [-c FILE] [--log-dir DIR] [filters]\n"
    "  follows the journal, printing the records of sessions that match from the record\n"
    "  that makes them match (filters as for `smtptap sessions`)\n";

struct tracked {
	struct tracked *next;
	struct filter_progress p;
	int matched;
	time_t seen;
	char id[JOURNAL_ID_MAX];
};

struct tail {
	struct tool_filter f;
	struct tool_common c;
	struct tracked *buckets[TAIL_BUCKETS];
	size_t ntracked;
	struct journal_reader files[TAIL_FILES];
	off_t quiet_until[TAIL_FILES]; /* lines before this offset are learnt, not printed */
	char names[TAIL_FILES][32];
	int nfiles;
	char refused[32]; /* the last day file that could not be followed, said once */
};

static unsigned
tail_hash(const char *id)
{
	unsigned h = 2166136261u;

	while (*id)
		h = (h ^ (unsigned char)*id++) * 16777619u;
	return h % TAIL_BUCKETS;
}

static struct tracked **
tail_find(struct tail *t, const char *id)
{
	struct tracked **pp = &t->buckets[tail_hash(id)];

	while (*pp != NULL && strcmp((*pp)->id, id) != 0)
		pp = &(*pp)->next;
	return pp;
}

static void
tail_forget(struct tail *t, struct tracked **pp)
{
	struct tracked *e = *pp;

	*pp = e->next;
	free(e);
	t->ntracked--;
}

/* Past the bound (sessions whose close was lost in a crash): the ones quiet for an hour go. */
static void
tail_evict(struct tail *t, time_t now)
{
	struct tracked **pp;
	size_t b;

	for (b = 0; b < TAIL_BUCKETS; b++)
		for (pp = &t->buckets[b]; *pp != NULL;)
			if (now - (*pp)->seen > 3600)
				tail_forget(t, pp);
			else
				pp = &(*pp)->next;
}

static int
tail_is_first(const struct jrecord *r)
{
	return r->kind[0] == '*' && r->textlen >= 8 &&
	       (memcmp(r->text, "session ", 8) == 0 || memcmp(r->text, "connect ", 8) == 0);
}

/* A journal line as it may go to a terminal (a tampered journal's escaped). */
static void
tail_print(const char *line, size_t n)
{
	const char *p;
	char *owned;
	size_t len;

	if ((p = journal_printable(line, n, &len, &owned)) == NULL) {
		fprintf(stderr, "smtptap tail: out of memory: a record not printed\n");
		return;
	}
	fwrite(p, 1, len, stdout);
	putchar('\n');
	free(owned);
}

/* One journal line: followed, printed (unless quiet) or forgotten. */
static void
tail_line(struct tail *t, const char *line, size_t n, time_t now, int quiet)
{
	struct jrecord r;
	struct tracked **pp, *e;
	int v;

	if (journal_parse(line, n, &r) != 0)
		return;
	pp = tail_find(t, r.id);
	if (*pp == NULL) {
		if (!tail_is_first(&r))
			return; /* started before we looked, or forgotten */
		if (t->ntracked >= TAIL_MAX_SESSIONS)
			tail_evict(t, now);
		if (t->ntracked >= TAIL_MAX_SESSIONS || (e = calloc(1, sizeof(*e))) == NULL)
			return;
		snprintf(e->id, sizeof(e->id), "%s", r.id);
		filter_progress_init(&t->f, &e->p);
		*pp = e;
		t->ntracked++;
	}
	e = *pp;
	e->seen = now;
	v = e->matched ? FILTER_MATCH : filter_record(&t->f, &e->p, &r);
	if (v == FILTER_MATCH) {
		e->matched = 1;
		if (!quiet)
			tail_print(line, n);
	}
	if (v == FILTER_NEVER ||
	    (r.kind[0] == '*' && r.textlen >= 6 && memcmp(r.text, "close ", 6) == 0))
		tail_forget(t, pp);
}

/* The offset of the first line that begins at or after off (a look-back starts mid-line). */
static off_t
tail_line_start(int fd, off_t off)
{
	char buf[4096], *nl;
	off_t at = off - 1;
	ssize_t r;

	for (; (r = pread(fd, buf, sizeof(buf), at)) > 0; at += r)
		if ((nl = memchr(buf, '\n', (size_t)r)) != NULL)
			return at + (nl - buf) + 1;
	return r == 0 ? at : off;
}

/* Where following a day file from its end starts: what came last is learnt quietly first. */
static void
tail_look_back(struct journal_reader *jr, off_t *end)
{
	struct stat st;

	if (fstat(jr->fd, &st) != 0)
		return;
	*end = st.st_size;
	if (*end > TAIL_LOOKBACK)
		journal_reader_seek(jr, tail_line_start(jr->fd, *end - TAIL_LOOKBACK));
}

/* Starts following a day file, at its end (what came last learnt quietly) or its start. */
static void
tail_follow(struct tail *t, const char *name, int at_end)
{
	struct journal_reader jr;
	char path[8192];
	off_t end = 0;

	snprintf(path, sizeof(path), "%s/%s", t->c.log_dir, name);
	if (journal_reader_open(&jr, path, 0) != 0) {
		/* Looked for again at each poll (it may be there yet), said once. */
		if (strcmp(t->refused, name) != 0)
			fprintf(stderr, "smtptap tail: %s: %s\n", path, journal_strerror(errno));
		snprintf(t->refused, sizeof(t->refused), "%s", name);
		return;
	}
	if (at_end)
		tail_look_back(&jr, &end);
	if (t->nfiles == TAIL_FILES) {
		journal_reader_close(&t->files[0]);
		memmove(&t->files[0], &t->files[1], sizeof(t->files[0]) * (TAIL_FILES - 1));
		memmove(t->names[0], t->names[1], sizeof(t->names[0]) * (TAIL_FILES - 1));
		memmove(&t->quiet_until[0], &t->quiet_until[1], sizeof(off_t) * (TAIL_FILES - 1));
		t->nfiles--;
	}
	t->files[t->nfiles] = jr;
	snprintf(t->names[t->nfiles], sizeof(t->names[0]), "%s", name);
	t->quiet_until[t->nfiles] = end;
	t->nfiles++;
}

/* A new day's file: followed from its start (the previous day's stays followed too). */
static void
tail_rollover(struct tail *t, int at_end)
{
	size_t n, i;
	char **days = journal_days(t->c.log_dir, &n);

	if (days == NULL)
		return; /* not there yet: looked for again at the next poll */
	/* At the start, the newest two from their ends; later, any newer from its start. */
	for (i = n > TAIL_FILES ? n - TAIL_FILES : 0; i < n; i++)
		if (t->nfiles == 0 || strcmp(days[i], t->names[t->nfiles - 1]) > 0)
			tail_follow(t, days[i], at_end);
	journal_days_free(days);
}

/* The lines a followed file has now; whether there were any. */
static int
tail_read(struct tail *t, int i, time_t now)
{
	const char *line;
	size_t n;
	off_t at;
	int any = 0;

	while (journal_reader_next(&t->files[i], &line, &n, &at) == 1) {
		tail_line(t, line, n, now, at < t->quiet_until[i]);
		any = 1;
	}
	return any;
}

/*
 * A followed file moved away and created again (logrotate's create), or truncated: what
 * the old one still held is read, then the new one from its start (tail -F).
 */
static void
tail_reopen(struct tail *t, int i, time_t now)
{
	struct journal_reader fresh;

	if (!journal_reader_replaced(&t->files[i]))
		return;
	tail_read(t, i, now);
	if (journal_reader_open(&fresh, t->files[i].path, 0) != 0)
		return; /* gone again: looked at at the next poll */
	journal_reader_close(&t->files[i]);
	t->files[i] = fresh;
	t->quiet_until[i] = 0;
}

static void
tail_run(struct tail *t)
{
	int i, any;
	time_t now;

	tail_rollover(t, 1);
	for (;;) {
		any = 0;
		now = time(NULL);
		for (i = 0; i < t->nfiles; i++)
			any |= tail_read(t, i, now);
		fflush(stdout);
		if (!any) {
			usleep(TAIL_POLL_USEC);
			for (i = 0; i < t->nfiles; i++)
				tail_reopen(t, i, time(NULL));
			tail_rollover(t, 0);
		}
	}
}

int
tool_tail_main(int argc, char **argv)
{
	static struct tail t;
	int rc;

	t.f.now = time(NULL);
	if ((rc = tool_common_args(&t.c, argc, argv, "tail", tail_usage, filter_arg, &t.f)) !=
	    TOOL_ARGS_OK)
		return rc;
	tool_common_finish(&t.c);
	setvbuf(stdout, NULL, _IOLBF, 0);
	tail_run(&t);
	return 0;
}
