/*
 * The PROXY protocol (HAProxy's proxy-protocol.txt) both ways and Postfix's XCLIENT
 * command: encoding and parsing only, no I/O, so that unit tests and the fuzzer see all of it.
 */
#include "smtp/proxyproto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static const unsigned char v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                         0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char v1_sig[] = "PROXY ";

int
proxyproto_addrs_from(struct proxyproto_addrs *a, const struct sockaddr *src,
                      const struct sockaddr *dst)
{
	memset(a, 0, sizeof(*a));
	a->family = AF_UNSPEC;
	if (src == NULL || dst == NULL || src->sa_family != dst->sa_family)
		return -1;
	if (src->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const void *)src, *d4 = (const void *)dst;

		memcpy(a->src, &s4->sin_addr, 4);
		memcpy(a->dst, &d4->sin_addr, 4);
		a->sport = ntohs(s4->sin_port);
		a->dport = ntohs(d4->sin_port);
	} else if (src->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const void *)src, *d6 = (const void *)dst;

		memcpy(a->src, &s6->sin6_addr, 16);
		memcpy(a->dst, &d6->sin6_addr, 16);
		a->sport = ntohs(s6->sin6_port);
		a->dport = ntohs(d6->sin6_port);
	} else {
		return -1;
	}
	a->family = src->sa_family;
	return 0;
}

void
proxyproto_format(const struct proxyproto_addrs *a, int which, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN];
	const uint8_t *addr = which == 0 ? a->src : a->dst;
	unsigned port = which == 0 ? a->sport : a->dport;

	if (a->family != AF_INET && a->family != AF_INET6) {
		snprintf(buf, size, "unknown");
		return;
	}
	inet_ntop(a->family, addr, ip, sizeof(ip));
	snprintf(buf, size, a->family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, port);
}

static size_t
proxyproto_encode_v1(const struct proxyproto_addrs *a, unsigned char *out, size_t size)
{
	char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
	int n;

	inet_ntop(a->family, a->src, src, sizeof(src));
	inet_ntop(a->family, a->dst, dst, sizeof(dst));
	n = snprintf((char *)out, size, "PROXY %s %s %s %u %u\r\n",
	             a->family == AF_INET ? "TCP4" : "TCP6", src, dst, a->sport, a->dport);
	return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

static size_t
proxyproto_encode_v2(const struct proxyproto_addrs *a, unsigned char *out, size_t size)
{
	size_t alen = a->family == AF_INET ? 4 : 16, blen = 2 * alen + 4;
	unsigned char *p = out + PROXYPROTO_V2_FIXED;

	if (size < PROXYPROTO_V2_FIXED + blen)
		return 0;
	memcpy(out, v2_sig, sizeof(v2_sig));
	out[12] = 0x21; /* version 2, PROXY */
	out[13] = a->family == AF_INET ? 0x11 : 0x21; /* TCP over IPv4 / IPv6 */
	out[14] = (unsigned char)(blen >> 8);
	out[15] = (unsigned char)(blen & 0xff);
	memcpy(p, a->src, alen);
	memcpy(p + alen, a->dst, alen);
	p += 2 * alen;
	p[0] = (unsigned char)(a->sport >> 8);
	p[1] = (unsigned char)(a->sport & 0xff);
	p[2] = (unsigned char)(a->dport >> 8);
	p[3] = (unsigned char)(a->dport & 0xff);
	return PROXYPROTO_V2_FIXED + blen;
}

size_t
proxyproto_encode(int version, const struct proxyproto_addrs *a, unsigned char *out, size_t size)
{
	if (a->family != AF_INET && a->family != AF_INET6)
		return 0;
	return version == 1 ? proxyproto_encode_v1(a, out, size) : proxyproto_encode_v2(a, out, size);
}

/* A decimal port with no sign, no leading zero (but "0"), at most 65535. */
static int
proxyproto_port(const char *s, uint16_t *port)
{
	unsigned long v = 0;
	size_t i, n = strlen(s);

	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return -1;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

/* The five fields after "PROXY ": protocol, addresses and ports, one space apart. */
static enum proxyproto_result
proxyproto_v1_fields(char *line, struct proxyproto_header *h, const char **why)
{
	char *f[5];
	int n = 0, family;
	char *p = line;

	if (strncmp(p, "UNKNOWN", 7) == 0 && (p[7] == '\0' || p[7] == ' '))
		return PROXYPROTO_DONE; /* addresses, if any, are to be ignored */
	while (n < 5) {
		f[n++] = p;
		if ((p = strchr(p, ' ')) == NULL)
			break;
		*p++ = '\0';
	}
	if (n != 5 || p != NULL) {
		*why = "v1 header: expected protocol, two addresses and two ports";
		return PROXYPROTO_INVALID;
	}
	if (strcmp(f[0], "TCP4") == 0)
		family = AF_INET;
	else if (strcmp(f[0], "TCP6") == 0)
		family = AF_INET6;
	else {
		*why = "v1 header: protocol is not TCP4, TCP6 or UNKNOWN";
		return PROXYPROTO_INVALID;
	}
	if (inet_pton(family, f[1], h->addrs.src) != 1 ||
	    inet_pton(family, f[2], h->addrs.dst) != 1) {
		*why = "v1 header: invalid address";
		return PROXYPROTO_INVALID;
	}
	if (proxyproto_port(f[3], &h->addrs.sport) != 0 ||
	    proxyproto_port(f[4], &h->addrs.dport) != 0) {
		*why = "v1 header: invalid port";
		return PROXYPROTO_INVALID;
	}
	h->addrs.family = family;
	return PROXYPROTO_DONE;
}

static enum proxyproto_result
proxyproto_parse_v1(const unsigned char *data, size_t len, struct proxyproto_header *h,
                    const char **why)
{
	char line[PROXYPROTO_V1_MAX + 1];
	size_t i, n = len < PROXYPROTO_V1_MAX ? len : PROXYPROTO_V1_MAX;

	for (i = 0; i < n && data[i] != '\n'; i++) {
		if ((data[i] < 0x20 || data[i] > 0x7e) &&
		    !(data[i] == '\r' && (i + 1 == len || data[i + 1] == '\n'))) {
			*why = "v1 header: invalid character";
			return PROXYPROTO_INVALID;
		}
	}
	if (i == n) {
		if (n == PROXYPROTO_V1_MAX) {
			*why = "v1 header: no CRLF within 107 octets";
			return PROXYPROTO_INVALID;
		}
		return PROXYPROTO_MORE;
	}
	if (i < sizeof(v1_sig) || data[i - 1] != '\r') {
		*why = "v1 header: line does not end in CRLF";
		return PROXYPROTO_INVALID;
	}
	h->version = 1;
	h->len = i + 1;
	memcpy(line, data + sizeof(v1_sig) - 1, i - 1 - (sizeof(v1_sig) - 1));
	line[i - 1 - (sizeof(v1_sig) - 1)] = '\0';
	return proxyproto_v1_fields(line, h, why);
}

/* The address block of a version 2 PROXY command, by its family and transport. */
static enum proxyproto_result
proxyproto_v2_addrs(const unsigned char *p, size_t blen, unsigned fam,
                    struct proxyproto_header *h, const char **why)
{
	size_t alen;

	switch (fam) {
	case 0x00: /* UNSPEC: the receiver uses the connection's own addresses */
		return PROXYPROTO_DONE;
	case 0x11: /* TCP over IPv4 */
		h->addrs.family = AF_INET;
		alen = 4;
		break;
	case 0x21: /* TCP over IPv6 */
		h->addrs.family = AF_INET6;
		alen = 16;
		break;
	case 0x31: /* a UNIX stream socket: no address to use */
		if (blen < 216) {
			*why = "v2 header: address block too short";
			return PROXYPROTO_INVALID;
		}
		return PROXYPROTO_DONE;
	default:
		*why = "v2 header: not a stream connection";
		return PROXYPROTO_INVALID;
	}
	if (blen < 2 * alen + 4) {
		h->addrs.family = AF_UNSPEC;
		*why = "v2 header: address block too short";
		return PROXYPROTO_INVALID;
	}
	memcpy(h->addrs.src, p, alen);
	memcpy(h->addrs.dst, p + alen, alen);
	p += 2 * alen;
	h->addrs.sport = (uint16_t)(p[0] << 8 | p[1]);
	h->addrs.dport = (uint16_t)(p[2] << 8 | p[3]);
	return PROXYPROTO_DONE;
}

static enum proxyproto_result
proxyproto_parse_v2(const unsigned char *data, size_t len, struct proxyproto_header *h,
                    const char **why)
{
	size_t blen;

	if (len < PROXYPROTO_V2_FIXED)
		return PROXYPROTO_MORE;
	if ((data[12] & 0xf0) != 0x20 || (data[12] & 0x0f) > 1) {
		*why = "v2 header: unknown version or command";
		return PROXYPROTO_INVALID;
	}
	blen = (size_t)data[14] << 8 | data[15];
	if (blen > PROXYPROTO_V2_MAX_LEN) {
		*why = "v2 header: longer than 4096 octets";
		return PROXYPROTO_INVALID;
	}
	if (len < PROXYPROTO_V2_FIXED + blen)
		return PROXYPROTO_MORE;
	h->version = 2;
	h->len = PROXYPROTO_V2_FIXED + blen;
	if ((data[12] & 0x0f) == 0) {
		h->local = 1; /* LOCAL: whatever the block says is not a client's */
		return PROXYPROTO_DONE;
	}
	return proxyproto_v2_addrs(data + PROXYPROTO_V2_FIXED, blen, data[13], h, why);
}

enum proxyproto_result
proxyproto_parse(const unsigned char *data, size_t len, struct proxyproto_header *h,
                 const char **why)
{
	size_t n;

	memset(h, 0, sizeof(*h));
	h->addrs.family = AF_UNSPEC;
	*why = NULL;
	if (len > 0 && data[0] == v2_sig[0]) {
		n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
		if (memcmp(data, v2_sig, n) != 0) {
			*why = "not a PROXY header";
			return PROXYPROTO_INVALID;
		}
		return n < sizeof(v2_sig) ? PROXYPROTO_MORE : proxyproto_parse_v2(data, len, h, why);
	}
	n = len < sizeof(v1_sig) - 1 ? len : sizeof(v1_sig) - 1;
	if (memcmp(data, v1_sig, n) != 0) {
		*why = "not a PROXY header";
		return PROXYPROTO_INVALID;
	}
	return n < sizeof(v1_sig) - 1 ? PROXYPROTO_MORE : proxyproto_parse_v1(data, len, h, why);
}

/* The attribute named by one word of the XCLIENT line, 0 for others. */
static int
proxyproto_xclient_attr(const unsigned char *w, size_t n)
{
	static const struct {
		const char *name;
		int bit;
	} attrs[] = {{"ADDR", XCLIENT_ADDR}, {"PORT", XCLIENT_PORT}, {"NAME", XCLIENT_NAME}};
	size_t i;

	for (i = 0; i < sizeof(attrs) / sizeof(attrs[0]); i++)
		if (strlen(attrs[i].name) == n && strncasecmp(attrs[i].name, (const char *)w, n) == 0)
			return attrs[i].bit;
	return 0;
}

static int
proxyproto_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r' || c == '\n';
}

/* One EHLO reply line: its XCLIENT attributes, or -1 when it is not the XCLIENT line. */
static int
proxyproto_xclient_line(const unsigned char *p, size_t n)
{
	size_t i = 4, w;
	int attrs = 0;

	if (n < 11 || strncasecmp((const char *)p + 4, "XCLIENT", 7) != 0 ||
	    (n > 11 && !proxyproto_space(p[11])))
		return -1;
	for (i = 11; i < n;) {
		while (i < n && proxyproto_space(p[i]))
			i++;
		for (w = i; w < n && !proxyproto_space(p[w]);)
			w++;
		attrs |= proxyproto_xclient_attr(p + i, w - i);
		i = w;
	}
	return attrs;
}

int
proxyproto_xclient_offer(const unsigned char *reply, size_t len)
{
	const unsigned char *p = reply, *end = reply + len, *nl;
	int attrs;

	while (p < end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if (nl == NULL)
			nl = end;
		if ((attrs = proxyproto_xclient_line(p, (size_t)(nl - p))) >= 0)
			return attrs;
		p = nl + 1;
	}
	return -1;
}

/* xtext (RFC 3461 4): "+", "=", controls, space and non-ASCII as "+XX". */
static size_t
proxyproto_xtext(const char *s, char *out, size_t size)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;

	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c < 33 || c > 126 || c == '+' || c == '=') {
			if (n + 3 >= size)
				return 0;
			out[n++] = '+';
			out[n++] = hex[c >> 4];
			out[n++] = hex[c & 15];
		} else {
			if (n + 1 >= size)
				return 0;
			out[n++] = (char)c;
		}
	}
	out[n] = '\0';
	return n;
}

size_t
proxyproto_xclient(const struct proxyproto_addrs *a, int attrs, char *out, size_t size)
{
	char ip[INET6_ADDRSTRLEN + 8], addr[3 * sizeof(ip)], port[16] = "";
	int n;

	if ((a->family != AF_INET && a->family != AF_INET6) || !(attrs & XCLIENT_ADDR))
		return 0;
	snprintf(ip, sizeof(ip), "%s", a->family == AF_INET6 ? "IPV6:" : "");
	inet_ntop(a->family, a->src, ip + strlen(ip), (socklen_t)(sizeof(ip) - strlen(ip)));
	if (proxyproto_xtext(ip, addr, sizeof(addr)) == 0)
		return 0;
	if (attrs & XCLIENT_PORT)
		snprintf(port, sizeof(port), " PORT=%u", a->sport);
	n = snprintf(out, size, "XCLIENT ADDR=%s%s%s\r\n", addr, port,
	             (attrs & XCLIENT_NAME) ? " NAME=[UNAVAILABLE]" : "");
	return n > 0 && (size_t)n < size ? (size_t)n : 0;
}
