/*
 * Unit tests for logs/transcript.c (through logs/journal.c): a session's records in the
 * day's journal of a temporary log directory, read back from the file.  No event loop: the
 * journal is written by transcript_sync (or when its buffer passes JOURNAL_FLUSH_AT).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tmpdir.h"

#include "logs/journal.h"
#include "logs/transcript.h"

#define U(s) ((const unsigned char *)(s))
#define DATA(t, kind, s) transcript_data((t), (kind), U(s), sizeof(s) - 1)

/* 2025-11-24T16:00:00.123456Z */
static const struct timeval START = {1764000000, 123456};
#define DAY "2025-11-24.log"

struct logdir {
	char path[64];
};

static int
setup(void **state)
{
	struct logdir *l = calloc(1, sizeof(*l));

	assert_non_null(l);
	strcpy(l->path, "/tmp/test_transcript.XXXXXX");
	assert_non_null(mkdtemp(l->path));
	assert_int_equal(transcript_init(NULL, l->path, -1), 0);
	*state = l;
	return 0;
}

static int
teardown(void **state)
{
	struct logdir *l = *state;

	transcript_shutdown();
	tmpdir_remove(l->path);
	free(l);
	return 0;
}

/* The whole of a journal file, NUL-terminated (its length in *len); NULL when there is none. */
static char *
slurp(const struct logdir *l, const char *name, size_t *len)
{
	char path[256];
	struct stat st;
	char *buf;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", l->path, name);
	if ((fd = open(path, O_RDONLY)) < 0)
		return NULL;
	assert_int_equal(fstat(fd, &st), 0);
	assert_non_null(buf = malloc((size_t)st.st_size + 1));
	assert_int_equal(read(fd, buf, (size_t)st.st_size), st.st_size);
	buf[st.st_size] = '\0';
	close(fd);
	if (len != NULL)
		*len = (size_t)st.st_size;
	return buf;
}

/* The n-th line (from 0) of text, without its '\n', into out. */
static void
nth_line(const char *text, int n, char *out, size_t size)
{
	const char *p = text, *nl;

	while (n-- > 0) {
		assert_non_null(p = strchr(p, '\n'));
		p++;
	}
	assert_non_null(nl = strchr(p, '\n'));
	assert_true((size_t)(nl - p) < size);
	memcpy(out, p, (size_t)(nl - p));
	out[nl - p] = '\0';
}

static int
count_lines(const char *text)
{
	int n = 0;

	for (; *text != '\0'; text++)
		n += *text == '\n';
	return n;
}

/* A record's time: 2025-11-24T16:00:00.123456Z, 27 octets. */
static void
assert_timestamp(const char *rec)
{
	static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";

	for (size_t i = 0; i < 27; i++) {
		if (shape[i] == 'd')
			assert_true(rec[i] >= '0' && rec[i] <= '9');
		else
			assert_int_equal(rec[i], shape[i]);
	}
	assert_int_equal(rec[27], ' ');
}

/* Record n (from 0) of text has a valid timestamp, then exactly want. */
static void
assert_record(const char *text, int n, const char *want)
{
	char line[4096];

	nth_line(text, n, line, sizeof(line));
	assert_timestamp(line);
	assert_string_equal(line + 28, want);
}

/* Records from, from + 1, ... of text are those of want, a NULL-ended list. */
static void
assert_records(const char *text, int from, const char *const *want)
{
	for (; *want != NULL; want++)
		assert_record(text, from++, *want);
}

static struct transcript *
open_session(const char *id, const struct timeval *start, char *rel, size_t relsize)
{
	struct transcript *t = transcript_open(id, start, "[192.0.2.1]:4242", "127.0.0.1:2525",
	                                       "127.0.0.1:25", rel, relsize);

	assert_non_null(t);
	return t;
}

/* The first record says who the session is; each record is TIME ID KIND TEXT, CRLF stripped. */
static void
test_record_format(void **state)
{
	struct logdir *l = *state;
	struct transcript *t;
	char rel[32], line[256], *text;

	t = open_session("abcd1234", &START, rel, sizeof(rel));
	/* The journal is the day the session started, not today. */
	assert_string_equal(rel, DAY);
	DATA(t, "C:", "MAIL FROM:<a@b>\r\n");
	DATA(t, "S:", "250 2.1.0 Ok\r\n");
	DATA(t, "P:", "550 5.7.1 no\r\n");
	transcript_line(t, transcript_now(), "C:", U("Subject: hi\r\n"), 13, 1);
	transcript_line(t, transcript_now(), "C:", U("tab\there\r\n"), 10, 0);
	/* Nothing is written before the batch. */
	assert_null(slurp(l, DAY, NULL));
	transcript_sync(t);
	assert_non_null(text = slurp(l, DAY, NULL));
	assert_int_equal(count_lines(text), 6);
	nth_line(text, 0, line, sizeof(line));
	assert_string_equal(line, "2025-11-24T16:00:00.123456Z abcd1234 * session "
	                          "client=[192.0.2.1]:4242 listener=127.0.0.1:2525 "
	                          "upstream=127.0.0.1:25");
	assert_records(text, 1,
	               (const char *[]){"abcd1234 C: MAIL FROM:<a@b>", "abcd1234 S: 250 2.1.0 Ok",
	                                "abcd1234 P: 550 5.7.1 no", "abcd1234 C: Subject: hi",
	                                "abcd1234 C: tab\there", NULL});
	free(text);
	transcript_close(t);
}

/* Peer octets that would forge a record or hide one are escaped; a bare LF is shown. */
static void
test_escaping(void **state)
{
	struct logdir *l = *state;
	struct transcript *t;
	char *text;

	t = open_session("e5c", &START, NULL, 0);
	DATA(t, "C:", "a\x1b[31mb\\c\x7f\r\n");
	/* A bare LF is not a CRLF: kept, escaped, so the record says exactly what crossed. */
	DATA(t, "C:", "RSET\n");
	DATA(t, "C:", "x\r\n2025-11-24T16:00:00.000000Z e5c S: 250 forged\r\n");
	DATA(t, "S:",
	     "250 \xe2\x80\xae"
	     "evil \xe2\x82\xac\r\n");
	transcript_line(t, transcript_now(), "C:", U("nul\0here\r\n"), 10, 0);
	/* An event: its backslashes are escapes of the caller's; controls and overrides are not. */
	transcript_event(t, "tls sni=%s",
	                 "a\nb\\x41\xe2\x81\xa6"
	                 "c");
	transcript_event(t, "%s", "");
	transcript_sync(t);
	assert_non_null(text = slurp(l, DAY, NULL));
	/* One line per record, whatever the octets were. */
	assert_int_equal(count_lines(text), 8);
	assert_records(
	    text, 1,
	    (const char *[]){"e5c C: a\\x1b[31mb\\\\c\\x7f", "e5c C: RSET\\x0a",
	                     "e5c C: x\\x0d\\x0a2025-11-24T16:00:00.000000Z e5c S: 250 "
	                     "forged",
	                     "e5c S: 250 \\xe2\\x80\\xaeevil \xe2\x82\xac", "e5c C: nul\\x00here",
	                     "e5c * tls sni=a\\x0ab\\x41\\xe2\\x81\\xa6c", "e5c * ", NULL});
	free(text);
	transcript_close(t);
}

/*
 * A long line's later pieces are recorded as the caller names them ("C+"); a line of
 * control octets four times longer once escaped is recorded whole, and a buffer past
 * JOURNAL_FLUSH_AT is written without waiting for a tick.
 */
static void
test_long_lines(void **state)
{
	struct logdir *l = *state;
	const size_t n = JOURNAL_FLUSH_AT + 100;
	unsigned char *big;
	struct transcript *t;
	char *text, *rec;
	size_t len, i;

	t = open_session("1009", &START, NULL, 0);
	DATA(t, "C:", "first piece");
	DATA(t, "C+", "second piece\r\n");
	assert_non_null(big = malloc(n));
	memset(big, 0x01, n);
	transcript_data(t, "S:", big, n);
	/* Past the mark: written now, without transcript_sync. */
	assert_non_null(text = slurp(l, DAY, &len));
	assert_int_equal(count_lines(text), 4);
	assert_record(text, 1, "1009 C: first piece");
	assert_record(text, 2, "1009 C+ second piece");
	rec = strstr(text, "1009 S: ");
	assert_non_null(rec);
	rec += 8;
	for (i = 0; i < n; i++)
		assert_memory_equal(rec + 4 * i, "\\x01", 4);
	assert_int_equal(rec[4 * n], '\n');
	assert_int_equal(rec + 4 * n + 1, text + len);
	free(text);
	free(big);
	transcript_close(t);
}

/* Secrets become the marker; only the user name the caller decoded stays, escaped. */
static void
test_redacted(void **state)
{
	struct logdir *l = *state;
	struct transcript *t;
	char *text;

	t = open_session("5ec", &START, NULL, 0);
	transcript_redacted(t, "C:", U("AUTH PLAIN "), 11, "alice");
	transcript_redacted(t, "C:", U(""), 0, NULL);
	transcript_redacted(t, "C:", U("AUTH\tLOGIN "), 11, "");
	transcript_redacted(t, "C:", U("AUTH PLAIN "), 11, "ev\nil");
	transcript_sync(t);
	assert_non_null(text = slurp(l, DAY, NULL));
	assert_int_equal(count_lines(text), 5);
	assert_records(text, 1,
	               (const char *[]){"5ec C: AUTH PLAIN [redacted user=alice]",
	                                "5ec C: [redacted]", "5ec C: AUTH\tLOGIN [redacted]",
	                                "5ec C: AUTH PLAIN [redacted user=ev\\x0ail]", NULL});
	free(text);
	transcript_close(t);
}

struct located {
	int called;
	char file[16];
	int64_t offset;
};

static void
located_cb(void *arg, const char *file, int64_t offset)
{
	struct located *loc = arg;

	loc->called++;
	snprintf(loc->file, sizeof(loc->file), "%s", file);
	loc->offset = offset;
}

/* The line at offset of a file (the event line's pointer), without its '\n'. */
static void
line_at(const struct logdir *l, const char *name, int64_t offset, char *out, size_t size)
{
	char *text = slurp(l, name, NULL);

	assert_non_null(text);
	assert_true(offset >= 0);
	assert_true(offset == 0 || text[offset - 1] == '\n');
	nth_line(text + offset, 0, out, size);
	free(text);
}

/*
 * The event's pointer {file, offset} is the session's first record exactly: told once the
 * batch holding it is written (not before), at once when it is written already.
 */
static void
test_locate(void **state)
{
	struct logdir *l = *state;
	struct transcript *a, *b;
	struct located loc = {0}, again = {0};
	char line[256];

	a = open_session("aaaa", &START, NULL, 0);
	DATA(a, "C:", "EHLO a\r\n");
	transcript_sync(a); /* b's record lands after a written batch: a nonzero offset */
	DATA(a, "C:", "NOOP\r\n");
	b = open_session("bbbb", &START, NULL, 0);
	DATA(a, "C:", "QUIT\r\n");
	DATA(b, "C:", "EHLO b\r\n");
	assert_int_equal(transcript_locate(b, located_cb, &loc), 0);
	assert_int_equal(loc.called, 0); /* its record is still in the buffer */
	transcript_sync(b);
	assert_int_equal(loc.called, 1);
	assert_string_equal(loc.file, DAY);
	line_at(l, DAY, loc.offset, line, sizeof(line));
	assert_string_equal(line, "2025-11-24T16:00:00.123456Z bbbb * session "
	                          "client=[192.0.2.1]:4242 listener=127.0.0.1:2525 "
	                          "upstream=127.0.0.1:25");
	/* Written already: told at once, the same place. */
	assert_int_equal(transcript_locate(b, located_cb, &again), 0);
	assert_int_equal(again.called, 1);
	assert_int_equal(again.offset, loc.offset);
	memset(&again, 0, sizeof(again));
	assert_int_equal(transcript_locate(a, located_cb, &again), 0);
	assert_int_equal(again.called, 1);
	assert_int_equal(again.offset, 0);
	assert_int_equal(transcript_locate(NULL, located_cb, &again), -1);
	transcript_close(a);
	transcript_close(b);
}

/* A session that started on another day records into that day's journal. */
static void
test_day_of_start(void **state)
{
	struct logdir *l = *state;
	const struct timeval then = {1577836800 + 3600, 7};
	struct transcript *t, *u;
	char rel[32], line[128], *text;

	t = open_session("01d", &then, rel, sizeof(rel));
	assert_string_equal(rel, "2020-01-01.log");
	u = open_session("4e3", &START, NULL, 0);
	DATA(t, "C:", "QUIT\r\n");
	DATA(u, "C:", "QUIT\r\n");
	transcript_sync(t);
	transcript_sync(u);
	assert_non_null(text = slurp(l, "2020-01-01.log", NULL));
	assert_int_equal(count_lines(text), 2);
	nth_line(text, 0, line, sizeof(line));
	assert_true(strncmp(line, "2020-01-01T01:00:00.000007Z 01d * session ", 42) == 0);
	assert_record(text, 1, "01d C: QUIT");
	free(text);
	assert_non_null(text = slurp(l, DAY, NULL));
	assert_int_equal(count_lines(text), 2);
	assert_null(strstr(text, "01d"));
	free(text);
	/* A relpath buffer too small is cut, NUL-terminated. */
	transcript_close(open_session("cut", &START, rel, 5));
	assert_string_equal(rel, "2025");
	transcript_close(t);
	transcript_close(u);
}

/* Ten identical exchanges of a client line and our own reply, then line and reply. */
static void
flood(struct transcript *t, const char *line, const char *reply)
{
	for (int i = 0; i < 10; i++) {
		DATA(t, "C:", "XCLIENT ADDR=1.2.3.4\r\n");
		DATA(t, "P:", "550 5.7.0 no\r\n");
	}
	transcript_data(t, "C:", U(line), strlen(line));
	transcript_data(t, "P:", U(reply), strlen(reply));
}

/* The records of a flood: 3 exchanges of 2 records, then the note, from line `at` on. */
static void
assert_flood(const char *text, int at, int counted)
{
	char line[128], note[64];

	for (int i = 0; i < 3; i++) {
		nth_line(text, at + 2 * i, line, sizeof(line));
		assert_string_equal(line + 28, "f100d C: XCLIENT ADDR=1.2.3.4");
		nth_line(text, at + 1 + 2 * i, line, sizeof(line));
		assert_string_equal(line + 28, "f100d P: 550 5.7.0 no");
	}
	nth_line(text, at + 6, line, sizeof(line));
	assert_timestamp(line);
	snprintf(note, sizeof(note), "f100d * repeated %d times records=2", counted);
	assert_string_equal(line + 28, note);
}

/*
 * A client flooding a command the proxy answers itself: the first exchanges are recorded,
 * the identical ones after counted in one "* repeated" record right after them, when a
 * different exchange comes or the session ends.
 */
static void
test_repeats(void **state)
{
	struct logdir *l = *state;
	struct transcript *t;
	char *text;

	t = open_session("f100d", &START, NULL, 0);
	flood(t, "NOOP\r\n", "250 ok\r\n");
	/* The 11th identical exchange ends the session: counted, said at its close. */
	flood(t, "XCLIENT ADDR=1.2.3.4\r\n", "550 5.7.0 no\r\n");
	transcript_close(t);
	journal_flush_all(); /* closed: its records go with the next batch */
	assert_non_null(text = slurp(l, DAY, NULL));
	/* The first record, a flood, NOOP and 250, a flood of 11. */
	assert_int_equal(count_lines(text), 1 + 7 + 2 + 7);
	assert_flood(text, 1, 7);
	assert_record(text, 8, "f100d C: NOOP");
	assert_record(text, 9, "f100d P: 250 ok");
	/* The count starts again: the first is recorded once more, 8 counted. */
	assert_flood(text, 10, 8);
	free(text);
}

/*
 * Records that follow the counted exchanges without ending an exchange of their own (the
 * client's QUIT and the server's 221): the "* repeated" note still comes right after the
 * counted exchanges, not after them, where it would say QUIT and 221 came 7 more times
 * (README "Repeated replies").  It did, at transcript_close, before this was fixed.
 */
static void
test_repeats_then_quit(void **state)
{
	struct logdir *l = *state;
	struct transcript *t;
	char *text;
	int i;

	t = open_session("f100d", &START, NULL, 0);
	for (i = 0; i < 10; i++) {
		DATA(t, "C:", "XCLIENT ADDR=1.2.3.4\r\n");
		DATA(t, "P:", "550 5.7.0 no\r\n");
	}
	DATA(t, "C:", "QUIT\r\n");
	DATA(t, "S:", "221 bye\r\n");
	transcript_close(t);
	journal_flush_all();
	assert_non_null(text = slurp(l, DAY, NULL));
	assert_int_equal(count_lines(text), 1 + 7 + 2);
	assert_flood(text, 1, 7);
	assert_record(text, 8, "f100d C: QUIT");
	assert_record(text, 9, "f100d S: 221 bye");
	free(text);
}

/* Functions given no transcript do nothing (a session whose open failed). */
static void
test_null_transcript(void **state)
{
	struct logdir *l = *state;

	DATA(NULL, "C:", "x\r\n");
	transcript_line(NULL, transcript_now(), "C:", U("x\r\n"), 3, 1);
	transcript_redacted(NULL, "C:", U("x"), 1, "u");
	transcript_event(NULL, "x");
	transcript_sync(NULL);
	transcript_close(NULL);
	journal_flush_all();
	assert_null(slurp(l, DAY, NULL));
}

/*
 * A log directory that can't be written: transcript_failing says so, the batch is counted
 * lost and the event's pointer says -1; writing resumes once the directory is back.
 */
static void
test_failing(void **state)
{
	struct logdir *l = *state;
	struct transcript *t;
	struct located loc = {0};
	uint64_t errors = transcript_write_errors();
	char path[256], *text;
	int fd;

	t = open_session("fa11", &START, NULL, 0);
	transcript_sync(t);
	assert_false(transcript_failing());
	/* The directory goes, a regular file takes its name: nothing can be created there. */
	snprintf(path, sizeof(path), "%s/%s", l->path, DAY);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(rmdir(l->path), 0);
	assert_true((fd = open(l->path, O_WRONLY | O_CREAT | O_EXCL, 0600)) >= 0);
	close(fd);
	DATA(t, "C:", "lost\r\n");
	transcript_close(t);
	t = open_session("fa12", &START, NULL, 0);
	assert_int_equal(transcript_locate(t, located_cb, &loc), 0);
	transcript_sync(t);
	assert_true(transcript_failing());
	assert_int_equal(transcript_write_errors(), errors + 1);
	assert_int_equal(loc.called, 1);
	assert_int_equal(loc.offset, -1);
	/* The directory is back: the next batch is written, and failing clears. */
	assert_int_equal(unlink(l->path), 0);
	assert_int_equal(mkdir(l->path, 0700), 0);
	DATA(t, "C:", "kept\r\n");
	transcript_sync(t);
	assert_false(transcript_failing());
	assert_int_equal(transcript_write_errors(), errors + 1);
	assert_non_null(text = slurp(l, DAY, NULL));
	assert_int_equal(count_lines(text), 1);
	assert_record(text, 0, "fa12 C: kept");
	free(text);
	transcript_close(t);
}

/* No log directory at all: no transcript, errno says why. */
static void
test_no_dir(void **state)
{
	char rel[32] = "x", path[128];
	struct logdir *l = *state;

	transcript_shutdown();
	snprintf(path, sizeof(path), "%s/file", l->path);
	assert_int_equal(close(open(path, O_WRONLY | O_CREAT, 0600)), 0);
	snprintf(path, sizeof(path), "%s/file/logs", l->path);
	assert_int_equal(transcript_init(NULL, path, -1), -1);
	errno = 0;
	assert_null(transcript_open("n0", &START, "c", "l", "u", rel, sizeof(rel)));
	assert_int_equal(errno, EBADF);
	/* teardown's transcript_shutdown finds nothing open. */
}

/* The timestamp's layout, microseconds zero-padded. */
static void
test_timestamp(void **state)
{
	const struct timeval tv = {1764000000 + 59, 5};
	char buf[32], small[8] = "zzz";

	(void)state;
	transcript_timestamp(&tv, buf, sizeof(buf));
	assert_string_equal(buf, "2025-11-24T16:00:59.000005Z");
	transcript_timestamp(&START, buf, sizeof(buf));
	assert_string_equal(buf, "2025-11-24T16:00:00.123456Z");
	transcript_timestamp(&tv, small, sizeof(small));
	assert_string_equal(small, "");
}

/* Each test with a fresh fixture of its own. */
#define FIXTURE_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    FIXTURE_TEST(test_record_format),   FIXTURE_TEST(test_escaping),
	    FIXTURE_TEST(test_long_lines),      FIXTURE_TEST(test_redacted),
	    FIXTURE_TEST(test_locate),          FIXTURE_TEST(test_day_of_start),
	    FIXTURE_TEST(test_repeats),         FIXTURE_TEST(test_repeats_then_quit),
	    FIXTURE_TEST(test_null_transcript), FIXTURE_TEST(test_failing),
	    FIXTURE_TEST(test_no_dir),          FIXTURE_TEST(test_timestamp),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
