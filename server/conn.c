/* conn.c: one client connection (see conn.h and schema/PROTOCOL.md).
 *
 * Input: frames are decoded straight from the bufferevent's input buffer; a PUT's DATA
 * payload is written to the backend as it arrives, never buffered whole.
 *
 * Output: small replies (HEADER, END, ERROR, WELCOME) are written as they arise. GET and
 * LIST replies are streams: each sits in a run queue and the pump hands out one DATA frame
 * (or a batch of entries) per turn, round-robin, while the output buffer is below a
 * high-water mark; the write callback (low-water mark) runs the pump again. So a small GET
 * is not stuck behind a large one, and a slow reader holds at most ~high_water bytes.
 *
 * Every request ends with exactly one terminal frame (END or ERROR). A PUT that fails
 * before its END arrives stays in the table as a "discard" entry so its remaining DATA and
 * END frames are swallowed and the stream stays in sync. */
#include "conn.h"

#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include "cache.h"
#include "fetch.h"
#include "metrics.h"
#include "tokens.h"

#define CONN_MIN_HIGH_WATER (8u << 20)
#define CONN_LIST_BATCH 256
#define CONN_PUT_BATCH (256u << 10) /* gather this much upload before a write */
#define CONN_CLOSE_TIMEOUT 10       /* seconds to flush the last frames to a closing peer */
#define CONN_MAX_SINGLE_IO (4 << 20)
#define CONN_DRAIN_HELLO_WAIT 1       /* seconds a draining server waits for a new peer's HELLO */
#define CONN_ASYNC_FLUSH (256u << 10) /* remote GET bytes gathered into one DATA frame */

struct req {
	uint64_t id;
	uint32_t type;
	int discard; /* failed or cancelled PUT: swallow its DATA and END, reply nothing more */
	int queued;  /* in the run queue */
	struct req *hnext;
	TAILQ_ENTRY(req) run;
	char *uri;
	const struct backend_ops *ops;
	/* GET */
	struct backend_reader *rd;
	uint64_t obj_off; /* object offset of the next byte to send */
	uint64_t sent;    /* reply bytes sent */
	uint64_t total;   /* reply bytes announced in HEADER */
	uint32_t crc;     /* GET: of bytes sent; PUT: of bytes received */
	int crc_known;    /* GET of a whole file: crc came from the backend (whole_crc) */
	/* LIST */
	struct backend_list list;
	size_t next_entry;
	/* PUT */
	struct backend_writer *wr;
	uint64_t put_size;
	uint64_t received;
	/* asynchronous operations (remote backends, direct:// GET) */
	struct conn *c;
	const struct backend_async_ops *aops;
	struct backend_op *aop; /* NULL once the backend reported done */
	struct evbuffer *pend;  /* GET bytes not yet framed */
	uint64_t count;         /* LIST entries sent */
	int paused;             /* the backend was asked to pause for our output */
	int committing;         /* PUT: END received, waiting for the backend */
	uint64_t t0;            /* when the backend operation started (metrics) */
	int backend;            /* enum metrics_backend */
	/* GET/PREFETCH through the object cache */
	struct cache_entry *ce; /* serving from this entry (a reference is held) */
	struct cache_waiter cw; /* waiting on an entry */
	int waiting;            /* cw is queued (counted in n_waiting) */
	uint64_t want_off, want_len;
	struct tenant *tenant; /* counted in this tenant's requests in flight (NULL: not): the
	                        * connection's tenant may change on SIGHUP before the request ends */
};

TAILQ_HEAD(req_queue, req);

struct conn {
	const struct conn_env *env;
	void *owner;
	struct bufferevent *bev;
	struct event *close_ev;
	struct evbuffer *chunk; /* a backend read lands here, then moves behind its header */
	struct evbuffer *hdr;   /* a frame header is encoded here, then moved to the output */
	char peer[64];
	int hello_done;
	int draining;
	int closing;        /* flushing the last frames; reads nothing more */
	int reading_paused; /* our output is backed up: stop reading requests */
	int pumping;
	int processing;
	uint32_t n_active; /* requests counted against max_in_flight */
	uint32_t n_reqs;   /* entries in the table, discards included */
	struct req **tab;
	uint32_t tab_size; /* power of two */
	struct req_queue runq;
	struct req *payload_req; /* owner of the DATA payload being read; NULL: discard it */
	uint64_t payload_left;
	size_t high_water;
	size_t pause_at;
	struct event *wake_ev; /* an upload has room again: read input */
	int input_blocked;     /* an upload is full: input reading stopped */
	uint32_t n_paused;     /* remote transfers paused for our output */
	uint32_t n_async;      /* remote operations in flight */
	uint32_t n_waiting;    /* requests waiting on the object cache */
	int local;             /* a Unix-socket or loopback peer */
	int tls;               /* the bufferevent is a bufferevent_openssl */
	/* with --token-file: the HELLO token, its table entry and its tenant */
	char *token;
	size_t token_len;
	struct tokens *tokens; /* the table tk lives in (a reference) */
	const struct token *tk;
	struct tenant *tenant; /* counted in its connections */
};

static void conn_process(struct conn *c);
static void conn_pump(struct conn *c);

/* ---- output ---- */

static int conn_send(struct conn *c, const struct wire_frame *f)
{
	uint8_t buf[WIRE_MAX_HEADER];
	size_t n;
	int rc = wire_encode(f, buf, sizeof(buf), &n);
	if (rc != WIRE_OK) {
		log_write(c->env->log, LOGL_ERROR,
		          "conn=%s id=%" PRIu64 " msg=\"cannot encode %s: %s\"", c->peer, f->id,
		          wire_type_str(f->type), wire_result_str(rc));
		return -1;
	}
	/* Not evbuffer_add on the output: libevent sizes a new chain after the last one, and
	 * after a file segment or a reference (a DATA payload) that is the payload's length, so
	 * every header would malloc (and fault, and free) up to max_frame bytes. A fresh chain
	 * in the empty staging buffer is small; moving it links it without a copy. */
	if (evbuffer_add(c->hdr, buf, n) < 0)
		return -1;
	return evbuffer_add_buffer(bufferevent_get_output(c->bev), c->hdr);
}

static void conn_log_error(struct conn *c, uint64_t id, const char *uri, uint32_t code,
                           const char *msg)
{
	char u[512], m[1024];
	int level = LOGL_ERROR;
	if (code == WIRE_E_BUSY || code == WIRE_E_SHUTDOWN || code == WIRE_E_CANCELLED)
		level = LOGL_INFO; /* the client asked for these or will retry */
	log_write(c->env->log, level, "conn=%s id=%" PRIu64 " uri=%s code=%s msg=%s", c->peer, id,
	          log_value(u, sizeof(u), uri ? uri : "-", 0), wire_code_str(code),
	          log_value(m, sizeof(m), msg, 1));
}

/* The backend a URI names, for metrics ("s3://b/k": s3). */
static int conn_backend_of_uri(const char *uri)
{
	char scheme[8];
	const char *p = uri ? strstr(uri, "://") : NULL;
	if (!p || p - uri >= (ptrdiff_t)sizeof(scheme))
		return MB_NONE;
	memcpy(scheme, uri, (size_t)(p - uri));
	scheme[p - uri] = '\0';
	return metrics_backend_of(scheme);
}

static void conn_send_error(struct conn *c, uint64_t id, const char *uri, uint32_t code,
                            uint32_t retry_ms, const char *msg)
{
	struct wire_frame f;
	if (c->env->metrics && code < METRICS_NCODES) {
		metrics_add(&c->env->metrics->errors[conn_backend_of_uri(uri)][code], 1);
		if (code == WIRE_E_BUSY)
			metrics_add(&c->env->metrics->busy_total, 1);
	}
	wire_frame_init(&f, WIRE_ERROR, id);
	f.code = code;
	f.message = msg;
	f.message_len = (uint32_t)strnlen(msg, WIRE_MAX_MESSAGE);
	f.retry_ms = retry_ms;
	conn_log_error(c, id, uri, code, msg);
	conn_send(c, &f);
}

static void conn_send_end(struct conn *c, uint64_t id, uint64_t size, uint32_t crc)
{
	struct wire_frame f;
	wire_frame_init(&f, WIRE_END, id);
	f.size = size;
	f.crc32c = crc;
	conn_send(c, &f);
}

static void conn_send_header(struct conn *c, uint64_t id, uint64_t size,
                             const struct backend_info *info)
{
	struct wire_frame f;
	wire_frame_init(&f, WIRE_HEADER, id);
	f.size = size;
	f.object_size = info->size;
	f.mtime = info->mtime_ns;
	f.etag = info->etag_len ? info->etag : NULL;
	f.etag_len = info->etag_len;
	conn_send(c, &f);
}

/* Close once the output is flushed: the peer gets the frames already queued (the ERROR
 * that explains the close, typically). Requests are dropped in conn_free. */
static void conn_close(struct conn *c)
{
	if (c->closing)
		return;
	c->closing = 1;
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	struct timeval tv = {CONN_CLOSE_TIMEOUT, 0};
	bufferevent_set_timeouts(c->bev, NULL, &tv);
	event_active(c->close_ev, 0, 0);
}

/* A frame this server cannot accept: say why and close this connection only. */
static void conn_protocol_error(struct conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void conn_protocol_error(struct conn *c, const char *fmt, ...)
{
	char msg[WIRE_MAX_MESSAGE + 1];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	conn_send_error(c, 0, NULL, WIRE_E_PROTOCOL, 0, msg);
	conn_close(c);
}

/* ---- the request table ---- */

static uint32_t conn_hash(const struct conn *c, uint64_t id)
{
	return (uint32_t)((id * 0x9E3779B97F4A7C15ull) >> 32) & (c->tab_size - 1);
}

static struct req *conn_find(struct conn *c, uint64_t id)
{
	for (struct req *r = c->tab[conn_hash(c, id)]; r; r = r->hnext)
		if (r->id == id)
			return r;
	return NULL;
}

static int conn_tab_grow(struct conn *c)
{
	uint32_t size = c->tab_size * 2;
	struct req **tab = calloc(size, sizeof(*tab));
	if (!tab)
		return -1;
	struct req **old = c->tab;
	uint32_t old_size = c->tab_size;
	c->tab = tab;
	c->tab_size = size;
	for (uint32_t i = 0; i < old_size; i++) {
		struct req *r = old[i];
		while (r) {
			struct req *next = r->hnext;
			uint32_t h = conn_hash(c, r->id);
			r->hnext = tab[h];
			tab[h] = r;
			r = next;
		}
	}
	free(old);
	return 0;
}

/* A table entry for f's request, counted in flight; NULL (with e) when out of memory. */
static struct req *conn_req_new(struct conn *c, const struct wire_frame *f, const char *uri,
                                const struct backend_ops *ops, struct err *e)
{
	if (c->n_reqs >= c->tab_size && conn_tab_grow(c) < 0) {
		err_set(e, WIRE_E_INTERNAL, "%s: out of memory", uri);
		return NULL;
	}
	struct req *r = calloc(1, sizeof(*r));
	if (!r || !(r->uri = strdup(uri))) {
		free(r);
		err_set(e, WIRE_E_INTERNAL, "%s: out of memory", uri);
		return NULL;
	}
	r->id = f->id;
	r->type = f->type;
	r->ops = ops;
	r->c = c;
	r->backend = metrics_backend_of(ops ? ops->name : NULL);
	uint32_t h = conn_hash(c, r->id);
	r->hnext = c->tab[h];
	c->tab[h] = r;
	c->n_reqs++;
	c->n_active++;
	if (c->env->metrics)
		metrics_gauge(&c->env->metrics->in_flight, 1);
	return r;
}

/* Release what the request holds but keep its table entry. */
static void conn_req_release(struct conn *c, struct req *r)
{
	if (r->queued) {
		TAILQ_REMOVE(&c->runq, r, run);
		r->queued = 0;
	}
	if (r->rd) {
		r->ops->close_read(r->rd);
		r->rd = NULL;
	}
	if (r->wr) {
		r->ops->put_abort(r->wr);
		r->wr = NULL;
	}
	if (r->aop) {
		r->aops->cancel(r->aop);
		r->aop = NULL;
		c->n_async--;
	}
	if (r->paused) {
		r->paused = 0;
		c->n_paused--;
	}
	if (r->pend) {
		evbuffer_free(r->pend);
		r->pend = NULL;
	}
	backend_list_free(&r->list);
	if (r->waiting) {
		r->waiting = 0;
		c->n_waiting--;
	}
	cache_waiter_cancel(&r->cw);
	if (r->cw.ev) {
		event_free(r->cw.ev);
		r->cw.ev = NULL;
	}
	if (r->ce) {
		cache_entry_unref(r->ce);
		r->ce = NULL;
	}
	if (r->tenant) {
		tenant_req_leave(r->tenant);
		r->tenant = NULL;
	}
	if (!r->discard) {
		c->n_active--;
		if (c->env->metrics)
			metrics_gauge(&c->env->metrics->in_flight, -1);
		r->discard = 1; /* released: no longer in flight */
	}
}

static void conn_req_free(struct conn *c, struct req *r)
{
	conn_req_release(c, r);
	struct req **pp = &c->tab[conn_hash(c, r->id)];
	while (*pp != r)
		pp = &(*pp)->hnext;
	*pp = r->hnext;
	c->n_reqs--;
	if (c->payload_req == r)
		c->payload_req = NULL;
	free(r->uri);
	free(r);
}

/* After a request ended: a draining connection closes once nothing is in flight. One that
 * has not said HELLO yet (it arrived as the server began to stop) waits for its first
 * frames, briefly, so it gets WELCOME and SHUTDOWN rather than a reset. */
static void conn_after_request(struct conn *c)
{
	if (c->draining && c->n_active == 0 && !c->processing && c->hello_done)
		conn_close(c);
}

/* The request is over (its terminal frame is out). */
static void conn_req_done(struct conn *c, struct req *r)
{
	conn_req_free(c, r);
	conn_after_request(c);
}

/* End a request with ERROR. An upload keeps its entry (as a discard) until its END. */
static void conn_req_fail(struct conn *c, struct req *r, const struct err *e)
{
	conn_send_error(c, r->id, r->uri, e->code, 0, e->msg);
	if (r->type == WIRE_PUT) {
		conn_req_release(c, r);
		conn_after_request(c);
	} else {
		conn_req_done(c, r);
	}
}

/* ---- streams ---- */

static void conn_count_sent(struct conn *c, struct req *r, uint64_t n)
{
	if (c->env->metrics)
		metrics_add(&c->env->metrics->bytes_sent[r->backend], n);
	if (c->tenant)
		tenant_charge(c->tenant, n);
}

/* The cache key of a remote URI: the scheme lower-cased, with gcs:// spelled gs://, and the
 * rest as sent (uri_parse keeps remote paths verbatim). Every spelling of one object is then
 * one entry, and a PUT or DELETE under any spelling drops it. */
static const char *conn_cache_key(const char *uri, char *buf, size_t cap)
{
	const char *sep = strstr(uri, "://");
	size_t n = sep ? (size_t)(sep - uri) : 0;
	if (!sep || n >= 8 || strlen(sep) + 8 >= cap)
		return uri;
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)tolower((unsigned char)uri[i]);
	buf[n] = '\0';
	if (strcmp(buf, "gcs") == 0)
		n = 2; /* "gs" */
	snprintf(buf + n, cap - n, "%s", sep);
	return buf;
}

/* A DATA header went out without its payload, which would desynchronise the stream: the
 * connection is lost. Returns 0 (the GET is over) for the step functions. */
static int conn_output_failed(struct conn *c, const struct req *r)
{
	log_write(c->env->log, LOGL_ERROR, "conn=%s id=%" PRIu64 " msg=\"output failed\"", c->peer,
	          r->id);
	conn_close(c);
	return 0;
}

/* n more bytes of r's reply are queued: 1 while more remain, else its END is sent (0). */
static int conn_get_advance(struct conn *c, struct req *r, size_t n)
{
	conn_count_sent(c, r, n);
	r->sent += n;
	r->obj_off += n;
	if (r->sent < r->total)
		return 1;
	conn_send_end(c, r->id, r->total, r->crc);
	conn_req_done(c, r);
	return 0;
}

/* One DATA frame of a GET served from a cache entry, by reference; 1 while more remains. */
static int conn_step_cached(struct conn *c, struct req *r)
{
	uint64_t left = r->total - r->sent;
	size_t n = left < c->env->max_frame ? (size_t)left : c->env->max_frame;
	const uint8_t *p = r->ce->data + r->obj_off;
	struct wire_frame f;
	wire_frame_init(&f, WIRE_DATA, r->id);
	f.offset = r->sent;
	f.payload_len = n;
	if (!r->crc_known)
		r->crc = wire_crc32c(r->crc, p, n);
	cache_entry_ref(r->ce); /* the output's, dropped once these bytes are written */
	if (conn_send(c, &f) < 0) {
		cache_entry_unref(r->ce);
		conn_close(c);
		return 0;
	}
	if (evbuffer_add_reference(bufferevent_get_output(c->bev), p, n, cache_entry_unref_cb,
	                           r->ce) < 0) {
		cache_entry_unref(r->ce);
		return conn_output_failed(c, r);
	}
	return conn_get_advance(c, r, n);
}

/* One DATA frame of a GET; 1 while more remains. */
static int conn_step_get(struct conn *c, struct req *r)
{
	struct err e;
	if (r->ce)
		return conn_step_cached(c, r);
	uint64_t left = r->total - r->sent;
	size_t n = left < c->env->max_frame ? (size_t)left : c->env->max_frame;
	int rc = r->ops->read(r->rd, c->env->bctx, r->obj_off, n, c->chunk,
	                      r->crc_known ? NULL : &r->crc, &e);
	if (rc < 0) {
		evbuffer_drain(c->chunk, evbuffer_get_length(c->chunk));
		conn_req_fail(c, r, &e);
		return 0;
	}
	struct wire_frame f;
	wire_frame_init(&f, WIRE_DATA, r->id);
	f.offset = r->sent;
	f.payload_len = n;
	if (conn_send(c, &f) < 0 ||
	    evbuffer_add_buffer(bufferevent_get_output(c->bev), c->chunk) < 0)
		return conn_output_failed(c, r);
	return conn_get_advance(c, r, n);
}

/* A batch of LIST entries; 1 while more remain. */
static int conn_step_list(struct conn *c, struct req *r)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	for (int i = 0; i < CONN_LIST_BATCH && r->next_entry < r->list.n; i++) {
		const struct backend_entry *en = &r->list.v[r->next_entry++];
		struct wire_frame f;
		wire_frame_init(&f, WIRE_ENTRY, r->id);
		f.uri = en->uri;
		f.uri_len = (uint32_t)strlen(en->uri);
		f.size = en->size;
		f.mtime = en->mtime_ns;
		f.is_prefix = (uint32_t)en->is_prefix;
		conn_send(c, &f);
		if (evbuffer_get_length(out) >= c->high_water)
			break;
	}
	if (r->next_entry < r->list.n)
		return 1;
	conn_send_end(c, r->id, r->list.n, 0);
	conn_req_done(c, r);
	return 0;
}

static void conn_enqueue(struct conn *c, struct req *r)
{
	TAILQ_INSERT_TAIL(&c->runq, r, run);
	r->queued = 1;
}

/* Round-robin over the streams while the peer keeps up. */
static void conn_pump(struct conn *c)
{
	if (c->pumping)
		return;
	c->pumping = 1;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	while (!c->closing && !TAILQ_EMPTY(&c->runq) && evbuffer_get_length(out) < c->high_water) {
		struct req *r = TAILQ_FIRST(&c->runq);
		TAILQ_REMOVE(&c->runq, r, run);
		r->queued = 0;
		int more = r->type == WIRE_GET ? conn_step_get(c, r) : conn_step_list(c, r);
		if (more)
			conn_enqueue(c, r);
	}
	c->pumping = 0;
}

/* ---- asynchronous operations (remote backends, direct:// GET) ----
 *
 * The backend calls these from the worker's loop as its HTTP transfers (or pool reads)
 * progress. GET bytes are gathered into DATA frames of up to CONN_ASYNC_FLUSH bytes (one
 * copy into our output), or, from data_ref, become one DATA frame each by reference; when
 * the output passes the high-water mark the transfer is paused, and the write callback
 * resumes it on drain. An upload whose parts are all in flight makes us stop
 * reading input until the backend wakes us. */

static void conn_a_backpressure(struct conn *c, struct req *r)
{
	if (!r->paused && r->aop &&
	    evbuffer_get_length(bufferevent_get_output(c->bev)) >= c->high_water) {
		r->paused = 1;
		c->n_paused++;
		r->aops->pause(r->aop, 1);
	}
}

/* Move the gathered GET bytes out as DATA frames. */
static int conn_a_flush(struct conn *c, struct req *r)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	size_t n = evbuffer_get_length(r->pend);
	while (n) {
		size_t take = n < c->env->max_frame ? n : c->env->max_frame;
		struct wire_frame f;
		wire_frame_init(&f, WIRE_DATA, r->id);
		f.offset = r->sent;
		f.payload_len = take;
		if (conn_send(c, &f) < 0 ||
		    evbuffer_remove_buffer(r->pend, out, take) != (int)take) {
			log_write(c->env->log, LOGL_ERROR,
			          "conn=%s id=%" PRIu64 " msg=\"output failed\"", c->peer, r->id);
			conn_close(c);
			return -1;
		}
		conn_count_sent(c, r, take);
		r->sent += take;
		n -= take;
	}
	return 0;
}

static void conn_a_header(void *arg, uint64_t total, const struct backend_info *info)
{
	struct req *r = arg;
	if (r->type == WIRE_STAT) {
		conn_send_header(r->c, r->id, info->size, info);
		return;
	}
	r->total = total;
	conn_send_header(r->c, r->id, total, info);
}

static void conn_a_data(void *arg, const void *p, size_t n)
{
	struct req *r = arg;
	struct conn *c = r->c;
	if (c->closing)
		return;
	r->crc = wire_crc32c(r->crc, p, n);
	if (evbuffer_add(r->pend, p, n) < 0) {
		conn_close(c);
		return;
	}
	if (evbuffer_get_length(r->pend) >= CONN_ASYNC_FLUSH && conn_a_flush(c, r) < 0)
		return;
	conn_a_backpressure(c, r);
}

static void conn_a_data_ref(void *arg, const void *p, size_t n,
                            void (*free_fn)(const void *p, size_t n, void *free_arg),
                            void *free_arg)
{
	struct req *r = arg;
	struct conn *c = r->c;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	if (c->closing || conn_a_flush(c, r) < 0) {
		free_fn(p, n, free_arg);
		return;
	}
	struct wire_frame f;
	wire_frame_init(&f, WIRE_DATA, r->id);
	f.offset = r->sent;
	f.payload_len = n;
	if (conn_send(c, &f) < 0) {
		free_fn(p, n, free_arg);
		conn_close(c);
		return;
	}
	r->crc = wire_crc32c(r->crc, p, n); /* before the buffer owns (and may free) p */
	/* on failure the buffer does not take p: free it ourselves */
	if (evbuffer_add_reference(out, p, n, free_fn, free_arg) < 0) {
		free_fn(p, n, free_arg);
		/* a DATA header without its payload would desynchronise the stream */
		log_write(c->env->log, LOGL_ERROR, "conn=%s id=%" PRIu64 " msg=\"output failed\"",
		          c->peer, r->id);
		conn_close(c);
		return;
	}
	conn_count_sent(c, r, n);
	r->sent += n;
	conn_a_backpressure(c, r);
}

static void conn_a_entry(void *arg, const char *uri, uint64_t size, int64_t mtime_ns, int is_prefix)
{
	struct req *r = arg;
	struct conn *c = r->c;
	struct wire_frame f;
	wire_frame_init(&f, WIRE_ENTRY, r->id);
	f.uri = uri;
	f.uri_len = (uint32_t)strlen(uri);
	f.size = size;
	f.mtime = mtime_ns;
	f.is_prefix = (uint32_t)is_prefix;
	conn_send(c, &f);
	r->count++;
	conn_a_backpressure(c, r);
}

static void conn_a_wake(void *arg)
{
	struct req *r = arg;
	/* not from inside the backend's own call chain: run from the loop */
	event_active(r->c->wake_ev, 0, 0);
}

static void conn_a_done(void *arg, int rc, const struct err *e)
{
	struct req *r = arg;
	struct conn *c = r->c;
	r->aop = NULL; /* the backend has freed it */
	c->n_async--;
	metrics_backend_done(c->env->metrics, r->backend, metrics_op_of(r->type),
	                     metrics_now_ns() - r->t0, rc == 0);
	if ((r->type == WIRE_PUT || r->type == WIRE_DELETE) && c->env->cache) {
		char key[WIRE_MAX_URI + 16];
		/* a GET may have refilled it meanwhile */
		cache_invalidate(c->env->cache, conn_cache_key(r->uri, key, sizeof(key)));
	}
	if (r->paused) {
		r->paused = 0;
		c->n_paused--;
	}
	if (rc < 0) {
		int committing = r->committing;
		conn_req_fail(c, r, e);
		if (committing)
			conn_req_free(c, r); /* its END came already */
		return;
	}
	switch (r->type) {
	case WIRE_GET:
		if (conn_a_flush(c, r) < 0)
			return;
		conn_send_end(c, r->id, r->sent, r->crc);
		break;
	case WIRE_LIST: conn_send_end(c, r->id, r->count, 0); break;
	case WIRE_PUT:
		log_write(c->env->log, LOGL_DEBUG,
		          "conn=%s id=%" PRIu64 " op=PUT uri=%s size=%" PRIu64 " msg=stored",
		          c->peer, r->id, r->uri, r->received);
		conn_send_end(c, r->id, r->received, r->crc);
		break;
	default: conn_send_end(c, r->id, 0, 0); break;
	}
	conn_req_done(c, r);
}

/* Start r on its remote backend; on failure r has ended with ERROR. */
static void conn_a_start(struct conn *c, struct req *r, const struct wire_frame *f,
                         const struct uri *u)
{
	struct err e;
	const struct backend_async_ops *a = r->ops->async ? r->ops->async : r->ops->async_get;
	struct backend_sink s = {.arg = r,
	                         .header = conn_a_header,
	                         .data = conn_a_data,
	                         .data_ref = conn_a_data_ref,
	                         .entry = conn_a_entry,
	                         .wake = conn_a_wake,
	                         .done = conn_a_done};
	struct backend_ctx *ctx = c->env->bctx;
	int rc = -WIRE_E_INTERNAL;
	r->c = c;
	r->aops = a;
	err_set(&e, WIRE_E_INTERNAL, "%s: out of memory", u->text);
	switch (f->type) {
	case WIRE_GET:
		if ((r->pend = evbuffer_new()))
			rc = a->get(ctx, u, f->offset, f->length, &s, &r->aop, &e);
		break;
	case WIRE_STAT: rc = a->stat(ctx, u, &s, &r->aop, &e); break;
	case WIRE_LIST: rc = a->list(ctx, u, f->flags, &s, &r->aop, &e); break;
	case WIRE_DELETE: rc = a->remove(ctx, u, &s, &r->aop, &e); break;
	case WIRE_PUT: rc = a->put_open(ctx, u, f->size, &s, &r->aop, &e); break;
	case WIRE_MKDIR: rc = a->mkdir(ctx, u, &s, &r->aop, &e); break;
	case WIRE_RMDIR: rc = a->rmdir(ctx, u, &s, &r->aop, &e); break;
	}
	if (rc > 0) {
		/* done without asking the store (a MKDIR below a bucket) */
		r->aop = NULL;
		conn_send_end(c, r->id, 0, 0);
		conn_req_done(c, r);
		return;
	}
	if (c->env->metrics) {
		int op = metrics_op_of(f->type);
		if (op < MOP_N)
			metrics_add(&c->env->metrics->backend_requests[r->backend][op], 1);
	}
	r->t0 = metrics_now_ns();
	if (rc < 0) {
		r->aop = NULL;
		metrics_backend_done(c->env->metrics, r->backend, metrics_op_of(f->type), 0, 0);
		conn_req_fail(c, r, &e);
		return;
	}
	c->n_async++;
}

static void conn_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct conn *c = arg;
	if (!c->input_blocked || c->closing)
		return;
	c->input_blocked = 0;
	if (!c->reading_paused)
		bufferevent_enable(c->bev, EV_READ);
	conn_process(c); /* the payload that waited is in the input already */
}

/* Our output drained: resume the remote transfers paused for it. */
static void conn_a_resume(struct conn *c)
{
	if (!c->n_paused)
		return;
	for (uint32_t i = 0; i < c->tab_size && c->n_paused && !c->closing; i++) {
		struct req *r = c->tab[i];
		while (r) {
			struct req *next =
			    r->hnext; /* a resumed LIST may end (and free r) at once */
			if (r->paused) {
				if (evbuffer_get_length(bufferevent_get_output(c->bev)) >=
				    c->high_water)
					return;
				r->paused = 0;
				c->n_paused--;
				if (r->aop)
					r->aops->pause(r->aop, 0);
			}
			r = next;
		}
	}
}

/* ---- GET and PREFETCH through the object cache (cache.h, fetch.h) ---- */

static void conn_c_lookup(struct conn *c, struct req *r);

/* Read r's object from its backend, past the cache (too large, or no room). */
static void conn_c_direct(struct conn *c, struct req *r)
{
	struct err e;
	if (r->type == WIRE_PREFETCH) {
		conn_send_end(c, r->id, 0, 0); /* nothing was cached: END says 0 bytes */
		conn_req_done(c, r);
		return;
	}
	struct uri *u = malloc(sizeof(*u));
	if (!u || uri_parse_str(r->uri, u, &e) < 0) {
		if (!u)
			err_set(&e, WIRE_E_INTERNAL, "%s: out of memory", r->uri);
		free(u);
		conn_req_fail(c, r, &e);
		return;
	}
	struct wire_frame f;
	wire_frame_init(&f, WIRE_GET, r->id);
	f.offset = r->want_off;
	f.length = r->want_len;
	conn_a_start(c, r, &f, u);
	free(u);
}

/* r's entry is READY: answer from it. */
static void conn_c_serve(struct conn *c, struct req *r)
{
	struct err e;
	struct cache_entry *en = r->ce;
	if (r->type == WIRE_PREFETCH) {
		conn_send_end(c, r->id, en->size, en->crc);
		conn_req_done(c, r);
		return;
	}
	if (r->want_off > en->size) {
		err_set(&e, WIRE_E_RANGE,
		        "%s: offset %" PRIu64 " is past the end (%" PRIu64 " bytes)", r->uri,
		        r->want_off, en->size);
		conn_req_fail(c, r, &e);
		return;
	}
	uint64_t avail = en->size - r->want_off;
	r->total = r->want_len < avail ? r->want_len : avail;
	r->obj_off = r->want_off;
	if (r->obj_off == 0 && r->total == en->size) {
		r->crc = en->crc;
		r->crc_known = 1;
	}
	conn_send_header(c, r->id, r->total, &en->info);
	if (r->total == 0) {
		conn_send_end(c, r->id, 0, 0);
		conn_req_done(c, r);
		return;
	}
	conn_enqueue(c, r);
	conn_pump(c);
}

/* The entry r waited on changed state (on this loop). */
static void conn_c_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct req *r = arg;
	struct conn *c = r->c;
	struct err e;
	struct cache_entry *en = NULL;
	if (r->waiting) {
		r->waiting = 0;
		c->n_waiting--;
	}
	if (!r->cw.entry)
		return;
	switch (cache_wait_result(&r->cw, &en, &e)) {
	case CACHE_READY:
		r->ce = en;
		conn_c_serve(c, r);
		break;
	case CACHE_FAILED: conn_req_fail(c, r, &e); break;
	case CACHE_BYPASS: conn_c_direct(c, r); break;
	default: conn_c_lookup(c, r); break; /* changed meanwhile: ask again */
	}
}

static void conn_c_lookup(struct conn *c, struct req *r)
{
	struct err e;
	struct cache_entry *en = NULL;
	struct uri *u = NULL;
	char key[WIRE_MAX_URI + 16];
	int act = cache_get(c->env->cache, conn_cache_key(r->uri, key, sizeof(key)),
	                    (int64_t)metrics_now_ns(), &r->cw, &en);
	switch (act) {
	case CACHE_HIT:
		r->ce = en;
		conn_c_serve(c, r);
		return;
	case CACHE_GO_DIRECT: conn_c_direct(c, r); return;
	default: break;
	}
	r->waiting = 1; /* the waiter is queued: its event tells us the outcome */
	c->n_waiting++;
	if (act == CACHE_WAIT)
		return;
	/* we start the fetch (or HEAD) the waiters share; it belongs to this thread's loop,
	 * not to r, so r may go away without stopping it */
	u = malloc(sizeof(*u));
	if (!u || uri_parse_str(r->uri, u, &e) < 0) {
		if (!u)
			err_set(&e, WIRE_E_INTERNAL, "%s: out of memory", r->uri);
		if (act == CACHE_FETCH)
			cache_fill_done(en, -(int)e.code, &e, (int64_t)metrics_now_ns());
		else
			cache_revalidated(en, NULL, (int64_t)metrics_now_ns());
		goto done;
	}
	fetch_start(c->env->fetches, en, u, r->ops, act == CACHE_REVALIDATE);
done:
	free(u);
}

/* A GET or PREFETCH of a remote object with the cache on. */
static void conn_c_get(struct conn *c, struct req *r, const struct wire_frame *f)
{
	struct err e;
	r->want_off = f->type == WIRE_GET ? f->offset : 0;
	r->want_len = f->type == WIRE_GET ? f->length : WIRE_TO_END;
	r->cw.ev = event_new(bufferevent_get_base(c->bev), -1, 0, conn_c_wake_cb, r);
	if (!r->cw.ev) {
		err_set(&e, WIRE_E_INTERNAL, "%s: out of memory", r->uri);
		conn_req_fail(c, r, &e);
		return;
	}
	conn_c_lookup(c, r);
}

static void conn_do_prefetch(struct conn *c, const struct wire_frame *f, const struct uri *u,
                             const struct backend_ops *ops)
{
	struct err e;
	if (!ops->async || !c->env->cache) {
		/* nothing to warm: local files are read from the page cache, and without
		 * --cache-mem remote objects are not kept */
		conn_send_end(c, f->id, 0, 0);
		return;
	}
	struct req *r = conn_req_new(c, f, u->text, ops, &e);
	if (!r) {
		conn_send_error(c, f->id, u->text, e.code, 0, e.msg);
		return;
	}
	conn_c_get(c, r, f);
}

/* ---- requests ---- */

static void conn_do_get(struct conn *c, const struct wire_frame *f, const struct uri *u,
                        const struct backend_ops *ops)
{
	struct err e;
	struct backend_info info;
	struct req *r = conn_req_new(c, f, u->text, ops, &e);
	if (!r) {
		conn_send_error(c, f->id, u->text, e.code, 0, e.msg);
		return;
	}
	if (ops->async && c->env->cache) {
		conn_c_get(c, r, f);
		return;
	}
	if (ops->async || ops->async_get) {
		conn_a_start(c, r, f, u);
		return;
	}
	if (ops->open_read(c->env->bctx, u, &r->rd, &info, &e) < 0) {
		conn_req_fail(c, r, &e);
		return;
	}
	if (f->offset > info.size) {
		err_set(&e, WIRE_E_RANGE,
		        "%s: offset %" PRIu64 " is past the end (%" PRIu64 " bytes)", u->text,
		        f->offset, info.size);
		conn_req_fail(c, r, &e);
		return;
	}
	uint64_t avail = info.size - f->offset;
	r->total = f->length < avail ? f->length : avail;
	r->obj_off = f->offset;
	if (r->obj_off == 0 && r->total == info.size && ops->whole_crc)
		r->crc_known = ops->whole_crc(r->rd, &r->crc);
	conn_send_header(c, r->id, r->total, &info);
	if (r->total == 0) {
		conn_send_end(c, r->id, 0, 0);
		conn_req_done(c, r);
		return;
	}
	conn_enqueue(c, r);
	conn_pump(c);
}

static void conn_do_stat(struct conn *c, const struct wire_frame *f, const struct uri *u,
                         const struct backend_ops *ops)
{
	struct err e;
	struct backend_info info;
	if (ops->async) {
		struct req *r = conn_req_new(c, f, u->text, ops, &e);
		if (!r)
			conn_send_error(c, f->id, u->text, e.code, 0, e.msg);
		else
			conn_a_start(c, r, f, u);
		return;
	}
	if (ops->stat(c->env->bctx, u, &info, &e) < 0) {
		conn_send_error(c, f->id, u->text, e.code, 0, e.msg);
		return;
	}
	conn_send_header(c, f->id, info.size, &info);
	conn_send_end(c, f->id, 0, 0);
}

static void conn_do_list(struct conn *c, const struct wire_frame *f, const struct uri *u,
                         const struct backend_ops *ops)
{
	struct err e;
	struct req *r = conn_req_new(c, f, u->text, ops, &e);
	if (!r) {
		conn_send_error(c, f->id, u->text, e.code, 0, e.msg);
		return;
	}
	if (ops->async) {
		conn_a_start(c, r, f, u);
		return;
	}
	if (ops->list(c->env->bctx, u, f->flags, &r->list, &e) < 0) {
		conn_req_fail(c, r, &e);
		return;
	}
	conn_enqueue(c, r);
	conn_pump(c);
}

static void conn_do_delete(struct conn *c, const struct wire_frame *f, const struct uri *u,
                           const struct backend_ops *ops)
{
	struct err e;
	if (ops->async) {
		char key[WIRE_MAX_URI + 16];
		cache_invalidate(c->env->cache, conn_cache_key(u->text, key, sizeof(key)));
		struct req *r = conn_req_new(c, f, u->text, ops, &e);
		if (!r)
			conn_send_error(c, f->id, u->text, e.code, 0, e.msg);
		else
			conn_a_start(c, r, f, u);
		return;
	}
	if (ops->remove(c->env->bctx, u, &e) < 0) {
		conn_send_error(c, f->id, u->text, e.code, 0, e.msg);
		return;
	}
	conn_send_end(c, f->id, 0, 0);
}

/* MKDIR and RMDIR: END(0, 0) or ERROR, like DELETE. No cache entry can be affected: an
 * emptied directory or bucket holds no object that could be cached. */
static void conn_do_dir(struct conn *c, const struct wire_frame *f, const struct uri *u,
                        const struct backend_ops *ops)
{
	struct err e;
	if (ops->async) {
		struct req *r = conn_req_new(c, f, u->text, ops, &e);
		if (!r)
			conn_send_error(c, f->id, u->text, e.code, 0, e.msg);
		else
			conn_a_start(c, r, f, u);
		return;
	}
	int rc = f->type == WIRE_MKDIR ? ops->mkdir(c->env->bctx, u, &e)
	                               : ops->rmdir(c->env->bctx, u, &e);
	if (rc < 0) {
		conn_send_error(c, f->id, u->text, e.code, 0, e.msg);
		return;
	}
	conn_send_end(c, f->id, 0, 0);
}

/* A PUT that is refused before it starts still has DATA and END frames on the way: keep a
 * discard entry for them. Too many of those and the peer is not following the protocol. */
static void conn_put_refused(struct conn *c, const struct wire_frame *f, const char *uri)
{
	struct err e;
	if (c->n_reqs >= 2 * c->env->max_in_flight + 64) {
		conn_protocol_error(c, "too many unfinished uploads");
		return;
	}
	struct req *r = conn_req_new(c, f, uri, NULL, &e);
	if (!r) {
		conn_protocol_error(c, "%s", e.msg);
		return;
	}
	c->n_active--;
	if (c->env->metrics)
		metrics_gauge(&c->env->metrics->in_flight, -1);
	r->discard = 1;
}

static void conn_do_put(struct conn *c, const struct wire_frame *f, const struct uri *u,
                        const struct backend_ops *ops)
{
	struct err e;
	struct req *r = conn_req_new(c, f, u->text, ops, &e);
	if (!r) {
		conn_send_error(c, f->id, u->text, e.code, 0, e.msg);
		conn_put_refused(c, f, u->text);
		return;
	}
	r->put_size = f->size;
	if (ops->async) {
		char key[WIRE_MAX_URI + 16];
		cache_invalidate(c->env->cache, conn_cache_key(u->text, key, sizeof(key)));
		conn_a_start(c, r, f, u);
		return;
	}
	if (ops->put_open(c->env->bctx, u, f->size, &r->wr, &e) < 0)
		conn_req_fail(c, r, &e);
}

/* Refuse a request before it starts (it never enters the table, except a PUT's discard). */
static void conn_refuse(struct conn *c, const struct wire_frame *f, const char *uri, uint32_t code,
                        uint32_t retry_ms, const char *msg)
{
	conn_send_error(c, f->id, uri, code, retry_ms, msg);
	if (f->type == WIRE_PUT)
		conn_put_refused(c, f, uri);
}

/* Follow a token file reload (SIGHUP): look the connection's token up in the new table. A
 * token no longer listed ends the connection (-1). */
static int conn_token_current(struct conn *c)
{
	struct tokens_registry *reg = c->env->tokens;
	if (tokens_gen(reg) == c->tokens->gen)
		return 0;
	struct tokens *t = tokens_acquire(reg);
	const struct token *tk = tokens_find(t, c->token, c->token_len);
	if (!tk) {
		char msg[256];
		snprintf(msg, sizeof(msg), "the token of tenant '%s' was revoked", c->tenant->name);
		tokens_release(t);
		conn_send_error(c, 0, NULL, WIRE_E_PERMISSION, 0, msg);
		conn_close(c);
		return -1;
	}
	if (tk->tenant != c->tenant) {
		/* moved to another tenant: its connection count moves along (no limit check) */
		tenant_conn_leave(c->tenant);
		atomic_fetch_add(&tk->tenant->conns, 1);
		c->tenant = tk->tenant;
	}
	tokens_release(c->tokens);
	c->tokens = t;
	c->tk = tk;
	return 0;
}

static void conn_request(struct conn *c, const struct wire_frame *f)
{
	struct err e;
	struct uri *u = NULL;
	char text[WIRE_MAX_URI + 1];
	snprintf(text, sizeof(text), "%.*s", (int)f->uri_len, f->uri);

	struct req *dup = conn_find(c, f->id);
	if (dup) {
		if (f->type == WIRE_PUT || dup->type == WIRE_PUT) {
			/* DATA frames could not be told apart: the stream is lost */
			conn_protocol_error(c, "duplicate request id %" PRIu64 " for an upload",
			                    f->id);
			return;
		}
		err_set(&e, WIRE_E_PROTOCOL,
		        "%s: duplicate request id %" PRIu64 " (still in flight)", text, f->id);
		conn_send_error(c, f->id, text, e.code, 0, e.msg);
		return;
	}
	if (c->draining) {
		err_set(&e, WIRE_E_SHUTDOWN, "%s: the server is shutting down", text);
		conn_refuse(c, f, text, e.code, 0, e.msg);
		return;
	}
	if (c->n_active >= c->env->max_in_flight) {
		err_set(&e, WIRE_E_BUSY, "%s: %u requests already in flight on this connection",
		        text, c->env->max_in_flight);
		conn_refuse(c, f, text, e.code, CONN_BUSY_RETRY_MS, e.msg);
		return;
	}
	u = malloc(sizeof(*u));
	if (!u) {
		err_set(&e, WIRE_E_INTERNAL, "%s: out of memory", text);
		conn_refuse(c, f, text, e.code, 0, e.msg);
		return;
	}
	const struct backend_ops *ops = NULL;
	if (uri_parse(f->uri, f->uri_len, u, &e) < 0 || !(ops = backend_for(u, &e)) ||
	    uri_check(c->env->bctx->policy, u, &e) < 0) {
		conn_refuse(c, f, text, e.code, 0, e.msg);
		goto done;
	}
	uint32_t retry_ms = 0;
	if (c->tk && conn_token_current(c) < 0) {
		goto done; /* the token was revoked: the connection is closing */
	}
	if (c->tk && tokens_check(c->tk, f->type, u, &e) < 0) {
		atomic_fetch_add(&c->tenant->refused, 1);
		conn_refuse(c, f, text, e.code, 0, e.msg);
		goto done;
	}
	if (c->tenant && tenant_req_enter(c->tenant, u->text, &retry_ms, &e) < 0) {
		conn_refuse(c, f, text, e.code, retry_ms, e.msg);
		goto done;
	}
	struct tenant *counted = c->tenant; /* the do_* calls below may not change it */
	log_write(c->env->log, LOGL_DEBUG, "conn=%s id=%" PRIu64 " op=%s uri=%s", c->peer, f->id,
	          wire_type_str(f->type), text);
	if (c->env->metrics)
		metrics_add(&c->env->metrics
		                 ->requests[metrics_backend_of(ops->name)][metrics_op_of(f->type)],
		            1);
	switch (f->type) {
	case WIRE_GET: conn_do_get(c, f, u, ops); break;
	case WIRE_STAT: conn_do_stat(c, f, u, ops); break;
	case WIRE_LIST: conn_do_list(c, f, u, ops); break;
	case WIRE_DELETE: conn_do_delete(c, f, u, ops); break;
	case WIRE_PUT: conn_do_put(c, f, u, ops); break;
	case WIRE_PREFETCH: conn_do_prefetch(c, f, u, ops); break;
	case WIRE_MKDIR:
	case WIRE_RMDIR: conn_do_dir(c, f, u, ops); break;
	}
	if (counted) {
		/* the request's table entry carries the tenant's count from here; one that ended
		 * at once (a STAT of a file, a refused PUT) gives it back now */
		struct req *r = conn_find(c, f->id);
		if (r && !r->discard)
			r->tenant = counted;
		else
			tenant_req_leave(counted);
	}
done:
	free(u);
}

static void conn_cancel(struct conn *c, uint64_t id)
{
	struct req *r = conn_find(c, id);
	if (!r || r->discard)
		return; /* finished already, or never was: nothing to stop */
	struct err e;
	err_set(&e, WIRE_E_CANCELLED, "%s: cancelled", r->uri);
	int committing = r->committing;
	conn_req_fail(c, r, &e);
	if (committing)
		conn_req_free(c, r); /* its END came already */
}

static void conn_data(struct conn *c, const struct wire_frame *f)
{
	struct req *r = conn_find(c, f->id);
	if (!r || r->type != WIRE_PUT) {
		conn_protocol_error(c, "DATA for id %" PRIu64 ", which is no upload in flight",
		                    f->id);
		return;
	}
	c->payload_req = r;
	c->payload_left = f->payload_len;
	if (r->discard)
		return;
	struct err e;
	if (f->offset != r->received) {
		err_set(&e, WIRE_E_PROTOCOL, "%s: DATA at offset %" PRIu64 ", expected %" PRIu64,
		        r->uri, f->offset, r->received);
		conn_req_fail(c, r, &e);
	} else if (f->payload_len > r->put_size - r->received) {
		err_set(&e, WIRE_E_INVALID,
		        "%s: upload exceeds its announced size of %" PRIu64 " bytes", r->uri,
		        r->put_size);
		conn_req_fail(c, r, &e);
	}
}

static void conn_end(struct conn *c, const struct wire_frame *f)
{
	struct req *r = conn_find(c, f->id);
	if (!r || r->type != WIRE_PUT) {
		conn_protocol_error(c, "END for id %" PRIu64 ", which is no upload in flight",
		                    f->id);
		return;
	}
	if (r->discard) {
		conn_req_free(c, r); /* its ERROR went out already */
		return;
	}
	struct err e;
	if (f->size != r->received || r->received != r->put_size) {
		err_set(&e, WIRE_E_CHECKSUM,
		        "%s: upload of %" PRIu64 " bytes ended after %" PRIu64 " (END says %" PRIu64
		        ")",
		        r->uri, r->put_size, r->received, f->size);
		conn_req_fail(c, r, &e);
		conn_req_free(c, r);
		return;
	}
	if (f->crc32c != r->crc) {
		err_set(&e, WIRE_E_CHECKSUM, "%s: CRC32C mismatch (sent %08x, received %08x)",
		        r->uri, f->crc32c, r->crc);
		conn_req_fail(c, r, &e);
		conn_req_free(c, r);
		return;
	}
	if (r->ops->async) {
		/* the backend uploads what remains, commits, verifies; conn_a_done answers */
		r->committing = 1;
		if (r->ops->async->put_finish(r->aop, &e) < 0) {
			conn_req_fail(c, r, &e);
			conn_req_free(c, r);
		}
		return;
	}
	struct backend_writer *wr = r->wr;
	r->wr = NULL; /* commit consumes it, success or not */
	if (r->ops->put_commit(wr, &e) < 0) {
		conn_req_fail(c, r, &e);
		conn_req_free(c, r);
		return;
	}
	log_write(c->env->log, LOGL_DEBUG,
	          "conn=%s id=%" PRIu64 " op=PUT uri=%s size=%" PRIu64 " msg=stored", c->peer,
	          r->id, r->uri, r->received);
	conn_send_end(c, r->id, r->received, r->crc);
	conn_req_done(c, r);
}

/* Refuse the peer at HELLO: ERROR(0, code, msg), then close. */
static int conn_refuse_peer(struct conn *c, uint32_t code, uint32_t retry_ms, const char *msg)
{
	if (c->env->metrics)
		metrics_add(&c->env->metrics->refused_total, 1);
	conn_send_error(c, 0, NULL, code, retry_ms, msg);
	conn_close(c);
	return -1;
}

/* Who may talk to us: with a token file, whoever presents a listed token (within its
 * tenant's connection limit); without one, only Unix-socket and loopback peers. */
static int conn_admit(struct conn *c, const struct wire_frame *f)
{
	char msg[WIRE_MAX_MESSAGE + 1];
	struct tokens_registry *reg = c->env->tokens;
	if (!reg || !reg->path) {
		if (c->local)
			return 0;
		snprintf(msg, sizeof(msg),
		         "%s is not a loopback address: this server has no --token-file, so it "
		         "serves only clients on this host",
		         c->peer);
		return conn_refuse_peer(c, WIRE_E_PERMISSION, 0, msg);
	}
	if (!f->token || !f->token_len)
		return conn_refuse_peer(c, WIRE_E_PERMISSION, 0,
		                        "this server requires a token (set S3DLIO_TOKEN)");
	struct tokens *t = tokens_acquire(reg);
	const struct token *tk = tokens_find(t, f->token, f->token_len);
	if (!tk) {
		tokens_release(t);
		return conn_refuse_peer(c, WIRE_E_PERMISSION, 0,
		                        "the token is not valid on this server");
	}
	struct err e;
	uint32_t retry_ms = 0;
	if (tenant_conn_enter(tk->tenant, &retry_ms, &e) < 0) {
		tokens_release(t);
		return conn_refuse_peer(c, e.code, retry_ms, e.msg);
	}
	c->token = malloc(f->token_len);
	if (!c->token) {
		tenant_conn_leave(tk->tenant);
		tokens_release(t);
		return conn_refuse_peer(c, WIRE_E_INTERNAL, 0, "out of memory");
	}
	memcpy(c->token, f->token, f->token_len);
	c->token_len = f->token_len;
	c->tokens = t;
	c->tk = tk;
	c->tenant = tk->tenant;
	char v[300];
	log_write(c->env->log, LOGL_DEBUG, "conn=%s tenant=%s msg=authenticated", c->peer,
	          log_value(v, sizeof(v), tk->tenant->name, 0));
	return 0;
}

static void conn_hello(struct conn *c, const struct wire_frame *f)
{
	if (f->type != WIRE_HELLO) {
		conn_protocol_error(c, "expected HELLO, got %s", wire_type_str(f->type));
		return;
	}
	if (f->version != WIRE_VERSION) {
		conn_protocol_error(c,
		                    "protocol version %u is not supported (this server speaks %u)",
		                    f->version, WIRE_VERSION);
		return;
	}
	if (conn_admit(c, f) < 0)
		return;
	struct wire_frame w;
	wire_frame_init(&w, WIRE_WELCOME, 0);
	w.version = WIRE_VERSION;
	w.max_frame = c->env->max_frame;
	w.max_in_flight = c->env->max_in_flight;
	w.agent = CONN_SERVER_NAME;
	w.agent_len = (uint32_t)strlen(CONN_SERVER_NAME);
	conn_send(c, &w);
	c->hello_done = 1;
	char a[300];
	char agent[257];
	snprintf(agent, sizeof(agent), "%.*s", (int)f->agent_len, f->agent ? f->agent : "");
	log_write(c->env->log, LOGL_DEBUG, "conn=%s msg=hello agent=%s", c->peer,
	          log_value(a, sizeof(a), agent, 0));
}

static void conn_dispatch(struct conn *c, const struct wire_frame *f)
{
	if (!c->hello_done) {
		conn_hello(c, f);
		return;
	}
	switch (f->type) {
	case WIRE_GET:
	case WIRE_STAT:
	case WIRE_LIST:
	case WIRE_PUT:
	case WIRE_DELETE:
	case WIRE_PREFETCH:
	case WIRE_MKDIR:
	case WIRE_RMDIR: conn_request(c, f); break;
	case WIRE_CANCEL: conn_cancel(c, f->id); break;
	case WIRE_DATA: conn_data(c, f); break;
	case WIRE_END: conn_end(c, f); break;
	case WIRE_HELLO: conn_protocol_error(c, "HELLO sent twice"); break;
	default:
		conn_protocol_error(c, "a client may not send %s frames", wire_type_str(f->type));
		break;
	}
}

/* ---- input ---- */

/* Feed (part of) the current DATA payload to its upload, or drop it. 0: wait for more. */
static int conn_payload(struct conn *c, struct evbuffer *in)
{
	size_t avail = evbuffer_get_length(in);
	size_t n = avail < c->payload_left ? avail : (size_t)c->payload_left;
	struct req *r = c->payload_req;
	if (r && !r->discard) {
		/* gather a reasonable amount before a write, unless that is all there will be */
		if (n < c->payload_left && n < CONN_PUT_BATCH)
			return 0;
		if (r->ops->async && r->ops->async->put_full(r->aop)) {
			/* parts in flight up to the limit: stop reading until the backend wakes us
			 */
			if (!c->input_blocked) {
				c->input_blocked = 1;
				bufferevent_disable(c->bev, EV_READ);
			}
			return 0;
		}
		struct evbuffer_iovec v[16];
		struct iovec iov[16];
		int nv = evbuffer_peek(in, (ev_ssize_t)n, NULL, v, 16);
		if (nv > 16)
			nv = 16; /* take what these cover now, the rest next turn */
		size_t got = 0;
		for (int i = 0; i < nv; i++) {
			/* the last extent may run past n: clip it */
			size_t len = v[i].iov_len < n - got ? v[i].iov_len : n - got;
			iov[i].iov_base = v[i].iov_base;
			iov[i].iov_len = len;
			r->crc = wire_crc32c(r->crc, v[i].iov_base, len);
			got += len;
		}
		n = got;
		struct err e;
		int wrc = r->ops->async ? r->ops->async->put_write(r->aop, iov, nv, &e)
		                        : r->ops->put_write(r->wr, iov, nv, &e);
		if (wrc < 0)
			conn_req_fail(c, r, &e); /* the rest of the payload is discarded */
		else
			r->received += n;
		if (wrc >= 0 && c->env->metrics)
			metrics_add(&c->env->metrics->bytes_received[r->backend], n);
		if (wrc >= 0 && c->tenant)
			tenant_charge(c->tenant, n);
	}
	if (n == 0)
		return 0;
	evbuffer_drain(in, n);
	c->payload_left -= n;
	return 1;
}

static void conn_process(struct conn *c)
{
	if (c->processing)
		return;
	c->processing = 1;
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer *out = bufferevent_get_output(c->bev);
	while (!c->closing) {
		if (evbuffer_get_length(out) > c->pause_at) {
			/* the peer is not reading its replies: stop taking requests until it does
			 */
			if (!c->reading_paused) {
				bufferevent_disable(c->bev, EV_READ);
				c->reading_paused = 1;
			}
			break;
		}
		if (c->payload_left) {
			if (!conn_payload(c, in))
				break;
			continue;
		}
		size_t avail = evbuffer_get_length(in);
		if (!avail)
			break;
		/* most headers are small: try a short contiguous prefix first */
		size_t want = avail < 256 ? avail : 256;
		struct wire_frame f;
		size_t used = 0;
		const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)want);
		int rc = p ? wire_decode(p, want, c->env->max_frame, &f, &used) : WIRE_MALFORMED;
		if (rc == WIRE_NEED_MORE && avail > want) {
			want = avail < WIRE_MAX_HEADER ? avail : WIRE_MAX_HEADER;
			p = evbuffer_pullup(in, (ev_ssize_t)want);
			rc =
			    p ? wire_decode(p, want, c->env->max_frame, &f, &used) : WIRE_MALFORMED;
		}
		if (rc == WIRE_NEED_MORE)
			break;
		if (rc != WIRE_OK) {
			conn_protocol_error(c, "%s", wire_result_str(rc));
			break;
		}
		conn_dispatch(c, &f); /* f's strings point into the input: use before draining */
		evbuffer_drain(in, used);
	}
	c->processing = 0;
	conn_after_request(c);
}

/* ---- callbacks ---- */

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	conn_process(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	if (c->closing) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			conn_free(c);
		return;
	}
	if (c->reading_paused && evbuffer_get_length(bufferevent_get_output(bev)) <= c->pause_at) {
		c->reading_paused = 0;
		if (!c->input_blocked)
			bufferevent_enable(bev, EV_READ);
		conn_process(c); /* requests may be waiting in the input already */
	}
	conn_pump(c);
	conn_a_resume(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	if (what & BEV_EVENT_TIMEOUT) {
		if (c->closing) {
			conn_free(c);
			return;
		}
		if (what & BEV_EVENT_WRITING) {
			log_write(c->env->log, LOGL_WARN,
			          "conn=%s msg=\"peer stopped reading; closing\" in_flight=%u",
			          c->peer, c->n_active);
			conn_free(c);
			return;
		}
		/* no input for idle_timeout: close unless replies are still flowing out */
		if (TAILQ_EMPTY(&c->runq) && c->n_async == 0 && c->n_waiting == 0 &&
		    evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
			log_write(c->env->log, LOGL_INFO,
			          "conn=%s msg=\"idle timeout\" in_flight=%u", c->peer,
			          c->n_active);
			conn_free(c);
			return;
		}
		bufferevent_enable(bev, EV_READ);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		int level = c->n_active ? LOGL_WARN : LOGL_DEBUG;
		const char *why = "closed by peer";
		char tls_why[256];
		unsigned long tls_err = c->tls ? bufferevent_get_openssl_error(bev) : 0;
		if (tls_err) {
			ERR_error_string_n(tls_err, tls_why, sizeof(tls_why));
			why = tls_why; /* a failed handshake, a bad record */
			if (!c->hello_done)
				level = LOGL_WARN;
		} else if (what & BEV_EVENT_ERROR) {
			why = strerror(EVUTIL_SOCKET_ERROR());
		} else if (what & BEV_EVENT_WRITING) {
			/* sendfile() found the end of a file inside a queued segment: the file was
			 * cut after we read it, mid-frame, so only closing keeps the peer from
			 * taking short data for whole */
			why = "a file shrank while being sent";
		}
		if ((what & BEV_EVENT_WRITING) && !tls_err)
			level = LOGL_ERROR;
		char m[256];
		log_write(c->env->log, level, "conn=%s msg=%s in_flight=%u", c->peer,
		          log_value(m, sizeof(m), why, 1), c->n_active);
		conn_free(c);
	}
}

static void conn_close_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct conn *c = arg;
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_free(c);
	/* else the write callback frees it once the last frame is out */
}

/* ---- life cycle ---- */

int conn_new(const struct conn_env *env, struct event_base *base, int fd, const char *peer,
             unsigned flags, void *owner, struct conn **out, struct err *e)
{
	int result = 0;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return err_set(e, WIRE_E_INTERNAL, "conn %s: out of memory", peer);
	}
	c->env = env;
	c->owner = owner;
	c->local = (flags & CONN_PEER_LOCAL) != 0;
	c->tls = (flags & CONN_PEER_TCP) && env->tls;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	TAILQ_INIT(&c->runq);
	c->high_water = 2 * (size_t)env->max_frame;
	if (c->high_water < CONN_MIN_HIGH_WATER)
		c->high_water = CONN_MIN_HIGH_WATER;
	c->pause_at = c->high_water + env->max_frame + (256u << 10);
	c->tab_size = 64;
	c->tab = calloc(c->tab_size, sizeof(*c->tab));
	c->chunk = evbuffer_new();
	c->hdr = evbuffer_new();
	if (c->tls) {
		SSL *ssl = SSL_new(env->tls);
		c->bev = ssl ? bufferevent_openssl_socket_new(
		                   base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE)
		             : NULL;
		if (c->bev) /* a peer that closes without close_notify has simply gone */
			bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
		else if (!ssl)
			close(fd);
	} else {
		c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
		if (!c->bev)
			close(fd);
	}
	c->close_ev = event_new(base, -1, 0, conn_close_cb, c);
	c->wake_ev = event_new(base, -1, 0, conn_wake_cb, c);
	if (!c->tab || !c->chunk || !c->hdr || !c->bev || !c->close_ev || !c->wake_ev) {
		result = err_set(e, WIRE_E_INTERNAL, "conn %s: out of memory", peer);
		goto done;
	}
	/* backend reads may add file segments here; they must stay sendfile-able when moved
	 * to the socket's output (with TLS they are read into memory: the bytes are encrypted) */
	if (!c->tls)
		evbuffer_set_flags(c->chunk, EVBUFFER_FLAG_DRAINS_TO_FD);
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, c->high_water / 2, 0);
	bufferevent_set_max_single_read(c->bev, 1 << 20);
	bufferevent_set_max_single_write(c->bev, CONN_MAX_SINGLE_IO);
	if (env->idle_timeout > 0) {
		struct timeval tv = {env->idle_timeout, 0};
		bufferevent_set_timeouts(c->bev, &tv, &tv);
	}
	if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0) {
		result = err_set(e, WIRE_E_INTERNAL, "conn %s: cannot enable events", peer);
		goto done;
	}
	*out = c;
	c = NULL;
done:
	if (c) {
		if (c->close_ev)
			event_free(c->close_ev);
		if (c->wake_ev)
			event_free(c->wake_ev);
		if (c->bev)
			bufferevent_free(c->bev);
		if (c->chunk)
			evbuffer_free(c->chunk);
		if (c->hdr)
			evbuffer_free(c->hdr);
		free(c->tab);
		free(c);
	}
	return result;
}

void conn_drain(struct conn *c)
{
	if (c->draining || c->closing)
		return;
	c->draining = 1;
	if (!c->hello_done) {
		struct timeval tv = {CONN_DRAIN_HELLO_WAIT, 0};
		bufferevent_set_timeouts(c->bev, &tv, &tv);
	}
	/* answer what is already buffered (SHUTDOWN), then close once nothing is in flight */
	conn_process(c);
	conn_after_request(c);
}

void conn_free(struct conn *c)
{
	if (c->n_active)
		log_write(c->env->log, LOGL_DEBUG, "conn=%s msg=\"dropping requests\" in_flight=%u",
		          c->peer, c->n_active);
	for (uint32_t i = 0; i < c->tab_size; i++)
		while (c->tab[i])
			conn_req_free(c, c->tab[i]); /* aborted uploads remove their temp files */
	if (c->tenant)
		tenant_conn_leave(c->tenant);
	tokens_release(c->tokens);
	if (c->token) {
		explicit_bzero(c->token, c->token_len);
		free(c->token);
	}
	event_free(c->close_ev);
	event_free(c->wake_ev);
	bufferevent_free(c->bev);
	evbuffer_free(c->chunk);
	evbuffer_free(c->hdr);
	free(c->tab);
	const struct conn_env *env = c->env;
	void *owner = c->owner;
	free(c);
	if (env->on_free)
		env->on_free(owner);
}
