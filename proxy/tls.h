#ifndef SMTPTAP_TLS_H
#define SMTPTAP_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

struct bufferevent;
struct options;

/* OpenSSL contexts: ours for clients (certificate), and one for the upstream leg. */
int tls_init(const struct options *o);
/* Loads the certificate and key again (SIGHUP); a broken pair keeps the old one. */
int tls_reload(void);
void tls_cleanup(void);
/*
 * SIGHUP with --config: both contexts built again from o (certificate, key, CA, versions,
 * verification), and put in place together only when both could be; -1 keeps the old ones.
 */
int tls_reconfigure(const struct options *o);

/* Whether a certificate of ours is loaded (STARTTLS can be terminated). */
int tls_have_cert(void);
/* A new SSL for a client's handshake with us; NULL on error. */
SSL *tls_accept_ssl(void);
/* A new SSL for our handshake with the server, verifying as configured; NULL on error. */
SSL *tls_connect_ssl(void);

/* "version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384" of an established connection. */
const char *tls_version(const SSL *ssl);
const char *tls_cipher(const SSL *ssl);
/* The SNI a client sent, or NULL. */
const char *tls_sni(const SSL *ssl);
/* The peer certificate's subject (one line) into buf; "" when none. */
void tls_peer_subject(const SSL *ssl, char *buf, size_t size);
/* The verification result, "ok" or OpenSSL's reason. */
const char *tls_verify_result(const SSL *ssl);
/* OpenSSL's reason for a failure on bev (drains its error queue) into buf. */
void tls_error_reason(struct bufferevent *bev, char *buf, size_t size);

#endif
