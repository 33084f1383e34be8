/* wire.h: the s3dlio wire protocol codec (see PROTOCOL.md beside this file).
 *
 * A frame is one msgpack array (the header). DATA frames are followed by one msgpack bin
 * object whose payload the receiver reads straight into its destination. wire_decode()
 * parses a header *and* the bin marker that follows it, so after a successful decode of a
 * DATA frame exactly `payload_len` payload bytes follow at buf + consumed.
 *
 * Strings in a decoded frame point into the caller's input buffer (not NUL-terminated);
 * they are valid until that buffer changes. Every count and length is checked against the
 * bytes present and the limits below before anything is used or allocated. */
#ifndef S3DLIO_WIRE_H
#define S3DLIO_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define WIRE_VERSION 1
#define WIRE_MAX_HEADER 8192u          /* bytes of one header, bin marker included */
#define WIRE_MAX_URI 4096u             /* bytes of a URI */
#define WIRE_MAX_MESSAGE 2048u         /* bytes of an error message */
#define WIRE_MAX_ETAG 256u             /* bytes of an etag */
#define WIRE_MAX_TOKEN 1024u           /* bytes of a bearer token */
#define WIRE_MAX_FRAME_CAP (64u << 20) /* hard cap on any DATA payload */
#define WIRE_DEFAULT_FRAME (4u << 20)  /* DATA payload size the server uses by default */
#define WIRE_TO_END UINT64_MAX         /* GET length meaning "to the end of the object" */

enum wire_type {
	/* client -> server */
	WIRE_HELLO = 1,
	WIRE_GET = 2,
	WIRE_STAT = 3,
	WIRE_LIST = 4,
	WIRE_PUT = 5,
	WIRE_DELETE = 6,
	WIRE_CANCEL = 7,
	WIRE_PREFETCH = 8, /* fetch into the server's cache; END when cached */
	WIRE_MKDIR = 9,    /* create a directory (mkdir -p) or a bucket; END(0, 0) */
	WIRE_RMDIR = 10,   /* remove an empty directory or bucket; END(0, 0) */
	/* server -> client */
	WIRE_WELCOME = 16,
	WIRE_HEADER = 17,
	WIRE_ENTRY = 18,
	WIRE_ERROR = 19,
	/* both directions */
	WIRE_DATA = 32,
	WIRE_END = 33,
};

/* Error codes carried by ERROR frames. */
enum wire_code {
	WIRE_E_NOT_FOUND = 1,
	WIRE_E_PERMISSION = 2,
	WIRE_E_INVALID = 3,     /* malformed URI or request */
	WIRE_E_BUSY = 4,        /* too many requests in flight; retry_ms says when to retry */
	WIRE_E_BACKEND = 5,     /* the storage backend failed; message names it */
	WIRE_E_IO = 6,          /* local I/O error */
	WIRE_E_TOO_LARGE = 7,   /* a length over a limit */
	WIRE_E_CANCELLED = 8,   /* the client cancelled the request */
	WIRE_E_PROTOCOL = 9,    /* a frame the peer should not have sent */
	WIRE_E_RANGE = 10,      /* offset past the end of the object */
	WIRE_E_UNSUPPORTED = 11,/* scheme or operation this server does not serve */
	WIRE_E_CHECKSUM = 12,   /* uploaded bytes did not match their CRC32C or size */
	WIRE_E_SHUTDOWN = 13,   /* the server is draining and takes no new requests */
	WIRE_E_TIMEOUT = 14,
	WIRE_E_INTERNAL = 15,
};

/* LIST flags */
#define WIRE_LIST_RECURSIVE 1u

/* One decoded (or to-be-encoded) frame. Only the fields of its type are meaningful.
 *
 *   HELLO   [1, 0, version, token|nil, agent]
 *   GET     [2, id, uri, offset, length|nil]          length nil: to the end
 *   STAT    [3, id, uri]
 *   LIST    [4, id, uri, flags]
 *   PUT     [5, id, uri, size]                        then DATA frames, then END
 *   DELETE  [6, id, uri]
 *   CANCEL  [7, id]
 *   PREFETCH [8, id, uri]                          END(object_size, 0) once cached
 *   MKDIR   [9, id, uri]                              END(0, 0)
 *   RMDIR   [10, id, uri]                             END(0, 0)
 *   WELCOME [16, 0, version, max_frame, max_in_flight, server]
 *   HEADER  [17, id, size, object_size, mtime, etag|nil]
 *   ENTRY   [18, id, uri, size, mtime, is_prefix]
 *   ERROR   [19, id, code, message, retry_ms]
 *   DATA    [32, id, offset] bin(payload)
 *   END     [33, id, size, crc32c]
 */
struct wire_frame {
	uint32_t type;
	uint64_t id;

	const char *uri; /* GET STAT LIST PUT DELETE PREFETCH MKDIR RMDIR ENTRY */
	uint32_t uri_len;
	uint64_t offset; /* GET: first byte; DATA: position of the payload in the reply */
	uint64_t length; /* GET: bytes wanted or WIRE_TO_END */
	uint32_t flags;  /* LIST */

	uint64_t size;        /* PUT: object size; HEADER: bytes that will follow;
	                         ENTRY: object size; END: bytes sent */
	uint64_t object_size; /* HEADER: size of the whole object */
	int64_t mtime;        /* HEADER, ENTRY: modification time, ns since the epoch */
	const char *etag;     /* HEADER; NULL when the backend gave none */
	uint32_t etag_len;
	uint32_t is_prefix;   /* ENTRY: 1 for a common prefix ("directory"), 0 for an object */

	uint32_t crc32c; /* END: CRC32C (Castagnoli) of the bytes of the reply / upload */

	uint32_t code; /* ERROR: enum wire_code */
	const char *message;
	uint32_t message_len;
	uint32_t retry_ms; /* ERROR: with WIRE_E_BUSY, when to retry */

	uint64_t payload_len; /* DATA: payload bytes that follow the header */

	uint32_t version;       /* HELLO, WELCOME */
	const char *token;      /* HELLO; NULL for none */
	uint32_t token_len;
	const char *agent;      /* HELLO: client name; WELCOME: server name */
	uint32_t agent_len;
	uint32_t max_frame;     /* WELCOME: largest DATA payload either side may send */
	uint32_t max_in_flight; /* WELCOME: requests in flight per connection before BUSY */
};

/* Results of wire_decode / wire_encode (0 or negative). */
enum wire_result {
	WIRE_OK = 0,
	WIRE_NEED_MORE = -1,  /* the buffer holds only part of a header: read more */
	WIRE_MALFORMED = -2,  /* not a valid frame */
	WIRE_TOO_BIG = -3,    /* a length over its limit */
	WIRE_NO_SPACE = -4,   /* encode: output buffer too small */
};

/* Decode one frame header from buf[0..len). On WIRE_OK, *consumed is the number of header
 * bytes (including a DATA frame's bin marker). max_payload bounds DATA payloads (0 means
 * WIRE_MAX_FRAME_CAP). Never reads past len, never allocates. */
int wire_decode(const uint8_t *buf, size_t len, uint32_t max_payload, struct wire_frame *f,
		size_t *consumed);

/* Encode f (its type decides the fields) into out[0..cap). For DATA, the bin marker for
 * f->payload_len bytes is written too; the caller sends the payload right after. */
int wire_encode(const struct wire_frame *f, uint8_t *out, size_t cap, size_t *len);

/* Zero-initialise a frame of a type. */
void wire_frame_init(struct wire_frame *f, uint32_t type, uint64_t id);

/* Text for results and codes, for logs and messages. */
const char *wire_result_str(int result);
const char *wire_code_str(uint32_t code);
const char *wire_type_str(uint32_t type);

/* CRC32C (Castagnoli, as iSCSI and S3 use), continuing from crc (0 to start). */
uint32_t wire_crc32c(uint32_t crc, const void *data, size_t len);

#endif
