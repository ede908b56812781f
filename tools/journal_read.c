/* The journal's records and files, as the tools read them. */
#include "tools/journal_read.h"

#include "logs/escape.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

/* Whether p[0..n) looks like 2026-12-06T23:49:05.938413Z. */
static int
journal_is_ts(const char *p, size_t n)
{
	static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
	size_t i;

	if (n != JOURNAL_TS_LEN)
		return 0;
	for (i = 0; i < n; i++)
		if (shape[i] == 'd' ? (p[i] < '0' || p[i] > '9') : p[i] != shape[i])
			return 0;
	return 1;
}

/* Whether p[0..n) is a record kind. */
static int
journal_is_kind(const char *p, size_t n)
{
	if (n == 1)
		return p[0] == '*';
	return n == 2 && strchr("CSPU", p[0]) != NULL && (p[1] == ':' || p[1] == '+');
}

/* The kind and text from p on (after "TS " or "TS ID "). */
static int
journal_parse_tail(const char *p, const char *end, struct jrecord *r)
{
	const char *sp = memchr(p, ' ', (size_t)(end - p));
	size_t klen = sp != NULL ? (size_t)(sp - p) : (size_t)(end - p);

	if (!journal_is_kind(p, klen))
		return -1;
	memcpy(r->kind, p, klen);
	r->kind[klen] = '\0';
	r->text = sp != NULL ? sp + 1 : end;
	r->textlen = (size_t)(end - r->text);
	return 0;
}

/* The leading timestamp; the rest of the line in *rest. */
static int
journal_parse_ts(const char *line, size_t n, struct jrecord *r, const char **rest)
{
	if (n < JOURNAL_TS_LEN + 2 || !journal_is_ts(line, JOURNAL_TS_LEN) ||
	    line[JOURNAL_TS_LEN] != ' ')
		return -1;
	memcpy(r->ts, line, JOURNAL_TS_LEN);
	r->ts[JOURNAL_TS_LEN] = '\0';
	*rest = line + JOURNAL_TS_LEN + 1;
	return 0;
}

int
journal_parse(const char *line, size_t n, struct jrecord *r)
{
	const char *p, *end = line + n, *sp;
	size_t idlen;

	if (journal_parse_ts(line, n, r, &p) != 0)
		return -1;
	if ((sp = memchr(p, ' ', (size_t)(end - p))) == NULL)
		return -1;
	idlen = (size_t)(sp - p);
	if (idlen == 0 || idlen >= JOURNAL_ID_MAX || journal_is_kind(p, idlen))
		return -1;
	memcpy(r->id, p, idlen);
	r->id[idlen] = '\0';
	return journal_parse_tail(sp + 1, end, r);
}

int
journal_parse_any(const char *line, size_t n, struct jrecord *r)
{
	const char *p;

	if (journal_parse(line, n, r) == 0)
		return 0;
	if (journal_parse_ts(line, n, r, &p) != 0)
		return -1;
	r->id[0] = '\0';
	return journal_parse_tail(p, line + n, r);
}

int
journal_unescape(const char *text, size_t n, unsigned char *out, size_t *outlen)
{
	return escape_undo((const unsigned char *)text, n, out, outlen);
}

const char *
journal_printable(const char *p, size_t n, size_t *outlen, char **owned)
{
	*owned = NULL;
	*outlen = n;
	if (escape_text_span((const unsigned char *)p, n) == n)
		return p;
	if (n > (SIZE_MAX - 1) / 4 || (*owned = malloc(4 * n + 1)) == NULL)
		return NULL;
	*outlen = escape_text_into(*owned, (const unsigned char *)p, n);
	(*owned)[*outlen] = '\0';
	return *owned;
}

int
journal_event_value(const char *text, size_t n, const char *key, char *out, size_t size)
{
	size_t klen = strlen(key), i = 0, vlen;
	const char *v, *end = text + n, *stop;

	while (i + klen < n) {
		/* key= at the start of a word */
		if ((i == 0 || text[i - 1] == ' ') && memcmp(text + i, key, klen) == 0 &&
		    text[i + klen] == '=') {
			v = text + i + klen + 1;
			if (v < end && *v == '"') {
				v++;
				stop = memchr(v, '"', (size_t)(end - v));
			} else {
				stop = memchr(v, ' ', (size_t)(end - v));
			}
			vlen = (size_t)((stop != NULL ? stop : end) - v);
			if (vlen >= size)
				vlen = size - 1;
			memcpy(out, v, vlen);
			out[vlen] = '\0';
			return 0;
		}
		i++;
	}
	return -1;
}

int
journal_open(const char *path)
{
	struct stat st;
	int fd, flags, err;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) < 0)
		return -1;
	if (fstat(fd, &st) != 0 || (flags = fcntl(fd, F_GETFL)) < 0)
		goto fail;
	if (!S_ISREG(st.st_mode)) {
		errno = JOURNAL_ENOTREG;
		goto fail;
	}
	if (fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
		goto fail;
	return fd;
fail:
	err = errno;
	close(fd);
	errno = err;
	return -1;
}

const char *
journal_strerror(int err)
{
	return err == JOURNAL_ENOTREG ? "not a regular file" : strerror(err);
}

int
journal_reader_seek(struct journal_reader *jr, off_t at)
{
	if (lseek(jr->fd, at, SEEK_SET) < 0)
		return -1;
	jr->off = at;
	jr->len = jr->start = 0;
	jr->skipping = 0;
	return 0;
}

int
journal_reader_open(struct journal_reader *jr, const char *path, off_t at)
{
	memset(jr, 0, sizeof(*jr));
	snprintf(jr->path, sizeof(jr->path), "%s", path);
	if ((jr->fd = journal_open(path)) < 0)
		return -1;
	if (at > 0 && journal_reader_seek(jr, at) != 0) {
		journal_reader_close(jr);
		return -1;
	}
	return 0;
}

void
journal_reader_close(struct journal_reader *jr)
{
	if (jr->fd >= 0)
		close(jr->fd);
	jr->fd = -1;
	free(jr->buf);
	jr->buf = NULL;
}

int
journal_reader_replaced(const struct journal_reader *jr)
{
	struct stat at_path, reading;

	if (jr->fd < 0 || stat(jr->path, &at_path) != 0 || !S_ISREG(at_path.st_mode) ||
	    fstat(jr->fd, &reading) != 0)
		return 0;
	return at_path.st_dev != reading.st_dev || at_path.st_ino != reading.st_ino ||
	       at_path.st_size < jr->off + (off_t)jr->len;
}

/* Reads more of the file after what the buffer holds; >0, 0 at end of file, -1 on error. */
static ssize_t
journal_reader_fill(struct journal_reader *jr)
{
	size_t cap;
	char *p;
	ssize_t r;

	if (jr->start > 0) { /* keep only the partial line */
		memmove(jr->buf, jr->buf + jr->start, jr->len - jr->start);
		jr->off += (off_t)jr->start;
		jr->len -= jr->start;
		jr->start = 0;
	}
	if (jr->cap - jr->len < 65536) {
		cap = jr->cap < 131072 ? 131072 : jr->cap * 2;
		if ((p = realloc(jr->buf, cap)) == NULL)
			return -1;
		jr->buf = p;
		jr->cap = cap;
	}
	do
		r = read(jr->fd, jr->buf + jr->len, jr->cap - jr->len);
	while (r < 0 && errno == EINTR);
	if (r > 0)
		jr->len += (size_t)r;
	return r;
}

int
journal_reader_next(struct journal_reader *jr, const char **line, size_t *n, off_t *at)
{
	char *nl;
	ssize_t r;

	for (;;) {
		nl = jr->len > jr->start ? memchr(jr->buf + jr->start, '\n', jr->len - jr->start)
		                         : NULL;
		if (nl != NULL) {
			size_t s = jr->start;

			jr->start = (size_t)(nl - jr->buf) + 1;
			jr->lineno++;
			if (jr->skipping) { /* the end of an over-long line */
				jr->skipping = 0;
				continue;
			}
			*line = jr->buf + s;
			*n = (size_t)(nl - (jr->buf + s));
			if (at != NULL)
				*at = jr->off + (off_t)s;
			return 1;
		}
		if (jr->len - jr->start > JOURNAL_LINE_MAX) {
			jr->off += (off_t)jr->len;
			jr->start = jr->len = 0;
			jr->skipping = 1;
		}
		if ((r = journal_reader_fill(jr)) <= 0)
			return r < 0 ? -1 : 0;
	}
}

int
journal_is_day(const char *name)
{
	static const char shape[] = "dddd-dd-dd.log";
	size_t i;

	if (strlen(name) != sizeof(shape) - 1)
		return 0;
	for (i = 0; shape[i] != '\0'; i++)
		if (shape[i] == 'd' ? (name[i] < '0' || name[i] > '9') : name[i] != shape[i])
			return 0;
	return 1;
}

static int
journal_days_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

char **
journal_days(const char *dir, size_t *count)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char **v = NULL, **nv;
	size_t n = 0, cap = 0;

	if (d == NULL)
		return NULL;
	while ((e = readdir(d)) != NULL) {
		if (!journal_is_day(e->d_name))
			continue;
		if (n + 2 > cap) {
			cap = cap == 0 ? 64 : cap * 2;
			if ((nv = realloc(v, cap * sizeof(*v))) == NULL)
				goto fail;
			v = nv;
		}
		if ((v[n] = strdup(e->d_name)) == NULL)
			goto fail;
		n++;
	}
	closedir(d);
	if (v == NULL && (v = calloc(1, sizeof(*v))) == NULL)
		return NULL;
	v[n] = NULL;
	qsort(v, n, sizeof(*v), journal_days_cmp);
	*count = n;
	return v;
fail:
	closedir(d);
	if (v != NULL)
		v[n] = NULL;
	journal_days_free(v);
	errno = ENOMEM;
	return NULL;
}

void
journal_days_free(char **days)
{
	size_t i;

	if (days == NULL)
		return;
	for (i = 0; days[i] != NULL; i++)
		free(days[i]);
	free(days);
}
