/* metrics.c: counters and the Prometheus endpoint (see metrics.h). */
#include "metrics.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/util.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "crccache.h"
#include "tokens.h"

static const char *const metrics_backend_names[MB_N] = {"file", "direct", "s3", "az", "gs", "none"};
static const char *const metrics_op_names[MOP_N] = {"GET",    "STAT",     "LIST",  "PUT",
                                                    "DELETE", "PREFETCH", "MKDIR", "RMDIR"};
/* upper bounds in seconds, as text and in nanoseconds */
static const char *const metrics_bucket_text[METRICS_NBUCKETS] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5",     "10"};
static const uint64_t metrics_bucket_ns[METRICS_NBUCKETS] = {
    500000ull,     1000000ull,    2500000ull,    5000000ull,    10000000ull,
    25000000ull,   50000000ull,   100000000ull,  250000000ull,  500000000ull,
    1000000000ull, 2500000000ull, 5000000000ull, 10000000000ull};

struct metrics_http {
	struct evhttp *http;
	struct metrics_sources src;
};

int metrics_backend_of(const char *name)
{
	if (name && strcmp(name, "gcs") == 0)
		return MB_GS;
	for (int i = 0; name && i < MB_NONE; i++)
		if (strcmp(name, metrics_backend_names[i]) == 0)
			return i;
	return MB_NONE;
}

int metrics_op_of(uint32_t wire_type)
{
	switch (wire_type) {
	case WIRE_GET: return MOP_GET;
	case WIRE_STAT: return MOP_STAT;
	case WIRE_LIST: return MOP_LIST;
	case WIRE_PUT: return MOP_PUT;
	case WIRE_DELETE: return MOP_DELETE;
	case WIRE_PREFETCH: return MOP_PREFETCH;
	case WIRE_MKDIR: return MOP_MKDIR;
	case WIRE_RMDIR: return MOP_RMDIR;
	default: return MOP_N;
	}
}

uint64_t metrics_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void metrics_backend_done(struct metrics *m, int backend, int op, uint64_t ns, int ok)
{
	if (!m || backend < 0 || backend >= MB_N || op < 0 || op >= MOP_N)
		return;
	for (int i = 0; i < METRICS_NBUCKETS; i++)
		if (ns <= metrics_bucket_ns[i]) {
			metrics_add(&m->lat_bucket[backend][op][i], 1);
			break;
		}
	metrics_add(&m->lat_count[backend][op], 1);
	metrics_add(&m->lat_sum_ns[backend][op], ns);
	if (!ok)
		metrics_add(&m->backend_errors[backend][op], 1);
}

static uint64_t metrics_get(atomic_uint_fast64_t *c)
{
	return (uint64_t)atomic_load_explicit(c, memory_order_relaxed);
}

static void metrics_help(struct evbuffer *b, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metrics_scalar(struct evbuffer *b, const char *name, const char *type, const char *help,
                           uint64_t v)
{
	metrics_help(b, name, type, help);
	evbuffer_add_printf(b, "%s %" PRIu64 "\n", name, v);
}

/* Backends by op: one line per pair that has counted anything (and every GET line of a
 * remote backend, so a dashboard sees zeros). */
static void metrics_by_backend_op(struct evbuffer *b, const char *name, const char *help,
                                  atomic_uint_fast64_t (*v)[MOP_N])
{
	metrics_help(b, name, "counter", help);
	for (int be = 0; be < MB_N; be++)
		for (int op = 0; op < MOP_N; op++) {
			uint64_t n = metrics_get(&v[be][op]);
			if (n || (op == MOP_GET && be >= MB_S3 && be <= MB_GS))
				evbuffer_add_printf(b, "%s{backend=\"%s\",op=\"%s\"} %" PRIu64 "\n",
				                    name, metrics_backend_names[be],
				                    metrics_op_names[op], n);
		}
}

static void metrics_fold_n(atomic_uint_fast64_t *dst, atomic_uint_fast64_t *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		atomic_store_explicit(&dst[i],
		                      atomic_load_explicit(&dst[i], memory_order_relaxed) +
		                          atomic_load_explicit(&src[i], memory_order_relaxed),
		                      memory_order_relaxed);
}

/* Add the counters of src (a worker's, being written meanwhile) to dst (the scrape's). */
static void metrics_fold(struct metrics *dst, struct metrics *src)
{
	for (int be = 0; be < MB_N; be++) {
		metrics_fold_n(dst->requests[be], src->requests[be], MOP_N);
		metrics_fold_n(dst->errors[be], src->errors[be], METRICS_NCODES);
		metrics_fold_n(dst->backend_requests[be], src->backend_requests[be], MOP_N);
		metrics_fold_n(dst->backend_errors[be], src->backend_errors[be], MOP_N);
		metrics_fold_n(dst->lat_count[be], src->lat_count[be], MOP_N);
		metrics_fold_n(dst->lat_sum_ns[be], src->lat_sum_ns[be], MOP_N);
		for (int op = 0; op < MOP_N; op++)
			metrics_fold_n(dst->lat_bucket[be][op], src->lat_bucket[be][op],
			               METRICS_NBUCKETS);
	}
	metrics_fold_n(dst->bytes_sent, src->bytes_sent, MB_N);
	metrics_fold_n(dst->bytes_received, src->bytes_received, MB_N);
	metrics_fold_n(&dst->connections_total, &src->connections_total, 1);
	metrics_fold_n(&dst->busy_total, &src->busy_total, 1);
	metrics_fold_n(&dst->refused_total, &src->refused_total, 1);
	metrics_gauge(&dst->connections, atomic_load(&src->connections));
	metrics_gauge(&dst->in_flight, atomic_load(&src->in_flight));
}

static void metrics_render(const struct metrics_sources *src, struct evbuffer *b, struct metrics *m)
{
	for (size_t i = 0; i < src->nm; i++)
		metrics_fold(m, &src->m[i]);
	metrics_by_backend_op(b, "s3dliod_requests_total", "Requests received, by backend and op.",
	                      m->requests);
	metrics_help(b, "s3dliod_errors_total", "counter",
	             "Requests that ended in ERROR, by backend and error code.");
	for (int be = 0; be < MB_N; be++)
		for (int code = 1; code < METRICS_NCODES; code++) {
			uint64_t n = metrics_get(&m->errors[be][code]);
			if (n)
				evbuffer_add_printf(
				    b,
				    "s3dliod_errors_total{backend=\"%s\",code=\"%s\"} "
				    "%" PRIu64 "\n",
				    metrics_backend_names[be], wire_code_str((uint32_t)code), n);
		}
	metrics_help(b, "s3dliod_sent_bytes_total", "counter",
	             "Object bytes sent to clients (DATA payloads), by backend.");
	for (int be = 0; be < MB_N; be++)
		evbuffer_add_printf(b, "s3dliod_sent_bytes_total{backend=\"%s\"} %" PRIu64 "\n",
		                    metrics_backend_names[be], metrics_get(&m->bytes_sent[be]));
	metrics_help(b, "s3dliod_received_bytes_total", "counter",
	             "Object bytes received from clients (uploads), by backend.");
	for (int be = 0; be < MB_N; be++)
		evbuffer_add_printf(b, "s3dliod_received_bytes_total{backend=\"%s\"} %" PRIu64 "\n",
		                    metrics_backend_names[be], metrics_get(&m->bytes_received[be]));
	metrics_by_backend_op(b, "s3dliod_backend_requests_total",
	                      "Operations started on a storage backend (cache hits start none).",
	                      m->backend_requests);
	metrics_by_backend_op(b, "s3dliod_backend_errors_total", "Backend operations that failed.",
	                      m->backend_errors);
	metrics_help(b, "s3dliod_backend_latency_seconds", "histogram",
	             "Time from the start of a backend operation to its end.");
	for (int be = 0; be < MB_N; be++)
		for (int op = 0; op < MOP_N; op++) {
			uint64_t count = metrics_get(&m->lat_count[be][op]);
			if (!count)
				continue;
			const char *bn = metrics_backend_names[be], *on = metrics_op_names[op];
			uint64_t cum = 0;
			for (int i = 0; i < METRICS_NBUCKETS; i++) {
				cum += metrics_get(&m->lat_bucket[be][op][i]);
				evbuffer_add_printf(
				    b,
				    "s3dliod_backend_latency_seconds_bucket{backend=\"%s\","
				    "op=\"%s\",le=\"%s\"} %" PRIu64 "\n",
				    bn, on, metrics_bucket_text[i], cum);
			}
			evbuffer_add_printf(
			    b,
			    "s3dliod_backend_latency_seconds_bucket{backend=\"%s\",op="
			    "\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
			    bn, on, count);
			uint64_t sum = metrics_get(&m->lat_sum_ns[be][op]);
			evbuffer_add_printf(
			    b,
			    "s3dliod_backend_latency_seconds_sum{backend=\"%s\",op=\"%s\"}"
			    " %" PRIu64 ".%09" PRIu64 "\n",
			    bn, on, (uint64_t)(sum / 1000000000u), (uint64_t)(sum % 1000000000u));
			evbuffer_add_printf(
			    b,
			    "s3dliod_backend_latency_seconds_count{backend=\"%s\",op="
			    "\"%s\"} %" PRIu64 "\n",
			    bn, on, count);
		}
	metrics_scalar(b, "s3dliod_connections_total", "counter", "Connections accepted.",
	               metrics_get(&m->connections_total));
	metrics_scalar(b, "s3dliod_connections", "gauge", "Connections open.",
	               (uint64_t)atomic_load(&m->connections));
	metrics_scalar(b, "s3dliod_requests_in_flight", "gauge", "Requests in flight.",
	               (uint64_t)atomic_load(&m->in_flight));
	metrics_scalar(b, "s3dliod_busy_total", "counter", "Requests answered BUSY.",
	               metrics_get(&m->busy_total));
	metrics_scalar(b, "s3dliod_refused_connections_total", "counter",
	               "Connections refused at HELLO (token, peer address).",
	               metrics_get(&m->refused_total));
	struct cache_stats cs = {0};
	if (src->cache)
		cache_get_stats(src->cache, &cs);
	metrics_scalar(b, "s3dliod_cache_hits_total", "counter",
	               "GETs served from the object cache.", cs.hits);
	metrics_scalar(b, "s3dliod_cache_misses_total", "counter",
	               "GETs that started a backend fetch into the object cache.", cs.misses);
	metrics_scalar(b, "s3dliod_cache_coalesced_total", "counter",
	               "GETs that waited on another GET's fetch or revalidation.", cs.coalesced);
	metrics_scalar(b, "s3dliod_cache_bypass_total", "counter",
	               "GETs of objects too large for the cache, sent to the backend.",
	               cs.bypasses);
	metrics_scalar(b, "s3dliod_cache_evictions_total", "counter",
	               "Objects evicted from the cache.", cs.evictions);
	metrics_scalar(b, "s3dliod_cache_revalidations_total", "counter",
	               "Cache entries checked against the backend (HEAD) after --cache-validate.",
	               cs.revalidations);
	metrics_scalar(b, "s3dliod_cache_revalidation_changed_total", "counter",
	               "Revalidations that found the object changed or gone.",
	               cs.revalidated_changed);
	metrics_scalar(b, "s3dliod_cache_inserted_bytes_total", "counter",
	               "Object bytes put into the cache.", cs.inserted_bytes);
	metrics_scalar(b, "s3dliod_cache_evicted_bytes_total", "counter",
	               "Object bytes evicted from the cache.", cs.evicted_bytes);
	metrics_scalar(b, "s3dliod_cache_hit_bytes_total", "counter",
	               "Object sizes of the cache hits.", cs.hit_bytes);
	metrics_scalar(b, "s3dliod_cache_bytes", "gauge", "Bytes charged to the cache.", cs.bytes);
	metrics_scalar(b, "s3dliod_cache_objects", "gauge", "Entries in the cache.", cs.entries);
	metrics_scalar(b, "s3dliod_cache_budget_bytes", "gauge", "The cache's byte budget.",
	               cs.budget);
	metrics_scalar(b, "s3dliod_cache_disk_hits_total", "counter",
	               "GETs that found the object on the disk tier (read back, no backend read).",
	               cs.disk_hits);
	metrics_scalar(b, "s3dliod_cache_disk_writes_total", "counter",
	               "Objects evicted from memory and written to the disk tier.", cs.disk_writes);
	metrics_scalar(b, "s3dliod_cache_disk_evictions_total", "counter",
	               "Objects dropped from the disk tier for room.", cs.disk_evictions);
	metrics_scalar(b, "s3dliod_cache_disk_errors_total", "counter",
	               "Disk tier files that could not be written or read back intact.",
	               cs.disk_errors);
	metrics_scalar(b, "s3dliod_cache_disk_bytes", "gauge", "Bytes on the disk tier.",
	               cs.disk_bytes);
	metrics_scalar(b, "s3dliod_cache_disk_objects", "gauge", "Objects on the disk tier.",
	               cs.disk_entries);
	metrics_scalar(b, "s3dliod_cache_disk_budget_bytes", "gauge",
	               "The disk tier's byte budget.", cs.disk_budget);
	uint64_t ch = 0, cm = 0, cst = 0;
	if (src->crccache)
		crccache_counts(src->crccache, &ch, &cm, &cst);
	metrics_scalar(b, "s3dliod_crc_cache_hits_total", "counter",
	               "Whole-file GETs whose CRC32C came from the CRC cache.", ch);
	metrics_scalar(b, "s3dliod_crc_cache_misses_total", "counter",
	               "Whole-file GETs whose CRC32C was computed.", cm);
	metrics_scalar(b, "s3dliod_crc_cache_stores_total", "counter",
	               "CRC32Cs stored in the CRC cache.", cst);
	tokens_render_metrics(src->tokens, b);
}

static void metrics_reply(struct evhttp_request *req, int code, const char *reason,
                          const char *ctype, struct evbuffer *body)
{
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
	evhttp_send_reply(req, code, reason, body);
}

static void metrics_cb(struct evhttp_request *req, void *arg)
{
	struct metrics_http *h = arg;
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evbuffer_add_printf(b, "only GET\n");
		metrics_reply(req, 405, "Method Not Allowed", "text/plain", b);
	} else if (path && strcmp(path, "/metrics") == 0) {
		struct metrics *m = calloc(1, sizeof(*m));
		if (!m) {
			evbuffer_free(b);
			evhttp_send_error(req, 500, "out of memory");
			return;
		}
		metrics_render(&h->src, b, m);
		free(m);
		metrics_reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", b);
	} else if (path && strcmp(path, "/healthz") == 0) {
		evbuffer_add_printf(b, "ok\n");
		metrics_reply(req, 200, "OK", "text/plain", b);
	} else if (path && strcmp(path, "/readyz") == 0) {
		if (h->src.draining && atomic_load(h->src.draining)) {
			evbuffer_add_printf(b, "draining\n");
			metrics_reply(req, 503, "Service Unavailable", "text/plain", b);
		} else {
			evbuffer_add_printf(b, "ready\n");
			metrics_reply(req, 200, "OK", "text/plain", b);
		}
	} else {
		evbuffer_add_printf(b, "not found: try /metrics, /healthz or /readyz\n");
		metrics_reply(req, 404, "Not Found", "text/plain", b);
	}
	evbuffer_free(b);
}

int metrics_http_new(struct event_base *base, const char *url, const struct metrics_sources *src,
                     struct metrics_http **out, struct err *e)
{
	int result = 0;
	char host[256];
	const char *hp = url + 6;
	const char *colon = strrchr(hp, ':');
	struct metrics_http *h = NULL;
	if (strncmp(url, "tcp://", 6) != 0 || !colon || colon == hp ||
	    (size_t)(colon - hp) >= sizeof(host))
		return err_set(e, WIRE_E_INVALID, "--metrics %s: expected tcp://HOST:PORT", url);
	char *end;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (!colon[1] || *end || port > 65535)
		return err_set(e, WIRE_E_INVALID, "--metrics %s: bad port", url);
	memcpy(host, hp, (size_t)(colon - hp));
	host[colon - hp] = '\0';
	char *hn = host;
	if (hn[0] == '[' && hn[strlen(hn) - 1] == ']') {
		hn[strlen(hn) - 1] = '\0';
		hn++;
	}
	h = calloc(1, sizeof(*h));
	if (!h || !(h->http = evhttp_new(base))) {
		result = err_set(e, WIRE_E_INTERNAL, "--metrics %s: out of memory", url);
		goto done;
	}
	h->src = *src;
	evhttp_set_gencb(h->http, metrics_cb, h);
	evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
	                                        EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
	evhttp_set_timeout(h->http, 30);
	struct evhttp_bound_socket *bs =
	    evhttp_bind_socket_with_handle(h->http, hn, (uint16_t)port);
	if (!bs) {
		result = err_set(e, WIRE_E_IO, "--metrics %s: cannot listen there (%s)", url,
		                 strerror(errno));
		goto done;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char nh[64] = "?";
	int fd = evhttp_bound_socket_get_fd(bs);
	unsigned bound = 0;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
			evutil_inet_ntop(AF_INET6, &s6->sin6_addr, nh + 1, sizeof(nh) - 2);
			nh[0] = '[';
			strcat(nh, "]");
			bound = ntohs(s6->sin6_port);
		} else {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
			evutil_inet_ntop(AF_INET, &s4->sin_addr, nh, sizeof(nh));
			bound = ntohs(s4->sin_port);
		}
	}
	/* tests and operators parse this exact line */
	dprintf(STDERR_FILENO, "s3dliod: metrics on http://%s:%u\n", nh, bound);
	*out = h;
	h = NULL;
done:
	metrics_http_free(h);
	return result;
}

void metrics_http_free(struct metrics_http *h)
{
	if (!h)
		return;
	if (h->http)
		evhttp_free(h->http);
	free(h);
}
