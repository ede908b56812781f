#ifndef SMTPTAP_TABLE_H
#define SMTPTAP_TABLE_H

#include <stddef.h>

#include "filters/rules.h"

/*
 * Lookup tables for rules (issue 17), loaded once with the rules:
 *
 *	table:/path	KEY [ACTION [TEXT]]	access(5)-style keys: user@domain, domain, .domain,
 *						user@, <> (the null sender); an IP address
 *	cidr:/path	NETWORK [ACTION [TEXT]]	a.b.c.d/len, an IPv6 prefix, or one address
 *
 * ACTION is OK (PASS), PASS, REJECT, DISCONNECT, WARN, DUNNO (stop looking: no match), or a
 * reply itself ("550 5.7.1 text", REJECT with that reply); none means the rule's.  Keys are
 * matched without regard to case.  A table: file is a hash table; a cidr: file a binary trie
 * in which the first network of the file that holds the address wins.
 */

enum table_kind { TABLE_HASH, TABLE_CIDR };

struct table_entry {
	enum rule_action action; /* ACT_NONE: the rule's action and text */
	int dunno;
	const char *text; /* the reply or WARN text; NULL for the rule's (or the default) */
	unsigned int line;
};

struct table;

/* Reports one error of a table file: where, and what. */
typedef void (*table_error_cb)(void *arg, const char *file, unsigned int line, size_t col,
                               const char *msg);

/* Loads a table; NULL when it has errors (each reported) or memory ran out (*nomem set). */
struct table *table_load(enum table_kind, const char *path, table_error_cb, void *arg,
                         int *nomem);
void table_free(struct table *);
size_t table_size(const struct table *);

/*
 * Looks an address up as access(5) does: the whole address, the domain and its parent
 * domains (each also as ".parent"), then "user@"; the empty address as "<>".
 */
const struct table_entry *table_lookup_address(const struct table *, const unsigned char *addr,
                                               size_t len);

/*
 * Looks a client up ("ADDRESS NAME"): a cidr: table by the address; a table: file by the name
 * and its parents (unless "unknown"), then the address, then (IPv4) its shorter prefixes.
 */
const struct table_entry *table_lookup_client(const struct table *, const unsigned char *subject,
                                              size_t len);

#endif
