/* client.c: the public API of libs3dlio (s3dlio/s3dlio.h).
 *
 * Owns the client handle (options, environment, stats), turns each public call into requests
 * for the engine (cl_engine.c) and copies results and messages back to the caller. Every call,
 * single or many, runs through the same engine. */
#include "cl_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ---- errors and helpers shared by the modules ---- */

void cl_err(s3dlio_error *err, int code, const char *fmt, ...)
{
	if (!err)
		return;
	err->code = code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
}

char *cl_strdup_printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	char *s = malloc((size_t)n + 1);
	if (!s)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return s;
}

void cl_free_msg(char *msg)
{
	free(msg);
}

uint64_t cl_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int cl_map_wire_code(uint32_t code)
{
	switch (code) {
	case WIRE_E_NOT_FOUND: return S3DLIO_E_NOT_FOUND;
	case WIRE_E_PERMISSION: return S3DLIO_E_PERMISSION;
	case WIRE_E_INVALID: return S3DLIO_E_INVALID;
	case WIRE_E_BUSY: return S3DLIO_E_BUSY;
	case WIRE_E_BACKEND: return S3DLIO_E_BACKEND;
	case WIRE_E_IO: return S3DLIO_E_IO;
	case WIRE_E_TOO_LARGE: return S3DLIO_E_TOO_LARGE;
	case WIRE_E_CANCELLED: return S3DLIO_E_CANCELLED;
	case WIRE_E_PROTOCOL: return S3DLIO_E_PROTOCOL;
	case WIRE_E_RANGE: return S3DLIO_E_RANGE;
	case WIRE_E_UNSUPPORTED: return S3DLIO_E_UNSUPPORTED;
	case WIRE_E_CHECKSUM: return S3DLIO_E_CHECKSUM;
	case WIRE_E_SHUTDOWN: return S3DLIO_E_CONNECTION;
	case WIRE_E_TIMEOUT: return S3DLIO_E_TIMEOUT;
	case WIRE_E_INTERNAL: return S3DLIO_E_INTERNAL;
	default: return S3DLIO_E_PROTOCOL;
	}
}

S3DLIO_API const char *s3dlio_code_str(int code)
{
	switch (code) {
	case S3DLIO_OK: return "success";
	case S3DLIO_E_NOT_FOUND: return "not found";
	case S3DLIO_E_PERMISSION: return "permission denied";
	case S3DLIO_E_INVALID: return "invalid argument";
	case S3DLIO_E_CONNECTION: return "connection failed";
	case S3DLIO_E_BUSY: return "server busy";
	case S3DLIO_E_BACKEND: return "storage backend error";
	case S3DLIO_E_IO: return "I/O error";
	case S3DLIO_E_NOMEM: return "out of memory";
	case S3DLIO_E_PROTOCOL: return "protocol error";
	case S3DLIO_E_TIMEOUT: return "timed out";
	case S3DLIO_E_CHECKSUM: return "checksum mismatch";
	case S3DLIO_E_TOO_SMALL: return "buffer too small";
	case S3DLIO_E_RANGE: return "range past the end of the object";
	case S3DLIO_E_UNSUPPORTED: return "unsupported";
	case S3DLIO_E_TOO_LARGE: return "too large";
	case S3DLIO_E_CANCELLED: return "cancelled";
	case S3DLIO_E_INTERNAL: return "internal error";
	default: return "unknown error";
	}
}

/* ---- the client handle ---- */

static int env_flag(const char *name, int dflt)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return dflt;
	if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") ||
	    !strcasecmp(v, "off"))
		return 0;
	return 1;
}

static void client_free_fields(s3dlio_client *c)
{
	free(c->url);
	free(c->host);
	free(c->port);
	free(c->path);
	free(c->tls_name);
	cl_tls_ctx_free(c);
	if (c->token) {
		memset(c->token, 0, strlen(c->token));
		free(c->token);
	}
	free(c);
}

static int client_set_options(s3dlio_client *c, const char *url, const s3dlio_options *opts,
                              int routes_only, s3dlio_error *err)
{
	const char *lw = getenv("S3DLIO_RCVLOWAT");
	char *end = NULL;
	unsigned long v = lw && *lw ? strtoul(lw, &end, 10) : CL_DEFAULT_RCVLOWAT;
	if (lw && *lw && (*end || v > CL_MAX_RCVLOWAT)) {
		cl_err(err, S3DLIO_E_INVALID,
		       "S3DLIO_RCVLOWAT=%.40s: not a byte count from 0 (off) to %u", lw,
		       CL_MAX_RCVLOWAT);
		return S3DLIO_E_INVALID;
	}
	c->rcvlowat = (unsigned)v;
	c->max_conns = opts && opts->max_connections ? opts->max_connections : CL_DEFAULT_CONNS;
	c->connect_timeout_ms =
	    opts && opts->connect_timeout_ms ? opts->connect_timeout_ms : CL_DEFAULT_CONNECT_MS;
	c->io_timeout_ms = opts && opts->io_timeout_ms ? opts->io_timeout_ms : CL_DEFAULT_IO_MS;
	c->verify_crc = !opts || opts->verify_crc < 0 ? env_flag("S3DLIO_VERIFY_CRC", 1)
	                                              : opts->verify_crc != 0;
	const char *token = opts && opts->token ? opts->token : getenv("S3DLIO_TOKEN");
	if (token && *token) {
		if (strlen(token) > WIRE_MAX_TOKEN) {
			cl_err(err, S3DLIO_E_INVALID, "%s: the token is longer than %u bytes", url,
			       WIRE_MAX_TOKEN);
			return S3DLIO_E_INVALID;
		}
		if (!(c->token = strdup(token))) {
			cl_err(err, S3DLIO_E_NOMEM, "out of memory");
			return S3DLIO_E_NOMEM;
		}
	}
	cl_tls_wanted(url, &c->tls);
	if (c->tls && !c->is_unix && !routes_only) {
		int r = cl_tls_ctx_new(c, err);
		if (r)
			return r;
	}
	atomic_init(&c->stats.requests, 0);
	atomic_init(&c->stats.errors, 0);
	atomic_init(&c->stats.bytes_received, 0);
	atomic_init(&c->stats.bytes_direct, 0);
	atomic_init(&c->stats.bytes_copied, 0);
	atomic_init(&c->stats.bytes_sent, 0);
	atomic_init(&c->stats.connects, 0);
	atomic_init(&c->stats.reconnects, 0);
	atomic_init(&c->stats.busy_retries, 0);
	if (cl_pool_init(c)) {
		cl_err(err, S3DLIO_E_INTERNAL, "%s: cannot create the connection pool", url);
		return S3DLIO_E_INTERNAL;
	}
	return 0;
}

s3dlio_client *cl_client_new_one(const char *url, const s3dlio_options *opts, int probe,
                                 s3dlio_error *err)
{
	s3dlio_client *c = calloc(1, sizeof(*c));
	if (!c || !(c->url = strdup(url ? url : ""))) {
		cl_err(err, S3DLIO_E_NOMEM, "out of memory");
		free(c);
		return NULL;
	}
	if (cl_conn_parse_url(c, url, err) || client_set_options(c, url, opts, 0, err)) {
		client_free_fields(c);
		return NULL;
	}
	if (!probe)
		return c;
	/* connect once: a client for a server that is not there fails here, clearly */
	struct cl_conn *cn = NULL;
	if (cl_pool_checkout(c, 1, &cn, err)) {
		cl_pool_destroy(c);
		client_free_fields(c);
		return NULL;
	}
	cl_pool_checkin(c, cn);
	return c;
}

S3DLIO_API s3dlio_client *s3dlio_client_new(const char *url, const s3dlio_options *opts,
                                            s3dlio_error *err)
{
	char **urls = NULL, **names = NULL;
	size_t n = 0;
	s3dlio_client *c = NULL;
	if (cl_route_split(url, &urls, &names, &n, err))
		return NULL;
	if (n == 1 && !names[0]) {
		c = cl_client_new_one(urls[0], opts, 1, err);
		goto done;
	}
	/* several servers: c only routes (cl_route.c) */
	c = calloc(1, sizeof(*c));
	if (!c || !(c->url = strdup(url))) {
		cl_err(err, S3DLIO_E_NOMEM, "out of memory");
		free(c);
		c = NULL;
		goto done;
	}
	if (client_set_options(c, url, opts, 1, err)) {
		client_free_fields(c);
		c = NULL;
		goto done;
	}
	if (cl_route_init(c, urls, names, n, opts, err)) {
		s3dlio_client_free(c);
		c = NULL;
	}
done:
	cl_route_free_list(urls, names, n);
	return c;
}

S3DLIO_API void s3dlio_client_free(s3dlio_client *c)
{
	if (!c)
		return;
	cl_route_destroy(c);
	cl_pool_destroy(c);
	client_free_fields(c);
}

S3DLIO_API const char *s3dlio_client_url(const s3dlio_client *c)
{
	return c ? c->url : NULL;
}

S3DLIO_API void s3dlio_get_stats(s3dlio_client *c, s3dlio_stats *out)
{
	if (!out)
		return;
	memset(out, 0, sizeof(*out));
	if (!c)
		return;
	out->requests = atomic_load_explicit(&c->stats.requests, memory_order_relaxed);
	out->errors = atomic_load_explicit(&c->stats.errors, memory_order_relaxed);
	out->bytes_received = atomic_load_explicit(&c->stats.bytes_received, memory_order_relaxed);
	out->bytes_direct = atomic_load_explicit(&c->stats.bytes_direct, memory_order_relaxed);
	out->bytes_copied = atomic_load_explicit(&c->stats.bytes_copied, memory_order_relaxed);
	out->bytes_sent = atomic_load_explicit(&c->stats.bytes_sent, memory_order_relaxed);
	out->connects = atomic_load_explicit(&c->stats.connects, memory_order_relaxed);
	out->reconnects = atomic_load_explicit(&c->stats.reconnects, memory_order_relaxed);
	out->busy_retries = atomic_load_explicit(&c->stats.busy_retries, memory_order_relaxed);
	cl_route_stats(c, out);
}

S3DLIO_API const char *s3dlio_client_route(const s3dlio_client *c, const char *uri)
{
	if (!c || !uri)
		return NULL;
	return c->nmembers ? cl_route_member_url(c, uri) : c->url;
}

/* Every call runs here: on the engine, or spread over the servers of a list. */
static void client_run(s3dlio_client *c, struct cl_op *ops, size_t n, unsigned max_in_flight,
                       s3dlio_alloc_fn alloc, s3dlio_release_fn release, void *actx)
{
	if (c->nmembers)
		cl_route_run(c, ops, n, max_in_flight, alloc, release, actx);
	else
		cl_engine_run(c, ops, n, max_in_flight, alloc, release, actx);
}

/* ---- calls ---- */

/* The allocator used when the caller gives none: malloc, released with free. */
static void *default_alloc(void *ctx, size_t index, uint64_t size)
{
	(void)ctx;
	(void)index;
	return malloc(size ? (size_t)size : 1);
}

static void default_release(void *ctx, size_t index, void *ptr, uint64_t size)
{
	(void)ctx;
	(void)index;
	(void)size;
	free(ptr);
}

static void op_init(struct cl_op *op, int kind, const char *uri)
{
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	op->uri = uri;
	op->uri_len = uri ? strlen(uri) : 0;
	op->length = S3DLIO_TO_END;
}

/* Run one request and report its outcome through err. */
static int run_one(s3dlio_client *c, struct cl_op *op, s3dlio_alloc_fn alloc,
                   s3dlio_release_fn release, void *ctx, s3dlio_error *err)
{
	if (!c) {
		cl_err(err, S3DLIO_E_INVALID, "%s: no client", op->uri ? op->uri : "");
		return S3DLIO_E_INVALID;
	}
	client_run(c, op, 1, 1, alloc, release, ctx);
	if (op->status != S3DLIO_OK)
		cl_err(err, op->status, "%s", op->error ? op->error : s3dlio_code_str(op->status));
	else if (err) {
		err->code = S3DLIO_OK;
		err->message[0] = '\0';
	}
	cl_free_msg(op->error);
	op->error = NULL;
	return op->status;
}

S3DLIO_API int s3dlio_get(s3dlio_client *c, const char *uri, uint64_t offset, uint64_t length,
                          s3dlio_alloc_fn alloc, s3dlio_release_fn release, void *ctx, void **data,
                          uint64_t *size, s3dlio_object_info *info, s3dlio_error *err)
{
	struct cl_op op;
	op_init(&op, CL_GET, uri);
	op.offset = offset;
	op.length = length;
	if (!alloc) {
		alloc = default_alloc;
		release = default_release;
	}
	int r = run_one(c, &op, alloc, release, ctx, err);
	if (data)
		*data = r ? NULL : op.data;
	if (size)
		*size = r ? 0 : op.size;
	if (info)
		*info = op.info;
	if (!r && !data && op.data && release)
		release(ctx, 0, op.data, op.expected); /* nowhere to hand it: do not leak it */
	return r;
}

S3DLIO_API int s3dlio_get_into(s3dlio_client *c, const char *uri, uint64_t offset, uint64_t length,
                               void *buf, uint64_t cap, uint64_t *size, s3dlio_error *err)
{
	if (!buf && cap) {
		cl_err(err, S3DLIO_E_INVALID, "%s: a buffer of %llu bytes at NULL", uri ? uri : "",
		       (unsigned long long)cap);
		return S3DLIO_E_INVALID;
	}
	struct cl_op op;
	op_init(&op, CL_GET, uri);
	op.offset = offset;
	op.length = length;
	op.use_buf = 1;
	op.buf = buf;
	op.buf_cap = cap;
	int r = run_one(c, &op, NULL, NULL, NULL, err);
	if (size)
		*size = r ? 0 : op.size;
	return r;
}

/* The ops for a many-request call (*ops NULL, and 0, when n is 0), or an error code. */
static int requests_start(s3dlio_client *c, s3dlio_request *reqs, size_t n, const char *what,
                          struct cl_op **ops, s3dlio_error *err)
{
	if (err) {
		err->code = S3DLIO_OK;
		err->message[0] = '\0';
	}
	*ops = NULL;
	if (!n)
		return S3DLIO_OK;
	if (!c || !reqs) {
		cl_err(err, S3DLIO_E_INVALID, "%s: no client or no requests", what);
		return S3DLIO_E_INVALID;
	}
	if (!(*ops = calloc(n, sizeof(**ops)))) {
		cl_err(err, S3DLIO_E_NOMEM, "%s: out of memory for %zu requests", what, n);
		return S3DLIO_E_NOMEM;
	}
	return S3DLIO_OK;
}

/* Move the outcome of ops (then freed) into reqs: the code of the first failure, or OK. */
static int requests_collect(s3dlio_request *reqs, struct cl_op *ops, size_t n, s3dlio_error *err)
{
	int result = S3DLIO_OK;
	for (size_t i = 0; i < n; i++) {
		s3dlio_request *rq = &reqs[i];
		rq->data = ops[i].data;
		rq->size = ops[i].size;
		rq->info = ops[i].info;
		rq->status = ops[i].status;
		rq->error = ops[i].error; /* ownership moves to the request */
		if (rq->status != S3DLIO_OK && result == S3DLIO_OK) {
			result = rq->status;
			cl_err(err, result, "%s", rq->error ? rq->error : s3dlio_code_str(result));
		}
	}
	free(ops);
	return result;
}

S3DLIO_API int s3dlio_get_many(s3dlio_client *c, s3dlio_request *reqs, size_t n,
                               unsigned max_in_flight, s3dlio_alloc_fn alloc,
                               s3dlio_release_fn release, void *ctx, s3dlio_error *err)
{
	struct cl_op *ops = NULL;
	int r = requests_start(c, reqs, n, "get_many", &ops, err);
	if (r || !ops)
		return r;
	if (!alloc) {
		alloc = default_alloc;
		release = default_release;
	}
	for (size_t i = 0; i < n; i++) {
		op_init(&ops[i], CL_GET, reqs[i].uri);
		ops[i].index = i;
		ops[i].offset = reqs[i].offset;
		ops[i].length = reqs[i].length;
		ops[i].use_buf = reqs[i].buf != NULL;
		ops[i].buf = reqs[i].buf;
		ops[i].buf_cap = reqs[i].buf_cap;
	}
	client_run(c, ops, n, max_in_flight, alloc, release, ctx);
	return requests_collect(reqs, ops, n, err);
}

S3DLIO_API int s3dlio_prefetch_many(s3dlio_client *c, s3dlio_request *reqs, size_t n,
                                    unsigned max_in_flight, s3dlio_error *err)
{
	struct cl_op *ops = NULL;
	int r = requests_start(c, reqs, n, "prefetch", &ops, err);
	if (r || !ops)
		return r;
	for (size_t i = 0; i < n; i++) {
		op_init(&ops[i], CL_PREFETCH, reqs[i].uri);
		ops[i].index = i;
	}
	client_run(c, ops, n, max_in_flight, NULL, NULL, NULL);
	return requests_collect(reqs, ops, n, err);
}

S3DLIO_API void s3dlio_requests_clear(s3dlio_request *reqs, size_t n)
{
	if (!reqs)
		return;
	for (size_t i = 0; i < n; i++) {
		free(reqs[i].error);
		reqs[i].error = NULL;
	}
}

S3DLIO_API int s3dlio_put(s3dlio_client *c, const char *uri, const void *data, uint64_t size,
                          s3dlio_error *err)
{
	if (!data && size) {
		cl_err(err, S3DLIO_E_INVALID, "%s: %llu bytes at NULL", uri ? uri : "",
		       (unsigned long long)size);
		return S3DLIO_E_INVALID;
	}
	struct cl_op op;
	op_init(&op, CL_PUT, uri);
	op.src = data;
	op.src_size = size;
	return run_one(c, &op, NULL, NULL, NULL, err);
}

S3DLIO_API int s3dlio_stat(s3dlio_client *c, const char *uri, s3dlio_object_info *info,
                           s3dlio_error *err)
{
	struct cl_op op;
	op_init(&op, CL_STAT, uri);
	int r = run_one(c, &op, NULL, NULL, NULL, err);
	if (info)
		*info = op.info;
	return r;
}

S3DLIO_API int s3dlio_list(s3dlio_client *c, const char *uri, int recursive, s3dlio_list_fn fn,
                           void *ctx, s3dlio_error *err)
{
	struct cl_op op;
	op_init(&op, CL_LIST, uri);
	op.recursive = recursive;
	op.list_fn = fn;
	op.list_ctx = ctx;
	return run_one(c, &op, NULL, NULL, NULL, err);
}

S3DLIO_API int s3dlio_delete(s3dlio_client *c, const char *uri, s3dlio_error *err)
{
	struct cl_op op;
	op_init(&op, CL_DELETE, uri);
	return run_one(c, &op, NULL, NULL, NULL, err);
}

S3DLIO_API int s3dlio_mkdir(s3dlio_client *c, const char *uri, s3dlio_error *err)
{
	struct cl_op op;
	op_init(&op, CL_MKDIR, uri);
	return run_one(c, &op, NULL, NULL, NULL, err);
}

S3DLIO_API int s3dlio_rmdir(s3dlio_client *c, const char *uri, s3dlio_error *err)
{
	struct cl_op op;
	op_init(&op, CL_RMDIR, uri);
	return run_one(c, &op, NULL, NULL, NULL, err);
}
