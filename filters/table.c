/* Lookup tables of rules (issue 17): access(5)-style hash tables and CIDR tables. */
#include "filters/table.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TABLE_REPLY_MAX 510 /* RFC 5321 4.5.3.1.5: 512 octets with CRLF */
#define TABLE_NONE UINT32_MAX

struct table_item {
	char *key; /* lower-cased, NUL-terminated; the entry's text follows it in the same block */
	size_t keylen;
	uint64_t hash;
	struct table_entry e;
};

/* A node of the CIDR trie: its two children, and the first entry ending here. */
struct table_node {
	uint32_t child[2];
	uint32_t entry;
};

struct table {
	enum table_kind kind;
	struct table_item *items;
	size_t nitems, itemsize;
	uint32_t *slots; /* hash: item index + 1, 0 when free; nslots a power of two */
	size_t nslots;
	struct table_node *nodes; /* cidr: node 0 the IPv4 root, node 1 the IPv6 root */
	size_t nnodes, nodesize;
};

/* Where a table is being loaded from, for errors. */
struct table_loader {
	const char *path;
	unsigned int line;
	table_error_cb err;
	void *arg;
	int nerrors;
};

static void __attribute__((format(printf, 3, 4)))
table_error(struct table_loader *tl, size_t col, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	tl->nerrors++;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (tl->err != NULL)
		tl->err(tl->arg, tl->path, tl->line, col, msg);
}

static int
table_blank(int c)
{
	return c == ' ' || c == '\t';
}

static unsigned char
table_lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* FNV-1a over the lower-cased octets: lookups fold case without a copy. */
static uint64_t
table_hash(const unsigned char *p, size_t n)
{
	uint64_t h = 14695981039346656037ULL;
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= table_lower(p[i]);
		h *= 1099511628211ULL;
	}
	return h;
}

/* ------------------------------------------------------------------------------------------ */
/* Reading a line: KEY [ACTION [TEXT]] */

static const struct {
	const char *name;
	enum rule_action action;
	int dunno;
} table_actions[] = {
    {"OK", ACT_PASS, 0},         {"PASS", ACT_PASS, 0}, {"REJECT", ACT_REJECT, 0},
    {"DISCONNECT", ACT_DISCONNECT, 0}, {"WARN", ACT_WARN, 0}, {"DUNNO", ACT_NONE, 1},
};

/* Checks a reply: a 4xx/5xx code, a space and text, an enhanced code of the same class. */
static int
table_reply_ok(struct table_loader *tl, const char *s, size_t off, size_t len)
{
	const char *p = s + off;

	if (len < 5 || (p[0] != '4' && p[0] != '5') || p[1] < '0' || p[1] > '5' || p[2] < '0' ||
	    p[2] > '9' || p[3] != ' ' || p[4] == ' ') {
		table_error(tl, off, "reply must be a 4xx or 5xx code, a space and text");
		return 0;
	}
	if (len > TABLE_REPLY_MAX) {
		table_error(tl, off, "reply longer than %d octets", TABLE_REPLY_MAX);
		return 0;
	}
	if (p[4] >= '0' && p[4] <= '9' && len > 6 && p[5] == '.' && p[4] != p[0]) {
		table_error(tl, off + 4, "enhanced status code class %c does not match reply code %cxx",
		            p[4], p[0]);
		return 0;
	}
	return 1;
}

/* Reads the action and text of a line into e; 0 when reported as wrong. */
static int
table_parse_action(struct table_loader *tl, const char *s, size_t off, size_t len,
                   struct table_entry *e, size_t *textoff, size_t *textlen)
{
	size_t i = off, aend, k;

	while (i < len && !table_blank((unsigned char)s[i]))
		i++;
	aend = i;
	while (i < len && table_blank((unsigned char)s[i]))
		i++;
	*textoff = i;
	*textlen = len - i;
	if (s[off] >= '0' && s[off] <= '9') {
		/* "550 5.7.1 text": the reply is the action (access(5)). */
		e->action = ACT_REJECT;
		*textoff = off;
		*textlen = len - off;
		return table_reply_ok(tl, s, off, len - off);
	}
	for (k = 0; k < sizeof(table_actions) / sizeof(table_actions[0]); k++)
		if (strlen(table_actions[k].name) == aend - off &&
		    strncasecmp(table_actions[k].name, s + off, aend - off) == 0)
			break;
	if (k == sizeof(table_actions) / sizeof(table_actions[0])) {
		table_error(tl, off, "unknown action '%.*s' (OK, PASS, REJECT, DISCONNECT, WARN, "
		            "DUNNO, or a 4xx/5xx reply)", (int)(aend - off > 40 ? 40 : aend - off),
		            s + off);
		return 0;
	}
	e->action = table_actions[k].action;
	e->dunno = table_actions[k].dunno;
	if (*textlen > 0 && (e->action == ACT_PASS || e->dunno)) {
		table_error(tl, *textoff, "%s takes no text", table_actions[k].name);
		return 0;
	}
	if (*textlen > 0 && (e->action == ACT_REJECT || e->action == ACT_DISCONNECT))
		return table_reply_ok(tl, s, *textoff, *textlen);
	return 1;
}

/* Appends an item for key (lower-cased) with the text; -1 on ENOMEM. */
static int
table_add(struct table *t, const char *key, size_t keylen, const struct table_entry *e,
          const char *text, size_t textlen)
{
	struct table_item *it;
	char *p;
	size_t i;

	if (t->nitems == t->itemsize) {
		if ((it = reallocarray(t->items, t->itemsize * 2 + 64, sizeof(*it))) == NULL)
			return -1;
		t->items = it;
		t->itemsize = t->itemsize * 2 + 64;
	}
	if ((p = malloc(keylen + textlen + 2)) == NULL)
		return -1;
	for (i = 0; i < keylen; i++)
		p[i] = (char)table_lower((unsigned char)key[i]);
	p[keylen] = '\0';
	memcpy(p + keylen + 1, text, textlen);
	p[keylen + 1 + textlen] = '\0';
	it = &t->items[t->nitems++];
	it->key = p;
	it->keylen = keylen;
	it->hash = table_hash((const unsigned char *)key, keylen);
	it->e = *e;
	it->e.text = textlen > 0 ? p + keylen + 1 : NULL;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* CIDR */

/* Reads "address[/len]" into 16 octets (IPv4 in the first 4); the family's bits, or -1. */
static int
table_parse_net(const char *key, size_t keylen, unsigned char addr[16], int *plen)
{
	char buf[INET6_ADDRSTRLEN + 8], *slash, *end;
	long n;
	int bits;

	if (keylen >= sizeof(buf))
		return -1;
	memcpy(buf, key, keylen);
	buf[keylen] = '\0';
	if ((slash = strchr(buf, '/')) != NULL)
		*slash++ = '\0';
	memset(addr, 0, 16);
	if (inet_pton(AF_INET, buf, addr) == 1)
		bits = 32;
	else if (inet_pton(AF_INET6, buf, addr) == 1)
		bits = 128;
	else
		return -1;
	*plen = bits;
	if (slash != NULL) {
		errno = 0;
		n = strtol(slash, &end, 10);
		if (*slash == '\0' || *end != '\0' || n < 0 || n > bits || errno != 0)
			return -1;
		*plen = (int)n;
	}
	return bits;
}

static int
table_bit(const unsigned char *addr, int i)
{
	return (addr[i / 8] >> (7 - i % 8)) & 1;
}

/* A new trie node; TABLE_NONE on ENOMEM. */
static uint32_t
table_node_new(struct table *t)
{
	struct table_node *n;

	if (t->nnodes == t->nodesize) {
		if ((n = reallocarray(t->nodes, t->nodesize * 2 + 64, sizeof(*n))) == NULL)
			return TABLE_NONE;
		t->nodes = n;
		t->nodesize = t->nodesize * 2 + 64;
	}
	t->nodes[t->nnodes].child[0] = t->nodes[t->nnodes].child[1] = TABLE_NONE;
	t->nodes[t->nnodes].entry = TABLE_NONE;
	return (uint32_t)t->nnodes++;
}

/* Files item idx under its network; the first network of the file keeps a node. */
static int
table_cidr_insert(struct table *t, const unsigned char *addr, int family_bits, int plen,
                  uint32_t idx)
{
	uint32_t node = family_bits == 32 ? 0 : 1, next;
	int i, b;

	for (i = 0; i < plen; i++) {
		b = table_bit(addr, i);
		if ((next = t->nodes[node].child[b]) == TABLE_NONE) {
			if ((next = table_node_new(t)) == TABLE_NONE)
				return -1;
			t->nodes[node].child[b] = next;
		}
		node = next;
	}
	if (t->nodes[node].entry == TABLE_NONE)
		t->nodes[node].entry = idx;
	return 0;
}

/* Checks and files a network key; 0 when reported as wrong, -1 on ENOMEM. */
static int
table_cidr_key(struct table *t, struct table_loader *tl, const char *key, size_t keylen)
{
	unsigned char addr[16];
	int bits, plen, i;

	if ((bits = table_parse_net(key, keylen, addr, &plen)) < 0) {
		table_error(tl, 0, "not a network: '%.*s' (want an address or address/length)",
		            (int)(keylen > 60 ? 60 : keylen), key);
		return 0;
	}
	for (i = plen; i < bits; i++)
		if (table_bit(addr, i)) {
			table_error(tl, 0, "'%.*s' has bits set beyond its /%d prefix",
			            (int)(keylen > 60 ? 60 : keylen), key, plen);
			return 0;
		}
	return table_cidr_insert(t, addr, bits, plen, (uint32_t)t->nitems - 1) == -1 ? -1 : 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Hash */

/* Builds the slot array once every item is read: the first item of a key keeps it. */
static int
table_hash_build(struct table *t)
{
	size_t i, j, mask;

	for (t->nslots = 16; t->nslots < t->nitems * 2; t->nslots *= 2)
		;
	if ((t->slots = calloc(t->nslots, sizeof(*t->slots))) == NULL)
		return -1;
	mask = t->nslots - 1;
	for (i = 0; i < t->nitems; i++) {
		for (j = t->items[i].hash & mask; t->slots[j] != 0; j = (j + 1) & mask) {
			const struct table_item *o = &t->items[t->slots[j] - 1];
			if (o->hash == t->items[i].hash && o->keylen == t->items[i].keylen &&
			    memcmp(o->key, t->items[i].key, o->keylen) == 0)
				break;
		}
		if (t->slots[j] == 0)
			t->slots[j] = (uint32_t)i + 1;
	}
	return 0;
}

static const struct table_entry *
table_get(const struct table *t, const unsigned char *key, size_t len)
{
	uint64_t h = table_hash(key, len);
	size_t j, i, mask = t->nslots - 1;
	const struct table_item *it;

	if (t->nslots == 0)
		return NULL;
	for (j = h & mask; t->slots[j] != 0; j = (j + 1) & mask) {
		it = &t->items[t->slots[j] - 1];
		if (it->hash != h || it->keylen != len)
			continue;
		for (i = 0; i < len && table_lower(key[i]) == (unsigned char)it->key[i]; i++)
			;
		if (i == len)
			return &it->e;
	}
	return NULL;
}

/* table_get() of a key made of a prefix and "@" or a leading ".", bounded. */
static const struct table_entry *
table_get2(const struct table *t, const char *pre, const unsigned char *p, size_t n,
           const char *post)
{
	unsigned char buf[512];
	size_t a = strlen(pre), b = strlen(post);

	if (a + n + b > sizeof(buf))
		return NULL; /* no key of a table line is that long: it cannot be there */
	memcpy(buf, pre, a);
	memcpy(buf + a, p, n);
	memcpy(buf + a + n, post, b);
	return table_get(t, buf, a + n + b);
}

/* ------------------------------------------------------------------------------------------ */
/* Loading */

/* Reads one line of a table file; 0 when fine or reported, -1 on ENOMEM. */
static int
table_line(struct table *t, struct table_loader *tl, const char *s, size_t len)
{
	struct table_entry e;
	size_t i = 0, kend, toff = 0, tlen = 0;
	int rc;

	memset(&e, 0, sizeof(e));
	e.line = tl->line;
	if (memchr(s, '\0', len) != NULL) {
		table_error(tl, 0, "NUL octet in a table file");
		return 0;
	}
	while (i < len && !table_blank((unsigned char)s[i]))
		i++;
	kend = i;
	while (i < len && table_blank((unsigned char)s[i]))
		i++;
	if (i < len && !table_parse_action(tl, s, i, len, &e, &toff, &tlen))
		return 0;
	if (t->kind == TABLE_HASH && kend > 500) {
		table_error(tl, 0, "key longer than 500 octets");
		return 0;
	}
	if (table_add(t, s, kend, &e, s + toff, tlen) == -1)
		return -1;
	if (t->kind == TABLE_CIDR && (rc = table_cidr_key(t, tl, s, kend)) <= 0) {
		free(t->items[--t->nitems].key);
		return rc;
	}
	return 0;
}

static int
table_read(struct table *t, struct table_loader *tl, FILE *fp)
{
	char *buf = NULL;
	size_t size = 0, len, i;
	ssize_t n;
	int rc = 0;

	while (rc == 0 && (n = getline(&buf, &size, fp)) != -1) {
		tl->line++;
		len = (size_t)n;
		while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' ||
		                   table_blank((unsigned char)buf[len - 1])))
			len--;
		for (i = 0; i < len && table_blank((unsigned char)buf[i]); i++)
			;
		if (i == len || buf[i] == '#')
			continue;
		if (i > 0) {
			/* Postfix reads an indented line as the continuation of the last one. */
			table_error(tl, 0, "line starts with white space");
			continue;
		}
		rc = table_line(t, tl, buf, len);
	}
	if (rc == 0 && ferror(fp)) {
		tl->line = 0;
		table_error(tl, 0, "cannot read: %s", strerror(errno));
	}
	free(buf);
	return rc;
}

struct table *
table_load(enum table_kind kind, const char *path, table_error_cb err, void *arg, int *nomem)
{
	struct table_loader tl = {path, 0, err, arg, 0};
	struct table *t;
	FILE *fp;
	int rc = -1;

	*nomem = 0;
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		*nomem = 1;
		return NULL;
	}
	t->kind = kind;
	if ((fp = fopen(path, "r")) == NULL) {
		table_error(&tl, 0, "cannot open: %s", strerror(errno));
		table_free(t);
		return NULL;
	}
	if (kind == TABLE_CIDR && (table_node_new(t) == TABLE_NONE || table_node_new(t) == TABLE_NONE))
		goto out;
	if ((rc = table_read(t, &tl, fp)) == 0 && tl.nerrors == 0 && kind == TABLE_HASH)
		rc = table_hash_build(t);
out:
	fclose(fp);
	if (rc == -1 || tl.nerrors > 0) {
		*nomem = rc == -1;
		table_free(t);
		return NULL;
	}
	return t;
}

void
table_free(struct table *t)
{
	size_t i;

	if (t == NULL)
		return;
	for (i = 0; i < t->nitems; i++)
		free(t->items[i].key);
	free(t->items);
	free(t->slots);
	free(t->nodes);
	free(t);
}

size_t
table_size(const struct table *t)
{
	return t == NULL ? 0 : t->nitems;
}

/* ------------------------------------------------------------------------------------------ */
/* Lookups */

/* The domain and its parents, each parent also as ".parent"; NULL when none is there. */
static const struct table_entry *
table_lookup_domain(const struct table *t, const unsigned char *d, size_t n)
{
	const struct table_entry *e;
	const unsigned char *dot;

	if (n == 0)
		return NULL;
	if ((e = table_get(t, d, n)) != NULL)
		return e;
	while ((dot = memchr(d, '.', n)) != NULL) {
		n -= (size_t)(dot + 1 - d);
		d = dot + 1;
		if (n == 0)
			break;
		if ((e = table_get(t, d, n)) != NULL || (e = table_get2(t, ".", d, n, "")) != NULL)
			return e;
	}
	return NULL;
}

/* The last '@' of an address outside its quoted local part; len when none. */
static size_t
table_at(const unsigned char *a, size_t len)
{
	size_t i, at = len;
	int q = 0;

	for (i = 0; i < len; i++) {
		if (a[i] == '\\' && q)
			i++;
		else if (a[i] == '"')
			q = !q;
		else if (a[i] == '@' && !q)
			at = i;
	}
	return at;
}

static const struct table_entry *
table_lookup_address1(const struct table *t, const unsigned char *a, size_t len)
{
	const struct table_entry *e;
	size_t at;

	if (len == 0)
		return table_get(t, (const unsigned char *)"<>", 2);
	if ((e = table_get(t, a, len)) != NULL)
		return e;
	at = table_at(a, len);
	if (at == len)
		return NULL;
	if ((e = table_lookup_domain(t, a + at + 1, len - at - 1)) != NULL)
		return e;
	return table_get(t, a, at + 1);
}

const struct table_entry *
table_lookup_address(const struct table *t, const unsigned char *a, size_t len)
{
	const struct table_entry *e;

	if (t == NULL || t->kind != TABLE_HASH)
		return NULL;
	e = table_lookup_address1(t, a, len);
	return e != NULL && e->dunno ? NULL : e;
}

/* The first network of a CIDR table that holds the address, or NULL. */
static const struct table_entry *
table_lookup_cidr(const struct table *t, const unsigned char *s, size_t n)
{
	char buf[INET6_ADDRSTRLEN + 1];
	unsigned char addr[16];
	uint32_t node, best = TABLE_NONE;
	int bits, i;

	if (n >= sizeof(buf))
		return NULL;
	memcpy(buf, s, n);
	buf[n] = '\0';
	memset(addr, 0, sizeof(addr));
	if (inet_pton(AF_INET, buf, addr) == 1) {
		bits = 32;
	} else if (inet_pton(AF_INET6, buf, addr) == 1) {
		bits = 128;
		/* An IPv4-mapped address is the IPv4 client it stands for. */
		if (memcmp(addr, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
			memmove(addr, addr + 12, 4);
			bits = 32;
		}
	} else {
		return NULL;
	}
	node = bits == 32 ? 0 : 1;
	for (i = 0;; i++) {
		if (t->nodes[node].entry != TABLE_NONE && t->nodes[node].entry < best)
			best = t->nodes[node].entry;
		if (i == bits || (node = t->nodes[node].child[table_bit(addr, i)]) == TABLE_NONE)
			break;
	}
	if (best == TABLE_NONE || t->items[best].e.dunno)
		return NULL;
	return &t->items[best].e;
}

const struct table_entry *
table_lookup_client(const struct table *t, const unsigned char *s, size_t len)
{
	const unsigned char *sp = memchr(s, ' ', len), *dot;
	const struct table_entry *e = NULL;
	size_t alen = sp != NULL ? (size_t)(sp - s) : len, nlen;

	if (t == NULL)
		return NULL;
	if (t->kind == TABLE_CIDR)
		return table_lookup_cidr(t, s, alen);
	nlen = sp != NULL ? len - alen - 1 : 0;
	if (nlen > 0 && !(nlen == 7 && memcmp(sp + 1, "unknown", 7) == 0))
		e = table_lookup_domain(t, sp + 1, nlen);
	if (e == NULL)
		e = table_get(t, s, alen);
	/* Then 1.2.3, 1.2 and 1 of 1.2.3.4, as Postfix's check_client_access. */
	while (e == NULL && memchr(s, ':', alen) == NULL &&
	       (dot = memrchr(s, '.', alen)) != NULL) {
		alen = (size_t)(dot - s);
		e = table_get(t, s, alen);
	}
	return e != NULL && e->dunno ? NULL : e;
}
