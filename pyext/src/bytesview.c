/* bytesview.c: BytesView, the read-only, zero-copy owner of one object's bytes.
 *
 * The client's allocator callback places each object's bytes in an aligned buffer (without
 * the GIL); once the GIL is back, a BytesView adopts the buffer. It exports the buffer
 * read-only and counts its exports; since every export (memoryview, numpy array) holds a
 * reference to the BytesView, the buffer is freed in tp_dealloc only, never while viewed. */
#include "core.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Small objects get cache-line alignment; large ones page alignment (O_DIRECT-friendly,
 * and glibc mmaps them anyway). Very large ones are aligned to a transparent huge page and
 * advised so: the kernel then faults the receive buffer in 2 MiB at a time instead of 4 KiB,
 * which is most of the cost of receiving into fresh memory. */
#define BV_ALIGN_SMALL 64
#define BV_ALIGN_PAGE 4096
#define BV_PAGE_FROM (64 * 1024)
#define BV_ALIGN_HUGE (2 * 1024 * 1024)
#define BV_HUGE_FROM (4 * 1024 * 1024)

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

	/* exports is 0 here: each export holds a reference to self */
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
	st->bytesview_type =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, &bytesview_spec, NULL);
	if (st->bytesview_type == NULL)
		return -1;
	return PyModule_AddType(module, st->bytesview_type);
}
