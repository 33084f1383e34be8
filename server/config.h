/* config.h: s3dliod's settings, from --config FILE and the command line.
 *
 * The file holds "key = value" lines with the long option names ("listen" and "allow" may
 * repeat; '#' starts a comment); command-line flags apply after it: scalars override,
 * listen/allow entries add to the file's. */
#ifndef S3DLIOD_CONFIG_H
#define S3DLIOD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "err.h"

#define CONFIG_VERSION "0.1.0"
#define CONFIG_DEFAULT_LISTEN "tcp://127.0.0.1:9400"

struct config {
	char **listen; /* tcp://HOST:PORT or unix:///PATH; the default when none given */
	size_t nlisten;
	char **allow;
	size_t nallow;
	int threads;            /* 0: one per core */
	int direct_threads;     /* threads doing direct:// reads, shared by the event loops */
	uint32_t max_in_flight; /* per connection */
	uint32_t max_frame;     /* DATA payload bytes */
	size_t crc_cache;       /* whole-file CRC32C entries kept (0: none) */
	int idle_timeout;       /* seconds; 0: never */
	int drain_timeout;      /* seconds */
	int log_level;          /* enum log_level */
	int log_json;           /* --log-format json */
	pid_t parent_pid;       /* 0: none */
	char *metrics;          /* tcp://HOST:PORT of the Prometheus endpoint; NULL: none */
	char *token_file;       /* bearer tokens and tenants (tokens.h); NULL: local peers only */
	char *config_file;      /* --config, read again on SIGHUP */
	char *tls_cert;         /* PEM certificate chain: tcp:// listeners speak TLS */
	char *tls_key;          /* its PEM private key */
	char *tls_client_ca;    /* PEM CA(s) that must have signed client certificates */
	/* the object cache of remote backends (cache.h) */
	uint64_t cache_mem;        /* byte budget; 0: no cache */
	uint64_t cache_max_object; /* larger objects are not cached; 0: cache_mem / 8 */
	int cache_validate_ms;     /* served without asking the backend for this long */
	char *cache_dir;           /* the disk tier's directory; NULL: none */
	uint64_t cache_disk;       /* its byte budget */
	/* remote backends (s3://, az://, gs://) */
	uint64_t multipart_threshold; /* larger uploads go in parts */
	uint64_t part_size;
	int parts_in_flight;    /* per upload */
	int list_page_size;     /* entries per remote LIST page; 0: the store's default */
	int connect_timeout_ms; /* --connect-timeout SECS (fractions allowed as ms) */
	int op_timeout_ms;      /* --op-timeout SECS */
	int retries;            /* attempts after the first */
	int retry_base_ms;      /* first backoff */
	char *s3_endpoint;      /* else AWS_ENDPOINT_URL */
	char *s3_region;        /* else AWS_REGION / AWS_DEFAULT_REGION */
	char *s3_profile;       /* else AWS_PROFILE */
	char *s3_access_key_id; /* else AWS_ACCESS_KEY_ID, then the profile */
	char *s3_secret_access_key;
	char *s3_session_token;
	int s3_path_style;    /* -1: path style when an endpoint is set */
	char *az_endpoint;    /* else AZURE_STORAGE_ENDPOINT */
	char *az_account;     /* else AZURE_STORAGE_ACCOUNT */
	char *az_key;         /* else AZURE_STORAGE_KEY (base64) */
	char *az_sas_token;   /* else AZURE_STORAGE_SAS_TOKEN */
	char *gs_endpoint;    /* else STORAGE_EMULATOR_HOST, GCS_ENDPOINT_URL */
	char *gs_token;       /* else GOOGLE_OAUTH_ACCESS_TOKEN */
	char *gs_credentials; /* else GOOGLE_APPLICATION_CREDENTIALS */
};

enum config_result {
	CONFIG_RUN = 0,  /* start the server */
	CONFIG_EXIT = 1, /* --help or --version was printed: exit 0 */
};

void config_init(struct config *c);
void config_free(struct config *c);

/* Parse argv (and the --config file it names). Returns CONFIG_RUN, CONFIG_EXIT, or a
 * negative code with e naming the bad flag or line (the caller exits 2). */
int config_parse(struct config *c, int argc, char **argv, struct err *e);

void config_usage(FILE *f);

/* SIGHUP: read the --config file again; *level is its log-level, or -1 when it sets none. */
int config_reload_log_level(const char *path, int *level, struct err *e);

#endif
