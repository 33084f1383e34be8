/* fetch.c: cache fills and revalidations on a worker's loop (see fetch.h). */
#include "fetch.h"

#include <event2/event.h>
#include <stdlib.h>
#include <time.h>

#include "metrics.h"

struct fetch {
	struct fetch_loop *fl;
	TAILQ_ENTRY(fetch) link;
	struct cache_entry *en;
	const struct backend_async_ops *aops;
	struct backend_op *op; /* NULL once done */
	struct event *stop_ev; /* stops an uncacheable fetch outside the backend's callback */
	int revalidate;
	int refused; /* cache_fill_begin said no: drop the rest */
	int have_info;
	struct backend_info info; /* revalidate: what the HEAD said */
	int backend;
	uint64_t t0;
};

void fetch_loop_init(struct fetch_loop *fl, struct event_base *base, struct backend_ctx *bctx,
                     struct metrics *m)
{
	fl->base = base;
	fl->bctx = bctx;
	fl->metrics = m;
	fl->on_idle = NULL;
	fl->idle_arg = NULL;
	TAILQ_INIT(&fl->fetches);
}

static void fetch_free(struct fetch *f)
{
	TAILQ_REMOVE(&f->fl->fetches, f, link);
	if (f->op)
		f->aops->cancel(f->op);
	if (f->stop_ev)
		event_free(f->stop_ev);
	struct fetch_loop *fl = f->fl;
	free(f);
	if (TAILQ_EMPTY(&fl->fetches) && fl->on_idle)
		fl->on_idle(fl->idle_arg);
}

/* Report the outcome to the cache (which drops the fetch's reference) and free. */
static void fetch_end(struct fetch *f, int rc, const struct err *e)
{
	int64_t now = (int64_t)metrics_now_ns();
	if (f->fl->metrics && f->t0)
		metrics_backend_done(f->fl->metrics, f->backend, f->revalidate ? MOP_STAT : MOP_GET,
		                     (uint64_t)now - f->t0, rc == 0 || f->refused);
	if (f->revalidate)
		cache_revalidated(f->en, rc == 0 && f->have_info ? &f->info : NULL, now);
	else
		cache_fill_done(f->en, rc, e, now);
	f->en = NULL;
	fetch_free(f);
}

static void fetch_header(void *arg, uint64_t total, const struct backend_info *info)
{
	(void)total;
	struct fetch *f = arg;
	if (f->revalidate) {
		f->info = *info;
		f->have_info = 1;
		return;
	}
	if (cache_fill_begin(f->en, info, (int64_t)metrics_now_ns()) < 0) {
		/* too big or no room: the waiters read directly; stop this transfer, but not
		 * from inside the backend's own callback */
		f->refused = 1;
		event_active(f->stop_ev, 0, 0);
	}
}

static void fetch_data(void *arg, const void *p, size_t n)
{
	struct fetch *f = arg;
	if (!f->refused)
		cache_fill_data(f->en, p, n);
}

static void fetch_data_ref(void *arg, const void *p, size_t n,
                           void (*free_fn)(const void *p, size_t n, void *free_arg), void *free_arg)
{
	fetch_data(arg, p, n);
	free_fn(p, n, free_arg);
}

static void fetch_done(void *arg, int rc, const struct err *e)
{
	struct fetch *f = arg;
	f->op = NULL; /* the backend has freed it */
	fetch_end(f, rc, e);
}

static void fetch_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct fetch *f = arg;
	struct err e;
	err_set(&e, WIRE_E_INTERNAL, "%s: not cached", f->en->key);
	fetch_end(f, -WIRE_E_INTERNAL, &e); /* the entry is BYPASS already: nobody sees e */
}

void fetch_start(struct fetch_loop *fl, struct cache_entry *en, const struct uri *u,
                 const struct backend_ops *ops, int revalidate)
{
	struct err e;
	int rc = -WIRE_E_INTERNAL;
	err_set(&e, WIRE_E_INTERNAL, "%s: out of memory", u->text);
	struct fetch *f = calloc(1, sizeof(*f));
	if (!f)
		goto fail;
	f->fl = fl;
	f->en = en;
	f->aops = ops->async;
	f->revalidate = revalidate;
	f->backend = metrics_backend_of(ops->name);
	TAILQ_INSERT_TAIL(&fl->fetches, f, link);
	f->stop_ev = event_new(fl->base, -1, 0, fetch_stop_cb, f);
	if (!f->stop_ev) {
		fetch_free(f);
		goto fail;
	}
	struct backend_sink s = {.arg = f,
	                         .header = fetch_header,
	                         .data = fetch_data,
	                         .data_ref = fetch_data_ref,
	                         .done = fetch_done};
	if (fl->metrics)
		metrics_add(
		    &fl->metrics->backend_requests[f->backend][revalidate ? MOP_STAT : MOP_GET], 1);
	f->t0 = metrics_now_ns();
	rc = revalidate ? f->aops->stat(fl->bctx, u, &s, &f->op, &e)
	                : f->aops->get(fl->bctx, u, 0, WIRE_TO_END, &s, &f->op, &e);
	if (rc < 0) {
		f->op = NULL;
		fetch_end(f, rc, &e);
	}
	return;
fail:
	if (revalidate)
		cache_revalidated(en, NULL, (int64_t)metrics_now_ns());
	else
		cache_fill_done(en, rc, &e, (int64_t)metrics_now_ns());
}

void fetch_loop_stop(struct fetch_loop *fl)
{
	struct fetch *f;
	while ((f = TAILQ_FIRST(&fl->fetches))) {
		struct err e;
		err_set(&e, WIRE_E_SHUTDOWN, "%s: the server is shutting down", f->en->key);
		if (f->op) {
			f->aops->cancel(f->op);
			f->op = NULL;
		}
		fetch_end(f, -WIRE_E_SHUTDOWN, &e);
	}
}
