/*
 * Unit tests for logs/events.c: event lines queued and written at the end of the loop pass,
 * whole, one JSON object per line; a reader that does not keep up (a FIFO with a small pipe
 * buffer) makes lines drop whole and counted, never stall or tear; SIGHUP's reopen.
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

#include <event2/event.h>
#include <jansson.h>

#include "logs/events.h"

struct fixture {
	char dir[64];
	char path[96];
	struct event_base *base;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/test_events.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/events.json", f->dir);
	assert_non_null(f->base = event_base_new());
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	events_close();
	event_base_free(f->base);
	tmpdir_remove(f->dir);
	free(f);
	return 0;
}

/* The file's content, NUL-terminated; "" when it does not exist. */
static char *
slurp(const char *path)
{
	struct stat st;
	char *buf;
	int fd;

	if ((fd = open(path, O_RDONLY)) < 0) {
		assert_int_equal(errno, ENOENT);
		return strdup("");
	}
	assert_int_equal(fstat(fd, &st), 0);
	assert_non_null(buf = malloc((size_t)st.st_size + 1));
	assert_int_equal(read(fd, buf, (size_t)st.st_size), st.st_size);
	buf[st.st_size] = '\0';
	close(fd);
	return buf;
}

/* Splits text into its lines (each ending with '\n', checked); their number. */
static int
split_lines(char *text, char **lines, int max)
{
	int n = 0;
	char *nl;

	while (*text != '\0') {
		assert_non_null(nl = strchr(text, '\n'));
		*nl = '\0';
		assert_true(n < max);
		lines[n++] = text;
		text = nl + 1;
	}
	return n;
}

/* One line parsed as a JSON object (a torn line fails here). */
static json_t *
parse(const char *line)
{
	json_error_t err;
	json_t *o = json_loads(line, 0, &err);

	if (o == NULL)
		print_message("not JSON (%s): %.80s\n", err.text, line);
	assert_non_null(o);
	assert_true(json_is_object(o));
	return o;
}

/* One pass of the loop: what is ready runs, nothing waits. */
static void
pass(struct fixture *f)
{
	assert_true(event_base_loop(f->base, EVLOOP_NONBLOCK) >= 0); /* 1: nothing waited */
}

/* Lines are written at the end of the loop pass, each one whole JSON object per line. */
static void
test_lines(void **state)
{
	struct fixture *f = *state;
	const char own[] = "{\"own\":true}\n";
	char *lines[8], *text;
	json_t *o;

	assert_int_equal(events_open(f->base, f->path), 0);
	o = json_pack("{s:i, s:s}", "seq", 1, "text", "line\nbreak \"quoted\" caf\xc3\xa9");
	events_write(o);
	json_decref(o);
	events_write_line(own, sizeof(own) - 1);
	o = json_pack("{s:i}", "seq", 3);
	events_write(o);
	json_decref(o);
	/* Queued, not yet written: the pass's lines go out together at its end. */
	text = slurp(f->path);
	assert_string_equal(text, "");
	free(text);
	pass(f);
	text = slurp(f->path);
	assert_int_equal(split_lines(text, lines, 8), 3);
	o = parse(lines[0]);
	assert_int_equal(json_integer_value(json_object_get(o, "seq")), 1);
	assert_string_equal(json_string_value(json_object_get(o, "text")),
	                    "line\nbreak \"quoted\" caf\xc3\xa9");
	json_decref(o);
	/* ASCII only: the file reads the same in any locale. */
	assert_non_null(strstr(lines[0], "caf\\u00E9"));
	assert_string_equal(lines[1], "{\"own\":true}");
	o = parse(lines[2]);
	assert_int_equal(json_integer_value(json_object_get(o, "seq")), 3);
	json_decref(o);
	free(text);
}

/* An event bigger than the writer's static buffer is still one line. */
static void
test_big_event(void **state)
{
	struct fixture *f = *state;
	const size_t n = 100000;
	char *big, *lines[4], *text;
	json_t *o;

	assert_non_null(big = malloc(n + 1));
	memset(big, 'x', n);
	big[n] = '\0';
	assert_int_equal(events_open(f->base, f->path), 0);
	o = json_pack("{s:s, s:i}", "big", big, "seq", 7);
	events_write(o);
	json_decref(o);
	events_close(); /* writes what is queued, without the loop */
	text = slurp(f->path);
	assert_int_equal(split_lines(text, lines, 4), 1);
	o = parse(lines[0]);
	assert_int_equal(strlen(json_string_value(json_object_get(o, "big"))), n);
	assert_int_equal(json_integer_value(json_object_get(o, "seq")), 7);
	json_decref(o);
	free(text);
	free(big);
}

/* Not open (no --events): lines are ignored, nothing counted. */
static void
test_not_open(void **state)
{
	uint64_t dropped = events_dropped_total();
	json_t *o = json_pack("{s:i}", "seq", 1);

	(void)state;
	events_write(o);
	events_write_line("{}\n", 3);
	json_decref(o);
	assert_int_equal(events_dropped_total(), dropped);
}

/*
 * A reader that does not keep up: the FIFO takes 4 KiB, the queue 256 KiB, the rest is
 * dropped whole and counted; once the reader reads, the queue goes out from the loop, and the
 * reader sees whole lines only, in order, the first ones of the burst.
 */
static void
test_full_pipe(void **state)
{
	struct fixture *f = *state;
	const int total = 600;
	uint64_t dropped = events_dropped_total();
	size_t got = 0, cap = 1 << 20;
	char pad[1000], *buf, *lines[700];
	int rfd, i, n, idle;
	ssize_t r;

	assert_int_equal(mkfifo(f->path, 0600), 0);
	assert_true((rfd = open(f->path, O_RDONLY | O_NONBLOCK)) >= 0);
	assert_int_equal(events_open(f->base, f->path), 0);
	assert_true(fcntl(rfd, F_SETPIPE_SZ, 4096) >= 4096);
	memset(pad, 'p', sizeof(pad) - 1);
	pad[sizeof(pad) - 1] = '\0';
	for (i = 0; i < total; i++) {
		json_t *o = json_pack("{s:i, s:s}", "seq", i, "pad", pad);

		events_write(o); /* never blocks: the burst runs with no reader */
		json_decref(o);
	}
	/* About 260 lines fit the queue and the pipe; the rest were dropped and counted. */
	assert_true(events_dropped_total() - dropped > 300);
	assert_true(events_dropped_total() - dropped < 400);
	assert_non_null(buf = malloc(cap));
	/* Read; the loop writes on as the pipe takes more. */
	for (idle = 0; idle < 50;) {
		pass(f);
		r = read(rfd, buf + got, cap - 1 - got);
		if (r > 0) {
			got += (size_t)r;
			idle = 0;
		} else {
			assert_true(r < 0 && errno == EAGAIN);
			idle++;
		}
	}
	buf[got] = '\0';
	assert_true(got > 0 && buf[got - 1] == '\n');
	n = split_lines(buf, lines, 700);
	assert_int_equal((uint64_t)n + (events_dropped_total() - dropped), (uint64_t)total);
	for (i = 0; i < n; i++) {
		json_t *o = parse(lines[i]);

		assert_int_equal(json_integer_value(json_object_get(o, "seq")), i);
		assert_string_equal(json_string_value(json_object_get(o, "pad")), pad);
		json_decref(o);
	}
	/* Once the queue has emptied, lines are taken again. */
	{
		json_t *o = json_pack("{s:i}", "seq", total);
		uint64_t before = events_dropped_total();

		events_write(o);
		json_decref(o);
		pass(f);
		r = read(rfd, buf, cap - 1);
		assert_true(r > 0);
		buf[r] = '\0';
		assert_string_equal(buf, "{\"seq\":600}\n");
		assert_int_equal(events_dropped_total(), before);
	}
	free(buf);
	close(rfd);
}

static void
write_seq(int seq)
{
	json_t *o = json_pack("{s:i}", "seq", seq);

	events_write(o);
	json_decref(o);
}

/*
 * SIGHUP after a rotation: lines queued before go to the old file, later ones to a new file
 * at the name; a reopen that fails (a symlink planted at the name) keeps the old file.
 */
static void
test_reopen(void **state)
{
	struct fixture *f = *state;
	char old[128], old2[128], target[128], *text;

	snprintf(old, sizeof(old), "%s.1", f->path);
	snprintf(old2, sizeof(old2), "%s.2", f->path);
	snprintf(target, sizeof(target), "%s/elsewhere", f->dir);
	assert_int_equal(events_open(f->base, f->path), 0);
	write_seq(1);
	pass(f);
	write_seq(2); /* queued when the signal comes */
	assert_int_equal(rename(f->path, old), 0);
	assert_int_equal(events_reopen(), 0);
	write_seq(3);
	pass(f);
	text = slurp(old);
	assert_string_equal(text, "{\"seq\":1}\n{\"seq\":2}\n");
	free(text);
	text = slurp(f->path);
	assert_string_equal(text, "{\"seq\":3}\n");
	free(text);
	/* The name leads elsewhere now: not followed, the file held is kept. */
	assert_int_equal(rename(f->path, old2), 0);
	assert_int_equal(symlink(target, f->path), 0);
	assert_int_equal(events_reopen(), -1);
	write_seq(4);
	pass(f);
	text = slurp(old2);
	assert_string_equal(text, "{\"seq\":3}\n{\"seq\":4}\n");
	free(text);
	text = slurp(target);
	assert_string_equal(text, "");
	free(text);
}

/* A file that can't be opened: events_open fails, and nothing is written anywhere. */
static void
test_open_fails(void **state)
{
	struct fixture *f = *state;
	char path[128];
	uint64_t dropped = events_dropped_total();

	snprintf(path, sizeof(path), "%s/no/such/dir", f->dir);
	assert_int_equal(events_open(f->base, path), -1);
	write_seq(1); /* ignored, not queued for a file that isn't there */
	pass(f);
	assert_int_equal(events_dropped_total(), dropped);
	snprintf(path, sizeof(path), "%s/no", f->dir);
	assert_int_equal(access(path, F_OK), -1);
}

/* Each test with a fresh fixture of its own. */
#define FIXTURE_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    FIXTURE_TEST(test_lines),    FIXTURE_TEST(test_big_event),
	    FIXTURE_TEST(test_not_open), FIXTURE_TEST(test_full_pipe),
	    FIXTURE_TEST(test_reopen),   FIXTURE_TEST(test_open_fails),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
