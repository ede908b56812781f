/* Finding a session: its event in the events file, its records in the journal. */
#include "tools/lookup.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BACK_BLOCK 65536

int
events_forward(const char *path, events_cb cb, void *arg)
{
	struct journal_reader jr;
	const char *line;
	size_t n;
	int rc;

	if (journal_reader_open(&jr, path, 0) != 0) {
		fprintf(stderr, "smtptap: %s: %s\n", path, journal_strerror(errno));
		return -1;
	}
	while ((rc = journal_reader_next(&jr, &line, &n, NULL)) == 1)
		if (cb(line, n, arg) != 0)
			break;
	if (rc < 0)
		fprintf(stderr, "smtptap: %s: %s\n", path, journal_strerror(errno));
	journal_reader_close(&jr);
	return rc < 0 ? -1 : 0;
}

/* Reads size octets at off into buf; -1 on error. */
static int
read_at(int fd, char *buf, size_t size, off_t off)
{
	ssize_t r;
	size_t got = 0;

	while (got < size) {
		r = pread(fd, buf + got, size - got, off + (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

/*
 * From the end: a window [pos, end) of the file is held; each complete line in it, last
 * first, goes to cb, and the window moves back a block at a time.
 */
static int
events_backward_fd(int fd, off_t size, events_cb cb, void *arg)
{
	char *buf = NULL, *p, *nl;
	size_t len = 0, cap = 0, take;
	off_t pos = size;
	int tail_done = 0;

	while (pos > 0) {
		take = pos > BACK_BLOCK ? BACK_BLOCK : (size_t)pos;
		if (len + take > cap) {
			cap = (len + take) * 2;
			if ((p = realloc(buf, cap)) == NULL)
				goto fail;
			buf = p;
		}
		memmove(buf + take, buf, len);
		pos -= (off_t)take;
		if (read_at(fd, buf, take, pos) != 0)
			goto fail;
		len += take;
		if (!tail_done) {
			/* A torn last line (no '\n') is not an event. */
			if ((nl = memrchr(buf, '\n', len)) == NULL)
				continue;
			len = (size_t)(nl - buf);
			tail_done = 1;
		}
		/* Every line whose start is known: after a '\n' in the window. */
		while ((nl = memrchr(buf, '\n', len)) != NULL) {
			if (cb(nl + 1, len - (size_t)(nl + 1 - buf), arg) != 0)
				goto done;
			len = (size_t)(nl - buf);
		}
	}
	if (tail_done && len > 0) /* the file's first line */
		cb(buf, len, arg);
done:
	free(buf);
	return 0;
fail:
	free(buf);
	return -1;
}

int
events_backward(const char *path, events_cb cb, void *arg)
{
	struct stat st;
	int fd, rc;

	if ((fd = journal_open(path)) < 0 || fstat(fd, &st) != 0) {
		fprintf(stderr, "smtptap: %s: %s\n", path, journal_strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	rc = events_backward_fd(fd, st.st_size, cb, arg);
	if (rc != 0)
		fprintf(stderr, "smtptap: %s: %s\n", path, errno ? strerror(errno) : "read error");
	close(fd);
	return rc;
}

struct find {
	const char *id;
	char needle[64];
	json_t *found;
};

static int
find_cb(const char *line, size_t n, void *arg)
{
	struct find *f = arg;
	const char *s;
	json_t *ev;

	if (memmem(line, n, f->needle, strlen(f->needle)) == NULL)
		return 0;
	if ((ev = json_loadb(line, n, 0, NULL)) == NULL)
		return 0;
	s = json_string_value(json_object_get(ev, "session"));
	if (s != NULL && strcmp(s, f->id) == 0) {
		f->found = ev;
		return 1;
	}
	json_decref(ev);
	return 0;
}

json_t *
events_find(const char *path, const char *id)
{
	struct find f = {.id = id, .found = NULL};
	struct stat st;

	if (path == NULL || strcmp(path, "-") == 0 || stat(path, &st) != 0)
		return NULL;
	snprintf(f.needle, sizeof(f.needle), "\"%s\"", id);
	(void)events_backward(path, find_cb, &f);
	return f.found;
}

/* Whether a record is a session's last. */
static int
record_is_close(const struct jrecord *r)
{
	return r->kind[0] == '*' && r->textlen >= 6 && memcmp(r->text, "close ", 6) == 0;
}

/*
 * Reads a day file from at, yielding the session's records; with must_start, the record at
 * at must be the session's (else 1: not there).  Stops at its close record.
 */
static int
records_from(const char *path, off_t at, const char *id, int must_start, record_cb cb,
             void *arg)
{
	struct journal_reader jr;
	struct jrecord r;
	const char *line;
	size_t n, idlen = strlen(id);
	int rc, found = 0, stop = 0;

	if (journal_reader_open(&jr, path, at) != 0) {
		int err = errno;

		if (err == ENOENT)
			return 1;
		fprintf(stderr, "smtptap: %s: %s\n", path, journal_strerror(err));
		return err == JOURNAL_ENOTREG ? 1 : -1; /* skipped: the session may be elsewhere */
	}
	while (!stop && (rc = journal_reader_next(&jr, &line, &n, NULL)) == 1) {
		/* A cheap test before the parse: the id column. */
		if (n < JOURNAL_TS_LEN + 2 + idlen || memcmp(line + JOURNAL_TS_LEN + 1, id, idlen) != 0 ||
		    line[JOURNAL_TS_LEN + 1 + idlen] != ' ' || journal_parse(line, n, &r) != 0) {
			if (must_start && !found)
				break;
			continue;
		}
		found = 1;
		if ((rc = cb(&r, arg)) != 0) {
			journal_reader_close(&jr);
			return rc < 0 ? -1 : 0;
		}
		stop = record_is_close(&r);
	}
	if (!stop && rc < 0) {
		fprintf(stderr, "smtptap: %s: %s\n", path, strerror(errno));
		journal_reader_close(&jr);
		return -1;
	}
	journal_reader_close(&jr);
	return found ? 0 : 1;
}

/* A transcript of a file per session (before the journal): its header becomes a record. */
static int
records_legacy(const struct tool_common *c, const char *rel, const char *id, record_cb cb,
               void *arg)
{
	char path[8192], text[1024], client[256] = "", listener[256] = "", upstream[256] = "";
	struct journal_reader jr;
	struct jrecord r;
	const char *line;
	size_t n;
	int rc, head = 1;

	/* A legacy name is "DAY/FILE" under the log dir: nothing that leads out of it. */
	if (rel[0] == '/' || strstr(rel, "..") != NULL)
		return 1;
	snprintf(path, sizeof(path), "%s/%s", c->log_dir, rel);
	if (journal_reader_open(&jr, path, 0) != 0)
		return 1;
	while ((rc = journal_reader_next(&jr, &line, &n, NULL)) == 1) {
		if (n > 2 && line[0] == '#') {
			if (n > 9 && memcmp(line, "# client ", 9) == 0)
				snprintf(client, sizeof(client), "%.*s", (int)(n - 9), line + 9);
			else if (n > 11 && memcmp(line, "# listener ", 11) == 0)
				snprintf(listener, sizeof(listener), "%.*s", (int)(n - 11), line + 11);
			else if (n > 11 && memcmp(line, "# upstream ", 11) == 0)
				snprintf(upstream, sizeof(upstream), "%.*s", (int)(n - 11), line + 11);
			continue;
		}
		if (journal_parse_any(line, n, &r) != 0)
			continue;
		snprintf(r.id, sizeof(r.id), "%s", id);
		if (head) {
			struct jrecord h = r;

			head = 0;
			snprintf(h.kind, sizeof(h.kind), "*");
			h.textlen = (size_t)snprintf(text, sizeof(text),
			                             "session client=%s listener=%s upstream=%s", client,
			                             listener, upstream);
			h.text = text;
			if (cb(&h, arg) != 0)
				break;
		}
		if (cb(&r, arg) != 0)
			break;
	}
	journal_reader_close(&jr);
	return 0;
}

int
session_records(const struct tool_common *c, const char *id, record_cb cb, void *arg)
{
	json_t *ev = events_find(c->events, id), *t;
	char path[8192], **days;
	size_t ndays, i;
	int rc = 1;

	t = ev != NULL ? json_object_get(ev, "transcript") : NULL;
	if (json_is_string(t) && strchr(json_string_value(t), '/') != NULL) {
		rc = records_legacy(c, json_string_value(t), id, cb, arg);
	} else if (json_is_object(t) && json_is_string(json_object_get(t, "file")) &&
	           strchr(json_string_value(json_object_get(t, "file")), '/') == NULL) {
		snprintf(path, sizeof(path), "%s/%s", c->log_dir,
		         json_string_value(json_object_get(t, "file")));
		rc = records_from(path, (off_t)json_integer_value(json_object_get(t, "offset")), id, 1,
		                  cb, arg);
	}
	json_decref(ev);
	if (rc != 1)
		return rc;
	/* No event, or it points nowhere: the day files, newest first. */
	if ((days = journal_days(c->log_dir, &ndays)) == NULL) {
		fprintf(stderr, "smtptap: %s: %s\n", c->log_dir, strerror(errno));
		return -1;
	}
	for (i = ndays; i-- > 0 && rc == 1;) {
		snprintf(path, sizeof(path), "%s/%s", c->log_dir, days[i]);
		rc = records_from(path, 0, id, 0, cb, arg);
	}
	journal_days_free(days);
	return rc;
}
