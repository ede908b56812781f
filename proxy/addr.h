#ifndef SMTPTAP_ADDR_H
#define SMTPTAP_ADDR_H

#include <stddef.h>
#include <sys/socket.h>

/* Writes "1.2.3.4:25" or "[::1]:25". */
void addr_format(const struct sockaddr *sa, char *buf, size_t size);

/* The address of a numeric host and port, with its length; 0 for a name (or a bad port). */
socklen_t addr_numeric(const char *host, const char *port, struct sockaddr_storage *ss);

/* Whether host (a name or an address) is this host: loopback or an interface's address.
 * Start-up only: it may ask the resolver. */
int addr_host_is_local(const char *host);

/* A socket address's port (host order), -1 for a family without one. */
int addr_port(const struct sockaddr *sa);

#endif
