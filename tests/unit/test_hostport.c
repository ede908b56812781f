/*
 * Unit tests for smtp/hostport.c: a server's HOST:PORT, as the options and replay --to
 * name one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/hostport.h"

static const struct {
	const char *in;
	const char *host; /* NULL: refused */
	const char *port;
	const char *why;
} cases[] = {
    {"127.0.0.1:25", "127.0.0.1", "25", NULL},
    {"mx.example:587", "mx.example", "587", NULL},
    {"localhost:65535", "localhost", "65535", NULL},
    {"[::1]:2525", "::1", "2525", NULL},
    {"[2001:db8::1]:1", "2001:db8::1", "1", NULL},
    {"host:0", NULL, NULL, "invalid port"},
    {"host:65536", NULL, NULL, "invalid port"},
    {"host:", NULL, NULL, "invalid port"},
    {"host:2x5", NULL, NULL, "invalid port"},
    {"host:-25", NULL, NULL, "invalid port"},
    {"[::1]:0", NULL, NULL, "invalid port"},
    {"host", NULL, NULL, "expected HOST:PORT"},
    {":25", NULL, NULL, "expected HOST:PORT"},
    {"::1:25", NULL, NULL, "an IPv6 address needs brackets: [ADDRESS]:PORT"},
    {"[::1]25", NULL, NULL, "expected [ADDRESS]:PORT"},
    {"[::1", NULL, NULL, "expected [ADDRESS]:PORT"},
};

static void
test_split(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *host = (char *)"unset", *port = (char *)"unset";
		const char *why = NULL;
		int rc = hostport_split(cases[i].in, &host, &port, &why);

		if (cases[i].host == NULL) {
			if (rc != -1 || why == NULL || strcmp(why, cases[i].why) != 0)
				fail_msg("%s: rc=%d why=%s (want -1, %s)", cases[i].in, rc,
				         why ? why : "-", cases[i].why);
			/* Nothing is left for the caller to free twice. */
			if (host != NULL && strcmp(host, "unset") != 0)
				fail_msg("%s: host left set after a refusal", cases[i].in);
			continue;
		}
		if (rc != 0 || strcmp(host, cases[i].host) != 0 || strcmp(port, cases[i].port) != 0)
			fail_msg("%s: rc=%d host=%s port=%s", cases[i].in, rc, rc == 0 ? host : "-",
			         rc == 0 ? port : "-");
		free(host);
		free(port);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_split),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
