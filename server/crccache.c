/* crccache.c: the whole-file CRC32C table (see crccache.h). */
#include "crccache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CRCCACHE_WAYS 4

struct crccache_entry {
	struct crccache_key key;
	uint32_t crc;
	int used;
	uint64_t last; /* tick of the last hit or store: the set's LRU order */
};

struct crccache {
	pthread_mutex_t mu;
	size_t nsets; /* a power of two */
	uint64_t tick;
	uint64_t hits, misses, stores;
	struct crccache_entry *v; /* nsets * CRCCACHE_WAYS */
};

struct crccache *crccache_new(size_t entries)
{
	if (entries == 0)
		return NULL;
	size_t nsets = 1;
	while (nsets * CRCCACHE_WAYS < entries && nsets < ((size_t)1 << 40))
		nsets <<= 1;
	struct crccache *cc = calloc(1, sizeof(*cc));
	if (!cc)
		return NULL;
	cc->v = calloc(nsets * CRCCACHE_WAYS, sizeof(*cc->v));
	if (!cc->v) {
		free(cc);
		return NULL;
	}
	cc->nsets = nsets;
	pthread_mutex_init(&cc->mu, NULL);
	return cc;
}

void crccache_free(struct crccache *cc)
{
	if (!cc)
		return;
	pthread_mutex_destroy(&cc->mu);
	free(cc->v);
	free(cc);
}

void crccache_key_of(const struct stat *st, struct crccache_key *k)
{
	memset(k, 0, sizeof(*k)); /* compared with memcmp: no stray padding bytes */
	k->dev = (uint64_t)st->st_dev;
	k->ino = (uint64_t)st->st_ino;
	k->size = (uint64_t)st->st_size;
	k->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
	k->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

static struct crccache_entry *crccache_set(struct crccache *cc, const struct crccache_key *k)
{
	/* splitmix64 over the fields that vary most between files */
	uint64_t h = k->ino * 0x9e3779b97f4a7c15ull ^ k->dev ^ (uint64_t)k->mtime_ns;
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebull;
	h ^= h >> 31;
	return &cc->v[(h & (cc->nsets - 1)) * CRCCACHE_WAYS];
}

int crccache_get(struct crccache *cc, const struct crccache_key *k, uint32_t *crc)
{
	int found = 0;
	if (!cc)
		return 0;
	pthread_mutex_lock(&cc->mu);
	struct crccache_entry *set = crccache_set(cc, k);
	for (int i = 0; i < CRCCACHE_WAYS; i++) {
		if (set[i].used && memcmp(&set[i].key, k, sizeof(*k)) == 0) {
			set[i].last = ++cc->tick;
			*crc = set[i].crc;
			found = 1;
			break;
		}
	}
	if (found)
		cc->hits++;
	else
		cc->misses++;
	pthread_mutex_unlock(&cc->mu);
	return found;
}

void crccache_put(struct crccache *cc, const struct crccache_key *k, uint32_t crc,
                  int64_t now_ns)
{
	if (!cc || now_ns - k->mtime_ns < CRCCACHE_SETTLE_NS ||
	    now_ns - k->ctime_ns < CRCCACHE_SETTLE_NS)
		return;
	pthread_mutex_lock(&cc->mu);
	struct crccache_entry *set = crccache_set(cc, k);
	struct crccache_entry *slot = &set[0];
	for (int i = 0; i < CRCCACHE_WAYS; i++) {
		if (set[i].used && memcmp(&set[i].key, k, sizeof(*k)) == 0) {
			slot = &set[i];
			break;
		}
		if (!set[i].used || set[i].last < slot->last)
			slot = &set[i];
		if (!set[i].used)
			break;
	}
	slot->key = *k;
	slot->crc = crc;
	slot->used = 1;
	slot->last = ++cc->tick;
	cc->stores++;
	pthread_mutex_unlock(&cc->mu);
}

void crccache_counts(struct crccache *cc, uint64_t *hits, uint64_t *misses, uint64_t *stores)
{
	*hits = *misses = *stores = 0;
	if (!cc)
		return;
	pthread_mutex_lock(&cc->mu);
	*hits = cc->hits;
	*misses = cc->misses;
	*stores = cc->stores;
	pthread_mutex_unlock(&cc->mu);
}
