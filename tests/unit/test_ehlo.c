/* Unit tests for smtp/ehlo.c: extensions removed and added, separators fixed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "smtp/ehlo.h"

static const char reply[] = "250-mail.example\r\n"
			    "250-PIPELINING\r\n"
			    "250-SIZE 10240000\r\n"
			    "250-XCLIENT NAME ADDR\r\n"
			    "250 XFORWARD NAME\r\n";

static void
check_edit(const char *in, const char *const *remove, int nremove, const char *add,
	   const char *want, int wantchanges)
{
	struct ehlo_policy pol = {remove, nremove, add};
	struct evbuffer *out = evbuffer_new();
	int changes;

	assert_non_null(out);
	changes = ehlo_edit((const unsigned char *)in, strlen(in), &pol, out, NULL);
	assert_int_equal(changes, wantchanges);
	assert_int_equal(evbuffer_get_length(out), strlen(want));
	assert_memory_equal(evbuffer_pullup(out, -1), want, strlen(want));
	evbuffer_free(out);
}

static void
test_remove_last_lines(void **state)
{
	const char *rm[] = {"XCLIENT", "xforward"};

	(void)state;
	/* Removing the last line turns the new last one into "250 ". */
	check_edit(reply, rm, 2, NULL,
		   "250-mail.example\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n", 2);
}

/* A line without separator or text ("250\r\n") keeps its CRLF whatever its new place. */
static void
test_line_without_separator(void **state)
{
	const char *rm[] = {"XCLIENT"};

	(void)state;
	check_edit("250-mail.example\r\n250\r\n250-PIPELINING\r\n250 XCLIENT A\r\n", rm, 1, NULL,
		   "250-mail.example\r\n250-\r\n250 PIPELINING\r\n", 1);
	check_edit("250-mail.example\r\n250\r\n250 XCLIENT A\r\n", rm, 1, NULL,
		   "250-mail.example\r\n250 \r\n", 1);
}

static void
test_add_keyword(void **state)
{
	const char *rm[] = {"XCLIENT", "XFORWARD"};

	(void)state;
	check_edit(reply, rm, 2, "STARTTLS",
		   "250-mail.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n",
		   3);
	/* Already offered: not added twice. */
	check_edit("250-x\r\n250 STARTTLS\r\n", NULL, 0, "STARTTLS", "250-x\r\n250 STARTTLS\r\n",
		   0);
}

static void
test_never_empty(void **state)
{
	const char *rm[] = {"PIPELINING"};

	(void)state;
	/* The first line (the server's name) always stays, so a reply keeps a line. */
	check_edit("250-mail.example\r\n250 PIPELINING\r\n", rm, 1, NULL, "250 mail.example\r\n",
		   1);
	check_edit("250 mail.example\r\n", rm, 1, NULL, "250 mail.example\r\n", 0);
}

static void
test_keyword_is_whole_word(void **state)
{
	const char *rm[] = {"SIZE"};

	(void)state;
	check_edit("250-x\r\n250-SIZEX 1\r\n250 SIZE\r\n", rm, 1, NULL, "250-x\r\n250 SIZEX 1\r\n",
		   1);
}

static void
test_offers_and_size(void **state)
{
	(void)state;
	assert_true(ehlo_offers((const unsigned char *)reply, strlen(reply), "xclient"));
	assert_false(ehlo_offers((const unsigned char *)reply, strlen(reply), "STARTTLS"));
	/* The first line is the server's name, never an extension. */
	assert_false(ehlo_offers((const unsigned char *)reply, strlen(reply), "mail.example"));
	assert_int_equal(ehlo_size((const unsigned char *)reply, strlen(reply)), 10240000);
	assert_int_equal(ehlo_size((const unsigned char *)"250 x\r\n", 7), 0);
	assert_int_equal(ehlo_size((const unsigned char *)"250-x\r\n250 SIZE\r\n", 17), 0);
}

static void
test_many_lines(void **state)
{
	const char *rm[] = {"XCLIENT"};
	struct ehlo_policy pol = {rm, 1, NULL};
	struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
	size_t i, lines = 0;
	const char *p;

	(void)state;
	/* No fixed table: a reply of 600 lines keeps all 600 but the removed one. */
	evbuffer_add_printf(in, "250-mail.example\r\n");
	for (i = 0; i < 598; i++)
		evbuffer_add_printf(in, "250-X-EXT-%zu\r\n", i);
	evbuffer_add_printf(in, "250 XCLIENT ADDR\r\n");
	assert_int_equal(ehlo_edit(evbuffer_pullup(in, -1), evbuffer_get_length(in), &pol, out,
	                           NULL),
	                 1);
	p = (const char *)evbuffer_pullup(out, -1);
	for (i = 0; i < evbuffer_get_length(out); i++)
		lines += p[i] == '\n';
	assert_int_equal(lines, 599);
	assert_memory_equal(p + evbuffer_get_length(out) - 15, "250 X-EXT-597\r\n", 15);
	evbuffer_free(in);
	evbuffer_free(out);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_remove_last_lines), cmocka_unit_test(test_add_keyword),
	    cmocka_unit_test(test_line_without_separator),
	    cmocka_unit_test(test_never_empty),	      cmocka_unit_test(test_keyword_is_whole_word),
	    cmocka_unit_test(test_offers_and_size),   cmocka_unit_test(test_many_lines),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
