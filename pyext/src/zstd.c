/* zstd.c: zstd compression for the package's Python layer (libzstd): one-shot
 * zstd_compress / zstd_decompress and the streaming ZstdCompressor that writers feed chunk by
 * chunk. The original s3dlio stores compressed checkpoints and streamed objects as zstd
 * frames under a ".zst" name; these let the Python layer write and read the same objects.
 *
 * Decompression is bounded (max_size): a small hostile object must not be able to expand
 * into all of memory. The GIL is released around the library calls on large inputs. */
#include "core.h"

#include <zstd.h>

/* Inputs below this size are compressed with the GIL held: releasing it costs more. */
#define ZSTD_NOGIL_MIN (64 * 1024)

/* Default bound of zstd_decompress's output, when the caller gives none: callers that expect
 * more say so (checkpoints pass the size their record holds). */
#define ZSTD_DEFAULT_MAX ((Py_ssize_t)1 << 30)

static int zstd_level_ok(int level)
{
	if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel()) {
		PyErr_Format(PyExc_ValueError, "zstd level must be in %d..%d, got %d",
		             ZSTD_minCLevel(), ZSTD_maxCLevel(), level);
		return 0;
	}
	return 1;
}

static PyObject *zstd_error(const char *what, size_t rc)
{
	PyErr_Format(PyExc_ValueError, "zstd %s failed: %s", what, ZSTD_getErrorName(rc));
	return NULL;
}

PyObject *zstd_compress_py(PyObject *module, PyObject *args, PyObject *kwargs)
{
	static char *kwlist[] = {"buffer", "level", NULL};
	Py_buffer in = {0};
	int level = 3;
	PyObject *out = NULL;
	PyThreadState *ts;
	size_t bound, rc;

	(void)module;
	if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|i:zstd_compress", kwlist, &in, &level))
		return NULL;
	if (!zstd_level_ok(level))
		goto done;
	bound = ZSTD_compressBound((size_t)in.len);
	if (ZSTD_isError(bound) || bound > (size_t)PY_SSIZE_T_MAX) {
		PyErr_SetString(PyExc_OverflowError, "zstd_compress: input too large");
		goto done;
	}
	out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)bound);
	if (out == NULL)
		goto done;
	if (in.len >= ZSTD_NOGIL_MIN) {
		ts = PyEval_SaveThread();
		rc = ZSTD_compress(PyBytes_AS_STRING(out), bound, in.buf, (size_t)in.len, level);
		PyEval_RestoreThread(ts);
	} else {
		rc = ZSTD_compress(PyBytes_AS_STRING(out), bound, in.buf, (size_t)in.len, level);
	}
	if (ZSTD_isError(rc)) {
		Py_CLEAR(out);
		zstd_error("compression", rc);
		goto done;
	}
	if (_PyBytes_Resize(&out, (Py_ssize_t)rc) < 0)
		out = NULL;
done:
	PyBuffer_Release(&in);
	return out;
}

/* Decompresses every frame of in (concatenated frames, sizes known or not) into one bytes
 * object of at most max bytes. */
PyObject *zstd_decompress_py(PyObject *module, PyObject *args, PyObject *kwargs)
{
	static char *kwlist[] = {"buffer", "max_size", NULL};
	Py_buffer in = {0};
	Py_ssize_t max = ZSTD_DEFAULT_MAX;
	PyObject *out = NULL;
	PyThreadState *ts;
	ZSTD_DCtx *dctx = NULL;
	ZSTD_inBuffer src;
	ZSTD_outBuffer dst;
	size_t rc = 0, cap;
	unsigned long long hint;

	(void)module;
	if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|n:zstd_decompress", kwlist, &in, &max))
		return NULL;
	if (max < 0) {
		PyErr_SetString(PyExc_ValueError, "max_size must be >= 0");
		goto fail;
	}
	dctx = ZSTD_createDCtx();
	if (dctx == NULL) {
		PyErr_NoMemory();
		goto fail;
	}
	/* Start from the first frame's declared size when it has one (the common case: one
	 * frame written by zstd_compress), else from a multiple of the input. */
	hint = ZSTD_getFrameContentSize(in.buf, (size_t)in.len);
	if (hint == ZSTD_CONTENTSIZE_ERROR && in.len > 0) {
		PyErr_SetString(PyExc_ValueError, "zstd decompression failed: not a zstd frame");
		goto fail;
	}
	if (hint == ZSTD_CONTENTSIZE_UNKNOWN || hint == ZSTD_CONTENTSIZE_ERROR)
		hint = (unsigned long long)in.len * 4 + 4096;
	cap = hint > (unsigned long long)max ? (size_t)max : (size_t)hint;
	if (cap == 0)
		cap = 1;
	out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
	if (out == NULL)
		goto fail;
	src.src = in.buf;
	src.size = (size_t)in.len;
	src.pos = 0;
	dst.pos = 0;
	while (src.size > 0) {
		dst.dst = PyBytes_AS_STRING(out);
		dst.size = cap;
		ts = PyEval_SaveThread();
		rc = ZSTD_decompressStream(dctx, &dst, &src);
		PyEval_RestoreThread(ts);
		if (ZSTD_isError(rc)) {
			zstd_error("decompression", rc);
			goto fail;
		}
		if (rc == 0 && src.pos == src.size)
			break; /* the last frame is complete and flushed */
		if (dst.pos == dst.size) {
			size_t ncap;

			if (cap >= (size_t)max) {
				PyErr_Format(
				    PyExc_ValueError,
				    "zstd decompression: output exceeds max_size (%zd bytes)", max);
				goto fail;
			}
			ncap = cap > (size_t)max / 2 ? (size_t)max : cap * 2;
			if (_PyBytes_Resize(&out, (Py_ssize_t)ncap) < 0) {
				out = NULL;
				goto fail;
			}
			cap = ncap;
		} else if (src.pos == src.size) {
			PyErr_SetString(PyExc_ValueError,
			                "zstd decompression failed: truncated frame");
			goto fail;
		}
	}
	if (_PyBytes_Resize(&out, (Py_ssize_t)dst.pos) < 0)
		out = NULL;
	ZSTD_freeDCtx(dctx);
	PyBuffer_Release(&in);
	return out;
fail:
	Py_XDECREF(out);
	ZSTD_freeDCtx(dctx);
	PyBuffer_Release(&in);
	return NULL;
}

/* The decompressed size of every frame of src added up; ZSTD_CONTENTSIZE_UNKNOWN when a
 * frame does not declare it, ZSTD_CONTENTSIZE_ERROR when src is not whole frames. (The
 * library's own ZSTD_findDecompressedSize is not in its stable API.) */
static unsigned long long zstd_total_size(const char *src, size_t len)
{
	unsigned long long total = 0;

	while (len > 0) {
		unsigned long long n = ZSTD_getFrameContentSize(src, len);
		size_t fl;

		if (n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN)
			return n;
		fl = ZSTD_findFrameCompressedSize(src, len);
		if (ZSTD_isError(fl) || total + n < total)
			return ZSTD_CONTENTSIZE_ERROR;
		total += n;
		src += fl;
		len -= fl;
	}
	return total;
}

/* The same as zstd_decompress, into a BytesView: the bytes land once in a buffer the view
 * owns (no bytes object, no second copy), for checkpoints that are loaded zero-copy. */
PyObject *zstd_decompress_view_py(PyObject *module, PyObject *args, PyObject *kwargs)
{
	static char *kwlist[] = {"buffer", "max_size", NULL};
	core_state *st = PyModule_GetState(module);
	Py_buffer in = {0};
	Py_ssize_t max = ZSTD_DEFAULT_MAX;
	ZSTD_DCtx *dctx = NULL;
	PyThreadState *ts;
	unsigned long long total;
	char *buf = NULL;
	size_t cap = 0, rc = 0;
	ZSTD_inBuffer src;
	ZSTD_outBuffer dst;
	PyObject *res = NULL;

	if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|n:zstd_decompress_view", kwlist, &in,
	                                 &max))
		return NULL;
	if (max < 0) {
		PyErr_SetString(PyExc_ValueError, "max_size must be >= 0");
		goto done;
	}
	dctx = ZSTD_createDCtx();
	if (dctx == NULL) {
		PyErr_NoMemory();
		goto done;
	}
	total = zstd_total_size(in.buf, (size_t)in.len);
	if (total == ZSTD_CONTENTSIZE_ERROR) {
		PyErr_SetString(PyExc_ValueError,
		                "zstd decompression failed: not a zstd frame, or truncated");
		goto done;
	}
	if (total != ZSTD_CONTENTSIZE_UNKNOWN) {
		/* every frame declares its size: one exact buffer, one pass */
		if (total > (unsigned long long)max) {
			PyErr_Format(PyExc_ValueError,
			             "zstd decompression: output exceeds max_size (%zd bytes)",
			             max);
			goto done;
		}
		buf = bytesview_alloc_raw(total);
		if (buf == NULL) {
			PyErr_NoMemory();
			goto done;
		}
		if (total > 0) {
			ts = PyEval_SaveThread();
			rc = ZSTD_decompressDCtx(dctx, buf, (size_t)total, in.buf, (size_t)in.len);
			PyEval_RestoreThread(ts);
			if (ZSTD_isError(rc)) {
				zstd_error("decompression", rc);
				goto done;
			}
			if (rc != total) {
				PyErr_SetString(
				    PyExc_ValueError,
				    "zstd decompression failed: frames shorter than declared");
				goto done;
			}
		}
		res = bytesview_adopt(st, buf, (Py_ssize_t)total);
		buf = NULL; /* adopted (freed by bytesview_adopt on failure) */
		goto done;
	}
	/* some frame has no declared size: grow a malloc buffer (BytesView frees it) */
	cap = (size_t)in.len * 4 + 4096;
	if (cap > (size_t)max)
		cap = max > 0 ? (size_t)max : 1;
	buf = malloc(cap);
	if (buf == NULL) {
		PyErr_NoMemory();
		goto done;
	}
	src.src = in.buf;
	src.size = (size_t)in.len;
	src.pos = 0;
	dst.pos = 0;
	for (;;) {
		dst.dst = buf;
		dst.size = cap;
		ts = PyEval_SaveThread();
		rc = ZSTD_decompressStream(dctx, &dst, &src);
		PyEval_RestoreThread(ts);
		if (ZSTD_isError(rc)) {
			zstd_error("decompression", rc);
			goto done;
		}
		if (rc == 0 && src.pos == src.size)
			break;
		if (dst.pos == dst.size) {
			size_t ncap;
			char *nbuf;

			if (cap >= (size_t)max) {
				PyErr_Format(
				    PyExc_ValueError,
				    "zstd decompression: output exceeds max_size (%zd bytes)", max);
				goto done;
			}
			ncap = cap > (size_t)max / 2 ? (size_t)max : cap * 2;
			nbuf = realloc(buf, ncap);
			if (nbuf == NULL) {
				PyErr_NoMemory();
				goto done;
			}
			buf = nbuf;
			cap = ncap;
		} else if (src.pos == src.size) {
			PyErr_SetString(PyExc_ValueError,
			                "zstd decompression failed: truncated frame");
			goto done;
		}
	}
	res = bytesview_adopt(st, buf, (Py_ssize_t)dst.pos);
	buf = NULL;
done:
	if (buf != NULL)
		bytesview_free_raw(buf);
	ZSTD_freeDCtx(dctx);
	PyBuffer_Release(&in);
	return res;
}

/* ---- ZstdCompressor: one frame fed in chunks ---- */

/* The compression runs with the GIL released, so two threads could be inside one ZSTD_CCtx
 * at once (a writer fed from threads): lock serializes every use of cctx. */
typedef struct {
	PyObject ob_base; /* PyObject_HEAD */
	ZSTD_CCtx *cctx;
	PyThread_type_lock lock;
	int level;
} zstd_compressor;

/* Takes self->lock, waiting for it without holding the GIL. */
static void zstd_compressor_lock(zstd_compressor *self)
{
	if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
		PyThreadState *ts = PyEval_SaveThread();

		PyThread_acquire_lock(self->lock, WAIT_LOCK);
		PyEval_RestoreThread(ts);
	}
}

static int zstd_compressor_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
	static char *kwlist[] = {"level", NULL};
	zstd_compressor *self = (zstd_compressor *)op;
	int level = 3;
	size_t rc;

	if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|i:ZstdCompressor", kwlist, &level))
		return -1;
	if (!zstd_level_ok(level))
		return -1;
	if (self->lock == NULL && (self->lock = PyThread_allocate_lock()) == NULL) {
		PyErr_NoMemory();
		return -1;
	}
	zstd_compressor_lock(self);
	if (self->cctx == NULL)
		self->cctx = ZSTD_createCCtx();
	if (self->cctx == NULL) {
		PyThread_release_lock(self->lock);
		PyErr_NoMemory();
		return -1;
	}
	ZSTD_CCtx_reset(self->cctx, ZSTD_reset_session_and_parameters);
	rc = ZSTD_CCtx_setParameter(self->cctx, ZSTD_c_compressionLevel, level);
	if (!ZSTD_isError(rc))
		/* a checksum in every frame: a reader detects corrupted compressed bytes */
		rc = ZSTD_CCtx_setParameter(self->cctx, ZSTD_c_checksumFlag, 1);
	PyThread_release_lock(self->lock);
	if (ZSTD_isError(rc)) {
		zstd_error("setup", rc);
		return -1;
	}
	self->level = level;
	return 0;
}

/* Runs the compressor over in with mode (continue or end), returning what it produced. */
static PyObject *zstd_compressor_run(zstd_compressor *self, const void *buf, size_t len,
                                     ZSTD_EndDirective mode)
{
	ZSTD_inBuffer src = {buf, len, 0};
	ZSTD_outBuffer dst;
	PyObject *out = NULL;
	PyThreadState *ts;
	size_t cap = ZSTD_CStreamOutSize() + ZSTD_compressBound(len), rc;

	if (self->cctx == NULL || self->lock == NULL) {
		PyErr_SetString(PyExc_ValueError, "ZstdCompressor is not initialised");
		return NULL;
	}
	zstd_compressor_lock(self);
	out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
	if (out == NULL)
		goto done;
	dst.pos = 0;
	for (;;) {
		dst.dst = PyBytes_AS_STRING(out);
		dst.size = cap;
		ts = PyEval_SaveThread();
		rc = ZSTD_compressStream2(self->cctx, &dst, &src, mode);
		PyEval_RestoreThread(ts);
		if (ZSTD_isError(rc)) {
			Py_CLEAR(out);
			/* the frame is unusable now; start over cleanly on the next call */
			ZSTD_CCtx_reset(self->cctx, ZSTD_reset_session_only);
			zstd_error("compression", rc);
			goto done;
		}
		if (mode == ZSTD_e_end ? rc == 0 : src.pos == src.size)
			break;
		if (dst.pos == dst.size) {
			cap *= 2;
			if (_PyBytes_Resize(&out, (Py_ssize_t)cap) < 0)
				goto done; /* out is NULL */
		}
	}
	if (_PyBytes_Resize(&out, (Py_ssize_t)dst.pos) < 0)
		out = NULL;
done:
	PyThread_release_lock(self->lock);
	return out;
}

static PyObject *zstd_compressor_compress(PyObject *op, PyObject *arg)
{
	Py_buffer in;
	PyObject *out;

	if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
		return NULL;
	out = zstd_compressor_run((zstd_compressor *)op, in.buf, (size_t)in.len, ZSTD_e_continue);
	PyBuffer_Release(&in);
	return out;
}

static PyObject *zstd_compressor_flush(PyObject *op, PyObject *unused)
{
	(void)unused;
	return zstd_compressor_run((zstd_compressor *)op, NULL, 0, ZSTD_e_end);
}

static PyObject *zstd_compressor_get_level(PyObject *op, void *closure)
{
	(void)closure;
	return PyLong_FromLong(((zstd_compressor *)op)->level);
}

static void zstd_compressor_dealloc(PyObject *op)
{
	zstd_compressor *self = (zstd_compressor *)op;
	PyTypeObject *tp = Py_TYPE(op);

	ZSTD_freeCCtx(self->cctx);
	if (self->lock != NULL)
		PyThread_free_lock(self->lock);
	tp->tp_free(op);
	Py_DECREF(tp);
}

static PyMethodDef zstd_compressor_methods[] = {
    {"compress", zstd_compressor_compress, METH_O,
     "compress(buffer) -> bytes: feed buffer into the current frame; returns the compressed "
     "bytes ready so far (often b'')."},
    {"flush", zstd_compressor_flush, METH_NOARGS,
     "flush() -> bytes: end the frame and return the rest of it; the next compress() starts "
     "a new frame."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef zstd_compressor_getset[] = {
    {"level", zstd_compressor_get_level, NULL, "the compression level", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot zstd_compressor_slots[] = {
    {Py_tp_doc, "ZstdCompressor(level=3): a zstd frame compressed chunk by chunk "
                "(with a content checksum)."},
    {Py_tp_init, zstd_compressor_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, zstd_compressor_dealloc},
    {Py_tp_methods, zstd_compressor_methods},
    {Py_tp_getset, zstd_compressor_getset},
    {0, NULL},
};

static PyType_Spec zstd_compressor_spec = {
    .name = "s3dlio._core.ZstdCompressor",
    .basicsize = sizeof(zstd_compressor),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = zstd_compressor_slots,
};

int zstd_add_type(PyObject *module)
{
	PyObject *type = PyType_FromModuleAndSpec(module, &zstd_compressor_spec, NULL);
	int rc;

	if (type == NULL)
		return -1;
	rc = PyModule_AddObjectRef(module, "ZstdCompressor", type);
	Py_DECREF(type);
	return rc;
}
