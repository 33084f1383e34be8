/* client.c: Client, the Python face of one s3dlio_client (a pool of connections to one
 * server).
 *
 * Every blocking call runs with the GIL released: PyEval_SaveThread/RestoreThread around the
 * C call alone, with nothing in between that touches Python objects. Object bytes land in
 * buffers placed by allocator callbacks that run without the GIL (plain posix_memalign); the
 * BytesView objects that adopt them are made once the GIL is back.
 *
 * Lifetime: the C client is thread-safe, so many Python threads may call one Client at once.
 * `active` counts calls in progress (it only changes with the GIL held, so the GIL guards it);
 * close() during calls marks the Client closed and the last call out frees the C client.
 * Fork: a child must not speak on the parent's connections, so a Client used in a process
 * other than the one that opened it forgets the inherited C client (its sockets and locks
 * belong to the parent; freeing it could write to them or wait on a lock held by a thread
 * that does not exist in the child) and opens a new one to the same server. */
#include "core.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct client_object {
	PyObject ob_base; /* PyObject_HEAD */
	s3dlio_client *c;
	PyObject *url;       /* str, as given */
	char *token;         /* copy of the bearer token (for reopening after fork), or NULL */
	s3dlio_options opts; /* opts.token points at token */
	pid_t pid;           /* the process that opened c */
	Py_ssize_t active;   /* calls in progress */
	int closed;
} client_object;

/* ---- arguments ---- */

/* A URI argument as UTF-8. keep holds the bytes object when surrogate escapes (names that are
 * not UTF-8, as list() may return) had to be encoded back. */
typedef struct uri_arg {
	const char *s;
	PyObject *keep;
} uri_arg;

static int uri_arg_get(PyObject *obj, const char *what, uri_arg *out)
{
	Py_ssize_t len;

	out->s = NULL;
	out->keep = NULL;
	if (!PyUnicode_Check(obj)) {
		PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s", what,
		             Py_TYPE(obj)->tp_name);
		return -1;
	}
	out->s = PyUnicode_AsUTF8AndSize(obj, &len);
	if (out->s == NULL) {
		if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
			return -1;
		PyErr_Clear();
		out->keep = PyUnicode_AsEncodedString(obj, "utf-8", "surrogateescape");
		if (out->keep == NULL)
			return -1;
		out->s = PyBytes_AS_STRING(out->keep);
		len = PyBytes_GET_SIZE(out->keep);
	}
	if (len == 0) {
		PyErr_Format(PyExc_ValueError, "%s must not be empty", what);
		goto fail;
	}
	if ((size_t)len != strlen(out->s)) {
		PyErr_Format(PyExc_ValueError, "%s must not contain NUL characters", what);
		goto fail;
	}
	return 0;
fail:
	Py_CLEAR(out->keep);
	out->s = NULL;
	return -1;
}

static void uri_arg_release(uri_arg *u)
{
	Py_CLEAR(u->keep);
	u->s = NULL;
}

/* A non-negative integer argument. obj NULL (not given) or None gives none_value; None is
 * refused when !none_ok. */
static int u64_arg(PyObject *obj, const char *what, uint64_t none_value, int none_ok, uint64_t *out)
{
	PyObject *idx;
	long long v;
	int overflow = 0;
	int result = -1;

	if (obj == NULL || (obj == Py_None && none_ok)) {
		*out = none_value;
		return 0;
	}
	idx = PyNumber_Index(obj);
	if (idx == NULL) {
		PyErr_Clear();
		PyErr_Format(PyExc_TypeError, "%s must be an int%s, not %.100s", what,
		             none_ok ? " or None" : "", Py_TYPE(obj)->tp_name);
		return -1;
	}
	v = PyLong_AsLongLongAndOverflow(idx, &overflow);
	if (v == -1 && PyErr_Occurred())
		goto done;
	if (overflow < 0 || (overflow == 0 && v < 0)) {
		PyErr_Format(PyExc_ValueError, "%s must be >= 0, got %R", what, idx);
		goto done;
	}
	if (overflow == 0) {
		*out = (uint64_t)v;
	} else {
		*out = PyLong_AsUnsignedLongLong(idx);
		if (*out == (uint64_t)-1 && PyErr_Occurred()) {
			PyErr_Clear();
			PyErr_Format(PyExc_ValueError, "%s is too large: %R", what, idx);
			goto done;
		}
	}
	result = 0;
done:
	Py_DECREF(idx);
	return result;
}

/* ---- lifetime ---- */

static core_state *client_state(client_object *self)
{
	return core_state_of_type(Py_TYPE(self));
}

static PyObject *client_raise(client_object *self, const s3dlio_error *err, int rc, const char *uri)
{
	return core_raise(client_state(self), err->code != 0 ? err->code : rc, err->message, uri);
}

/* Opens a new C client for this process (see the header comment on fork). */
static int client_reopen(client_object *self)
{
	PyThreadState *ts;
	pid_t me = getpid();
	const char *url = PyUnicode_AsUTF8(self->url);
	s3dlio_client *nc;
	s3dlio_error err;

	if (url == NULL)
		return -1;
	/* The inherited client and its calls belong to the parent: forget them. */
	self->c = NULL;
	self->active = 0;
	memset(&err, 0, sizeof(err));
	ts = PyEval_SaveThread();
	nc = s3dlio_client_new(url, &self->opts, &err);
	PyEval_RestoreThread(ts);
	if (nc == NULL) {
		client_raise(self, &err, S3DLIO_E_CONNECTION, url);
		return -1;
	}
	if (self->pid == me && self->c != NULL) {
		/* another thread of this process reopened while we connected */
		ts = PyEval_SaveThread();
		s3dlio_client_free(nc);
		PyEval_RestoreThread(ts);
		return 0;
	}
	self->c = nc;
	self->pid = me;
	return 0;
}

/* Starts a call: returns the C client to use, with the call counted, or NULL with an
 * exception set. Pair with client_leave. */
static s3dlio_client *client_enter(client_object *self)
{
	if (self->closed) {
		PyErr_SetString(PyExc_ValueError, "operation on a closed s3dlio Client");
		return NULL;
	}
	if (self->pid != getpid() || self->c == NULL) {
		if (client_reopen(self) < 0)
			return NULL;
		if (self->closed) {
			PyErr_SetString(PyExc_ValueError, "operation on a closed s3dlio Client");
			return NULL;
		}
	}
	self->active++;
	return self->c;
}

static void client_free_now(client_object *self)
{
	PyThreadState *ts;
	s3dlio_client *c = self->c;

	self->c = NULL;
	if (c == NULL || self->pid != getpid())
		return; /* not ours to free (inherited across fork): forget it */
	ts = PyEval_SaveThread();
	s3dlio_client_free(c);
	PyEval_RestoreThread(ts);
}

static void client_leave(client_object *self)
{
	self->active--;
	if (self->closed && self->active == 0)
		client_free_now(self);
}

/* ---- for other parts of the extension (loader.c) ---- */

s3dlio_client *client_checkout(core_state *st, PyObject *obj)
{
	if (!PyObject_TypeCheck(obj, st->client_type)) {
		PyErr_Format(PyExc_TypeError, "client must be an s3dlio Client, not %.100s",
		             Py_TYPE(obj)->tp_name);
		return NULL;
	}
	return client_enter((client_object *)obj);
}

void client_checkin(PyObject *obj)
{
	client_object *self = (client_object *)obj;

	/* a checkout made in another process (before a fork) is not counted here */
	if (self->pid == getpid() && self->active > 0)
		client_leave(self);
}

/* ---- allocator callbacks (run without the GIL) ---- */

/* get: one buffer */
typedef struct one_ctx {
	void *ptr;
} one_ctx;

static void *one_alloc(void *ctx, size_t index, uint64_t size)
{
	one_ctx *oc = ctx;

	(void)index;
	oc->ptr = bytesview_alloc_raw(size);
	return oc->ptr;
}

static void one_release(void *ctx, size_t index, void *ptr, uint64_t size)
{
	one_ctx *oc = ctx;

	(void)index;
	(void)size;
	if (ptr == oc->ptr)
		oc->ptr = NULL;
	bytesview_free_raw(ptr);
}

/* get_many's allocator: one buffer per request, by index (distinct slots, so no lock is
 * needed). Shared with the loader's prefetch thread (loader.c). */
void *many_alloc(void *ctx, size_t index, uint64_t size)
{
	many_ctx *mc = ctx;
	void *p;

	if (index >= mc->n)
		return NULL;
	p = bytesview_alloc_raw(size);
	mc->ptrs[index] = p;
	return p;
}

void many_release(void *ctx, size_t index, void *ptr, uint64_t size)
{
	many_ctx *mc = ctx;

	(void)size;
	if (index < mc->n && mc->ptrs[index] == ptr)
		mc->ptrs[index] = NULL;
	bytesview_free_raw(ptr);
}

/* Wraps a finished request's bytes: data must be the buffer the allocator placed (or
 * nothing, for an empty object). *owned is taken over either way. */
static PyObject *client_wrap(client_object *self, void **owned, void *data, uint64_t size,
                             const char *uri)
{
	void *p = *owned;

	*owned = NULL;
	if (data == p || (size == 0 && data == NULL)) {
		if (data == NULL && p != NULL) {
			bytesview_free_raw(p);
			p = NULL;
		}
		return bytesview_adopt(client_state(self), p, (Py_ssize_t)size);
	}
	bytesview_free_raw(p);
	PyErr_Format(client_state(self)->error,
	             "%s: internal error: the client returned bytes outside the allocated buffer",
	             uri);
	return NULL;
}

/* ---- methods ---- */

static PyObject *client_get(client_object *self, PyObject *args, PyObject *kwds)
{
	PyThreadState *ts;
	static char *kwlist[] = {"uri", "offset", "length", NULL};
	PyObject *uri_obj, *off_obj = NULL, *len_obj = NULL, *res = NULL;
	uri_arg uri = {0};
	uint64_t offset, length, size = 0;
	s3dlio_client *c;
	s3dlio_object_info info;
	s3dlio_error err;
	one_ctx oc = {NULL};
	void *data = NULL;
	int rc;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO:get", kwlist, &uri_obj, &off_obj,
	                                 &len_obj))
		return NULL;
	if (uri_arg_get(uri_obj, "uri", &uri) < 0)
		return NULL;
	if (u64_arg(off_obj, "offset", 0, 0, &offset) < 0 ||
	    u64_arg(len_obj, "length", S3DLIO_TO_END, 1, &length) < 0)
		goto done;
	c = client_enter(self);
	if (c == NULL)
		goto done;
	memset(&err, 0, sizeof(err));
	ts = PyEval_SaveThread();
	rc = s3dlio_get(c, uri.s, offset, length, one_alloc, one_release, &oc, &data, &size, &info,
	                &err);
	PyEval_RestoreThread(ts);
	client_leave(self);
	if (rc != S3DLIO_OK) {
		bytesview_free_raw(oc.ptr); /* placed but not released by the client */
		client_raise(self, &err, rc, uri.s);
		goto done;
	}
	res = client_wrap(self, &oc.ptr, data, size, uri.s);
done:
	uri_arg_release(&uri);
	return res;
}

/* Drops what uris[0..n) and reqs hold. */
static void many_cleanup(uri_arg *uris, s3dlio_request *reqs, void **ptrs, size_t n)
{
	size_t i;

	if (reqs != NULL)
		s3dlio_requests_clear(reqs, n);
	for (i = 0; i < n; i++) {
		if (ptrs != NULL) {
			bytesview_free_raw(ptrs[i]);
			ptrs[i] = NULL;
		}
		if (uris != NULL)
			uri_arg_release(&uris[i]);
	}
	PyMem_Free(uris);
	PyMem_Free(reqs);
	PyMem_Free(ptrs);
}

/* The arguments of get_many and prefetch: (uris, max_in_flight=64). On success *seq holds the
 * URIs as a fast sequence and, when there are any, *uris and *reqs one entry each (free with
 * many_cleanup); 0, or -1 with an exception. */
static int many_args(PyObject *args, PyObject *kwds, const char *fmt, PyObject **seq,
                     uri_arg **uris, s3dlio_request **reqs, Py_ssize_t *n,
                     Py_ssize_t *max_in_flight)
{
	static char *kwlist[] = {"uris", "max_in_flight", NULL};
	PyObject *uris_obj;
	Py_ssize_t i;

	*seq = NULL;
	*uris = NULL;
	*reqs = NULL;
	*n = 0;
	*max_in_flight = 64;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &uris_obj, max_in_flight))
		return -1;
	if (*max_in_flight < 1) {
		PyErr_Format(PyExc_ValueError, "max_in_flight must be >= 1, got %zd",
		             *max_in_flight);
		return -1;
	}
	if (*max_in_flight > 65536)
		*max_in_flight = 65536;
	if (PyUnicode_Check(uris_obj) || PyBytes_Check(uris_obj)) {
		PyErr_SetString(PyExc_TypeError, "uris must be a list of str, not a single string");
		return -1;
	}
	*seq = PySequence_Fast(uris_obj, "uris must be an iterable of str");
	if (*seq == NULL)
		return -1;
	*n = PySequence_Fast_GET_SIZE(*seq);
	if (*n == 0)
		return 0;
	*uris = PyMem_Calloc((size_t)*n, sizeof(**uris));
	*reqs = PyMem_Calloc((size_t)*n, sizeof(**reqs));
	if (*uris == NULL || *reqs == NULL) {
		PyErr_NoMemory();
		return -1;
	}
	for (i = 0; i < *n; i++) {
		char what[64];

		snprintf(what, sizeof(what), "uris[%zd]", i);
		if (uri_arg_get(PySequence_Fast_GET_ITEM(*seq, i), what, &(*uris)[i]) < 0)
			return -1;
		(*reqs)[i].uri = (*uris)[i].s;
		(*reqs)[i].offset = 0;
		(*reqs)[i].length = S3DLIO_TO_END;
	}
	return 0;
}

/* Raise the first failed request's error (in input order), naming its URI. */
static void many_raise(client_object *self, const s3dlio_request *reqs, Py_ssize_t n,
                       s3dlio_error *err, int rc)
{
	const char *bad = NULL, *msg = err->message;
	Py_ssize_t i;

	for (i = 0; i < n; i++) {
		if (reqs[i].status != S3DLIO_OK) {
			bad = reqs[i].uri;
			if (msg[0] == '\0' && reqs[i].error != NULL)
				msg = reqs[i].error;
			if (err->code == 0)
				err->code = reqs[i].status;
			break;
		}
	}
	core_raise(client_state(self), err->code != 0 ? err->code : rc, msg, bad);
}

static PyObject *client_get_many(client_object *self, PyObject *args, PyObject *kwds)
{
	PyThreadState *ts;
	PyObject *seq = NULL, *list = NULL, *res = NULL;
	Py_ssize_t max_in_flight, i, n = 0;
	uri_arg *uris = NULL;
	s3dlio_request *reqs = NULL;
	void **ptrs = NULL;
	s3dlio_client *c;
	s3dlio_error err;
	many_ctx mc;
	int rc;

	if (many_args(args, kwds, "O|n:get_many", &seq, &uris, &reqs, &n, &max_in_flight) < 0)
		goto done;
	if (n == 0) {
		res = PyList_New(0);
		goto done;
	}
	ptrs = PyMem_Calloc((size_t)n, sizeof(*ptrs));
	if (ptrs == NULL) {
		PyErr_NoMemory();
		goto done;
	}
	c = client_enter(self);
	if (c == NULL)
		goto done;
	mc.ptrs = ptrs;
	mc.n = (size_t)n;
	memset(&err, 0, sizeof(err));
	ts = PyEval_SaveThread();
	rc = s3dlio_get_many(c, reqs, (size_t)n, (unsigned)max_in_flight, many_alloc, many_release,
	                     &mc, &err);
	PyEval_RestoreThread(ts);
	client_leave(self);
	if (rc != S3DLIO_OK) {
		many_raise(self, reqs, n, &err, rc);
		goto done;
	}
	list = PyList_New(n);
	if (list == NULL)
		goto done;
	for (i = 0; i < n; i++) {
		PyObject *view, *item;

		view = client_wrap(self, &ptrs[i], reqs[i].data, reqs[i].size, reqs[i].uri);
		if (view == NULL)
			goto done;
		item = PyTuple_Pack(2, PySequence_Fast_GET_ITEM(seq, i), view);
		Py_DECREF(view);
		if (item == NULL)
			goto done;
		PyList_SET_ITEM(list, i, item);
	}
	res = list;
	list = NULL;
done:
	many_cleanup(uris, reqs, ptrs, (size_t)(n > 0 && uris != NULL ? n : 0));
	Py_XDECREF(list);
	Py_XDECREF(seq);
	return res;
}

/* prefetch: warm the server's cache; the total size of the objects now cached. */
static PyObject *client_prefetch(client_object *self, PyObject *args, PyObject *kwds)
{
	PyThreadState *ts;
	PyObject *seq = NULL, *res = NULL;
	Py_ssize_t max_in_flight, i, n = 0;
	uri_arg *uris = NULL;
	s3dlio_request *reqs = NULL;
	s3dlio_client *c;
	s3dlio_error err;
	unsigned long long cached = 0;
	int rc;

	if (many_args(args, kwds, "O|n:prefetch", &seq, &uris, &reqs, &n, &max_in_flight) < 0)
		goto done;
	if (n > 0) {
		c = client_enter(self);
		if (c == NULL)
			goto done;
		memset(&err, 0, sizeof(err));
		ts = PyEval_SaveThread();
		rc = s3dlio_prefetch_many(c, reqs, (size_t)n, (unsigned)max_in_flight, &err);
		PyEval_RestoreThread(ts);
		client_leave(self);
		if (rc != S3DLIO_OK) {
			many_raise(self, reqs, n, &err, rc);
			goto done;
		}
		for (i = 0; i < n; i++)
			cached += reqs[i].size;
	}
	res = PyLong_FromUnsignedLongLong(cached);
done:
	many_cleanup(uris, reqs, NULL, (size_t)(n > 0 && uris != NULL ? n : 0));
	Py_XDECREF(seq);
	return res;
}

/* The caller's buffer for get_into: writable and C-contiguous, with a clear error when not. */
static int writable_buffer(PyObject *obj, Py_buffer *view)
{
	Py_buffer probe;

	if (PyObject_GetBuffer(obj, view, PyBUF_CONTIG) == 0)
		return 0;
	PyErr_Clear();
	if (PyObject_GetBuffer(obj, &probe, PyBUF_FULL_RO) < 0) {
		PyErr_Clear();
		PyErr_Format(
		    PyExc_TypeError,
		    "buffer must support the buffer protocol (bytearray, numpy array, ...), "
		    "not %.100s",
		    Py_TYPE(obj)->tp_name);
		return -1;
	}
	if (probe.readonly)
		PyErr_Format(PyExc_TypeError, "buffer must be writable; %.100s is read-only",
		             Py_TYPE(obj)->tp_name);
	else
		PyErr_Format(PyExc_ValueError, "buffer must be C-contiguous; this %.100s is not",
		             Py_TYPE(obj)->tp_name);
	PyBuffer_Release(&probe);
	return -1;
}

static PyObject *client_get_into(client_object *self, PyObject *args, PyObject *kwds)
{
	PyThreadState *ts;
	static char *kwlist[] = {"uri", "buffer", "offset", "length", NULL};
	PyObject *uri_obj, *buf_obj, *off_obj = NULL, *len_obj = NULL, *res = NULL;
	uri_arg uri = {0};
	Py_buffer view = {0};
	uint64_t offset, length, size = 0;
	s3dlio_client *c;
	s3dlio_error err;
	int rc, have_view = 0;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OO:get_into", kwlist, &uri_obj, &buf_obj,
	                                 &off_obj, &len_obj))
		return NULL;
	if (uri_arg_get(uri_obj, "uri", &uri) < 0)
		return NULL;
	if (u64_arg(off_obj, "offset", 0, 0, &offset) < 0 ||
	    u64_arg(len_obj, "length", S3DLIO_TO_END, 1, &length) < 0)
		goto done;
	if (writable_buffer(buf_obj, &view) < 0)
		goto done;
	have_view = 1;
	if (length != S3DLIO_TO_END && length > (uint64_t)view.len) {
		PyErr_Format(PyExc_ValueError,
		             "%s: buffer too small: %zd bytes for a range of %llu bytes", uri.s,
		             view.len, (unsigned long long)length);
		goto done;
	}
	c = client_enter(self);
	if (c == NULL)
		goto done;
	memset(&err, 0, sizeof(err));
	ts = PyEval_SaveThread();
	rc = s3dlio_get_into(c, uri.s, offset, length, view.buf, (uint64_t)view.len, &size, &err);
	PyEval_RestoreThread(ts);
	client_leave(self);
	if (rc != S3DLIO_OK) {
		client_raise(self, &err, rc, uri.s);
		goto done;
	}
	res = PyLong_FromUnsignedLongLong(size);
done:
	if (have_view)
		PyBuffer_Release(&view);
	uri_arg_release(&uri);
	return res;
}

static PyObject *client_put_bytes(client_object *self, PyObject *args, PyObject *kwds)
{
	PyThreadState *ts;
	static char *kwlist[] = {"uri", "data", NULL};
	PyObject *uri_obj, *data_obj, *res = NULL;
	uri_arg uri = {0};
	Py_buffer view = {0};
	s3dlio_client *c;
	s3dlio_error err;
	int rc, have_view = 0;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:put_bytes", kwlist, &uri_obj, &data_obj))
		return NULL;
	if (uri_arg_get(uri_obj, "uri", &uri) < 0)
		return NULL;
	if (PyObject_GetBuffer(data_obj, &view, PyBUF_SIMPLE) < 0) {
		PyErr_Clear();
		if (PyObject_CheckBuffer(data_obj))
			PyErr_Format(PyExc_ValueError,
			             "data must be a contiguous buffer; this "
			             "%.100s is not",
			             Py_TYPE(data_obj)->tp_name);
		else
			PyErr_Format(PyExc_TypeError,
			             "data must be bytes-like (bytes, bytearray, "
			             "memoryview, numpy array, BytesView), not %.100s",
			             Py_TYPE(data_obj)->tp_name);
		goto done;
	}
	have_view = 1;
	c = client_enter(self);
	if (c == NULL)
		goto done;
	memset(&err, 0, sizeof(err));
	ts = PyEval_SaveThread();
	rc = s3dlio_put(c, uri.s, view.buf, (uint64_t)view.len, &err);
	PyEval_RestoreThread(ts);
	client_leave(self);
	if (rc != S3DLIO_OK) {
		client_raise(self, &err, rc, uri.s);
		goto done;
	}
	res = Py_NewRef(Py_None);
done:
	if (have_view)
		PyBuffer_Release(&view);
	uri_arg_release(&uri);
	return res;
}

/* ISO 8601 UTC with milliseconds, as S3 writes Last-Modified: 2025-10-01T12:00:00.000Z */
static PyObject *iso8601(int64_t mtime_ns)
{
	int64_t sec = mtime_ns / 1000000000, rem = mtime_ns % 1000000000;
	time_t t;
	struct tm tm;
	char buf[64];

	if (rem < 0) {
		rem += 1000000000;
		sec -= 1;
	}
	t = (time_t)sec;
	if (gmtime_r(&t, &tm) == NULL)
		Py_RETURN_NONE;
	snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
	         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(rem / 1000000));
	return PyUnicode_FromString(buf);
}

static PyObject *client_stat(client_object *self, PyObject *args, PyObject *kwds)
{
	PyThreadState *ts;
	static char *kwlist[] = {"uri", NULL};
	PyObject *uri_obj, *res = NULL;
	uri_arg uri = {0};
	s3dlio_object_info info;
	s3dlio_client *c;
	s3dlio_error err;
	int rc;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:stat", kwlist, &uri_obj))
		return NULL;
	if (uri_arg_get(uri_obj, "uri", &uri) < 0)
		return NULL;
	c = client_enter(self);
	if (c == NULL)
		goto done;
	memset(&err, 0, sizeof(err));
	memset(&info, 0, sizeof(info));
	ts = PyEval_SaveThread();
	rc = s3dlio_stat(c, uri.s, &info, &err);
	PyEval_RestoreThread(ts);
	client_leave(self);
	if (rc != S3DLIO_OK) {
		client_raise(self, &err, rc, uri.s);
		goto done;
	}
	info.etag[sizeof(info.etag) - 1] = '\0';
	res = Py_BuildValue(
	    "{s:K,s:N,s:L,s:N,s:O,s:N}", "size", (unsigned long long)info.size, "last_modified",
	    iso8601(info.mtime_ns), "mtime_ns", (long long)info.mtime_ns, "etag",
	    info.etag[0] ? PyUnicode_DecodeUTF8(info.etag, (Py_ssize_t)strlen(info.etag), "replace")
	                 : Py_NewRef(Py_None),
	    "content_type", Py_None, "metadata", PyDict_New());
done:
	uri_arg_release(&uri);
	return res;
}

/* list: entries collected without the GIL, turned into str once it is back */
typedef struct list_ctx {
	char **items;
	size_t n, cap;
	int nomem;
} list_ctx;

static int list_collect(void *ctx, const char *uri, uint64_t size, int64_t mtime_ns, int is_prefix)
{
	list_ctx *lc = ctx;
	size_t len = strlen(uri);
	int slash = is_prefix && (len == 0 || uri[len - 1] != '/');
	char *s;

	(void)size;
	(void)mtime_ns;
	if (lc->n == lc->cap) {
		size_t cap = lc->cap ? lc->cap * 2 : 256;
		char **items = realloc(lc->items, cap * sizeof(*items));

		if (items == NULL) {
			lc->nomem = 1;
			return 1;
		}
		lc->items = items;
		lc->cap = cap;
	}
	s = malloc(len + 2);
	if (s == NULL) {
		lc->nomem = 1;
		return 1;
	}
	memcpy(s, uri, len);
	if (slash) /* "sub-directories" end in '/' */
		s[len++] = '/';
	s[len] = '\0';
	lc->items[lc->n++] = s;
	return 0;
}

static PyObject *client_list(client_object *self, PyObject *args, PyObject *kwds)
{
	PyThreadState *ts;
	static char *kwlist[] = {"uri", "recursive", NULL};
	PyObject *uri_obj, *list = NULL, *res = NULL;
	uri_arg uri = {0};
	int recursive = 0, rc;
	list_ctx lc = {NULL, 0, 0, 0};
	s3dlio_client *c;
	s3dlio_error err;
	size_t i;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p:list", kwlist, &uri_obj, &recursive))
		return NULL;
	if (uri_arg_get(uri_obj, "uri", &uri) < 0)
		return NULL;
	c = client_enter(self);
	if (c == NULL)
		goto done;
	memset(&err, 0, sizeof(err));
	ts = PyEval_SaveThread();
	rc = s3dlio_list(c, uri.s, recursive, list_collect, &lc, &err);
	PyEval_RestoreThread(ts);
	client_leave(self);
	if (lc.nomem) {
		PyErr_NoMemory();
		goto done;
	}
	if (rc != S3DLIO_OK) {
		client_raise(self, &err, rc, uri.s);
		goto done;
	}
	list = PyList_New((Py_ssize_t)lc.n);
	if (list == NULL)
		goto done;
	for (i = 0; i < lc.n; i++) {
		PyObject *s = PyUnicode_DecodeUTF8(lc.items[i], (Py_ssize_t)strlen(lc.items[i]),
		                                   "surrogateescape");
		if (s == NULL)
			goto done;
		PyList_SET_ITEM(list, (Py_ssize_t)i, s);
	}
	res = list;
	list = NULL;
done:
	for (i = 0; i < lc.n; i++)
		free(lc.items[i]);
	free(lc.items);
	Py_XDECREF(list);
	uri_arg_release(&uri);
	return res;
}

/* delete, mkdir, rmdir: one URI in, None out; fmt names the method for argument errors. */
static PyObject *client_uri_call(client_object *self, PyObject *args, PyObject *kwds,
                                 const char *fmt,
                                 int (*fn)(s3dlio_client *, const char *, s3dlio_error *))
{
	PyThreadState *ts;
	static char *kwlist[] = {"uri", NULL};
	PyObject *uri_obj, *res = NULL;
	uri_arg uri = {0};
	s3dlio_client *c;
	s3dlio_error err;
	int rc;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &uri_obj))
		return NULL;
	if (uri_arg_get(uri_obj, "uri", &uri) < 0)
		return NULL;
	c = client_enter(self);
	if (c == NULL)
		goto done;
	memset(&err, 0, sizeof(err));
	ts = PyEval_SaveThread();
	rc = fn(c, uri.s, &err);
	PyEval_RestoreThread(ts);
	client_leave(self);
	if (rc != S3DLIO_OK) {
		client_raise(self, &err, rc, uri.s);
		goto done;
	}
	res = Py_NewRef(Py_None);
done:
	uri_arg_release(&uri);
	return res;
}

static PyObject *client_delete(client_object *self, PyObject *args, PyObject *kwds)
{
	return client_uri_call(self, args, kwds, "O:delete", s3dlio_delete);
}

static PyObject *client_mkdir(client_object *self, PyObject *args, PyObject *kwds)
{
	return client_uri_call(self, args, kwds, "O:mkdir", s3dlio_mkdir);
}

static PyObject *client_rmdir(client_object *self, PyObject *args, PyObject *kwds)
{
	return client_uri_call(self, args, kwds, "O:rmdir", s3dlio_rmdir);
}

static PyObject *client_stats(client_object *self, PyObject *unused)
{
	s3dlio_stats s;
	s3dlio_client *c;

	(void)unused;
	memset(&s, 0, sizeof(s));
	c = client_enter(self);
	if (c == NULL)
		return NULL;
	s3dlio_get_stats(c, &s); /* counters only: no need to drop the GIL */
	client_leave(self);
	return Py_BuildValue(
	    "{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "requests", (unsigned long long)s.requests,
	    "errors", (unsigned long long)s.errors, "bytes_received",
	    (unsigned long long)s.bytes_received, "bytes_direct",
	    (unsigned long long)s.bytes_direct, "bytes_copied", (unsigned long long)s.bytes_copied,
	    "bytes_sent", (unsigned long long)s.bytes_sent, "connects",
	    (unsigned long long)s.connects, "reconnects", (unsigned long long)s.reconnects,
	    "busy_retries", (unsigned long long)s.busy_retries);
}

static PyObject *client_close(client_object *self, PyObject *unused)
{
	(void)unused;
	self->closed = 1;
	if (self->active == 0)
		client_free_now(self);
	Py_RETURN_NONE;
}

static PyObject *client_enter_ctx(client_object *self, PyObject *unused)
{
	(void)unused;
	return Py_NewRef((PyObject *)self);
}

static PyObject *client_exit_ctx(client_object *self, PyObject *args)
{
	(void)args;
	return client_close(self, NULL);
}

static PyObject *client_get_url(client_object *self, void *closure)
{
	(void)closure;
	return Py_NewRef(self->url);
}

static PyObject *client_get_closed(client_object *self, void *closure)
{
	(void)closure;
	return PyBool_FromLong(self->closed);
}

static PyObject *client_repr(client_object *self)
{
	return PyUnicode_FromFormat("<s3dlio.Client url=%R%s>", self->url,
	                            self->closed ? " closed" : "");
}

/* Client(url, max_connections=16, token=None, connect_timeout=None, timeout=None) */
static PyObject *client_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	PyThreadState *ts;
	static char *kwlist[] = {"url", "max_connections", "token", "connect_timeout", "timeout",
	                         NULL};
	PyObject *url_obj, *token_obj = Py_None, *ct_obj = Py_None, *t_obj = Py_None;
	Py_ssize_t max_connections = 16;
	client_object *self = NULL;
	uri_arg url = {0};
	s3dlio_error err;
	s3dlio_client *c;
	double secs;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|nOOO:Client", kwlist, &url_obj,
	                                 &max_connections, &token_obj, &ct_obj, &t_obj))
		return NULL;
	if (uri_arg_get(url_obj, "url", &url) < 0)
		return NULL;
	if (max_connections < 1 || max_connections > 4096) {
		PyErr_Format(PyExc_ValueError, "max_connections must be in 1..4096, got %zd",
		             max_connections);
		goto fail;
	}
	if (token_obj != Py_None && !PyUnicode_Check(token_obj)) {
		PyErr_Format(PyExc_TypeError, "token must be a str or None, not %.100s",
		             Py_TYPE(token_obj)->tp_name);
		goto fail;
	}
	self = (client_object *)type->tp_alloc(type, 0);
	if (self == NULL)
		goto fail;
	self->url = Py_NewRef(url_obj);
	self->opts.max_connections = (unsigned)max_connections;
	self->opts.verify_crc = -1;
	if (token_obj != Py_None) {
		const char *t = PyUnicode_AsUTF8(token_obj);

		if (t == NULL)
			goto fail;
		self->token = strdup(t);
		if (self->token == NULL) {
			PyErr_NoMemory();
			goto fail;
		}
		self->opts.token = self->token;
	}
	if (ct_obj != Py_None) {
		secs = PyFloat_AsDouble(ct_obj);
		if (secs == -1.0 && PyErr_Occurred())
			goto fail;
		if (!(secs > 0 && secs < 4e6)) {
			PyErr_SetString(PyExc_ValueError, "connect_timeout must be > 0 seconds");
			goto fail;
		}
		self->opts.connect_timeout_ms = secs < 0.001 ? 1 : (unsigned)(secs * 1000.0 + 0.5);
	}
	if (t_obj != Py_None) {
		secs = PyFloat_AsDouble(t_obj);
		if (secs == -1.0 && PyErr_Occurred())
			goto fail;
		if (!(secs > 0 && secs < 4e6)) {
			PyErr_SetString(PyExc_ValueError, "timeout must be > 0 seconds");
			goto fail;
		}
		self->opts.io_timeout_ms = secs < 0.001 ? 1 : (unsigned)(secs * 1000.0 + 0.5);
	}
	memset(&err, 0, sizeof(err));
	ts = PyEval_SaveThread();
	c = s3dlio_client_new(url.s, &self->opts, &err);
	PyEval_RestoreThread(ts);
	if (c == NULL) {
		core_raise(core_state_of_type(type), err.code != 0 ? err.code : S3DLIO_E_CONNECTION,
		           err.message, url.s);
		goto fail;
	}
	self->c = c;
	self->pid = getpid();
	uri_arg_release(&url);
	return (PyObject *)self;
fail:
	uri_arg_release(&url);
	Py_XDECREF(self);
	return NULL;
}

static void client_dealloc(client_object *self)
{
	PyTypeObject *tp = Py_TYPE(self);

	if (self->c != NULL && self->pid == getpid())
		s3dlio_client_free(self->c);
	self->c = NULL;
	free(self->token);
	Py_XDECREF(self->url);
	tp->tp_free((PyObject *)self);
	Py_DECREF(tp);
}

static PyMethodDef client_methods[] = {
    {"get", (PyCFunction)(void (*)(void))client_get, METH_VARARGS | METH_KEYWORDS,
     "get(uri, offset=0, length=None) -> BytesView: the object, or a range of it."},
    {"get_many", (PyCFunction)(void (*)(void))client_get_many, METH_VARARGS | METH_KEYWORDS,
     "get_many(uris, max_in_flight=64) -> list[(uri, BytesView)], in input order.\n"
     "The first failure (in input order) raises, naming its URI."},
    {"prefetch", (PyCFunction)(void (*)(void))client_prefetch, METH_VARARGS | METH_KEYWORDS,
     "prefetch(uris, max_in_flight=64) -> int: have the server fetch the objects into\n"
     "its cache now (for a coming read); returns the bytes cached (0 for URIs the\n"
     "server does not cache). The first failure (in input order) raises."},
    {"get_into", (PyCFunction)(void (*)(void))client_get_into, METH_VARARGS | METH_KEYWORDS,
     "get_into(uri, buffer, offset=0, length=None) -> int: receive into a writable\n"
     "C-contiguous buffer; returns the bytes written."},
    {"put_bytes", (PyCFunction)(void (*)(void))client_put_bytes, METH_VARARGS | METH_KEYWORDS,
     "put_bytes(uri, data): store any contiguous buffer, sent without a copy."},
    {"stat", (PyCFunction)(void (*)(void))client_stat, METH_VARARGS | METH_KEYWORDS,
     "stat(uri) -> dict(size, last_modified, mtime_ns, etag, content_type, metadata)"},
    {"list", (PyCFunction)(void (*)(void))client_list, METH_VARARGS | METH_KEYWORDS,
     "list(uri, recursive=False) -> list[str]: URIs as the server sends them\n"
     "(prefix entries end in '/')."},
    {"delete", (PyCFunction)(void (*)(void))client_delete, METH_VARARGS | METH_KEYWORDS,
     "delete(uri): delete one object."},
    {"mkdir", (PyCFunction)(void (*)(void))client_mkdir, METH_VARARGS | METH_KEYWORDS,
     "mkdir(uri): file://, direct://: make the directory and its missing parents (an\n"
     "existing one is fine). s3://b, az://account/container, gs://b: create the bucket\n"
     "or container (fine if it exists and is yours); a deeper prefix needs nothing."},
    {"rmdir", (PyCFunction)(void (*)(void))client_rmdir, METH_VARARGS | METH_KEYWORDS,
     "rmdir(uri): file://, direct://: remove the empty directory. s3/az/gs: a bucket-level\n"
     "URI deletes the empty bucket or container; a deeper prefix must hold no object."},
    {"stats", (PyCFunction)client_stats, METH_NOARGS, "stats() -> dict: client counters."},
    {"close", (PyCFunction)client_close, METH_NOARGS,
     "close(): close the connections (after the calls in progress end)."},
    {"__enter__", (PyCFunction)client_enter_ctx, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)client_exit_ctx, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef client_getset[] = {
    {"url", (getter)client_get_url, NULL, "the server URL", NULL},
    {"closed", (getter)client_get_closed, NULL, "True once close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(
    client_doc,
    "Client(url, max_connections=16, token=None, connect_timeout=None, timeout=None)\n--\n\n"
    "A pool of connections to one s3dliod (tcp://HOST:PORT or unix:///PATH).\n"
    "Thread-safe; every call releases the GIL while it waits.");

static PyType_Slot client_slots[] = {
    {Py_tp_doc, (void *)client_doc},
    {Py_tp_new, client_new},
    {Py_tp_dealloc, client_dealloc},
    {Py_tp_repr, client_repr},
    {Py_tp_methods, client_methods},
    {Py_tp_getset, client_getset},
    {0, NULL},
};

#ifndef Py_TPFLAGS_IMMUTABLETYPE
#define Py_TPFLAGS_IMMUTABLETYPE 0
#endif

static PyType_Spec client_spec = {
    .name = "s3dlio.Client",
    .basicsize = sizeof(client_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = client_slots,
};

int client_add_type(PyObject *module, core_state *st)
{
	st->client_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &client_spec, NULL);
	if (st->client_type == NULL)
		return -1;
	return PyModule_AddType(module, st->client_type);
}
