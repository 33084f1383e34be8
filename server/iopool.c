/* iopool.c: the blocking-work thread pool and the per-loop inboxes (see iopool.h).
 *
 * One FIFO queue under one mutex: jobs are few (a couple per direct:// GET) and each is a
 * multi-megabyte read, so the lock is nowhere near the cost. */
#include "iopool.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>

struct iopool {
	pthread_mutex_t mu; /* guards head, tail, stop */
	pthread_cond_t cv;
	struct iopool_job *head, *tail;
	int stop;
	pthread_t *threads;
	int nthreads; /* started */
};

struct iopool_inbox {
	pthread_mutex_t mu; /* guards head, tail */
	struct iopool_job *head, *tail;
	struct event *ev;
};

static void iopool_deliver(struct iopool_inbox *b, struct iopool_job *j)
{
	j->next = NULL;
	pthread_mutex_lock(&b->mu);
	if (b->tail)
		b->tail->next = j;
	else
		b->head = j;
	b->tail = j;
	pthread_mutex_unlock(&b->mu);
	event_active(b->ev, 0, 0);
}

static void *iopool_main(void *arg)
{
	struct iopool *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->head && !p->stop)
			pthread_cond_wait(&p->cv, &p->mu);
		struct iopool_job *j = p->head;
		if (!j)
			break; /* stopping, and nothing left to run */
		p->head = j->next;
		if (!p->head)
			p->tail = NULL;
		pthread_mutex_unlock(&p->mu);
		j->run(j);
		iopool_deliver(j->inbox, j);
		pthread_mutex_lock(&p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int iopool_new(int nthreads, struct iopool **out, struct err *e)
{
	int result = 0;
	struct iopool *p = calloc(1, sizeof(*p));
	if (!p)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->threads = calloc((size_t)nthreads, sizeof(*p->threads));
	if (!p->threads) {
		result = err_set(e, WIRE_E_INTERNAL, "out of memory");
		goto done;
	}
	for (int i = 0; i < nthreads; i++) {
		if (pthread_create(&p->threads[i], NULL, iopool_main, p) != 0) {
			result =
			    err_set(e, WIRE_E_INTERNAL, "cannot start direct:// I/O thread %d", i);
			goto done;
		}
		p->nthreads++;
	}
	*out = p;
	p = NULL;
done:
	iopool_free(p);
	return result;
}

void iopool_free(struct iopool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	free(p->threads);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

void iopool_submit(struct iopool *p, struct iopool_inbox *inbox, struct iopool_job *j)
{
	j->inbox = inbox;
	j->next = NULL;
	pthread_mutex_lock(&p->mu);
	if (p->tail)
		p->tail->next = j;
	else
		p->head = j;
	p->tail = j;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

/* Take everything delivered so far and complete it, in order. */
static void iopool_inbox_drain(struct iopool_inbox *b)
{
	pthread_mutex_lock(&b->mu);
	struct iopool_job *j = b->head;
	b->head = b->tail = NULL;
	pthread_mutex_unlock(&b->mu);
	while (j) {
		struct iopool_job *next = j->next; /* done may free j */
		j->done(j);
		j = next;
	}
}

static void iopool_inbox_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	iopool_inbox_drain(arg);
}

int iopool_inbox_new(struct event_base *base, struct iopool_inbox **out, struct err *e)
{
	struct iopool_inbox *b = calloc(1, sizeof(*b));
	if (!b)
		return err_set(e, WIRE_E_INTERNAL, "out of memory");
	pthread_mutex_init(&b->mu, NULL);
	b->ev = event_new(base, -1, 0, iopool_inbox_cb, b);
	if (!b->ev) {
		pthread_mutex_destroy(&b->mu);
		free(b);
		return err_set(e, WIRE_E_INTERNAL, "cannot create an event");
	}
	*out = b;
	return 0;
}

void iopool_inbox_free(struct iopool_inbox *b)
{
	if (!b)
		return;
	iopool_inbox_drain(b);
	event_free(b->ev);
	pthread_mutex_destroy(&b->mu);
	free(b);
}
