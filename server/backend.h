/* backend.h: what a storage backend implements, and the lookup from scheme to backend.
 *
 * The connection code (conn.c) owns the protocol; a backend only moves object bytes. Local
 * backends are synchronous (file:// blocks briefly on the loop, one chunk at a time), except
 * direct://'s GET: O_DIRECT reads cannot use the page cache or sendfile, so they run on the
 * iopool threads and report through a backend_sink (backend_ops.async_get).
 *
 * Remote backends (s3://, az://, gs://) implement backend_async_ops instead: operations
 * run on the worker's libcurl multi handle and report through a backend_sink.
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
	uint8_t *scratch;           /* max_frame bytes, reused by every read on this thread */
	struct crccache *crccache;  /* whole-file CRCs, shared by the threads (NULL: off) */
	struct http *http;          /* the thread's HTTP engine (remote backends) */
	const struct cloud *cloud;  /* endpoints, credentials, upload sizes */
	struct gs_auth *gs_auth;    /* the thread's GCS token (service account), lazily made */
	struct iopool *iopool;      /* direct:// reads run there ... */
	struct iopool_inbox *inbox; /* ... and complete here, on this thread's loop */
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
struct crccache;
struct backend_writer; /* an upload in progress */
struct backend_op;     /* an asynchronous operation of a remote backend */
struct http;
struct cloud;
struct iopool;
struct iopool_inbox;

/* How an asynchronous operation reports back to the connection that started it. Calls come
 * from the worker's event loop, never from inside the start call itself. After done (or
 * after the connection cancels the operation) nothing more is called. */
struct backend_sink {
	void *arg;
	/* GET: the reply's size (bytes that will follow) and the object; STAT: the object */
	void (*header)(void *arg, uint64_t total, const struct backend_info *info);
	/* GET: the next bytes, in order. */
	void (*data)(void *arg, const void *p, size_t n);
	/* GET, instead of data (when the backend owns the buffer): the next n bytes at p, at most
	 * max_frame of them, handed over; free_fn(p, n, free_arg) releases them once sent (or
	 * at once, if they cannot be). */
	void (*data_ref)(void *arg, const void *p, size_t n,
	                 void (*free_fn)(const void *p, size_t n, void *free_arg), void *free_arg);
	/* LIST: one entry, in URI order. */
	void (*entry)(void *arg, const char *uri, uint64_t size, int64_t mtime_ns, int is_prefix);
	/* PUT: the upload has room for more bytes again (after put_full said 1). */
	void (*wake)(void *arg);
	/* The end: rc 0 (GET: all bytes delivered; PUT: committed and verified) or -WIRE_E_*. */
	void (*done)(void *arg, int rc, const struct err *e);
};

/* The asynchronous variant that remote backends implement. Each start call returns 0 with
 * *op set (the result comes through the sink) or -WIRE_E_* with e (nothing will be called). */
struct backend_async_ops {
	int (*get)(struct backend_ctx *ctx, const struct uri *u, uint64_t off, uint64_t len,
	           const struct backend_sink *s, struct backend_op **op, struct err *e);
	int (*stat)(struct backend_ctx *ctx, const struct uri *u, const struct backend_sink *s,
	            struct backend_op **op, struct err *e);
	int (*list)(struct backend_ctx *ctx, const struct uri *u, uint32_t flags,
	            const struct backend_sink *s, struct backend_op **op, struct err *e);
	int (*remove)(struct backend_ctx *ctx, const struct uri *u, const struct backend_sink *s,
	              struct backend_op **op, struct err *e);
	/* MKDIR, RMDIR (PROTOCOL.md): done(0) once the bucket exists / is gone. mkdir returns 1
	 * (and calls nothing) when it is done at once without a request. */
	int (*mkdir)(struct backend_ctx *ctx, const struct uri *u, const struct backend_sink *s,
	             struct backend_op **op, struct err *e);
	int (*rmdir)(struct backend_ctx *ctx, const struct uri *u, const struct backend_sink *s,
	             struct backend_op **op, struct err *e);
	/* An upload of size bytes; done comes only after put_finish. */
	int (*put_open)(struct backend_ctx *ctx, const struct uri *u, uint64_t size,
	                const struct backend_sink *s, struct backend_op **op, struct err *e);
	/* Take the bytes (copied). 1 from put_full: stop feeding until sink.wake. */
	int (*put_write)(struct backend_op *op, const struct iovec *iov, int iovcnt, struct err *e);
	int (*put_full)(struct backend_op *op);
	/* All bytes were given: upload what remains, commit, verify, then sink.done. */
	int (*put_finish)(struct backend_op *op, struct err *e);
	/* GET/LIST backpressure: stop or resume delivering. */
	void (*pause)(struct backend_op *op, int pause);
	/* Stop and free (an unfinished upload is aborted). No sink call afterwards. */
	void (*cancel)(struct backend_op *op);
};

struct backend_ops {
	const char *name;
	/* Remote backends: everything goes through these, the synchronous calls are NULL. */
	const struct backend_async_ops *async;
	/* A local backend whose GET runs off the loop: only get, pause and cancel are set;
	 * open_read, read and close_read are NULL. */
	const struct backend_async_ops *async_get;
	int (*stat)(struct backend_ctx *ctx, const struct uri *u, struct backend_info *info,
	            struct err *e);
	/* Open for reading and describe the object. */
	int (*open_read)(struct backend_ctx *ctx, const struct uri *u, struct backend_reader **r,
	                 struct backend_info *info, struct err *e);
	/* Append exactly n bytes of the object, from offset off, to out (which drains to a
	 * socket, so file segments may be added), and continue *crc over them (crc NULL: the
	 * caller has it from whole_crc). On failure nothing is appended. */
	int (*read)(struct backend_reader *r, struct backend_ctx *ctx, uint64_t off, size_t n,
	            struct evbuffer *out, uint32_t *crc, struct err *e);
	/* Optional: 1 and the CRC32C of the whole object when known without reading it (a GET
	 * of all of it then passes crc NULL to read); 0 otherwise. */
	int (*whole_crc)(struct backend_reader *r, uint32_t *crc);
	void (*close_read)(struct backend_reader *r);
	/* Entries under the URI prefix, sorted by URI (see PROTOCOL.md, LIST). */
	int (*list)(struct backend_ctx *ctx, const struct uri *u, uint32_t flags,
	            struct backend_list *out, struct err *e);
	int (*remove)(struct backend_ctx *ctx, const struct uri *u, struct err *e);
	/* MKDIR: the directory and its missing parents (mkdir -p); RMDIR: an empty directory. */
	int (*mkdir)(struct backend_ctx *ctx, const struct uri *u, struct err *e);
	int (*rmdir)(struct backend_ctx *ctx, const struct uri *u, struct err *e);
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

/* Release what remote backends keep per thread (before the thread's http engine goes). */
void backend_remote_ctx_free(struct backend_ctx *ctx);

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
extern const struct backend_ops backend_s3_ops;
extern const struct backend_ops backend_az_ops;
extern const struct backend_ops backend_gs_ops;

#endif
