/*
 * libFuzzer target: the client command parser (smtp_parse_command) and the BDAT argument
 * parser (smtp_parse_bdat), on the input as one line and on each of its LF-terminated lines,
 * with the invariants the relay relies on checked.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_bdat(const unsigned char *arg, size_t len)
{
	uint64_t n = 0;
	int last = -1;

	if (smtp_parse_bdat(arg, len, &n, &last) == 0) {
		if (last != 0 && last != 1)
			abort();
		/* A size is digits first: an argument not starting with one is refused. */
		if (len == 0 || arg[0] < '0' || arg[0] > '9')
			abort();
	}
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
