/* loader.c: the prefetch engine of the data loaders (s3dlio._core.Prefetcher) and crc32c().
 *
 * A Prefetcher fetches a fixed list of URIs, in order, ahead of its consumer. A dedicated
 * thread (no GIL, no Python objects) takes windows of the list and fetches each window with
 * s3dlio_get_many (pipelined requests, at most max_in_flight outstanding) into aligned buffers
 * placed by the allocator callback; the finished buffers go into a bounded ring of `capacity`
 * items. The fetch thread starts a window only when the ring has room for it, so with
 * window <= capacity / 2 one window is fetched while the consumer drains the previous one.
 *
 * __next__ waits with the GIL released for the next item in list order, and hands its buffer
 * over as a BytesView (no copy) or, with as_bytes, copies it into a bytes object and frees it.
 * A failed item raises at its position (the message names its URI); later items still come.
 *
 * Lifetime: the Prefetcher checks its Client out for its whole life (so close() on the Client
 * cannot free the C client under the thread); close() stops the thread after the window in
 * progress, frees the buffers nobody took and checks the Client back in. A Prefetcher made
 * before a fork is dead in the child (its thread does not exist there): using it raises. */
#include "core.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wire.h"

typedef struct pf_slot {
	void *ptr;
	uint64_t size;
	int status;
	char *msg; /* malloc'd, when status != 0 */
} pf_slot;

typedef struct prefetcher_object {
	PyObject ob_base;
	PyObject *client;    /* the Client (strong ref) */
	s3dlio_client *c;    /* checked out of client, or NULL once closed */
	PyObject *uris;      /* tuple of bytes (UTF-8, surrogates escaped back) */
	const char **curis;  /* into uris */
	size_t n;
	size_t cap;          /* ring capacity, items */
	size_t window;       /* items per get_many */
	unsigned in_flight;
	int as_bytes;
	pf_slot *ring;
	size_t head;         /* items consumed */
	size_t tail;         /* items produced */
	int stop;
	int started;
	int closed;
	int mu_ok;           /* mu and the condition variables are initialised */
	pthread_t thr;
	pthread_mutex_t mu;
	pthread_cond_t cv_room;
	pthread_cond_t cv_items;
	pid_t pid;
	uint64_t bytes;      /* bytes fetched */
	uint64_t windows;    /* get_many calls */
} prefetcher_object;

/* ---- crc32c ---- */

PyObject *loader_crc32c(PyObject *module, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"buffer", "crc", NULL};
	Py_buffer view;
	unsigned long long crc = 0;
	uint32_t r;

	(void)module;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|K:crc32c", kwlist, &view, &crc))
		return NULL;
	if (crc > 0xffffffffULL) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_ValueError, "crc must be a 32-bit unsigned value");
		return NULL;
	}
	if (view.len >= (1 << 16)) {
		Py_BEGIN_ALLOW_THREADS
		r = wire_crc32c((uint32_t)crc, view.buf, (size_t)view.len);
		Py_END_ALLOW_THREADS
	} else {
		r = wire_crc32c((uint32_t)crc, view.buf, (size_t)view.len);
	}
	PyBuffer_Release(&view);
	return PyLong_FromUnsignedLong(r);
}

/* ---- the fetch thread ---- */


static char *dup_msg(const char *a, const char *b)
{
	const char *m = (a != NULL && a[0] != '\0') ? a : b;
	char *r;
	size_t len;

	if (m == NULL)
		m = "request failed";
	len = strlen(m);
	r = malloc(len + 1);
	if (r != NULL)
		memcpy(r, m, len + 1);
	return r;
}

static void *pf_thread(void *arg)
{
	prefetcher_object *pf = arg;
	s3dlio_request *reqs = calloc(pf->window, sizeof(*reqs));
	void **ptrs = calloc(pf->window, sizeof(*ptrs));
	size_t pos = 0;

	while (pos < pf->n) {
		size_t want = pf->n - pos, i;
		many_ctx wc;
		s3dlio_error err;
		int rc, stop;

		if (want > pf->window)
			want = pf->window;
		pthread_mutex_lock(&pf->mu);
		while (!pf->stop && (pf->tail - pf->head) + want > pf->cap)
			pthread_cond_wait(&pf->cv_room, &pf->mu);
		stop = pf->stop;
		pthread_mutex_unlock(&pf->mu);
		if (stop)
			break;
		if (reqs == NULL || ptrs == NULL) {
			rc = S3DLIO_E_NOMEM;
			pthread_mutex_lock(&pf->mu);
			for (i = 0; i < want; i++) {
				pf_slot *s = &pf->ring[(pos + i) % pf->cap];
				s->ptr = NULL;
				s->size = 0;
				s->status = rc;
				s->msg = dup_msg("out of memory in the prefetch engine", NULL);
			}
			pf->tail += want;
			pthread_cond_broadcast(&pf->cv_items);
			pthread_mutex_unlock(&pf->mu);
			pos += want;
			continue;
		}
		memset(reqs, 0, want * sizeof(*reqs));
		memset(ptrs, 0, want * sizeof(*ptrs));
		for (i = 0; i < want; i++) {
			reqs[i].uri = pf->curis[pos + i];
			reqs[i].offset = 0;
			reqs[i].length = S3DLIO_TO_END;
		}
		wc.ptrs = ptrs;
		wc.n = want;
		memset(&err, 0, sizeof(err));
		rc = s3dlio_get_many(pf->c, reqs, want, pf->in_flight, many_alloc, many_release, &wc,
		                     &err);
		(void)rc;
		pthread_mutex_lock(&pf->mu);
		for (i = 0; i < want; i++) {
			pf_slot *s = &pf->ring[(pos + i) % pf->cap];

			s->msg = NULL;
			if (reqs[i].status == S3DLIO_OK &&
			    (reqs[i].data == ptrs[i] || (reqs[i].size == 0 && reqs[i].data == NULL))) {
				if (reqs[i].data == NULL && ptrs[i] != NULL) {
					bytesview_free_raw(ptrs[i]);
					ptrs[i] = NULL;
				}
				s->ptr = ptrs[i];
				s->size = reqs[i].size;
				s->status = S3DLIO_OK;
				pf->bytes += reqs[i].size;
			} else {
				bytesview_free_raw(ptrs[i]);
				s->ptr = NULL;
				s->size = 0;
				s->status = reqs[i].status != S3DLIO_OK ? reqs[i].status
				                                         : S3DLIO_E_INTERNAL;
				s->msg = dup_msg(reqs[i].error,
				                 reqs[i].status != S3DLIO_OK
				                     ? s3dlio_code_str(reqs[i].status)
				                     : "internal error: bytes outside the buffer");
			}
			ptrs[i] = NULL;
		}
		pf->windows++;
		pf->tail += want;
		pthread_cond_broadcast(&pf->cv_items);
		pthread_mutex_unlock(&pf->mu);
		s3dlio_requests_clear(reqs, want);
		pos += want;
	}
	free(reqs);
	free(ptrs);
	return NULL;
}

/* ---- the type ---- */

static void pf_free_slots(prefetcher_object *pf)
{
	size_t i;

	if (pf->ring == NULL)
		return;
	for (i = pf->head; i < pf->tail; i++) {
		pf_slot *s = &pf->ring[i % pf->cap];

		bytesview_free_raw(s->ptr);
		free(s->msg);
		s->ptr = NULL;
		s->msg = NULL;
	}
	pf->head = pf->tail;
}

/* Stops the thread, frees what nobody took, checks the client back in. Needs the GIL. */
static void pf_close(prefetcher_object *pf)
{
	if (pf->closed)
		return;
	pf->closed = 1;
	if (pf->pid != getpid()) {
		/* inherited across fork: the thread and its lock belong to the parent */
		pf->started = 0;
		return;
	}
	if (pf->started) {
		pthread_mutex_lock(&pf->mu);
		pf->stop = 1;
		pthread_cond_broadcast(&pf->cv_room);
		pthread_cond_broadcast(&pf->cv_items);
		pthread_mutex_unlock(&pf->mu);
		Py_BEGIN_ALLOW_THREADS
		pthread_join(pf->thr, NULL);
		Py_END_ALLOW_THREADS
		pf->started = 0;
	}
	if (pf->mu_ok) {
		pthread_mutex_lock(&pf->mu);
		pf->stop = 1;
		pf_free_slots(pf);
		pthread_cond_broadcast(&pf->cv_items);
		pthread_mutex_unlock(&pf->mu);
	}
	if (pf->c != NULL) {
		pf->c = NULL;
		client_checkin(pf->client);
	}
}

static PyObject *pf_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"client", "uris", "capacity", "window", "max_in_flight",
	                         "as_bytes", NULL};
	core_state *st = core_state_of_type(type);
	PyObject *client, *uris_obj, *seq = NULL, *tup = NULL;
	Py_ssize_t cap = 64, window = 32, in_flight = 32, i, n;
	int as_bytes = 0;
	prefetcher_object *pf;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|nnnp:Prefetcher", kwlist, &client,
	                                 &uris_obj, &cap, &window, &in_flight, &as_bytes))
		return NULL;
	if (cap < 1 || window < 1 || in_flight < 1) {
		PyErr_SetString(PyExc_ValueError,
		                "capacity, window and max_in_flight must be >= 1");
		return NULL;
	}
	if (window > cap)
		window = cap;
	if (in_flight > 65536)
		in_flight = 65536;
	if (PyUnicode_Check(uris_obj) || PyBytes_Check(uris_obj)) {
		PyErr_SetString(PyExc_TypeError, "uris must be a list of str, not a single string");
		return NULL;
	}
	seq = PySequence_Fast(uris_obj, "uris must be an iterable of str");
	if (seq == NULL)
		return NULL;
	n = PySequence_Fast_GET_SIZE(seq);
	tup = PyTuple_New(n);
	if (tup == NULL)
		goto fail;
	for (i = 0; i < n; i++) {
		PyObject *u = PySequence_Fast_GET_ITEM(seq, i), *b;

		if (!PyUnicode_Check(u)) {
			PyErr_Format(PyExc_TypeError, "uris[%zd] must be a str, not %.100s", i,
			             Py_TYPE(u)->tp_name);
			goto fail;
		}
		b = PyUnicode_AsEncodedString(u, "utf-8", "surrogateescape");
		if (b == NULL)
			goto fail;
		if (PyBytes_GET_SIZE(b) == 0 ||
		    strlen(PyBytes_AS_STRING(b)) != (size_t)PyBytes_GET_SIZE(b)) {
			Py_DECREF(b);
			PyErr_Format(PyExc_ValueError, "uris[%zd] must be non-empty, without NUL", i);
			goto fail;
		}
		PyTuple_SET_ITEM(tup, i, b);
	}
	Py_CLEAR(seq);
	pf = (prefetcher_object *)type->tp_alloc(type, 0);
	if (pf == NULL)
		goto fail;
	pf->closed = 1; /* until fully set up: dealloc then only drops references */
	pf->uris = tup;
	tup = NULL;
	pf->client = Py_NewRef(client);
	pf->n = (size_t)n;
	pf->cap = (size_t)cap;
	pf->window = (size_t)window;
	pf->in_flight = (unsigned)in_flight;
	pf->as_bytes = as_bytes;
	pf->pid = getpid();
	pf->curis = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(*pf->curis));
	pf->ring = PyMem_Calloc((size_t)cap, sizeof(*pf->ring));
	if (pf->curis == NULL || pf->ring == NULL) {
		Py_DECREF(pf);
		return PyErr_NoMemory();
	}
	for (i = 0; i < n; i++)
		pf->curis[i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(pf->uris, i));
	pthread_mutex_init(&pf->mu, NULL);
	pthread_cond_init(&pf->cv_room, NULL);
	pthread_cond_init(&pf->cv_items, NULL);
	pf->mu_ok = 1;
	pf->c = client_checkout(st, client);
	if (pf->c == NULL) {
		Py_DECREF(pf);
		return NULL;
	}
	pf->closed = 0;
	if (n > 0) {
		int e = pthread_create(&pf->thr, NULL, pf_thread, pf);

		if (e != 0) {
			Py_DECREF(pf);
			PyErr_Format(PyExc_OSError, "cannot start the prefetch thread: %s",
			             strerror(e));
			return NULL;
		}
		pf->started = 1;
	}
	return (PyObject *)pf;
fail:
	Py_XDECREF(seq);
	Py_XDECREF(tup);
	return NULL;
}

static void pf_dealloc(prefetcher_object *pf)
{
	PyTypeObject *tp = Py_TYPE(pf);

	pf_close(pf);
	if (pf->mu_ok && pf->pid == getpid()) {
		pthread_mutex_destroy(&pf->mu);
		pthread_cond_destroy(&pf->cv_room);
		pthread_cond_destroy(&pf->cv_items);
	}
	PyMem_Free(pf->ring);
	PyMem_Free(pf->curis);
	Py_XDECREF(pf->uris);
	Py_XDECREF(pf->client);
	tp->tp_free((PyObject *)pf);
	Py_DECREF(tp);
}

static PyObject *pf_next(prefetcher_object *pf)
{
	core_state *st = core_state_of_type(Py_TYPE(pf));
	pf_slot s;
	size_t idx;

	if (pf->pid != getpid()) {
		PyErr_SetString(PyExc_RuntimeError,
		                "this s3dlio prefetcher was started in another process (before a "
		                "fork); start a new iteration in this process");
		return NULL;
	}
	if (pf->closed || pf->head >= pf->n) {
		if (!pf->closed)
			pf_close(pf);
		return NULL; /* StopIteration */
	}
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&pf->mu);
	while (pf->tail <= pf->head && !pf->stop)
		pthread_cond_wait(&pf->cv_items, &pf->mu);
	if (pf->stop) {
		/* closed from another thread while this one waited */
		pthread_mutex_unlock(&pf->mu);
		idx = SIZE_MAX;
		goto out;
	}
	idx = pf->head;
	s = pf->ring[idx % pf->cap];
	memset(&pf->ring[idx % pf->cap], 0, sizeof(s));
	pf->head++;
	pthread_cond_signal(&pf->cv_room);
	pthread_mutex_unlock(&pf->mu);
out:
	Py_END_ALLOW_THREADS
	if (idx == SIZE_MAX)
		return NULL; /* StopIteration */
	if (s.status != S3DLIO_OK) {
		core_raise(st, s.status, s.msg, pf->curis[idx]);
		free(s.msg);
		return NULL;
	}
	if (pf->as_bytes) {
		PyObject *b = PyBytes_FromStringAndSize(s.ptr, (Py_ssize_t)s.size);

		bytesview_free_raw(s.ptr);
		return b;
	}
	return bytesview_adopt(st, s.ptr, (Py_ssize_t)s.size);
}

static PyObject *pf_close_meth(prefetcher_object *pf, PyObject *unused)
{
	(void)unused;
	pf_close(pf);
	Py_RETURN_NONE;
}

static PyObject *pf_len(prefetcher_object *pf, PyObject *unused)
{
	(void)unused;
	return PyLong_FromSize_t(pf->n);
}

static PyObject *pf_stats(prefetcher_object *pf, PyObject *unused)
{
	size_t head, tail;
	uint64_t bytes, windows;

	(void)unused;
	if (pf->pid == getpid() && !pf->closed) {
		pthread_mutex_lock(&pf->mu);
		head = pf->head;
		tail = pf->tail;
		bytes = pf->bytes;
		windows = pf->windows;
		pthread_mutex_unlock(&pf->mu);
	} else {
		head = pf->head;
		tail = pf->tail;
		bytes = pf->bytes;
		windows = pf->windows;
	}
	return Py_BuildValue("{s:n,s:n,s:n,s:K,s:K,s:n,s:n,s:I}", "items", (Py_ssize_t)pf->n,
	                     "consumed", (Py_ssize_t)head, "fetched", (Py_ssize_t)tail,
	                     "bytes", (unsigned long long)bytes, "windows",
	                     (unsigned long long)windows, "capacity", (Py_ssize_t)pf->cap,
	                     "window", (Py_ssize_t)pf->window, "max_in_flight", pf->in_flight);
}

static PyObject *pf_iter(PyObject *self)
{
	return Py_NewRef(self);
}

static PyMethodDef pf_methods[] = {
    {"close", (PyCFunction)pf_close_meth, METH_NOARGS,
     "close(): stop fetching (after the window in progress) and free unread items."},
    {"__len__", (PyCFunction)pf_len, METH_NOARGS, NULL},
    {"stats", (PyCFunction)pf_stats, METH_NOARGS,
     "stats() -> dict: items, consumed, fetched, bytes, windows, capacity, window, "
     "max_in_flight."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(pf_doc,
             "Prefetcher(client, uris, capacity=64, window=32, max_in_flight=32, "
             "as_bytes=False)\n\n"
             "Fetches uris in order on a background C thread (pipelined get_many windows, "
             "GIL released) into a bounded queue of `capacity` items; iterating yields "
             "each object as a BytesView (or bytes with as_bytes=True).");

static PyType_Slot pf_slots[] = {
    {Py_tp_new, pf_new},
    {Py_tp_dealloc, pf_dealloc},
    {Py_tp_iter, pf_iter},
    {Py_tp_iternext, pf_next},
    {Py_tp_methods, pf_methods},
    {Py_tp_doc, (void *)pf_doc},
    {0, NULL},
};

static PyType_Spec pf_spec = {
    .name = "s3dlio._core.Prefetcher",
    .basicsize = sizeof(prefetcher_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = pf_slots,
};

int loader_add_type(PyObject *module, core_state *st)
{
	st->prefetcher_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &pf_spec, NULL);
	if (st->prefetcher_type == NULL)
		return -1;
	return PyModule_AddType(module, st->prefetcher_type);
}
