/* cache.h: the in-memory object cache for remote backends (s3://, az://, gs://), shared by
 * the worker threads, with request coalescing.
 *
 * Entries are whole objects keyed by URI. A GET that misses creates the entry (state
 * FETCHING) and the caller starts one backend GET of the whole object (fetch.c); every other
 * GET of that URI meanwhile waits on the entry. When the fetch ends, each waiter is told
 * through its own event (made active on the waiter's loop) and asks the entry how it went:
 * READY (serve the bytes, any range, by reference: entry buffers are reference-counted and
 * handed to the socket's output with evbuffer_add_reference, never copied), FAILED (the
 * fetch's error, the same for every waiter; nothing is cached), BYPASS (the object is over
 * --cache-max-object or does not fit the budget: go to the backend directly; remembered
 * until the next validation) or STALE (the entry was invalidated meanwhile: look up again).
 *
 * Validation: an entry is served without asking the backend for --cache-validate seconds
 * after it was fetched or last validated; the next GET after that revalidates it with one
 * HEAD (coalesced like a fetch) and compares the etag (size and mtime when the store gives
 * no etag). Unchanged: served, and fresh again. Changed or gone: dropped and fetched anew.
 * With --cache-validate 0 every GET revalidates (a HEAD per GET, never stale).
 *
 * Eviction: S3-FIFO (Yang et al., SOSP 2023) over READY and BYPASS entries, keeping the
 * bytes charged (object size plus a small overhead per entry) within --cache-mem. New
 * objects enter a small FIFO (a tenth of the budget); one evicted from there unread since
 * it came goes, leaving only its key's hash in a ghost FIFO, while one read again moves to
 * the main FIFO. A miss whose key is in the ghost FIFO enters the main FIFO directly. The
 * main FIFO gives each object with hits another round (one hit less) before evicting it. So
 * objects read once (a scan, one job's epoch) pass through the small queue without pushing
 * out the ones several readers share. A hit only bumps a counter. An evicted entry's
 * memory is freed once the last reply sending from it has been written. PUT and DELETE
 * through this server invalidate the URI's entry.
 *
 * One mutex guards the table, the LRU list, the waiter lists and entry states; it is held
 * only for lookups and state changes, never while bytes are copied or sent. */
#ifndef S3DLIOD_CACHE_H
#define S3DLIOD_CACHE_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/queue.h>

#include "backend.h"
#include "err.h"

struct event;
struct cache;
struct cache_entry;

enum cache_state { CACHE_FETCHING, CACHE_READY, CACHE_FAILED, CACHE_BYPASS, CACHE_STALE };

enum cache_queue { CACHE_Q_NONE, CACHE_Q_SMALL, CACHE_Q_MAIN };

/* What cache_get tells its caller to do. */
enum cache_action {
	CACHE_HIT,        /* serve *entry (a reference is held for the caller) */
	CACHE_WAIT,       /* the waiter was queued on an entry; its event fires on news */
	CACHE_FETCH,      /* waiter queued; the caller starts the fetch of *entry (ref held) */
	CACHE_REVALIDATE, /* waiter queued; the caller starts the HEAD of *entry (ref held) */
	CACHE_GO_DIRECT,  /* not cacheable (bypass): read from the backend directly */
};

/* A request waiting on an entry. ev belongs to the waiter's loop; it is made active (from
 * any thread) when the entry's state changes, and the waiter then calls cache_wait_result. */
struct cache_waiter {
	struct event *ev;
	struct cache_entry *entry; /* waited on (a reference is held) */
	int linked;
	TAILQ_ENTRY(cache_waiter) link;
};

/* A READY entry's bytes and description, read-only for as long as a reference is held. */
struct cache_entry {
	char *key;
	const uint8_t *data;
	uint64_t size;
	uint32_t crc; /* CRC32C of the whole object */
	struct backend_info info;
	struct err err; /* FAILED: the fetch's error */
	/* private */
	struct cache *cache;
	atomic_uint refs;
	int state;
	int in_table;
	int revalidating;
	int invalidated; /* changed or replaced: never written to the disk tier */
	uint8_t *buf;
	uint64_t filled;
	uint64_t charged;
	int64_t validated_ns;
	struct cache_entry *hnext;
	int queue;    /* CACHE_Q_*: which eviction queue holds it */
	uint8_t freq; /* hits since it entered its queue, up to 3 (S3-FIFO) */
	TAILQ_ENTRY(cache_entry) q;
	TAILQ_HEAD(, cache_waiter) waiters;
};

struct cache_stats {
	uint64_t hits, misses, coalesced, evictions, bypasses, revalidations, revalidated_changed;
	uint64_t inserted_bytes, evicted_bytes, hit_bytes;
	uint64_t bytes, entries, budget;
	uint64_t disk_hits, disk_writes, disk_evictions, disk_errors;
	uint64_t disk_bytes, disk_entries, disk_budget;
};

/* A cache of budget bytes; objects over max_object bytes are not kept; validate_ns is the
 * freshness period (0: revalidate on every GET). NULL when out of memory. */
struct cache *cache_new(uint64_t budget, uint64_t max_object, int64_t validate_ns);
void cache_free(struct cache *c);

/* Add the disk tier: objects evicted from memory are written to files in dir (made if
 * missing; leftover *.obj files are removed) up to budget bytes, least recently used out
 * first, by one thread of the cache's own; a GET that misses in memory but finds the object
 * on disk (still within --cache-validate) has it read back by that thread, with the others
 * waiting as on a fetch. The index lives in memory only: the tier starts empty. */
int cache_disk_open(struct cache *c, const char *dir, uint64_t budget, struct err *e);

/* Look key up at monotonic time now_ns (see enum cache_action). w->ev must be set. */
int cache_get(struct cache *c, const char *key, int64_t now_ns, struct cache_waiter *w,
              struct cache_entry **entry);

/* After w's event fired: the state of the entry it waited on (enum cache_state); for
 * CACHE_READY *entry is that entry with a reference for the caller, for CACHE_FAILED the
 * error is copied to e. The waiter is free to wait again afterwards. */
int cache_wait_result(struct cache_waiter *w, struct cache_entry **entry, struct err *e);

/* Stop waiting (a cancelled request or a closing connection); safe when not waiting. After
 * it returns the event is not made active any more. */
void cache_waiter_cancel(struct cache_waiter *w);

/* The fetcher: the object is size bytes (info describes it). 0: fill it; -1: not cacheable
 * (waiters have been told to go direct): stop the fetch and call cache_fill_done. */
int cache_fill_begin(struct cache_entry *en, const struct backend_info *info, int64_t now_ns);
void cache_fill_data(struct cache_entry *en, const void *p, size_t n);
/* The fetch ended (rc 0 or -WIRE_E_* with e); wakes the waiters; drops the fetcher's ref. */
void cache_fill_done(struct cache_entry *en, int rc, const struct err *e, int64_t now_ns);

/* The HEAD of a revalidation ended: info as the store says now, or NULL when it failed.
 * Wakes the waiters; drops the revalidator's ref. */
void cache_revalidated(struct cache_entry *en, const struct backend_info *info, int64_t now_ns);

/* Drop key's entry (a PUT or DELETE changed the object). */
void cache_invalidate(struct cache *c, const char *key);

void cache_entry_ref(struct cache_entry *en);
void cache_entry_unref(struct cache_entry *en);
/* For evbuffer_add_reference: drops the reference taken for that piece of output. */
void cache_entry_unref_cb(const void *data, size_t len, void *arg);

void cache_get_stats(struct cache *c, struct cache_stats *st);

#endif
