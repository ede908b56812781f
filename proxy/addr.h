#ifndef SMTPTAP_ADDR_H
#define SMTPTAP_ADDR_H

#include <stddef.h>

struct sockaddr;

/* Writes "1.2.3.4:25" or "[::1]:25". */
void addr_format(const struct sockaddr *sa, char *buf, size_t size);

#endif
