/* fetch.h: the backend reads that fill the object cache (cache.h), on a worker's loop.
 *
 * A fetch belongs to no connection: the request that missed only waits on the entry like
 * every other, so a requester that cancels or disconnects does not stop the fetch the
 * others wait for. A fetch GETs the whole object into the entry (cache_fill_*); a
 * revalidation HEADs it (cache_revalidated). Each worker has one fetch_loop; at its stop the
 * fetches still running are cancelled and their waiters get SHUTDOWN. */
#ifndef S3DLIOD_FETCH_H
#define S3DLIOD_FETCH_H

#include <sys/queue.h>

#include "backend.h"
#include "cache.h"
#include "err.h"

struct event_base;
struct metrics;
struct fetch;

struct fetch_loop {
	struct event_base *base;
	struct backend_ctx *bctx;
	struct metrics *metrics;
	TAILQ_HEAD(, fetch) fetches;
	/* called when the last fetch of the loop ended (a draining worker waits for that) */
	void (*on_idle)(void *arg);
	void *idle_arg;
};

void fetch_loop_init(struct fetch_loop *fl, struct event_base *base, struct backend_ctx *bctx,
                     struct metrics *m);
static inline int fetch_loop_busy(const struct fetch_loop *fl)
{
	return !TAILQ_EMPTY(&fl->fetches);
}
/* Cancel what still runs (their entries fail with SHUTDOWN). */
void fetch_loop_stop(struct fetch_loop *fl);

/* Start filling en (whose fetcher reference passes to the fetch) from u, or, with revalidate,
 * checking it with a HEAD. On failure the entry has been failed (or marked changed) already:
 * its waiters hear about it through their events. */
void fetch_start(struct fetch_loop *fl, struct cache_entry *en, const struct uri *u,
                 const struct backend_ops *ops, int revalidate);

#endif
