#ifndef SMTPTAP_HOSTPORT_H
#define SMTPTAP_HOSTPORT_H

/*
 * Splits "HOST:PORT" or "[IPv6]:PORT" into *host and *port (allocated, the caller frees
 * them); -1 with *why and nothing allocated when s is not one (no port, a port outside
 * 1-65535, an IPv6 address without brackets).  No I/O.
 */
int hostport_split(const char *s, char **host, char **port, const char **why);

#endif
