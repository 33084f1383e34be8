/* iopool.h: a few threads that run blocking work (direct:// preads) off the event loops.
 *
 * A loop submits a job; a pool thread runs it; the job then lands in the submitting loop's
 * inbox, whose event (libevent's pthread support makes event_active safe from any thread)
 * calls the job's done on that loop. Jobs are owned by the submitter throughout: the pool
 * only links them. */
#ifndef S3DLIOD_IOPOOL_H
#define S3DLIOD_IOPOOL_H

#include "err.h"

struct event_base;
struct iopool;
struct iopool_inbox;

struct iopool_job {
	void (*run)(struct iopool_job *j);  /* on a pool thread */
	void (*done)(struct iopool_job *j); /* then on the submitting loop */
	struct iopool_inbox *inbox;
	struct iopool_job *next;
};

/* nthreads threads, started now (they inherit the caller's signal mask). */
int iopool_new(int nthreads, struct iopool **out, struct err *e);
/* Run every job still queued, then stop and join the threads. Before the inboxes go. */
void iopool_free(struct iopool *p);

/* The completion queue of one event loop. */
int iopool_inbox_new(struct event_base *base, struct iopool_inbox **out, struct err *e);
/* Call done for the jobs that completed but were not yet delivered (the loop has stopped:
 * their owners were cancelled and only free them), then free. After iopool_free. */
void iopool_inbox_free(struct iopool_inbox *b);

/* Queue j (run and done set); done will be called on inbox's loop, after run. */
void iopool_submit(struct iopool *p, struct iopool_inbox *inbox, struct iopool_job *j);

#endif
