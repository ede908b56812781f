#ifndef SMTPTAP_SESSION_H
#define SMTPTAP_SESSION_H

/*
 * A session's life, as the modules above the sessions see it (listeners, workers, metrics,
 * main): accepted, shut down, refused.  What a session is inside is proxy/conn.h, for the
 * relay's modules only.
 */

#include <sys/socket.h>

struct proxy;
struct session;

/* Accepts a client on fd: connects upstream and starts recording. */
struct session *session_new(struct proxy *px, int fd, const struct sockaddr *sa, int salen,
                            const char *listener, int implicit_tls);

/* A session over two sockets already connected (tests and fuzzing: socketpairs). */
struct session *session_new_connected(struct proxy *px, int client_fd, int server_fd);

/* Its upstream connection came back to our listener: 421 4.3.0 to the client, and close. */
void session_refuse_loop(struct session *s, const char *listener);

/* Tells a session the proxy is shutting down (the grace period has passed). */
void session_shutdown(struct session *s);

/* The newest session, and the one begun before s (NULL after the oldest). */
struct session *session_newest(struct proxy *px);
struct session *session_older(struct session *s);

/*
 * A session still making its upstream connection (connecting, or awaiting the greeting):
 * 1 with that socket's local address in *local (len in and out); 0 for any other.
 */
int session_upstream_connecting(struct session *s, struct sockaddr_storage *local, socklen_t *len);

/* The upstream socket, or -1: asked only of a session whose local address matched. */
int session_upstream_fd(struct session *s);

/* --grace is over: every session still open is told the proxy shuts down, and closed. */
void session_shutdown_all(struct proxy *px);

/* TCP_NODELAY on a socket (a listener's, or the upstream's); setsockopt's result. */
int session_nodelay(int fd);

#endif
