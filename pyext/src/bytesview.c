/* bytesview.c: BytesView, the read-only, zero-copy owner of one object's bytes, and the
 * buffers those bytes live in.
 *
 * The client's allocator callback places each object's bytes in an aligned buffer (without
 * the GIL); once the GIL is back, a BytesView adopts the buffer. It exports the buffer
 * read-only and counts its exports; since every export (memoryview, numpy array) holds a
 * reference to the BytesView, the buffer is released in tp_dealloc only, never while viewed.
 *
 * Buffers of large objects come from a process-wide pool. Receiving into fresh memory costs a
 * page fault and a zeroed page per 4 KiB (2 MiB with THP), and on a VM with free page
 * reporting, memory freed a few seconds earlier has gone back to the host and faults in from
 * there (perf: clear_page at 25-55% of a get_many loop's samples). A training loop drops each
 * batch and fetches the next one of the same sizes, so a released buffer stays mapped, its
 * pages resident, and goes to the next object of its size class:
 * - classes: 16 per doubling, so a buffer is at most 1/16 larger than the object in it (the
 *   budget is 1.1 x the bytes held); an allocation takes the last released buffer of its
 *   own class (the warmest), or maps a new one.
 * - bounded: idle bytes stay under S3DLIO_BUFFER_POOL (default min(2 GiB, RAM/8); 0 turns the
 *   pool off), oldest unmapped first; a miss first unmaps at least as many idle bytes (other
 *   classes, oldest first) as it maps, so live plus idle never exceeds the most the process
 *   held at once; and a buffer idle for S3DLIO_BUFFER_POOL_DECAY_MS (10 s, jemalloc's
 *   default decay) is unmapped at the next allocation or release: no thread.
 * - pool buffers are mmap'd (page aligned; 2 MiB aligned and THP-advised from 2 MiB) and
 *   found again on release in a table of the pool's mappings. Objects under 64 KiB are
 *   carved from 2 MiB slabs that are pool buffers themselves (see "slabs" below).
 * - fork: the child keeps its live buffers and unmaps its copies of the idle ones.
 * Under AddressSanitizer an idle buffer, and the slack past an object's end, are poisoned. */
#include "core.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define BV_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BV_ASAN 1
#endif
#endif
#ifdef BV_ASAN
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#endif

/* Small objects get cache-line alignment; large ones page alignment (O_DIRECT-friendly,
 * and glibc mmaps them anyway). Very large ones are aligned to a transparent huge page and
 * advised so: the kernel then faults the receive buffer in 2 MiB at a time instead of 4 KiB,
 * which is most of the cost of receiving into fresh memory. */
#define BV_ALIGN_SMALL 64
#define BV_ALIGN_PAGE 4096
#define BV_PAGE_FROM (64 * 1024)
#define BV_ALIGN_HUGE (2 * 1024 * 1024)
#define BV_HUGE_FROM (4 * 1024 * 1024)
#define BV_SLAB_SIZE BV_ALIGN_HUGE /* small objects are carved from these (see "slabs") */

/* ---- the pool of large buffers ---- */

/* Objects from 64 KiB up are pooled: from there a page-granular capacity stays within 1/16
 * of the size. Measured on 2 vCPUs, rounds of get_many (256 MiB of 64 KiB..64 MiB objects,
 * results dropped): 10-45% less client CPU than malloc back to back (the most for 64-256 KiB,
 * which glibc's heap trims and faults in again), and 1.3-2.5x the throughput with rounds
 * 3 s apart (the most for 16-64 MiB). */
#define POOL_FROM_LOG2 16
#define POOL_MAX_LOG2 46
#define POOL_FROM ((size_t)1 << POOL_FROM_LOG2)
#define POOL_MAX ((uint64_t)1 << POOL_MAX_LOG2)
#define POOL_STEPS_LOG2 4 /* 16 classes per doubling */
#define POOL_NCLASS (((POOL_MAX_LOG2 - POOL_FROM_LOG2) << POOL_STEPS_LOG2) + 1)
#define POOL_LIMIT_MAX ((uint64_t)2 << 30)
#define POOL_DECAY_MS 10000
#define POOL_NEVER UINT64_MAX

typedef struct pool_buf {
	char *data; /* the whole mapping, cap bytes */
	size_t cap;
	size_t cls;
	int idle;
	uint64_t idle_since;            /* CLOCK_MONOTONIC ns */
	struct pool_buf *hnext;         /* table chain; the unmap list once evicted */
	struct pool_buf *older, *newer; /* idle list, all classes, by release time */
	struct pool_buf *cnext, *cprev; /* idle list of its class, newest first */
	/* a slab (see "Slabs"): small objects carved from it, and how many are live */
	int slab;
	size_t used;
	size_t refs; /* pieces alive, plus one while it is the slab being carved */
} pool_buf;

/* Process-wide by nature: buffers outlive clients and modules, and are released from
 * tp_dealloc and from allocator callbacks that have no other context to reach. */
static struct pool {
	pthread_once_t once;
	int on;            /* set once, by pool_init */
	size_t limit;      /* most idle bytes */
	uint64_t decay_ns; /* idle this long: unmapped */
	size_t page;
	char env_error[200];     /* a bad S3DLIO_BUFFER_POOL*: import raises ValueError */
	_Atomic uint64_t expiry; /* when the oldest idle buffer decays; read without mu */

	pthread_mutex_t mu; /* guards everything below */
	pool_buf **table;   /* every buffer mapped (live or idle), by address */
	size_t table_slots;
	unsigned table_shift; /* 64 - log2(slots) */
	size_t mapped;
	pool_buf *cls[POOL_NCLASS];
	pool_buf *oldest, *newest;
	size_t idle_bytes;
	pool_buf *slab; /* the slab small objects are carved from now */
} pool = {
    .once = PTHREAD_ONCE_INIT,
    .expiry = POOL_NEVER,
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

static uint64_t pool_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The class of size (POOL_FROM..POOL_MAX) and its capacity: size rounded up to a sixteenth
 * of its power of two, then to the page. */
static size_t pool_class(size_t size, size_t *cap)
{
	unsigned e = 63 - (unsigned)__builtin_clzll((unsigned long long)size);
	size_t step = (size_t)1 << (e - POOL_STEPS_LOG2);
	size_t c = (size + step - 1) & ~(step - 1);

	*cap = (c + pool.page - 1) & ~(pool.page - 1);
	/* c is 2^e * (16 + j) / 16 with j in 0..16 (16 is class 0 of the next power) */
	return ((size_t)(e - POOL_FROM_LOG2) << POOL_STEPS_LOG2) + (c >> (e - POOL_STEPS_LOG2)) -
	       ((size_t)1 << POOL_STEPS_LOG2);
}

static size_t pool_slot(const void *p)
{
	/* Fibonacci hashing of the page number: the product's top bits */
	return (size_t)((((uint64_t)(uintptr_t)p >> 12) * 0x9E3779B97F4A7C15ull) >>
	                pool.table_shift);
}

static pool_buf *pool_table_find(const void *p)
{
	pool_buf *b;

	for (b = pool.table[pool_slot(p)]; b != NULL; b = b->hnext)
		if (b->data == p)
			return b;
	return NULL;
}

/* Grows the table at one buffer per slot; if that fails, chains just get longer. */
static void pool_table_add(pool_buf *b)
{
	size_t i, n = pool.table_slots;
	pool_buf **old = pool.table, **grown;

	if (pool.mapped >= n && (grown = calloc(2 * n, sizeof(*grown))) != NULL) {
		pool.table = grown;
		pool.table_slots = 2 * n;
		pool.table_shift--;
		for (i = 0; i < n; i++) {
			while (old[i] != NULL) {
				pool_buf *m = old[i];
				size_t s = pool_slot(m->data);

				old[i] = m->hnext;
				m->hnext = grown[s];
				grown[s] = m;
			}
		}
		free(old);
	}
	i = pool_slot(b->data);
	b->hnext = pool.table[i];
	pool.table[i] = b;
	pool.mapped++;
}

static void pool_table_del(pool_buf *b)
{
	pool_buf **pp = &pool.table[pool_slot(b->data)];

	while (*pp != b)
		pp = &(*pp)->hnext;
	*pp = b->hnext;
	b->hnext = NULL;
	pool.mapped--;
}

static void pool_idle_add(pool_buf *b, uint64_t now)
{
	b->idle = 1;
	b->idle_since = now;
	b->newer = NULL;
	b->older = pool.newest;
	if (pool.newest != NULL)
		pool.newest->newer = b;
	else
		pool.oldest = b;
	pool.newest = b;
	b->cprev = NULL;
	b->cnext = pool.cls[b->cls];
	if (b->cnext != NULL)
		b->cnext->cprev = b;
	pool.cls[b->cls] = b;
	pool.idle_bytes += b->cap;
}

static void pool_idle_del(pool_buf *b)
{
	if (b->older != NULL)
		b->older->newer = b->newer;
	else
		pool.oldest = b->newer;
	if (b->newer != NULL)
		b->newer->older = b->older;
	else
		pool.newest = b->older;
	if (b->cprev != NULL)
		b->cprev->cnext = b->cnext;
	else
		pool.cls[b->cls] = b->cnext;
	if (b->cnext != NULL)
		b->cnext->cprev = b->cprev;
	b->idle = 0;
	pool.idle_bytes -= b->cap;
}

/* Takes the idle buffer b out of the pool onto *unmap (unmapped after mu is released). */
static void pool_evict(pool_buf *b, pool_buf **unmap)
{
	pool_idle_del(b);
	pool_table_del(b);
	b->hnext = *unmap;
	*unmap = b;
}

static void pool_expire(uint64_t now, pool_buf **unmap)
{
	while (pool.oldest != NULL && now - pool.oldest->idle_since >= pool.decay_ns)
		pool_evict(pool.oldest, unmap);
	atomic_store_explicit(&pool.expiry,
	                      pool.oldest != NULL ? pool.oldest->idle_since + pool.decay_ns
	                                          : POOL_NEVER,
	                      memory_order_relaxed);
}

/* Outside mu: munmap of a large buffer takes milliseconds. */
static void pool_unmap(pool_buf *unmap)
{
	while (unmap != NULL) {
		pool_buf *b = unmap;

		unmap = b->hnext;
		ASAN_UNPOISON_MEMORY_REGION(b->data, b->cap);
		/* unmapping part of a merged mapping can fail at vm.max_map_count: then at
		 * least give the pages back */
		if (munmap(b->data, b->cap) != 0)
			(void)madvise(b->data, b->cap, MADV_DONTNEED);
		free(b);
	}
}

/* A new buffer of cap bytes, huge-page aligned and advised from 2 MiB, registered. */
static pool_buf *pool_map(size_t cap, size_t cls)
{
	/* from 2 MiB: huge-page aligned, which is also what finds a slab from a piece */
	size_t align = cap >= BV_ALIGN_HUGE ? BV_ALIGN_HUGE : pool.page;
	size_t len = cap + align - pool.page;
	pool_buf *b = malloc(sizeof(*b));
	char *p, *data;

	if (b == NULL)
		return NULL;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		free(b);
		return NULL;
	}
	/* keep the aligned cap bytes of the mapping, unmap what is around them */
	data = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
	if (data > p)
		munmap(p, (size_t)(data - p));
	if (data + cap < p + len)
		munmap(data + cap, (size_t)(p + len - (data + cap)));
#ifdef MADV_HUGEPAGE
	if (align == BV_ALIGN_HUGE) /* advice only: failure is harmless */
		(void)madvise(data, cap & ~((size_t)BV_ALIGN_HUGE - 1), MADV_HUGEPAGE);
#endif
	memset(b, 0, sizeof(*b));
	b->data = data;
	b->cap = cap;
	b->cls = cls;
	pthread_mutex_lock(&pool.mu);
	pool_table_add(b);
	pthread_mutex_unlock(&pool.mu);
	return b;
}

static void *pool_get(size_t size)
{
	pool_buf *b, *unmap = NULL;
	size_t cap, cls = pool_class(size, &cap), freed = 0;

	pthread_mutex_lock(&pool.mu);
	b = pool.cls[cls];
	if (b != NULL) {
		pool_idle_del(b);
	} else {
		/* a miss maps cap bytes: unmap as many idle ones first, so that live plus idle
		 * does not grow past the most the process held at once */
		while (freed < cap && pool.oldest != NULL) {
			freed += pool.oldest->cap;
			pool_evict(pool.oldest, &unmap);
		}
	}
	pool_expire(pool_now(), &unmap);
	pthread_mutex_unlock(&pool.mu);
	pool_unmap(unmap);
	if (b == NULL && (b = pool_map(cap, cls)) == NULL)
		return NULL;
	ASAN_UNPOISON_MEMORY_REGION(b->data, size);
	ASAN_POISON_MEMORY_REGION(b->data + size, b->cap - size);
	return b->data;
}

/* The live buffer b goes idle (or is unmapped: onto *unmap). Called with mu held. */
static void pool_release_locked(pool_buf *b, pool_buf **unmap)
{
	b->slab = 0;
	if (b->cap > pool.limit) {
		pool_table_del(b);
		b->hnext = *unmap;
		*unmap = b;
	} else {
		ASAN_POISON_MEMORY_REGION(b->data, b->cap);
		pool_idle_add(b, pool_now());
		while (pool.idle_bytes > pool.limit)
			pool_evict(pool.oldest, unmap);
	}
}

/* Returns 0 if ptr is not a pool buffer (nor a piece of a slab). */
static int pool_put(void *ptr)
{
	pool_buf *b, *unmap = NULL;

	pthread_mutex_lock(&pool.mu);
	/* a piece of a slab: the slab is the 2 MiB-aligned mapping around it */
	b = pool_table_find((void *)((uintptr_t)ptr & ~(uintptr_t)(BV_SLAB_SIZE - 1)));
	if (b != NULL && b->slab && !b->idle) {
		if (--b->refs == 0)
			pool_release_locked(b, &unmap);
		goto done;
	}
	b = pool_table_find(ptr);
	if (b == NULL) {
		pthread_mutex_unlock(&pool.mu);
		return 0;
	}
	if (b->idle) {
		/* handing it out twice would put two objects' bytes in one buffer */
		fprintf(stderr, "s3dlio: buffer %p released twice\n", ptr);
		abort();
	}
	pool_release_locked(b, &unmap);
done:
	pool_expire(pool_now(), &unmap);
	pthread_mutex_unlock(&pool.mu);
	pool_unmap(unmap);
	return 1;
}

/* ---- slabs: small objects ----
 *
 * Objects under 64 KiB would each be a malloc in glibc's heap, which trims freed pages back
 * to the system as soon as a batch is dropped, and faults them in again (zeroed) for the
 * next: perf put page faults and clearing at 35-40% of a 16 KiB get_many loop's samples.
 * So they are carved, 64-byte aligned, from slabs: pool buffers of 2 MiB, aligned to 2 MiB
 * so a piece finds its slab by masking its address. A slab counts its live pieces (and one
 * while it is the current slab) and goes back to the pool, as one buffer, when the last piece
 * is released. The cost: one object kept alive keeps its slab (2 MiB) resident. */
static void *slab_carve(size_t size)
{
	pool_buf *b, *unmap = NULL;
	size_t need = (size + BV_ALIGN_SMALL - 1) & ~(size_t)(BV_ALIGN_SMALL - 1);
	char *piece = NULL;

	pthread_mutex_lock(&pool.mu);
	for (;;) {
		b = pool.slab;
		if (b != NULL && b->used + need <= b->cap) {
			piece = b->data + b->used;
			b->used += need;
			b->refs++;
			break;
		}
		/* a new slab: drop the current one's carving reference first */
		pool.slab = NULL;
		if (b != NULL && --b->refs == 0)
			pool_release_locked(b, &unmap);
		pthread_mutex_unlock(&pool.mu);
		pool_unmap(unmap);
		unmap = NULL;
		char *data = pool_get(BV_SLAB_SIZE);
		pthread_mutex_lock(&pool.mu);
		if (data == NULL)
			break;
		b = pool_table_find(data);
		b->slab = 1;
		b->used = 0;
		b->refs = 1;
		ASAN_POISON_MEMORY_REGION(b->data, b->cap);
		if (pool.slab != NULL && --pool.slab->refs == 0) /* another thread made one too */
			pool_release_locked(pool.slab, &unmap);
		pool.slab = b;
	}
	pthread_mutex_unlock(&pool.mu);
	pool_unmap(unmap);
	if (piece != NULL)
		ASAN_UNPOISON_MEMORY_REGION(piece, size);
	return piece;
}

/* Decay while only small objects come and go: one relaxed load unless a buffer is due. */
static void pool_tick(void)
{
	pool_buf *unmap = NULL;
	uint64_t due = atomic_load_explicit(&pool.expiry, memory_order_relaxed);

	if (due == POOL_NEVER || pool_now() < due)
		return;
	pthread_mutex_lock(&pool.mu);
	pool_expire(pool_now(), &unmap);
	pthread_mutex_unlock(&pool.mu);
	pool_unmap(unmap);
}

/* fork() with mu held keeps the pool's lists whole in the child, which then takes a fresh
 * mutex (the parent's thread that held it does not exist there) and unmaps its copies of the
 * idle buffers: reusing them would copy each page on write. Live ones stay registered, so
 * the child's BytesViews still release into its own pool. */
static void pool_fork_prepare(void)
{
	pthread_mutex_lock(&pool.mu);
}

static void pool_fork_parent(void)
{
	pthread_mutex_unlock(&pool.mu);
}

static void pool_fork_child(void)
{
	pool_buf *unmap = NULL;

	pthread_mutex_init(&pool.mu, NULL);
	while (pool.oldest != NULL)
		pool_evict(pool.oldest, &unmap);
	pool_expire(pool_now(), &unmap);
	pool_unmap(unmap);
}

/* "2G", "512MiB", "1.5g", "1048576": bytes, K/M/G/T being powers of 1024. */
static int pool_parse_size(const char *s, uint64_t *out)
{
	static const char units[] = "KMGT";
	const char *u;
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (end == s || errno != 0 || !isfinite(v) || !(v >= 0))
		return -1;
	while (*end == ' ')
		end++;
	if (*end != '\0' && (u = strchr(units, toupper((unsigned char)*end))) != NULL) {
		v *= (double)((uint64_t)1 << (10 * (u - units + 1)));
		end++;
		if (*end == 'i' || *end == 'I')
			end++;
	}
	if (*end == 'b' || *end == 'B')
		end++;
	if (*end != '\0')
		return -1;
	*out = v >= 0x1p62 ? (uint64_t)1 << 62 : (uint64_t)v;
	return 0;
}

static void pool_init(void)
{
	const char *v;
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
	uint64_t limit = POOL_LIMIT_MAX, decay_ms = POOL_DECAY_MS;
	char *end;

	pool.page = page >= BV_ALIGN_PAGE ? (size_t)page : BV_ALIGN_PAGE;
	if (pages > 0 && (uint64_t)pages * pool.page / 8 < limit)
		limit = (uint64_t)pages * pool.page / 8;
	v = getenv("S3DLIO_BUFFER_POOL");
	if (v != NULL && *v != '\0' && pool_parse_size(v, &limit) < 0) {
		snprintf(pool.env_error, sizeof(pool.env_error),
		         "S3DLIO_BUFFER_POOL=%.60s: not a size (bytes, or with a K, M or G suffix; "
		         "0 turns the buffer pool off)",
		         v);
		return;
	}
	v = getenv("S3DLIO_BUFFER_POOL_DECAY_MS");
	if (v != NULL && *v != '\0') {
		errno = 0;
		decay_ms = strtoull(v, &end, 10);
		if (*end != '\0' || errno != 0 || !isdigit((unsigned char)v[0]) ||
		    decay_ms > 1000000000u) {
			snprintf(pool.env_error, sizeof(pool.env_error),
			         "S3DLIO_BUFFER_POOL_DECAY_MS=%.60s: not a number of milliseconds "
			         "(0 to 1000000000)",
			         v);
			return;
		}
	}
	if (limit == 0)
		return;
	pool.table = calloc(64, sizeof(*pool.table));
	if (pool.table == NULL)
		return; /* no pool: plain allocations */
	pool.table_slots = 64;
	pool.table_shift = 64 - 6;
	pool.limit = limit > SIZE_MAX ? SIZE_MAX : (size_t)limit;
	pool.decay_ns = decay_ms * 1000000u;
	if (pthread_atfork(pool_fork_prepare, pool_fork_parent, pool_fork_child) != 0) {
		free(pool.table);
		pool.table = NULL;
		return;
	}
	pool.on = 1;
}

static int pool_ready(void)
{
	pthread_once(&pool.once, pool_init);
	return pool.on;
}

/* ---- BytesView ---- */

typedef struct bytesview_object {
	PyObject ob_base; /* PyObject_HEAD */
	char *data;
	Py_ssize_t size;
	Py_ssize_t exports; /* buffers handed out and not yet released */
} bytesview_object;

void *bytesview_alloc_raw(uint64_t size)
{
	void *ptr = NULL;
	size_t align = BV_ALIGN_SMALL;

	if (size > (uint64_t)PY_SSIZE_T_MAX - BV_ALIGN_HUGE)
		return NULL;
	if (pool_ready()) {
		if (size > 0 && size < POOL_FROM) {
			if ((ptr = slab_carve((size_t)size)) != NULL)
				return ptr;
		} else if (size < POOL_FROM || size > POOL_MAX) {
			pool_tick();
		} else if ((ptr = pool_get((size_t)size)) != NULL) {
			return ptr;
		}
		/* else out of mappings (vm.max_map_count): malloc may still have room */
	}
	if (size >= BV_HUGE_FROM)
		align = BV_ALIGN_HUGE;
	else if (size >= BV_PAGE_FROM)
		align = BV_ALIGN_PAGE;
	if (posix_memalign(&ptr, align, size == 0 ? 1 : (size_t)size) != 0)
		return NULL;
#ifdef MADV_HUGEPAGE
	if (align == BV_ALIGN_HUGE) {
		size_t whole = (size_t)size & ~((size_t)BV_ALIGN_HUGE - 1);
		(void)madvise(ptr, whole, MADV_HUGEPAGE); /* advice only: failure is harmless */
	}
#endif
	return ptr;
}

void bytesview_free_raw(void *ptr)
{
	/* pool buffers and slab pieces are ours (pool_put finds them); the rest is malloc's */
	if (ptr != NULL && pool.on && pool_put(ptr))
		return;
	free(ptr);
}

PyObject *bytesview_adopt(core_state *st, void *ptr, Py_ssize_t size)
{
	bytesview_object *self;

	if (ptr == NULL && size == 0)
		ptr = bytesview_alloc_raw(0);
	if (ptr == NULL)
		return PyErr_NoMemory();
	self = PyObject_New(bytesview_object, st->bytesview_type);
	if (self == NULL) {
		bytesview_free_raw(ptr);
		return NULL;
	}
	self->data = ptr;
	self->size = size;
	self->exports = 0;
	return (PyObject *)self;
}

/* Only the client makes BytesViews (instances wrap bytes that arrived from the server). */
static PyObject *bytesview_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	(void)args;
	(void)kwds;
	PyErr_Format(PyExc_TypeError,
	             "cannot create '%.100s' instances: they come from s3dlio.get()",
	             type->tp_name);
	return NULL;
}

PyObject *bytesview_from_buffer(PyObject *module, PyObject *arg)
{
	Py_buffer in;
	void *ptr;
	PyObject *res;

	if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
		return NULL;
	ptr = bytesview_alloc_raw((uint64_t)in.len);
	if (ptr == NULL) {
		PyBuffer_Release(&in);
		return PyErr_NoMemory();
	}
	if (in.len > 0)
		memcpy(ptr, in.buf, (size_t)in.len);
	res = bytesview_adopt((core_state *)PyModule_GetState(module), ptr, in.len);
	PyBuffer_Release(&in);
	return res;
}

static void bytesview_dealloc(bytesview_object *self)
{
	PyTypeObject *tp = Py_TYPE(self);

	/* Each export holds a reference to self, so exports is 0 here. Should a broken consumer
	 * drop its reference without releasing its view, the bytes may still be read: leak them
	 * rather than let the pool hand them to the next object. */
	if (self->exports == 0)
		bytesview_free_raw(self->data);
	self->data = NULL;
	tp->tp_free((PyObject *)self);
	Py_DECREF(tp);
}

static int bytesview_getbuffer(bytesview_object *self, Py_buffer *view, int flags)
{
	if (flags & PyBUF_WRITABLE) {
		PyErr_SetString(PyExc_BufferError,
		                "BytesView is read-only (copy it, e.g. bytearray(view), to write)");
		view->obj = NULL;
		return -1;
	}
	if (PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size, 1, flags) < 0)
		return -1;
	self->exports++;
	return 0;
}

static void bytesview_releasebuffer(bytesview_object *self, Py_buffer *view)
{
	(void)view;
	self->exports--;
}

static Py_ssize_t bytesview_len(bytesview_object *self)
{
	return self->size;
}

static PyObject *bytesview_repr(bytesview_object *self)
{
	return PyUnicode_FromFormat("<BytesView len=%zd>", self->size);
}

static PyObject *bytesview_richcompare(PyObject *self, PyObject *other, int op)
{
	bytesview_object *bv = (bytesview_object *)self;
	Py_buffer ob;
	int eq;

	if (op != Py_EQ && op != Py_NE)
		Py_RETURN_NOTIMPLEMENTED;
	if (PyObject_GetBuffer(other, &ob, PyBUF_SIMPLE) < 0) {
		/* not a contiguous buffer: let the other side (e.g. memoryview) decide */
		PyErr_Clear();
		Py_RETURN_NOTIMPLEMENTED;
	}
	eq = ob.len == bv->size &&
	     (bv->size == 0 || memcmp(ob.buf, bv->data, (size_t)bv->size) == 0);
	PyBuffer_Release(&ob);
	if (op == Py_NE)
		eq = !eq;
	return PyBool_FromLong(eq);
}

/* iteration and `x in view` (the sequence protocol): the byte at i as an int */
static PyObject *bytesview_item(bytesview_object *self, Py_ssize_t i)
{
	if (i < 0 || i >= self->size) {
		PyErr_SetString(PyExc_IndexError, "BytesView index out of range");
		return NULL;
	}
	return PyLong_FromLong((unsigned char)self->data[i]);
}

/* view[i] is an int and view[a:b:c] is bytes, as for bytes (the copy is the slice's only);
 * for a zero-copy slice take view.memoryview()[a:b]. */
static PyObject *bytesview_subscript(bytesview_object *self, PyObject *key)
{
	if (PyIndex_Check(key)) {
		Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);

		if (i == -1 && PyErr_Occurred())
			return NULL;
		if (i < 0)
			i += self->size;
		return bytesview_item(self, i);
	}
	if (PySlice_Check(key)) {
		Py_ssize_t start, stop, step, n, i, j;
		PyObject *out;
		char *dst;

		if (PySlice_Unpack(key, &start, &stop, &step) < 0)
			return NULL;
		n = PySlice_AdjustIndices(self->size, &start, &stop, step);
		if (step == 1)
			return PyBytes_FromStringAndSize(self->data + start, n);
		out = PyBytes_FromStringAndSize(NULL, n);
		if (out == NULL)
			return NULL;
		dst = PyBytes_AS_STRING(out);
		for (i = 0, j = start; i < n; i++, j += step)
			dst[i] = self->data[j];
		return out;
	}
	PyErr_Format(PyExc_TypeError, "BytesView indices must be integers or slices, not %.100s",
	             Py_TYPE(key)->tp_name);
	return NULL;
}

static PyObject *bytesview_memoryview(PyObject *self, PyObject *unused)
{
	(void)unused;
	return PyMemoryView_FromObject(self);
}

static PyObject *bytesview_to_bytes(bytesview_object *self, PyObject *unused)
{
	(void)unused;
	return PyBytes_FromStringAndSize(self->data, self->size);
}

/* Pickles as a copy, rebuilt by s3dlio._core._bytesview (DataLoader workers send results
 * to the main process this way). */
static PyObject *bytesview_reduce(bytesview_object *self, PyObject *unused)
{
	PyObject *module, *fn, *res;

	(void)unused;
	module = PyType_GetModule(Py_TYPE(self));
	if (module == NULL)
		return NULL;
	fn = PyObject_GetAttrString(module, "_bytesview");
	if (fn == NULL)
		return NULL;
	res = Py_BuildValue("(N(y#))", fn, self->data, self->size);
	return res;
}

static PyObject *bytesview_sizeof(bytesview_object *self, PyObject *unused)
{
	(void)unused;
	return PyLong_FromSsize_t((Py_ssize_t)sizeof(*self) + self->size);
}

static PyMethodDef bytesview_methods[] = {
    {"memoryview", bytesview_memoryview, METH_NOARGS,
     "memoryview() -> memoryview: a read-only view of the bytes (no copy)."},
    {"to_bytes", (PyCFunction)bytesview_to_bytes, METH_NOARGS,
     "to_bytes() -> bytes: a copy of the bytes."},
    {"__bytes__", (PyCFunction)bytesview_to_bytes, METH_NOARGS,
     "__bytes__() -> bytes: a copy of the bytes."},
    {"__reduce__", (PyCFunction)bytesview_reduce, METH_NOARGS, NULL},
    {"__sizeof__", (PyCFunction)bytesview_sizeof, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(bytesview_doc,
             "The bytes of one object, read-only and zero-copy through the buffer protocol:\n"
             "np.frombuffer(view.memoryview()) and np.frombuffer(view) share its memory,\n"
             "which lives as long as any view of it. Made by s3dlio.get() and friends.");

static PyType_Slot bytesview_slots[] = {
    {Py_tp_doc, (void *)bytesview_doc},
    {Py_tp_new, bytesview_new},
    {Py_tp_dealloc, bytesview_dealloc},
    {Py_tp_repr, bytesview_repr},
    {Py_tp_richcompare, bytesview_richcompare},
    {Py_tp_hash, PyObject_HashNotImplemented},
    {Py_tp_methods, bytesview_methods},
    {Py_sq_length, bytesview_len},
    {Py_mp_length, bytesview_len},
    {Py_mp_subscript, bytesview_subscript},
    {Py_sq_item, bytesview_item},
    {Py_bf_getbuffer, bytesview_getbuffer},
    {Py_bf_releasebuffer, bytesview_releasebuffer},
    {0, NULL},
};

#ifndef Py_TPFLAGS_IMMUTABLETYPE
#define Py_TPFLAGS_IMMUTABLETYPE 0
#endif

static PyType_Spec bytesview_spec = {
    .name = "s3dlio.BytesView",
    .basicsize = sizeof(bytesview_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = bytesview_slots,
};

int bytesview_add_type(PyObject *module, core_state *st)
{
	/* the pool reads its settings now, so a bad one fails the import */
	pool_ready();
	if (pool.env_error[0] != '\0') {
		PyErr_SetString(PyExc_ValueError, pool.env_error);
		return -1;
	}
	st->bytesview_type =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, &bytesview_spec, NULL);
	if (st->bytesview_type == NULL)
		return -1;
	return PyModule_AddType(module, st->bytesview_type);
}
