/*
 * libFuzzer target: the PROXY header parser (proxyproto_parse), as proxyin.c feeds it, and
 * the XCLIENT offer reader.  The parser must never claim more octets than it was given, nor a
 * v1 header over 107 octets or a v2 one over 16 + 4096; fed any prefix of its input it
 * must say "more" or give the same answer; a parsed address must encode and parse back to
 * itself in both versions.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "smtp/proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_round_trip(const struct proxyproto_addrs *a)
{
	unsigned char out[PROXYPROTO_OUT_MAX];
	struct proxyproto_header h;
	const char *why;
	char xclient[256];
	size_t n;
	int v;

	for (v = 1; v <= 2; v++) {
		n = proxyproto_encode(v, a, out, sizeof(out));
		if (n == 0 || proxyproto_parse(out, n, &h, &why) != PROXYPROTO_DONE || h.len != n ||
		    memcmp(&h.addrs, a, sizeof(*a)) != 0)
			abort();
	}
	n = proxyproto_xclient(a, XCLIENT_ADDR | XCLIENT_PORT | XCLIENT_NAME, xclient,
	                       sizeof(xclient));
	if (n == 0 || n != strlen(xclient) || memchr(xclient, '\n', n) != xclient + n - 1)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxyproto_header h, hp;
	enum proxyproto_result r, rp;
	const char *why;
	size_t cut;

	r = proxyproto_parse(data, size, &h, &why);
	if (r == PROXYPROTO_INVALID && why == NULL)
		abort();
	if (r == PROXYPROTO_DONE) {
		if (h.len == 0 || h.len > size)
			abort();
		if ((h.version == 1 && h.len > PROXYPROTO_V1_MAX) ||
		    (h.version == 2 && h.len > PROXYPROTO_V2_FIXED + PROXYPROTO_V2_MAX_LEN))
			abort();
		if (h.addrs.family == AF_INET || h.addrs.family == AF_INET6)
			check_round_trip(&h.addrs);
	}
	if (r == PROXYPROTO_MORE && size >= PROXYPROTO_V2_FIXED + PROXYPROTO_V2_MAX_LEN)
		abort(); /* bounded: never waits for more than the largest header */
	/* A shorter read gives "more" or the same answer (what comes later can't change it). */
	cut = size > 0 ? (size_t)data[0] % (size + 1) : 0;
	rp = proxyproto_parse(data, cut, &hp, &why);
	if (rp != PROXYPROTO_MORE && (rp != r || (r == PROXYPROTO_DONE && hp.len != h.len)))
		abort();
	(void)proxyproto_xclient_offer(data, size);
	return 0;
}
