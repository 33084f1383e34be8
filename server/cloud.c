/* cloud.c: endpoints and credentials of the remote backends (see cloud.h). */
#include "cloud.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *cloud_env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

static int cloud_dup(char **slot, const char *a, const char *b)
{
	const char *v = a ? a : b;
	if (!v)
		return 0;
	*slot = strdup(v);
	return *slot ? 0 : -1;
}

static char *cloud_trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

/* Keys of [profile] in an ini-style credentials file (AWS_SHARED_CREDENTIALS_FILE or
 * ~/.aws/credentials); a missing file is no error. */
static int cloud_aws_profile(struct cloud_s3 *s3, const char *profile, struct err *e)
{
	char path[4096];
	const char *file = cloud_env("AWS_SHARED_CREDENTIALS_FILE");
	if (!file) {
		const char *home = cloud_env("HOME");
		if (!home)
			return 0;
		snprintf(path, sizeof(path), "%s/.aws/credentials", home);
		file = path;
	}
	FILE *f = fopen(file, "r");
	if (!f)
		return 0;
	char line[4096];
	int in = 0, result = 0;
	while (fgets(line, sizeof(line), f)) {
		char *s = cloud_trim(line);
		if (*s == '#' || *s == ';' || !*s)
			continue;
		if (*s == '[') {
			char *end = strchr(s, ']');
			if (end)
				*end = '\0';
			char *name = cloud_trim(s + 1);
			if (strncmp(name, "profile ", 8) == 0)
				name = cloud_trim(name + 8);
			in = strcmp(name, profile) == 0;
			continue;
		}
		char *eq = strchr(s, '=');
		if (!in || !eq)
			continue;
		*eq = '\0';
		char *k = cloud_trim(s), *v = cloud_trim(eq + 1);
		char **slot = NULL;
		if (strcmp(k, "aws_access_key_id") == 0)
			slot = &s3->key_id;
		else if (strcmp(k, "aws_secret_access_key") == 0)
			slot = &s3->secret;
		else if (strcmp(k, "aws_session_token") == 0)
			slot = &s3->token;
		else if (strcmp(k, "region") == 0 && !s3->region)
			slot = &s3->region;
		if (slot && !*slot && !(*slot = strdup(v))) {
			result = err_set(e, WIRE_E_INTERNAL, "out of memory");
			break;
		}
	}
	fclose(f);
	return result;
}

/* A service-account key file: {"type": "service_account", "client_email", "private_key",
 * "token_uri", "project_id"}. */
static int cloud_gs_service_account(struct cloud_gs *gs, const char *path, struct err *e)
{
	int result = 0;
	json_error_t jerr;
	json_t *root = json_load_file(path, 0, &jerr);
	BIO *bio = NULL;
	if (!root)
		return err_set(e, WIRE_E_INVALID, "GOOGLE_APPLICATION_CREDENTIALS %s: %s", path,
		               jerr.text);
	const char *email = json_string_value(json_object_get(root, "client_email"));
	const char *pem = json_string_value(json_object_get(root, "private_key"));
	const char *uri = json_string_value(json_object_get(root, "token_uri"));
	if (!email || !pem) {
		result = err_set(e, WIRE_E_INVALID,
		                 "GOOGLE_APPLICATION_CREDENTIALS %s: not a service-account key "
		                 "(no client_email or private_key)",
		                 path);
		goto done;
	}
	bio = BIO_new_mem_buf(pem, -1);
	gs->sa_key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
	if (!gs->sa_key) {
		result = err_set(e, WIRE_E_INVALID,
		                 "GOOGLE_APPLICATION_CREDENTIALS %s: unreadable private_key", path);
		goto done;
	}
	gs->sa_email = strdup(email);
	gs->token_uri = strdup(uri ? uri : "https://oauth2.googleapis.com/token");
	/* GOOGLE_CLOUD_PROJECT, read before, wins */
	const char *project = json_string_value(json_object_get(root, "project_id"));
	if (!gs->sa_email || !gs->token_uri ||
	    (!gs->project && cloud_dup(&gs->project, project, NULL) < 0))
		result = err_set(e, WIRE_E_INTERNAL, "out of memory");
done:
	BIO_free(bio);
	json_decref(root);
	return result;
}

int cloud_load(const struct config *cfg, struct cloud *c, struct err *e)
{
	memset(c, 0, sizeof(*c));
	c->http.connect_timeout_ms = cfg->connect_timeout_ms;
	c->http.op_timeout_ms = cfg->op_timeout_ms;
	c->http.retries = cfg->retries;
	c->http.backoff_ms = cfg->retry_base_ms;
	c->multipart_threshold = cfg->multipart_threshold;
	c->part_size = cfg->part_size;
	c->parts_in_flight = cfg->parts_in_flight;
	c->list_page = cfg->list_page_size;

	struct cloud_s3 *s3 = &c->s3;
	const char *key = cfg->s3_access_key_id, *secret = cfg->s3_secret_access_key;
	const char *token = cfg->s3_session_token;
	if (!key && cloud_env("AWS_ACCESS_KEY_ID")) {
		key = cloud_env("AWS_ACCESS_KEY_ID");
		secret = cloud_env("AWS_SECRET_ACCESS_KEY");
		token = cloud_env("AWS_SESSION_TOKEN");
	}
	if (cloud_dup(&s3->endpoint, cfg->s3_endpoint, cloud_env("AWS_ENDPOINT_URL_S3")) < 0 ||
	    (!s3->endpoint && cloud_dup(&s3->endpoint, cloud_env("AWS_ENDPOINT_URL"), NULL) < 0) ||
	    cloud_dup(&s3->region, cfg->s3_region, cloud_env("AWS_REGION")) < 0 ||
	    (!s3->region && cloud_dup(&s3->region, cloud_env("AWS_DEFAULT_REGION"), NULL) < 0) ||
	    cloud_dup(&s3->key_id, key, NULL) < 0 || cloud_dup(&s3->secret, secret, NULL) < 0 ||
	    cloud_dup(&s3->token, token, NULL) < 0)
		goto oom;
	if (!s3->key_id) {
		const char *profile = cfg->s3_profile ? cfg->s3_profile : cloud_env("AWS_PROFILE");
		int rc = cloud_aws_profile(s3, profile ? profile : "default", e);
		if (rc < 0)
			return rc;
	}
	if (s3->key_id && !s3->secret) {
		free(s3->key_id);
		s3->key_id = NULL;
	}
	if (!s3->region && !(s3->region = strdup("us-east-1")))
		goto oom;
	if (s3->endpoint) {
		size_t n = strlen(s3->endpoint);
		while (n && s3->endpoint[n - 1] == '/')
			s3->endpoint[--n] = '\0';
	}
	s3->path_style = cfg->s3_path_style >= 0 ? cfg->s3_path_style : s3->endpoint != NULL;

	struct cloud_az *az = &c->az;
	const char *azkey = cfg->az_key ? cfg->az_key : cloud_env("AZURE_STORAGE_KEY");
	if (cloud_dup(&az->endpoint, cfg->az_endpoint, cloud_env("AZURE_STORAGE_ENDPOINT")) < 0 ||
	    cloud_dup(&az->account, cfg->az_account, cloud_env("AZURE_STORAGE_ACCOUNT")) < 0 ||
	    cloud_dup(&az->sas, cfg->az_sas_token, cloud_env("AZURE_STORAGE_SAS_TOKEN")) < 0)
		goto oom;
	if (az->endpoint) {
		size_t n = strlen(az->endpoint);
		while (n && az->endpoint[n - 1] == '/')
			az->endpoint[--n] = '\0';
	}
	if (az->sas && az->sas[0] == '?')
		memmove(az->sas, az->sas + 1, strlen(az->sas));
	if (azkey) {
		size_t n = strlen(azkey);
		uint8_t tmp[200];
		if (n == 0 || n > 4 * (sizeof(tmp) / 3) || n % 4)
			return err_set(e, WIRE_E_INVALID, "AZURE_STORAGE_KEY is not a base64 key");
		int len = EVP_DecodeBlock(tmp, (const unsigned char *)azkey, (int)n);
		if (len < 0)
			return err_set(e, WIRE_E_INVALID, "AZURE_STORAGE_KEY is not a base64 key");
		/* EVP_DecodeBlock counts the padding as bytes */
		if (n >= 1 && azkey[n - 1] == '=')
			len--;
		if (n >= 2 && azkey[n - 2] == '=')
			len--;
		if ((size_t)len > sizeof(az->key))
			return err_set(e, WIRE_E_INVALID, "AZURE_STORAGE_KEY is too long");
		memcpy(az->key, tmp, (size_t)len);
		az->key_len = (size_t)len;
		OPENSSL_cleanse(tmp, sizeof(tmp));
	}

	struct cloud_gs *gs = &c->gs;
	const char *emu = cloud_env("STORAGE_EMULATOR_HOST");
	const char *base = cfg->gs_endpoint ? cfg->gs_endpoint
	                   : emu            ? emu
	                                    : cloud_env("GCS_ENDPOINT_URL");
	if (!base)
		base = "https://storage.googleapis.com";
	size_t blen = strlen(base);
	while (blen && base[blen - 1] == '/')
		blen--;
	int has_scheme = strstr(base, "://") != NULL;
	if (asprintf(&gs->base, "%s%.*s", has_scheme ? "" : "http://", (int)blen, base) < 0) {
		gs->base = NULL;
		goto oom;
	}
	/* an emulator takes no credentials */
	if (!emu || cfg->gs_token) {
		const char *tok =
		    cfg->gs_token ? cfg->gs_token : cloud_env("GOOGLE_OAUTH_ACCESS_TOKEN");
		if (cloud_dup(&gs->token, tok, NULL) < 0)
			goto oom;
	}
	if (cloud_dup(&gs->project, cloud_env("GOOGLE_CLOUD_PROJECT"), NULL) < 0)
		goto oom;
	const char *keyfile =
	    cfg->gs_credentials ? cfg->gs_credentials : cloud_env("GOOGLE_APPLICATION_CREDENTIALS");
	if (!emu && !gs->token && keyfile)
		return cloud_gs_service_account(gs, keyfile, e);
	return 0;
oom:
	return err_set(e, WIRE_E_INTERNAL, "out of memory");
}

void cloud_free(struct cloud *c)
{
	free(c->s3.endpoint);
	free(c->s3.region);
	free(c->s3.key_id);
	free(c->s3.secret);
	free(c->s3.token);
	free(c->az.endpoint);
	free(c->az.account);
	free(c->az.sas);
	free(c->gs.base);
	free(c->gs.token);
	free(c->gs.sa_email);
	free(c->gs.token_uri);
	free(c->gs.project);
	EVP_PKEY_free(c->gs.sa_key);
	OPENSSL_cleanse(c->az.key, sizeof(c->az.key));
	memset(c, 0, sizeof(*c));
}
