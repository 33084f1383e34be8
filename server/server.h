/* server.h: the s3dliod process: listeners, worker threads, signals and draining.
 *
 * The main thread owns the listeners and hands each accepted socket to a worker thread
 * (round-robin); each worker runs its own event_base and owns its connections. SIGTERM or
 * SIGINT (or the --parent-pid process going away) closes the listeners, lets requests in
 * flight finish for up to --drain-timeout, and then server_run returns. */
#ifndef S3DLIOD_SERVER_H
#define S3DLIOD_SERVER_H

#include "config.h"
#include "err.h"

struct server;

/* Open the --allow roots and bind the listeners (printing one "listening on" line each). */
int server_new(const struct config *cfg, struct server **out, struct err *e);

/* Serve until stopped; 0 after a clean stop. */
int server_run(struct server *s, struct err *e);

void server_free(struct server *s);

#endif
