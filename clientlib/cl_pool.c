/* cl_pool.c: the client's connections to its server.
 *
 * A call checks connections out exclusively and returns them at a frame boundary, so no lock
 * is taken on the data path. The pool grows up to max_conns; a call that finds every
 * connection taken waits on a condition variable. A connection that failed is closed, not
 * returned; the next one opened in its place counts as a reconnect. After fork() the child
 * must not share the parent's sockets, so connections inherited from another process are
 * dropped (closed in the child only) on the first checkout. */
#include "cl_internal.h"

#include <stdlib.h>
#include <unistd.h>

int cl_pool_init(s3dlio_client *c)
{
	if (pthread_mutex_init(&c->mu, NULL))
		return -1;
	if (pthread_cond_init(&c->cv, NULL)) {
		pthread_mutex_destroy(&c->mu);
		return -1;
	}
	c->idle = NULL;
	c->total = 0;
	c->lost = 0;
	c->pid = getpid();
	return 0;
}

/* Called with c->mu held. */
static void forget_parent_connections(s3dlio_client *c)
{
	pid_t pid = getpid();
	if (pid == c->pid)
		return;
	struct cl_conn *cn = c->idle;
	while (cn) {
		struct cl_conn *next = cn->next;
		cl_conn_close(cn);
		cn = next;
	}
	/* connections other threads of the parent held do not exist in this process */
	c->idle = NULL;
	c->total = 0;
	c->lost = 0;
	c->pid = pid;
}

int cl_pool_checkout(s3dlio_client *c, int wait, struct cl_conn **out, s3dlio_error *err)
{
	pthread_mutex_lock(&c->mu);
	for (;;) {
		forget_parent_connections(c);
		if (c->idle) {
			struct cl_conn *cn = c->idle;
			c->idle = cn->next;
			cn->next = NULL;
			pthread_mutex_unlock(&c->mu);
			if (cl_conn_idle_ok(cn)) {
				cn->reused = 1;
				*out = cn;
				return 0;
			}
			/* the server closed it while idle (idle timeout, restart): replace it */
			cl_pool_discard(c, cn);
			pthread_mutex_lock(&c->mu);
			continue;
		}
		if (c->total < c->max_conns) {
			c->total++;
			int replaces = 0;
			if (c->lost) {
				c->lost--;
				replaces = 1;
			}
			pthread_mutex_unlock(&c->mu);
			struct cl_conn *cn = NULL;
			int r = cl_conn_open(c, wait, &cn, err);
			pthread_mutex_lock(&c->mu);
			if (r) {
				c->total--;
				if (replaces)
					c->lost++;
				pthread_cond_signal(&c->cv);
				pthread_mutex_unlock(&c->mu);
				return r;
			}
			pthread_mutex_unlock(&c->mu);
			if (replaces)
				CL_STAT_ADD(c, reconnects, 1);
			cn->reused = 0;
			*out = cn;
			return 0;
		}
		if (!wait) {
			pthread_mutex_unlock(&c->mu);
			return CL_POOL_NONE_FREE;
		}
		pthread_cond_wait(&c->cv, &c->mu);
	}
}

void cl_pool_checkin(s3dlio_client *c, struct cl_conn *cn)
{
	pthread_mutex_lock(&c->mu);
	if (getpid() != c->pid) {
		/* checked out before a fork in another process's pool accounting: just drop it */
		pthread_mutex_unlock(&c->mu);
		cl_conn_close(cn);
		return;
	}
	cn->next = c->idle;
	c->idle = cn;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

void cl_pool_discard(s3dlio_client *c, struct cl_conn *cn)
{
	cl_conn_close(cn);
	pthread_mutex_lock(&c->mu);
	if (getpid() == c->pid && c->total > 0) {
		c->total--;
		c->lost++;
	}
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

void cl_pool_destroy(s3dlio_client *c)
{
	struct cl_conn *cn = c->idle;
	while (cn) {
		struct cl_conn *next = cn->next;
		cl_conn_close(cn);
		cn = next;
	}
	c->idle = NULL;
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
}
