/* cl_tls.c: TLS to s3dliod (OpenSSL), and the byte I/O of a connection, plain or TLS.
 *
 * TLS is used for tls://HOST:PORT URLs, and for tcp:// ones when S3DLIO_TLS=1 or
 * S3DLIO_CA_BUNDLE is set (S3DLIO_TLS=0 turns it off). The server is always verified: its
 * certificate must chain to S3DLIO_CA_BUNDLE (a PEM file, or a directory of hashed
 * certificates) or, without it, to the system's trust store, and must name the host of the
 * URL (a DNS name, or an IP address literal). The bearer token then travels encrypted.
 *
 * The engine multiplexes non-blocking sockets with poll(); OpenSSL may hold decrypted bytes
 * the socket no longer shows as readable, so the engine asks cl_conn_pending() before it
 * sleeps. Reads decrypt straight into the destination (no staging copy), as readv() does. */
#include "cl_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

/* The last OpenSSL error as text (empties the thread's error queue). */
static void tls_err_text(char *buf, size_t n)
{
	unsigned long e = ERR_get_error();
	if (!e)
		snprintf(buf, n, "no detail from OpenSSL");
	else
		ERR_error_string_n(e, buf, n);
	ERR_clear_error();
}

int cl_tls_wanted(const char *url, int *tls)
{
	const char *force = getenv("S3DLIO_TLS");
	const char *ca = getenv("S3DLIO_CA_BUNDLE");
	if (strncmp(url, "tls://", 6) == 0) {
		*tls = 1;
		return 0;
	}
	*tls = 0;
	if (strncmp(url, "tcp://", 6) != 0)
		return 0;
	if (force && *force)
		*tls = !(strcmp(force, "0") == 0 || strcasecmp(force, "false") == 0 ||
		         strcasecmp(force, "no") == 0 || strcasecmp(force, "off") == 0);
	else
		*tls = ca && *ca;
	return 0;
}

int cl_tls_ctx_new(s3dlio_client *c, s3dlio_error *err)
{
	char why[256];
	const char *ca = getenv("S3DLIO_CA_BUNDLE");
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx) {
		tls_err_text(why, sizeof(why));
		cl_err(err, S3DLIO_E_INTERNAL, "%s: cannot set up TLS: %s", c->url, why);
		return S3DLIO_E_INTERNAL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
	/* a server that closes without close_notify is a closed connection, reported as such */
	SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
	int ok;
	if (ca && *ca) {
		struct stat st;
		if (stat(ca, &st) < 0) {
			cl_err(err, S3DLIO_E_INVALID, "%s: S3DLIO_CA_BUNDLE=%s: %s", c->url, ca,
			       strerror(errno));
			SSL_CTX_free(ctx);
			return S3DLIO_E_INVALID;
		}
		ok = S_ISDIR(st.st_mode) ? SSL_CTX_load_verify_locations(ctx, NULL, ca)
		                         : SSL_CTX_load_verify_locations(ctx, ca, NULL);
	} else {
		ok = SSL_CTX_set_default_verify_paths(ctx);
	}
	if (ok != 1) {
		tls_err_text(why, sizeof(why));
		cl_err(err, S3DLIO_E_INVALID, "%s: cannot load the CA certificates %s%s: %s", c->url,
		       ca && *ca ? "S3DLIO_CA_BUNDLE=" : "(system default)", ca && *ca ? ca : "",
		       why);
		SSL_CTX_free(ctx);
		return S3DLIO_E_INVALID;
	}
	c->tls_ctx = ctx;
	return 0;
}

void cl_tls_ctx_free(s3dlio_client *c)
{
	SSL_CTX_free(c->tls_ctx);
	c->tls_ctx = NULL;
}

/* Wait until fd is ready for what OpenSSL asked (want: SSL_ERROR_WANT_*). 0 or ETIMEDOUT. */
static int tls_wait(int fd, int want, uint64_t deadline)
{
	struct pollfd p = {.fd = fd, .events = want == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN};
	for (;;) {
		uint64_t now = cl_now_ms();
		if (now >= deadline)
			return ETIMEDOUT;
		int r = poll(&p, 1, (int)(deadline - now > 60000 ? 60000 : deadline - now));
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return errno;
	}
}

int cl_tls_connect(s3dlio_client *c, struct cl_conn *cn, uint64_t deadline, s3dlio_error *err)
{
	char why[256];
	const char *name = c->tls_name ? c->tls_name : c->host;
	SSL *ssl = SSL_new(c->tls_ctx);
	if (!ssl || SSL_set_fd(ssl, cn->fd) != 1) {
		tls_err_text(why, sizeof(why));
		SSL_free(ssl);
		cl_err(err, S3DLIO_E_INTERNAL, "cannot connect to %s: TLS: %s", c->url, why);
		return S3DLIO_E_INTERNAL;
	}
	cn->ssl = ssl;
	unsigned char addr[16];
	if (inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
	} else {
		SSL_set_tlsext_host_name(ssl, name); /* SNI */
		SSL_set1_host(ssl, name);
	}
	for (;;) {
		ERR_clear_error();
		int r = SSL_connect(ssl);
		if (r == 1)
			return 0;
		int e = SSL_get_error(ssl, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			int w = tls_wait(cn->fd, e, deadline);
			if (!w)
				continue;
			cl_err(err, w == ETIMEDOUT ? S3DLIO_E_TIMEOUT : S3DLIO_E_CONNECTION,
			       "cannot connect to %s: TLS handshake: %s", c->url,
			       w == ETIMEDOUT ? "timed out" : strerror(w));
			return w == ETIMEDOUT ? S3DLIO_E_TIMEOUT : S3DLIO_E_CONNECTION;
		}
		long v = SSL_get_verify_result(ssl);
		if (v != X509_V_OK) {
			const char *ca = getenv("S3DLIO_CA_BUNDLE");
			cl_err(err, S3DLIO_E_PERMISSION,
			       "cannot connect to %s: the server's TLS certificate was refused: %s "
			       "(verified as %s against %s%s)",
			       c->url, X509_verify_cert_error_string(v), name,
			       ca && *ca ? "S3DLIO_CA_BUNDLE=" : "the system's CA certificates",
			       ca && *ca ? ca : "");
			return S3DLIO_E_PERMISSION;
		}
		if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
			cl_err(err, S3DLIO_E_CONNECTION,
			       "cannot connect to %s: TLS handshake: the connection closed (does the "
			       "server speak TLS?)",
			       c->url);
			return S3DLIO_E_CONNECTION;
		}
		tls_err_text(why, sizeof(why));
		cl_err(err, S3DLIO_E_CONNECTION,
		       "cannot connect to %s: TLS handshake failed (does the server speak TLS?): %s",
		       c->url, why);
		return S3DLIO_E_CONNECTION;
	}
}

void cl_tls_close(struct cl_conn *cn)
{
	/* no close_notify: the socket may be shared with a forked parent, or already dead */
	SSL_free(cn->ssl);
	cn->ssl = NULL;
}

/* ---- byte I/O: errno semantics of readv/sendmsg on a non-blocking socket ---- */

/* -1 with errno from an OpenSSL failure (after `done` bytes moved: then return those). A
 * read returns 0 at the end of the stream; a write never does (its failures keep errno,
 * EPIPE when the system gave none), so callers never mistake a failed write for no progress. */
static ssize_t tls_io_fail(struct cl_conn *cn, int r, size_t done, int reading)
{
	int e = SSL_get_error(cn->ssl, r);
	int saved = errno;
	if (done)
		return (ssize_t)done;
	switch (e) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE: errno = EAGAIN; return -1;
	case SSL_ERROR_ZERO_RETURN:
		if (reading)
			return 0;
		errno = EPIPE;
		return -1;
	case SSL_ERROR_SYSCALL:
		if (ERR_peek_error() == 0) {
			if (reading && saved == 0)
				return 0; /* EOF without close_notify */
			errno = saved ? saved : EPIPE;
			return -1;
		}
		/* fall through */
	default: ERR_clear_error(); errno = EPROTO; return -1;
	}
}

ssize_t cl_conn_readv(struct cl_conn *cn, const struct iovec *iov, int k)
{
	if (!cn->ssl)
		return readv(cn->fd, iov, k);
	size_t done = 0;
	for (int i = 0; i < k; i++) {
		uint8_t *p = iov[i].iov_base;
		size_t want = iov[i].iov_len;
		while (want) {
			size_t got = 0;
			ERR_clear_error();
			errno = 0;
			int r = SSL_read_ex(cn->ssl, p, want, &got);
			if (r != 1)
				return tls_io_fail(cn, r, done, 1);
			p += got;
			want -= got;
			done += got;
		}
	}
	return (ssize_t)done;
}

ssize_t cl_conn_sendv(struct cl_conn *cn, const struct iovec *iov, int k)
{
	if (!cn->ssl) {
		struct msghdr m;
		memset(&m, 0, sizeof(m));
		m.msg_iov = (struct iovec *)iov;
		m.msg_iovlen = (size_t)k;
		return sendmsg(cn->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	size_t done = 0;
	for (int i = 0; i < k; i++) {
		const uint8_t *p = iov[i].iov_base;
		size_t left = iov[i].iov_len;
		while (left) {
			size_t put = 0;
			ERR_clear_error();
			errno = 0;
			int r = SSL_write_ex(cn->ssl, p, left, &put);
			if (r != 1)
				return tls_io_fail(cn, r, done, 0);
			p += put;
			left -= put;
			done += put;
		}
	}
	return (ssize_t)done;
}

int cl_conn_pending(struct cl_conn *cn)
{
	return cn->ssl && SSL_pending(cn->ssl) > 0;
}

/* An idle TLS connection may show readable bytes that are not data: a TLS 1.3 server sends
 * session tickets after the handshake. 1 when only such records (or nothing) arrived. */
int cl_tls_idle_ok(struct cl_conn *cn)
{
	uint8_t b;
	size_t got = 0;
	ERR_clear_error();
	int r = SSL_peek_ex(cn->ssl, &b, 1, &got);
	if (r == 1)
		return 0; /* data nobody asked for */
	int e = SSL_get_error(cn->ssl, r);
	ERR_clear_error();
	return e == SSL_ERROR_WANT_READ;
}
