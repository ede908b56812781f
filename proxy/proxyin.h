#ifndef SMTPTAP_PROXYIN_H
#define SMTPTAP_PROXYIN_H

struct session;

/* How long a balancer (--accept-proxy) has to send its whole PROXY header. */
#define PROXY_HEADER_SECS 5

enum proxyin_result {
	PROXYIN_MORE,    /* not whole yet */
	PROXYIN_DONE,    /* whole: the session is the client's from here */
	PROXYIN_INVALID, /* not a valid header: *why says why */
};

/*
 * Reads a balancer's PROXY header (--accept-proxy) from the client's input; once whole,
 * takes the client's and the listener's addresses from it (the balancer kept as "via").
 */
enum proxyin_result proxyin_read(struct session *s, const char **why);

/* Records a whole header's version once the session's transcript is open. */
void proxyin_record(struct session *s);

#endif
