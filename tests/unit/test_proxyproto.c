/*
 * Unit tests for smtp/proxyproto.c: PROXY protocol headers checked octet by octet against
 * HAProxy's proxy-protocol.txt (2.1 text, 2.2 binary), and the XCLIENT command.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "smtp/proxyproto.h"

static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                      0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static void
addrs4(struct proxyproto_addrs *a)
{
	struct sockaddr_in src = {0}, dst = {0};

	src.sin_family = dst.sin_family = AF_INET;
	inet_pton(AF_INET, "192.0.2.7", &src.sin_addr);
	inet_pton(AF_INET, "198.51.100.25", &dst.sin_addr);
	src.sin_port = htons(40000);
	dst.sin_port = htons(25);
	assert_int_equal(proxyproto_addrs_from(a, (struct sockaddr *)&src, (struct sockaddr *)&dst),
	                 0);
}

static void
addrs6(struct proxyproto_addrs *a)
{
	struct sockaddr_in6 src = {0}, dst = {0};

	src.sin6_family = dst.sin6_family = AF_INET6;
	inet_pton(AF_INET6, "2001:db8::7", &src.sin6_addr);
	inet_pton(AF_INET6, "2001:db8::25", &dst.sin6_addr);
	src.sin6_port = htons(40000);
	dst.sin6_port = htons(2525);
	assert_int_equal(proxyproto_addrs_from(a, (struct sockaddr *)&src, (struct sockaddr *)&dst),
	                 0);
}

static void
test_v1_encode(void **state)
{
	struct proxyproto_addrs a;
	unsigned char out[PROXYPROTO_OUT_MAX];
	size_t n;

	(void)state;
	addrs4(&a);
	n = proxyproto_encode(1, &a, out, sizeof(out));
	assert_int_equal(n, strlen("PROXY TCP4 192.0.2.7 198.51.100.25 40000 25\r\n"));
	assert_memory_equal(out, "PROXY TCP4 192.0.2.7 198.51.100.25 40000 25\r\n", n);
	addrs6(&a);
	n = proxyproto_encode(1, &a, out, sizeof(out));
	assert_int_equal(n, strlen("PROXY TCP6 2001:db8::7 2001:db8::25 40000 2525\r\n"));
	assert_memory_equal(out, "PROXY TCP6 2001:db8::7 2001:db8::25 40000 2525\r\n", n);
	/* The longest possible v1 header fits in 107 octets (and our buffer). */
	memset(&a, 0xff, sizeof(a));
	a.family = AF_INET6;
	n = proxyproto_encode(1, &a, out, sizeof(out));
	assert_true(n > 0 && n <= PROXYPROTO_V1_MAX);
	a.family = AF_UNSPEC;
	assert_int_equal(proxyproto_encode(1, &a, out, sizeof(out)), 0);
}

static void
test_v2_encode(void **state)
{
	static const unsigned char want4[] = {0x21, 0x11, 0x00, 0x0c, 192, 0,    2,   7,
	                                      198,  51,   100,  25,   0x9c, 0x40, 0x00, 25};
	static const unsigned char want6_head[] = {0x21, 0x21, 0x00, 0x24};
	struct proxyproto_addrs a;
	unsigned char out[PROXYPROTO_OUT_MAX];
	size_t n;

	(void)state;
	addrs4(&a);
	n = proxyproto_encode(2, &a, out, sizeof(out));
	assert_int_equal(n, 28);
	assert_memory_equal(out, sig, 12);
	assert_memory_equal(out + 12, want4, sizeof(want4));
	addrs6(&a);
	n = proxyproto_encode(2, &a, out, sizeof(out));
	assert_int_equal(n, 52);
	assert_memory_equal(out, sig, 12);
	assert_memory_equal(out + 12, want6_head, 4);
	assert_memory_equal(out + 16, a.src, 16);
	assert_memory_equal(out + 32, a.dst, 16);
	assert_int_equal(out[48] << 8 | out[49], 40000);
	assert_int_equal(out[50] << 8 | out[51], 2525);
	assert_int_equal(proxyproto_encode(2, &a, out, 51), 0); /* too small: nothing */
}

/* Every encoded header parses back to the same addresses, also fed one octet at a time. */
static void
test_round_trip(void **state)
{
	struct proxyproto_addrs a;
	struct proxyproto_header h;
	unsigned char out[PROXYPROTO_OUT_MAX];
	const char *why;
	int v, fam;
	size_t n, i;

	(void)state;
	for (fam = 0; fam < 2; fam++) {
		for (v = 1; v <= 2; v++) {
			if (fam == 0)
				addrs4(&a);
			else
				addrs6(&a);
			n = proxyproto_encode(v, &a, out, sizeof(out));
			for (i = 0; i < n; i++)
				assert_int_equal(proxyproto_parse(out, i, &h, &why), PROXYPROTO_MORE);
			assert_int_equal(proxyproto_parse(out, n, &h, &why), PROXYPROTO_DONE);
			assert_int_equal(h.version, v);
			assert_int_equal(h.len, n);
			assert_int_equal(h.local, 0);
			assert_memory_equal(&h.addrs, &a, sizeof(a));
		}
	}
}

static void
test_v1_parse(void **state)
{
	static const char hdr[] = "PROXY TCP4 127.0.0.2 127.0.0.1 5555 2525\r\nEHLO x\r\n";
	struct proxyproto_header h;
	const char *why;
	char buf[64];

	(void)state;
	assert_int_equal(proxyproto_parse((const unsigned char *)hdr, sizeof(hdr) - 1, &h, &why),
	                 PROXYPROTO_DONE);
	assert_int_equal(h.len, strlen("PROXY TCP4 127.0.0.2 127.0.0.1 5555 2525\r\n"));
	proxyproto_format(&h.addrs, 0, buf, sizeof(buf));
	assert_string_equal(buf, "127.0.0.2:5555");
	proxyproto_format(&h.addrs, 1, buf, sizeof(buf));
	assert_string_equal(buf, "127.0.0.1:2525");
	assert_int_equal(proxyproto_parse((const unsigned char *)"PROXY UNKNOWN\r\n", 15, &h, &why),
	                 PROXYPROTO_DONE);
	assert_int_equal(h.addrs.family, AF_UNSPEC);
	assert_int_equal(h.local, 0);
}

static void
check_invalid(const char *data, size_t len)
{
	struct proxyproto_header h;
	const char *why = NULL;

	assert_int_equal(proxyproto_parse((const unsigned char *)data, len, &h, &why),
	                 PROXYPROTO_INVALID);
	assert_non_null(why);
}

static void
test_v1_invalid(void **state)
{
	char longer[200];

	(void)state;
	check_invalid("EHLO x\r\n", 8);
	check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 31);           /* bare LF */
	check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 30);           /* a port missing */
	check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", 34);       /* a field too many */
	check_invalid("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", 33);        /* two spaces */
	check_invalid("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", 32);         /* family mismatch */
	check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", 36);     /* port range */
	check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 025 2\r\n", 34);       /* leading zero */
	check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", 33);        /* sign */
	check_invalid("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", 32);         /* not TCP */
	check_invalid("PROXY TCP4 1.2.3.4\x1b 5.6.7.8 1 2\r\n", 33);     /* a control */
	check_invalid("PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", 32);        /* CR inside */
	memset(longer, 'A', sizeof(longer));
	memcpy(longer, "PROXY UNKNOWN ", 14);
	check_invalid(longer, sizeof(longer)); /* no CRLF within 107 octets */
	/* 107 octets without CRLF: invalid; 106 still may become a header. */
	check_invalid(longer, PROXYPROTO_V1_MAX);
	{
		struct proxyproto_header h;
		const char *why;
		assert_int_equal(proxyproto_parse((unsigned char *)longer, PROXYPROTO_V1_MAX - 1, &h,
		                                  &why),
		                 PROXYPROTO_MORE);
	}
}

static void
test_v2_local_and_invalid(void **state)
{
	unsigned char buf[16 + PROXYPROTO_V2_MAX_LEN + 1];
	struct proxyproto_header h;
	const char *why;

	(void)state;
	memset(buf, 0, sizeof(buf));
	memcpy(buf, sig, 12);
	/* LOCAL, as HAProxy's health checks send it: 0x20, UNSPEC, no address block. */
	buf[12] = 0x20;
	assert_int_equal(proxyproto_parse(buf, 16, &h, &why), PROXYPROTO_DONE);
	assert_int_equal(h.local, 1);
	assert_int_equal(h.len, 16);
	assert_int_equal(h.addrs.family, AF_UNSPEC);
	/* Version 1 in the binary form, and an unknown command. */
	buf[12] = 0x11;
	check_invalid((char *)buf, 16);
	buf[12] = 0x22;
	check_invalid((char *)buf, 16);
	/* A declared length over 4 KiB is refused at once, before it is read. */
	buf[12] = 0x21;
	buf[13] = 0x11;
	buf[14] = 0x10;
	buf[15] = 0x01;
	check_invalid((char *)buf, 16);
	/* Exactly 4 KiB is read to its end (TLVs after the addresses are skipped). */
	buf[14] = 0x10;
	buf[15] = 0x00;
	assert_int_equal(proxyproto_parse(buf, 16 + 4095, &h, &why), PROXYPROTO_MORE);
	assert_int_equal(proxyproto_parse(buf, 16 + 4096, &h, &why), PROXYPROTO_DONE);
	assert_int_equal(h.len, 16 + 4096);
	/* An IPv4 block shorter than its addresses, and a datagram family. */
	buf[14] = 0;
	buf[15] = 8;
	check_invalid((char *)buf, 24);
	buf[13] = 0x12;
	buf[15] = 12;
	check_invalid((char *)buf, 28);
	/* A broken signature. */
	memcpy(buf, sig, 12);
	buf[5] = 'X';
	check_invalid((char *)buf, 6);
}

static void
test_xclient(void **state)
{
	static const char ehlo[] = "250-postfix.test\r\n250-PIPELINING\r\n"
	                           "250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN\r\n"
	                           "250 8BITMIME\r\n";
	struct proxyproto_addrs a;
	char out[200];
	size_t n;

	(void)state;
	assert_int_equal(proxyproto_xclient_offer((const unsigned char *)ehlo, sizeof(ehlo) - 1),
	                 XCLIENT_ADDR | XCLIENT_PORT | XCLIENT_NAME);
	assert_int_equal(proxyproto_xclient_offer((const unsigned char *)"250-x\r\n250 XCLIENT ADDR\r\n",
	                                          26),
	                 XCLIENT_ADDR);
	assert_int_equal(proxyproto_xclient_offer((const unsigned char *)"250-x\r\n250 XCLIENTS A\r\n",
	                                          24),
	                 -1);
	assert_int_equal(proxyproto_xclient_offer((const unsigned char *)"250 x\r\n", 7), -1);
	addrs4(&a);
	n = proxyproto_xclient(&a, XCLIENT_ADDR | XCLIENT_PORT | XCLIENT_NAME, out, sizeof(out));
	assert_string_equal(out, "XCLIENT ADDR=192.0.2.7 PORT=40000 NAME=[UNAVAILABLE]\r\n");
	assert_int_equal(n, strlen(out));
	n = proxyproto_xclient(&a, XCLIENT_ADDR, out, sizeof(out));
	assert_string_equal(out, "XCLIENT ADDR=192.0.2.7\r\n");
	addrs6(&a);
	proxyproto_xclient(&a, XCLIENT_ADDR | XCLIENT_PORT, out, sizeof(out));
	assert_string_equal(out, "XCLIENT ADDR=IPV6:2001:db8::7 PORT=40000\r\n");
	/* Without ADDR on offer, or without an address, nothing is written. */
	assert_int_equal(proxyproto_xclient(&a, XCLIENT_NAME | XCLIENT_PORT, out, sizeof(out)), 0);
	a.family = AF_UNSPEC;
	assert_int_equal(proxyproto_xclient(&a, XCLIENT_ADDR, out, sizeof(out)), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_v1_encode),   cmocka_unit_test(test_v2_encode),
	    cmocka_unit_test(test_round_trip),  cmocka_unit_test(test_v1_parse),
	    cmocka_unit_test(test_v1_invalid),  cmocka_unit_test(test_v2_local_and_invalid),
	    cmocka_unit_test(test_xclient),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
