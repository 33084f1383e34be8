/* core.h: what the parts of the extension module s3dlio._core share.
 *
 * module.c owns the module and its state (the heap types, s3dlio.Error and its precise
 * subclasses) and the mapping of S3DLIO_E_* codes to Python exceptions; zstd.c owns the zstd
 * helpers; bytesview.c owns BytesView and the aligned buffers
 * it adopts (and the pool that recycles large ones); client.c owns Client, the wrapper of
 * s3dlio_client. */
#ifndef S3DLIO_PYEXT_CORE_H
#define S3DLIO_PYEXT_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include <s3dlio/s3dlio.h>

/* PyModule_AddObjectRef and Py_NewRef arrived in 3.10. */
#if PY_VERSION_HEX < 0x030A0000
static inline int core_add_object_ref(PyObject *module, const char *name, PyObject *value)
{
	Py_INCREF(value);
	if (PyModule_AddObject(module, name, value) < 0) {
		Py_DECREF(value);
		return -1;
	}
	return 0;
}
#define PyModule_AddObjectRef core_add_object_ref
#endif
#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *core_new_ref(PyObject *obj)
{
	Py_INCREF(obj);
	return obj;
}
#define Py_NewRef(obj) core_new_ref((PyObject *)(obj))
#endif

typedef struct core_state {
	PyTypeObject *bytesview_type;
	PyTypeObject *client_type;
	PyTypeObject *prefetcher_type;
	PyObject *error; /* s3dlio.Error, a RuntimeError */
	/* The precise errors: each both its builtin (FileNotFoundError, ...) and s3dlio.Error,
	 * so code written for the original (which raises RuntimeError) still catches them. */
	PyObject *not_found;  /* NotFoundError(FileNotFoundError, Error) */
	PyObject *permission; /* PermissionDeniedError(PermissionError, Error) */
	PyObject *invalid;    /* InvalidArgumentError(ValueError, Error) */
	PyObject *connection; /* ServerConnectionError(ConnectionError, Error) */
	PyObject *timeout;    /* RequestTimeoutError(TimeoutError, Error) */
} core_state;

/* The state of the module that defined type (types of this module are final, so the type
 * of self is always the defining class). */
static inline core_state *core_state_of_type(PyTypeObject *type)
{
	return (core_state *)PyType_GetModuleState(type);
}

/* Sets the exception that matches code with message msg, which should name uri; when it does
 * not, uri is put in front. Returns NULL so callers can `return core_raise(...)`. */
PyObject *core_raise(core_state *st, int code, const char *msg, const char *uri);

/* ---- zstd.c ---- */

PyObject *zstd_compress_py(PyObject *module, PyObject *args, PyObject *kwargs);
PyObject *zstd_decompress_py(PyObject *module, PyObject *args, PyObject *kwargs);
PyObject *zstd_decompress_view_py(PyObject *module, PyObject *args, PyObject *kwargs);
int zstd_add_type(PyObject *module);

/* ---- bytesview.c ---- */

/* Aligned allocation for object bytes (callable without the GIL). Size 0 still gets a small
 * real allocation, so a successful call never returns NULL. Large sizes come from a
 * process-wide pool of recycled buffers: the bytes are not zeroed. */
void *bytesview_alloc_raw(uint64_t size);

/* An s3dlio_get_many allocator that records each request's buffer in ptrs[index]
 * (bytesview_alloc_raw), and its release callback, which clears the slot and frees. */
typedef struct many_ctx {
	void **ptrs;
	size_t n;
} many_ctx;
void *many_alloc(void *ctx, size_t index, uint64_t size);
void many_release(void *ctx, size_t index, void *ptr, uint64_t size);

/* Releases what bytesview_alloc_raw returned (NULL is fine), from any thread, with or without
 * the GIL. A pool buffer goes to the next object of its size: nothing may read it after. */
void bytesview_free_raw(void *ptr);

/* A BytesView that adopts ptr (from bytesview_alloc_raw, or NULL when size is 0). On failure
 * ptr is freed and NULL is returned with an exception set. Needs the GIL. */
PyObject *bytesview_adopt(core_state *st, void *ptr, Py_ssize_t size);

/* _bytesview(buffer): a BytesView holding a copy of buffer (for unpickling). */
PyObject *bytesview_from_buffer(PyObject *module, PyObject *arg);
int bytesview_add_type(PyObject *module, core_state *st);
int client_add_type(PyObject *module, core_state *st);

/* ---- client.c, for loader.c ---- */

/* Counts a call in progress on the Client obj and returns its C client (kept open until
 * client_checkin), or NULL with an exception set. Needs the GIL. */
s3dlio_client *client_checkout(core_state *st, PyObject *obj);
void client_checkin(PyObject *obj);

/* ---- loader.c ---- */
int loader_add_type(PyObject *module, core_state *st);
PyObject *loader_crc32c(PyObject *module, PyObject *args, PyObject *kwds);

#endif
