/* test_client.c: libs3dlio's framing and data path against a scripted in-test peer.
 *
 * The peer listens on a Unix socket in a private directory and speaks the protocol with the
 * wire codec: a small in-memory object store (each connection served by its own thread, one
 * request at a time) plus special URIs that misbehave on purpose (wrong CRC, ERROR mid-stream,
 * close mid-transfer, BUSY, stall...), and a scripted peer that interleaves two replies in
 * tiny writes. It is a framing fixture for these unit tests only, not a server. Peer threads
 * never assert: they record what they saw and the test thread checks it. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "s3dlio/s3dlio.h"
#include "wire.h"

/* ---------------------------------------------------------------------------------------- */
/* the peer */

#define MAX_OBJS 512
#define MAX_PEER_CONNS 64

struct obj {
	char uri[256];
	uint8_t *data;
	size_t len;
};

struct peer;
struct pconn;
typedef void (*peer_fn)(struct peer *p, struct pconn *pc, int index);

struct pconn {
	struct peer *p;
	int fd;
	int index;
	uint8_t *buf;
	size_t cap, off, len;
	uint8_t *payload; /* last DATA frame's payload */
	size_t payload_cap;
	size_t chunk; /* >0: write in pieces this big, pausing between them */
};

struct peer {
	char dir[64];
	char path[128];
	char url[160];
	int lfd;
	pthread_t accept_th;
	atomic_int stop;
	peer_fn fn;
	uint32_t max_frame;        /* announced in WELCOME */
	uint32_t max_in_flight;    /* announced in WELCOME */
	uint32_t frame;            /* DATA payload size the store sends */
	const char *require_token; /* refuse HELLO without it */

	pthread_mutex_t mu;
	struct obj objs[MAX_OBJS];
	int nobjs;
	pthread_t conn_th[MAX_PEER_CONNS];
	struct pconn *conns[MAX_PEER_CONNS];
	int nconns;

	/* what the peer saw */
	atomic_int accepted;
	atomic_int cancels;
	atomic_int busy_sent;
	atomic_int bad; /* frames the peer did not expect */
	atomic_int puts_dropped;
	char hello_agent[64];
	char hello_token[64];
	uint32_t hello_version;
	char dir_op[600]; /* the last MKDIR/RMDIR: "MKDIR <uri>" */
};

static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int pc_write(struct pconn *pc, const void *buf, size_t len)
{
	if (!pc->chunk)
		return write_all(pc->fd, buf, len);
	const uint8_t *p = buf;
	while (len) {
		size_t k = len < pc->chunk ? len : pc->chunk;
		if (write_all(pc->fd, p, k))
			return -1;
		p += k;
		len -= k;
		usleep(20);
	}
	return 0;
}

static int pc_send(struct pconn *pc, const struct wire_frame *f, const void *payload)
{
	uint8_t hdr[WIRE_MAX_HEADER];
	size_t hl = 0;
	if (wire_encode(f, hdr, sizeof(hdr), &hl) != WIRE_OK)
		return -1;
	size_t pl = f->type == WIRE_DATA ? (size_t)f->payload_len : 0;
	if (pc->chunk) {
		if (pc_write(pc, hdr, hl))
			return -1;
		return pl ? pc_write(pc, payload, pl) : 0;
	}
	struct iovec iov[2] = {{hdr, hl}, {(void *)payload, pl}};
	struct msghdr m = {.msg_iov = iov, .msg_iovlen = pl ? 2 : 1};
	size_t total = hl + pl;
	while (total) {
		ssize_t n = sendmsg(pc->fd, &m, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		total -= (size_t)n;
		while (n > 0 && m.msg_iovlen) {
			if ((size_t)n >= m.msg_iov[0].iov_len) {
				n -= (ssize_t)m.msg_iov[0].iov_len;
				m.msg_iov++;
				m.msg_iovlen--;
			} else {
				m.msg_iov[0].iov_base = (uint8_t *)m.msg_iov[0].iov_base + n;
				m.msg_iov[0].iov_len -= (size_t)n;
				n = 0;
			}
		}
	}
	return 0;
}

/* Next frame from the client; a DATA payload is read into pc->payload. Strings in f stay
 * valid until the next call. Returns 0, or -1 at EOF or on a bad frame. */
static int pc_next(struct pconn *pc, struct wire_frame *f)
{
	for (;;) {
		size_t used = 0;
		int r = wire_decode(pc->buf + pc->off, pc->len - pc->off, 0, f, &used);
		if (r == WIRE_OK) {
			pc->off += used;
			break;
		}
		if (r != WIRE_NEED_MORE) {
			atomic_fetch_add(&pc->p->bad, 1);
			return -1;
		}
		if (pc->off) {
			memmove(pc->buf, pc->buf + pc->off, pc->len - pc->off);
			pc->len -= pc->off;
			pc->off = 0;
		}
		ssize_t n = read(pc->fd, pc->buf + pc->len, pc->cap - pc->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		pc->len += (size_t)n;
	}
	if (f->type != WIRE_DATA)
		return 0;
	size_t pl = (size_t)f->payload_len;
	if (pl > pc->payload_cap) {
		free(pc->payload);
		pc->payload = malloc(pl);
		pc->payload_cap = pl;
	}
	size_t have = pc->len - pc->off < pl ? pc->len - pc->off : pl;
	memcpy(pc->payload, pc->buf + pc->off, have);
	pc->off += have;
	while (have < pl) {
		ssize_t n = read(pc->fd, pc->payload + have, pl - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		have += (size_t)n;
	}
	return 0;
}

static void *conn_main(void *arg)
{
	struct pconn *pc = arg;
	struct peer *p = pc->p;
	struct wire_frame f;
	if (pc_next(pc, &f) == 0 && f.type == WIRE_HELLO) {
		pthread_mutex_lock(&p->mu);
		snprintf(p->hello_agent, sizeof(p->hello_agent), "%.*s", (int)f.agent_len,
		         f.agent ? f.agent : "");
		snprintf(p->hello_token, sizeof(p->hello_token), "%.*s", (int)f.token_len,
		         f.token ? f.token : "");
		p->hello_version = f.version;
		pthread_mutex_unlock(&p->mu);
		if (p->require_token && (!f.token || strlen(p->require_token) != f.token_len ||
		                         memcmp(p->require_token, f.token, f.token_len))) {
			struct wire_frame e;
			wire_frame_init(&e, WIRE_ERROR, 0);
			e.code = WIRE_E_PERMISSION;
			e.message = "token refused";
			e.message_len = 13;
			(void)pc_send(pc, &e, NULL);
		} else {
			struct wire_frame w;
			wire_frame_init(&w, WIRE_WELCOME, 0);
			w.version = WIRE_VERSION;
			w.max_frame = p->max_frame;
			w.max_in_flight = p->max_in_flight;
			w.agent = "test-peer";
			w.agent_len = 9;
			if (pc_send(pc, &w, NULL) == 0)
				p->fn(p, pc, pc->index);
		}
	} else {
		atomic_fetch_add(&p->bad, 1);
	}
	shutdown(pc->fd, SHUT_RDWR);
	return NULL;
}

static void *accept_main(void *arg)
{
	struct peer *p = arg;
	while (!atomic_load(&p->stop)) {
		struct pollfd pf = {.fd = p->lfd, .events = POLLIN};
		if (poll(&pf, 1, 20) <= 0)
			continue;
		int fd = accept(p->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		pthread_mutex_lock(&p->mu);
		if (p->nconns == MAX_PEER_CONNS) {
			pthread_mutex_unlock(&p->mu);
			close(fd);
			continue;
		}
		struct pconn *pc = calloc(1, sizeof(*pc));
		pc->p = p;
		pc->fd = fd;
		pc->index = p->nconns;
		pc->cap = 1 << 16;
		pc->buf = malloc(pc->cap);
		p->conns[p->nconns] = pc;
		pthread_create(&p->conn_th[p->nconns], NULL, conn_main, pc);
		p->nconns++;
		pthread_mutex_unlock(&p->mu);
		atomic_fetch_add(&p->accepted, 1);
	}
	return NULL;
}

static struct peer *peer_start(peer_fn fn, uint32_t max_frame, uint32_t max_in_flight)
{
	struct peer *p = calloc(1, sizeof(*p));
	snprintf(p->dir, sizeof(p->dir), "/tmp/s3dlio-tc-XXXXXX");
	if (!mkdtemp(p->dir))
		abort();
	snprintf(p->path, sizeof(p->path), "%s/s.sock", p->dir);
	snprintf(p->url, sizeof(p->url), "unix://%s", p->path);
	p->fn = fn;
	p->max_frame = max_frame;
	p->max_in_flight = max_in_flight;
	p->frame = max_frame;
	pthread_mutex_init(&p->mu, NULL);
	p->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	memcpy(sun.sun_path, p->path,
	       strlen(p->path) + 1); /* short: /tmp/s3dlio-tc-XXXXXX/s.sock */
	if (bind(p->lfd, (struct sockaddr *)&sun, sizeof(sun)) || listen(p->lfd, 64))
		abort();
	pthread_create(&p->accept_th, NULL, accept_main, p);
	return p;
}

static void peer_stop(struct peer *p)
{
	atomic_store(&p->stop, 1);
	pthread_join(p->accept_th, NULL);
	close(p->lfd);
	for (int i = 0; i < p->nconns; i++) {
		shutdown(p->conns[i]->fd, SHUT_RDWR);
		pthread_join(p->conn_th[i], NULL);
		close(p->conns[i]->fd);
		free(p->conns[i]->buf);
		free(p->conns[i]->payload);
		free(p->conns[i]);
	}
	for (int i = 0; i < p->nobjs; i++)
		free(p->objs[i].data);
	unlink(p->path);
	rmdir(p->dir);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

static uint8_t pattern_byte(size_t i, unsigned seed)
{
	return (uint8_t)((i * 131u + seed * 7u + (i >> 9)) & 0xff);
}

static uint8_t *make_pattern(size_t len, unsigned seed)
{
	uint8_t *d = malloc(len ? len : 1);
	for (size_t i = 0; i < len; i++)
		d[i] = pattern_byte(i, seed);
	return d;
}

static void peer_put(struct peer *p, const char *uri, const uint8_t *data, size_t len)
{
	pthread_mutex_lock(&p->mu);
	int i;
	for (i = 0; i < p->nobjs && strcmp(p->objs[i].uri, uri); i++)
		;
	if (i == p->nobjs) {
		if (p->nobjs == MAX_OBJS)
			abort();
		p->nobjs++;
		snprintf(p->objs[i].uri, sizeof(p->objs[i].uri), "%s", uri);
	} else {
		free(p->objs[i].data);
	}
	p->objs[i].data = malloc(len ? len : 1);
	memcpy(p->objs[i].data, data, len);
	p->objs[i].len = len;
	pthread_mutex_unlock(&p->mu);
}

static void peer_add(struct peer *p, const char *uri, size_t len, unsigned seed)
{
	uint8_t *d = make_pattern(len, seed);
	peer_put(p, uri, d, len);
	free(d);
}

/* A copy of an object (the caller frees it), or NULL. */
static uint8_t *peer_get(struct peer *p, const char *uri, size_t *len)
{
	uint8_t *d = NULL;
	pthread_mutex_lock(&p->mu);
	for (int i = 0; i < p->nobjs; i++) {
		if (!strcmp(p->objs[i].uri, uri)) {
			*len = p->objs[i].len;
			d = malloc(*len ? *len : 1);
			memcpy(d, p->objs[i].data, *len);
			break;
		}
	}
	pthread_mutex_unlock(&p->mu);
	return d;
}

static int send_error(struct pconn *pc, uint64_t id, uint32_t code, const char *msg,
                      uint32_t retry_ms)
{
	struct wire_frame e;
	wire_frame_init(&e, WIRE_ERROR, id);
	e.code = code;
	e.message = msg;
	e.message_len = (uint32_t)strlen(msg);
	e.retry_ms = retry_ms;
	return pc_send(pc, &e, NULL);
}

static int send_header(struct pconn *pc, uint64_t id, uint64_t size, uint64_t object_size)
{
	struct wire_frame h;
	wire_frame_init(&h, WIRE_HEADER, id);
	h.size = size;
	h.object_size = object_size;
	h.mtime = 1700000000123456789LL;
	h.etag = "\"etag-1\"";
	h.etag_len = 8;
	return pc_send(pc, &h, NULL);
}

static int send_data(struct pconn *pc, uint64_t id, uint64_t offset, const void *d, size_t n)
{
	struct wire_frame f;
	wire_frame_init(&f, WIRE_DATA, id);
	f.offset = offset;
	f.payload_len = n;
	return pc_send(pc, &f, d);
}

static int send_end(struct pconn *pc, uint64_t id, uint64_t size, uint32_t crc)
{
	struct wire_frame f;
	wire_frame_init(&f, WIRE_END, id);
	f.size = size;
	f.crc32c = crc;
	return pc_send(pc, &f, NULL);
}

/* Serve bytes data[0..n) as the reply to GET id, in frames of p->frame bytes. */
static int reply_bytes(struct pconn *pc, uint64_t id, const uint8_t *d, size_t n, size_t whole,
                       uint32_t crc_xor)
{
	if (send_header(pc, id, n, whole))
		return -1;
	size_t frame = pc->p->frame ? pc->p->frame : WIRE_DEFAULT_FRAME;
	for (size_t off = 0; off < n; off += frame) {
		size_t k = n - off < frame ? n - off : frame;
		if (send_data(pc, id, off, d + off, k))
			return -1;
	}
	return send_end(pc, id, n, wire_crc32c(0, d, n) ^ crc_xor);
}

static int store_get(struct peer *p, struct pconn *pc, const struct wire_frame *f)
{
	char uri[512];
	snprintf(uri, sizeof(uri), "%.*s", (int)f->uri_len, f->uri);
	uint64_t id = f->id, offset = f->offset, length = f->length;
	char msg[600];
	if (!strcmp(uri, "mem:///stall"))
		return 0; /* never answer */
	if (!strcmp(uri, "mem:///close-mid")) {
		uint8_t *d = make_pattern(1000, 3);
		send_header(pc, id, 1000, 1000);
		send_data(pc, id, 0, d, 500);
		free(d);
		return -1; /* the caller closes the connection */
	}
	if (!strcmp(uri, "mem:///error-mid")) {
		uint8_t *d = make_pattern(1000, 4);
		send_header(pc, id, 1000, 1000);
		send_data(pc, id, 0, d, 400);
		free(d);
		return send_error(pc, id, WIRE_E_BACKEND,
		                  "mem:///error-mid: backend exploded (503)", 0);
	}
	if (!strcmp(uri, "mem:///bad-crc")) {
		uint8_t *d = make_pattern(3000, 5);
		int r = reply_bytes(pc, id, d, 3000, 3000, 1);
		free(d);
		return r;
	}
	if (!strcmp(uri, "mem:///short")) {
		uint8_t *d = make_pattern(100, 6);
		send_header(pc, id, 100, 100);
		send_data(pc, id, 0, d, 50);
		int r = send_end(pc, id, 50, wire_crc32c(0, d, 50));
		free(d);
		return r;
	}
	if (!strcmp(uri, "mem:///bad-offset")) {
		uint8_t *d = make_pattern(100, 7);
		send_header(pc, id, 100, 100);
		send_data(pc, id, 10, d, 90);
		int r = send_end(pc, id, 100, wire_crc32c(0, d, 100));
		free(d);
		return r;
	}
	if (!strcmp(uri, "mem:///honor-cancel")) {
		send_header(pc, id, 100, 100);
		struct wire_frame c;
		if (pc_next(pc, &c))
			return -1;
		if (c.type != WIRE_CANCEL || c.id != id) {
			atomic_fetch_add(&p->bad, 1);
			return -1;
		}
		atomic_fetch_add(&p->cancels, 1);
		return send_error(pc, id, WIRE_E_CANCELLED, "mem:///honor-cancel: cancelled", 0);
	}
	if (!strcmp(uri, "mem:///busy-once") && atomic_fetch_add(&p->busy_sent, 1) == 0)
		return send_error(pc, id, WIRE_E_BUSY, "busy", 5);
	if (!strcmp(uri, "mem:///busy-always")) {
		atomic_fetch_add(&p->busy_sent, 1);
		return send_error(pc, id, WIRE_E_BUSY, "mem:///busy-always: busy", 1);
	}

	size_t len = 0;
	uint8_t *d = peer_get(p, uri, &len);
	if (!d) {
		snprintf(msg, sizeof(msg), "%s: No such file or directory", uri);
		return send_error(pc, id, WIRE_E_NOT_FOUND, msg, 0);
	}
	int r;
	if (offset > len) {
		snprintf(msg, sizeof(msg), "%s: offset %llu past the end (%zu bytes)", uri,
		         (unsigned long long)offset, len);
		r = send_error(pc, id, WIRE_E_RANGE, msg, 0);
	} else {
		size_t n = len - (size_t)offset;
		if (length != WIRE_TO_END && length < n)
			n = (size_t)length;
		r = reply_bytes(pc, id, d + offset, n, len, 0);
	}
	free(d);
	return r;
}

static int store_put(struct peer *p, struct pconn *pc, const struct wire_frame *f)
{
	char uri[512];
	snprintf(uri, sizeof(uri), "%.*s", (int)f->uri_len, f->uri);
	uint64_t id = f->id, size = f->size;
	if (!strcmp(uri, "mem:///put-close"))
		return -1;
	int deny = !strcmp(uri, "mem:///put-denied");
	if (deny && send_error(pc, id, WIRE_E_PERMISSION, "mem:///put-denied: read-only prefix", 0))
		return -1;
	uint8_t *d = malloc(size ? size : 1);
	uint64_t got = 0;
	uint32_t crc = 0;
	for (;;) {
		struct wire_frame g;
		if (pc_next(pc, &g)) {
			free(d);
			return -1;
		}
		if (g.type == WIRE_CANCEL) {
			atomic_fetch_add(&p->cancels, 1);
			continue;
		}
		if (g.id != id || (g.type != WIRE_DATA && g.type != WIRE_END)) {
			atomic_fetch_add(&p->bad, 1);
			free(d);
			return -1;
		}
		if (g.type == WIRE_END) {
			if (deny) {
				atomic_fetch_add(&p->puts_dropped, 1);
				free(d);
				return 0;
			}
			if (g.size != got || got != size || g.crc32c != crc) {
				free(d);
				return send_error(pc, id, WIRE_E_CHECKSUM, "mem: upload mismatch",
				                  0);
			}
			peer_put(p, uri, d, size);
			free(d);
			return send_end(pc, id, got, crc);
		}
		if (g.offset != got || g.payload_len > size - got || g.payload_len > p->max_frame) {
			atomic_fetch_add(&p->bad, 1);
			free(d);
			return -1;
		}
		memcpy(d + got, pc->payload, g.payload_len);
		crc = wire_crc32c(crc, pc->payload, g.payload_len);
		got += g.payload_len;
	}
}

/* The in-memory store: one request at a time, in order. */
static void serve_store(struct peer *p, struct pconn *pc, int index)
{
	(void)index;
	struct wire_frame f;
	char uri[512], msg[600];
	while (pc_next(pc, &f) == 0) {
		int r = 0;
		switch (f.type) {
		case WIRE_GET: r = store_get(p, pc, &f); break;
		case WIRE_PUT: r = store_put(p, pc, &f); break;
		case WIRE_CANCEL:
			atomic_fetch_add(&p->cancels, 1); /* the request it names is already done */
			break;
		case WIRE_STAT: {
			snprintf(uri, sizeof(uri), "%.*s", (int)f.uri_len, f.uri);
			size_t len = 0;
			uint8_t *d = peer_get(p, uri, &len);
			if (!d) {
				snprintf(msg, sizeof(msg), "%s: No such file or directory", uri);
				r = send_error(pc, f.id, WIRE_E_NOT_FOUND, msg, 0);
			} else {
				r = send_header(pc, f.id, len, len) || send_end(pc, f.id, 0, 0);
			}
			free(d);
			break;
		}
		case WIRE_DELETE: {
			snprintf(uri, sizeof(uri), "%.*s", (int)f.uri_len, f.uri);
			int found = 0;
			pthread_mutex_lock(&p->mu);
			for (int i = 0; i < p->nobjs; i++) {
				if (!strcmp(p->objs[i].uri, uri)) {
					free(p->objs[i].data);
					p->objs[i] = p->objs[--p->nobjs];
					found = 1;
					break;
				}
			}
			pthread_mutex_unlock(&p->mu);
			if (found) {
				r = send_end(pc, f.id, 0, 0);
			} else {
				snprintf(msg, sizeof(msg), "%s: No such file or directory", uri);
				r = send_error(pc, f.id, WIRE_E_NOT_FOUND, msg, 0);
			}
			break;
		}
		case WIRE_LIST: {
			snprintf(uri, sizeof(uri), "%.*s", (int)f.uri_len, f.uri);
			uint64_t id = f.id;
			struct obj copy[MAX_OBJS];
			int n = 0;
			pthread_mutex_lock(&p->mu);
			for (int i = 0; i < p->nobjs; i++)
				if (!strncmp(p->objs[i].uri, uri, strlen(uri)))
					copy[n++] = p->objs[i];
			pthread_mutex_unlock(&p->mu);
			for (int i = 0; i < n && !r; i++) {
				struct wire_frame e;
				wire_frame_init(&e, WIRE_ENTRY, id);
				e.uri = copy[i].uri;
				e.uri_len = (uint32_t)strlen(copy[i].uri);
				e.size = copy[i].len;
				e.mtime = 42;
				r = pc_send(pc, &e, NULL);
			}
			if (!r)
				r = send_end(pc, id, (uint64_t)n, 0);
			break;
		}
		case WIRE_MKDIR:
		case WIRE_RMDIR: {
			/* RMDIR of a prefix that holds objects is refused, as a server does */
			snprintf(uri, sizeof(uri), "%.*s", (int)f.uri_len, f.uri);
			int full = 0;
			pthread_mutex_lock(&p->mu);
			snprintf(p->dir_op, sizeof(p->dir_op), "%s %s", wire_type_str(f.type), uri);
			for (int i = 0; i < p->nobjs && f.type == WIRE_RMDIR; i++)
				full |= !strncmp(p->objs[i].uri, uri, strlen(uri));
			pthread_mutex_unlock(&p->mu);
			if (full) {
				snprintf(msg, sizeof(msg), "%s: directory not empty", uri);
				r = send_error(pc, f.id, WIRE_E_INVALID, msg, 0);
			} else {
				r = send_end(pc, f.id, 0, 0);
			}
			break;
		}
		default: atomic_fetch_add(&p->bad, 1); r = -1;
		}
		if (r)
			return;
	}
}

/* Two GETs answered together: both HEADERs, then DATA frames of the two replies alternating,
 * everything written a few bytes at a time, so headers and payloads arrive split anywhere. */
static void serve_interleaved(struct peer *p, struct pconn *pc, int index)
{
	(void)index;
	struct wire_frame f;
	uint64_t ids[2];
	size_t lens[2] = {10000, 7777};
	for (int i = 0; i < 2; i++) {
		if (pc_next(pc, &f) || f.type != WIRE_GET) {
			atomic_fetch_add(&p->bad, 1);
			return;
		}
		ids[i] = f.id;
	}
	uint8_t *d[2] = {make_pattern(lens[0], 11), make_pattern(lens[1], 12)};
	pc->chunk = 3;
	send_header(pc, ids[1], lens[1], lens[1]);
	send_header(pc, ids[0], lens[0], lens[0]);
	size_t off[2] = {0, 0};
	size_t step[2] = {1000, 777};
	int turn = 0;
	while (off[0] < lens[0] || off[1] < lens[1]) {
		int i = turn++ & 1;
		if (off[i] >= lens[i])
			continue;
		size_t k = lens[i] - off[i] < step[i] ? lens[i] - off[i] : step[i];
		pc->chunk = turn < 6 ? 3 : 97; /* very small pieces first, then larger ones */
		send_data(pc, ids[i], off[i], d[i] + off[i], k);
		off[i] += k;
	}
	send_end(pc, ids[0], lens[0], wire_crc32c(0, d[0], lens[0]));
	send_end(pc, ids[1], lens[1], wire_crc32c(0, d[1], lens[1]));
	free(d[0]);
	free(d[1]);
	pc->chunk = 0;
	serve_store(p, pc, index);
}

/* ---------------------------------------------------------------------------------------- */
/* allocator that records what it did */

struct rec_alloc {
	int allocs;
	int releases;
	void *ptr[256];
	uint64_t size[256];
	void *released;
	uint64_t released_size;
	size_t released_index;
	int fail_index; /* -1: never fail */
};

static void *rec_alloc_fn(void *ctx, size_t index, uint64_t size)
{
	struct rec_alloc *a = ctx;
	if ((int)index == a->fail_index)
		return NULL;
	void *p = malloc(size ? size : 1);
	if (index < 256) {
		a->ptr[index] = p;
		a->size[index] = size;
	}
	a->allocs++;
	return p;
}

static void rec_release_fn(void *ctx, size_t index, void *ptr, uint64_t size)
{
	struct rec_alloc *a = ctx;
	a->releases++;
	a->released = ptr;
	a->released_size = size;
	a->released_index = index;
	free(ptr);
}

/* ---------------------------------------------------------------------------------------- */
/* fixtures */

struct fx {
	struct peer *p;
	s3dlio_client *c;
};

static s3dlio_client *connect_client(struct peer *p, unsigned max_conns, unsigned io_ms)
{
	s3dlio_options o = {.max_connections = max_conns, .io_timeout_ms = io_ms, .verify_crc = 1};
	s3dlio_error err;
	s3dlio_client *c = s3dlio_client_new(p->url, &o, &err);
	if (!c)
		fprintf(stderr, "client_new: %s\n", err.message);
	return c;
}

static int setup_store(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	fx->p = peer_start(serve_store, 64u << 10, 64);
	fx->c = connect_client(fx->p, 4, 0);
	*state = fx;
	return fx->c ? 0 : -1;
}

static int setup_large(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	fx->p = peer_start(serve_store, 4u << 20, 64);
	fx->c = connect_client(fx->p, 4, 0);
	*state = fx;
	return fx->c ? 0 : -1;
}

static int teardown(void **state)
{
	struct fx *fx = *state;
	s3dlio_client_free(fx->c);
	peer_stop(fx->p);
	free(fx);
	return 0;
}

static s3dlio_stats stats_of(s3dlio_client *c)
{
	s3dlio_stats s;
	s3dlio_get_stats(c, &s);
	return s;
}

static void assert_pattern(const uint8_t *d, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++) {
		if (d[i] != pattern_byte(i, seed)) {
			fprintf(stderr, "byte %zu of %zu differs: %02x != %02x\n", i, len, d[i],
			        pattern_byte(i, seed));
			fail();
		}
	}
}

/* ---------------------------------------------------------------------------------------- */
/* tests */

static void test_handshake(void **state)
{
	(void)state;
	struct peer *p = peer_start(serve_store, 1u << 20, 8);
	s3dlio_options o = {.token = "sekret", .verify_crc = -1};
	s3dlio_error err;
	s3dlio_client *c = s3dlio_client_new(p->url, &o, &err);
	assert_non_null(c);
	assert_string_equal(s3dlio_client_url(c), p->url);
	assert_int_equal(stats_of(c).connects, 1);
	assert_int_equal(atomic_load(&p->accepted), 1);
	pthread_mutex_lock(&p->mu);
	assert_string_equal(p->hello_agent, "libs3dlio/0.1.0");
	assert_string_equal(p->hello_token, "sekret");
	assert_int_equal(p->hello_version, 1);
	pthread_mutex_unlock(&p->mu);

	/* the connection client_new made is the one the first call uses */
	peer_add(p, "mem:///a", 10, 1);
	uint8_t buf[16];
	uint64_t got = 0;
	assert_int_equal(
	    s3dlio_get_into(c, "mem:///a", 0, S3DLIO_TO_END, buf, sizeof(buf), &got, &err),
	    S3DLIO_OK);
	assert_int_equal(got, 10);
	assert_int_equal(stats_of(c).connects, 1);
	s3dlio_client_free(c);
	peer_stop(p);
}

static void test_connect_failures(void **state)
{
	(void)state;
	s3dlio_error err;
	s3dlio_client *c = s3dlio_client_new("unix:///nonexistent/s3dlio.sock", NULL, &err);
	assert_null(c);
	assert_int_equal(err.code, S3DLIO_E_CONNECTION);
	assert_non_null(strstr(err.message, "unix:///nonexistent/s3dlio.sock"));
	assert_non_null(strstr(err.message, "No such file or directory"));

	c = s3dlio_client_new("tcp://127.0.0.1:1", NULL, &err);
	assert_null(c);
	assert_int_equal(err.code, S3DLIO_E_CONNECTION);
	assert_non_null(strstr(err.message, "tcp://127.0.0.1:1"));

	c = s3dlio_client_new("http://x", NULL, &err);
	assert_null(c);
	assert_int_equal(err.code, S3DLIO_E_INVALID);

	/* a refused HELLO maps the server's code and keeps its message */
	struct peer *p = peer_start(serve_store, 1u << 20, 8);
	p->require_token = "right";
	s3dlio_options o = {.token = "wrong"};
	c = s3dlio_client_new(p->url, &o, &err);
	assert_null(c);
	assert_int_equal(err.code, S3DLIO_E_PERMISSION);
	assert_non_null(strstr(err.message, "token refused"));
	peer_stop(p);
}

static void test_interleaved(void **state)
{
	(void)state;
	struct peer *p = peer_start(serve_interleaved, 1u << 20, 64);
	s3dlio_client *c = connect_client(p, 1, 0);
	assert_non_null(c);
	s3dlio_request reqs[2];
	memset(reqs, 0, sizeof(reqs));
	reqs[0].uri = "mem:///ten-thousand";
	reqs[0].length = S3DLIO_TO_END;
	reqs[1].uri = "mem:///seven";
	reqs[1].length = S3DLIO_TO_END;
	struct rec_alloc a = {.fail_index = -1};
	s3dlio_error err;
	int r = s3dlio_get_many(c, reqs, 2, 8, rec_alloc_fn, rec_release_fn, &a, &err);
	assert_int_equal(r, S3DLIO_OK);
	assert_int_equal(reqs[0].status, S3DLIO_OK);
	assert_int_equal(reqs[1].status, S3DLIO_OK);
	assert_int_equal(reqs[0].size, 10000);
	assert_int_equal(reqs[1].size, 7777);
	assert_int_equal(a.allocs, 2);
	assert_int_equal(a.size[0], 10000);
	assert_int_equal(a.size[1], 7777);
	assert_ptr_equal(reqs[0].data, a.ptr[0]);
	assert_ptr_equal(reqs[1].data, a.ptr[1]);
	assert_pattern(reqs[0].data, 10000, 11);
	assert_pattern(reqs[1].data, 7777, 12);
	assert_int_equal(reqs[0].info.size, 10000);
	assert_int_equal(reqs[0].info.mtime_ns, 1700000000123456789LL);
	assert_string_equal(reqs[0].info.etag, "\"etag-1\"");
	assert_int_equal(a.releases, 0);
	s3dlio_stats s = stats_of(c);
	assert_int_equal(s.bytes_received, 17777);
	assert_int_equal(s.bytes_direct + s.bytes_copied, 17777);
	assert_int_equal(s.requests, 2);
	assert_int_equal(s.errors, 0);
	assert_int_equal(atomic_load(&p->bad), 0);
	free(reqs[0].data);
	free(reqs[1].data);
	s3dlio_requests_clear(reqs, 2);

	/* the connection is at a frame boundary and serves the next call */
	peer_add(p, "mem:///after", 5, 2);
	uint8_t buf[8];
	uint64_t got;
	assert_int_equal(s3dlio_get_into(c, "mem:///after", 0, S3DLIO_TO_END, buf, 8, &got, &err),
	                 0);
	assert_int_equal(got, 5);
	assert_int_equal(stats_of(c).connects, 1);
	s3dlio_client_free(c);
	peer_stop(p);
}

static void test_crc_mismatch(void **state)
{
	struct fx *fx = *state;
	struct rec_alloc a = {.fail_index = -1};
	void *data = (void *)1;
	uint64_t size = 77;
	s3dlio_error err;
	int r = s3dlio_get(fx->c, "mem:///bad-crc", 0, S3DLIO_TO_END, rec_alloc_fn, rec_release_fn,
	                   &a, &data, &size, NULL, &err);
	assert_int_equal(r, S3DLIO_E_CHECKSUM);
	assert_int_equal(err.code, S3DLIO_E_CHECKSUM);
	assert_non_null(strstr(err.message, "mem:///bad-crc"));
	assert_non_null(strstr(err.message, "CRC32C"));
	assert_null(data);
	assert_int_equal(size, 0);
	assert_int_equal(a.allocs, 1);
	assert_int_equal(a.releases, 1);
	assert_ptr_equal(a.released, a.ptr[0]);
	assert_int_equal(a.released_size, 3000);

	/* a reply shorter than its HEADER said is a failure too, never a partly filled success */
	memset(&a, 0, sizeof(a));
	a.fail_index = -1;
	r = s3dlio_get(fx->c, "mem:///short", 0, S3DLIO_TO_END, rec_alloc_fn, rec_release_fn, &a,
	               &data, &size, NULL, &err);
	assert_int_equal(r, S3DLIO_E_CHECKSUM);
	assert_non_null(strstr(err.message, "mem:///short"));
	assert_int_equal(a.releases, 1);

	/* DATA at the wrong offset */
	memset(&a, 0, sizeof(a));
	a.fail_index = -1;
	r = s3dlio_get(fx->c, "mem:///bad-offset", 0, S3DLIO_TO_END, rec_alloc_fn, rec_release_fn,
	               &a, &data, &size, NULL, &err);
	assert_int_equal(r, S3DLIO_E_PROTOCOL);
	assert_non_null(strstr(err.message, "mem:///bad-offset"));
	assert_int_equal(a.releases, 1);

	s3dlio_stats s = stats_of(fx->c);
	assert_int_equal(s.errors, 3);
	assert_int_equal(s.connects, 1); /* none of that broke the connection */
}

static void test_crc_not_verified(void **state)
{
	(void)state;
	struct peer *p = peer_start(serve_store, 1u << 20, 8);
	s3dlio_options o = {.verify_crc = 0};
	s3dlio_error err;
	s3dlio_client *c = s3dlio_client_new(p->url, &o, &err);
	assert_non_null(c);
	uint8_t buf[4000];
	uint64_t got = 0;
	assert_int_equal(
	    s3dlio_get_into(c, "mem:///bad-crc", 0, S3DLIO_TO_END, buf, sizeof(buf), &got, &err),
	    S3DLIO_OK);
	assert_int_equal(got, 3000);
	assert_pattern(buf, 3000, 5);
	s3dlio_client_free(c);
	peer_stop(p);
}

static void test_error_mid_stream(void **state)
{
	struct fx *fx = *state;
	struct rec_alloc a = {.fail_index = -1};
	void *data = NULL;
	uint64_t size = 0;
	s3dlio_error err;
	int r = s3dlio_get(fx->c, "mem:///error-mid", 0, S3DLIO_TO_END, rec_alloc_fn,
	                   rec_release_fn, &a, &data, &size, NULL, &err);
	assert_int_equal(r, S3DLIO_E_BACKEND);
	/* the caller gets the server's message as it is */
	assert_string_equal(err.message, "mem:///error-mid: backend exploded (503)");
	assert_null(data);
	assert_int_equal(a.releases, 1);
	assert_int_equal(a.released_size, 1000);

	/* errors before any data: not found, range */
	r = s3dlio_get(fx->c, "mem:///missing", 0, S3DLIO_TO_END, rec_alloc_fn, rec_release_fn, &a,
	               &data, &size, NULL, &err);
	assert_int_equal(r, S3DLIO_E_NOT_FOUND);
	assert_string_equal(err.message, "mem:///missing: No such file or directory");
	peer_add(fx->p, "mem:///ten", 10, 1);
	r = s3dlio_get(fx->c, "mem:///ten", 11, S3DLIO_TO_END, rec_alloc_fn, rec_release_fn, &a,
	               &data, &size, NULL, &err);
	assert_int_equal(r, S3DLIO_E_RANGE);
	assert_int_equal(a.allocs, 1); /* nothing allocated for failures before HEADER */
	assert_int_equal(stats_of(fx->c).connects, 1);
}

static void test_close_mid_transfer(void **state)
{
	struct fx *fx = *state;
	struct rec_alloc a = {.fail_index = -1};
	void *data = NULL;
	uint64_t size = 0;
	s3dlio_error err;
	int r = s3dlio_get(fx->c, "mem:///close-mid", 0, S3DLIO_TO_END, rec_alloc_fn,
	                   rec_release_fn, &a, &data, &size, NULL, &err);
	assert_int_equal(r, S3DLIO_E_CONNECTION);
	assert_non_null(strstr(err.message, "mem:///close-mid"));
	assert_non_null(strstr(err.message, fx->p->url));
	assert_non_null(strstr(err.message, "lost"));
	assert_null(data);
	assert_int_equal(a.releases, 1);

	/* a later call opens a new connection */
	peer_add(fx->p, "mem:///ok", 1234, 9);
	r = s3dlio_get(fx->c, "mem:///ok", 0, S3DLIO_TO_END, rec_alloc_fn, rec_release_fn, &a,
	               &data, &size, NULL, &err);
	assert_int_equal(r, S3DLIO_OK);
	assert_int_equal(size, 1234);
	assert_pattern(data, 1234, 9);
	free(data);
	s3dlio_stats s = stats_of(fx->c);
	assert_int_equal(s.connects, 2);
	assert_int_equal(s.reconnects, 1);
}

static void test_busy_retried(void **state)
{
	struct fx *fx = *state;
	peer_add(fx->p, "mem:///busy-once", 100, 13);
	uint8_t buf[100];
	uint64_t got = 0;
	s3dlio_error err;
	assert_int_equal(s3dlio_get_into(fx->c, "mem:///busy-once", 0, S3DLIO_TO_END, buf,
	                                 sizeof(buf), &got, &err),
	                 S3DLIO_OK);
	assert_int_equal(got, 100);
	assert_pattern(buf, 100, 13);
	assert_int_equal(atomic_load(&fx->p->busy_sent), 2);
	s3dlio_stats s = stats_of(fx->c);
	assert_int_equal(s.busy_retries, 1);
	assert_int_equal(s.requests, 1);
	assert_int_equal(s.errors, 0);

	/* a server that stays busy: BUSY in the end, after a bounded number of retries */
	int r = s3dlio_get_into(fx->c, "mem:///busy-always", 0, S3DLIO_TO_END, buf, sizeof(buf),
	                        &got, &err);
	assert_int_equal(r, S3DLIO_E_BUSY);
	assert_string_equal(err.message, "mem:///busy-always: busy");
	int sent = atomic_load(&fx->p->busy_sent) - 2;
	assert_true(sent >= 3 && sent <= 10);
}

static void test_too_small(void **state)
{
	struct fx *fx = *state;
	peer_add(fx->p, "mem:///hundred", 100, 14);
	uint8_t buf[10];
	uint64_t got = 99;
	s3dlio_error err;
	int r = s3dlio_get_into(fx->c, "mem:///hundred", 0, S3DLIO_TO_END, buf, sizeof(buf), &got,
	                        &err);
	assert_int_equal(r, S3DLIO_E_TOO_SMALL);
	assert_int_equal(got, 0);
	assert_non_null(strstr(err.message, "mem:///hundred"));

	/* a range that fits works */
	r = s3dlio_get_into(fx->c, "mem:///hundred", 50, 10, buf, sizeof(buf), &got, &err);
	assert_int_equal(r, S3DLIO_OK);
	assert_int_equal(got, 10);
	for (int i = 0; i < 10; i++)
		assert_int_equal(buf[i], pattern_byte(50 + (size_t)i, 14));
	/* the store answered the first GET whole: our CANCEL reached it after, and was ignored */
	assert_int_equal(atomic_load(&fx->p->cancels), 1);

	/* a server that honours CANCEL ends with ERROR CANCELLED: still TOO_SMALL for us */
	r = s3dlio_get_into(fx->c, "mem:///honor-cancel", 0, S3DLIO_TO_END, buf, sizeof(buf), &got,
	                    &err);
	assert_int_equal(r, S3DLIO_E_TOO_SMALL);
	assert_int_equal(atomic_load(&fx->p->cancels), 2);

	/* allocator NULL: NOMEM, and the other requests are unaffected */
	s3dlio_request reqs[3];
	memset(reqs, 0, sizeof(reqs));
	for (int i = 0; i < 3; i++) {
		reqs[i].uri = "mem:///hundred";
		reqs[i].length = S3DLIO_TO_END;
	}
	struct rec_alloc a = {.fail_index = 1};
	r = s3dlio_get_many(fx->c, reqs, 3, 4, rec_alloc_fn, rec_release_fn, &a, &err);
	assert_int_equal(r, S3DLIO_E_NOMEM);
	assert_int_equal(reqs[0].status, S3DLIO_OK);
	assert_int_equal(reqs[1].status, S3DLIO_E_NOMEM);
	assert_int_equal(reqs[2].status, S3DLIO_OK);
	assert_null(reqs[1].data);
	assert_non_null(reqs[1].error);
	assert_string_equal(err.message, reqs[1].error);
	assert_pattern(reqs[0].data, 100, 14);
	assert_pattern(reqs[2].data, 100, 14);
	free(reqs[0].data);
	free(reqs[2].data);
	s3dlio_requests_clear(reqs, 3);
	assert_null(reqs[1].error);
	assert_int_equal(stats_of(fx->c).connects, 1);
}

static void test_large_few_copies(void **state)
{
	struct fx *fx = *state;
	const size_t big = (16u << 20) + 12345;
	peer_add(fx->p, "mem:///big", big, 15);
	void *data = NULL;
	uint64_t size = 0;
	s3dlio_error err;
	int r = s3dlio_get(fx->c, "mem:///big", 0, S3DLIO_TO_END, NULL, NULL, NULL, &data, &size,
	                   NULL, &err);
	assert_int_equal(r, S3DLIO_OK);
	assert_int_equal(size, big);
	assert_pattern(data, big, 15);
	free(data);
	s3dlio_stats s = stats_of(fx->c);
	fprintf(stderr, "  one %zu-byte object: direct %llu, copied %llu (%.3f%%)\n", big,
	        (unsigned long long)s.bytes_direct, (unsigned long long)s.bytes_copied,
	        100.0 * (double)s.bytes_copied / (double)big);
	assert_int_equal(s.bytes_received, big);
	assert_int_equal(s.bytes_direct + s.bytes_copied, big);
	assert_true(s.bytes_copied * 200 < big); /* under 0.5% */

	/* many large objects in one get_many, replies on several connections */
	enum { N = 8 };
	const size_t each = (4u << 20) + 1;
	char uris[N][32];
	s3dlio_request reqs[N];
	memset(reqs, 0, sizeof(reqs));
	for (int i = 0; i < N; i++) {
		snprintf(uris[i], sizeof(uris[i]), "mem:///big-%d", i);
		peer_add(fx->p, uris[i], each, 20u + (unsigned)i);
		reqs[i].uri = uris[i];
		reqs[i].length = S3DLIO_TO_END;
	}
	s3dlio_stats before = stats_of(fx->c);
	r = s3dlio_get_many(fx->c, reqs, N, 16, NULL, NULL, NULL, &err);
	assert_int_equal(r, S3DLIO_OK);
	for (int i = 0; i < N; i++) {
		assert_int_equal(reqs[i].size, each);
		assert_pattern(reqs[i].data, each, 20u + (unsigned)i);
		free(reqs[i].data);
	}
	s = stats_of(fx->c);
	uint64_t copied = s.bytes_copied - before.bytes_copied;
	fprintf(stderr, "  %d objects of %zu bytes: copied %llu (%.3f%%)\n", N, each,
	        (unsigned long long)copied, 100.0 * (double)copied / (double)(N * each));
	assert_true(copied * 100 < N * each); /* under 1% */
}

static void test_small_many(void **state)
{
	struct fx *fx = *state;
	enum { N = 300 };
	char(*uris)[32] = calloc(N, 32);
	s3dlio_request *reqs = calloc(N, sizeof(*reqs));
	for (int i = 0; i < N; i++) {
		snprintf(uris[i], 32, "mem:///small/%03d", i);
		peer_add(fx->p, uris[i], (size_t)(i * 37 % 2000), (unsigned)i);
		reqs[i].uri = uris[i];
		reqs[i].length = S3DLIO_TO_END;
	}
	/* one of them into the caller's buffer */
	uint8_t own[4096];
	reqs[7].buf = own;
	reqs[7].buf_cap = sizeof(own);
	/* and one that fails: the others still succeed */
	reqs[100].uri = "mem:///small/none";
	s3dlio_error err;
	int r = s3dlio_get_many(fx->c, reqs, N, 32, NULL, NULL, NULL, &err);
	assert_int_equal(r, S3DLIO_E_NOT_FOUND);
	assert_non_null(strstr(err.message, "mem:///small/none"));
	for (int i = 0; i < N; i++) {
		if (i == 100) {
			assert_int_equal(reqs[i].status, S3DLIO_E_NOT_FOUND);
			continue;
		}
		assert_int_equal(reqs[i].status, S3DLIO_OK);
		assert_int_equal(reqs[i].size, (uint64_t)(i * 37 % 2000));
		assert_pattern(reqs[i].data, reqs[i].size, (unsigned)i);
		if (i == 7)
			assert_ptr_equal(reqs[i].data, own);
		else
			free(reqs[i].data);
	}
	s3dlio_requests_clear(reqs, N);
	s3dlio_stats s = stats_of(fx->c);
	assert_int_equal(s.requests, N);
	assert_int_equal(s.errors, 1);
	assert_true(s.connects >= 2 && s.connects <= 4); /* spread over a few connections */
	free(reqs);
	free(uris);
}

static void test_put(void **state)
{
	struct fx *fx = *state;
	const size_t len = (1u << 20) + 123; /* max_frame is 64 KiB: many DATA frames */
	uint8_t *d = make_pattern(len, 30);
	s3dlio_error err;
	assert_int_equal(s3dlio_put(fx->c, "mem:///up", d, len, &err), S3DLIO_OK);
	size_t stored = 0;
	uint8_t *back = peer_get(fx->p, "mem:///up", &stored);
	assert_non_null(back);
	assert_int_equal(stored, len);
	assert_memory_equal(back, d, len);
	free(back);
	assert_int_equal(stats_of(fx->c).bytes_sent, len);

	/* empty object */
	assert_int_equal(s3dlio_put(fx->c, "mem:///empty", "", 0, &err), S3DLIO_OK);
	back = peer_get(fx->p, "mem:///empty", &stored);
	assert_non_null(back);
	assert_int_equal(stored, 0);
	free(back);

	/* refused early: the server's error, and the connection stays usable */
	int r = s3dlio_put(fx->c, "mem:///put-denied", d, len, &err);
	assert_int_equal(r, S3DLIO_E_PERMISSION);
	assert_string_equal(err.message, "mem:///put-denied: read-only prefix");
	s3dlio_object_info info;
	assert_int_equal(s3dlio_stat(fx->c, "mem:///up", &info, &err), S3DLIO_OK);
	assert_int_equal(info.size, len);
	assert_int_equal(atomic_load(&fx->p->puts_dropped), 1);
	assert_int_equal(atomic_load(&fx->p->bad), 0);
	assert_int_equal(stats_of(fx->c).connects, 1);
	free(d);
}

static void test_put_server_gone(void **state)
{
	struct fx *fx = *state;
	/* the peer closes at once while we stream 8 MiB: an error, never SIGPIPE */
	const size_t len = 8u << 20;
	uint8_t *d = make_pattern(len, 31);
	s3dlio_error err;
	int r = s3dlio_put(fx->c, "mem:///put-close", d, len, &err);
	assert_int_equal(r, S3DLIO_E_CONNECTION);
	assert_non_null(strstr(err.message, "mem:///put-close"));
	free(d);
	/* and the next call reconnects */
	assert_int_equal(s3dlio_put(fx->c, "mem:///after", "abc", 3, &err), S3DLIO_OK);
	/* the first failure looked like a stale pooled connection and was retried once */
	assert_true(stats_of(fx->c).reconnects >= 1);
}

struct listing {
	int n;
	int stop_after;
	char uris[16][64];
	uint64_t sizes[16];
};

static int list_cb(void *ctx, const char *uri, uint64_t size, int64_t mtime, int is_prefix)
{
	struct listing *l = ctx;
	(void)mtime;
	(void)is_prefix;
	if (l->n < 16) {
		snprintf(l->uris[l->n], 64, "%s", uri);
		l->sizes[l->n] = size;
	}
	l->n++;
	return l->stop_after && l->n >= l->stop_after;
}

static void test_stat_list_delete(void **state)
{
	struct fx *fx = *state;
	peer_add(fx->p, "mem:///d/x", 5, 1);
	peer_add(fx->p, "mem:///d/y", 6, 1);
	peer_add(fx->p, "mem:///d/z", 7, 1);
	peer_add(fx->p, "mem:///e/q", 8, 1);
	s3dlio_error err;
	s3dlio_object_info info;
	assert_int_equal(s3dlio_stat(fx->c, "mem:///d/y", &info, &err), S3DLIO_OK);
	assert_int_equal(info.size, 6);
	assert_int_equal(info.mtime_ns, 1700000000123456789LL);
	assert_string_equal(info.etag, "\"etag-1\"");
	assert_int_equal(s3dlio_stat(fx->c, "mem:///d/nope", &info, &err), S3DLIO_E_NOT_FOUND);
	assert_string_equal(err.message, "mem:///d/nope: No such file or directory");

	struct listing l = {0};
	assert_int_equal(s3dlio_list(fx->c, "mem:///d/", 1, list_cb, &l, &err), S3DLIO_OK);
	assert_int_equal(l.n, 3);
	assert_string_equal(l.uris[0], "mem:///d/x");
	assert_int_equal(l.sizes[2], 7);

	/* stopping early is success, and the connection stays in step */
	struct listing s = {.stop_after = 1};
	assert_int_equal(s3dlio_list(fx->c, "mem:///d/", 1, list_cb, &s, &err), S3DLIO_OK);
	assert_int_equal(s.n, 1);

	assert_int_equal(s3dlio_delete(fx->c, "mem:///d/x", &err), S3DLIO_OK);
	assert_int_equal(s3dlio_delete(fx->c, "mem:///d/x", &err), S3DLIO_E_NOT_FOUND);
	memset(&l, 0, sizeof(l));
	assert_int_equal(s3dlio_list(fx->c, "mem:///d/", 1, list_cb, &l, &err), S3DLIO_OK);
	assert_int_equal(l.n, 2);
	assert_int_equal(stats_of(fx->c).connects, 1);

	/* bad arguments fail locally */
	assert_int_equal(s3dlio_stat(fx->c, "", &info, &err), S3DLIO_E_INVALID);
	assert_int_equal(s3dlio_get_into(fx->c, "mem:///d/y", 0, 1, NULL, 5, NULL, &err),
	                 S3DLIO_E_INVALID);
}

/* MKDIR and RMDIR go out as their frames, with the URI as given; END is success and an
 * ERROR comes back with its code and message. */
static void test_mkdir_rmdir(void **state)
{
	struct fx *fx = *state;
	s3dlio_error err;
	assert_int_equal(s3dlio_mkdir(fx->c, "mem:///new/dir/", &err), S3DLIO_OK);
	assert_int_equal(err.code, S3DLIO_OK);
	assert_string_equal(fx->p->dir_op, "MKDIR mem:///new/dir/");
	assert_int_equal(s3dlio_rmdir(fx->c, "mem:///new/dir", &err), S3DLIO_OK);
	assert_string_equal(fx->p->dir_op, "RMDIR mem:///new/dir");

	peer_add(fx->p, "mem:///full/x", 5, 1);
	assert_int_equal(s3dlio_rmdir(fx->c, "mem:///full/", &err), S3DLIO_E_INVALID);
	assert_int_equal(err.code, S3DLIO_E_INVALID);
	assert_string_equal(err.message, "mem:///full/: directory not empty");
	/* the connection stays in step */
	s3dlio_object_info info;
	assert_int_equal(s3dlio_stat(fx->c, "mem:///full/x", &info, &err), S3DLIO_OK);
	assert_int_equal(stats_of(fx->c).connects, 1);
	assert_int_equal(atomic_load(&fx->p->bad), 0);

	/* bad arguments fail locally */
	assert_int_equal(s3dlio_mkdir(NULL, "mem:///x", &err), S3DLIO_E_INVALID);
	assert_int_equal(s3dlio_rmdir(fx->c, "", &err), S3DLIO_E_INVALID);
}

static void test_io_timeout(void **state)
{
	(void)state;
	struct peer *p = peer_start(serve_store, 1u << 20, 8);
	s3dlio_client *c = connect_client(p, 2, 300);
	assert_non_null(c);
	uint8_t buf[10];
	uint64_t got;
	s3dlio_error err;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int r = s3dlio_get_into(c, "mem:///stall", 0, S3DLIO_TO_END, buf, sizeof(buf), &got, &err);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	assert_int_equal(r, S3DLIO_E_TIMEOUT);
	assert_non_null(strstr(err.message, "mem:///stall"));
	assert_true(ms >= 250 && ms < 3000);
	/* the stalled connection was dropped; a new one serves the next call */
	peer_add(p, "mem:///fine", 3, 1);
	assert_int_equal(
	    s3dlio_get_into(c, "mem:///fine", 0, S3DLIO_TO_END, buf, sizeof(buf), &got, &err),
	    S3DLIO_OK);
	assert_int_equal(stats_of(c).reconnects, 1);
	s3dlio_client_free(c);
	peer_stop(p);
}

struct thread_arg {
	s3dlio_client *c;
	int t;
	int failures;
};

static void *thread_main(void *arg)
{
	struct thread_arg *ta = arg;
	for (int i = 0; i < 40; i++) {
		char uri[64];
		snprintf(uri, sizeof(uri), "mem:///mt/%d", (ta->t * 40 + i) % 64);
		void *data = NULL;
		uint64_t size = 0;
		s3dlio_error err;
		int r = s3dlio_get(ta->c, uri, 0, S3DLIO_TO_END, NULL, NULL, NULL, &data, &size,
		                   NULL, &err);
		size_t want = (size_t)((ta->t * 40 + i) % 64) * 1000 + 1;
		if (r || size != want) {
			ta->failures++;
		} else {
			for (size_t k = 0; k < size; k++)
				if (((uint8_t *)data)[k] != pattern_byte(k, 7)) {
					ta->failures++;
					break;
				}
		}
		free(data);
	}
	return NULL;
}

static void test_threads(void **state)
{
	struct fx *fx = *state;
	for (int i = 0; i < 64; i++) {
		char uri[64];
		snprintf(uri, sizeof(uri), "mem:///mt/%d", i);
		peer_add(fx->p, uri, (size_t)i * 1000 + 1, 7);
	}
	enum { T = 8 };
	pthread_t th[T];
	struct thread_arg ta[T];
	for (int t = 0; t < T; t++) {
		ta[t] = (struct thread_arg){fx->c, t, 0};
		pthread_create(&th[t], NULL, thread_main, &ta[t]);
	}
	int failures = 0;
	for (int t = 0; t < T; t++) {
		pthread_join(th[t], NULL);
		failures += ta[t].failures;
	}
	assert_int_equal(failures, 0);
	s3dlio_stats s = stats_of(fx->c);
	assert_int_equal(s.requests, T * 40);
	assert_true(s.connects <= 4); /* the pool's limit */
}

/* The server went away for good: calls fail with CONNECTION naming the URI and the cause. */
static void test_server_gone(void **state)
{
	(void)state;
	struct peer *p = peer_start(serve_store, 1u << 20, 8);
	s3dlio_client *c = connect_client(p, 2, 0);
	assert_non_null(c);
	char url[160];
	snprintf(url, sizeof(url), "%s", p->url);
	peer_stop(p); /* closes its connections and removes the socket */
	uint8_t buf[10];
	uint64_t got;
	s3dlio_error err;
	int r = s3dlio_get_into(c, "mem:///x", 0, S3DLIO_TO_END, buf, sizeof(buf), &got, &err);
	assert_int_equal(r, S3DLIO_E_CONNECTION);
	assert_non_null(strstr(err.message, "mem:///x: cannot connect to "));
	assert_non_null(strstr(err.message, url));
	assert_non_null(strstr(err.message, "No such file or directory"));
	s3dlio_request reqs[3];
	memset(reqs, 0, sizeof(reqs));
	for (int i = 0; i < 3; i++) {
		reqs[i].uri = "mem:///y";
		reqs[i].length = S3DLIO_TO_END;
	}
	assert_int_equal(s3dlio_get_many(c, reqs, 3, 4, NULL, NULL, NULL, &err),
	                 S3DLIO_E_CONNECTION);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(reqs[i].status, S3DLIO_E_CONNECTION);
		assert_non_null(strstr(reqs[i].error, "mem:///y"));
	}
	s3dlio_requests_clear(reqs, 3);
	assert_int_equal(stats_of(c).errors, 4);
	s3dlio_client_free(c);
}

/* A pooled connection the server closed while idle is replaced, not failed. */
static void test_stale_pooled_connection(void **state)
{
	struct fx *fx = *state;
	peer_add(fx->p, "mem:///s", 10, 1);
	/* the peer drops every connection it has (as an idle timeout would) */
	pthread_mutex_lock(&fx->p->mu);
	for (int i = 0; i < fx->p->nconns; i++)
		shutdown(fx->p->conns[i]->fd, SHUT_RDWR);
	pthread_mutex_unlock(&fx->p->mu);
	usleep(20000);
	uint8_t buf[10];
	uint64_t got;
	s3dlio_error err;
	assert_int_equal(
	    s3dlio_get_into(fx->c, "mem:///s", 0, S3DLIO_TO_END, buf, sizeof(buf), &got, &err),
	    S3DLIO_OK);
	assert_int_equal(got, 10);
	assert_int_equal(stats_of(fx->c).connects, 2);
	assert_int_equal(stats_of(fx->c).errors, 0);
}

int main(void)
{
	signal(SIGPIPE, SIG_DFL); /* the library must never raise it */
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_handshake),
	    cmocka_unit_test(test_connect_failures),
	    cmocka_unit_test(test_interleaved),
	    cmocka_unit_test_setup_teardown(test_crc_mismatch, setup_store, teardown),
	    cmocka_unit_test(test_crc_not_verified),
	    cmocka_unit_test_setup_teardown(test_error_mid_stream, setup_store, teardown),
	    cmocka_unit_test_setup_teardown(test_close_mid_transfer, setup_store, teardown),
	    cmocka_unit_test_setup_teardown(test_busy_retried, setup_store, teardown),
	    cmocka_unit_test_setup_teardown(test_too_small, setup_store, teardown),
	    cmocka_unit_test_setup_teardown(test_large_few_copies, setup_large, teardown),
	    cmocka_unit_test_setup_teardown(test_small_many, setup_store, teardown),
	    cmocka_unit_test_setup_teardown(test_put, setup_store, teardown),
	    cmocka_unit_test_setup_teardown(test_put_server_gone, setup_store, teardown),
	    cmocka_unit_test_setup_teardown(test_stat_list_delete, setup_store, teardown),
	    cmocka_unit_test_setup_teardown(test_mkdir_rmdir, setup_store, teardown),
	    cmocka_unit_test(test_io_timeout),
	    cmocka_unit_test_setup_teardown(test_threads, setup_store, teardown),
	    cmocka_unit_test_setup_teardown(test_stale_pooled_connection, setup_store, teardown),
	    cmocka_unit_test(test_server_gone),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
