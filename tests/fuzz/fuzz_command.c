/*
 * libFuzzer target: the client command parser (smtp_parse_command), the BDAT argument parser
 * (smtp_parse_bdat) and the AUTH splitter (smtp_parse_auth), on the input as one line and on
 * each of its LF-terminated lines, with the invariants the relay relies on checked.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * BDAT's argument read another way, word by word as Postfix's smtpd_token splits it: one or
 * two words at any white space, the count all digits and no more than an off_t holds, the
 * second "LAST" in any case.  The argument starts after the verb's white space.
 */
static int
reference_bdat(const unsigned char *arg, size_t len, uint64_t *size, int *last)
{
	const unsigned char *word[3];
	size_t wlen[3], nwords = 0, i = 0, k;
	uint64_t n = 0;

	if (arg == NULL || len == 0 || smtp_is_space(arg[0]))
		return -1;
	while (i < len && nwords < 3) {
		word[nwords] = arg + i;
		for (k = 0; i < len && !smtp_is_space(arg[i]); i++)
			k++;
		wlen[nwords++] = k;
		while (i < len && smtp_is_space(arg[i]))
			i++;
	}
	if (i < len || nwords == 3)
		return -1;
	for (k = 0; k < wlen[0]; k++) {
		if (word[0][k] < '0' || word[0][k] > '9')
			return -1;
		if (n > ((uint64_t)INT64_MAX - (uint64_t)(word[0][k] - '0')) / 10)
			return -1;
		n = n * 10 + (uint64_t)(word[0][k] - '0');
	}
	if (nwords == 2 && (wlen[1] != 4 || strncasecmp((const char *)word[1], "LAST", 4) != 0))
		return -1;
	*size = n;
	*last = nwords == 2;
	return 0;
}

static void
check_bdat(const unsigned char *arg, size_t len)
{
	uint64_t n = 0, rn = 0;
	int last = -1, rlast = -1;
	int r = smtp_parse_bdat(arg, len, &n, &last);

	if (r != reference_bdat(arg, len, &rn, &rlast))
		abort();
	if (r == 0 && (n != rn || last != rlast || n > SMTP_BDAT_MAX))
		abort();
}

/*
 * AUTH split as servers split it: the mechanism is one word with no white space in it, the
 * response starts after white space and runs to the end, nothing of either lies outside.
 */
static void
check_auth(const unsigned char *arg, size_t len)
{
	struct smtp_auth a;
	size_t i;

	smtp_parse_auth(arg, len, &a);
	if (a.mech == NULL) {
		if (a.resp != NULL || a.mechlen != 0)
			abort();
		for (i = 0; arg != NULL && i < len; i++)
			if (!smtp_is_space(arg[i]))
				abort();
		return;
	}
	if (a.mech < arg || a.mechlen == 0 || a.mech + a.mechlen > arg + len)
		abort();
	for (i = 0; i < a.mechlen; i++)
		if (smtp_is_space(a.mech[i]))
			abort();
	if (a.mech + a.mechlen < arg + len && !smtp_is_space(a.mech[a.mechlen]))
		abort();
	if (a.resp == NULL)
		return;
	if (a.resp <= a.mech + a.mechlen || a.resp + a.resplen != arg + len || a.resplen == 0 ||
	    smtp_is_space(a.resp[0]) || !smtp_is_space(a.resp[-1]) || a.resp_word == 0 ||
	    a.resp_word > a.resplen)
		abort();
	/* A mechanism name is never one a response could hide in: at most 20 plain octets. */
	if (smtp_sasl_name(a.mech, a.mechlen) && a.mechlen > 20)
		abort();
	(void)smtp_sasl_shaped(a.resp, a.resplen);
}

static void
check_line(const unsigned char *line, size_t len)
{
	struct smtp_command cmd;
	size_t n = smtp_line_len(line, len);

	if (n > len)
		abort();
	smtp_parse_command(line, n, &cmd);
	if (cmd.arg != NULL &&
	    (cmd.arg < line || cmd.arglen == 0 || cmd.arg + cmd.arglen != line + n))
		abort();
	if (cmd.arg == NULL && cmd.arglen != 0)
		abort();
	if (smtp_verb_name(cmd.verb) == NULL)
		abort();
	(void)smtp_verb_awaits_reply(cmd.verb);
	if (cmd.verb == VERB_BDAT || cmd.arg != NULL)
		check_bdat(cmd.arg, cmd.arglen);
	check_auth(cmd.arg, cmd.arglen);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const unsigned char *lf;
	size_t off = 0, len;
	unsigned char *copy;

	check_line(data, size);
	check_bdat(size > 0 ? data : NULL, size);
	/* Each line in its own allocation, so a read past its end is caught. */
	while (off < size) {
		lf = memchr(data + off, '\n', size - off);
		len = lf != NULL ? (size_t)(lf - (data + off)) + 1 : size - off;
		if ((copy = malloc(len)) == NULL)
			return 0;
		memcpy(copy, data + off, len);
		check_line(copy, len);
		free(copy);
		off += len;
	}
	return 0;
}
