#ifndef SMTPTAP_PREFILTER_H
#define SMTPTAP_PREFILTER_H

#include <stddef.h>
#include <stdint.h>

/*
 * A cheap test run before a pattern: the octets every match of the pattern must contain,
 * read from the pattern at load, against the octets a line holds, gathered once per line.
 * A line that lacks one of them cannot match, so the pattern need not run on it.  The test
 * may say "maybe" for a line the pattern does not match, never "no" for one it matches:
 * patterns beyond the simple reading below (alternation at the top, x mode, (* verbs,
 * \Q, caseless UTF, ...) require nothing and are always run.
 */

/*
 * Octets go by classes, 64 of them, one bit each: a letter in either case, a digit, one of
 * the common punctuation marks, and one class for all the rest (controls, NUL, non-ASCII).
 * A case-sensitive rule thus treats "T" as "t" here: the test is weaker, never wrong.
 */

/* What a pattern requires: the classes of the octets any match contains. */
struct prefilter {
	uint64_t need;
	int active; /* something is required: the test is worth making */
};

/*
 * Reads the pattern (as given to pcre2_compile, compiled with opts) for the octets any
 * match must contain.  Leaves pf inactive when it cannot tell.
 */
void prefilter_learn(struct prefilter *pf, const char *pattern, size_t len, uint32_t opts);

/*
 * The class, among those pf needs, of the octets rarest in mail text: a rule can be filed
 * under it, and looked at only for lines that have it.  -1 when pf needs nothing.
 */
int prefilter_key(const struct prefilter *pf);

/* The classes of the octets of a line. */
uint64_t prefilter_scan(const unsigned char *line, size_t len);

/* 0 when a line with these classes cannot match the pattern, 1 when it may. */
static inline int
prefilter_may_match(const struct prefilter *pf, uint64_t have)
{
	return (pf->need & ~have) == 0;
}

#endif
