/* tls.c: the server's TLS context (see tls.h). */
#include "tls.h"

#include <openssl/err.h>

/* e: "<what> <file>: <OpenSSL's first queued reason>" */
static int tls_fail(struct err *e, const char *what, const char *file)
{
	char why[256] = "unknown error";
	unsigned long code = ERR_get_error();
	if (code)
		ERR_error_string_n(code, why, sizeof(why));
	ERR_clear_error();
	return err_set(e, WIRE_E_INVALID, "%s %s: %s", what, file ? file : "", why);
}

int tls_ctx_new(const char *cert, const char *key, const char *client_ca, SSL_CTX **out,
                struct err *e)
{
	int result = 0;
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx)
		return tls_fail(e, "--tls-cert", "cannot make a TLS context");
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* a connection's replies are many frames: no renegotiation, no compression */
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	/* no SSL_MODE_ENABLE_PARTIAL_WRITE: bufferevent_openssl takes a positive SSL_write for
	 * the whole piece it passed, and would skip the rest of a partly written one */
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		result = tls_fail(e, "--tls-cert", cert);
		goto done;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		result = tls_fail(e, "--tls-key", key);
		goto done;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		result = tls_fail(e, "--tls-key", key);
		goto done;
	}
	if (client_ca) {
		if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) {
			result = tls_fail(e, "--tls-client-ca", client_ca);
			goto done;
		}
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca);
		if (names)
			SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	*out = ctx;
	ctx = NULL;
done:
	SSL_CTX_free(ctx);
	return result;
}

void tls_ctx_free(SSL_CTX *ctx)
{
	SSL_CTX_free(ctx);
}
