#ifndef SMTPTAP_LISTENER_H
#define SMTPTAP_LISTENER_H

struct proxy;

/* Binds ADDR:PORT and accepts clients into sessions; -1 (errno set) when it can't bind. */
int listener_add(struct proxy *px, const char *addr);
/* Closes every listener at once (shutdown). */
void listener_close_all(void);

#endif
