/* cache.c: the shared object cache, its waiters and its disk tier (see cache.h). */
#include "cache.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wire.h"

#define CACHE_ENTRY_OVERHEAD 512u /* bytes charged per entry besides the object */

TAILQ_HEAD(cache_fifo, cache_entry);

/* A key recently evicted from the small FIFO: only its hash is kept. */
struct cache_ghost {
	uint64_t h;
	struct cache_ghost *hnext;
	TAILQ_ENTRY(cache_ghost) q;
};
TAILQ_HEAD(cache_ghost_fifo, cache_ghost);

/* An object on the disk tier: DIR/<fileno>.obj holds its bytes. */
struct cache_disk_ent {
	char *key;
	uint64_t fileno;
	uint64_t size;
	struct backend_info info;
	uint32_t crc;
	int64_t validated_ns;
	int loading; /* a load reads the file: neither evicted nor unlinked meanwhile */
	int dead;    /* dropped from the index while loading: unlink once the load ends */
	struct cache_disk_ent *hnext;
	TAILQ_ENTRY(cache_disk_ent) lru;
};
TAILQ_HEAD(cache_disk_lru, cache_disk_ent);

enum { CACHE_JOB_WRITE, CACHE_JOB_LOAD, CACHE_JOB_UNLINK };

/* Work for the disk thread. */
struct cache_job {
	int kind;
	struct cache_entry *en;    /* WRITE: the evicted entry; LOAD: the entry to fill (refs) */
	struct cache_disk_ent *de; /* LOAD */
	uint64_t fileno;           /* UNLINK */
	uint64_t inval_seq;        /* WRITE: c->inval_seq when queued */
	struct cache_job *next;
};

struct cache {
	pthread_mutex_t mu;
	/* bumped by every invalidation (PUT, DELETE, a changed etag): a disk write queued before
	 * one may hold bytes the invalidation was meant to drop, so it is not indexed */
	uint64_t inval_seq;
	struct cache_entry **tab;
	uint32_t tab_size; /* power of two */
	/* S3-FIFO over the READY and BYPASS entries in the table; heads: newest */
	struct cache_fifo small, main;
	uint64_t small_bytes;      /* charged to entries in small */
	struct cache_ghost **gtab; /* tab_size buckets */
	struct cache_ghost_fifo ghosts;
	uint64_t nghosts; /* at most tab_size */
	uint64_t budget, max_object, used, entries;
	int64_t validate_ns;
	struct cache_stats st;
	/* the disk tier (dirfd -1: none); index and LRU under mu */
	int dirfd;
	uint64_t disk_budget, disk_used, disk_entries, next_fileno;
	struct cache_disk_ent **dtab; /* tab_size buckets */
	struct cache_disk_lru dlru;
	pthread_t thread;
	int thread_started;
	pthread_mutex_t qmu; /* guards the job queue and stop */
	pthread_cond_t qcv;
	struct cache_job *qhead, *qtail;
	int stop;
};

static uint64_t cache_hash64(const char *s)
{
	uint64_t h = 14695981039346656037ull; /* FNV-1a, 64 bits */
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ull;
	return h;
}

static uint32_t cache_hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 16777619u;
	return h;
}

struct cache *cache_new(uint64_t budget, uint64_t max_object, int64_t validate_ns)
{
	struct cache *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	/* about one bucket per 64 KiB of budget, within [1024, 1M] */
	uint64_t want = budget >> 16;
	c->tab_size = 1024;
	while (c->tab_size < want && c->tab_size < (1u << 20))
		c->tab_size <<= 1;
	c->tab = calloc(c->tab_size, sizeof(*c->tab));
	c->gtab = calloc(c->tab_size, sizeof(*c->gtab));
	if (!c->tab || !c->gtab) {
		free(c->tab);
		free(c->gtab);
		free(c);
		return NULL;
	}
	pthread_mutex_init(&c->mu, NULL);
	pthread_mutex_init(&c->qmu, NULL);
	pthread_cond_init(&c->qcv, NULL);
	TAILQ_INIT(&c->small);
	TAILQ_INIT(&c->main);
	TAILQ_INIT(&c->ghosts);
	TAILQ_INIT(&c->dlru);
	c->dirfd = -1;
	c->budget = budget;
	c->max_object = max_object;
	c->validate_ns = validate_ns;
	return c;
}

static void cache_entry_destroy(struct cache_entry *en)
{
	free(en->buf);
	free(en->key);
	free(en);
}

void cache_entry_ref(struct cache_entry *en)
{
	atomic_fetch_add_explicit(&en->refs, 1, memory_order_relaxed);
}

void cache_entry_unref(struct cache_entry *en)
{
	if (en && atomic_fetch_sub_explicit(&en->refs, 1, memory_order_acq_rel) == 1)
		cache_entry_destroy(en);
}

void cache_entry_unref_cb(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	cache_entry_unref(arg);
}

/* ---- the disk tier: index (under mu) and job queue ---- */

static void cache_disk_unlink(struct cache *c, uint64_t fileno);

static void cache_push_job(struct cache *c, struct cache_job *j)
{
	pthread_mutex_lock(&c->qmu);
	j->next = NULL;
	if (c->qtail)
		c->qtail->next = j;
	else
		c->qhead = j;
	c->qtail = j;
	pthread_cond_signal(&c->qcv);
	pthread_mutex_unlock(&c->qmu);
}

/* Queue a job; 0, or -1 when out of memory (nothing queued, no reference taken). */
static int cache_job(struct cache *c, int kind, struct cache_entry *en, struct cache_disk_ent *de,
                     uint64_t fileno)
{
	struct cache_job *j = calloc(1, sizeof(*j));
	if (!j)
		return -1;
	j->kind = kind;
	j->en = en;
	j->de = de;
	j->fileno = fileno;
	j->inval_seq = c->inval_seq; /* callers hold mu */
	if (en)
		cache_entry_ref(en);
	cache_push_job(c, j);
	return 0;
}

static struct cache_disk_ent *cache_disk_find(struct cache *c, const char *key)
{
	if (c->dirfd < 0)
		return NULL;
	for (struct cache_disk_ent *de = c->dtab[cache_hash(key) & (c->tab_size - 1)]; de;
	     de = de->hnext)
		if (strcmp(de->key, key) == 0)
			return de;
	return NULL;
}

static void cache_disk_ent_free(struct cache_disk_ent *de)
{
	free(de->key);
	free(de);
}

/* Drop de from the index; its file goes now (or after the load reading it). */
static void cache_disk_remove(struct cache *c, struct cache_disk_ent *de)
{
	struct cache_disk_ent **pp = &c->dtab[cache_hash(de->key) & (c->tab_size - 1)];
	while (*pp != de)
		pp = &(*pp)->hnext;
	*pp = de->hnext;
	TAILQ_REMOVE(&c->dlru, de, lru);
	c->disk_used -= de->size;
	c->disk_entries--;
	if (de->loading) {
		de->dead = 1;
		return;
	}
	cache_job(c, CACHE_JOB_UNLINK, NULL, NULL, de->fileno); /* lost if out of memory */
	cache_disk_ent_free(de);
}

static void cache_disk_drop_key(struct cache *c, const char *key)
{
	struct cache_disk_ent *de = cache_disk_find(c, key);
	if (de)
		cache_disk_remove(c, de);
}

/* ---- under the lock ---- */

static void cache_enqueue(struct cache *c, struct cache_entry *en, int queue)
{
	en->queue = queue;
	en->freq = 0;
	if (queue == CACHE_Q_SMALL) {
		TAILQ_INSERT_HEAD(&c->small, en, q);
		c->small_bytes += en->charged;
	} else {
		TAILQ_INSERT_HEAD(&c->main, en, q);
	}
}

static void cache_dequeue(struct cache *c, struct cache_entry *en)
{
	if (en->queue == CACHE_Q_SMALL) {
		TAILQ_REMOVE(&c->small, en, q);
		c->small_bytes -= en->charged;
	} else if (en->queue == CACHE_Q_MAIN) {
		TAILQ_REMOVE(&c->main, en, q);
	}
	en->queue = CACHE_Q_NONE;
}

static void cache_ghost_add(struct cache *c, const char *key)
{
	struct cache_ghost *g;
	if (c->nghosts >= c->tab_size) {
		g = TAILQ_LAST(&c->ghosts, cache_ghost_fifo); /* the oldest goes */
		TAILQ_REMOVE(&c->ghosts, g, q);
		struct cache_ghost **pp = &c->gtab[g->h & (c->tab_size - 1)];
		while (*pp != g)
			pp = &(*pp)->hnext;
		*pp = g->hnext;
	} else if (!(g = malloc(sizeof(*g)))) {
		return; /* a ghost is a hint: losing one costs nothing but a second chance */
	} else {
		c->nghosts++;
	}
	g->h = cache_hash64(key);
	g->hnext = c->gtab[g->h & (c->tab_size - 1)];
	c->gtab[g->h & (c->tab_size - 1)] = g;
	TAILQ_INSERT_HEAD(&c->ghosts, g, q);
}

/* 1 (and the ghost is dropped) when key was evicted from the small FIFO recently. */
static int cache_ghost_take(struct cache *c, const char *key)
{
	uint64_t h = cache_hash64(key);
	for (struct cache_ghost **pp = &c->gtab[h & (c->tab_size - 1)]; *pp; pp = &(*pp)->hnext) {
		struct cache_ghost *g = *pp;
		if (g->h == h) {
			*pp = g->hnext;
			TAILQ_REMOVE(&c->ghosts, g, q);
			c->nghosts--;
			free(g);
			return 1;
		}
	}
	return 0;
}

static struct cache_entry *cache_find(struct cache *c, const char *key)
{
	for (struct cache_entry *en = c->tab[cache_hash(key) & (c->tab_size - 1)]; en;
	     en = en->hnext)
		if (strcmp(en->key, key) == 0)
			return en;
	return NULL;
}

/* Take en out of the table (and the LRU list); drops the table's reference. */
static void cache_remove(struct cache *c, struct cache_entry *en)
{
	if (!en->in_table)
		return;
	struct cache_entry **pp = &c->tab[cache_hash(en->key) & (c->tab_size - 1)];
	while (*pp != en)
		pp = &(*pp)->hnext;
	*pp = en->hnext;
	en->hnext = NULL;
	en->in_table = 0;
	cache_dequeue(c, en);
	c->used -= en->charged;
	c->entries--;
	en->charged = 0;
	cache_entry_unref(en); /* may be the last reference: en may be gone now */
}

/* Tell every waiter of en; they look at the state themselves. */
static void cache_wake(struct cache_entry *en)
{
	struct cache_waiter *w;
	while ((w = TAILQ_FIRST(&en->waiters))) {
		TAILQ_REMOVE(&en->waiters, w, link);
		w->linked = 0;
		/* under the lock: cache_waiter_cancel (also under it) cannot free ev meanwhile */
		event_active(w->ev, 0, 0);
	}
}

static void cache_wait_on(struct cache_entry *en, struct cache_waiter *w)
{
	cache_entry_ref(en);
	w->entry = en;
	w->linked = 1;
	TAILQ_INSERT_TAIL(&en->waiters, w, link);
}

/* An entry leaves memory: keep it on disk, unless the disk has it already. */
static void cache_demote(struct cache *c, struct cache_entry *en)
{
	if (c->dirfd < 0 || en->invalidated || en->size > c->disk_budget)
		return;
	struct cache_disk_ent *de = cache_disk_find(c, en->key);
	if (de && de->size == en->size && de->crc == en->crc) {
		TAILQ_REMOVE(&c->dlru, de, lru);
		TAILQ_INSERT_HEAD(&c->dlru, de, lru);
		de->validated_ns = en->validated_ns; /* revalidated in memory since it was written */
		de->info = en->info;
		return;
	}
	cache_job(c, CACHE_JOB_WRITE, en, NULL, 0);
}

static void cache_evict(struct cache *c, struct cache_entry *victim)
{
	if (victim->state == CACHE_READY) {
		c->st.evictions++;
		c->st.evicted_bytes += victim->size;
		cache_demote(c, victim);
	} else {
		victim->state = CACHE_STALE; /* a "not cacheable" note */
	}
	cache_remove(c, victim); /* may free it */
}

/* Evict (S3-FIFO, see cache.h) until need more bytes fit; 0 when they do. */
static int cache_make_room(struct cache *c, uint64_t need)
{
	while (c->used + need > c->budget) {
		struct cache_entry *t;
		if (!TAILQ_EMPTY(&c->small) &&
		    (c->small_bytes > c->budget / 10 || TAILQ_EMPTY(&c->main))) {
			t = TAILQ_LAST(&c->small, cache_fifo);
			if (t->state == CACHE_READY && t->freq > 0) {
				cache_dequeue(c, t); /* read again while new: it is shared */
				cache_enqueue(c, t, CACHE_Q_MAIN);
				continue;
			}
			if (t->state == CACHE_READY)
				cache_ghost_add(c, t->key);
			cache_evict(c, t);
			continue;
		}
		t = TAILQ_LAST(&c->main, cache_fifo);
		if (!t)
			return -1;
		if (t->freq > 0) {
			uint8_t f = t->freq;
			cache_dequeue(c, t); /* another round, with one hit less */
			cache_enqueue(c, t, CACHE_Q_MAIN);
			t->freq = f - 1;
			continue;
		}
		cache_evict(c, t);
	}
	return 0;
}

static struct cache_entry *cache_insert(struct cache *c, const char *key)
{
	struct cache_entry *en = calloc(1, sizeof(*en));
	if (!en || !(en->key = strdup(key))) {
		free(en);
		return NULL;
	}
	en->cache = c;
	en->state = CACHE_FETCHING;
	atomic_init(&en->refs, 1); /* the table's */
	TAILQ_INIT(&en->waiters);
	uint32_t h = cache_hash(key) & (c->tab_size - 1);
	en->hnext = c->tab[h];
	c->tab[h] = en;
	en->in_table = 1;
	c->entries++;
	return en;
}

/* ---- the API ---- */

int cache_get(struct cache *c, const char *key, int64_t now_ns, struct cache_waiter *w,
              struct cache_entry **entry)
{
	int action;
	*entry = NULL;
	pthread_mutex_lock(&c->mu);
	struct cache_entry *en = cache_find(c, key);
	int fresh = en && now_ns - en->validated_ns < c->validate_ns;
	if (en && en->state == CACHE_BYPASS && !fresh) {
		cache_remove(c, en); /* may have become cacheable: try again */
		en = NULL;
	}
	if (!en) {
		struct cache_disk_ent *de = cache_disk_find(c, key);
		if (de && (de->loading || now_ns - de->validated_ns >= c->validate_ns)) {
			/* past its validation period: fetch anew rather than load and then ask */
			if (!de->loading)
				cache_disk_remove(c, de);
			de = NULL;
		}
		en = cache_insert(c, key);
		if (!en) {
			action = CACHE_GO_DIRECT; /* out of memory: the backend still works */
			goto done;
		}
		cache_wait_on(en, w);
		if (de && cache_job(c, CACHE_JOB_LOAD, en, de, 0) == 0) {
			/* the disk thread fills it; we wait like any other reader */
			de->loading = 1;
			TAILQ_REMOVE(&c->dlru, de, lru);
			TAILQ_INSERT_HEAD(&c->dlru, de, lru);
			c->st.disk_hits++;
			action = CACHE_WAIT;
			goto done;
		}
		c->st.misses++;
		cache_entry_ref(en);
		*entry = en;
		action = CACHE_FETCH;
	} else if (en->state == CACHE_FETCHING || en->revalidating) {
		c->st.coalesced++;
		cache_wait_on(en, w);
		action = CACHE_WAIT;
	} else if (en->state == CACHE_BYPASS) {
		c->st.bypasses++;
		action = CACHE_GO_DIRECT;
	} else if (!fresh) {
		c->st.revalidations++;
		en->revalidating = 1;
		cache_wait_on(en, w);
		cache_entry_ref(en);
		*entry = en;
		action = CACHE_REVALIDATE;
	} else {
		c->st.hits++;
		c->st.hit_bytes += en->size;
		if (en->freq < 3)
			en->freq++;
		cache_entry_ref(en);
		*entry = en;
		action = CACHE_HIT;
	}
done:
	pthread_mutex_unlock(&c->mu);
	return action;
}

int cache_wait_result(struct cache_waiter *w, struct cache_entry **entry, struct err *e)
{
	struct cache_entry *en = w->entry;
	struct cache *c = en->cache;
	pthread_mutex_lock(&c->mu);
	int state = en->state;
	if (state == CACHE_READY && en->invalidated)
		state = CACHE_STALE; /* woken by a PUT or DELETE while a HEAD ran: ask again */
	if (state == CACHE_FAILED)
		*e = en->err;
	pthread_mutex_unlock(&c->mu);
	w->entry = NULL;
	if (state == CACHE_READY) {
		*entry = en; /* the waiter's reference passes to the caller */
		return state;
	}
	cache_entry_unref(en);
	return state == CACHE_FETCHING ? CACHE_STALE : state;
}

void cache_waiter_cancel(struct cache_waiter *w)
{
	struct cache_entry *en = w->entry;
	if (!en)
		return;
	pthread_mutex_lock(&en->cache->mu);
	if (w->linked) {
		TAILQ_REMOVE(&en->waiters, w, link);
		w->linked = 0;
	}
	pthread_mutex_unlock(&en->cache->mu);
	w->entry = NULL;
	cache_entry_unref(en);
}

int cache_fill_begin(struct cache_entry *en, const struct backend_info *info, int64_t now_ns)
{
	struct cache *c = en->cache;
	uint8_t *buf = NULL;
	uint64_t charge = info->size + CACHE_ENTRY_OVERHEAD + strlen(en->key);
	int ok = info->size <= c->max_object && charge <= c->budget;
	if (ok && info->size && !(buf = malloc(info->size)))
		ok = 0;
	pthread_mutex_lock(&c->mu);
	en->info = *info;
	en->size = info->size;
	if (ok && en->in_table && cache_make_room(c, charge) == 0) {
		en->buf = buf;
		en->data = buf;
		en->charged = charge;
		c->used += charge;
		buf = NULL;
		pthread_mutex_unlock(&c->mu);
		return 0;
	}
	if (en->in_table) {
		/* remembered as not cacheable until the next validation */
		en->state = CACHE_BYPASS;
		en->validated_ns = now_ns;
		en->charged = CACHE_ENTRY_OVERHEAD + strlen(en->key);
		if (cache_make_room(c, en->charged) < 0) {
			en->charged = 0;
		}
		c->used += en->charged;
		cache_enqueue(c, en, CACHE_Q_SMALL);
	} else {
		en->state = CACHE_STALE;
	}
	cache_wake(en);
	pthread_mutex_unlock(&c->mu);
	free(buf);
	return -1;
}

void cache_fill_data(struct cache_entry *en, const void *p, size_t n)
{
	/* only the fetcher writes, and nobody reads before READY (published under the lock) */
	if (!en->buf || n > en->size - en->filled)
		return;
	memcpy(en->buf + en->filled, p, n);
	en->filled += n;
}

void cache_fill_done(struct cache_entry *en, int rc, const struct err *e, int64_t now_ns)
{
	struct cache *c = en->cache;
	uint32_t crc = 0;
	if (rc == 0 && en->state == CACHE_FETCHING) {
		if (en->charged && en->filled == en->size && (en->buf || en->size == 0))
			crc = wire_crc32c(0, en->buf, en->size);
		else
			rc = -1;
	}
	pthread_mutex_lock(&c->mu);
	if (en->state == CACHE_FETCHING) {
		if (rc == 0) {
			en->crc = crc;
			en->validated_ns = now_ns;
			en->state = CACHE_READY;
			if (en->in_table) {
				cache_enqueue(c, en,
				              cache_ghost_take(c, en->key) ? CACHE_Q_MAIN
				                                           : CACHE_Q_SMALL);
				c->st.inserted_bytes += en->size;
			} else {
				en->state =
				    CACHE_STALE; /* invalidated while it was being fetched */
			}
		} else {
			en->state = CACHE_FAILED;
			if (e)
				en->err = *e;
			else
				err_set(&en->err, WIRE_E_BACKEND, "%s: the fetch ended short",
				        en->key);
			cache_remove(c, en);
		}
	}
	cache_wake(en);
	pthread_mutex_unlock(&c->mu);
	cache_entry_unref(en);
}

static int cache_same(const struct backend_info *a, const struct backend_info *b)
{
	if (a->size != b->size)
		return 0;
	if (a->etag_len || b->etag_len)
		return a->etag_len == b->etag_len && memcmp(a->etag, b->etag, a->etag_len) == 0;
	return a->mtime_ns == b->mtime_ns;
}

void cache_revalidated(struct cache_entry *en, const struct backend_info *info, int64_t now_ns)
{
	struct cache *c = en->cache;
	pthread_mutex_lock(&c->mu);
	en->revalidating = 0;
	if (info && cache_same(&en->info, info)) {
		en->validated_ns = now_ns;
	} else {
		c->st.revalidated_changed++;
		c->inval_seq++;
		en->invalidated = 1;
		cache_disk_drop_key(c, en->key);
		cache_remove(c, en);
		en->state = CACHE_STALE;
	}
	cache_wake(en);
	pthread_mutex_unlock(&c->mu);
	cache_entry_unref(en);
}

void cache_invalidate(struct cache *c, const char *key)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->mu);
	c->inval_seq++;
	cache_disk_drop_key(c, key);
	struct cache_entry *en = cache_find(c, key);
	if (en) {
		en->invalidated = 1; /* never written to disk from here on */
		/* a fetch in flight finds itself out of the table and ends STALE; a HEAD in
		 * flight wakes its waiters, who look the key up again */
		if (en->state == CACHE_BYPASS)
			en->state = CACHE_STALE;
		cache_wake(en);
		cache_remove(c, en); /* may free en */
	}
	pthread_mutex_unlock(&c->mu);
}

void cache_get_stats(struct cache *c, struct cache_stats *st)
{
	pthread_mutex_lock(&c->mu);
	*st = c->st;
	st->bytes = c->used;
	st->entries = c->entries;
	st->budget = c->budget;
	st->disk_bytes = c->disk_used;
	st->disk_entries = c->disk_entries;
	st->disk_budget = c->dirfd >= 0 ? c->disk_budget : 0;
	pthread_mutex_unlock(&c->mu);
}

void cache_free(struct cache *c)
{
	if (!c)
		return;
	if (c->thread_started) {
		pthread_mutex_lock(&c->qmu);
		c->stop = 1;
		pthread_cond_signal(&c->qcv);
		pthread_mutex_unlock(&c->qmu);
		pthread_join(c->thread, NULL);
	}
	/* the workers are gone: no waiter, no fetch, no reply refers to an entry any more */
	for (uint32_t i = 0; i < c->tab_size; i++)
		while (c->tab[i])
			cache_remove(c, c->tab[i]);
	/* jobs the thread did not get to (their entries have no waiters left) */
	for (struct cache_job *j = c->qhead, *next; j; j = next) {
		next = j->next;
		if (j->kind == CACHE_JOB_UNLINK)
			cache_disk_unlink(c, j->fileno);
		if (j->de && j->de->dead)
			cache_disk_ent_free(j->de); /* already out of the index */
		else if (j->de)
			j->de->loading = 0;
		cache_entry_unref(j->en);
		free(j);
	}
	/* the disk tier does not outlive the process: its files go too */
	if (c->dtab) {
		for (uint32_t i = 0; i < c->tab_size; i++)
			while (c->dtab[i]) {
				struct cache_disk_ent *de = c->dtab[i];
				c->dtab[i] = de->hnext;
				cache_disk_unlink(c, de->fileno);
				cache_disk_ent_free(de);
			}
		free(c->dtab);
	}
	if (c->dirfd >= 0)
		close(c->dirfd);
	free(c->tab);
	struct cache_ghost *g;
	while ((g = TAILQ_FIRST(&c->ghosts))) {
		TAILQ_REMOVE(&c->ghosts, g, q);
		free(g);
	}
	free(c->gtab);
	pthread_cond_destroy(&c->qcv);
	pthread_mutex_destroy(&c->qmu);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* ---- the disk thread ---- */

static void cache_disk_name(uint64_t fileno, char *buf, size_t cap)
{
	snprintf(buf, cap, "%016" PRIx64 ".obj", fileno);
}

static void cache_disk_unlink(struct cache *c, uint64_t fileno)
{
	char name[32];
	cache_disk_name(fileno, name, sizeof(name));
	unlinkat(c->dirfd, name, 0);
}

/* Write an evicted entry's bytes to a new file and index it. */
static void cache_disk_write(struct cache *c, struct cache_entry *en, uint64_t inval_seq)
{
	char name[32];
	pthread_mutex_lock(&c->mu);
	uint64_t fileno = c->next_fileno++;
	pthread_mutex_unlock(&c->mu);
	cache_disk_name(fileno, name, sizeof(name));
	int ok = 1;
	int fd = openat(c->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		ok = 0;
	for (uint64_t done = 0; ok && done < en->size;) {
		ssize_t n = write(fd, en->data + done, en->size - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			ok = 0;
		else
			done += (uint64_t)n;
	}
	if (fd >= 0 && close(fd) < 0)
		ok = 0;
	struct cache_disk_ent *de = ok ? calloc(1, sizeof(*de)) : NULL;
	if (de && !(de->key = strdup(en->key))) {
		free(de);
		de = NULL;
	}
	pthread_mutex_lock(&c->mu);
	if (!de) {
		c->st.disk_errors++;
	} else if (en->invalidated || inval_seq != c->inval_seq ||
	           (cache_find(c, en->key) && cache_find(c, en->key) != en)) {
		/* changed while we wrote it, possibly after it left the table (an invalidation
		 * since the job was queued), or a newer copy is in memory: not indexed */
		cache_disk_ent_free(de);
		de = NULL;
	} else {
		cache_disk_drop_key(c, en->key);
		while (c->disk_used + en->size > c->disk_budget) {
			struct cache_disk_ent *v = TAILQ_LAST(&c->dlru, cache_disk_lru);
			while (v && v->loading)
				v = TAILQ_PREV(v, cache_disk_lru, lru);
			if (!v)
				break;
			c->st.disk_evictions++;
			cache_disk_remove(c, v);
		}
		if (c->disk_used + en->size > c->disk_budget) {
			cache_disk_ent_free(de);
			de = NULL;
		} else {
			de->fileno = fileno;
			de->size = en->size;
			de->info = en->info;
			de->crc = en->crc;
			de->validated_ns = en->validated_ns;
			uint32_t h = cache_hash(de->key) & (c->tab_size - 1);
			de->hnext = c->dtab[h];
			c->dtab[h] = de;
			TAILQ_INSERT_HEAD(&c->dlru, de, lru);
			c->disk_used += de->size;
			c->disk_entries++;
			c->st.disk_writes++;
		}
	}
	pthread_mutex_unlock(&c->mu);
	if (!de)
		unlinkat(c->dirfd, name, 0);
}

/* Fill en from de's file. A file that cannot be read back whole, or whose bytes do not
 * match their CRC32C, is dropped and the waiters look the key up again (a backend read). */
static void cache_disk_load(struct cache *c, struct cache_entry *en, struct cache_disk_ent *de)
{
	char name[32];
	cache_disk_name(de->fileno, name, sizeof(name));
	int fd = openat(c->dirfd, name, O_RDONLY | O_CLOEXEC);
	int ok = fd >= 0;
	if (ok && cache_fill_begin(en, &de->info, de->validated_ns) < 0) {
		/* no room in memory: the waiters were told to read directly */
		close(fd);
		pthread_mutex_lock(&c->mu);
		de->loading = 0;
		if (de->dead) {
			cache_disk_unlink(c, de->fileno);
			cache_disk_ent_free(de);
		}
		pthread_mutex_unlock(&c->mu);
		cache_fill_done(en, -WIRE_E_INTERNAL, NULL, de->validated_ns);
		return;
	}
	for (uint64_t done = 0; ok && done < de->size;) {
		ssize_t n = pread(fd, en->buf + done, de->size - done, (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			ok = 0;
		else
			done += (uint64_t)n;
	}
	if (fd >= 0)
		close(fd);
	if (ok) {
		en->filled = de->size;
		ok = wire_crc32c(0, en->buf, de->size) == de->crc;
	}
	int64_t validated = de->validated_ns;
	pthread_mutex_lock(&c->mu);
	de->loading = 0;
	if (de->dead) {
		cache_disk_unlink(c, de->fileno);
		cache_disk_ent_free(de);
	} else if (!ok) {
		c->st.disk_errors++;
		cache_disk_remove(c, de);
	}
	if (!ok && en->state == CACHE_FETCHING) {
		en->state = CACHE_STALE;
		cache_remove(c, en);
		cache_wake(en);
	}
	pthread_mutex_unlock(&c->mu);
	/* the entry keeps the disk copy's validation time, not now */
	cache_fill_done(en, ok ? 0 : -WIRE_E_IO, NULL, validated);
}

static void *cache_disk_main(void *arg)
{
	struct cache *c = arg;
	for (;;) {
		pthread_mutex_lock(&c->qmu);
		while (!c->qhead && !c->stop)
			pthread_cond_wait(&c->qcv, &c->qmu);
		struct cache_job *j = c->qhead;
		if (j) {
			c->qhead = j->next;
			if (!c->qhead)
				c->qtail = NULL;
		}
		int stop = c->stop;
		pthread_mutex_unlock(&c->qmu);
		if (!j) {
			if (stop)
				return NULL;
			continue;
		}
		switch (j->kind) {
		case CACHE_JOB_WRITE: cache_disk_write(c, j->en, j->inval_seq); break;
		case CACHE_JOB_LOAD:
			cache_entry_ref(j->en); /* cache_fill_done drops one: the fetcher's */
			cache_disk_load(c, j->en, j->de);
			break;
		case CACHE_JOB_UNLINK: cache_disk_unlink(c, j->fileno); break;
		}
		cache_entry_unref(j->en);
		free(j);
	}
}

int cache_disk_open(struct cache *c, const char *dir, uint64_t budget, struct err *e)
{
	int result = 0;
	int fd = -1;
	DIR *d = NULL;
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		result = err_set(e, WIRE_E_INVALID, "--cache-dir %s: %s", dir, strerror(errno));
		goto done;
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int dfd = fd >= 0 ? dup(fd) : -1;
	if (dfd < 0 || !(d = fdopendir(dfd))) {
		result = err_set(e, WIRE_E_INVALID, "--cache-dir %s: %s", dir, strerror(errno));
		if (dfd >= 0)
			close(dfd);
		goto done;
	}
	/* files of an earlier run are not trusted (no index survives): remove them */
	struct dirent *ent;
	while ((ent = readdir(d))) {
		size_t n = strlen(ent->d_name);
		if (n == 20 && strcmp(ent->d_name + 16, ".obj") == 0)
			unlinkat(fd, ent->d_name, 0);
	}
	c->dtab = calloc(c->tab_size, sizeof(*c->dtab));
	if (!c->dtab) {
		result = err_set(e, WIRE_E_INTERNAL, "--cache-dir %s: out of memory", dir);
		goto done;
	}
	c->dirfd = fd;
	c->disk_budget = budget;
	/* the thread takes no signals: they are for the main loop */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	int rc = pthread_create(&c->thread, NULL, cache_disk_main, c);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		result = err_set(e, WIRE_E_INTERNAL, "--cache-dir %s: cannot start its thread: %s",
		                 dir, strerror(rc));
		goto done; /* cache_free closes dirfd and frees dtab */
	}
	c->thread_started = 1;
	fd = -1;
done:
	if (d)
		closedir(d);
	if (fd >= 0 && c->dirfd != fd)
		close(fd);
	return result;
}
