/* cloud.h: what the remote backends need to reach their stores: endpoints, credentials and
 * upload sizes, resolved once at startup from the config (flags, --config file) and the
 * usual environment variables of each cloud. Read-only afterwards, shared by all threads.
 * Credentials stay in the server: nothing here is ever sent to clients. */
#ifndef S3DLIOD_CLOUD_H
#define S3DLIOD_CLOUD_H

#include <stdint.h>

#include "config.h"
#include "err.h"
#include "http.h"

struct cloud_s3 {
	char *endpoint; /* "http://127.0.0.1:4568" (no trailing slash); NULL: AWS */
	char *region;
	char *key_id, *secret, *token; /* NULL key_id: anonymous (unsigned) */
	int path_style;
};

struct cloud_az {
	char *endpoint;   /* "http://127.0.0.1:10000/devstoreaccount1": path-style; NULL: Azure */
	char *account;    /* NULL: the account named in each URI */
	uint8_t key[128]; /* the Shared Key, decoded */
	size_t key_len;   /* 0: no Shared Key */
	char *sas;        /* a SAS token (no leading '?'), or NULL */
};

struct cloud_gs {
	char *base;  /* "http://127.0.0.1:9199" (STORAGE_EMULATOR_HOST) or the JSON API's */
	char *token; /* a bearer token (GOOGLE_OAUTH_ACCESS_TOKEN), or NULL: no auth */
	/* the project new buckets go to (MKDIR): GOOGLE_CLOUD_PROJECT, else the service-account
	 * key's project_id; NULL: none known */
	char *project;
	/* a service-account key (GOOGLE_APPLICATION_CREDENTIALS): tokens come from signing a
	 * JWT with it and exchanging that at token_uri (per worker thread, refreshed early) */
	char *sa_email;
	char *token_uri;
	struct evp_pkey_st *sa_key;
};

struct cloud {
	struct http_settings http;
	uint64_t multipart_threshold;
	uint64_t part_size;
	int parts_in_flight;
	int list_page; /* entries per LIST page asked of the store; 0: its default */
	struct cloud_s3 s3;
	struct cloud_az az;
	struct cloud_gs gs;
};

/* Config values win over the environment; the environment over ~/.aws/credentials. */
int cloud_load(const struct config *cfg, struct cloud *c, struct err *e);
void cloud_free(struct cloud *c);

#endif
