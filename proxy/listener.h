#ifndef SMTPTAP_LISTENER_H
#define SMTPTAP_LISTENER_H

struct proxy;

/* Binds ADDR:PORT (TLS from the first byte if implicit_tls), one socket per worker, and accepts
 * clients; -1 (errno set) when it can't bind. */
int listener_add(struct proxy *px, const char *addr, int implicit_tls, unsigned workers);
/* In worker `worker`: closes the sockets of the others. */
void listener_keep_worker(unsigned worker);
/* Closes every listener at once (shutdown). */
void listener_close_all(void);

#endif
