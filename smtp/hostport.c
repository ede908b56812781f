/*
 * A server's HOST:PORT, as --listen, --upstream, --metrics and replay --to name one.
 */
#include "smtp/hostport.h"

#include <stdlib.h>
#include <string.h>

int
hostport_split(const char *s, char **host, char **port, const char **why)
{
	const char *colon, *end;

	if (s[0] == '[') {
		if ((end = strchr(s, ']')) == NULL || end[1] != ':') {
			*why = "expected [ADDRESS]:PORT";
			return -1;
		}
		*host = strndup(s + 1, (size_t)(end - s - 1));
		colon = end + 1;
	} else {
		if ((colon = strrchr(s, ':')) == NULL || colon == s) {
			*why = "expected HOST:PORT";
			return -1;
		}
		if (memchr(s, ':', (size_t)(colon - s)) != NULL) {
			*why = "an IPv6 address needs brackets: [ADDRESS]:PORT";
			return -1;
		}
		*host = strndup(s, (size_t)(colon - s));
	}
	if (colon[1] == '\0' || strspn(colon + 1, "0123456789") != strlen(colon + 1) ||
	    atol(colon + 1) < 1 || atol(colon + 1) > 65535) {
		free(*host);
		*host = NULL; /* the caller's options are freed later, on a refused reload too */
		*why = "invalid port";
		return -1;
	}
	*port = strdup(colon + 1);
	return 0;
}
