/*
 * libFuzzer target: the MAIL FROM / RCPT TO address parser (smtp/address.c), on the input
 * with each keyword, with the invariants the rules rely on checked: the address is never longer
 * than the argument, the path and the parameters lie inside it, a readable path keeps its
 * brackets, a domain comes out lower-cased without a trailing dot, and an address that
 * address_path() writes as a path reads back as the same address.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/address.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The last '@': the internal form has no quotes, so the domain is what follows it. */
static size_t
last_at(const unsigned char *a, size_t len)
{
	size_t i, at = len;

	for (i = 0; i < len; i++)
		if (a[i] == '@')
			at = i;
	return at;
}

/* An address that address_path() can write reads back as itself from "TO:<path>". */
static void
check_round_trip(const unsigned char *addr, size_t len)
{
	unsigned char *path = malloc(ADDRESS_PATH_MAX(len) + 3), *again;
	struct address a;
	long n;

	if (path == NULL)
		return;
	memcpy(path, "TO:", 3);
	n = address_path(addr, len, 1, path + 3);
	if (n >= 0 && (again = malloc((size_t)n + 4)) != NULL) {
		address_parse(path, (size_t)n + 3, "TO", &a, again);
		if (!a.ok || a.len != len || memcmp(again, addr, len) != 0 || a.params_len != 0)
			abort();
		free(again);
	}
	free(path);
}

static void
check(const unsigned char *arg, size_t len, const char *kw)
{
	unsigned char *buf = malloc(len + 1);
	struct address a;
	size_t at, i;

	if (buf == NULL)
		return;
	address_parse(arg, len, kw, &a, buf);
	if (a.len > len || buf[a.len] != '\0')
		abort();
	if (a.ok) {
		if (a.path_off + a.path_len > len || a.params_off + a.params_len != len ||
		    a.params_off < a.path_off + a.path_len || a.path_len == 0)
			abort();
		if (arg[a.path_off] == '<' && arg[a.path_off + a.path_len - 1] != '>')
			abort();
		at = last_at(buf, a.len);
		if (at < a.len && a.len > at + 1 && buf[a.len - 1] == '.')
			abort();
		for (i = at + 1; at < a.len && i < a.len; i++)
			if (buf[i] >= 'A' && buf[i] <= 'Z')
				abort();
		check_round_trip(buf, a.len);
	}
	free(buf);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check(data, size, "FROM");
	check(data, size, "TO");
	return 0;
}
