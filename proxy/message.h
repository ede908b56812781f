#ifndef SMTPTAP_MESSAGE_H
#define SMTPTAP_MESSAGE_H

#include <stddef.h>

struct session;

/*
 * A message under header or body rules.  Lines arrive one at a time, CRLF or bare-ended;
 * headers are gathered into logical lines (a folded header is one, its line breaks kept),
 * body lines are un-stuffed before the rules see them and stuffed again on the way out.
 * What comes out goes straight upstream, or, when the rules may refuse the message, is held
 * (in memory up to --hold-memory, then in an unlinked file) until its end is known.
 */

enum message_verdict { MSG_ACCEPT, MSG_REJECT, MSG_DISCONNECT, MSG_TOO_BIG };

/* Starts a message; holding when the rules may refuse it at its end. */
int message_begin(struct session *s, int holding);
/* One complete content line (line end included: CRLF, bare LF or bare CR). */
void message_line(struct session *s, const unsigned char *line, size_t len);
/* A piece of a line longer than --max-line: gathered, the whole line inspected at the last. */
void message_piece(struct session *s, const unsigned char *piece, size_t len, int first, int last);
/* The end of data: flushes what is pending; the verdict, and the reply for a refusal. */
enum message_verdict message_end(struct session *s, const char **reply);
/* Sends a held message upstream, with its end of data. */
int message_send_held(struct session *s);
/* A SIZE the server announced (0: none): the smallest seen in the session holds. */
void message_learn_size(struct session *s, unsigned long long size);
/* Whether a message is being held. */
int message_holding(const struct session *s);
void message_free(struct session *s);

/*
 * The held-message spool: an unlinked file (O_TMPFILE, 0600) in the log directory, where a
 * held message beyond --hold-memory goes; -1 when there is none (no log directory).
 */
int message_spool_open(void);

#endif
