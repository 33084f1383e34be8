/* conn.h: one client connection: frame parsing, requests in flight, reply streaming.
 *
 * A connection lives on one worker thread's event_base and is never touched from another
 * thread. The worker owns it through conn_new/conn_free and hears about its end through
 * env->on_free (called once, from conn_free, with the owner pointer given to conn_new). */
#ifndef S3DLIOD_CONN_H
#define S3DLIOD_CONN_H

#include <stdint.h>

#include "backend.h"
#include "err.h"
#include "log.h"

struct event_base;
struct conn;
struct cache;
struct fetch_loop;
struct metrics;
struct tokens_registry;
struct ssl_ctx_st; /* OpenSSL's SSL_CTX */

/* What a worker thread gives its connections; outlives them. */
struct conn_env {
	const struct log *log;
	struct backend_ctx *bctx;       /* the thread's backend context */
	uint32_t max_frame;             /* DATA payload size, both directions */
	uint32_t max_in_flight;         /* requests per connection before BUSY */
	int idle_timeout;               /* seconds without input and nothing in flight; 0: never */
	struct metrics *metrics;        /* the server's counters */
	struct cache *cache;            /* remote GETs go through it; NULL: no cache */
	struct fetch_loop *fetches;     /* this thread's cache fills */
	struct tokens_registry *tokens; /* --token-file (its path NULL: none) */
	struct ssl_ctx_st *tls;         /* TCP peers speak TLS (tls.h); NULL: plain */
	void (*on_free)(void *owner);
};

#define CONN_SERVER_NAME "s3dliod/0.1.0"
#define CONN_BUSY_RETRY_MS 5

/* How the peer reached us (conn_new's flags). */
#define CONN_PEER_LOCAL 1u /* a Unix-socket or loopback peer: served without a token file */
#define CONN_PEER_TCP 2u   /* a TCP peer: TLS when env->tls is set */

/* Take over the connected socket fd (non-blocking); peer names it in logs. */
int conn_new(const struct conn_env *env, struct event_base *base, int fd, const char *peer,
             unsigned flags, void *owner, struct conn **out, struct err *e);

/* The server is stopping: refuse new requests (SHUTDOWN), let those in flight finish, then
 * close. */
void conn_drain(struct conn *c);

/* Close now, dropping whatever is in flight (uploads are removed). */
void conn_free(struct conn *c);

#endif
