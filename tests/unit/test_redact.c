/* Unit tests for logs/redact.c; the base64 vectors come from `printf ... | base64`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "logs/redact.h"

/* Decodes b64 for mech at step and checks the result and, when 1, the user name. */
static void
check_user(const char *mech, int step, const char *b64, int want, const char *wantuser)
{
	char user[REDACT_USER_MAX];

	memset(user, 'X', sizeof(user));
	assert_int_equal(redact_sasl_user(mech, step, b64, strlen(b64), user, sizeof(user)), want);
	if (want)
		assert_string_equal(user, wantuser);
	else
		assert_string_equal(user, "");
}

static void
check_marker(const char *user, const char *want)
{
	struct evbuffer *b;

	assert_non_null(b = evbuffer_new());
	redact_marker(b, user);
	assert_int_equal(evbuffer_get_length(b), strlen(want));
	assert_memory_equal(evbuffer_pullup(b, -1), want, strlen(want));
	evbuffer_free(b);
}

static void
test_plain(void **state)
{
	(void)state;
	/* \0alice\0secret */
	check_user("PLAIN", 0, "AGFsaWNlAHNlY3JldA==", 1, "alice");
	check_user("plain", 0, "AGFsaWNlAHNlY3JldA==", 1, "alice");
	/* admin\0alice\0secret: authcid wins over authzid */
	check_user("PLAIN", 0, "YWRtaW4AYWxpY2UAc2VjcmV0", 1, "alice");
	/* bob\0\0hunter2: authcid empty, authzid used */
	check_user("PLAIN", 0, "Ym9iAABodW50ZXIy", 1, "bob");
	/* \0\0pw: no name at all */
	check_user("PLAIN", 0, "AABwdw==", 0, NULL);
	/* "alice": no NUL separators, and never the whole thing */
	check_user("PLAIN", 0, "YWxpY2U=", 0, NULL);
	/* al\0ice: one NUL only */
	check_user("PLAIN", 0, "YWwAaWNl", 0, NULL);
	/* only one response in PLAIN */
	check_user("PLAIN", 1, "AGFsaWNlAHNlY3JldA==", 0, NULL);
}

static void
test_login(void **state)
{
	(void)state;
	check_user("LOGIN", 0, "YWxpY2U=", 1, "alice");
	/* step 1 is the password: never returned */
	check_user("LOGIN", 1, "c2VjcmV0", 0, NULL);
	check_user("login", 2, "c2VjcmV0", 0, NULL);
	/* al\0ice: a name the caller could not see whole */
	check_user("LOGIN", 0, "YWwAaWNl", 0, NULL);
}

static void
test_cram_md5(void **state)
{
	(void)state;
	/* alice 0123456789abcdef0123456789abcdef */
	check_user("CRAM-MD5", 0, "YWxpY2UgMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", 1,
	           "alice");
	/* first last <digest>: up to the last space */
	check_user("cram-md5", 0, "Zmlyc3QgbGFzdCAwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg==", 1,
	           "first last");
	/* nospace */
	check_user("CRAM-MD5", 0, "bm9zcGFjZQ==", 0, NULL);
	check_user("CRAM-MD5", 1, "YWxpY2UgMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", 0, NULL);
}

static void
test_xoauth2(void **state)
{
	(void)state;
	/* user=alice@example.com\1auth=Bearer ya29.token\1\1 */
	check_user("XOAUTH2", 0,
	           "dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnRva2VuAQE=", 1,
	           "alice@example.com");
	/* "alice": no user= field */
	check_user("XOAUTH2", 0, "YWxpY2U=", 0, NULL);
	/* \1: the empty reply after an error challenge */
	check_user("XOAUTH2", 1, "AQ==", 0, NULL);
}

static void
test_oauthbearer(void **state)
{
	(void)state;
	/* n,a=alice@example.com,\1host=mx.example\1port=25\1auth=Bearer tok\1\1 */
	check_user(
	    "OAUTHBEARER", 0,
	    "bixhPWFsaWNlQGV4YW1wbGUuY29tLAFob3N0PW14LmV4YW1wbGUBcG9ydD0yNQFhdXRoPUJlYXJlciB0"
	    "b2sBAQ==",
	    1, "alice@example.com");
	/* n,a=a=2Cb=3Dc,...: escapes decoded */
	check_user("oauthbearer", 0, "bixhPWE9MkNiPTNEYywBYXV0aD1CZWFyZXIgdG9rAQE=", 1, "a,b=c");
	/* n,,...: no authzid */
	check_user("OAUTHBEARER", 0, "biwsAWF1dGg9QmVhcmVyIHRvawEB", 0, NULL);
	/* n,a=bad=41,...: an escape GS2 does not allow */
	check_user("OAUTHBEARER", 0, "bixhPWJhZD00MSwBYXV0aD1CZWFyZXIgdG9rAQE=", 0, NULL);
	check_user("OAUTHBEARER", 1, "AQ==", 0, NULL);
}

static void
test_bad_base64(void **state)
{
	(void)state;
	check_user("LOGIN", 0, "", 0, NULL);
	check_user("LOGIN", 0, "=", 0, NULL);         /* RFC 4954 empty response */
	check_user("LOGIN", 0, "YWxpY2U", 0, NULL);   /* missing pad */
	check_user("LOGIN", 0, "YWxp Y2U=", 0, NULL); /* blank inside */
	check_user("LOGIN", 0, " YWxpY2U=", 0, NULL); /* leading blank */
	check_user("LOGIN", 0, "YW=pY2U=", 0, NULL);  /* pad inside */
	check_user("LOGIN", 0, "YWxpY2U===", 0, NULL);
	check_user("LOGIN", 0, "YWJjY===", 0, NULL); /* three pads */
	check_user("LOGIN", 0, "YWxp!2U=", 0, NULL);
	check_user("LOGIN", 0, "====", 0, NULL);
	check_user("LOGIN", 0, "*", 0, NULL); /* cancel is the caller's business */
	check_user("PLAIN", 0, "AGFsaWNlAHNlY3JldA=", 0, NULL);
}

static void
test_unknown_mech(void **state)
{
	(void)state;
	check_user("GSSAPI", 0, "YWxpY2U=", 0, NULL);
	check_user("SCRAM-SHA-256", 0, "YWxpY2U=", 0, NULL);
	check_user("", 0, "YWxpY2U=", 0, NULL);
}

/* Padding: "a", "ab", "abc" are 1, 2, 3 octets, not 3 with pad zeros. */
static void
test_padding_length(void **state)
{
	(void)state;
	check_user("LOGIN", 0, "YQ==", 1, "a");
	check_user("LOGIN", 0, "YWI=", 1, "ab");
	check_user("LOGIN", 0, "YWJj", 1, "abc");
}

/* The length passed is honoured: the base64 need not be NUL-terminated there. */
static void
test_length_honoured(void **state)
{
	char user[REDACT_USER_MAX];

	(void)state;
	assert_int_equal(redact_sasl_user("LOGIN", 0, "YWxpY2U=garbage", 8, user, sizeof(user)), 1);
	assert_string_equal(user, "alice");
}

/* A small buffer truncates the name; a zero-sized one is never written. */
static void
test_user_truncated(void **state)
{
	char user[4], none = 'X';

	(void)state;
	assert_int_equal(redact_sasl_user("LOGIN", 0, "YWxpY2U=", 8, user, sizeof(user)), 1);
	assert_string_equal(user, "ali");
	assert_int_equal(redact_sasl_user("LOGIN", 0, "YWxpY2U=", 8, &none, 0), 0);
	assert_int_equal(none, 'X');
}

static void
test_marker(void **state)
{
	(void)state;
	check_marker("alice", "[redacted user=alice]");
	/* No length: "[redacted 12 octets]" told an attacker how long the password was. */
	check_marker(NULL, "[redacted]");
	check_marker("", "[redacted]");
	/* the user name is escaped like any peer data */
	check_marker("a\\b\x1b\xc3\xa9\xff", "[redacted user=a\\\\b\\x1b\xc3\xa9\\xff]");
}

/* What the transcript writer does: decode, then mark without the secret. */
static void
test_marker_never_has_secret(void **state)
{
	const char *b64 = "AGFsaWNlAHNlY3JldA==";
	char user[REDACT_USER_MAX];
	struct evbuffer *b;
	const char *s;

	(void)state;
	assert_int_equal(redact_sasl_user("PLAIN", 0, b64, strlen(b64), user, sizeof(user)), 1);
	assert_non_null(b = evbuffer_new());
	redact_marker(b, user);
	evbuffer_add(b, "", 1);
	s = (const char *)evbuffer_pullup(b, -1);
	assert_string_equal(s, "[redacted user=alice]");
	assert_null(strstr(s, "secret"));
	evbuffer_free(b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plain),           cmocka_unit_test(test_login),
	    cmocka_unit_test(test_cram_md5),        cmocka_unit_test(test_xoauth2),
	    cmocka_unit_test(test_oauthbearer),     cmocka_unit_test(test_bad_base64),
	    cmocka_unit_test(test_unknown_mech),    cmocka_unit_test(test_padding_length),
	    cmocka_unit_test(test_length_honoured), cmocka_unit_test(test_user_truncated),
	    cmocka_unit_test(test_marker),          cmocka_unit_test(test_marker_never_has_secret),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
