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

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_int_edges),
	    cmocka_unit_test(test_int_every_width),
	    cmocka_unit_test(test_int_in_array),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
