/* Unit tests for tools/journal_read.c and tools/filter.c: the tools' reader and filters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tools/filter.h"
#include "tools/journal_read.h"

static void
test_parse(void **state)
{
	struct jrecord r;
	const char *l = "2026-12-06T23:49:05.938413Z f5e623bd C: MAIL FROM:<a@b>";
	const char *e = "2026-12-06T23:49:05.938413Z f5e623bd C:";
	const char *p = "2026-12-06T23:49:05.938413Z S: 250 ok";

	(void)state;
	assert_int_equal(journal_parse(l, strlen(l), &r), 0);
	assert_string_equal(r.id, "f5e623bd");
	assert_string_equal(r.kind, "C:");
	assert_int_equal(r.textlen, strlen("MAIL FROM:<a@b>"));
	assert_memory_equal(r.text, "MAIL FROM:<a@b>", r.textlen);
	assert_int_equal(journal_parse(e, strlen(e), &r), 0);
	assert_int_equal(r.textlen, 0);
	/* The per-session layout has no id column. */
	assert_int_equal(journal_parse(p, strlen(p), &r), -1);
	assert_int_equal(journal_parse_any(p, strlen(p), &r), 0);
	assert_string_equal(r.id, "");
	assert_string_equal(r.kind, "S:");
	/* Torn: a timestamp cut short, or no kind. */
	assert_int_equal(journal_parse_any("2026-12-06T23:49:05.9", 21, &r), -1);
	assert_int_equal(journal_parse_any(l, 36, &r), -1);
}

static void
test_unescape(void **state)
{
	unsigned char out[32];
	size_t n;

	(void)state;
	assert_int_equal(journal_unescape("a\\\\b\\x00\\x0d\\x0a", 16, out, &n), 0);
	assert_int_equal(n, 6);
	assert_memory_equal(out, "a\\b\0\r\n", 6);
	assert_int_equal(journal_unescape("\\q", 2, out, &n), -1);
	assert_int_equal(journal_unescape("\\x4", 3, out, &n), -1);
}

static void
test_event_value(void **state)
{
	const char *t = "session client=[::1]:25 listener=1.2.3.4:25 reason=\"a b\"";
	char v[64];

	(void)state;
	assert_int_equal(journal_event_value(t, strlen(t), "client", v, sizeof(v)), 0);
	assert_string_equal(v, "[::1]:25");
	assert_int_equal(journal_event_value(t, strlen(t), "reason", v, sizeof(v)), 0);
	assert_string_equal(v, "a b");
	assert_int_equal(journal_event_value(t, strlen(t), "upstream", v, sizeof(v)), -1);
}

/* A growing file: a partial last line waits until its '\n' comes. */
static void
test_reader_torn_and_growing(void **state)
{
	char path[] = "/tmp/smtptap-jr-XXXXXX";
	struct journal_reader jr;
	const char *line;
	size_t n;
	off_t at;
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "one\ntw", 6), 6);
	assert_int_equal(journal_reader_open(&jr, path, 0), 0);
	assert_int_equal(journal_reader_next(&jr, &line, &n, &at), 1);
	assert_int_equal(n, 3);
	assert_int_equal(at, 0);
	assert_int_equal(journal_reader_next(&jr, &line, &n, &at), 0);
	assert_int_equal(write(fd, "o\n", 2), 2);
	assert_int_equal(journal_reader_next(&jr, &line, &n, &at), 1);
	assert_memory_equal(line, "two", 3);
	assert_int_equal(at, 4);
	journal_reader_close(&jr);
	close(fd);
	unlink(path);
}

static void
test_days(void **state)
{
	(void)state;
	assert_true(journal_is_day("2026-12-06.log"));
	assert_false(journal_is_day("2026-12-06.log.1"));
	assert_false(journal_is_day("events.jsonl"));
	assert_false(journal_is_day("2026-1-06.log"));
}

static void
test_filter_values(void **state)
{
	struct tool_filter f;
	char *argv[] = {"x", "--client", "10.1.0.0/16", "--code", "5xx", "--since", "2h", "--until",
	                "2026-12-06T10:30", "--code", "6xx"};
	char ts[32];
	int i;

	(void)state;
	memset(&f, 0, sizeof(f));
	for (i = 1; i < 9; i++)
		assert_int_equal(filter_option(&f, 11, argv, &i, 86400 * 2), 1);
	assert_int_equal(filter_option(&f, 11, argv, &i, 0), -1);
	assert_true(filter_client_matches(&f, "10.1.200.3:4000"));
	assert_false(filter_client_matches(&f, "10.2.0.1:4000"));
	assert_false(filter_client_matches(&f, "[::1]:25"));
	assert_true(filter_code_matches(&f, 550));
	assert_false(filter_code_matches(&f, 450));
	assert_string_equal(f.since, "1970-01-02T22:00:00.000000Z");
	assert_string_equal(f.until, "2026-12-06T10:30:00.000000Z");
	assert_int_equal(filter_parse_time("yesterday", 0, ts, NULL), -1);
	/* Further back than the epoch: the epoch, not an overflow. */
	assert_int_equal(filter_parse_time("99999999999999999d", 86400, ts, NULL), 0);
	assert_string_equal(ts, "1970-01-01T00:00:00.000000Z");
	assert_true(filter_address_matches("Alice@Example.com", "<alice@example.com> SIZE=10"));
	assert_true(filter_address_matches("@example.com", "<alice@EXAMPLE.com>"));
	assert_false(filter_address_matches("@example.com", "<alice@notexample.com>"));
	assert_true(filter_address_matches("<>", "<>"));
	assert_false(filter_address_matches("<>", "<a@b>"));
	assert_true(filter_rule_matches("p.rules", "/etc/p.rules:3"));
	assert_true(filter_rule_matches("/etc/p.rules:3", "/etc/p.rules:3"));
	assert_false(filter_rule_matches("p.rules:4", "/etc/p.rules:3"));
}

/* tail's filter on records: matches from MAIL on; a session closed unmatched is forgotten. */
static void
test_filter_records(void **state)
{
	static const char *const lines[] = {
	    "2026-12-06T23:49:05.000001Z a * session client=10.0.0.1:1 listener=x upstream=y",
	    "2026-12-06T23:49:05.000002Z a C: EHLO x",
	    "2026-12-06T23:49:05.000003Z a C: MAIL FROM:<alice@example.com>",
	    "2026-12-06T23:49:05.000004Z a S: 550 no",
	};
	static const int want[] = {FILTER_MAYBE, FILTER_MAYBE, FILTER_MAYBE, FILTER_MATCH};
	struct tool_filter f;
	struct filter_progress p;
	struct jrecord r;
	const char *close = "2026-12-06T23:49:06.000000Z a * close reason=quit";
	size_t i;

	(void)state;
	memset(&f, 0, sizeof(f));
	f.from = "alice@example.com";
	f.code = 5;
	filter_progress_init(&f, &p);
	for (i = 0; i < 4; i++) {
		assert_int_equal(journal_parse(lines[i], strlen(lines[i]), &r), 0);
		assert_int_equal(filter_record(&f, &p, &r), want[i]);
	}
	f.code = 4;
	filter_progress_init(&f, &p);
	for (i = 0; i < 4; i++) {
		assert_int_equal(journal_parse(lines[i], strlen(lines[i]), &r), 0);
		assert_int_equal(filter_record(&f, &p, &r), FILTER_MAYBE);
	}
	assert_int_equal(journal_parse(close, strlen(close), &r), 0);
	assert_int_equal(filter_record(&f, &p, &r), FILTER_NEVER);
	/* A client outside the network can never match. */
	f.has_client = 0;
	assert_int_equal(filter_option(&f, 3, (char *[]){"x", "--client", "192.168.0.0/24"},
	                               &(int){1}, 0),
	                 1);
	filter_progress_init(&f, &p);
	assert_int_equal(journal_parse(lines[0], strlen(lines[0]), &r), 0);
	assert_int_equal(filter_record(&f, &p, &r), FILTER_NEVER);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse),
	    cmocka_unit_test(test_unescape),
	    cmocka_unit_test(test_event_value),
	    cmocka_unit_test(test_reader_torn_and_growing),
	    cmocka_unit_test(test_days),
	    cmocka_unit_test(test_filter_values),
	    cmocka_unit_test(test_filter_records),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
