/* Socket addresses as people write them. */
#include "proxy/addr.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Appends ":PORT" to the host text in buf (len octets long), if it fits. */
static void
addr_append_port(char *buf, size_t len, size_t size, unsigned port)
{
	char digits[6];
	size_t n = 0;

	do
		digits[n++] = (char)('0' + port % 10);
	while ((port /= 10) > 0);
	if (len + 1 + n + 1 > size)
		return;
	buf[len++] = ':';
	while (n > 0)
		buf[len++] = digits[--n];
	buf[len] = '\0';
}

/*
 * An IPv4 address in dotted quad, without inet_ntop: glibc's formats each octet with
 * sprintf (1,700 instructions an address, two a session).
 */
static void
addr_format_v4(const struct in_addr *a, char *host)
{
	const unsigned char *o = (const unsigned char *)&a->s_addr;
	char *p = host;

	for (int i = 0; i < 4; i++) {
		unsigned v = o[i];

		if (v >= 100)
			*p++ = (char)('0' + v / 100);
		if (v >= 10)
			*p++ = (char)('0' + v / 10 % 10);
		*p++ = (char)('0' + v % 10);
		*p++ = i < 3 ? '.' : '\0';
	}
}

/* Built piece by piece: a printf here was a tenth of a session's set-up. */
void
addr_format(const struct sockaddr *sa, char *buf, size_t size)
{
	const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
	char host[INET6_ADDRSTRLEN + 2];
	size_t len;

	if (sa->sa_family == AF_INET) {
		addr_format_v4(&in->sin_addr, host);
	} else if (sa->sa_family == AF_INET6) {
		host[0] = '[';
		inet_ntop(AF_INET6, &in6->sin6_addr, host + 1, sizeof(host) - 2);
		strcat(host, "]");
	} else {
		snprintf(buf, size, "unknown");
		return;
	}
	len = strlen(host);
	if (len + 1 > size) {
		if (size > 0) {
			memcpy(buf, host, size - 1);
			buf[size - 1] = '\0';
		}
		return;
	}
	memcpy(buf, host, len + 1);
	addr_append_port(buf, len, size,
	                 ntohs(sa->sa_family == AF_INET ? in->sin_port : in6->sin6_port));
}

socklen_t
addr_numeric(const char *host, const char *port, struct sockaddr_storage *ss)
{
	struct sockaddr_in *in = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	char *end;
	unsigned long n;

	memset(ss, 0, sizeof(*ss));
	if (host == NULL || port == NULL) /* --upstream original */
		return 0;
	n = strtoul(port, &end, 10);
	if (*port == '\0' || *end != '\0' || n == 0 || n > 65535)
		return 0;
	if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)n);
		return sizeof(*in);
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)n);
		return sizeof(*in6);
	}
	return 0;
}

/* Whether sa is a loopback address or one of this host's interfaces' addresses. */
static int
addr_sa_is_local(const struct sockaddr *sa, const struct ifaddrs *ifs)
{
	const struct ifaddrs *i;

	if (sa->sa_family == AF_INET &&
	    (ntohl(((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr) >> 24) == 127)
		return 1;
	if (sa->sa_family == AF_INET6 &&
	    IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr))
		return 1;
	for (i = ifs; i != NULL; i = i->ifa_next) {
		if (i->ifa_addr == NULL || i->ifa_addr->sa_family != sa->sa_family)
			continue;
		if (sa->sa_family == AF_INET &&
		    memcmp(&((const struct sockaddr_in *)(const void *)sa)->sin_addr,
		           &((const struct sockaddr_in *)(const void *)i->ifa_addr)->sin_addr, 4) == 0)
			return 1;
		if (sa->sa_family == AF_INET6 &&
		    memcmp(&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
		           &((const struct sockaddr_in6 *)(const void *)i->ifa_addr)->sin6_addr,
		           16) == 0)
			return 1;
	}
	return 0;
}

int
addr_host_is_local(const char *host)
{
	struct addrinfo hints, *res = NULL, *r;
	struct ifaddrs *ifs = NULL;
	int local = 0;

	if (host == NULL) /* --upstream original */
		return 0;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, NULL, &hints, &res) != 0)
		return 0;
	if (getifaddrs(&ifs) != 0)
		ifs = NULL;
	for (r = res; r != NULL && !local; r = r->ai_next)
		local = addr_sa_is_local(r->ai_addr, ifs);
	if (ifs != NULL)
		freeifaddrs(ifs);
	freeaddrinfo(res);
	return local;
}

int
addr_port(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	if (sa->sa_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	return -1;
}
