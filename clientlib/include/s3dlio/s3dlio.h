/* s3dlio.h: the C client of s3dliod.
 *
 * A client holds a pool of connections to one server (tcp://HOST:PORT or unix:///PATH).
 * Every call is synchronous and thread-safe: a call checks connections out of the pool for
 * its duration, so calls from many threads run in parallel on different connections.
 * Object bytes are received straight into the destination: a buffer the caller's allocator
 * placed (s3dlio_alloc_fn) or the caller's own buffer. A request whose bytes did not all
 * arrive, or whose CRC32C does not match, fails: a partly filled buffer is never success.
 *
 * Functions return S3DLIO_OK (0) or a negative S3DLIO_E_* code and fill *err with a message
 * that names the URI and the cause. */
#ifndef S3DLIO_S3DLIO_H
#define S3DLIO_S3DLIO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported symbols: the library is built with -fvisibility=hidden. */
#if defined(__GNUC__) || defined(__clang__)
#define S3DLIO_API __attribute__((visibility("default")))
#else
#define S3DLIO_API
#endif

#define S3DLIO_TO_END UINT64_MAX

enum s3dlio_code {
	S3DLIO_OK = 0,
	S3DLIO_E_NOT_FOUND = -1,   /* no such object */
	S3DLIO_E_PERMISSION = -2,  /* the server refuses this URI */
	S3DLIO_E_INVALID = -3,     /* malformed URI or argument */
	S3DLIO_E_CONNECTION = -4,  /* cannot reach the server, or the connection broke */
	S3DLIO_E_BUSY = -5,        /* the server stayed busy past the retries */
	S3DLIO_E_BACKEND = -6,     /* the storage backend failed */
	S3DLIO_E_IO = -7,          /* I/O error on the server */
	S3DLIO_E_NOMEM = -8,       /* the allocator returned NULL */
	S3DLIO_E_PROTOCOL = -9,    /* the peer broke the protocol */
	S3DLIO_E_TIMEOUT = -10,
	S3DLIO_E_CHECKSUM = -11,   /* CRC32C or size mismatch */
	S3DLIO_E_TOO_SMALL = -12,  /* the caller's buffer cannot hold the object */
	S3DLIO_E_RANGE = -13,      /* offset past the end of the object */
	S3DLIO_E_UNSUPPORTED = -14,/* scheme or operation the server does not serve */
	S3DLIO_E_TOO_LARGE = -15,  /* a length over a limit */
	S3DLIO_E_CANCELLED = -16,
	S3DLIO_E_INTERNAL = -17,
};

typedef struct s3dlio_error {
	int code;           /* enum s3dlio_code */
	char message[1024]; /* names the URI and the cause */
} s3dlio_error;

typedef struct s3dlio_client s3dlio_client;

typedef struct s3dlio_options {
	unsigned max_connections; /* pool size (0: 16) */
	unsigned connect_timeout_ms; /* 0: 5000 */
	unsigned io_timeout_ms;      /* a reply that stalls this long fails (0: 60000) */
	int verify_crc;              /* check each reply's CRC32C (default 1; -1 reads env) */
	const char *token;           /* bearer token sent at HELLO, or NULL */
} s3dlio_options;

/* Places the destination of one object once its size is known. index is the request's
 * position (0 for single gets). Returns NULL to fail the request with S3DLIO_E_NOMEM. */
typedef void *(*s3dlio_alloc_fn)(void *ctx, size_t index, uint64_t size);
/* Releases a buffer the allocator placed, for a request that then failed. May be NULL. */
typedef void (*s3dlio_release_fn)(void *ctx, size_t index, void *ptr, uint64_t size);

typedef struct s3dlio_object_info {
	uint64_t size;
	int64_t mtime_ns;
	char etag[257];
} s3dlio_object_info;

/* One request of s3dlio_get_many. Fill the inputs; the call fills the outputs. */
typedef struct s3dlio_request {
	/* inputs */
	const char *uri;
	uint64_t offset;
	uint64_t length;  /* S3DLIO_TO_END for the rest of the object */
	void *buf;        /* the caller's buffer, or NULL to use the allocator */
	uint64_t buf_cap; /* capacity of buf */
	/* outputs */
	void *data;       /* where the bytes are (buf or the allocator's pointer) */
	uint64_t size;    /* bytes received */
	s3dlio_object_info info;
	int status;       /* S3DLIO_OK or an error code */
	char *error;      /* malloc'd message when status != 0 (freed by s3dlio_requests_clear) */
} s3dlio_request;

/* Client statistics (cumulative). */
typedef struct s3dlio_stats {
	uint64_t requests;       /* requests sent */
	uint64_t errors;         /* requests that failed */
	uint64_t bytes_received; /* payload bytes of replies */
	uint64_t bytes_direct;   /* payload bytes received straight into destinations */
	uint64_t bytes_copied;   /* payload bytes copied from a staging buffer */
	uint64_t bytes_sent;     /* payload bytes uploaded */
	uint64_t connects;       /* connections opened */
	uint64_t reconnects;     /* connections replaced after a failure */
	uint64_t busy_retries;   /* requests retried after BUSY */
} s3dlio_stats;

/* url: tcp://HOST:PORT or unix:///PATH, or several servers: URLs separated by commas, or a
 * tcp:// host name with several addresses (each address is a server). opts may be NULL
 * (defaults; verify_crc then follows S3DLIO_VERIFY_CRC, the token S3DLIO_TOKEN). Connects
 * once to check the server is there (returns NULL with *err filled when it is not; with
 * several, when none is).
 *
 * Several servers: each URI goes to one of them by rendezvous hashing, so each caches a
 * distinct share; requests of a server that fails (cannot connect, connection lost, shutting
 * down) move to the next one in their URI's order, and that server is avoided for a while
 * (1 s, doubling to 30 s while it keeps failing). A request fails only when every server
 * failed it. A get_many spread over several servers runs them at once, one thread each: the
 * allocator may then be called from several threads at once (for distinct indexes). */
S3DLIO_API s3dlio_client *s3dlio_client_new(const char *url, const s3dlio_options *opts,
					    s3dlio_error *err);
S3DLIO_API void s3dlio_client_free(s3dlio_client *c);
S3DLIO_API const char *s3dlio_client_url(const s3dlio_client *c);
/* The server (its URL) that uri goes to while every server is up. */
S3DLIO_API const char *s3dlio_client_route(const s3dlio_client *c, const char *uri);

/* Whole object or range into a buffer from alloc. On success *data and *size describe it.
 * alloc NULL: the buffer comes from malloc (free it with free()). */
S3DLIO_API int s3dlio_get(s3dlio_client *c, const char *uri, uint64_t offset, uint64_t length,
			  s3dlio_alloc_fn alloc, s3dlio_release_fn release, void *ctx, void **data,
			  uint64_t *size, s3dlio_object_info *info, s3dlio_error *err);

/* Object or range into the caller's buffer; S3DLIO_E_TOO_SMALL when it does not fit. */
S3DLIO_API int s3dlio_get_into(s3dlio_client *c, const char *uri, uint64_t offset,
			       uint64_t length, void *buf, uint64_t cap, uint64_t *size,
			       s3dlio_error *err);

/* Many requests, at most max_in_flight outstanding at once (0: 64), pipelined over up to
 * max_connections connections. Every request gets a status. Returns S3DLIO_OK when all
 * succeeded, else the code of the first failed request (in input order) with *err naming it.
 * A request with buf set lands there; the others in buffers from alloc (NULL: malloc). */
S3DLIO_API int s3dlio_get_many(s3dlio_client *c, s3dlio_request *reqs, size_t n,
			       unsigned max_in_flight, s3dlio_alloc_fn alloc,
			       s3dlio_release_fn release, void *ctx, s3dlio_error *err);
/* Warm the server's object cache for a coming read of reqs[i].uri (the other inputs are
 * ignored). Each request ends once its object is in the cache (a fetch already running for it
 * is shared), with size = the object's size, or at once with size 0 when the server does not
 * cache that URI (a local file, or no --cache-mem). Nothing is sent back but the status.
 * Returns like s3dlio_get_many. */
S3DLIO_API int s3dlio_prefetch_many(s3dlio_client *c, s3dlio_request *reqs, size_t n,
				    unsigned max_in_flight, s3dlio_error *err);
/* Free the error strings of a request array. */
S3DLIO_API void s3dlio_requests_clear(s3dlio_request *reqs, size_t n);

/* Upload from the caller's buffer (sent without a copy). Returns only once the server has
 * stored the whole object and checked its size and CRC32C. */
S3DLIO_API int s3dlio_put(s3dlio_client *c, const char *uri, const void *data, uint64_t size,
			  s3dlio_error *err);

S3DLIO_API int s3dlio_stat(s3dlio_client *c, const char *uri, s3dlio_object_info *info,
			   s3dlio_error *err);

/* Called once per listed entry; uri is NUL-terminated. Return non-zero to stop early. */
typedef int (*s3dlio_list_fn)(void *ctx, const char *uri, uint64_t size, int64_t mtime_ns,
			      int is_prefix);
S3DLIO_API int s3dlio_list(s3dlio_client *c, const char *uri, int recursive, s3dlio_list_fn fn,
			   void *ctx, s3dlio_error *err);

S3DLIO_API int s3dlio_delete(s3dlio_client *c, const char *uri, s3dlio_error *err);

/* Make a directory: file:// and direct:// create it and its missing parents beneath the
 * server's allowed root (an existing directory is success; an existing file in the way is
 * S3DLIO_E_INVALID). s3://b, az://account/container, gs://b (a trailing slash or not)
 * create the bucket or container (one that exists and is yours is success); a deeper
 * prefix succeeds without asking the store, which has no directories. Routed like a PUT
 * of uri; refused (S3DLIO_E_PERMISSION) outside the server's allowed prefixes and with a
 * read-only token. A server older than MKDIR and RMDIR refuses them as a protocol error
 * and closes that connection. */
S3DLIO_API int s3dlio_mkdir(s3dlio_client *c, const char *uri, s3dlio_error *err);

/* Remove an empty directory: file:// and direct:// remove that directory (S3DLIO_E_NOT_FOUND
 * when missing, S3DLIO_E_INVALID when it is not empty or not a directory,
 * S3DLIO_E_PERMISSION for an allowed root itself). s3/az/gs: a bucket-level URI deletes the
 * bucket or container once it holds no object (S3DLIO_E_INVALID when it does); a deeper
 * prefix succeeds when no object is stored under it, else S3DLIO_E_INVALID. */
S3DLIO_API int s3dlio_rmdir(s3dlio_client *c, const char *uri, s3dlio_error *err);

S3DLIO_API void s3dlio_get_stats(s3dlio_client *c, s3dlio_stats *out);

S3DLIO_API const char *s3dlio_code_str(int code);

#ifdef __cplusplus
}
#endif
#endif
