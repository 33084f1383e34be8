/* metrics.h: the server's counters and the --metrics HTTP endpoint (Prometheus text).
 *
 * Each worker thread has its own struct metrics and is the only one that writes it, so an
 * increment is a relaxed load and store (no locked instruction, no cache line shared between
 * threads on the hot path: a few per request, one per DATA frame). A scrape loads every
 * worker's counters atomically and sums them, adds the object cache's and the CRC cache's
 * own counts, and renders the text format.
 *
 * The endpoint (libevent's evhttp) runs on the main thread's event loop, which otherwise
 * only accepts connections and watches signals: a scrape never competes with a worker.
 * GET /metrics, /healthz (200 while the process runs) and /readyz (200 while serving,
 * 503 once draining). */
#ifndef S3DLIOD_METRICS_H
#define S3DLIOD_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "err.h"

struct event_base;
struct cache;
struct crccache;
struct tokens_registry;

enum metrics_op {
	MOP_GET,
	MOP_STAT,
	MOP_LIST,
	MOP_PUT,
	MOP_DELETE,
	MOP_PREFETCH,
	MOP_MKDIR,
	MOP_RMDIR,
	MOP_N
};
enum metrics_backend { MB_FILE, MB_DIRECT, MB_S3, MB_AZ, MB_GS, MB_NONE, MB_N };

#define METRICS_NBUCKETS 14 /* finite latency buckets; +Inf is the count */
#define METRICS_NCODES 16   /* wire error codes 1..15 */

struct metrics {
	atomic_uint_fast64_t requests[MB_N][MOP_N];
	atomic_uint_fast64_t errors[MB_N][METRICS_NCODES];
	atomic_uint_fast64_t bytes_sent[MB_N];     /* GET payload bytes */
	atomic_uint_fast64_t bytes_received[MB_N]; /* PUT payload bytes */
	/* operations started on a backend (a cache hit starts none) and how long they took */
	atomic_uint_fast64_t backend_requests[MB_N][MOP_N];
	atomic_uint_fast64_t backend_errors[MB_N][MOP_N];
	atomic_uint_fast64_t lat_bucket[MB_N][MOP_N][METRICS_NBUCKETS];
	atomic_uint_fast64_t lat_count[MB_N][MOP_N];
	atomic_uint_fast64_t lat_sum_ns[MB_N][MOP_N];
	atomic_uint_fast64_t connections_total;
	atomic_int_fast64_t connections;
	atomic_int_fast64_t in_flight;
	atomic_uint_fast64_t busy_total;    /* BUSY answers */
	atomic_uint_fast64_t refused_total; /* connections refused at HELLO */
};

/* What a scrape reads (any may be NULL). */
struct metrics_sources {
	struct metrics *m; /* nm of them, one per worker */
	size_t nm;
	struct cache *cache;
	struct crccache *crccache;
	struct tokens_registry *tokens; /* per-tenant lines */
	atomic_int *draining;           /* /readyz: 503 once set */
};

struct metrics_http;

/* The backend index of a backend name ("file", "s3", ...); MB_NONE when unknown. */
int metrics_backend_of(const char *name);
/* The op index of a request frame type; MOP_N when it is not a request. */
int metrics_op_of(uint32_t wire_type);

/* Add to a counter of the calling thread's own struct metrics (one writer: see top). */
static inline void metrics_add(atomic_uint_fast64_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
	                      memory_order_relaxed);
}

static inline void metrics_gauge(atomic_int_fast64_t *g, int64_t d)
{
	atomic_store_explicit(g, atomic_load_explicit(g, memory_order_relaxed) + d,
	                      memory_order_relaxed);
}

/* A backend operation finished after ns nanoseconds (ok 0: it failed). */
void metrics_backend_done(struct metrics *m, int backend, int op, uint64_t ns, int ok);

/* Monotonic nanoseconds. */
uint64_t metrics_now_ns(void);

/* Serve src on url (tcp://HOST:PORT; port 0 picks one) on base. Prints
 * "s3dliod: metrics on http://HOST:PORT" to stderr once bound. */
int metrics_http_new(struct event_base *base, const char *url, const struct metrics_sources *src,
                     struct metrics_http **out, struct err *e);
void metrics_http_free(struct metrics_http *h);

#endif
