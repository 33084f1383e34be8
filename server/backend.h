/* backend.h: what a storage backend implements, and the lookup from scheme to backend.
 *
 * The connection code (conn.c) owns the protocol; a backend only moves object bytes. Calls
 * are synchronous for now (file:// and direct:// block briefly on the loop, one chunk at a
 * time); remote backends will add an asynchronous variant of read beside these.
 *
 * Every call returns 0 or -WIRE_E_* with e filled ("<uri>: <cause>"). */
#ifndef S3DLIOD_BACKEND_H
#define S3DLIOD_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "err.h"
#include "uri.h"

struct evbuffer;

/* Per worker thread: what a backend may use while running on that thread. */
struct backend_ctx {
	const struct uri_policy *policy;
	uint32_t max_frame;
	uint8_t *scratch; /* max_frame bytes, reused by every read on this thread */
};

struct backend_info {
	uint64_t size;
	int64_t mtime_ns;
	char etag[64];
	uint32_t etag_len; /* 0: no etag */
};

struct backend_entry {
	char *uri;
	uint64_t size;
	int64_t mtime_ns;
	int is_prefix;
};

struct backend_list {
	struct backend_entry *v;
	size_t n, cap;
};

struct backend_reader; /* an object opened for reading */
struct backend_writer; /* an upload in progress */

struct backend_ops {
	const char *name;
	int (*stat)(struct backend_ctx *ctx, const struct uri *u, struct backend_info *info,
	            struct err *e);
	/* Open for reading and describe the object. */
	int (*open_read)(struct backend_ctx *ctx, const struct uri *u, struct backend_reader **r,
	                 struct backend_info *info, struct err *e);
	/* Append exactly n bytes of the object, from offset off, to out (which drains to a
	 * socket, so file segments may be added), and continue *crc over them. On failure
	 * nothing is appended. */
	int (*read)(struct backend_reader *r, struct backend_ctx *ctx, uint64_t off, size_t n,
	            struct evbuffer *out, uint32_t *crc, struct err *e);
	void (*close_read)(struct backend_reader *r);
	/* Entries under the URI prefix, sorted by URI (see PROTOCOL.md, LIST). */
	int (*list)(struct backend_ctx *ctx, const struct uri *u, uint32_t flags,
	            struct backend_list *out, struct err *e);
	int (*remove)(struct backend_ctx *ctx, const struct uri *u, struct err *e);
	/* Start an upload of size bytes; nothing is visible at the URI until commit. */
	int (*put_open)(struct backend_ctx *ctx, const struct uri *u, uint64_t size,
	                struct backend_writer **w, struct err *e);
	/* Append the bytes (in order). */
	int (*put_write)(struct backend_writer *w, const struct iovec *iov, int iovcnt,
	                 struct err *e);
	/* Make the upload durable and visible. Consumes w, success or not. */
	int (*put_commit)(struct backend_writer *w, struct err *e);
	/* Drop the upload and whatever it left behind. Consumes w. */
	void (*put_abort)(struct backend_writer *w);
};

/* The backend serving u's scheme, or NULL with e filled (UNSUPPORTED) when this server
 * has none. */
const struct backend_ops *backend_for(const struct uri *u, struct err *e);

void backend_list_free(struct backend_list *l);
/* Append an entry (uri copied); -1 when out of memory. */
int backend_list_add(struct backend_list *l, const char *uri, uint64_t size, int64_t mtime_ns,
                     int is_prefix);
/* Sort by URI (bytewise, as S3 does). */
void backend_list_sort(struct backend_list *l);

extern const struct backend_ops backend_file_ops;
extern const struct backend_ops backend_direct_ops;

#endif
