/* cl_internal.h: what the modules of libs3dlio share.
 *
 *   client.c     the public s3dlio_* API: options, single calls, get_many, stats, error text
 *   cl_conn.c    cl_conn_*: one connection (URL, connect with a deadline, HELLO/WELCOME)
 *   cl_pool.c    cl_pool_*: the client's connections, checked out exclusively by a call
 *   cl_engine.c  cl_engine_run: drives a call's requests over its connections
 *   cl_route.c   cl_route_*: several servers behind one client (rendezvous hashing, failover)
 *   cl_tls.c     cl_tls_*: TLS (OpenSSL), and a connection's byte I/O, plain or TLS
 *
 * Every internal symbol starts with cl_: unit tests link this library together with the
 * server's core, whose modules have their own prefixes (conn_*, ...). */
#ifndef S3DLIO_CL_INTERNAL_H
#define S3DLIO_CL_INTERNAL_H

#include "s3dlio/s3dlio.h"
#include "wire.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define CL_AGENT "libs3dlio/0.1.0"
#define CL_STAGE_SIZE (64u << 10) /* per-connection staging buffer for frame headers */
#define CL_CONNS_PER_CALL 4u      /* connections one get_many spreads over, at most */
#define CL_DEFAULT_IN_FLIGHT 64u
#define CL_DEFAULT_CONNS 16u
#define CL_DEFAULT_CONNECT_MS 5000u
#define CL_DEFAULT_IO_MS 60000u
/* SO_RCVLOWAT while a large payload is pending (cl_engine.c, ec_lowat); S3DLIO_RCVLOWAT */
#define CL_DEFAULT_RCVLOWAT (1u << 20)
#define CL_MAX_RCVLOWAT (64u << 20)

/* Counters of s3dlio_stats, updated without a lock from any thread. */
struct cl_stats {
	atomic_uint_least64_t requests;
	atomic_uint_least64_t errors;
	atomic_uint_least64_t bytes_received;
	atomic_uint_least64_t bytes_direct;
	atomic_uint_least64_t bytes_copied;
	atomic_uint_least64_t bytes_sent;
	atomic_uint_least64_t connects;
	atomic_uint_least64_t reconnects;
	atomic_uint_least64_t busy_retries;
};

#define CL_STAT_ADD(c, field, n)                                                                   \
	atomic_fetch_add_explicit(&(c)->stats.field, (uint_least64_t)(n), memory_order_relaxed)

/* One connection to the server. Between calls it sits idle in the pool at a frame boundary
 * (no bytes of a reply pending); during a call it belongs to that call alone. */
struct ssl_st;
struct ssl_ctx_st;

struct cl_conn {
	int fd;
	struct ssl_st *ssl; /* TLS session, or NULL for a plain socket */
	int lowat;          /* SO_RCVLOWAT set on fd (0: never set, the kernel's 1) */
	uint32_t max_frame;     /* from WELCOME: largest DATA payload either side sends */
	uint32_t max_in_flight; /* from WELCOME: requests in flight before BUSY (0: no limit) */
	int reused;             /* checked out from the idle list (not opened for this call) */

	/* staging: header bytes read from the socket, [stage_off, stage_len) not yet parsed */
	uint8_t *stage;
	size_t stage_off;
	size_t stage_len;
	size_t rd_hint; /* how many bytes the next header read asks for (see cl_engine.c) */

	uint64_t next_id;     /* request ids: unique among this connection's requests in flight */
	struct cl_conn *next; /* idle list */
};

struct s3dlio_client {
	char *url;
	int is_unix;
	char *host; /* tcp */
	char *port; /* tcp */
	char *path; /* unix */
	int tls;                     /* tls://, or tcp:// with S3DLIO_TLS / S3DLIO_CA_BUNDLE */
	struct ssl_ctx_st *tls_ctx;  /* when tls */
	char *tls_name;              /* the name the certificate must carry, if not host */

	unsigned max_conns;
	unsigned connect_timeout_ms;
	unsigned io_timeout_ms;
	int verify_crc;
	unsigned rcvlowat; /* 0: off */
	char *token;

	struct cl_stats stats;

	/* several servers (cl_route.c): calls go to these single-server clients; a client with
	 * members has no connections of its own (its mutex guards the members' state) */
	struct cl_member *members;
	unsigned nmembers;

	/* pool (cl_pool.c) */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct cl_conn *idle;
	unsigned total; /* connections open: idle plus checked out */
	unsigned lost;  /* connections closed after a failure and not yet replaced */
	pid_t pid;      /* the process that opened the pooled connections */
};

/* ---- errors (client.c) ---- */
void cl_err(s3dlio_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int cl_map_wire_code(uint32_t code);
/* A malloc'd message, or a fixed fallback text when memory runs out (never NULL). */
char *cl_strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cl_free_msg(char *msg);
uint64_t cl_now_ms(void);

/* ---- client.c ---- */
/* A client of the one server at url (no list); probe: connect once now, failing if it
 * cannot. */
s3dlio_client *cl_client_new_one(const char *url, const s3dlio_options *opts, int probe,
                                 s3dlio_error *err);

/* ---- cl_route.c ---- */
struct cl_member;
struct cl_op;
/* Split a server URL list (commas) into single-server URLs, expanding a DNS name with
 * several addresses (names[i]: that name, for TLS verification; else NULL); free with
 * cl_route_free_list. */
int cl_route_split(const char *url, char ***out, char ***names, size_t *n, s3dlio_error *err);
void cl_route_free_list(char **v, char **names, size_t n);
/* Make c's members from urls (n >= 2), connecting to each once; fails only when none
 * answers, or an entry is malformed. */
int cl_route_init(s3dlio_client *c, char **urls, char **names, size_t n,
                  const s3dlio_options *opts, s3dlio_error *err);
void cl_route_destroy(s3dlio_client *c);
/* Add the members' counters to *out. */
void cl_route_stats(s3dlio_client *c, s3dlio_stats *out);
uint64_t cl_route_score(uint64_t member_hash, const char *uri, size_t uri_len);
/* The URL of the member uri goes to when every member is up. */
const char *cl_route_member_url(const s3dlio_client *c, const char *uri);
/* cl_engine_run for a client with members. */
void cl_route_run(s3dlio_client *c, struct cl_op *ops, size_t n, unsigned max_in_flight,
                  s3dlio_alloc_fn alloc, s3dlio_release_fn release, void *actx);

/* ---- cl_conn.c ---- */
/* Parse url into c->is_unix/host/port/path. */
int cl_conn_parse_url(s3dlio_client *c, const char *url, s3dlio_error *err);
/* Open a connection and complete HELLO/WELCOME within c->connect_timeout_ms. On failure *err
 * says "cannot connect to URL: cause" (or the server's refusal). patient: a BUSY refusal (the
 * tenant's connection limit) is retried as the server asks until the deadline; otherwise it
 * fails at once (a call that already has a connection just goes on with it). */
int cl_conn_open(s3dlio_client *c, int patient, struct cl_conn **out, s3dlio_error *err);
void cl_conn_close(struct cl_conn *cn);
/* 1 when an idle connection still looks usable: the peer has not closed it, nor sent bytes. */
int cl_conn_idle_ok(struct cl_conn *cn);

/* ---- cl_tls.c ---- */
/* Whether url asks for TLS (scheme, environment): *tls 0 or 1. */
int cl_tls_wanted(const char *url, int *tls);
int cl_tls_ctx_new(s3dlio_client *c, s3dlio_error *err);
void cl_tls_ctx_free(s3dlio_client *c);
/* The TLS handshake on cn's connected socket, verifying the server, before deadline. */
int cl_tls_connect(s3dlio_client *c, struct cl_conn *cn, uint64_t deadline, s3dlio_error *err);
void cl_tls_close(struct cl_conn *cn);
int cl_tls_idle_ok(struct cl_conn *cn);
/* readv / sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT) on the connection, through TLS if it has it:
 * the same return values and errno. */
ssize_t cl_conn_readv(struct cl_conn *cn, const struct iovec *iov, int k);
ssize_t cl_conn_sendv(struct cl_conn *cn, const struct iovec *iov, int k);
/* 1 when TLS holds decrypted bytes not yet read (poll() will not report them). */
int cl_conn_pending(struct cl_conn *cn);

/* ---- cl_pool.c ---- */
#define CL_POOL_NONE_FREE 1 /* cl_pool_checkout without waiting: every connection is taken */
int cl_pool_init(s3dlio_client *c);
int cl_pool_checkout(s3dlio_client *c, int wait, struct cl_conn **out, s3dlio_error *err);
void cl_pool_checkin(s3dlio_client *c, struct cl_conn *cn);
/* Close a connection that failed; the next connection opened counts as a reconnect. */
void cl_pool_discard(s3dlio_client *c, struct cl_conn *cn);
void cl_pool_destroy(s3dlio_client *c);

/* ---- cl_engine.c ---- */
enum cl_kind { CL_GET, CL_STAT, CL_LIST, CL_PUT, CL_DELETE, CL_PREFETCH, CL_MKDIR, CL_RMDIR };

/* One request of a call. Inputs are set by client.c, the engine fills the outputs. */
struct cl_op {
	/* inputs */
	int kind;
	size_t index; /* passed to alloc/release */
	const char *uri;
	size_t uri_len;
	uint64_t offset; /* GET */
	uint64_t length; /* GET: bytes wanted or S3DLIO_TO_END */
	int use_buf;     /* GET: into buf/buf_cap, not the allocator */
	void *buf;
	uint64_t buf_cap;
	const uint8_t *src; /* PUT */
	uint64_t src_size;
	int recursive; /* LIST */
	s3dlio_list_fn list_fn;
	void *list_ctx;

	/* outputs */
	void *data;
	uint64_t size;
	s3dlio_object_info info;
	int status;
	char *error; /* malloc'd when status != 0 */

	/* engine state */
	int state;
	struct eng_conn *ec;
	uint64_t id;
	uint64_t expected; /* GET: bytes the HEADER announced */
	uint64_t received; /* GET: bytes landed so far */
	uint32_t crc;      /* GET: of the bytes landed; PUT: of the bytes sent */
	int crc_sent;      /* PUT: END with crc went out */
	int placed;        /* data came from alloc: release it if the request fails */
	int got_frame;     /* a frame of the reply arrived */
	int no_conn;       /* failed because no connection to the server could be set up */
	int sent_once;     /* counted in stats.requests */
	int local_status;  /* set when the client itself ended the request (then cancelled it) */
	char *local_msg;
	unsigned busy_tries;
	unsigned conn_retries;
	uint64_t retry_at; /* ms clock: when a BUSY request may go again */
	struct cl_op *next_retry;
};

/* Run ops[0..n) to completion. Every op gets status (and error, data, size, info). */
void cl_engine_run(s3dlio_client *c, struct cl_op *ops, size_t n, unsigned max_in_flight,
                   s3dlio_alloc_fn alloc, s3dlio_release_fn release, void *actx);

#endif
