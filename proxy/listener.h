#ifndef SMTPTAP_LISTENER_H
#define SMTPTAP_LISTENER_H

struct proxy;

/* Binds ADDR:PORT (TLS from the first byte if implicit_tls) and accepts clients; -1 (errno set)
 * when it can't bind. */
int listener_add(struct proxy *px, const char *addr, int implicit_tls);
/* Closes every listener at once (shutdown). */
void listener_close_all(void);

#endif
