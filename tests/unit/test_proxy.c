/* Unit tests for proxy/proxy.c: places under --max-sessions, one process or workers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/options.h"
#include "proxy/proxy.h"

static struct options opts;
static struct proxy_shared shared;

static void
setup_proxy(struct proxy *px, unsigned max, struct proxy_shared *sh, unsigned worker)
{
	memset(px, 0, sizeof(*px));
	memset(&opts, 0, sizeof(opts));
	opts.max_sessions = max;
	px->opts = &opts;
	px->shared = sh;
	px->worker = worker;
}

/* One process: the places are its own session count. */
static void
test_one_process_counts_its_sessions(void **state)
{
	struct proxy px;

	(void)state;
	setup_proxy(&px, 2, NULL, 0);
	assert_int_equal(proxy_session_admit(&px), 0);
	px.nsessions = 1;
	assert_int_equal(proxy_session_admit(&px), 0);
	px.nsessions = 2;
	assert_int_equal(proxy_session_admit(&px), -1);
}

/* Workers: a place taken by one is not there for another; given back, it is. */
static void
test_workers_share_the_places(void **state)
{
	struct proxy a, b;

	(void)state;
	memset(&shared, 0, sizeof(shared));
	setup_proxy(&a, 3, &shared, 0);
	setup_proxy(&b, 3, &shared, 1);
	assert_int_equal(proxy_session_admit(&a), 0);
	assert_int_equal(proxy_session_admit(&b), 0);
	assert_int_equal(proxy_session_admit(&b), 0);
	assert_int_equal(proxy_session_admit(&a), -1);
	assert_int_equal(proxy_session_admit(&b), -1);
	/* A refusal takes nothing: the counts are those of the three admitted. */
	assert_int_equal(proxy_sessions_total(&a), 3);
	assert_int_equal(atomic_load(&shared.of_worker[0]), 1);
	assert_int_equal(atomic_load(&shared.of_worker[1]), 2);
	proxy_session_unadmit(&b);
	assert_int_equal(atomic_load(&shared.of_worker[1]), 1);
	assert_int_equal(proxy_sessions_total(&b), 2);
	assert_int_equal(proxy_session_admit(&a), 0);
	assert_int_equal(atomic_load(&shared.of_worker[0]), 2);
	assert_int_equal(proxy_session_admit(&b), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_one_process_counts_its_sessions),
	    cmocka_unit_test(test_workers_share_the_places),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
