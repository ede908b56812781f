#ifndef SMTPTAP_LISTENER_H
#define SMTPTAP_LISTENER_H

#include <stddef.h>
#include <sys/socket.h>

struct proxy;

/* Binds HOST:PORT, every address of a name (TLS from the first byte if implicit_tls), one socket
 * per worker, and accepts clients; -1 with the reason in err when it can't. */
int listener_add(struct proxy *px, const char *addr, int implicit_tls, unsigned workers, char *err,
                 size_t errlen);
/* As listener_add, with IP_TRANSPARENT (TPROXY): each accepted socket's local address is
 * where the client was going.  Needs CAP_NET_ADMIN. */
int listener_add_transparent(struct proxy *px, const char *addr, unsigned workers, char *err,
                             size_t errlen);
/* Logs "listening on ADDRESS" for each, once the start-up checks have passed. */
void listener_log_all(void);
/* The name of our listener that takes connections to sa, or NULL.  fd: a socket connected to
 * sa (tells whether sa is a local address for a wildcard listener), -1 at start-up. */
const char *listener_serving(const struct sockaddr *sa, int fd);
/* Upstream socket fd came back to one of our listeners: its session there is refused at once. */
void listener_loop_note(int fd);
/* In worker `worker`: closes the sockets of the others. */
void listener_keep_worker(unsigned worker);
/* Closes every listener at once (shutdown). */
void listener_close_all(void);

#endif
