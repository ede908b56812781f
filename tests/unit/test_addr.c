/* Unit tests for proxy/addr.c: addresses as transcripts and events show them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/addr.h"

/* Formats HOST:PORT (numeric) through addr_numeric and addr_format into size octets. */
static void
check_format(const char *host, const char *port, size_t size, const char *want)
{
	struct sockaddr_storage ss;
	char buf[80];

	assert_true(size <= sizeof(buf));
	assert_true(addr_numeric(host, port, &ss) > 0);
	memset(buf, 'X', sizeof(buf));
	addr_format((struct sockaddr *)&ss, buf, size);
	assert_string_equal(buf, want);
}

static void
test_ipv4(void **state)
{
	(void)state;
	check_format("127.0.0.1", "2525", 80, "127.0.0.1:2525");
	check_format("10.20.30.40", "1", 80, "10.20.30.40:1");
	check_format("255.255.255.255", "65535", 80, "255.255.255.255:65535");
	check_format("0.0.0.0", "25", 80, "0.0.0.0:25");
	check_format("100.9.99.200", "25", 80, "100.9.99.200:25");
}

/* Every octet value in every place: the dotted quad is made without inet_ntop. */
static void
test_ipv4_every_octet(void **state)
{
	char host[20], want[32];

	(void)state;
	for (int place = 0; place < 4; place++)
		for (int v = 0; v < 256; v++) {
			int o[4] = {1, 22, 203, 7};

			o[place] = v;
			snprintf(host, sizeof(host), "%d.%d.%d.%d", o[0], o[1], o[2], o[3]);
			snprintf(want, sizeof(want), "%s:587", host);
			check_format(host, "587", 80, want);
		}
}

static void
test_ipv6_bracketed(void **state)
{
	(void)state;
	check_format("::1", "25", 80, "[::1]:25");
	check_format("2001:db8::10", "587", 80, "[2001:db8::10]:587");
	check_format("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "65535", 80,
	             "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
}

/* A buffer too small keeps what fits of the host and never overruns. */
static void
test_small_buffer(void **state)
{
	(void)state;
	check_format("127.0.0.1", "2525", 10, "127.0.0.1");
	check_format("127.0.0.1", "2525", 5, "127.");
	check_format("127.0.0.1", "2525", 14, "127.0.0.1");
	check_format("127.0.0.1", "2525", 15, "127.0.0.1:2525");
}

static void
test_unknown_family(void **state)
{
	struct sockaddr_storage ss;
	char buf[16];

	(void)state;
	memset(&ss, 0, sizeof(ss));
	ss.ss_family = AF_UNIX;
	addr_format((struct sockaddr *)&ss, buf, sizeof(buf));
	assert_string_equal(buf, "unknown");
}

static void
test_numeric_rejects(void **state)
{
	struct sockaddr_storage ss;

	(void)state;
	assert_int_equal(addr_numeric("mail.example.net", "25", &ss), 0);
	assert_int_equal(addr_numeric("127.0.0.1", "0", &ss), 0);
	assert_int_equal(addr_numeric("127.0.0.1", "65536", &ss), 0);
	assert_int_equal(addr_numeric("127.0.0.1", "25x", &ss), 0);
	assert_int_equal(addr_numeric("127.0.0.1", "", &ss), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ipv4), cmocka_unit_test(test_ipv4_every_octet),
	    cmocka_unit_test(test_ipv6_bracketed),
	    cmocka_unit_test(test_small_buffer),
	    cmocka_unit_test(test_unknown_family),
	    cmocka_unit_test(test_numeric_rejects),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
