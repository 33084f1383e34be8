/* tls.h: the server's TLS context (--tls-cert, --tls-key, --tls-client-ca), OpenSSL.
 *
 * With a certificate configured every tcp:// listener speaks TLS (1.2 or later); Unix
 * sockets stay plain (the peer is on this host, and the file's permissions guard it). With a
 * client CA, clients must present a certificate that CA signed. Connections wrap their
 * socket in a bufferevent_openssl (conn.c); their file:// payload is then read into memory
 * and encrypted instead of going out by sendfile. */
#ifndef S3DLIOD_TLS_H
#define S3DLIOD_TLS_H

#include <openssl/ssl.h>

#include "err.h"

/* A server context from PEM files (client_ca NULL: no client certificates asked). Errors
 * name the file and OpenSSL's reason (INVALID: a configuration mistake). */
int tls_ctx_new(const char *cert, const char *key, const char *client_ca, SSL_CTX **out,
                struct err *e);
void tls_ctx_free(SSL_CTX *ctx);

#endif
