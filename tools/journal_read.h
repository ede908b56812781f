#ifndef SMTPTAP_JOURNAL_READ_H
#define SMTPTAP_JOURNAL_READ_H

#include <errno.h>
#include <stddef.h>
#include <sys/types.h>

/*
 * Reading the journal (LOGDIR/YYYY-MM-DD.log): one record a line,
 * "2026-12-06T23:49:05.938413Z f5e623bd C: MAIL FROM:<alice@example.com>", and the
 * per-session layout `smtptap show` prints (the same records without the id column).
 */

#define JOURNAL_TS_LEN 27 /* 2026-12-06T23:49:05.938413Z */
#define JOURNAL_ID_MAX 32

/* One record; text points into the line it was parsed from (not NUL-terminated). */
struct jrecord {
	char ts[JOURNAL_TS_LEN + 1];
	char id[JOURNAL_ID_MAX]; /* "" in the per-session layout */
	char kind[3];            /* "C:", "S:", "P:", "U:", "C+", "S+", "*" */
	const char *text;
	size_t textlen;
};

/* Parses a journal record "TS ID KIND TEXT"; 0, or -1 when the line is not one. */
int journal_parse(const char *line, size_t n, struct jrecord *r);
/* Parses a record with or without the id column; -1 when it is neither. */
int journal_parse_any(const char *line, size_t n, struct jrecord *r);

/* Undoes the records' escaping ("\\", "\xHH") into out (room for n); -1 on a bad escape. */
int journal_unescape(const char *p, size_t n, unsigned char *out, size_t *outlen);

/*
 * n octets of a record, fit to print on a terminal: as they are when the recorder wrote them
 * (it escapes control octets, bidirectional controls and what is not UTF-8, so valid
 * journals print unchanged); else, from a tampered journal, with those escaped its way
 * ("\xHH"; a backslash stays, it starts an escape already) into *owned, to free (NULL when
 * nothing was).  The length in *outlen; NULL on ENOMEM.
 */
const char *journal_printable(const char *p, size_t n, size_t *outlen, char **owned);

/*
 * The value of key=VALUE (or key="VALUE") in an event record's text, into out; 0, or -1
 * when the key is absent.
 */
int journal_event_value(const char *text, size_t n, const char *key, char *out, size_t size);

/*
 * A line reader over a file that may be growing or end in a torn line (a crash mid-write):
 * only lines ended by '\n' are returned, a partial tail waits (journal_reader_next returns 0
 * until more arrives).  A line longer than JOURNAL_LINE_MAX is skipped whole.
 */
#define JOURNAL_LINE_MAX (16u << 20)

struct journal_reader {
	int fd;
	char path[4096];
	char *buf;
	size_t len, start, cap;
	off_t off;      /* file offset of buf[0] */
	int skipping;   /* inside an over-long line */
	unsigned long lineno;
};

/*
 * Opens a journal or events file to read, without waiting on it (a FIFO put in its place
 * would block) and only if it is a regular file; the descriptor, or -1 with errno,
 * JOURNAL_ENOTREG for a FIFO, a device, a directory.
 */
int journal_open(const char *path);
/* Linux has no EFTYPE; EMEDIUMTYPE (a removable medium's) never comes from opening a journal. */
#define JOURNAL_ENOTREG EMEDIUMTYPE
/* strerror(err), and what JOURNAL_ENOTREG means. */
const char *journal_strerror(int err);

/* Opens path and positions at offset at; 0, or -1 with errno (the caller names the file). */
int journal_reader_open(struct journal_reader *jr, const char *path, off_t at);
/* Positions the reader at offset at; 0, or -1 with errno. */
int journal_reader_seek(struct journal_reader *jr, off_t at);
void journal_reader_close(struct journal_reader *jr);
/*
 * Whether the path now leads to another regular file than the one being read (moved away and
 * created again, as logrotate's create does) or to one shorter than what was read (truncated
 * in place): tail -F's test.  0 while nothing is there.
 */
int journal_reader_replaced(const struct journal_reader *jr);
/*
 * The next whole line (without its '\n') in *line, *n; 1, 0 when none is complete yet (end
 * of file, or a torn last line), -1 on a read error.  *at receives the line's file offset.
 */
int journal_reader_next(struct journal_reader *jr, const char **line, size_t *n, off_t *at);

/*
 * The journal's day files under dir ("YYYY-MM-DD.log"), sorted oldest first, as a
 * NULL-terminated array of names to free with journal_days_free; NULL with errno on error.
 */
char **journal_days(const char *dir, size_t *count);
void journal_days_free(char **days);

/* Whether name is a day file's name. */
int journal_is_day(const char *name);

#endif
