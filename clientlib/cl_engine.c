/* cl_engine.c: runs a call's requests over the connections it checked out.
 *
 * The calling thread drives everything with poll(): it writes request headers (batched into
 * one send), streams PUT payloads from the caller's memory with sendmsg(header, payload), reads
 * replies and dispatches frames by request id. Frames of different requests interleave.
 *
 * Receiving, where the bytes go (the heart of the library):
 *   - Frame headers are read into the connection's staging buffer and parsed there.
 *   - When a DATA header is parsed, the part of its payload that the same read already pulled
 *     into staging is copied to dest + offset (the only copy: bytes_copied); the rest is read
 *     straight into dest + offset (bytes_direct) with readv(dest, staging), so the payload
 *     lands in place and whatever follows it goes to staging for the next header.
 *   - How much a header read may ask for adapts (cl_conn.rd_hint), predicted from the last
 *     HEADER's size and the last large DATA payload: in a stream of large objects it asks for
 *     len/256 bytes (512 B to 4 KiB), so the spill into staging, and thus the copy, stays
 *     around 0.1% of a 4 MiB frame; in a stream of small objects (HEADER under 8 KiB) it asks
 *     for the whole staging buffer, so many small replies arrive per system call.
 *   - The CRC32C of a reply is computed as its bytes land, while they are still in cache.
 *
 * A request ends exactly once: on its terminal frame (END or ERROR), or when its connection
 * breaks or times out. A request the client itself fails (buffer too small, allocator NULL,
 * bad offsets, list stopped) is cancelled and stays registered, its remaining DATA going to a
 * scratch buffer, until the server's terminal frame for it arrives; so connections return to
 * the pool at a frame boundary, ready for the next call. */
#include "cl_internal.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

#define ENG_SCRATCH_SIZE (64u << 10)
/* With CRC checking, a payload read lands at most this much at once, so the CRC that
 * follows reads bytes still in L2 rather than from memory. */
#define ENG_CRC_READ (256u << 10)
#define ENG_MAX_IN_FLIGHT 4096u
#define ENG_BUSY_RETRIES 6u
#define ENG_BUSY_MAX_DELAY_MS 2000u
#define ENG_ROUNDS 32 /* reads or writes per connection per wakeup: fairness across connections */

enum op_state {
	OP_QUEUED = 0, /* not sent (or waiting to be retried) */
	OP_SENT,       /* request written, no HEADER yet */
	OP_RECV,       /* HEADER seen (GET: destination placed; STAT: info filled) */
	OP_DISCARD,    /* failed or stopped locally, cancelled, waiting for its terminal frame */
	OP_DONE,
};

struct put_tx {
	int active;
	struct cl_op *op; /* NULL once the request ended while its upload was still going */
	uint64_t id;
	const uint8_t *src;
	uint64_t size;
	uint64_t queued; /* payload bytes framed so far */
	uint32_t crc;
	int end_queued;
};

struct eng_conn {
	struct cl_conn *cn;   /* NULL once closed or returned */
	struct cl_op **slots; /* requests in flight, by id & mask */
	unsigned mask;
	unsigned inflight;
	unsigned cap; /* requests in flight allowed on this connection in this call */
	uint64_t last_progress;
	int rx_any; /* bytes arrived on it during this call */

	/* receiving a DATA payload */
	struct cl_op *rx_op;
	uint8_t *rx_dst; /* NULL: discard into the scratch buffer */
	uint64_t rx_rem;

	/* sending: q collects headers at any time; out+payload is the unit being written */
	uint8_t *q;
	size_t q_len, q_cap;
	uint8_t *out;
	size_t out_len, out_off, out_cap;
	const uint8_t *pay;
	size_t pay_rem;
	struct put_tx tx;
};

struct eng {
	s3dlio_client *c;
	struct cl_op *ops;
	size_t n;
	size_t cursor;            /* ops[cursor..n): never sent yet */
	struct cl_op *retry_head; /* requests to send again (BUSY, stale connection) */
	size_t remaining;         /* requests not done */
	unsigned max_in_flight;
	unsigned inflight;
	unsigned want_conns;
	unsigned slots_size;
	struct eng_conn ecs[CL_CONNS_PER_CALL];
	s3dlio_alloc_fn alloc;
	s3dlio_release_fn release;
	void *actx;
	int verify;
	unsigned lowat; /* SO_RCVLOWAT while a payload is pending (0: off) */
	uint64_t now;
	uint8_t *scratch;
	char entry_uri[WIRE_MAX_URI + 1];
};

static void ec_break(struct eng *e, struct eng_conn *ec, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- request bookkeeping ---- */

static void op_drop_buffer(struct eng *e, struct cl_op *op)
{
	if (op->placed && e->release)
		e->release(e->actx, op->index, op->data, op->expected);
	op->placed = 0;
	op->data = NULL;
}

/* Take op off its connection (its id is free again). */
static void op_detach(struct eng *e, struct cl_op *op)
{
	struct eng_conn *ec = op->ec;
	if (!ec)
		return;
	if (ec->slots[op->id & ec->mask] == op)
		ec->slots[op->id & ec->mask] = NULL;
	ec->inflight--;
	e->inflight--;
	if (ec->tx.active && ec->tx.op == op)
		ec->tx.op = NULL; /* its upload stops after the current frame, then sends END */
	if (ec->rx_op == op)
		ec->rx_dst = NULL; /* the rest of the payload in progress is discarded */
	op->ec = NULL;
}

/* End a request. msg (owned, may be NULL) is its error message when status != 0. */
static void op_finish(struct eng *e, struct cl_op *op, int status, char *msg)
{
	op_detach(e, op);
	if (status != S3DLIO_OK) {
		op_drop_buffer(e, op);
		op->size = 0;
		op->status = status;
		op->error = msg ? msg
		                : cl_strdup_printf("%.*s: %s", (int)op->uri_len, op->uri,
		                                   s3dlio_code_str(status));
		CL_STAT_ADD(e->c, errors, 1);
	} else {
		cl_free_msg(msg);
		op->status = S3DLIO_OK;
		op->error = NULL;
		if (op->kind != CL_PREFETCH) /* PREFETCH: the size END announced stays */
			op->size = op->kind == CL_GET ? op->received : 0;
		op->placed = 0;
	}
	if (op->local_msg != msg)
		cl_free_msg(op->local_msg);
	op->local_msg = NULL;
	op->state = OP_DONE;
	e->remaining--;
}

static void op_finish_local(struct eng *e, struct cl_op *op)
{
	op_finish(e, op, op->local_status, op->local_msg);
}

static void op_requeue(struct eng *e, struct cl_op *op, uint64_t at)
{
	op_detach(e, op);
	op_drop_buffer(e, op);
	op->state = OP_QUEUED;
	op->retry_at = at;
	op->next_retry = NULL;
	struct cl_op **p = &e->retry_head;
	while (*p)
		p = &(*p)->next_retry;
	*p = op;
}

static int q_reserve(struct eng_conn *ec, size_t need)
{
	if (ec->q_cap - ec->q_len >= need)
		return 0;
	size_t cap = ec->q_cap ? ec->q_cap : 4096;
	while (cap - ec->q_len < need)
		cap *= 2;
	uint8_t *q = realloc(ec->q, cap);
	if (!q)
		return -1;
	ec->q = q;
	ec->q_cap = cap;
	return 0;
}

/* Append an encoded frame to the connection's header queue. */
static int q_frame(struct eng_conn *ec, const struct wire_frame *f)
{
	size_t need = f->uri_len + 64;
	if (q_reserve(ec, need))
		return S3DLIO_E_NOMEM;
	size_t len = 0;
	int r = wire_encode(f, ec->q + ec->q_len, ec->q_cap - ec->q_len, &len);
	if (r != WIRE_OK)
		return r == WIRE_TOO_BIG ? S3DLIO_E_TOO_LARGE : S3DLIO_E_INTERNAL;
	ec->q_len += len;
	return 0;
}

/* The client ends a request itself: record why, free its buffer, cancel it at the server, and
 * wait for its terminal frame (its DATA until then is discarded). */
static void op_abort(struct eng *e, struct cl_op *op, int status, char *msg)
{
	struct eng_conn *ec = op->ec;
	op->local_status = status;
	op->local_msg = msg;
	op_drop_buffer(e, op);
	op->state = OP_DISCARD;
	if (ec->rx_op == op)
		ec->rx_dst = NULL;
	struct wire_frame f;
	wire_frame_init(&f, WIRE_CANCEL, op->id);
	if (q_frame(ec, &f) != 0)
		ec_break(e, ec, S3DLIO_E_NOMEM, "out of memory queueing CANCEL");
}

/* ---- sending ---- */

static int ec_wants_write(const struct eng_conn *ec)
{
	return ec->out_off < ec->out_len || ec->pay_rem || ec->q_len || ec->tx.active;
}

static void ec_progress(struct eng *e, struct eng_conn *ec)
{
	ec->last_progress = e->now = cl_now_ms();
}

/* The unit in out+payload is written: prepare the next. Returns 1 when there is one. */
static int ec_fill(struct eng *e, struct eng_conn *ec)
{
	ec->out_off = ec->out_len = 0;
	if (ec->q_len) {
		uint8_t *t = ec->out;
		size_t tc = ec->out_cap;
		ec->out = ec->q;
		ec->out_cap = ec->q_cap;
		ec->out_len = ec->q_len;
		ec->q = t;
		ec->q_cap = tc;
		ec->q_len = 0;
		return 1;
	}
	struct put_tx *tx = &ec->tx;
	if (!tx->active)
		return 0;
	if (ec->out_cap < 64) {
		uint8_t *o = realloc(ec->out, 4096);
		if (!o) {
			ec_break(e, ec, S3DLIO_E_NOMEM, "out of memory");
			return 0;
		}
		ec->out = o;
		ec->out_cap = 4096;
	}
	struct wire_frame f;
	if (tx->op && tx->queued < tx->size) {
		uint64_t n = tx->size - tx->queued;
		if (n > ec->cn->max_frame)
			n = ec->cn->max_frame;
		wire_frame_init(&f, WIRE_DATA, tx->id);
		f.offset = tx->queued;
		f.payload_len = n;
		if (wire_encode(&f, ec->out, ec->out_cap, &ec->out_len) != WIRE_OK) {
			ec_break(e, ec, S3DLIO_E_INTERNAL, "cannot encode DATA");
			return 0;
		}
		ec->pay = tx->src + tx->queued;
		ec->pay_rem = (size_t)n;
		tx->crc = wire_crc32c(tx->crc, ec->pay, (size_t)n);
		tx->queued += n;
		return 1;
	}
	if (!tx->end_queued) {
		/* also after the server failed the upload early: it drops DATA and END of that id
		 */
		wire_frame_init(&f, WIRE_END, tx->id);
		f.size = tx->queued;
		f.crc32c = tx->crc;
		if (wire_encode(&f, ec->out, ec->out_cap, &ec->out_len) != WIRE_OK) {
			ec_break(e, ec, S3DLIO_E_INTERNAL, "cannot encode END");
			return 0;
		}
		tx->end_queued = 1;
		if (tx->op) {
			tx->op->crc = tx->crc;
			tx->op->crc_sent = 1;
		}
		return 1;
	}
	tx->active = 0;
	return 0;
}

static void ec_read(struct eng *e, struct eng_conn *ec);

static void ec_flush(struct eng *e, struct eng_conn *ec)
{
	for (int round = 0; ec->cn && round < ENG_ROUNDS; round++) {
		if (ec->out_off == ec->out_len && !ec->pay_rem && !ec_fill(e, ec))
			return;
		if (!ec->cn)
			return;
		struct iovec iov[2];
		int k = 0;
		if (ec->out_off < ec->out_len)
			iov[k++] = (struct iovec){ec->out + ec->out_off, ec->out_len - ec->out_off};
		if (ec->pay_rem)
			iov[k++] = (struct iovec){(void *)ec->pay, ec->pay_rem};
		ssize_t n = cl_conn_sendv(ec->cn, iov, k);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			int saved = errno;
			/* the server may have said why before it closed: read that first */
			ec_read(e, ec);
			if (ec->cn)
				ec_break(e, ec, S3DLIO_E_CONNECTION, "connection to %s lost: %s",
				         e->c->url, strerror(saved));
			return;
		}
		ec_progress(e, ec);
		size_t done = (size_t)n;
		size_t h = ec->out_len - ec->out_off;
		if (h > done)
			h = done;
		ec->out_off += h;
		done -= h;
		if (done) {
			ec->pay += done;
			ec->pay_rem -= done;
			CL_STAT_ADD(e->c, bytes_sent, done);
		}
	}
}

/* Write op's request on ec (queued; ec_flush sends it). */
static void op_send(struct eng *e, struct eng_conn *ec, struct cl_op *op)
{
	struct cl_conn *cn = ec->cn;
	uint64_t id = cn->next_id;
	while (id == 0 || ec->slots[id & ec->mask])
		id++;
	cn->next_id = id + 1;

	struct wire_frame f;
	switch (op->kind) {
	case CL_GET:
		wire_frame_init(&f, WIRE_GET, id);
		f.offset = op->offset;
		f.length = op->length;
		break;
	case CL_STAT: wire_frame_init(&f, WIRE_STAT, id); break;
	case CL_PREFETCH: wire_frame_init(&f, WIRE_PREFETCH, id); break;
	case CL_LIST:
		wire_frame_init(&f, WIRE_LIST, id);
		f.flags = op->recursive ? WIRE_LIST_RECURSIVE : 0;
		break;
	case CL_PUT:
		wire_frame_init(&f, WIRE_PUT, id);
		f.size = op->src_size;
		break;
	case CL_MKDIR: wire_frame_init(&f, WIRE_MKDIR, id); break;
	case CL_RMDIR: wire_frame_init(&f, WIRE_RMDIR, id); break;
	default: wire_frame_init(&f, WIRE_DELETE, id); break;
	}
	f.uri = op->uri;
	f.uri_len = (uint32_t)op->uri_len;
	int r = q_frame(ec, &f);
	if (r) {
		op_finish(e, op, r,
		          cl_strdup_printf("%.*s: cannot encode the request: %s", (int)op->uri_len,
		                           op->uri, s3dlio_code_str(r)));
		return;
	}
	if (!ec->inflight)
		ec->last_progress = e->now; /* the stall clock starts when there is work */
	op->id = id;
	op->ec = ec;
	op->state = OP_SENT;
	op->got_frame = 0;
	op->expected = op->received = 0;
	op->crc = 0;
	op->crc_sent = 0;
	ec->slots[id & ec->mask] = op;
	ec->inflight++;
	e->inflight++;
	if (op->kind == CL_PUT) {
		ec->tx = (struct put_tx){
		    .active = 1, .op = op, .id = id, .src = op->src, .size = op->src_size};
	}
	if (!op->sent_once) {
		op->sent_once = 1;
		CL_STAT_ADD(e->c, requests, 1);
	}
}

static unsigned ec_live(struct eng *e)
{
	unsigned k = 0;
	for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++)
		k += e->ecs[i].cn != NULL;
	return k;
}

static struct eng_conn *pick_conn(struct eng *e, int kind)
{
	struct eng_conn *best = NULL;
	for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++) {
		struct eng_conn *ec = &e->ecs[i];
		if (!ec->cn || ec->inflight >= ec->cap)
			continue;
		if (kind == CL_PUT && ec->tx.active)
			continue; /* one upload streams per connection at a time */
		if (!best || ec->inflight < best->inflight)
			best = ec;
	}
	return best;
}

/* Next request ready to go: retries whose time has come first, then unsent ones in order. */
static struct cl_op *next_ready(struct eng *e, int take)
{
	for (struct cl_op **p = &e->retry_head; *p; p = &(*p)->next_retry) {
		if ((*p)->retry_at <= e->now) {
			struct cl_op *op = *p;
			if (take) {
				*p = op->next_retry;
				op->next_retry = NULL;
			}
			return op;
		}
	}
	while (e->cursor < e->n && e->ops[e->cursor].state != OP_QUEUED)
		e->cursor++;
	if (e->cursor < e->n) {
		struct cl_op *op = &e->ops[e->cursor];
		if (take)
			e->cursor++;
		return op;
	}
	return NULL;
}

static void assign(struct eng *e)
{
	while (e->inflight < e->max_in_flight) {
		struct cl_op *op = next_ready(e, 0);
		if (!op)
			return;
		struct eng_conn *ec = pick_conn(e, op->kind);
		if (!ec)
			return;
		(void)next_ready(e, 1);
		op_send(e, ec, op);
	}
}

/* ---- connection setup and teardown ---- */

static void set_caps(struct eng *e)
{
	unsigned live = ec_live(e);
	if (!live)
		return;
	unsigned each = (e->max_in_flight + live - 1) / live;
	for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++) {
		struct eng_conn *ec = &e->ecs[i];
		if (!ec->cn)
			continue;
		ec->cap = each;
		if (ec->cn->max_in_flight && ec->cap > ec->cn->max_in_flight)
			ec->cap = ec->cn->max_in_flight;
	}
}

static int ec_attach(struct eng *e, struct cl_conn *cn)
{
	for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++) {
		struct eng_conn *ec = &e->ecs[i];
		if (ec->cn || ec_wants_write(ec) || ec->inflight)
			continue;
		if (!ec->slots) {
			ec->slots = calloc(e->slots_size, sizeof(*ec->slots));
			if (!ec->slots)
				return -1;
			ec->mask = e->slots_size - 1;
		}
		memset(ec->slots, 0, e->slots_size * sizeof(*ec->slots));
		ec->cn = cn;
		ec->inflight = 0;
		ec->rx_any = 0;
		ec->rx_op = NULL;
		ec->rx_dst = NULL;
		ec->rx_rem = 0;
		ec->q_len = ec->out_len = ec->out_off = ec->pay_rem = 0;
		memset(&ec->tx, 0, sizeof(ec->tx));
		ec->last_progress = cl_now_ms();
		return 0;
	}
	return -1;
}

static void ec_break(struct eng *e, struct eng_conn *ec, int code, const char *fmt, ...)
{
	char cause[WIRE_MAX_MESSAGE + 256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cause, sizeof(cause), fmt, ap);
	va_end(ap);

	struct cl_conn *cn = ec->cn;
	/* A pooled connection that dies before answering anything was most likely closed by the
	 * server while idle: its unanswered requests go again once, on another connection. */
	int stale = cn && cn->reused && !ec->rx_any && code == S3DLIO_E_CONNECTION;
	for (unsigned i = 0; i <= ec->mask && ec->inflight; i++) {
		struct cl_op *op = ec->slots[i];
		if (!op)
			continue;
		if (stale && !op->got_frame && op->conn_retries == 0) {
			op->conn_retries++;
			op_requeue(e, op, e->now);
			continue;
		}
		if (op->state == OP_DISCARD) {
			/* it had ended already, for its own reason (or the caller stopped a
			 * listing) */
			op_finish_local(e, op);
			continue;
		}
		op_finish(e, op, code,
		          cl_strdup_printf("%.*s: %s", (int)op->uri_len, op->uri, cause));
	}
	ec->rx_op = NULL;
	ec->rx_dst = NULL;
	ec->rx_rem = 0;
	ec->q_len = ec->out_len = ec->out_off = ec->pay_rem = 0;
	memset(&ec->tx, 0, sizeof(ec->tx));
	ec->inflight = 0;
	ec->cn = NULL;
	if (cn)
		cl_pool_discard(e->c, cn);
}

/* Return a connection to the pool if it ends the call at a clean frame boundary. */
static void ec_release(struct eng *e, struct eng_conn *ec)
{
	struct cl_conn *cn = ec->cn;
	if (!cn)
		return;
	ec->cn = NULL;
	if (ec->inflight || ec->rx_rem || ec_wants_write(ec) || cn->stage_off != cn->stage_len) {
		cl_pool_discard(e->c, cn);
		return;
	}
	if (cn->lowat > 1) {
		int one = 1;
		if (setsockopt(cn->fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one)) != 0) {
			cl_pool_discard(e->c, cn); /* a later call would wait for bytes never sent */
			return;
		}
		cn->lowat = 1;
	}
	cl_pool_checkin(e->c, cn);
}

/* ---- receiving ---- */

/* How many bytes a header read asks for after a DATA payload of len bytes (see top). */
static size_t hint_after(uint64_t len)
{
	if (len < 8192)
		return CL_STAGE_SIZE;
	uint64_t h = len / 256;
	return h < 512 ? 512 : h > 4096 ? 4096 : (size_t)h;
}

/* n payload bytes of the frame in progress have landed at ec->rx_dst (direct) or are at src
 * in staging (copied). */
static void rx_land(struct eng *e, struct eng_conn *ec, const uint8_t *src, size_t n)
{
	struct cl_op *op = ec->rx_op;
	if (ec->rx_dst) {
		if (src) {
			memcpy(ec->rx_dst, src, n);
			CL_STAT_ADD(e->c, bytes_copied, n);
		} else {
			CL_STAT_ADD(e->c, bytes_direct, n);
		}
		if (e->verify)
			op->crc = wire_crc32c(op->crc, ec->rx_dst, n);
		ec->rx_dst += n;
		op->received += n;
	}
	CL_STAT_ADD(e->c, bytes_received, n);
	ec->rx_rem -= n;
	if (!ec->rx_rem) {
		ec->rx_op = NULL;
		ec->rx_dst = NULL;
	}
}

static struct cl_op *ec_lookup(struct eng_conn *ec, uint64_t id)
{
	struct cl_op *op = ec->slots[id & ec->mask];
	return op && op->id == id ? op : NULL;
}

static char *op_msg(const struct cl_op *op, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static char *op_msg(const struct cl_op *op, const char *fmt, ...)
{
	char cause[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cause, sizeof(cause), fmt, ap);
	va_end(ap);
	return cl_strdup_printf("%.*s: %s", (int)op->uri_len, op->uri, cause);
}

static void on_header(struct eng *e, struct cl_op *op, const struct wire_frame *f)
{
	s3dlio_object_info *info = &op->info;
	info->size = f->object_size;
	info->mtime_ns = f->mtime;
	size_t el = f->etag ? f->etag_len : 0;
	if (el > sizeof(info->etag) - 1)
		el = sizeof(info->etag) - 1;
	if (el)
		memcpy(info->etag, f->etag, el);
	info->etag[el] = '\0';
	op->state = OP_RECV;
	if (op->kind != CL_GET)
		return;

	op->expected = f->size;
	if (op->length != S3DLIO_TO_END && f->size > op->length) {
		op_abort(e, op, S3DLIO_E_PROTOCOL,
		         op_msg(op, "the server announced %llu bytes for a range of %llu",
		                (unsigned long long)f->size, (unsigned long long)op->length));
		return;
	}
	if (f->size > SIZE_MAX) {
		op_abort(
		    e, op, S3DLIO_E_TOO_LARGE,
		    op_msg(op, "%llu bytes do not fit in memory", (unsigned long long)f->size));
		return;
	}
	if (op->use_buf || !e->alloc) {
		if (f->size > op->buf_cap) {
			op_abort(e, op, S3DLIO_E_TOO_SMALL,
			         op_msg(op, "%llu bytes do not fit in a buffer of %llu bytes",
			                (unsigned long long)f->size,
			                (unsigned long long)op->buf_cap));
			return;
		}
		op->data = op->buf;
		return;
	}
	void *p = e->alloc(e->actx, op->index, f->size);
	if (!p && f->size) {
		op_abort(e, op, S3DLIO_E_NOMEM,
		         op_msg(op, "cannot allocate %llu bytes", (unsigned long long)f->size));
		return;
	}
	op->data = p;
	op->placed = 1;
}

/* A DATA header: validate it and point rx_* at where its payload goes. */
static int on_data(struct eng *e, struct eng_conn *ec, const struct wire_frame *f)
{
	struct cl_op *op = ec_lookup(ec, f->id);
	if (!op) {
		ec_break(e, ec, S3DLIO_E_PROTOCOL,
		         "the server at %s sent DATA for unknown request %llu", e->c->url,
		         (unsigned long long)f->id);
		return -1;
	}
	op->got_frame = 1;
	ec->rx_op = op;
	ec->rx_rem = f->payload_len;
	ec->rx_dst = NULL;
	/* a small payload (say the tail of a large object) says little about what comes next:
	 * the hint then stays as the last HEADER set it */
	if (f->payload_len >= 8192)
		ec->cn->rd_hint = hint_after(f->payload_len);
	if (op->state == OP_DISCARD) {
		/* its payload goes to the scratch buffer */
	} else if (op->kind != CL_GET || op->state != OP_RECV) {
		op_abort(e, op, S3DLIO_E_PROTOCOL,
		         op_msg(op, "the server sent DATA %s",
		                op->kind != CL_GET ? "in reply to a request without data"
		                                   : "before HEADER"));
	} else if (f->offset != op->received || f->payload_len > op->expected - op->received) {
		op_abort(
		    e, op, S3DLIO_E_PROTOCOL,
		    op_msg(op, "the server sent bytes [%llu, +%llu) of %llu while %llu arrived",
		           (unsigned long long)f->offset, (unsigned long long)f->payload_len,
		           (unsigned long long)op->expected, (unsigned long long)op->received));
	} else if (ec->rx_rem) {
		ec->rx_dst = (uint8_t *)op->data + op->received;
	}
	if (!ec->rx_rem) {
		ec->rx_op = NULL;
		ec->rx_dst = NULL;
	}
	return ec->cn ? 0 : -1;
}

static void on_end(struct eng *e, struct cl_op *op, const struct wire_frame *f)
{
	if (op->state == OP_DISCARD) {
		op_finish_local(e, op);
		return;
	}
	switch (op->kind) {
	case CL_GET:
		if (op->state != OP_RECV) {
			op_finish(e, op, S3DLIO_E_PROTOCOL,
			          op_msg(op, "the server sent END before HEADER"));
			return;
		}
		if (op->received != op->expected || f->size != op->expected) {
			op_finish(
			    e, op, S3DLIO_E_CHECKSUM,
			    op_msg(op,
			           "the reply ended after %llu of %llu bytes (server counted %llu)",
			           (unsigned long long)op->received,
			           (unsigned long long)op->expected, (unsigned long long)f->size));
			return;
		}
		if (e->verify && op->crc != f->crc32c) {
			op_finish(
			    e, op, S3DLIO_E_CHECKSUM,
			    op_msg(
			        op,
			        "CRC32C mismatch: received bytes give %08x, the server sent %08x",
			        op->crc, f->crc32c));
			return;
		}
		break;
	case CL_STAT:
		if (op->state != OP_RECV) {
			op_finish(e, op, S3DLIO_E_PROTOCOL,
			          op_msg(op, "the server sent END before HEADER"));
			return;
		}
		break;
	case CL_PREFETCH:
		op->size = f->size; /* the object's size once cached; 0: the server does not cache it */
		break;
	case CL_PUT:
		if (f->size != op->src_size) {
			op_finish(e, op, S3DLIO_E_CHECKSUM,
			          op_msg(op, "the server stored %llu of %llu bytes",
			                 (unsigned long long)f->size,
			                 (unsigned long long)op->src_size));
			return;
		}
		if (op->crc_sent && f->crc32c != op->crc) {
			op_finish(e, op, S3DLIO_E_CHECKSUM,
			          op_msg(op, "the server stored bytes with CRC32C %08x, sent %08x",
			                 f->crc32c, op->crc));
			return;
		}
		break;
	default: break;
	}
	op_finish(e, op, S3DLIO_OK, NULL);
}

static void on_error(struct eng *e, struct cl_op *op, const struct wire_frame *f)
{
	if (op->state == OP_DISCARD) {
		op_finish_local(e, op); /* typically ERROR CANCELLED after our CANCEL */
		return;
	}
	/* BUSY: wait at least the server's retry_ms (a tenant's byte rate may ask for seconds),
	 * and at least a doubling back-off, a bounded number of times. */
	if (f->code == WIRE_E_BUSY && op->state == OP_SENT && op->busy_tries < ENG_BUSY_RETRIES) {
		uint64_t delay = 10u << op->busy_tries;
		if (delay > ENG_BUSY_MAX_DELAY_MS)
			delay = ENG_BUSY_MAX_DELAY_MS;
		if (f->retry_ms > delay)
			delay = f->retry_ms;
		op->busy_tries++;
		CL_STAT_ADD(e->c, busy_retries, 1);
		op_requeue(e, op, e->now + delay);
		return;
	}
	char *msg = f->message_len
	                ? cl_strdup_printf("%.*s", (int)f->message_len, f->message)
	                : op_msg(op, "the server failed the request: %s", wire_code_str(f->code));
	op_finish(e, op, cl_map_wire_code(f->code), msg);
}

static void on_entry(struct eng *e, struct cl_op *op, const struct wire_frame *f)
{
	if (op->state == OP_DISCARD)
		return;
	if (op->kind != CL_LIST) {
		op_abort(e, op, S3DLIO_E_PROTOCOL,
		         op_msg(op, "the server sent ENTRY to a non-LIST request"));
		return;
	}
	if (!op->list_fn)
		return;
	memcpy(e->entry_uri, f->uri, f->uri_len);
	e->entry_uri[f->uri_len] = '\0';
	if (op->list_fn(op->list_ctx, e->entry_uri, f->size, f->mtime, f->is_prefix ? 1 : 0))
		op_abort(e, op, S3DLIO_OK, NULL); /* the caller stopped the listing */
}

/* Any frame but DATA. Returns -1 when the connection broke. */
static int on_frame(struct eng *e, struct eng_conn *ec, const struct wire_frame *f)
{
	if (f->id == 0 && f->type == WIRE_ERROR) {
		int code = cl_map_wire_code(f->code);
		ec_break(e, ec, code, "the server at %s closed the connection: %.*s", e->c->url,
		         (int)f->message_len, f->message ? f->message : "");
		return -1;
	}
	struct cl_op *op = ec_lookup(ec, f->id);
	if (!op) {
		ec_break(e, ec, S3DLIO_E_PROTOCOL,
		         "the server at %s sent %s for unknown request %llu", e->c->url,
		         wire_type_str(f->type), (unsigned long long)f->id);
		return -1;
	}
	op->got_frame = 1;
	switch (f->type) {
	case WIRE_HEADER:
		if (op->state == OP_DISCARD)
			break;
		if (op->state != OP_SENT || (op->kind != CL_GET && op->kind != CL_STAT)) {
			op_abort(e, op, S3DLIO_E_PROTOCOL,
			         op_msg(op, "unexpected HEADER from the server"));
			break;
		}
		if (op->kind == CL_GET) {
			/* a large reply follows: read its first DATA header with a small read */
			uint64_t first = f->size < ec->cn->max_frame ? f->size : ec->cn->max_frame;
			ec->cn->rd_hint = hint_after(first);
		}
		on_header(e, op, f);
		break;
	case WIRE_ENTRY:
		ec->cn->rd_hint = CL_STAGE_SIZE;
		on_entry(e, op, f);
		break;
	case WIRE_END: on_end(e, op, f); break;
	case WIRE_ERROR: on_error(e, op, f); break;
	default:
		ec_break(e, ec, S3DLIO_E_PROTOCOL, "the server at %s sent a %s frame", e->c->url,
		         wire_type_str(f->type));
		return -1;
	}
	return ec->cn ? 0 : -1;
}

/* Parse the frames staging holds. Returns -1 when the connection broke; otherwise either a
 * payload is pending (staging is then empty) or staging holds at most a partial header. */
static int ec_parse(struct eng *e, struct eng_conn *ec)
{
	struct cl_conn *cn = ec->cn;
	while (cn->stage_off < cn->stage_len) {
		struct wire_frame f;
		size_t used = 0;
		int r = wire_decode(cn->stage + cn->stage_off, cn->stage_len - cn->stage_off,
		                    cn->max_frame, &f, &used);
		if (r == WIRE_NEED_MORE)
			break;
		if (r != WIRE_OK) {
			ec_break(e, ec, S3DLIO_E_PROTOCOL, "bad frame from the server at %s: %s",
			         e->c->url, wire_result_str(r));
			return -1;
		}
		cn->stage_off += used;
		if (f.type != WIRE_DATA) {
			if (on_frame(e, ec, &f))
				return -1;
			continue;
		}
		if (on_data(e, ec, &f))
			return -1;
		size_t avail = cn->stage_len - cn->stage_off;
		size_t k = ec->rx_rem < avail ? (size_t)ec->rx_rem : avail;
		if (k) {
			rx_land(e, ec, cn->stage + cn->stage_off, k);
			cn->stage_off += k;
		}
		if (ec->rx_rem) {
			cn->stage_off = cn->stage_len = 0;
			return 0;
		}
	}
	if (cn->stage_off == cn->stage_len) {
		cn->stage_off = cn->stage_len = 0;
	} else if (cn->stage_off) {
		memmove(cn->stage, cn->stage + cn->stage_off, cn->stage_len - cn->stage_off);
		cn->stage_len -= cn->stage_off;
		cn->stage_off = 0;
	}
	return 0;
}

/* Before the engine sleeps on ec: while a large payload is pending, poll() wakes only once
 * ENG_LOWAT bytes (or the rest of the payload) are queued, not for every segment that lands:
 * each wake-up costs the sender too (on loopback, the receiver's wake-up is sent from the
 * server's CPU). Back to 1 for headers, and before the connection returns to the pool. */
static void ec_lowat(struct eng *e, struct eng_conn *ec)
{
	struct cl_conn *cn = ec->cn;
	if (!cn || cn->ssl || !e->lowat)
		return;
	int want = ec->rx_rem > e->lowat ? (int)e->lowat : ec->rx_rem ? (int)ec->rx_rem : 1;
	if (want == cn->lowat || (want == 1 && !cn->lowat))
		return;
	if (setsockopt(cn->fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof(want)) == 0)
		cn->lowat = want;
}

static void ec_read(struct eng *e, struct eng_conn *ec)
{
	for (int round = 0; ec->cn && round < ENG_ROUNDS; round++) {
		struct cl_conn *cn = ec->cn;
		if (!ec->rx_rem && ec_parse(e, ec))
			return;
		struct iovec iov[2];
		int k = 0;
		size_t first = 0;
		if (ec->rx_rem) {
			uint8_t *dst = ec->rx_dst;
			uint64_t lim = ec->rx_rem;
			if (!dst) {
				if (!e->scratch && !(e->scratch = malloc(ENG_SCRATCH_SIZE))) {
					ec_break(e, ec, S3DLIO_E_NOMEM, "out of memory");
					return;
				}
				dst = e->scratch;
				if (lim > ENG_SCRATCH_SIZE)
					lim = ENG_SCRATCH_SIZE;
			}
			if (e->verify && lim > ENG_CRC_READ)
				lim = ENG_CRC_READ;
			if (lim > SSIZE_MAX / 2)
				lim = SSIZE_MAX / 2;
			first = (size_t)lim;
			iov[k++] = (struct iovec){dst, first};
			/* what follows the payload goes to staging (empty now), a bounded amount */
			if (lim == ec->rx_rem)
				iov[k++] = (struct iovec){cn->stage, cn->rd_hint};
		} else {
			size_t room = CL_STAGE_SIZE - cn->stage_len;
			if (room > cn->rd_hint)
				room = cn->rd_hint;
			iov[k++] = (struct iovec){cn->stage + cn->stage_len, room};
		}
		ssize_t n = cl_conn_readv(cn, iov, k);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				ec_lowat(e, ec);
				return;
			}
			ec_break(e, ec, S3DLIO_E_CONNECTION, "connection to %s lost: %s", e->c->url,
			         strerror(errno));
			return;
		}
		if (n == 0) {
			ec_break(e, ec, S3DLIO_E_CONNECTION,
			         "connection to %s lost: the server closed it", e->c->url);
			return;
		}
		ec->rx_any = 1;
		ec_progress(e, ec);
		size_t got = (size_t)n;
		if (ec->rx_rem) {
			size_t d = got < first ? got : first;
			rx_land(e, ec, NULL, d);
			if (got > d) {
				cn->stage_off = 0;
				cn->stage_len = got - d;
			}
		} else {
			cn->stage_len += got;
		}
	}
	/* more may be waiting: parse what we have; poll() reports the rest */
	if (ec->cn && !ec->rx_rem)
		(void)ec_parse(e, ec);
	ec_lowat(e, ec);
}

/* ---- the loop ---- */

/* Fail every request not sent yet; no_conn: because no connection could be set up (a list
 * of servers then moves them to the next one, whatever the code: refused, timed out...). */
static void fail_unsent(struct eng *e, int code, const char *cause, int no_conn)
{
	struct cl_op *op;
	while ((op = next_ready(e, 1)) != NULL) {
		op->no_conn = no_conn;
		op_finish(e, op, code,
		          cl_strdup_printf("%.*s: %s", (int)op->uri_len, op->uri, cause));
	}
	/* retries not due yet */
	while ((op = e->retry_head) != NULL) {
		e->retry_head = op->next_retry;
		op->next_retry = NULL;
		op->no_conn = no_conn;
		op_finish(e, op, code,
		          cl_strdup_printf("%.*s: %s", (int)op->uri_len, op->uri, cause));
	}
}

static int get_conn(struct eng *e, int wait)
{
	s3dlio_error err = {0, ""};
	struct cl_conn *cn = NULL;
	int r = cl_pool_checkout(e->c, wait, &cn, &err);
	if (r == CL_POOL_NONE_FREE)
		return r;
	if (r) {
		if (wait)
			fail_unsent(e, r, err.message, 1);
		return r;
	}
	if (ec_attach(e, cn)) {
		cl_pool_checkin(e->c, cn);
		if (wait)
			fail_unsent(e, S3DLIO_E_NOMEM, "out of memory", 0);
		return S3DLIO_E_NOMEM;
	}
	return 0;
}

static int poll_timeout(struct eng *e)
{
	int64_t t = -1;
	uint64_t io = e->c->io_timeout_ms;
	for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++) {
		struct eng_conn *ec = &e->ecs[i];
		if (!ec->cn || (!ec->inflight && !ec_wants_write(ec)))
			continue;
		uint64_t due = ec->last_progress + io;
		int64_t left = due > e->now ? (int64_t)(due - e->now) : 0;
		if (t < 0 || left < t)
			t = left;
	}
	for (struct cl_op *op = e->retry_head; op; op = op->next_retry) {
		int64_t left = op->retry_at > e->now ? (int64_t)(op->retry_at - e->now) : 0;
		if (t < 0 || left < t)
			t = left;
	}
	if (t > INT_MAX)
		t = INT_MAX;
	return (int)t;
}

static void check_timeouts(struct eng *e)
{
	uint64_t io = e->c->io_timeout_ms;
	for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++) {
		struct eng_conn *ec = &e->ecs[i];
		if (!ec->cn || (!ec->inflight && !ec_wants_write(ec)))
			continue;
		if (e->now >= ec->last_progress + io)
			ec_break(e, ec, S3DLIO_E_TIMEOUT, "no progress from %s for %llu ms",
			         e->c->url, (unsigned long long)io);
	}
}

static int work_left(struct eng *e)
{
	if (e->remaining)
		return 1;
	for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++)
		if (e->ecs[i].cn && ec_wants_write(&e->ecs[i]))
			return 1;
	return 0;
}

void cl_engine_run(s3dlio_client *c, struct cl_op *ops, size_t n, unsigned max_in_flight,
                   s3dlio_alloc_fn alloc, s3dlio_release_fn release, void *actx)
{
	struct eng *e = calloc(1, sizeof(*e));
	if (!e) {
		for (size_t i = 0; i < n; i++) {
			ops[i].status = S3DLIO_E_NOMEM;
			ops[i].error = cl_strdup_printf("%.*s: out of memory", (int)ops[i].uri_len,
			                                ops[i].uri ? ops[i].uri : "");
		}
		CL_STAT_ADD(c, errors, n);
		return;
	}
	e->c = c;
	e->ops = ops;
	e->n = n;
	e->alloc = alloc;
	e->release = release;
	e->actx = actx;
	e->verify = c->verify_crc;
	e->lowat = c->rcvlowat;
	e->now = cl_now_ms();
	e->max_in_flight = max_in_flight ? max_in_flight : CL_DEFAULT_IN_FLIGHT;
	if (e->max_in_flight > ENG_MAX_IN_FLIGHT)
		e->max_in_flight = ENG_MAX_IN_FLIGHT;
	e->slots_size = 1;
	while (e->slots_size < e->max_in_flight)
		e->slots_size <<= 1;

	e->remaining = n;
	for (size_t i = 0; i < n; i++) {
		struct cl_op *op = &ops[i];
		op->state = OP_QUEUED;
		if (!op->uri || !op->uri_len || op->uri_len > WIRE_MAX_URI) {
			op_finish(
			    e, op, S3DLIO_E_INVALID,
			    op->uri ? cl_strdup_printf("%.*s...: URI empty or longer than %u bytes",
			                               op->uri_len > 64 ? 64 : (int)op->uri_len,
			                               op->uri, WIRE_MAX_URI)
			            : cl_strdup_printf("no URI given"));
		}
	}
	unsigned want = (unsigned)((e->remaining + 15) / 16);
	unsigned most = c->max_conns < CL_CONNS_PER_CALL ? c->max_conns : CL_CONNS_PER_CALL;
	e->want_conns = want < 1 ? 1 : want > most ? most : want;

	int first = 1;
	if (e->remaining && get_conn(e, 1) == 0) {
		/* share the in-flight budget as if all wanted connections were there: the first
		 * connection does not take it all before the others join */
		unsigned live_target = e->want_conns;
		unsigned each = (e->max_in_flight + live_target - 1) / live_target;
		e->ecs[0].cap = each;
		if (e->ecs[0].cn->max_in_flight && e->ecs[0].cap > e->ecs[0].cn->max_in_flight)
			e->ecs[0].cap = e->ecs[0].cn->max_in_flight;
	}
	while (work_left(e)) {
		e->now = cl_now_ms();
		if (!ec_live(e)) {
			if (!e->remaining)
				break;
			if (e->inflight == 0 && get_conn(e, 1) != 0)
				break;
			set_caps(e);
		}
		assign(e);
		for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++)
			if (e->ecs[i].cn)
				ec_flush(e, &e->ecs[i]);
		if (first) {
			/* the first requests are on their way: now open the other connections */
			first = 0;
			while (ec_live(e) && ec_live(e) < e->want_conns && get_conn(e, 0) == 0)
				;
			set_caps(e);
			assign(e);
			for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++)
				if (e->ecs[i].cn)
					ec_flush(e, &e->ecs[i]);
		}
		if (!work_left(e))
			break; /* e.g. the last CANCEL just went out */

		struct pollfd pfd[CL_CONNS_PER_CALL];
		struct eng_conn *pec[CL_CONNS_PER_CALL];
		nfds_t k = 0;
		for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++) {
			struct eng_conn *ec = &e->ecs[i];
			if (!ec->cn)
				continue;
			pfd[k].fd = ec->cn->fd;
			pfd[k].events = (short)(POLLIN | (ec_wants_write(ec) ? POLLOUT : 0));
			pfd[k].revents = 0;
			pec[k++] = ec;
		}
		int timeout = poll_timeout(e);
		if (!k && timeout < 0)
			break; /* nothing can make progress (cannot happen: guarded above) */
		/* TLS may hold decrypted bytes that poll() cannot see: do not sleep on them */
		int pending = 0;
		for (nfds_t i = 0; i < k; i++)
			pending |= cl_conn_pending(pec[i]->cn);
		int r = poll(pfd, k, pending ? 0 : timeout);
		if (r < 0 && errno != EINTR) {
			int saved = errno;
			for (nfds_t i = 0; i < k; i++)
				if (pec[i]->cn)
					ec_break(e, pec[i], S3DLIO_E_INTERNAL, "poll: %s",
					         strerror(saved));
			continue;
		}
		e->now = cl_now_ms();
		for (nfds_t i = 0; (r > 0 || pending) && i < k; i++) {
			struct eng_conn *ec = pec[i];
			if (ec->cn && cl_conn_pending(ec->cn))
				pfd[i].revents |= POLLIN;
			if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
				ec_read(e, ec);
			if (ec->cn && (pfd[i].revents & POLLOUT))
				ec_flush(e, ec);
		}
		check_timeouts(e);
	}

	/* whatever is still not done has no connection left to run on */
	if (e->remaining)
		fail_unsent(e, S3DLIO_E_CONNECTION, "no connection to the server", 1);
	for (unsigned i = 0; i < CL_CONNS_PER_CALL; i++) {
		struct eng_conn *ec = &e->ecs[i];
		ec_release(e, ec);
		free(ec->slots);
		free(ec->q);
		free(ec->out);
	}
	free(e->scratch);
	free(e);
}
