/*
 * TLS through OpenSSL 3 and libevent's bufferevent_openssl: the contexts, certificate
 * reload, and what a transcript says about a connection.
 */
#include "proxy/tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "logs/log.h"
#include "proxy/options.h"

static const struct options *tls_opts;
static SSL_CTX *server_ctx; /* we are the server, to clients */
static SSL_CTX *client_ctx; /* we are the client, to the upstream */

static int
tls_min_proto(void)
{
	return tls_opts->tls_min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

static void
tls_log_errors(const char *what)
{
	char buf[256];
	unsigned long e;

	while ((e = ERR_get_error()) != 0) {
		ERR_error_string_n(e, buf, sizeof(buf));
		log_warnx("%s: %s", what, buf);
	}
}

/* Gives a context up because of what (a file): OpenSSL's reasons logged; NULL. */
static SSL_CTX *
tls_ctx_fail(SSL_CTX *ctx, const char *what)
{
	tls_log_errors(what);
	SSL_CTX_free(ctx);
	return NULL;
}

/* Our certificate chain and key, checked to match, for the clients' leg. */
static SSL_CTX *
tls_setup_server(SSL_CTX *ctx)
{
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	if (SSL_CTX_use_certificate_chain_file(ctx, tls_opts->tls_cert) != 1)
		return tls_ctx_fail(ctx, tls_opts->tls_cert);
	if (SSL_CTX_use_PrivateKey_file(ctx, tls_opts->tls_key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1)
		return tls_ctx_fail(ctx, tls_opts->tls_key);
	return ctx;
}

/* The check of the server's certificate, for the upstream leg. */
static SSL_CTX *
tls_setup_client(SSL_CTX *ctx)
{
	/* Without verification no CA is consulted: the system store is not read (~1 MB). */
	if (tls_opts->upstream_verify == VERIFY_NONE && tls_opts->upstream_ca == NULL) {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
		return ctx;
	}
	if (tls_opts->upstream_ca != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, tls_opts->upstream_ca, NULL) != 1)
			return tls_ctx_fail(ctx, tls_opts->upstream_ca);
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		tls_log_errors("system CA store");
	}
	SSL_CTX_set_verify(
	    ctx, tls_opts->upstream_verify == VERIFY_NONE ? SSL_VERIFY_NONE : SSL_VERIFY_PEER,
	    NULL);
	return ctx;
}

enum tls_leg { TLS_FOR_CLIENTS, TLS_FOR_UPSTREAM };

/* A context for one leg, with --tls-min-version's floor; NULL on failure (logged). */
static SSL_CTX *
tls_load_ctx(enum tls_leg leg)
{
	SSL_CTX *ctx =
	    SSL_CTX_new(leg == TLS_FOR_CLIENTS ? TLS_server_method() : TLS_client_method());

	if (ctx == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, tls_min_proto());
	return leg == TLS_FOR_CLIENTS ? tls_setup_server(ctx) : tls_setup_client(ctx);
}

int
tls_init(const struct options *o)
{
	tls_opts = o;
	if (o->tls_cert != NULL && (server_ctx = tls_load_ctx(TLS_FOR_CLIENTS)) == NULL)
		return -1;
	if ((client_ctx = tls_load_ctx(TLS_FOR_UPSTREAM)) == NULL)
		return -1;
	return 0;
}

int
tls_reload(void)
{
	SSL_CTX *ctx;

	if (tls_opts == NULL || tls_opts->tls_cert == NULL)
		return 0;
	if ((ctx = tls_load_ctx(TLS_FOR_CLIENTS)) == NULL) {
		log_warnx("certificate reload failed: keeping the old certificate");
		return -1;
	}
	/* Running sessions hold their own reference to the old context. */
	SSL_CTX_free(server_ctx);
	server_ctx = ctx;
	log_info("certificate %s reloaded", tls_opts->tls_cert);
	return 0;
}

int
tls_reconfigure(const struct options *o)
{
	const struct options *old = tls_opts;
	SSL_CTX *srv = NULL, *cli = NULL;

	tls_opts = o; /* what the loaders read */
	if ((o->tls_cert != NULL && (srv = tls_load_ctx(TLS_FOR_CLIENTS)) == NULL) ||
	    (cli = tls_load_ctx(TLS_FOR_UPSTREAM)) == NULL) {
		SSL_CTX_free(srv);
		tls_opts = old;
		return -1;
	}
	/* Running sessions hold their own references to the old contexts. */
	SSL_CTX_free(server_ctx);
	SSL_CTX_free(client_ctx);
	server_ctx = srv;
	client_ctx = cli;
	return 0;
}

void
tls_cleanup(void)
{
	SSL_CTX_free(server_ctx);
	SSL_CTX_free(client_ctx);
	server_ctx = client_ctx = NULL;
}

int
tls_have_cert(void)
{
	return server_ctx != NULL;
}

SSL *
tls_accept_ssl(void)
{
	return server_ctx != NULL ? SSL_new(server_ctx) : NULL;
}

static int
tls_is_address(const char *name)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

SSL *
tls_connect_ssl(void)
{
	const char *name = tls_opts->upstream_name;
	SSL *ssl;

	if ((ssl = SSL_new(client_ctx)) == NULL)
		return NULL;
	/* SNI only for a name, never for an address literal (RFC 6066 3). */
	if (name != NULL && !tls_is_address(name))
		SSL_set_tlsext_host_name(ssl, name);
	if (tls_opts->upstream_verify == VERIFY_NAME && name != NULL &&
	    SSL_set1_host(ssl, name) != 1) {
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

const char *
tls_version(const SSL *ssl)
{
	return SSL_get_version(ssl);
}

const char *
tls_cipher(const SSL *ssl)
{
	return SSL_get_cipher_name(ssl);
}

const char *
tls_sni(const SSL *ssl)
{
	return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
}

void
tls_peer_subject(const SSL *ssl, char *buf, size_t size)
{
	X509 *cert = SSL_get0_peer_certificate(ssl);

	buf[0] = '\0';
	if (cert != NULL)
		X509_NAME_oneline(X509_get_subject_name(cert), buf, (int)size);
}

const char *
tls_verify_result(const SSL *ssl)
{
	long r = SSL_get_verify_result(ssl);

	if (tls_opts->upstream_verify == VERIFY_NONE)
		return "not checked";
	return r == X509_V_OK ? "ok" : X509_verify_cert_error_string(r);
}

void
tls_error_reason(struct bufferevent *bev, char *buf, size_t size)
{
	unsigned long e, first = 0;

	while ((e = bufferevent_get_openssl_error(bev)) != 0)
		if (first == 0)
			first = e;
	while ((e = ERR_get_error()) != 0)
		if (first == 0)
			first = e;
	if (first == 0) {
		snprintf(buf, size, "connection closed during the handshake");
		return;
	}
	ERR_error_string_n(first, buf, size);
}
