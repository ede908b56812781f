#ifndef SMTPTAP_TX_H
#define SMTPTAP_TX_H

#include <stddef.h>

struct pending;
struct session;
struct smtp_command;
struct tx;

void tx_begin(struct session *s, const struct smtp_command *cmd);
int tx_rcpt(struct session *s, const struct smtp_command *cmd);
void tx_helo(struct session *s, const struct smtp_command *cmd);
void tx_refused(struct session *s, const struct smtp_command *cmd, int code);
int tx_accepted(const struct tx *tx);
void tx_reply(struct session *s, const struct pending *p, int code);
void tx_free(struct tx *tx);
/*
 * The queue id a final reply's text names (Postfix "queued as X", Exim "id=X", Sendmail and
 * OpenSMTPD "X Message accepted for delivery", Exchange "[InternalId=X"): 0, or -1.
 */
int tx_queue_id(const char *text, char *id, size_t size);

#endif
