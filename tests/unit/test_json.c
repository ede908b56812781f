/* Unit tests for logs/json.c: the integers the event line writes without snprintf. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "logs/json.h"

/* jw_int(v) alone writes what printf's %lld does. */
static void
check_int(long long v)
{
	struct json_writer w = {0};
	char want[32];

	snprintf(want, sizeof(want), "%lld", v);
	jw_int(&w, v);
	assert_false(w.failed);
	assert_int_equal(w.len, strlen(want));
	assert_memory_equal(w.buf, want, w.len);
	jw_free(&w);
}

static void
test_int_edges(void **state)
{
	(void)state;
	check_int(0);
	check_int(7);
	check_int(-1);
	check_int(10);
	check_int(250);
	check_int(1234567890123LL);
	check_int(-987654321LL);
	check_int(LLONG_MAX);
	check_int(LLONG_MIN);
}

static void
test_int_every_width(void **state)
{
	long long v = 1;

	(void)state;
	for (int i = 0; i < 18; i++, v *= 10) {
		check_int(v - 1);
		check_int(v);
		check_int(-v);
	}
}

/* Integers among other values: commas placed as for any value. */
static void
test_int_in_array(void **state)
{
	struct json_writer w = {0};
	const char *want = "[0,-5,42]";

	(void)state;
	jw_open(&w, '[');
	jw_int(&w, 0);
	jw_int(&w, -5);
	jw_int(&w, 42);
	jw_close(&w, ']');
	assert_int_equal(w.len, strlen(want));
	assert_memory_equal(w.buf, want, w.len);
	jw_free(&w);
}

/*
 * jw_duration(us, v) writes what jw_real(v) does, v computed as report.c does from two times
 * (whole seconds and a microsecond difference of either sign): every us up to 2 s, then
 * strides across the rest of the range to 1,000 s, and its edges.
 */
static void
check_duration(long long us, long long sec)
{
	struct json_writer a = {0}, b = {0};
	long long usec = us - sec * 1000000;
	double v = (double)sec + (double)usec / 1e6;

	jw_duration(&a, us, v);
	jw_real(&b, v);
	assert_false(a.failed);
	assert_int_equal(a.len, b.len);
	assert_memory_equal(a.buf, b.buf, a.len);
	jw_free(&a);
	jw_free(&b);
}

static void
test_duration_as_real(void **state)
{
	long long us, sec;

	(void)state;
	for (us = 0; us <= 2000000; us++) {
		check_duration(us, us / 1000000);
		if (us >= 1)
			check_duration(us, us / 1000000 + 1); /* a negative microsecond difference */
	}
	for (us = 2000000; us < 1001000000; us += 7919) {
		sec = us / 1000000;
		check_duration(us, sec);
		check_duration(us, sec + 1);
		check_duration(us + 999, sec);
	}
	check_duration(999999999, 999);
	check_duration(1000000000, 1000);
	check_duration(-5, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_int_edges),
	    cmocka_unit_test(test_int_every_width),
	    cmocka_unit_test(test_int_in_array),
	    cmocka_unit_test(test_duration_as_real),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
