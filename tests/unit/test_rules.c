/*
 * Unit tests for filters/rules.c (and the --check-rules and --test-rules modes): parsing,
 * every load error at its line and column, each scope, action and flag, substitution, the
 * reply-marker fix, lines holding NUL or invalid UTF-8, and the prefilter (filters/prefilter.c)
 * against PCRE2 itself: it may never rule out a line that the pattern matches.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "filters/check.h"
#include "filters/prefilter.h"
#include "filters/rules.h"
#include "filters/trial.h"
#include "proxy/smtp.h"

/* Tests run in a fresh directory, so that errors name "r.rules" whatever the machine. */
static char tmpdir[] = "/tmp/test_rules.XXXXXX";
static char srcdir[4096];

#define L(s) (const unsigned char *)(s), sizeof(s) - 1

static void
write_file(const char *name, const char *text, size_t len)
{
	FILE *fp;

	assert_non_null(fp = fopen(name, "w"));
	assert_int_equal(fwrite(text, 1, len, fp), len);
	assert_int_equal(fclose(fp), 0);
}

static void
write_text(const char *name, const char *text)
{
	write_file(name, text, strlen(text));
}

/* Loads the files named (already written), returning the ruleset and the error text. */
static struct ruleset *
load_files(const char *const *files, int n, char **errs)
{
	struct ruleset *rs;
	size_t size;
	FILE *mem;

	assert_non_null(mem = open_memstream(errs, &size));
	rs = rules_load(files, n, mem);
	assert_int_equal(fclose(mem), 0);
	return rs;
}

/* Loads text as the only rule file, r.rules; fails the test on any error. */
static struct ruleset *
load(const char *text)
{
	const char *files[] = {"r.rules"};
	struct ruleset *rs;
	char *errs;

	write_text("r.rules", text);
	rs = load_files(files, 1, &errs);
	if (rs == NULL)
		fail_msg("unexpected load errors:\n%s", errs);
	assert_string_equal(errs, "");
	free(errs);
	return rs;
}

/* Loads text that must fail, and checks the exact error output. */
static void
load_bad_n(const char *text, size_t len, const char *want)
{
	const char *files[] = {"r.rules"};
	char *errs;

	write_file("r.rules", text, len);
	assert_null(load_files(files, 1, &errs));
	assert_string_equal(errs, want);
	free(errs);
}

static void
load_bad(const char *text, const char *want)
{
	load_bad_n(text, strlen(text), want);
}

/* Applies the rules of one or two scopes to a line. */
static int
apply2(struct ruleset *rs, enum rule_scope a, enum rule_scope b, const unsigned char *p, size_t n,
       struct rule_outcome *out)
{
	enum rule_scope scopes[2] = {a, b};

	return rules_apply(rs, scopes, a == b ? 1 : 2, p, n, out);
}

static void
assert_line(const struct rule_outcome *out, const char *want, size_t len)
{
	assert_int_equal(out->len, len);
	assert_memory_equal(out->line, want, len);
}

#define ASSERT_LINE(out, lit) assert_line(out, lit, sizeof(lit) - 1)

static int
setup(void **state)
{
	(void)state;
	if (getcwd(srcdir, sizeof(srcdir)) == NULL || mkdtemp(tmpdir) == NULL ||
	    chdir(tmpdir) == -1)
		return -1;
	return 0;
}

static int
teardown(void **state)
{
	const char *names[] = {"r.rules", "a.rules", "b.rules", "t.log", "out.txt", "err.txt"};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		unlink(names[i]);
	if (chdir(srcdir) == -1)
		return -1;
	return rmdir(tmpdir);
}

/* ---- parsing ---- */

static void
test_comments_blank_lines(void **state)
{
	struct ruleset *rs;

	(void)state;
	rs = load("# a comment\n"
	          "\n"
	          "   \t\n"
	          "\t# indented comment\n"
	          "mail /#not-a-comment/ WARN # kept as text\n"
	          "  rcpt   /x/i\tREJECT   550 5.7.1 Go away  \r\n");
	assert_int_equal(rules_count(rs), 2);
	assert_int_equal(rules_nfiles(rs), 1);
	rules_free(rs);
}

static void
test_describe(void **state)
{
	struct ruleset *rs;
	const char *file;
	unsigned int line;
	enum rule_scope scope;
	enum rule_action act;

	(void)state;
	rs = load("\nhelo /x/ WARN\n# c\nBODY /y/ reject\n");
	assert_int_equal(rules_count(rs), 2);
	rules_describe(rs, 1, &file, &line, &scope, &act);
	assert_string_equal(file, "r.rules");
	assert_int_equal(line, 4);
	assert_int_equal(scope, SCOPE_BODY);
	assert_int_equal(act, ACT_REJECT);
	assert_string_equal(rules_scope_name(SCOPE_CAPABILITY), "capability");
	assert_string_equal(rules_action_name(ACT_DISCONNECT), "DISCONNECT");
	assert_string_equal(rules_scope_name(SCOPE_COUNT), "?");
	rules_free(rs);
}

static void
test_empty_ruleset(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	rs = load("# nothing\n");
	assert_int_equal(rules_count(rs), 0);
	assert_false(rules_holds_messages(rs));
	assert_int_equal(apply2(rs, SCOPE_MAIL, SCOPE_COMMAND, L("MAIL FROM:<>"), &out), ACT_NONE);
	ASSERT_LINE(&out, "MAIL FROM:<>");
	/* No ruleset at all behaves the same. */
	assert_int_equal(apply2(NULL, SCOPE_BODY, SCOPE_BODY, L("x"), &out), ACT_NONE);
	assert_int_equal(out.nhits, 0);
	rule_outcome_free(&out);
	rules_free(rs);
	assert_non_null(rs = rules_load(NULL, 0, NULL));
	assert_int_equal(rules_count(rs), 0);
	rules_free(rs);
}

static void
test_refcount(void **state)
{
	struct ruleset *rs;

	(void)state;
	rs = load("mail /x/ WARN\n");
	assert_ptr_equal(rules_ref(rs), rs);
	rules_free(rs);
	/* Still alive: a running session holds it across a reload. */
	assert_int_equal(rules_count(rs), 1);
	rules_free(rs);
	rules_free(NULL);
}

/* ---- scopes ---- */

static void
test_each_scope(void **state)
{
	static const struct {
		enum rule_scope scope;
		const char *line;
	} cases[] = {
	    {SCOPE_HELO, "EHLO client.example"},     {SCOPE_MAIL, "MAIL FROM:<a@example.com>"},
	    {SCOPE_RCPT, "RCPT TO:<b@example.net>"}, {SCOPE_COMMAND, "NOOP"},
	    {SCOPE_HEADER, "Subject: hi"},           {SCOPE_BODY, "hello"},
	    {SCOPE_BANNER, "220 mx.example ESMTP"},  {SCOPE_REPLY, "250 2.0.0 Ok"},
	    {SCOPE_CAPABILITY, "250-PIPELINING"},
	};
	struct rule_outcome out;
	struct ruleset *rs;
	size_t i;
	int s;

	(void)state;
	rule_outcome_init(&out);
	rs = load("helo // WARN helo\n"
	          "mail // WARN mail\n"
	          "rcpt // WARN rcpt\n"
	          "command // WARN command\n"
	          "header // WARN header\n"
	          "body // WARN body\n"
	          "banner // WARN banner\n"
	          "reply // WARN reply\n"
	          "capability // WARN capability\n"
	          "sender // WARN sender\n"
	          "recipient // WARN recipient\n"
	          "client // WARN client\n");
	for (s = 0; s < SCOPE_COUNT; s++)
		assert_true(rules_has_scope(rs, (enum rule_scope)s));
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		/* A line is tried only against the rules of its scope. */
		assert_int_equal(apply2(rs, cases[i].scope, cases[i].scope,
		                        (const unsigned char *)cases[i].line, strlen(cases[i].line),
		                        &out),
		                 ACT_NONE);
		assert_int_equal(out.nhits, 1);
		assert_int_equal(out.hits[0].scope, cases[i].scope);
		assert_int_equal(out.hits[0].line, i + 1);
		assert_string_equal(out.hits[0].text, rules_scope_name(cases[i].scope));
		assert_int_equal(out.hits[0].action, ACT_WARN);
		assert_int_equal(out.nwarnings, 1);
	}
	rule_outcome_free(&out);
	rules_free(rs);
}

static void
test_has_scope(void **state)
{
	struct ruleset *rs;

	(void)state;
	rs = load("mail /x/ WARN\n");
	assert_true(rules_has_scope(rs, SCOPE_MAIL));
	assert_false(rules_has_scope(rs, SCOPE_COMMAND));
	assert_false(rules_has_scope(rs, SCOPE_HEADER));
	assert_false(rules_has_scope(NULL, SCOPE_MAIL));
	rules_free(rs);
}

static void
test_scopes_file_order(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	rs = load("command /^MAIL/ WARN 1\n"
	          "mail /x/ WARN 2\n"
	          "rcpt /x/ WARN never\n"
	          "command /x/ WARN 3\n"
	          "mail /x/ WARN 4\n");
	/* Whatever the order of the scopes passed, rules run in file order. */
	assert_int_equal(apply2(rs, SCOPE_COMMAND, SCOPE_MAIL, L("MAIL FROM:<x>"), &out), ACT_NONE);
	assert_int_equal(out.nhits, 4);
	assert_string_equal(out.hits[0].text, "1");
	assert_string_equal(out.hits[1].text, "2");
	assert_string_equal(out.hits[2].text, "3");
	assert_string_equal(out.hits[3].text, "4");
	assert_int_equal(out.hits[3].rule, 4);
	rule_outcome_free(&out);
	rules_free(rs);
}

static void
test_capability_view(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	rs = load("capability /^SIZE (\\d+)$/ REWRITE SIZE 1000\n"
	          "reply /^250-SIZE 1000$/ WARN seen by reply\n"
	          "capability /^STARTTLS$/i IGNORE\n");
	/* The capability rule sees "SIZE 10240000", and rewrites only that part. */
	assert_int_equal(apply2(rs, SCOPE_CAPABILITY, SCOPE_REPLY, L("250-SIZE 10240000"), &out),
	                 ACT_NONE);
	ASSERT_LINE(&out, "250-SIZE 1000");
	assert_int_equal(out.nhits, 2);
	assert_int_equal(out.hits[0].action, ACT_REWRITE);
	assert_memory_equal(out.hits[0].orig, "250-SIZE 10240000", out.hits[0].orig_len);
	assert_memory_equal(out.hits[0].repl, "250-SIZE 1000", out.hits[0].repl_len);
	assert_int_equal(out.hits[1].action, ACT_WARN);
	assert_int_equal(apply2(rs, SCOPE_CAPABILITY, SCOPE_REPLY, L("250 starttls"), &out),
	                 ACT_IGNORE);
	/* A reply line that is no capability line does not see capability rules. */
	assert_int_equal(apply2(rs, SCOPE_REPLY, SCOPE_REPLY, L("250 STARTTLS"), &out), ACT_NONE);
	/* A line too short for "250-" leaves the capability rule an empty subject. */
	assert_int_equal(apply2(rs, SCOPE_CAPABILITY, SCOPE_CAPABILITY, L("25"), &out), ACT_NONE);
	rule_outcome_free(&out);
	rules_free(rs);
}

/* ---- actions, flags and negation: one row a case ---- */

/*
 * Apply cases: a rule file, a line under one or two scopes, and what must come of it.  Append
 * rows here; one loop (test_apply_cases) checks them all.  reply and line are checked when
 * set, nhits when not -1.
 */
static const struct apply_case {
	const char *rules;
	enum rule_scope a, b;
	const char *in;
	size_t inlen;
	int verdict;
	const char *reply; /* the reply of a REJECT or DISCONNECT */
	const char *line;  /* the line after the rules */
	int nhits;
} apply_cases[] = {
/* clang-format off */
#define IN(s) s, sizeof(s) - 1
#define REJECTS "rcpt /@competitor\\.example>/i REJECT\n"                                        \
                "rcpt /@b\\.example>/i REJECT 450 4.7.1 Try later\n"                             \
                "rcpt /@/ WARN after\n"
    /* REJECT: the default reply or the rule's own; later rules are not reached */
    {REJECTS, SCOPE_RCPT, SCOPE_COMMAND, IN("RCPT TO:<x@Competitor.example>"), ACT_REJECT,
     RULES_REJECT_DEFAULT, NULL, 1},
    {REJECTS, SCOPE_RCPT, SCOPE_COMMAND, IN("RCPT TO:<x@b.example>"), ACT_REJECT,
     "450 4.7.1 Try later", NULL, -1},
    {REJECTS, SCOPE_RCPT, SCOPE_COMMAND, IN("RCPT TO:<x@c.example>"), ACT_NONE, NULL, NULL, 1},
#define REWRITES "header /^Subject: /i REWRITE Subject: [ext] \n"                                \
                 "header /\\[ext\\](.*)/ REWRITE [ext] <$1>\n"                                   \
                 "header /<spam>/ REJECT 550 5.7.1 No spam\n"
    /* REWRITE goes on: a text's trailing blanks are trimmed, the next rule sees the result */
    {REWRITES, SCOPE_HEADER, SCOPE_HEADER, IN("subject: hello"), ACT_NONE, NULL,
     "Subject: [ext] <hello>", 2},
    {REWRITES, SCOPE_HEADER, SCOPE_HEADER, IN("Subject: spam"), ACT_REJECT, NULL, NULL, 3},
#define IGNORES "header /^X-Internal:/i IGNORE\n"                                                \
                "header /./ WARN not reached\n"                                                  \
                "body /^secret$/ IGNORE\n"                                                       \
                "banner /^220-/ IGNORE\n"                                                        \
                "reply /^250-SMTPUTF8/ IGNORE\n"
    /* IGNORE */
    {IGNORES, SCOPE_HEADER, SCOPE_HEADER, IN("X-Internal: 1"), ACT_IGNORE, NULL, NULL, 1},
    {IGNORES, SCOPE_BODY, SCOPE_BODY, IN("secret"), ACT_IGNORE, NULL, NULL, -1},
    {IGNORES, SCOPE_BANNER, SCOPE_REPLY, IN("220-mx.example"), ACT_IGNORE, NULL, NULL, -1},
    {IGNORES, SCOPE_REPLY, SCOPE_REPLY, IN("250-SMTPUTF8"), ACT_IGNORE, NULL, NULL, -1},
#define PREPENDS "header /^Subject:/i PREPEND X-Policy: external\n"                              \
                 "header /^Subject:/i PREPEND X-Second: yes\n"                                   \
                 "header /^Subject:/i WARN still evaluated\n"
    /* PREPEND leaves the line as it is and goes on */
    {PREPENDS, SCOPE_HEADER, SCOPE_HEADER, IN("Subject: x"), ACT_NONE, NULL, "Subject: x", 3},
    {PREPENDS, SCOPE_HEADER, SCOPE_HEADER, IN("From: x"), ACT_NONE, NULL, "From: x", 0},
    /* WARN */
    {"body /viagra/i WARN\nbody /viagra/i WARN spam word\n", SCOPE_BODY, SCOPE_BODY,
     IN("buy VIAGRA"), ACT_NONE, NULL, "buy VIAGRA", 2},
#define DISCONNECTS "helo /^HELO localhost$/i DISCONNECT\n"                                     \
                    "command /^XYZZY/ DISCONNECT 554 5.7.0 Bye\n"                                \
                    "body /^EICAR/ DISCONNECT\n"
    /* DISCONNECT */
    {DISCONNECTS, SCOPE_HELO, SCOPE_COMMAND, IN("helo localhost"), ACT_DISCONNECT,
     RULES_DISCONNECT_DEFAULT, NULL, -1},
    {DISCONNECTS, SCOPE_COMMAND, SCOPE_COMMAND, IN("XYZZY"), ACT_DISCONNECT, "554 5.7.0 Bye",
     NULL, -1},
    /* PASS ends the evaluation */
    {"mail /@trusted\\.example>/ PASS\nmail /./ REJECT\n", SCOPE_MAIL, SCOPE_COMMAND,
     IN("MAIL FROM:<a@trusted.example>"), ACT_PASS, NULL, NULL, 1},
    {"mail /@trusted\\.example>/ PASS\nmail /./ REJECT\n", SCOPE_MAIL, SCOPE_COMMAND,
     IN("MAIL FROM:<a@other.example>"), ACT_REJECT, NULL, NULL, -1},
    /* g: every match rewritten, else the first */
    {"body /a/ REWRITE b\nheader /a/g REWRITE b\n", SCOPE_BODY, SCOPE_BODY, IN("aaa"), ACT_NONE,
     NULL, "baa", -1},
    {"body /a/ REWRITE b\nheader /a/g REWRITE b\n", SCOPE_HEADER, SCOPE_HEADER, IN("aaa"),
     ACT_NONE, NULL, "bbb", -1},
#define NEGATED "mail !/^MAIL FROM:<[^>]*@example\\.com>/i REJECT 550 5.7.1 Sender domain not "  \
                "permitted\n"
    /* negation: the rule applies where the pattern does not match */
    {NEGATED, SCOPE_MAIL, SCOPE_COMMAND, IN("MAIL FROM:<a@Example.COM>"), ACT_NONE, NULL, NULL,
     0},
    {NEGATED, SCOPE_MAIL, SCOPE_COMMAND, IN("MAIL FROM:<a@evil.example>"), ACT_REJECT,
     "550 5.7.1 Sender domain not permitted", NULL, -1},
    {NEGATED, SCOPE_MAIL, SCOPE_COMMAND, IN("MAIL FROM:<>"), ACT_REJECT, NULL, NULL, -1},
#define MATCH(rule, s, hit) {"body " rule " WARN\n", SCOPE_BODY, SCOPE_BODY, IN(s), ACT_NONE, NULL, NULL, hit}
    /* flags */
    MATCH("/abc/", "ABC", 0),
    MATCH("/abc/i", "ABC", 1),
    MATCH("/a b c/", "abc", 0),
    MATCH("/a b c # comment/x", "abc", 1),
    MATCH("/a.b/", "a\nb", 0),
    MATCH("/a.b/s", "a\nb", 1),
    /* m: ^ and $ at CRLF inside a folded header. */
    MATCH("/^b$/", "a\r\nb", 0),
    MATCH("/^b$/m", "a\r\nb", 1),
    MATCH("/^a$/m", "a\r\nb", 1),
    /* u: '.' is one character, not one octet. */
    MATCH("/^.$/", "\xc3\xa9", 0),
    MATCH("/^.$/u", "\xc3\xa9", 1),
    MATCH("/^\\x{e9}$/u", "\xc3\xa9", 1),
    MATCH("/^.$/iu", "\xc3\x89", 1),
    MATCH("/^\xc3\xa9$/iu", "\xc3\x89", 1),
    MATCH("/ix/isxmug", "IX", 1),
    /* escaped slashes */
    MATCH("/^GET \\/index\\.html$/", "GET /index.html", 1),
    MATCH("/[\\/]/", "/", 1),
    /* "\\/" is an escaped backslash, then the closing slash. */
    MATCH("/a\\\\/", "a\\", 1),
    MATCH("/a\\\\/", "a/", 0),
    /* Inside \Q...\E the slash is still the slash, not a backslash and a slash. */
    MATCH("/\\Qa\\/b\\E/", "a/b", 1),
#undef MATCH
#undef NEGATED
#undef IGNORES
#undef IN
    /* clang-format on */
};

static void
test_apply_cases(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(apply_cases) / sizeof(apply_cases[0]); i++) {
		const struct apply_case *c = &apply_cases[i];

		print_message("apply case %zu: %s", i, c->rules);
		rs = load(c->rules);
		rule_outcome_init(&out);
		assert_int_equal(
		    apply2(rs, c->a, c->b, (const unsigned char *)c->in, c->inlen, &out),
		    c->verdict);
		if (c->reply != NULL)
			assert_string_equal(out.reply, c->reply);
		if (c->verdict == ACT_NONE)
			assert_null(out.reply);
		if (c->line != NULL)
			assert_line(&out, c->line, strlen(c->line));
		if (c->nhits >= 0)
			assert_int_equal(out.nhits, c->nhits);
		rule_outcome_free(&out);
		rules_free(rs);
	}
}

/* What a row does not say: the hits themselves, prepended headers, warnings. */
static void
test_apply_details(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	rs = load(REJECTS);
	assert_int_equal(
	    apply2(rs, SCOPE_RCPT, SCOPE_COMMAND, L("RCPT TO:<x@Competitor.example>"), &out),
	    ACT_REJECT);
	assert_int_equal(out.hits[0].action, ACT_REJECT);
	assert_string_equal(out.hits[0].text, RULES_REJECT_DEFAULT);
	assert_null(out.hits[0].repl);
	rules_free(rs);

	rs = load(REWRITES);
	assert_int_equal(apply2(rs, SCOPE_HEADER, SCOPE_HEADER, L("subject: hello"), &out),
	                 ACT_NONE);
	assert_int_equal(out.rewritten, 1);
	assert_int_equal(apply2(rs, SCOPE_HEADER, SCOPE_HEADER, L("Subject: spam"), &out),
	                 ACT_REJECT);
	assert_memory_equal(out.hits[1].orig, "Subject: [ext]spam", out.hits[1].orig_len);
	assert_memory_equal(out.hits[1].repl, "Subject: [ext] <spam>", out.hits[1].repl_len);
	/* The third rule saw the rewritten line. */
	assert_memory_equal(out.hits[2].orig, "Subject: [ext] <spam>", out.hits[2].orig_len);
	rules_free(rs);

	rs = load(PREPENDS);
	assert_int_equal(apply2(rs, SCOPE_HEADER, SCOPE_HEADER, L("Subject: x"), &out), ACT_NONE);
	assert_int_equal(out.nprepend, 2);
	assert_string_equal(out.prepend[0], "X-Policy: external");
	assert_string_equal(out.prepend[1], "X-Second: yes");
	assert_int_equal(out.hits[0].action, ACT_PREPEND);
	assert_int_equal(out.rewritten, 0);
	assert_int_equal(apply2(rs, SCOPE_HEADER, SCOPE_HEADER, L("From: x"), &out), ACT_NONE);
	assert_int_equal(out.nprepend, 0);
	rules_free(rs);

	rs = load("body /viagra/i WARN\nbody /viagra/i WARN spam word\n");
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("buy VIAGRA"), &out), ACT_NONE);
	assert_int_equal(out.nwarnings, 2);
	assert_null(out.hits[0].text);
	assert_string_equal(out.hits[1].text, "spam word");
	rules_free(rs);

	rs = load(DISCONNECTS);
	assert_true(rules_holds_messages(rs));
	rules_free(rs);

	rs = load("mail /@trusted\\.example>/ PASS\nmail /./ REJECT\n");
	assert_int_equal(
	    apply2(rs, SCOPE_MAIL, SCOPE_COMMAND, L("MAIL FROM:<a@trusted.example>"), &out),
	    ACT_PASS);
	assert_int_equal(out.hits[0].action, ACT_PASS);
	rule_outcome_free(&out);
	rules_free(rs);
}

static void
test_holds_messages(void **state)
{
	struct ruleset *rs;

	(void)state;
	rs = load("header /x/ WARN\nbody /x/ REWRITE y\nmail /x/ REJECT\n");
	assert_false(rules_holds_messages(rs));
	rules_free(rs);
	rs = load("header /x/ REJECT\n");
	assert_true(rules_holds_messages(rs));
	rules_free(rs);
	rs = load("body /x/ REJECT\n");
	assert_true(rules_holds_messages(rs));
	rules_free(rs);
}

/* ---- load errors ---- */

/*
 * Load errors: a rule file and the exact error output, one row each.  Append rows here; one
 * loop (test_load_errors) checks them all.
 */
static const struct load_error_case {
	const char *text;
	const char *errors;
} load_errors[] = {
    /* error_scope */
    {"helox /a/ WARN\n", "r.rules:1:1: unknown scope 'helox'\n"},
    {"  \tfoo\t/a/ WARN\n", "r.rules:1:4: unknown scope 'foo'\n"},
    {"mail/a/ WARN\n", "r.rules:1:1: unknown scope 'mail/a/'\n"
                       "r.rules:1:9: expected '/' to start the pattern, not 'W'\n"},
    /* error_pattern_syntax */
    {"mail\n", "r.rules:1:5: missing pattern: expected '/'\n"},
    {"mail abc/ WARN\n", "r.rules:1:6: expected '/' to start the pattern, not 'a'\n"},
    {"mail !abc/ WARN\n", "r.rules:1:7: expected '/' to start the pattern, not 'a'\n"},
    {"mail /abc WARN\n", "r.rules:1:6: unterminated pattern: no closing '/'\n"},
    {"mail /a\\/ WARN\n", "r.rules:1:6: unterminated pattern: no closing '/'\n"},
    {"mail /a\\\n", "r.rules:1:6: unterminated pattern: no closing '/'\n"},
    /* error_pcre2 */
    /* PCRE2's message, at the column of its error offset. */
    {"mail /a(b/ WARN\n", "r.rules:1:10: missing closing parenthesis\n"},
    {"body /[z-a]/ WARN\n", "r.rules:1:10: range out of order in character class\n"},
    {"body /a)/ WARN\n", "r.rules:1:8: unmatched closing parenthesis\n"},
    {"body /*a/ WARN\n", "r.rules:1:7: quantifier does not follow a repeatable item\n"},
    /* An escaped slash before the error does not shift the column. */
    {"body /\\/\\/[z-a]/ WARN\n", "r.rules:1:14: range out of order in character class\n"},
    {"body /x\xff/u WARN\n", "r.rules:1:8: UTF-8 error: illegal byte (0xfe or 0xff)\n"},
    /* error_flags */
    {"mail /a/iq WARN\n", "r.rules:1:10: unknown flag 'q' (flags are i x s m u g)\n"},
    {"mail /a/I,x WARN\n", "r.rules:1:9: unknown flag 'I' (flags are i x s m u g)\n"
                           "r.rules:1:10: unknown flag ',' (flags are i x s m u g)\n"},
    {"mail /a/iREJECT\n", "r.rules:1:10: unknown flag 'R' (flags are i x s m u g)\n"
                          "r.rules:1:11: unknown flag 'E' (flags are i x s m u g)\n"
                          "r.rules:1:12: unknown flag 'J' (flags are i x s m u g)\n"
                          "r.rules:1:13: unknown flag 'E' (flags are i x s m u g)\n"
                          "r.rules:1:14: unknown flag 'C' (flags are i x s m u g)\n"
                          "r.rules:1:15: unknown flag 'T' (flags are i x s m u g)\n"
                          "r.rules:1:16: missing action\n"},
    /* error_action */
    {"mail /a/i\n", "r.rules:1:10: missing action\n"},
    {"mail /a/ FOO\n", "r.rules:1:10: unknown action 'FOO'\n"},
    {"mail /a/ NONE\n", "r.rules:1:10: unknown action 'NONE'\n"},
};

static void
test_load_errors(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(load_errors) / sizeof(load_errors[0]); i++)
		load_bad(load_errors[i].text, load_errors[i].errors);
}

static void
test_error_action_scope(void **state)
{
	static const char *const bad[][2] = {
	    {"banner /a/ REJECT\n", "r.rules:1:12: REJECT is not allowed in scope banner\n"},
	    {"reply /a/ REJECT\n", "r.rules:1:11: REJECT is not allowed in scope reply\n"},
	    {"capability /a/ REJECT\n",
	     "r.rules:1:16: REJECT is not allowed in scope capability\n"},
	    {"mail /a/ IGNORE\n", "r.rules:1:10: IGNORE is not allowed in scope mail\n"},
	    {"command /a/ IGNORE\n", "r.rules:1:13: IGNORE is not allowed in scope command\n"},
	    {"body /a/ PREPEND X-A: b\n", "r.rules:1:10: PREPEND is not allowed in scope body\n"},
	    {"rcpt /a/ PREPEND X-A: b\n", "r.rules:1:10: PREPEND is not allowed in scope rcpt\n"},
	    {"reply /a/ DISCONNECT\n", "r.rules:1:11: DISCONNECT is not allowed in scope reply\n"},
	    {"banner /a/ DISCONNECT\n",
	     "r.rules:1:12: DISCONNECT is not allowed in scope banner\n"},
	};
	static const char *const good =
	    "helo /a/ REJECT\nmail /a/ REJECT\nrcpt /a/ REJECT\ncommand /a/ REJECT\n"
	    "header /a/ REJECT\nbody /a/ REJECT\n"
	    "header /a/ IGNORE\nbody /a/ IGNORE\nbanner /a/ IGNORE\nreply /a/ IGNORE\n"
	    "capability /a/ IGNORE\nheader /a/ PREPEND X: y\n"
	    "helo /a/ DISCONNECT\nmail /a/ DISCONNECT\nrcpt /a/ DISCONNECT\n"
	    "command /a/ DISCONNECT\nheader /a/ DISCONNECT\nbody /a/ DISCONNECT\n";
	const char *scopes[] = {"helo", "mail",   "rcpt",  "command",   "header",
	                        "body", "banner", "reply", "capability"};
	struct ruleset *rs;
	char text[2048];
	size_t i, o = 0;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		load_bad(bad[i][0], bad[i][1]);
	rs = load(good);
	assert_int_equal(rules_count(rs), 18);
	rules_free(rs);
	/* REWRITE, WARN and PASS go everywhere. */
	for (i = 0; i < 9; i++)
		o += (size_t)snprintf(text + o, sizeof(text) - o,
		                      "%s /a/ REWRITE b\n%s /a/ WARN\n%s /a/ PASS\n", scopes[i],
		                      scopes[i], scopes[i]);
	rs = load(text);
	assert_int_equal(rules_count(rs), 27);
	rules_free(rs);
}

static void
test_error_reply(void **state)
{
	(void)state;
	load_bad("mail /a/ REJECT 250 ok\n",
	         "r.rules:1:17: reply must start with a 4xx or 5xx code and a space\n");
	load_bad("mail /a/ REJECT 55 x\n",
	         "r.rules:1:17: reply must start with a 4xx or 5xx code and a space\n");
	load_bad("mail /a/ REJECT 550-x\n",
	         "r.rules:1:17: reply must start with a 4xx or 5xx code and a space\n");
	load_bad("mail /a/ REJECT 5x0 x\n",
	         "r.rules:1:17: reply must start with a 4xx or 5xx code and a space\n");
	load_bad("mail /a/ REJECT 590 x\n",
	         "r.rules:1:17: reply must start with a 4xx or 5xx code and a space\n");
	load_bad("mail /a/ REJECT No way\n",
	         "r.rules:1:17: reply must start with a 4xx or 5xx code and a space\n");
	load_bad("mail /a/ REJECT 550\n", "r.rules:1:20: reply needs text after the code\n");
	load_bad("mail /a/ REJECT 550   \n", "r.rules:1:20: reply needs text after the code\n");
	load_bad("mail /a/ REJECT 550 4.7.1 Nope\n",
	         "r.rules:1:21: enhanced status code class 4 does not match reply code 5xx\n");
	load_bad("mail /a/ DISCONNECT 421 5.7.0 Bye\n",
	         "r.rules:1:25: enhanced status code class 5 does not match reply code 4xx\n");
	load_bad(
	    "mail /a/ REJECT 550 5.7 Nope\n",
	    "r.rules:1:21: malformed enhanced status code '5.7' (want class.subject.detail)\n");
	load_bad("mail /a/ REJECT 550 5.7.1234 Nope\n",
	         "r.rules:1:21: malformed enhanced status "
	         "code '5.7.1234' (want class.subject.detail)\n");
	load_bad("mail /a/ REJECT 550 55.7.1 Nope\n",
	         "r.rules:1:21: malformed enhanced status "
	         "code '55.7.1' (want class.subject.detail)\n");
	load_bad("mail /a/ REJECT 550 5.7.1\n",
	         "r.rules:1:26: reply needs text after the enhanced status code\n");
	load_bad("header /a/ DISCONNECT 250 2.0.0 Ok\n",
	         "r.rules:1:23: reply must start with a 4xx or 5xx code and a space\n");
}

static void
test_good_replies(void **state)
{
	struct ruleset *rs;

	(void)state;
	/* Text without an enhanced code, numbers in text, a 3-digit detail, 4xx. */
	rs = load("mail /a/ REJECT 550 No thanks\n"
	          "mail /a/ REJECT 550 100 reasons\n"
	          "mail /a/ REJECT 554 5.7.123 Nope\n"
	          "mail /a/ REJECT 451 4.3.0 Later\n"
	          "mail /a/ DISCONNECT 421 Bye\n");
	assert_int_equal(rules_count(rs), 5);
	rules_free(rs);
}

static void
test_error_texts(void **state)
{
	(void)state;
	load_bad("mail /a/ REWRITE\n", "r.rules:1:17: REWRITE needs a replacement text\n");
	load_bad("mail /a/ REWRITE   \n", "r.rules:1:17: REWRITE needs a replacement text\n");
	load_bad("mail !/a/ REWRITE b\n", "r.rules:1:6: REWRITE cannot be negated: a line that "
	                                  "does not match has nothing to replace\n");
	load_bad("header /a/ IGNORE x\n", "r.rules:1:19: IGNORE takes no text\n");
	load_bad("mail /a/ PASS now\n", "r.rules:1:15: PASS takes no text\n");
	load_bad("header /a/ PREPEND\n", "r.rules:1:19: PREPEND needs a header line\n");
	load_bad("header /a/ PREPEND no colon\n",
	         "r.rules:1:20: PREPEND text must be a header field (Name: value)\n");
	load_bad("header /a/ PREPEND : x\n",
	         "r.rules:1:20: PREPEND text must be a header field (Name: value)\n");
	load_bad_n("mail /a\0/ WARN\n", 15, "r.rules:1:8: NUL octet in a rule file\n");
}

static void
test_error_replacement(void **state)
{
	(void)state;
	load_bad("mail /(a)/ REWRITE $2\n", "r.rules:1:20: REWRITE: no group 2 in the pattern\n");
	load_bad("mail /(a)/ REWRITE x${12}y\n",
	         "r.rules:1:21: REWRITE: no group 12 in the pattern\n");
	load_bad("mail /(?<n>a)/ REWRITE <${m}>\n",
	         "r.rules:1:25: REWRITE: no group named 'm' in the pattern\n");
	load_bad("mail /(?<n>a)/ REWRITE <$m>\n",
	         "r.rules:1:25: REWRITE: no group named 'm' in the pattern\n");
	load_bad("mail /a/ REWRITE cost 5$\n",
	         "r.rules:1:24: REWRITE: '$' at the end (write $$ for a dollar sign)\n");
	load_bad("mail /a/ REWRITE ${1\n", "r.rules:1:18: REWRITE: '${' without '}'\n");
	load_bad("mail /a/ REWRITE $-x\n",
	         "r.rules:1:18: REWRITE: bad group reference (use $1, ${1}, ${name} or $$)\n");
	load_bad("mail /a/ REWRITE ${1a}\n",
	         "r.rules:1:18: REWRITE: bad group reference (use $1, ${1}, ${name} or $$)\n");
	load_bad("body /a/u REWRITE x\xc3(\n",
	         "r.rules:1:20: REWRITE: UTF-8 error: byte 2 top bits not 0x80\n");
}

static void
test_error_many(void **state)
{
	const char *files[] = {"a.rules", "missing.rules", "b.rules"};
	char *errs;

	(void)state;
	/* Every error of every line of every file, in order; two on one line. */
	write_text("a.rules", "# policy\n"
	                      "mail /ok/ WARN\n"
	                      "banner /(/ REJECT\n"
	                      "\n"
	                      "bogus /x/ WARN\n");
	write_text("b.rules", "rcpt /x/ REJECT 250 ok\nrcpt /x/ WARN\n");
	assert_null(load_files(files, 3, &errs));
	assert_string_equal(errs,
	                    "a.rules:3:10: missing closing parenthesis\n"
	                    "a.rules:3:12: REJECT is not allowed in scope banner\n"
	                    "a.rules:5:1: unknown scope 'bogus'\n"
	                    "missing.rules:0:0: cannot open: No such file or directory\n"
	                    "b.rules:1:17: reply must start with a 4xx or 5xx code and a space\n");
	free(errs);
}

/* A MAIL or RCPT line through the address rules, then the line rules, as the proxy does. */
static int
envelope2(const struct ruleset *rs, const unsigned char *line, size_t len,
          struct rule_outcome *out)
{
	int mail = line[0] == 'M';
	enum rule_scope scopes[2] = {mail ? SCOPE_MAIL : SCOPE_RCPT, SCOPE_COMMAND};

	return rules_apply_envelope(rs, mail ? SCOPE_SENDER : SCOPE_RECIPIENT, scopes, 2, line, len,
	                            5, out);
}

static void
test_readme_policies(void **state)
{
	char path[4200];
	const char *files[] = {path};
	struct rule_outcome out;
	struct ruleset *rs;
	char *errs;

	(void)state;
	snprintf(path, sizeof(path), "%s/tests/data/rules/policies.rules", srcdir);
	rs = load_files(files, 1, &errs);
	assert_string_equal(errs, "");
	free(errs);
	assert_non_null(rs);
	assert_int_equal(rules_count(rs), 7);
	assert_true(rules_holds_messages(rs));
	rule_outcome_init(&out);
	assert_int_equal(envelope2(rs, L("MAIL FROM:<a@example.org>"), &out), ACT_REJECT);
	assert_string_equal(out.reply, "550 5.7.1 Sender domain not permitted");
	assert_int_equal(envelope2(rs, L("MAIL FROM: <a@example.com> SIZE=9"), &out), ACT_NONE);
	assert_int_equal(envelope2(rs, L("MAIL FROM:<>"), &out), ACT_PASS);
	assert_int_equal(envelope2(rs, L("RCPT TO:x@competitor.example."), &out), ACT_REJECT);
	assert_string_equal(out.reply, "550 5.7.1 Recipient not permitted");
	assert_int_equal(apply2(rs, SCOPE_CAPABILITY, SCOPE_REPLY, L("250-STARTTLS"), &out),
	                 ACT_IGNORE);
	assert_int_equal(apply2(rs, SCOPE_CAPABILITY, SCOPE_REPLY, L("250 STARTTLS"), &out),
	                 ACT_IGNORE);
	assert_int_equal(apply2(rs, SCOPE_CAPABILITY, SCOPE_REPLY, L("250-STARTTLSX"), &out),
	                 ACT_NONE);
	assert_int_equal(apply2(rs, SCOPE_HEADER, SCOPE_HEADER, L("Subject: hi"), &out), ACT_NONE);
	assert_int_equal(out.nprepend, 1);
	assert_string_equal(out.prepend[0], "X-Policy: external");
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("this is Confidential."), &out),
	                 ACT_REJECT);
	assert_string_equal(out.reply, "550 5.7.1 Confidential content");
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("nonconfidential"), &out), ACT_NONE);
	assert_int_equal(apply2(rs, SCOPE_COMMAND, SCOPE_COMMAND, L("vrfy root"), &out),
	                 ACT_REJECT);
	assert_string_equal(out.reply, "502 5.5.1 Command disabled");
	assert_int_equal(apply2(rs, SCOPE_COMMAND, SCOPE_COMMAND, L("EXPN staff"), &out),
	                 ACT_REJECT);
	assert_int_equal(apply2(rs, SCOPE_COMMAND, SCOPE_COMMAND, L("VRFYX"), &out), ACT_NONE);
	rule_outcome_free(&out);
	rules_free(rs);
}

/* ---- substitution ---- */

static void
rewrite_case(const char *rule, const unsigned char *in, size_t inlen, const char *want,
             size_t wantlen)
{
	struct rule_outcome out;
	struct ruleset *rs;
	char text[512];

	snprintf(text, sizeof(text), "body %s\n", rule);
	rs = load(text);
	rule_outcome_init(&out);
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, in, inlen, &out), ACT_NONE);
	assert_line(&out, want, wantlen);
	rule_outcome_free(&out);
	rules_free(rs);
}

#define REWRITE(rule, in, want) rewrite_case(rule, L(in), want, sizeof(want) - 1)

static void
test_substitution(void **state)
{
	(void)state;
	REWRITE("/(\\w+)@(\\w+)/ REWRITE $2 at $1", "mail alice@example now",
	        "mail example at alice now");
	REWRITE("/(?<user>\\w+)@/ REWRITE ${user}-at-", "bob@x", "bob-at-x");
	REWRITE("/(\\d)/g REWRITE <$1>", "a1b22", "a<1>b<2><2>");
	REWRITE("/(\\d)/ REWRITE <${1}0>", "a1b22", "a<10>b22");
	REWRITE("/b/ REWRITE [$0]", "abc", "a[b]c");
	REWRITE("/b/ REWRITE $$5", "abc", "a$5c");
	/* An unset group gives nothing rather than an error. */
	REWRITE("/(x)|(b)/ REWRITE [$1|$2]", "abc", "a[|b]c");
	/* A no-match leaves the line alone and records nothing. */
	REWRITE("/zzz/g REWRITE y", "abc", "abc");
	/* Empty matches with g, as PCRE2 does them. */
	REWRITE("/x*/g REWRITE -", "ab", "-a-b-");
	/* A rewrite that leaves "." is the caller's to dot-stuff again. */
	REWRITE("/^.*$/ REWRITE .", "anything", ".");
}

static void
test_substitution_grows(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;
	unsigned char *in;
	size_t i, n = 20000;

	(void)state;
	/* Every octet becomes 40: far beyond the first buffer, so the retry path runs. */
	rs = load("body /a/g REWRITE 0123456789012345678901234567890123456789\n"
	          "body /^(0123456789){2}/ REWRITE <$1>\n");
	rule_outcome_init(&out);
	assert_non_null(in = malloc(n));
	memset(in, 'a', n);
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, in, n, &out), ACT_NONE);
	assert_int_equal(out.len, n * 40 - 8);
	assert_memory_equal(out.line, "<0123456789>01234567890123456789", 32);
	for (i = 12; i < out.len; i++)
		if (out.line[i] != '0' + (i - 12) % 10)
			fail_msg("octet %zu is %c", i, out.line[i]);
	assert_int_equal(out.nhits, 2);
	assert_int_equal(out.hits[0].repl_len, n * 40);
	/* The outcome is reused for a short line afterwards. */
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("xax"), &out), ACT_NONE);
	ASSERT_LINE(&out, "x0123456789012345678901234567890123456789x");
	free(in);
	rule_outcome_free(&out);
	rules_free(rs);
}

/* ---- NUL octets, invalid UTF-8 and failures ---- */

static void
test_nul_octets(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rs = load("body /a\\x00b/ WARN nul\n"
	          "body /c(.)d/s REWRITE [$1]\n"
	          "body /\\x00$/ REJECT 550 5.6.0 NUL at the end\n");
	rule_outcome_init(&out);
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("xa\0byc\0d"), &out), ACT_NONE);
	assert_int_equal(out.nhits, 2);
	assert_string_equal(out.hits[0].text, "nul");
	assert_int_equal(out.hits[0].orig_len, 8);
	assert_memory_equal(out.hits[0].orig, "xa\0byc\0d", 8);
	assert_line(&out, "xa\0by[\0]", 8);
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("ab\0"), &out), ACT_REJECT);
	/* A NUL inside is no end: the line is its length. */
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("\0\0x"), &out), ACT_NONE);
	assert_int_equal(out.nhits, 0);
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L(""), &out), ACT_NONE);
	rule_outcome_free(&out);
	rules_free(rs);
}

static void
test_invalid_utf8(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rs = load("body /caf\\x{e9}/u WARN utf\n"
	          "body /x+/gu REWRITE \xc3\xa9\n"
	          "body !/^.*$/u WARN negated\n");
	rule_outcome_init(&out);
	/* Invalid octets never make a 'u' pattern fail; they just do not match. */
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("\xff\xfe caf\xc3\xa9 xx\xc0"), &out),
	                 ACT_NONE);
	assert_int_equal(out.nhits, 3);
	assert_int_equal(out.hits[0].failed, 0);
	assert_string_equal(out.hits[0].text, "utf");
	assert_int_equal(out.hits[1].failed, 0);
	assert_line(&out, "\xff\xfe caf\xc3\xa9 \xc3\xa9\xc0", 12);
	/* "^.*$" cannot span the invalid octets, so the negated rule acts. */
	assert_string_equal(out.hits[2].text, "negated");
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("\xe9t\xe9"), &out), ACT_NONE);
	assert_int_equal(out.nhits, 1);
	assert_int_equal(out.hits[0].failed, 0);
	rule_outcome_free(&out);
	rules_free(rs);
}

static void
test_match_failure(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	/*
	 * A rule that cannot finish on a client's line is never counted as a non-match (an
	 * allow-list would fail open): the line is refused with a temporary failure, recorded.
	 */
	rs = load("body !/(*LIMIT_MATCH=10)(a+)+$/ REJECT\n"
	          "body /(*LIMIT_MATCH=10)(a+)+$/ REWRITE x\n"
	          "body /a/ WARN reached\n"
	          "reply /(*LIMIT_MATCH=10)(a+)+$/ REWRITE x\n"
	          "reply /a/ WARN reached\n"
	          "mail /^MAIL FROM:<(\\w+\\.?)+@example\\.com>$/i PASS\n");
	rule_outcome_init(&out);
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("aaaaaaaaaaaaaaaaaaaaaaaab"), &out),
	                 ACT_REJECT);
	assert_int_equal(out.nhits, 1);
	assert_int_equal(out.hits[0].failed, 1);
	assert_int_equal(out.hits[0].action, ACT_REJECT);
	assert_string_equal(out.hits[0].text, "match limit exceeded");
	assert_int_equal(out.tempfail, 1);
	assert_string_equal(out.reply,
	                    "451 4.3.0 Temporary failure in rule evaluation, try again later");
	assert_int_equal(out.nwarnings, 1);
	assert_int_equal(out.rewritten, 0);
	/* On a server's line there is nothing to refuse: skipped, recorded, the next rule runs. */
	assert_int_equal(
	    apply2(rs, SCOPE_REPLY, SCOPE_REPLY, L("250 aaaaaaaaaaaaaaaaaaaaab"), &out), ACT_NONE);
	assert_int_equal(out.nhits, 2);
	assert_int_equal(out.hits[0].failed, 1);
	assert_int_equal(out.hits[1].failed, 0);
	assert_int_equal(out.tempfail, 0);
	/* The proxy's own match limit ends a nested quantifier on a hostile line. */
	assert_int_equal(
	    apply2(rs, SCOPE_MAIL, SCOPE_COMMAND,
	           L("MAIL FROM:<aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!@example.com>"), &out),
	    ACT_REJECT);
	assert_int_equal(out.tempfail, 1);
	assert_string_equal(out.hits[0].text, "match limit exceeded");
	assert_int_equal(
	    apply2(rs, SCOPE_MAIL, SCOPE_COMMAND, L("MAIL FROM:<first.last@example.com>"), &out),
	    ACT_PASS);
	assert_int_equal(out.tempfail, 0);
	rule_outcome_free(&out);
	rules_free(rs);
}

static void
test_folded_header(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rs = load("header /^Subject:.*urgent/is REJECT 550 5.7.1 No urgency\n"
	          "header /^Received:/i REWRITE X-Old-Received:\n");
	rule_outcome_init(&out);
	assert_int_equal(
	    apply2(rs, SCOPE_HEADER, SCOPE_HEADER, L("Subject: very\r\n\tURGENT"), &out),
	    ACT_REJECT);
	assert_int_equal(apply2(rs, SCOPE_HEADER, SCOPE_HEADER, L("Received: a\r\n b"), &out),
	                 ACT_NONE);
	/* The line breaks of a folded header are kept through a rewrite. */
	ASSERT_LINE(&out, "X-Old-Received: a\r\n b");
	rule_outcome_free(&out);
	rules_free(rs);
}

/* ---- the prefilter: never "cannot match" for a line PCRE2 matches ---- */

/* Flags as rule files write them, to PCRE2 options as rules.c compiles them. */
static uint32_t
pf_opts(const char *flags)
{
	uint32_t o = 0;

	for (; *flags != '\0'; flags++)
		switch (*flags) {
		case 'i':
			o |= PCRE2_CASELESS;
			break;
		case 'x':
			o |= PCRE2_EXTENDED;
			break;
		case 's':
			o |= PCRE2_DOTALL;
			break;
		case 'm':
			o |= PCRE2_MULTILINE;
			break;
		case 'u':
			o |= PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
			break;
		}
	return o;
}

/* pcre2_match() of a pattern compiled as rules.c does: 1 match, 0 none, -1 no pattern. */
struct pf_case {
	pcre2_code *code;
	pcre2_match_data *md;
	struct prefilter pf;
};

static int
pf_case_init(struct pf_case *c, const char *pat, size_t len, const char *flags)
{
	pcre2_compile_context *cctx = pcre2_compile_context_create(NULL);
	PCRE2_SIZE off;
	int err;

	assert_non_null(cctx);
	pcre2_set_newline(cctx, PCRE2_NEWLINE_ANYCRLF);
	c->code = pcre2_compile((PCRE2_SPTR)pat, len, pf_opts(flags), &err, &off, cctx);
	pcre2_compile_context_free(cctx);
	if (c->code == NULL)
		return -1;
	(void)pcre2_jit_compile(c->code, PCRE2_JIT_COMPLETE);
	assert_non_null(c->md = pcre2_match_data_create_from_pattern(c->code, NULL));
	prefilter_learn(&c->pf, pat, len, pf_opts(flags));
	return 0;
}

static void
pf_case_free(struct pf_case *c)
{
	pcre2_match_data_free(c->md);
	pcre2_code_free(c->code);
}

/*
 * Checks one pattern on one subject: when PCRE2 matches, the prefilter must say "may".
 * Returns 1 when the prefilter ruled the subject out.
 */
static int
pf_check(struct pf_case *c, const char *pat, const char *flags, const unsigned char *subj,
         size_t n)
{
	int rc, may;

	may = !c->pf.active || prefilter_may_match(&c->pf, prefilter_scan(subj, n));
	rc = pcre2_match(c->code, subj, n, 0, 0, c->md, NULL);
	if (rc >= 0 && !may) {
		char shown[256];
		size_t i, o = 0;

		for (i = 0; i < n && o + 5 < sizeof(shown); i++)
			o += (size_t)snprintf(shown + o, sizeof(shown) - o,
			                      subj[i] >= 0x20 && subj[i] < 0x7f ? "%c" : "\\x%02x",
			                      subj[i]);
		fail_msg("prefilter ruled out a match: /%s/%s on \"%s\"", pat, flags, shown);
	}
	return !may;
}

struct pf_table {
	const char *pat;
	const char *flags;
	int active; /* the prefilter must be active (1), inactive (0) */
	const char *match[4]; /* subjects PCRE2 matches (checked too) */
	const char *miss;     /* a subject the prefilter must rule out (active only), or NULL */
};

static void
test_prefilter_cases(void **state)
{
	static const struct pf_table t[] = {
	    {"\\bconfidential\\b", "i", 1, {"a CONFIDENTIAL b", "confidential"}, "1XXXXXXX"},
	    {"confidential", "", 1, {"confidential"}, "confidentia"},
	    {"colou?r", "", 1, {"color", "colour"}, "olu"},
	    {"ab*c", "", 1, {"ac", "abbbc"}, "ab"},
	    {"ab+c", "", 1, {"abc", "abbc"}, "ac"},
	    {"ab++c", "", 1, {"abbc"}, "ac"},
	    {"ab+?c", "", 1, {"abbc"}, "ac"},
	    {"x*+y", "", 1, {"y", "xxy"}, "x"},
	    {"a{0}b", "", 1, {"b"}, "a"},
	    {"a{0,2}b", "", 1, {"b", "aab"}, "a"},
	    {"x{2}y", "", 1, {"xxy"}, "xx"},
	    {"a{2,}+b", "", 1, {"aab"}, "aa"},
	    /* "{,2}" is a quantifier in newer PCRE2 and literal in older: both are kept. */
	    {"a{,2}b", "", 1, {NULL}, NULL},
	    {"a{x}", "", 1, {"a{x}"}, "a}"},
	    {"a{}", "", 1, {"a{}"}, "{}"},
	    {"a\\.?b", "", 1, {"ab", "a.b"}, "a."},
	    {"\\d+\\.\\d+", "", 1, {"1.5"}, "15"},
	    {"(?i)abc", "", 0, {"ABC"}, NULL},
	    {"a(?i)b", "", 0, {"aB"}, NULL},
	    {"(?i:abc)d", "", 1, {"ABCd"}, "ABC"},
	    {"(?i-s:ab)c", "", 1, {"ABc"}, "AB"},
	    {"abc|xyz", "", 0, {"xyz", "abc"}, NULL},
	    {"(abc|xyz)q", "", 1, {"xyzq"}, "xyz"},
	    {"(?|(a)|(b))c", "", 1, {"bc"}, "b"},
	    {"a(?:b)?c", "", 1, {"ac", "abc"}, "ab"},
	    {"(a(*ACCEPT))bcd", "", 0, {"a"}, NULL},
	    {"(*UTF)abc", "", 0, {"abc"}, NULL},
	    {"\\Qa.b\\E", "", 0, {"a.b"}, NULL},
	    {"[]abc]x", "", 1, {"]x", "bx"}, "]"},
	    {"[^]]z", "", 1, {"az"}, "a"},
	    {"[\\]]z", "", 1, {"]z"}, "]"},
	    {"[[:alpha:]]z", "", 0, {"qz"}, NULL},
	    {"\\x41BC", "", 0, {"ABC"}, NULL},
	    {"\\101BC", "", 0, {"ABC"}, NULL},
	    {"\\cAx", "", 0, {"\x01x"}, NULL},
	    {"a\\tb", "", 1, {"a\tb"}, "a\t"},
	    {"(?#comment)abc", "", 0, {"abc"}, NULL},
	    {"(?C\"a)x(\")c", "", 0, {"c"}, NULL},
	    {"(?C1)abc", "", 0, {"abc"}, NULL},
	    {"a b # comment", "x", 0, {"ab"}, NULL},
	    {"(?x) a b", "", 0, {"ab"}, NULL},
	    {"(a(?x) b )c", "", 0, {"abc"}, NULL},
	    {"^abc$", "m", 1, {"x\r\nabc", "abc\r\ny"}, "ab"},
	    {"\\Kabc", "", 1, {"abc"}, "ab"},
	    {"(?<=x)abc", "", 1, {"xabc"}, "ab"},
	    {"(?=abc)abc", "", 1, {"abc"}, "ab"},
	    {"a(?R)?b", "", 0, {"ab", "aabb"}, NULL},
	    {"(a(?1)?b)c", "", 1, {"aabbc"}, "ab"},
	    {"k", "iu", 0, {"K", "\xe2\x84\xaa"}, NULL},
	    {"s", "iu", 0, {"S", "\xc5\xbf"}, NULL},
	    {"SECRET", "i", 1, {"secret", "SeCrEt"}, "secre"},
	    {"\xc3\xa9?x", "u", 1, {"x", "\xc3\xa9x"}, "\xc3\xa9"},
	    {"caf\xc3\xa9", "u", 1, {"caf\xc3\xa9", "\xff caf\xc3\xa9"}, "cfe"},
	    {"\\\xc3\xa9?x", "u", 1, {"x"}, "\xc3\xa9"},
	    {"^token-0:[A-Za-z0-9]{32}$", "", 1,
	     {"token-0:abcdefghijklmnopqrstuvwxyz012345"}, "token0:"},
	    {"\\N{U+0041}", "u", 0, {"A"}, NULL},
	    {"a\\N+b", "", 1, {"axxb"}, "ax"},
	    {"^MAIL FROM:<[^>]*@example\\.com>", "i", 1, {"mail from:<a@EXAMPLE.com>"},
	     "MAIL FROM:<>"},
	    {"^5\\d\\d .*internal-host-0", "i", 1, {"550 x INTERNAL-HOST-0"}, "250 2.1.0 Ok"},
	    {"a/b", "", 1, {"a/b"}, "ab"},
	    {"", "", 0, {"", "x"}, NULL},
	    {".", "s", 0, {"\n"}, NULL},
	};
	/* Subjects read as a quantifier by one PCRE2 version and literally by another. */
	static const char *const either[] = {"a{,2}b", "b", "aab", "a"};
	struct pf_case c;
	const char *subj;
	size_t i, j;

	(void)state;
	assert_int_equal(pf_case_init(&c, "a{,2}b", 6, ""), 0);
	for (j = 0; j < 4; j++)
		pf_check(&c, "a{,2}b", "", (const unsigned char *)either[j], strlen(either[j]));
	pf_case_free(&c);
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		if (pf_case_init(&c, t[i].pat, strlen(t[i].pat), t[i].flags) != 0)
			fail_msg("/%s/%s does not compile", t[i].pat, t[i].flags);
		if (c.pf.active != t[i].active)
			fail_msg("/%s/%s: prefilter %s", t[i].pat, t[i].flags,
			         c.pf.active ? "active" : "inactive");
		for (j = 0; j < 4 && (subj = t[i].match[j]) != NULL; j++) {
			if (pcre2_match(c.code, (PCRE2_SPTR)subj, strlen(subj), 0, 0, c.md, NULL) < 0)
				fail_msg("/%s/%s should match \"%s\"", t[i].pat, t[i].flags, subj);
			pf_check(&c, t[i].pat, t[i].flags, (const unsigned char *)subj,
			         strlen(subj));
		}
		if (t[i].miss != NULL && !pf_check(&c, t[i].pat, t[i].flags,
		                                   (const unsigned char *)t[i].miss,
		                                   strlen(t[i].miss)))
			fail_msg("/%s/%s: prefilter let \"%s\" through", t[i].pat, t[i].flags,
			         t[i].miss);
		pf_case_free(&c);
	}
}

/* A small deterministic generator (xorshift), so that a failure is repeatable. */
static uint32_t
pf_rand(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

/* Pieces of patterns, tricky ones included; many combinations fail to compile. */
static const char *const pf_pieces[] = {
    "a", "b", "A", "B", "k", "s", "K", ".", " ", "-", "\\.", "\\d", "\\b", "\\w", "\\s",
    "[ab]", "[^a]", "[]a]", "(ab)", "(?:a|b)", "(?i:ab)", "(?i)", "(a(?i)b)", "?", "*",
    "+", "{2}", "{0,1}", "{1,}", "{,1}", "{", "}", "|", "^", "$", "\\x{41}", "\\Q.\\E",
    "(?=a)", "(?!b)", "(?<=a)", "\\K", "\xc3\xa9", "\\N", "\\R", "(*ACCEPT)", "#", "\\A",
    "\\z", "\\0", "\\1", "(?1)", "x", "y", "\\\xc3\xa9", "(?C1)", "(?#c)", "(?R)",
};
static const char *const pf_flags[] = {"", "i", "u", "iu", "m", "s", "x", "is", "mu"};
/* Subject octets: letters of both cases, the non-ASCII case partners of k and s, NUL,
 * CR, LF, an invalid UTF-8 octet. */
static const char *const pf_octets[] = {"a", "b", "A", "B", "k", "K", "s", "S", ".", " ",
                                     "-", "1", "x", "y", "\xe2\x84\xaa", "\xc5\xbf",
                                     "\xc3\xa9", "\xc3\x89", "\0", "\r", "\n", "\xff",
                                     "#", "{", "}"};

static void
test_prefilter_random(void **state)
{
	const size_t npieces = sizeof(pf_pieces) / sizeof(pf_pieces[0]);
	const size_t noctets = sizeof(pf_octets) / sizeof(pf_octets[0]);
	char pat[256];
	unsigned char subj[64];
	struct pf_case c;
	uint32_t x = 2463534242u;
	size_t plen, slen, n, k, len;
	int i, j, active = 0, ruled_out = 0, matched = 0;
	const char *f;

	(void)state;
	for (i = 0; i < 6000; i++) {
		plen = 0;
		n = 1 + pf_rand(&x) % 6;
		for (k = 0; k < n; k++) {
			const char *p = pf_pieces[pf_rand(&x) % npieces];

			memcpy(pat + plen, p, strlen(p));
			plen += strlen(p);
		}
		pat[plen] = '\0';
		f = pf_flags[pf_rand(&x) % (sizeof(pf_flags) / sizeof(pf_flags[0]))];
		if (pf_case_init(&c, pat, plen, f) != 0)
			continue;
		active += c.pf.active;
		/* A rule is filed under a class it needs. */
		if (c.pf.active)
			assert_true(c.pf.need >> prefilter_key(&c.pf) & 1);
		else
			assert_int_equal(prefilter_key(&c.pf), -1);
		for (j = 0; j < 40; j++) {
			slen = 0;
			n = pf_rand(&x) % 12;
			for (k = 0; k < n; k++) {
				const char *o = pf_octets[pf_rand(&x) % noctets];

				len = o[0] == '\0' ? 1 : strlen(o);
				memcpy(subj + slen, o, len);
				slen += len;
			}
			/* Half the subjects start from the pattern itself: more of them match. */
			if (pf_rand(&x) % 2 && plen < sizeof(subj) - slen) {
				memmove(subj + plen, subj, slen);
				memcpy(subj, pat, plen);
				slen += plen;
			}
			if (pcre2_match(c.code, subj, slen, 0, 0, c.md, NULL) >= 0)
				matched++;
			ruled_out += pf_check(&c, pat, f, subj, slen);
		}
		pf_case_free(&c);
	}
	/* The test means something only if the prefilter was often active and useful. */
	assert_true(active > 500);
	assert_true(ruled_out > 5000);
	assert_true(matched > 5000);
}

static void
test_prefilter_rules(void **state)
{
	struct rule_outcome out;
	struct ruleset *rs;

	(void)state;
	rule_outcome_init(&out);
	/* Negated: a line the prefilter rules out is a line the pattern does not match. */
	rs = load("body !/confidential/ WARN not confidential\n"
	          "body /x/ REWRITE confidential\n"
	          "body /confidential/ REJECT\n"
	          "capability /^250/ WARN cap\n"
	          "rcpt /@competitor\\.example>/i REJECT\n"
	          "command /^RCPT/ WARN rcpt\n");
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("1XXXX"), &out), ACT_NONE);
	assert_int_equal(out.nhits, 1);
	assert_string_equal(out.hits[0].text, "not confidential");
	/* A rewritten line is looked at afresh by the rules after. */
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("x"), &out), ACT_REJECT);
	assert_int_equal(out.nhits, 3);
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("confidential"), &out), ACT_REJECT);
	assert_int_equal(out.nhits, 1);
	/* A capability rule sees the line without "250-"; its octets are looked for there. */
	assert_int_equal(apply2(rs, SCOPE_CAPABILITY, SCOPE_REPLY, L("250-250X"), &out),
	                 ACT_NONE);
	assert_int_equal(out.nhits, 1);
	assert_int_equal(apply2(rs, SCOPE_CAPABILITY, SCOPE_REPLY, L("250-X"), &out), ACT_NONE);
	assert_int_equal(out.nhits, 0);
	/* Two scopes merged, in file order, the first ruled out, the second not. */
	assert_int_equal(apply2(rs, SCOPE_RCPT, SCOPE_COMMAND, L("RCPT TO:<a@b>"), &out),
	                 ACT_NONE);
	assert_int_equal(out.nhits, 1);
	assert_string_equal(out.hits[0].text, "rcpt");
	assert_int_equal(
	    apply2(rs, SCOPE_RCPT, SCOPE_COMMAND, L("RCPT TO:<a@COMPETITOR.example>"), &out),
	    ACT_REJECT);
	assert_int_equal(out.nhits, 1);
	/* NUL octets count as octets like any other. */
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("\0confidential\0"), &out),
	                 ACT_REJECT);
	rule_outcome_free(&out);
	rules_free(rs);
}

/* One rule of a random ruleset, for the reference evaluation below. */
struct pf_ref {
	pcre2_code *code;
	int negate;
	enum rule_action act;
	const char *repl;
};

/*
 * rules_apply() as its documentation says, with PCRE2 on every line and no prefilter:
 * the verdict, and the hits as rule indexes; -1 when a match failed (not compared).
 */
static int
pf_ref_apply(const struct pf_ref *rr, int n, unsigned char *line, size_t *len, int *hits,
             int *nhits)
{
	pcre2_match_data *md;
	unsigned char buf[4096];
	size_t outlen;
	int k, rc, verdict = ACT_NONE;

	*nhits = 0;
	for (k = 0; k < n; k++) {
		assert_non_null(md = pcre2_match_data_create_from_pattern(rr[k].code, NULL));
		rc = pcre2_match(rr[k].code, line, *len, 0, 0, md, NULL);
		if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
			pcre2_match_data_free(md);
			return -1;
		}
		if ((rc >= 0) == rr[k].negate) {
			pcre2_match_data_free(md);
			continue;
		}
		hits[(*nhits)++] = k;
		if (rr[k].act == ACT_REWRITE) {
			outlen = sizeof(buf);
			rc = pcre2_substitute(rr[k].code, line, *len, 0,
			                      PCRE2_SUBSTITUTE_OVERFLOW_LENGTH |
			                          PCRE2_SUBSTITUTE_UNSET_EMPTY,
			                      md, NULL, (PCRE2_SPTR)rr[k].repl, strlen(rr[k].repl), buf,
			                      &outlen);
			pcre2_match_data_free(md);
			if (rc < 0 || outlen > 1024)
				return -1;
			memcpy(line, buf, outlen);
			*len = outlen;
			continue;
		}
		pcre2_match_data_free(md);
		if (rr[k].act != ACT_WARN) {
			verdict = rr[k].act;
			break;
		}
	}
	return verdict;
}

static void
test_prefilter_apply_random(void **state)
{
	static const enum rule_action acts[] = {ACT_WARN, ACT_WARN, ACT_REWRITE, ACT_REWRITE,
	                                        ACT_PASS, ACT_IGNORE, ACT_REJECT};
	static const char *const repls[] = {"k", "zz", "Q x", ".", "ab"};
	const size_t npieces = sizeof(pf_pieces) / sizeof(pf_pieces[0]);
	const size_t noctets = sizeof(pf_octets) / sizeof(pf_octets[0]);
	struct pf_ref rr[80];
	struct rule_outcome out;
	struct ruleset *rs;
	const char *files[] = {"r.rules"};
	char pats[80][64], *text, *errs, *p;
	unsigned char line[1100];
	size_t len, plen, k, j;
	uint32_t x = 88172645u;
	int set, n, i, l, v, ref, hits[80], nhits, compared = 0, acted = 0;
	FILE *fp;

	(void)state;
	rule_outcome_init(&out);
	for (set = 0; set < 120; set++) {
		n = 1 + (int)(pf_rand(&x) % 80);
		assert_non_null(text = malloc((size_t)n * 128));
		p = text;
		for (i = 0; i < n; i++) {
			struct pf_case c;
			const char *f;

			do {
				plen = 0;
				for (k = 1 + pf_rand(&x) % 4; k > 0; k--) {
					const char *q = pf_pieces[pf_rand(&x) % npieces];

					memcpy(pats[i] + plen, q, strlen(q));
					plen += strlen(q);
				}
				pats[i][plen] = '\0';
				f = pf_flags[pf_rand(&x) % (sizeof(pf_flags) / sizeof(pf_flags[0]))];
			} while (strchr(f, 'x') != NULL || pf_case_init(&c, pats[i], plen, f) != 0);
			pcre2_match_data_free(c.md);
			rr[i].code = c.code;
			rr[i].act = acts[pf_rand(&x) % (sizeof(acts) / sizeof(acts[0]))];
			rr[i].negate = rr[i].act != ACT_REWRITE && pf_rand(&x) % 4 == 0;
			rr[i].repl = repls[pf_rand(&x) % (sizeof(repls) / sizeof(repls[0]))];
			p += sprintf(p, "body %s/%s/%s %s%s%s\n", rr[i].negate ? "!" : "", pats[i], f,
			             rules_action_name(rr[i].act), rr[i].act == ACT_REWRITE ? " " : "",
			             rr[i].act == ACT_REWRITE ? rr[i].repl : "");
		}
		write_file("r.rules", text, (size_t)(p - text));
		free(text);
		assert_non_null(fp = open_memstream(&errs, &k));
		rs = rules_load(files, 1, fp);
		fclose(fp);
		if (rs == NULL)
			fail_msg("random rules did not load:\n%s", errs);
		free(errs);
		for (l = 0; l < 40; l++) {
			unsigned char ref_line[1100];
			size_t ref_len;

			len = 0;
			for (k = pf_rand(&x) % 10; k > 0; k--) {
				const char *o = pf_octets[pf_rand(&x) % noctets];
				size_t olen = o[0] == '\0' ? 1 : strlen(o);

				memcpy(line + len, o, olen);
				len += olen;
			}
			/* Some of a rule's own pattern, so that more rules match. */
			if (pf_rand(&x) % 2) {
				const char *q = pats[pf_rand(&x) % (uint32_t)n];

				memcpy(line + len, q, strlen(q));
				len += strlen(q);
			}
			memcpy(ref_line, line, len);
			ref_len = len;
			ref = pf_ref_apply(rr, n, ref_line, &ref_len, hits, &nhits);
			v = rules_apply(rs, (enum rule_scope[]){SCOPE_BODY}, 1, line, len, &out);
			assert_true(v >= 0);
			for (j = 0; j < out.nhits; j++)
				if (out.hits[j].failed)
					ref = -1;
			if (ref < 0)
				continue;
			compared++;
			acted += nhits > 0;
			assert_int_equal(v, ref);
			assert_int_equal(out.nhits, nhits);
			for (j = 0; j < out.nhits; j++)
				assert_int_equal(out.hits[j].rule, hits[j]);
			assert_int_equal(out.len, ref_len);
			assert_memory_equal(out.line, ref_line, ref_len);
		}
		rules_free(rs);
		for (i = 0; i < n; i++)
			pcre2_code_free(rr[i].code);
	}
	rule_outcome_free(&out);
	assert_true(compared > 4000);
	assert_true(acted > 2000);
}

/*
 * Rules filed by prefilter key (a scope of up to 64 rules) and tried one by one (more): the
 * same hits, in file order, negated and rewriting rules included.
 */
static void
many_rules(int nrules)
{
	struct rule_outcome out;
	struct ruleset *rs;
	char *text, *p;
	size_t i;
	int k, neg = nrules / 2;

	assert_non_null(text = malloc((size_t)nrules * 64 + 256));
	p = text;
	for (k = 0; k < nrules; k++) {
		if (k == neg)
			p += sprintf(p, "body !/zzz/ WARN neg\n");
		else if (k == neg + 1)
			p += sprintf(p, "body /^rw$/ REWRITE w%dq w%dq\n", nrules - 1, neg + 3);
		else
			p += sprintf(p, "body /w%dq/ WARN %d\n", k, k);
	}
	rs = load(text);
	free(text);
	rule_outcome_init(&out);
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("w5q w3q"), &out), ACT_NONE);
	assert_int_equal(out.nhits, 3);
	assert_string_equal(out.hits[0].text, "3");
	assert_string_equal(out.hits[1].text, "5");
	assert_string_equal(out.hits[2].text, "neg");
	/* A rewrite brings in rules after it, filed under classes the old line lacked. */
	assert_int_equal(apply2(rs, SCOPE_BODY, SCOPE_BODY, L("rw"), &out), ACT_NONE);
	assert_int_equal(out.nhits, 4);
	assert_string_equal(out.hits[0].text, "neg");
	assert_int_equal(out.hits[1].action, ACT_REWRITE);
	for (i = 2; i < 4; i++)
		assert_int_equal(out.hits[i].action, ACT_WARN);
	assert_int_equal(atoi(out.hits[2].text), neg + 3);
	assert_int_equal(atoi(out.hits[3].text), nrules - 1);
	rule_outcome_free(&out);
	rules_free(rs);
}

static void
test_prefilter_filed(void **state)
{
	(void)state;
	many_rules(20);
	many_rules(64);
	many_rules(65);
	many_rules(150);
}

/* ---- the reply-marker fix ---- */

static char *
fix(const char *const *lines, const int *removed, size_t n, int *all)
{
	size_t lens[16], i, len;
	unsigned char *r;

	for (i = 0; i < n; i++)
		lens[i] = strlen(lines[i]);
	r = smtp_reply_rebuild((const unsigned char *const *)lines, lens, removed, n, &len, all);
	assert_non_null(r);
	assert_int_equal(strlen((char *)r), len);
	return (char *)r;
}

static void
test_fix_reply(void **state)
{
	const char *ehlo[] = {"250-mx.example", "250-PIPELINING", "250-SIZE 100", "250 STARTTLS"};
	const char *one[] = {"250 STARTTLS"};
	const char *bare[] = {"250-a", "250"};
	int none[] = {0, 0, 0, 0}, last[] = {0, 0, 0, 1}, mid[] = {0, 1, 0, 0};
	int two[] = {0, 0, 1, 1}, all4[] = {1, 1, 1, 1}, all1[] = {1}, barelast[] = {0, 0};
	int bare1[] = {1, 0}, bare0[] = {0, 1};
	int all;
	char *r;

	(void)state;
	r = fix(ehlo, none, 4, &all);
	assert_string_equal(r,
	                    "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 100\r\n250 STARTTLS\r\n");
	assert_false(all);
	free(r);
	/* The last line removed: the line before it becomes the last. */
	r = fix(ehlo, last, 4, &all);
	assert_string_equal(r, "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n");
	assert_false(all);
	free(r);
	r = fix(ehlo, mid, 4, &all);
	assert_string_equal(r, "250-mx.example\r\n250-SIZE 100\r\n250 STARTTLS\r\n");
	free(r);
	r = fix(ehlo, two, 4, &all);
	assert_string_equal(r, "250-mx.example\r\n250 PIPELINING\r\n");
	free(r);
	/* Never a reply with no line: the last one stays, and the caller warns. */
	r = fix(ehlo, all4, 4, &all);
	assert_string_equal(r, "250 STARTTLS\r\n");
	assert_true(all);
	free(r);
	r = fix(one, all1, 1, &all);
	assert_string_equal(r, "250 STARTTLS\r\n");
	assert_true(all);
	free(r);
	/* A bare "250" last line stays as it came, and gains '-' when it is no longer last. */
	r = fix(bare, barelast, 2, &all);
	assert_string_equal(r, "250-a\r\n250\r\n");
	free(r);
	r = fix(bare, bare1, 2, &all);
	assert_string_equal(r, "250\r\n");
	free(r);
	r = fix(bare, bare0, 2, &all);
	assert_string_equal(r, "250 a\r\n");
	free(r);
}

/* ---- --check-rules and --test-rules ---- */

static char *
slurp(const char *name)
{
	char *buf;
	FILE *fp;
	long n;

	assert_non_null(fp = fopen(name, "r"));
	fseek(fp, 0, SEEK_END);
	n = ftell(fp);
	rewind(fp);
	assert_non_null(buf = calloc(1, (size_t)n + 1));
	assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
	fclose(fp);
	return buf;
}

/* Runs a main-like function with stdout and stderr captured. */
static int
run_main(int (*fn)(int, char **), char **argv, char **out, char **err)
{
	int o, e, fo, fe, argc, rc;

	for (argc = 0; argv[argc] != NULL; argc++)
		;
	fflush(stdout);
	fflush(stderr);
	o = dup(1);
	e = dup(2);
	fo = open("out.txt", O_WRONLY | O_CREAT | O_TRUNC, 0600);
	fe = open("err.txt", O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(o >= 0 && e >= 0 && fo >= 0 && fe >= 0);
	dup2(fo, 1);
	dup2(fe, 2);
	rc = fn(argc, argv);
	fflush(stdout);
	fflush(stderr);
	dup2(o, 1);
	dup2(e, 2);
	close(o);
	close(e);
	close(fo);
	close(fe);
	*out = slurp("out.txt");
	*err = slurp("err.txt");
	return rc;
}

static void
test_check_main(void **state)
{
	char *ok1[] = {"--check-rules", "a.rules", NULL};
	char *ok2[] = {"--check-rules", "a.rules", "--rules", "b.rules", NULL};
	char *bad[] = {"--check-rules", "a.rules", "r.rules", NULL};
	char *none[] = {"--check-rules", NULL};
	char *opt[] = {"--check-rules", "-x", NULL};
	char *out, *err;

	(void)state;
	write_text("a.rules", "mail /x/ WARN\n");
	write_text("b.rules", "rcpt /x/ WARN\nbody /y/ WARN\n");
	write_text("r.rules", "rcpt /x/ WARN\nbody /(/ WARN\n");
	assert_int_equal(run_main(rules_check_main, ok1, &out, &err), 0);
	assert_string_equal(out, "1 rule in 1 file OK\n");
	assert_string_equal(err, "");
	free(out);
	free(err);
	assert_int_equal(run_main(rules_check_main, ok2, &out, &err), 0);
	assert_string_equal(out, "3 rules in 2 files OK\n");
	free(out);
	free(err);
	assert_int_equal(run_main(rules_check_main, bad, &out, &err), 1);
	assert_string_equal(out, "");
	assert_string_equal(err, "r.rules:2:8: missing closing parenthesis\n");
	free(out);
	free(err);
	assert_int_equal(run_main(rules_check_main, none, &out, &err), 2);
	free(out);
	free(err);
	assert_int_equal(run_main(rules_check_main, opt, &out, &err), 2);
	free(out);
	free(err);
}

static const char trial_log[] =
    "# smtptap 0.1.0 transcript\n"
    "# session 3f9a1c07\n"
    "2026-11-26T10:37:28.000001Z * connect client=127.0.0.1:5 listener=127.0.0.1:2525\n"
    "2026-11-26T10:37:28.000002Z S: 220 mx.example ESMTP\n"
    "2026-11-26T10:37:28.000003Z C: EHLO client\n"
    "2026-11-26T10:37:28.000004Z S: 250-mx.example\n"
    "2026-11-26T10:37:28.000005Z S: 250-STARTTLS\n"
    "2026-11-26T10:37:28.000006Z S: 250 SIZE 100\n"
    "2026-11-26T10:37:28.000007Z C: AUTH LOGIN\n"
    "2026-11-26T10:37:28.000008Z S: 334 VXNlcm5hbWU6\n"
    "2026-11-26T10:37:28.000009Z C: [redacted user=vrfy]\n"
    "2026-11-26T10:37:28.000010Z S: 235 2.7.0 Ok\n"
    "2026-11-26T10:37:28.000011Z C: MAIL FROM:<a@evil.example>\n"
    "2026-11-26T10:37:28.000012Z C: RCPT TO:<b@example.com>\n"
    "2026-11-26T10:37:28.000013Z C: DATA\n"
    "2026-11-26T10:37:28.000014Z S: 250 2.1.0 Ok\n"
    "2026-11-26T10:37:28.000015Z S: 250 2.1.5 Ok\n"
    "2026-11-26T10:37:28.000016Z S: 354 End data with <CR><LF>.<CR><LF>\n"
    "2026-11-26T10:37:28.000017Z C: Subject: hello\n"
    "2026-11-26T10:37:28.000018Z C: \tworld\n"
    "2026-11-26T10:37:28.000019Z C: VRFY: not a command\n"
    "2026-11-26T10:37:28.000020Z C: \n"
    "2026-11-26T10:37:28.000021Z C: ..a confidential line\\x0a\n"
    "2026-11-26T10:37:28.000022Z C: tab\there \\\\ \\x00 end\n"
    "2026-11-26T10:37:28.000023Z C: .\n"
    "2026-11-26T10:37:28.000024Z S: 250 2.0.0 Ok: queued\n"
    "2026-11-26T10:37:28.000025Z C: VRFY root\n"
    "2026-11-26T10:37:28.000026Z P: 502 5.5.1 Command disabled\n"
    "2026-11-26T10:37:28.000027Z C: QUIT\n"
    "2026-11-26T10:37:28.000028Z S: 221 2.0.0 Bye\n"
    "2026-11-26T10:37:28.000029Z * close reason=quit\n";

static void
test_trial_main(void **state)
{
	char *argv[] = {"--test-rules", "r.rules", "--transcript", "t.log", NULL};
	char *argv2[] = {"--test-rules", "r.rules", "--transcript=t.log", NULL};
	char *noscript[] = {"--test-rules", "r.rules", NULL};
	char *out, *err;

	(void)state;
	write_text("r.rules",
	           "banner /ESMTP/ REWRITE SMTP\n"
	           "capability /^STARTTLS$/ IGNORE\n"
	           "capability /^SIZE/ WARN size\n"
	           "mail !/@example\\.com>/ REJECT 550 5.7.1 Sender domain not permitted\n"
	           "rcpt /./ WARN\n"
	           "command /^(VRFY|EXPN)\\b/i REJECT 502 5.5.1 Command disabled\n"
	           "header /^Subject:.*world/s PREPEND X-Policy: external\n"
	           "body /\\bconfidential\\b/i REJECT 550 5.7.1 Confidential content\n"
	           "body /\\x00/ REWRITE NUL\n"
	           "reply /^221/ WARN bye\n");
	write_file("t.log", trial_log, sizeof(trial_log) - 1);
	assert_int_equal(run_main(rules_trial_main, argv, &out, &err), 0);
	assert_string_equal(err, "");
	assert_string_equal(
	    out, "t.log:4: S: 220 mx.example ESMTP\n"
	         "\tr.rules:1: banner REWRITE: 220 mx.example SMTP\n"
	         "t.log:7: S: 250-STARTTLS\n"
	         "\tr.rules:2: capability IGNORE: line removed\n"
	         "t.log:8: S: 250 SIZE 100\n"
	         "\tr.rules:3: capability WARN: size\n"
	         "t.log:13: C: MAIL FROM:<a@evil.example>\n"
	         "\tr.rules:4: mail REJECT: 550 5.7.1 Sender domain not permitted\n"
	         "t.log:14: C: RCPT TO:<b@example.com>\n"
	         "\tr.rules:5: rcpt WARN\n"
	         "t.log:19: C: Subject: hello\\x0d\\x0a\tworld\n"
	         "\tr.rules:7: header PREPEND: X-Policy: external\n"
	         "t.log:23: C: .a confidential line\n"
	         "\tr.rules:8: body REJECT: 550 5.7.1 Confidential content\n"
	         "t.log:24: C: tab\there \\\\ \\x00 end\n"
	         "\tr.rules:9: body REWRITE: tab\there \\\\ NUL end\n"
	         "t.log:25: end of message: refused with \"550 5.7.1 Confidential content\", never "
	         "sent upstream\n"
	         "t.log:27: C: VRFY root\n"
	         "\tr.rules:6: command REJECT: 502 5.5.1 Command disabled\n"
	         "t.log:30: S: 221 2.0.0 Bye\n"
	         "\tr.rules:10: reply WARN: bye\n"
	         "1 session, 22 lines tried, 10 rule hits\n"
	         "\tr.rules:1: banner REWRITE: 1 hit in 1 session\n"
	         "\tr.rules:2: capability IGNORE: 1 hit in 1 session\n"
	         "\tr.rules:3: capability WARN: 1 hit in 1 session\n"
	         "\tr.rules:4: mail REJECT: 1 hit in 1 session\n"
	         "\tr.rules:5: rcpt WARN: 1 hit in 1 session\n"
	         "\tr.rules:6: command REJECT: 1 hit in 1 session\n"
	         "\tr.rules:7: header PREPEND: 1 hit in 1 session\n"
	         "\tr.rules:8: body REJECT: 1 hit in 1 session\n"
	         "\tr.rules:9: body REWRITE: 1 hit in 1 session\n"
	         "\tr.rules:10: reply WARN: 1 hit in 1 session\n");
	free(out);
	free(err);
	assert_int_equal(run_main(rules_trial_main, argv2, &out, &err), 0);
	free(out);
	free(err);
	assert_int_equal(run_main(rules_trial_main, noscript, &out, &err), 2);
	free(out);
	free(err);
	/* A bad escape makes a bad transcript. */
	write_text("t.log", "2026-11-26T10:37:28.000002Z S: 220 \\q\n");
	assert_int_equal(run_main(rules_trial_main, argv, &out, &err), 1);
	assert_string_equal(err, "t.log:1: bad escape in a line\n");
	free(out);
	free(err);
	write_text("t.log", "garbage\n");
	assert_int_equal(run_main(rules_trial_main, argv, &out, &err), 1);
	assert_string_equal(err, "t.log:1: not a transcript record\n");
	free(out);
	free(err);
	/* A bad rule file is reported the same way as by --check-rules. */
	write_text("r.rules", "mail /x/ NOPE\n");
	assert_int_equal(run_main(rules_trial_main, argv, &out, &err), 1);
	assert_string_equal(err, "r.rules:1:10: unknown action 'NOPE'\n");
	free(out);
	free(err);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_comments_blank_lines),
	    cmocka_unit_test(test_describe),
	    cmocka_unit_test(test_empty_ruleset),
	    cmocka_unit_test(test_refcount),
	    cmocka_unit_test(test_each_scope),
	    cmocka_unit_test(test_has_scope),
	    cmocka_unit_test(test_scopes_file_order),
	    cmocka_unit_test(test_capability_view),
	    cmocka_unit_test(test_apply_cases),
	    cmocka_unit_test(test_apply_details),
	    cmocka_unit_test(test_holds_messages),
	    cmocka_unit_test(test_load_errors),
	    cmocka_unit_test(test_error_action_scope),
	    cmocka_unit_test(test_error_reply),
	    cmocka_unit_test(test_good_replies),
	    cmocka_unit_test(test_error_texts),
	    cmocka_unit_test(test_error_replacement),
	    cmocka_unit_test(test_error_many),
	    cmocka_unit_test(test_readme_policies),
	    cmocka_unit_test(test_substitution),
	    cmocka_unit_test(test_substitution_grows),
	    cmocka_unit_test(test_nul_octets),
	    cmocka_unit_test(test_invalid_utf8),
	    cmocka_unit_test(test_match_failure),
	    cmocka_unit_test(test_folded_header),
	    cmocka_unit_test(test_prefilter_cases),
	    cmocka_unit_test(test_prefilter_random),
	    cmocka_unit_test(test_prefilter_rules),
	    cmocka_unit_test(test_prefilter_filed),
	    cmocka_unit_test(test_prefilter_apply_random),
	    cmocka_unit_test(test_fix_reply),
	    cmocka_unit_test(test_check_main),
	    cmocka_unit_test(test_trial_main),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
