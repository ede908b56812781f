/*
 * Unit tests for smtp/address.c: MAIL FROM / RCPT TO arguments read as Postfix's smtpd
 * reads them (issue 17).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/address.h"

/* Parses arg and checks the address, whether it was readable, and the parameters. */
static void
check(const char *kw, const char *arg, int ok, const char *addr, const char *params)
{
	unsigned char buf[256];
	struct address a;

	address_parse((const unsigned char *)arg, strlen(arg), kw, &a, buf);
	if (a.ok != ok || strcmp((char *)buf, addr) != 0 || a.len != strlen(addr))
		fail_msg("%s: ok=%d address '%s' (want ok=%d '%s')", arg, a.ok, buf, ok, addr);
	if (ok && (a.params_len != strlen(params) ||
	           memcmp(arg + a.params_off, params, a.params_len) != 0))
		fail_msg("%s: parameters '%.*s' (want '%s')", arg, (int)a.params_len,
		         arg + a.params_off, params);
}

static void
test_forms(void **state)
{
	(void)state;
	check("FROM", "FROM:<a@example.com>", 1, "a@example.com", "");
	check("FROM", "from:<a@example.com>", 1, "a@example.com", "");
	/* Spaces after the colon and no brackets: Postfix takes both. */
	check("FROM", "FROM: <a@example.com>", 1, "a@example.com", "");
	check("FROM", "FROM:\t\v\f\r<a@example.com>", 1, "a@example.com", "");
	check("TO", "TO:x@competitor.example", 1, "x@competitor.example", "");
	check("TO", "TO: x@competitor.example NOTIFY=NEVER", 1, "x@competitor.example",
	      "NOTIFY=NEVER");
	/* The trailing dot of the domain, and its case. */
	check("TO", "TO:<x@competitor.example.>", 1, "x@competitor.example", "");
	check("TO", "TO:<x@Competitor.EXAMPLE..>", 1, "x@competitor.example", "");
	check("TO", "TO:<Bob@Competitor.Example>", 1, "Bob@competitor.example", "");
	/* The null sender. */
	check("FROM", "FROM:<>", 1, "", "");
	check("FROM", "FROM:<> SIZE=100 BODY=8BITMIME", 1, "", "SIZE=100 BODY=8BITMIME");
	/* Source routes are dropped. */
	check("TO", "TO:<@a.example,@b.example:user@Host.Example>", 1, "user@host.example", "");
	/* A route before a local part alone (found by fuzz_address: no '@' after the route). */
	check("TO", "TO:<@a.example,@b.example:user> X=1", 1, "user", "X=1");
	/* Quoted strings lose their quotes (Postfix's internal form); an '@' or '>' inside them is
	 * theirs, and the domain is what follows the last '@'. */
	check("FROM", "FROM:<\"a b@c\"@example.com> SIZE=1", 1, "a b@c@example.com", "SIZE=1");
	check("FROM", "FROM:<\"x>y\"@Example.com>", 1, "x>y@example.com", "");
	check("FROM", "FROM:<\"a\\\"b\"@example.com>", 1, "a\"b@example.com", "");
	/* A local part alone. */
	check("TO", "TO:<postmaster>", 1, "postmaster", "");
	/* Parameters right after the bracket, and trailing white space. */
	check("FROM", "FROM:<a@example.com>SIZE=1", 1, "a@example.com", "SIZE=1");
	check("FROM", "FROM:<a@example.com>  \t", 1, "a@example.com", "");
	/* IDNA is left as it is, UTF-8 too. */
	check("TO", "TO:<u@xn--bcher-kva.example>", 1, "u@xn--bcher-kva.example", "");
	check("TO", "TO:<u@B\xc3\xbc" "cher.example>", 1, "u@b\xc3\xbc" "cher.example", "");
}

/* Spellings Postfix 3.7's smtpd reads as bob@competitor.example (its check_recipient_access
 * refuses each for that key: tests/integration/test_policy.py asks a real one). */
static void
test_postfix_internal_form(void **state)
{
	static const char *const spellings[] = {
	    "TO:<bob@competitor.example >",       "TO:<bob @ competitor.example>",
	    "TO:<bob@competitor.example (c)>",    "TO:bob@competitor.example(x)",
	    "TO:<bob@\"competitor.example\">",    "TO:<\"bob@competitor.example\">",
	    "TO:<\"bob\"@competitor.example>",    "TO:<b\\ob@competitor.example>",
	    "TO:<bob(c)@competitor.example>",     "TO:< bob@competitor.example>",
	    "TO:\"bob\"@competitor.example",
	    "TO:<bob(a(nested)b)@competitor.example>", "TO:<bob@competitor.\"example\">",
	    "TO:<\tbob\r@\ncompetitor.example>",  "TO:<@x.example:bob@competitor.example>",
	    "TO:<Bob <bob@competitor.example>>",  "TO:Bob<bob@competitor.example>",
	    "TO:x<bob@competitor.example >",      "TO:<g:bob@competitor.example;>",
	    "TO:<bob@competitor.\\example>",
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(spellings) / sizeof(spellings[0]); i++)
		check("TO", spellings[i], 1, "bob@competitor.example", "");
	/* What follows the closing bracket is parameters here (Postfix reads a comment or a '>'
	 * there as part of the path, and refuses anything else). */
	check("TO", "TO:<bob@competitor.example>(x)", 1, "bob@competitor.example", "(x)");
	check("TO", "TO:<bob@competitor.example>>", 1, "bob@competitor.example", ">");
	/* Parameters after a path with white space in it. */
	check("TO", "TO:<bob @competitor.example> NOTIFY=NEVER", 1, "bob@competitor.example",
	      "NOTIFY=NEVER");
	/* A space that a quote or backslash keeps is the local part's own. */
	check("TO", "TO:<\"a b\"@x.example>", 1, "a b@x.example", "");
	check("TO", "TO:<a\\ b@x.example>", 1, "a b@x.example", "");
	/* A domain literal keeps its brackets; '%' and '!' are the local part's. */
	check("TO", "TO:<bob@[192.0.2.1]>", 1, "bob@[192.0.2.1]", "");
	check("TO", "TO:<bob%competitor.example@localhost>", 1, "bob%competitor.example@localhost",
	      "");
	/* Nothing but a comment is the null sender, to Postfix. */
	check("FROM", "FROM:<(nobody)>", 1, "", "");
	check("FROM", "FROM:<> SIZE=1", 1, "", "SIZE=1");
	/* An octet after a NUL is not there, to Postfix. */
	{
		static const char arg[] = "TO:<bob@competitor.example\0.evil>";
		unsigned char buf[64];
		struct address a;

		address_parse((const unsigned char *)arg, sizeof(arg) - 1, "TO", &a, buf);
		assert_true(a.ok);
		assert_string_equal((char *)buf, "bob@competitor.example");
	}
}

static void
test_unreadable(void **state)
{
	(void)state;
	/* What a rule sees of an argument it cannot read: the rest, trimmed. */
	check("FROM", "FROM:<a@example.com", 0, "<a@example.com", "");
	check("FROM", "FROM:", 0, "", "");
	check("FROM", "FROM:   ", 0, "", "");
	check("FROM", "a@example.com", 0, "a@example.com", "");
	check("TO", "FROM:<a@example.com>", 0, "FROM:<a@example.com>", "");
	check("TO", "TO :<a@b>", 0, "TO :<a@b>", "");
	check("FROM", "", 0, "", "");
	/* Two addresses, a quote or a nested bracket never closed: Postfix answers 501. */
	check("TO", "TO:<bob smith@x.example>", 0, "<bob smith@x.example>", "");
	check("TO", "TO:<a@x.example, b@y.example>", 0, "<a@x.example, b@y.example>", "");
	check("TO", "TO:\"bob@x.example", 0, "\"bob@x.example", "");
	check("TO", "TO:<<bob@x.example>", 0, "<<bob@x.example>", "");
}

static void
test_path_span(void **state)
{
	static const char arg[] = "TO: <x@y.example> NOTIFY=NEVER";
	unsigned char buf[64];
	struct address a;

	(void)state;
	address_parse((const unsigned char *)arg, strlen(arg), "TO", &a, buf);
	assert_true(a.ok);
	assert_int_equal(a.path_off, 4);
	assert_int_equal(a.path_len, strlen("<x@y.example>"));
	address_parse(NULL, 0, "TO", &a, buf);
	assert_false(a.ok);
	assert_int_equal(a.len, 0);
}

/* Writes addr as a path; want NULL when no path may say it.  A path written reads back as
 * the address it came from. */
static void
check_path(const char *addr, size_t n, int empty_ok, const char *want)
{
	unsigned char path[3 + ADDRESS_PATH_MAX(64)], again[sizeof(path)];
	struct address a;
	long len;

	assert_true(n <= 64);
	memcpy(path, "TO:", 3);
	len = address_path((const unsigned char *)addr, n, empty_ok, path + 3);
	if (want == NULL) {
		if (len >= 0)
			fail_msg("'%.*s': path '%.*s' (want none)", (int)n, addr, (int)len, path + 3);
		return;
	}
	if (len < 0 || (size_t)len != strlen(want) || memcmp(path + 3, want, (size_t)len) != 0)
		fail_msg("'%.*s': path '%.*s' (want '%s')", (int)n, addr, len < 0 ? 0 : (int)len,
		         path + 3, want);
	address_parse(path, (size_t)len + 3, "TO", &a, again);
	assert_true(a.ok);
	assert_int_equal(a.len, n);
	assert_memory_equal(again, addr, n);
}

static void
test_path(void **state)
{
	(void)state;
	check_path("bob@new.example", 15, 0, "<bob@new.example>");
	check_path("first.last+tag@new.example", 26, 0, "<first.last+tag@new.example>");
	check_path("postmaster", 10, 0, "<postmaster>");
	check_path("u@[192.0.2.1]", 13, 0, "<u@[192.0.2.1]>");
	check_path("", 0, 1, "<>");
	/* A local part that is no dot-atom is quoted, '"' and '\\' escaped. */
	check_path("a b@x.example", 13, 0, "<\"a b\"@x.example>");
	check_path("a@b@x.example", 13, 0, "<\"a@b\"@x.example>");
	check_path(".a@x.example", 12, 0, "<\".a\"@x.example>");
	check_path("a\"b\\c@x.example", 15, 0, "<\"a\\\"b\\\\c\"@x.example>");
	check_path("a(b),c@x.example", 16, 0, "<\"a(b),c\"@x.example>");
	/* What no path may say: the client's text would end the path or the line. */
	check_path("victim> ORCPT=rfc822;x@new.example", 34, 0, NULL);
	check_path("a<b@x.example", 13, 0, NULL);
	check_path("a\r\nRSET@x.example", 16, 0, NULL);
	check_path("a\0b@x.example", 13, 0, NULL);
	check_path("a\x7f@x.example", 11, 0, NULL);
	check_path("", 0, 0, NULL);
	check_path("@x.example", 10, 0, NULL);
	check_path("a@", 2, 0, NULL);
	check_path("a@x example", 11, 0, NULL);
	check_path("a@x..example", 12, 0, NULL);
	check_path("a@x.example.", 12, 0, NULL);
	check_path("a@[\"x]", 6, 0, NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_forms),
	    cmocka_unit_test(test_postfix_internal_form),
	    cmocka_unit_test(test_unreadable),
	    cmocka_unit_test(test_path_span),
	    cmocka_unit_test(test_path),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
