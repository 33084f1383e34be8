/* module.c: the module s3dlio._core (multi-phase init, module state as in CPython's
 * Modules/xxlimited.c), s3dlio.Error, and the mapping of client error codes to exceptions. */
#include "core.h"

#include <string.h>

PyObject *core_raise(core_state *st, int code, const char *msg, const char *uri)
{
	PyObject *exc;

	switch (code) {
	case S3DLIO_E_NOT_FOUND: exc = PyExc_FileNotFoundError; break;
	case S3DLIO_E_PERMISSION: exc = PyExc_PermissionError; break;
	case S3DLIO_E_INVALID:
	case S3DLIO_E_RANGE:
	case S3DLIO_E_TOO_SMALL:
	case S3DLIO_E_TOO_LARGE: exc = PyExc_ValueError; break;
	case S3DLIO_E_CONNECTION: exc = PyExc_ConnectionError; break;
	case S3DLIO_E_TIMEOUT: exc = PyExc_TimeoutError; break;
	default: exc = st->error; break;
	}
	if (msg == NULL || msg[0] == '\0')
		msg = s3dlio_code_str(code);
	if (msg == NULL)
		msg = "unknown error";
	/* The message must name the URI: users hit opaque errors with the original. %s decodes
	 * UTF-8 with "replace", so a file name that is not UTF-8 cannot hide the error. */
	if (uri != NULL && uri[0] != '\0' && strstr(msg, uri) == NULL)
		PyErr_Format(exc, "%s: %s", uri, msg);
	else
		PyErr_Format(exc, "%s", msg);
	return NULL;
}

static int core_exec(PyObject *module)
{
	core_state *st = PyModule_GetState(module);

	st->error = PyErr_NewExceptionWithDoc(
	    "s3dlio.Error",
	    "A failure of the s3dlio service (backend, I/O, checksum, protocol, busy); "
	    "the message names the URI and the cause.",
	    PyExc_RuntimeError, NULL);
	if (st->error == NULL)
		return -1;
	if (PyModule_AddObjectRef(module, "Error", st->error) < 0)
		return -1;
	if (bytesview_add_type(module, st) < 0)
		return -1;
	if (client_add_type(module, st) < 0)
		return -1;
	if (loader_add_type(module, st) < 0)
		return -1;
	return 0;
}

static int core_traverse(PyObject *module, visitproc visit, void *arg)
{
	core_state *st = PyModule_GetState(module);

	Py_VISIT(st->bytesview_type);
	Py_VISIT(st->client_type);
	Py_VISIT(st->prefetcher_type);
	Py_VISIT(st->error);
	return 0;
}

static int core_clear(PyObject *module)
{
	core_state *st = PyModule_GetState(module);

	Py_CLEAR(st->bytesview_type);
	Py_CLEAR(st->client_type);
	Py_CLEAR(st->prefetcher_type);
	Py_CLEAR(st->error);
	return 0;
}

static void core_free(void *module)
{
	core_clear((PyObject *)module);
}

static PyObject *core_code_str(PyObject *module, PyObject *arg)
{
	long code;

	(void)module;
	code = PyLong_AsLong(arg);
	if (code == -1 && PyErr_Occurred())
		return NULL;
	return PyUnicode_FromString(s3dlio_code_str((int)code));
}

static PyMethodDef core_methods[] = {
    {"code_str", core_code_str, METH_O, "code_str(code) -> str: the name of an S3DLIO_E_* code."},
    {"_bytesview", bytesview_from_buffer, METH_O,
     "_bytesview(buffer) -> BytesView: a copy of buffer (used to unpickle BytesView)."},
    {"crc32c", (PyCFunction)(void (*)(void))loader_crc32c, METH_VARARGS | METH_KEYWORDS,
     "crc32c(buffer, crc=0) -> int: the CRC32C (Castagnoli) of buffer, continuing from crc."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "s3dlio._core",
    .m_doc = "The C core of s3dlio: BytesView, Client and Error.",
    .m_size = sizeof(core_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
	return PyModuleDef_Init(&core_module);
}
