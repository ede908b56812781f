/*
 * Unit tests for the rules of issue 17: table: and cidr: lookups (filters/table.c), the
 * sender, recipient and client scopes (rules_apply_envelope), quoted texts, and the errors of
 * table files at their own FILE:LINE.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "filters/rules.h"
#include "filters/table.h"

static char tmpdir[] = "/tmp/test_table.XXXXXX";
static char srcdir[4096];

static void
write_text(const char *name, const char *text)
{
	FILE *fp;

	assert_non_null(fp = fopen(name, "w"));
	assert_int_equal(fputs(text, fp) >= 0, 1);
	assert_int_equal(fclose(fp), 0);
}

/* Loads rules from text, with the error text in *errs (freed by the caller). */
static struct ruleset *
load_rules(const char *text, char **errs)
{
	const char *files[] = {"r.rules"};
	struct ruleset *rs;
	size_t size;
	FILE *mem;

	write_text("r.rules", text);
	assert_non_null(mem = open_memstream(errs, &size));
	rs = rules_load(files, 1, mem);
	assert_int_equal(fclose(mem), 0);
	return rs;
}

static struct ruleset *
load_ok(const char *text)
{
	char *errs = NULL;
	struct ruleset *rs = load_rules(text, &errs);

	if (rs == NULL)
		fail_msg("rules did not load: %s", errs);
	free(errs);
	return rs;
}

static void
load_fails(const char *text, const char *want)
{
	char *errs = NULL;
	struct ruleset *rs = load_rules(text, &errs);

	if (rs != NULL || strstr(errs, want) == NULL)
		fail_msg("want an error '%s', got '%s'", want, errs);
	free(errs);
}

/* A MAIL or RCPT line through the rules as the proxy runs it. */
static int
envelope(const struct ruleset *rs, const char *line, struct rule_outcome *out)
{
	enum rule_scope scopes[2] = {SCOPE_COMMAND, SCOPE_COMMAND};
	int mail = strncmp(line, "MAIL", 4) == 0;

	scopes[0] = mail ? SCOPE_MAIL : SCOPE_RCPT;
	return rules_apply_envelope(rs, mail ? SCOPE_SENDER : SCOPE_RECIPIENT, scopes, 2,
	                            (const unsigned char *)line, strlen(line), 5, out);
}

static int
client(const struct ruleset *rs, const char *subject, struct rule_outcome *out)
{
	enum rule_scope scope = SCOPE_CLIENT;

	return rules_apply(rs, &scope, 1, (const unsigned char *)subject, strlen(subject), out);
}

static void
assert_line(const struct rule_outcome *out, const char *want)
{
	if (out->len != strlen(want) || memcmp(out->line, want, out->len) != 0)
		fail_msg("line '%.*s', want '%s'", (int)out->len, out->line, want);
}

/* ---- the address scopes ---- */

static void
test_recipient_bypasses(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	rs = load_ok("recipient /@competitor\\.example$/ REJECT 550 5.7.1 Recipient not permitted\n");
	assert_int_equal(envelope(rs, "RCPT TO:x@competitor.example", &out), ACT_REJECT);
	assert_string_equal(out.reply, "550 5.7.1 Recipient not permitted");
	assert_int_equal(envelope(rs, "RCPT TO:<x@competitor.example.>", &out), ACT_REJECT);
	assert_int_equal(envelope(rs, "RCPT TO:<X@Competitor.Example>", &out), ACT_REJECT);
	assert_int_equal(envelope(rs, "RCPT TO:<@relay.example:x@competitor.example>", &out),
	                 ACT_REJECT);
	assert_int_equal(out.nhits, 1);
	assert_int_equal(out.hits[0].scope, SCOPE_RECIPIENT);
	assert_int_equal(envelope(rs, "RCPT TO:<x@example.net>", &out), ACT_NONE);
	assert_line(&out, "RCPT TO:<x@example.net>");
	assert_false(out.rewritten);
	rules_free(rs);
	rule_outcome_free(&out);
}

static void
test_sender_allow_list(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	rs = load_ok("sender /^$/ PASS\n"
	             "sender !/@example\\.com$/ REJECT 550 5.7.1 Sender domain not permitted\n"
	             "mail /./ WARN line rules run after the address rules\n");
	assert_int_equal(envelope(rs, "MAIL FROM: <a@example.com>", &out), ACT_NONE);
	assert_int_equal(out.nhits, 1);
	assert_int_equal(out.hits[0].scope, SCOPE_MAIL);
	assert_int_equal(envelope(rs, "MAIL FROM:<a@EXAMPLE.com> SIZE=10", &out), ACT_NONE);
	assert_int_equal(envelope(rs, "MAIL FROM:<a@other.example>", &out), ACT_REJECT);
	/* PASS of the address ends the evaluation: the line rules never see it. */
	assert_int_equal(envelope(rs, "MAIL FROM:<>", &out), ACT_PASS);
	assert_int_equal(out.nhits, 1);
	assert_line(&out, "MAIL FROM:<>");
	rules_free(rs);
	rule_outcome_free(&out);
}

static void
test_address_rewrite_keeps_parameters(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	rs = load_ok("sender /^(.*)@old\\.example$/ REWRITE $1@new.example\n"
	             "mail /new/ WARN seen by the line rules\n"
	             "recipient /x@/ REWRITE y@\n");
	assert_int_equal(envelope(rs, "MAIL FROM: a@Old.Example SIZE=10 BODY=8BITMIME", &out),
	                 ACT_NONE);
	assert_true(out.rewritten);
	assert_line(&out, "MAIL FROM: <a@new.example> SIZE=10 BODY=8BITMIME");
	assert_int_equal(out.nhits, 2);
	assert_int_equal(out.hits[0].action, ACT_REWRITE);
	assert_int_equal(out.hits[1].action, ACT_WARN);
	assert_int_equal(envelope(rs, "RCPT TO:<x@example.net> NOTIFY=NEVER", &out), ACT_NONE);
	assert_line(&out, "RCPT TO:<y@example.net> NOTIFY=NEVER");
	/* An argument that cannot be read has no path to rewrite: refused as the server would. */
	assert_int_equal(envelope(rs, "RCPT TO:<x@example.net", &out), ACT_REJECT);
	assert_string_equal(out.reply, "501 5.1.7 Bad address syntax");
	rules_free(rs);
	rule_outcome_free(&out);
}

static void
test_quoted_texts(void **state)
{
	enum rule_scope scope = SCOPE_HEADER;
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	rs = load_ok("header /^Subject: / REWRITE \"Subject: [EXT] \"\n"
	             "header /^X-Drop: .*/ REWRITE \"\"\n"
	             "command /^NOOP/ REJECT \"550 5.7.1 no  \"\n");
	assert_int_equal(rules_apply(rs, &scope, 1, (const unsigned char *)"Subject: Quarterly",
	                             18, &out),
	                 ACT_NONE);
	assert_line(&out, "Subject: [EXT] Quarterly");
	assert_int_equal(rules_apply(rs, &scope, 1, (const unsigned char *)"X-Drop: x", 9, &out),
	                 ACT_NONE);
	assert_line(&out, "");
	scope = SCOPE_COMMAND;
	assert_int_equal(rules_apply(rs, &scope, 1, (const unsigned char *)"NOOP", 4, &out),
	                 ACT_REJECT);
	assert_string_equal(out.reply, "550 5.7.1 no  ");
	rules_free(rs);
	rule_outcome_free(&out);
}

/* ---- tables ---- */

static void
test_table_lookups(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	write_text("senders", "# access(5) style\n"
	                      "competitor.example REJECT 554 5.7.1 Recipient not permitted\n"
	                      "alice@competitor.example OK\n"
	                      ".sub.example WARN a subdomain\n"
	                      "spam@ 550 5.7.1 No spam@ anywhere\n"
	                      "<> DISCONNECT\n"
	                      "ok.competitor.example DUNNO\n"
	                      "plain.example\n");
	rs = load_ok("recipient table:senders REJECT\n"
	             "sender table:senders REJECT 550 5.7.1 Listed\n"
	             "recipient /./ WARN not listed\n");
	/* The domain and its parents, case folded, with the entry's action and text. */
	assert_int_equal(envelope(rs, "RCPT TO:<x@competitor.example>", &out), ACT_REJECT);
	assert_string_equal(out.reply, "554 5.7.1 Recipient not permitted");
	assert_int_equal(envelope(rs, "RCPT TO:<x@a.b.Competitor.Example.>", &out), ACT_REJECT);
	/* The whole address first: OK is PASS. */
	assert_int_equal(envelope(rs, "RCPT TO:<Alice@competitor.example>", &out), ACT_PASS);
	/* ".domain" matches subdomains only. */
	assert_int_equal(envelope(rs, "RCPT TO:<x@a.sub.example>", &out), ACT_NONE);
	assert_int_equal(out.hits[0].action, ACT_WARN);
	assert_string_equal(out.hits[0].text, "a subdomain");
	/* "user@" last; a reply as the action is REJECT. */
	assert_int_equal(envelope(rs, "RCPT TO:<spam@example.net>", &out), ACT_REJECT);
	assert_string_equal(out.reply, "550 5.7.1 No spam@ anywhere");
	/* The null sender is "<>"; DISCONNECT without text has the default reply. */
	assert_int_equal(envelope(rs, "MAIL FROM:<>", &out), ACT_DISCONNECT);
	assert_string_equal(out.reply, RULES_DISCONNECT_DEFAULT);
	/* DUNNO stops the search: no match, even though a parent is listed. */
	assert_int_equal(envelope(rs, "RCPT TO:<x@ok.competitor.example>", &out), ACT_NONE);
	/* A key without an action takes the rule's. */
	assert_int_equal(envelope(rs, "MAIL FROM:<x@plain.example>", &out), ACT_REJECT);
	assert_string_equal(out.reply, "550 5.7.1 Listed");
	assert_int_equal(envelope(rs, "RCPT TO:<x@example.net>", &out), ACT_NONE);
	assert_int_equal(out.nhits, 1);
	rules_free(rs);
	rule_outcome_free(&out);
}

static void
test_negated_table(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	write_text("allowed", "example.com\n");
	rs = load_ok("sender !table:allowed REJECT\n");
	assert_int_equal(envelope(rs, "MAIL FROM:<a@mail.example.com>", &out), ACT_NONE);
	assert_int_equal(envelope(rs, "MAIL FROM:<a@example.org>", &out), ACT_REJECT);
	assert_string_equal(out.reply, RULES_REJECT_DEFAULT);
	rules_free(rs);
	rule_outcome_free(&out);
}

static void
test_cidr(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	write_text("nets", "192.0.2.128/25 OK\n"
	                   "192.0.2.0/24\n"
	                   "10.0.0.0/8 WARN internal\n"
	                   "10.1.0.0/16 OK\n"
	                   "2001:db8::/32 REJECT 550 5.7.1 Not from there\n"
	                   "198.51.100.7\n");
	rs = load_ok("client cidr:nets REJECT\n");
	assert_int_equal(client(rs, "192.0.2.200 unknown", &out), ACT_PASS);
	assert_int_equal(client(rs, "192.0.2.1 unknown", &out), ACT_REJECT);
	assert_string_equal(out.reply, RULES_CLIENT_REJECT_DEFAULT);
	/* First match of the file wins, whatever the prefix length. */
	assert_int_equal(client(rs, "10.1.2.3 unknown", &out), ACT_NONE);
	assert_int_equal(out.hits[0].action, ACT_WARN);
	assert_int_equal(client(rs, "2001:db8:1::5 unknown", &out), ACT_REJECT);
	assert_string_equal(out.reply, "550 5.7.1 Not from there");
	assert_int_equal(client(rs, "::ffff:198.51.100.7 unknown", &out), ACT_REJECT);
	assert_int_equal(client(rs, "198.51.100.8 unknown", &out), ACT_NONE);
	assert_int_equal(client(rs, "2001:db9::1 unknown", &out), ACT_NONE);
	assert_int_equal(client(rs, "local unknown", &out), ACT_NONE);
	rules_free(rs);
	rule_outcome_free(&out);
}

static void
test_client_table_and_pattern(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	write_text("clients", "192.0.2 REJECT 554 5.7.1 Go away\n127.0.0.1 OK\n");
	rs = load_ok("client table:clients REJECT\nclient /^203\\.0\\.113\\./ REJECT\n");
	assert_int_equal(client(rs, "192.0.2.9 unknown", &out), ACT_REJECT);
	assert_string_equal(out.reply, "554 5.7.1 Go away");
	assert_int_equal(client(rs, "127.0.0.1 unknown", &out), ACT_PASS);
	assert_int_equal(client(rs, "203.0.113.5 unknown", &out), ACT_REJECT);
	assert_string_equal(out.reply, "554 5.7.1 Access denied");
	rules_free(rs);
	rule_outcome_free(&out);
}

static void
test_big_table(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;
	char key[64];
	FILE *fp;
	int i;

	(void)state;
	rule_outcome_init(&out);
	assert_non_null(fp = fopen("big", "w"));
	for (i = 0; i < 100000; i++)
		fprintf(fp, "blocked%d.example\n", i);
	assert_int_equal(fclose(fp), 0);
	rs = load_ok("recipient table:big REJECT\n");
	for (i = 0; i < 100000; i += 997) {
		snprintf(key, sizeof(key), "RCPT TO:<u@blocked%d.example>", i);
		assert_int_equal(envelope(rs, key, &out), ACT_REJECT);
	}
	assert_int_equal(envelope(rs, "RCPT TO:<u@blocked100000.example>", &out), ACT_NONE);
	rules_free(rs);
	rule_outcome_free(&out);
}

static void
test_table_errors(void **state)
{
	(void)state;
	write_text("bad", "good.example\n"
	                  "bad.example FROB\n"
	                  "x.example OK trailing\n"
	                  "y.example REJECT 250 fine\n"
	                  "  indented\n");
	load_fails("sender table:bad REJECT\n", "bad:2:13: unknown action 'FROB'");
	load_fails("sender table:bad REJECT\n", "bad:3:14: OK takes no text");
	load_fails("sender table:bad REJECT\n", "bad:4:18: reply must be");
	load_fails("sender table:bad REJECT\n", "bad:5:1: line starts with white space");
	write_text("badnet", "192.0.2.1/24\n300.1.1.1\n");
	load_fails("client cidr:badnet REJECT\n", "badnet:1:1: '192.0.2.1/24' has bits set");
	load_fails("client cidr:badnet REJECT\n", "badnet:2:1: not a network");
	load_fails("sender table:missing REJECT\n", "r.rules:1:14: table missing: cannot open");
	load_fails("sender cidr:badnet REJECT\n", "r.rules:1:8: cidr: tables are for the client");
	load_fails("mail table:bad REJECT\n", "tables are for the sender, recipient and client");
	write_text("ok", "a.example\n");
	load_fails("sender table:ok REWRITE x\n", "a table rule can only REJECT");
	load_fails("client /x/ REWRITE y\n", "REWRITE is not allowed in scope client");
	load_fails("sender table: REJECT\n", "missing table path");
}

static int
setup(void **state)
{
	(void)state;
	if (getcwd(srcdir, sizeof(srcdir)) == NULL || mkdtemp(tmpdir) == NULL ||
	    chdir(tmpdir) != 0)
		return -1;
	return 0;
}

static int
teardown(void **state)
{
	static const char *const files[] = {"r.rules", "senders", "allowed", "nets", "clients",
	                                    "big", "bad", "badnet", "ok"};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		unlink(files[i]);
	if (chdir(srcdir) != 0)
		return -1;
	return rmdir(tmpdir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_recipient_bypasses),
	    cmocka_unit_test(test_sender_allow_list),
	    cmocka_unit_test(test_address_rewrite_keeps_parameters),
	    cmocka_unit_test(test_quoted_texts),
	    cmocka_unit_test(test_table_lookups),
	    cmocka_unit_test(test_negated_table),
	    cmocka_unit_test(test_cidr),
	    cmocka_unit_test(test_client_table_and_pattern),
	    cmocka_unit_test(test_big_table),
	    cmocka_unit_test(test_table_errors),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
