#ifndef SMTPTAP_PROXYPROTO_H
#define SMTPTAP_PROXYPROTO_H

/*
 * The client's identity between proxies, without I/O: HAProxy's PROXY protocol header
 * (proxy-protocol.txt, version 1 text and version 2 binary) written and read, and Postfix's
 * XCLIENT command (XCLIENT_README) written.
 */

#include <stddef.h>
#include <stdint.h>

struct sockaddr;

/* Longest version 1 header, CRLF included (proxy-protocol.txt 2.1). */
#define PROXYPROTO_V1_MAX 107
/* Version 2: the fixed part, and the longest address block we accept after it. */
#define PROXYPROTO_V2_FIXED 16
#define PROXYPROTO_V2_MAX_LEN 4096
/* Room enough for any header proxyproto_encode writes. */
#define PROXYPROTO_OUT_MAX 108

/* A TCP connection's two ends; family AF_UNSPEC when they are not known. */
struct proxyproto_addrs {
	int family; /* AF_INET, AF_INET6 or AF_UNSPEC */
	uint8_t src[16];
	uint8_t dst[16];
	uint16_t sport; /* host order */
	uint16_t dport;
};

/* What a received header said. */
struct proxyproto_header {
	int version; /* 1 or 2 */
	int local;   /* version 2 LOCAL: the balancer's own connection (a health check) */
	struct proxyproto_addrs addrs; /* AF_UNSPEC for LOCAL, UNKNOWN, or a non-IP family */
	size_t len;                    /* octets the header took */
};

enum proxyproto_result {
	PROXYPROTO_INVALID = -1,
	PROXYPROTO_MORE = 0, /* a valid beginning: read more */
	PROXYPROTO_DONE = 1,
};

/* Fills a from a client's address and the local address it reached; -1 for other families. */
int proxyproto_addrs_from(struct proxyproto_addrs *a, const struct sockaddr *src,
                          const struct sockaddr *dst);

/* Writes one end of a as "1.2.3.4:25" or "[::1]:25" (src when which is 0, else dst). */
void proxyproto_format(const struct proxyproto_addrs *a, int which, char *buf, size_t size);

/* Writes the version 1 (text) or 2 (binary) header for a TCP connection; its length, or 0
 * when a has no address or out is too small. */
size_t proxyproto_encode(int version, const struct proxyproto_addrs *a, unsigned char *out,
                         size_t size);

/*
 * Reads a header at the start of data (v1 or v2, told apart by their first octets).  On
 * PROXYPROTO_INVALID *why says what was wrong (a constant string).
 */
enum proxyproto_result proxyproto_parse(const unsigned char *data, size_t len,
                                        struct proxyproto_header *h, const char **why);

/* XCLIENT attributes a server may announce (the ones smtptap sends). */
#define XCLIENT_ADDR 0x01
#define XCLIENT_PORT 0x02
#define XCLIENT_NAME 0x04

/* The attributes a server's EHLO reply (CRLF lines) announces on its XCLIENT line; -1 when
 * it offers no XCLIENT. */
int proxyproto_xclient_offer(const unsigned char *reply, size_t len);

/*
 * Writes "XCLIENT ADDR=... PORT=... NAME=[UNAVAILABLE]\r\n" with the attributes in attrs,
 * xtext-encoded, IPv6 addresses with the "IPV6:" prefix; its length, or 0 when a has no
 * address, attrs lacks ADDR, or out is too small.
 */
size_t proxyproto_xclient(const struct proxyproto_addrs *a, int attrs, char *out, size_t size);

#endif
