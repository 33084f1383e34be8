/* tokens.h: bearer tokens (--token-file), tenants, and their limits.
 *
 * The token file has one token per line ('#' starts a comment line, blank lines are skipped):
 *
 *   TOKEN NAME ro|rw PREFIX[,PREFIX...] [max-conns=N] [max-in-flight=N] [max-bytes-per-sec=B]
 *
 * TOKEN is 1 to 1024 printable ASCII bytes (no spaces); NAME names the tenant in errors,
 * logs and metrics ([A-Za-z0-9_.-], several tokens may share one); ro allows GET, STAT,
 * LIST and PREFETCH, rw also PUT and DELETE; a PREFIX is a URI prefix matched on whole path
 * segments of the parsed URI like --allow (a missing trailing slash is added), or '*' for
 * everything --allow serves. Limits are per tenant (the tightest of its lines wins; absent or 0:
 * none); B takes k/m/g suffixes. A request must pass --allow and its token's prefixes.
 *
 * The table is immutable once loaded and reference-counted: SIGHUP loads a new one and
 * swaps it in; connections notice the new generation at their next request and look their
 * token up again (a token no longer listed closes the connection). Tenant state (open
 * connections, requests in flight, the byte-rate bucket, counters) lives in the registry by
 * tenant name and survives reloads. */
#ifndef S3DLIOD_TOKENS_H
#define S3DLIOD_TOKENS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct evbuffer;
struct uri;

/* What is shared by every token of one tenant name, across reloads. */
struct tenant {
	char *name;
	/* limits of the current table (0: none) */
	atomic_uint max_conns;
	atomic_uint max_in_flight;
	atomic_uint_fast64_t max_bps;
	/* state */
	atomic_uint conns;
	atomic_uint in_flight;
	pthread_mutex_t mu; /* guards the bucket */
	double bucket;      /* bytes that may still go out now; negative: debt */
	uint64_t bucket_ns;
	/* counters (metrics) */
	atomic_uint_fast64_t requests, busy, refused, bytes;
	struct tenant *next;
};

/* A URI prefix of a token, parsed like a request URI (so "gcs://" is "gs://", schemes are
 * case-insensitive and repeated slashes collapse) and matched on the parsed path. */
struct token_prefix {
	char *text; /* as written, trailing '/' added; "*" for everything */
	int scheme; /* enum uri_scheme; 0 for "*" */
	char *path; /* the parsed path, ending in '/' */
	size_t path_len;
};

struct token {
	char *token;
	size_t len;
	int rw;
	struct token_prefix *prefixes;
	size_t nprefixes;
	struct tenant *tenant;
};

struct tokens {
	atomic_uint refs;
	uint64_t gen;
	struct token *v;
	size_t n;
};

struct tokens_registry {
	char *path;         /* NULL: no token file (loopback and Unix clients only) */
	pthread_mutex_t mu; /* guards cur and the tenant list */
	struct tokens *cur;
	atomic_uint_fast64_t gen;
	struct tenant *tenants;
};

/* Load path (NULL: tokens off). */
int tokens_registry_init(struct tokens_registry *reg, const char *path, struct err *e);
void tokens_registry_free(struct tokens_registry *reg);
/* Read the file again and swap the table in; on error the old table stays. */
int tokens_reload(struct tokens_registry *reg, struct err *e);

/* The current table, with a reference; NULL when tokens are off. */
struct tokens *tokens_acquire(struct tokens_registry *reg);
void tokens_release(struct tokens *t);
static inline uint64_t tokens_gen(struct tokens_registry *reg)
{
	return atomic_load_explicit(&reg->gen, memory_order_acquire);
}

/* The entry for a presented token (compared in constant time), or NULL. */
const struct token *tokens_find(const struct tokens *t, const char *tok, size_t len);

/* PERMISSION (e names the tenant, the right and the URI) unless tk may do type on u. */
int tokens_check(const struct token *tk, uint32_t wire_type, const struct uri *u, struct err *e);

/* Limits. enter calls return 0, or -WIRE_E_BUSY with e and *retry_ms (nothing counted). */
int tenant_conn_enter(struct tenant *t, uint32_t *retry_ms, struct err *e);
void tenant_conn_leave(struct tenant *t);
int tenant_req_enter(struct tenant *t, const char *uri, uint32_t *retry_ms, struct err *e);
void tenant_req_leave(struct tenant *t);
/* n bytes went out or came in for the tenant (the rate bucket pays for them). */
void tenant_charge(struct tenant *t, uint64_t n);

/* Per-tenant lines for /metrics. */
void tokens_render_metrics(struct tokens_registry *reg, struct evbuffer *b);

#endif
