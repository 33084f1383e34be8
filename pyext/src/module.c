/* module.c: the module s3dlio._core (multi-phase init, module state as in CPython's
 * Modules/xxlimited.c), s3dlio.Error and its precise subclasses, and the mapping of client
 * error codes to exceptions.
 *
 * Each precise class derives from a builtin (FileNotFoundError, PermissionError, ValueError,
 * ConnectionError, TimeoutError) AND from s3dlio.Error (a RuntimeError): code written for the
 * original s3dlio, which raises RuntimeError for every failure, keeps working, and code that
 * wants the precise cause catches the builtin. */
#include "core.h"

#include <string.h>

PyObject *core_raise(core_state *st, int code, const char *msg, const char *uri)
{
	PyObject *exc;

	switch (code) {
	case S3DLIO_E_NOT_FOUND: exc = st->not_found; break;
	case S3DLIO_E_PERMISSION: exc = st->permission; break;
	case S3DLIO_E_INVALID:
	case S3DLIO_E_UNSUPPORTED: /* an unknown scheme: the URI as given cannot be served */
	case S3DLIO_E_RANGE:
	case S3DLIO_E_TOO_SMALL:
	case S3DLIO_E_TOO_LARGE: exc = st->invalid; break;
	case S3DLIO_E_CONNECTION: exc = st->connection; break;
	case S3DLIO_E_TIMEOUT: exc = st->timeout; break;
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

/* One precise error class: name(builtin, s3dlio.Error), added to the module. */
static int core_add_error(PyObject *module, core_state *st, PyObject **slot, const char *name,
                          PyObject *builtin, const char *doc)
{
	char qual[64];
	PyObject *bases = PyTuple_Pack(2, builtin, st->error);

	if (bases == NULL)
		return -1;
	snprintf(qual, sizeof qual, "s3dlio.%s", name);
	*slot = PyErr_NewExceptionWithDoc(qual, doc, bases, NULL);
	Py_DECREF(bases);
	if (*slot == NULL)
		return -1;
	return PyModule_AddObjectRef(module, name, *slot);
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
	if (core_add_error(module, st, &st->not_found, "NotFoundError", PyExc_FileNotFoundError,
	                   "No object at the URI (a FileNotFoundError and an s3dlio.Error).") < 0 ||
	    core_add_error(module, st, &st->permission, "PermissionDeniedError",
	                   PyExc_PermissionError,
	                   "The server refused the URI or the token (a PermissionError and an "
	                   "s3dlio.Error).") < 0 ||
	    core_add_error(module, st, &st->invalid, "InvalidArgumentError", PyExc_ValueError,
	                   "A malformed URI or argument, a range past the end, a buffer too small "
	                   "(a ValueError and an s3dlio.Error).") < 0 ||
	    core_add_error(module, st, &st->connection, "ServerConnectionError",
	                   PyExc_ConnectionError,
	                   "The server could not be reached or the connection broke (a "
	                   "ConnectionError and an s3dlio.Error).") < 0 ||
	    core_add_error(module, st, &st->timeout, "RequestTimeoutError", PyExc_TimeoutError,
	                   "A request timed out (a TimeoutError and an s3dlio.Error).") < 0)
		return -1;
	if (zstd_add_type(module) < 0)
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
	Py_VISIT(st->not_found);
	Py_VISIT(st->permission);
	Py_VISIT(st->invalid);
	Py_VISIT(st->connection);
	Py_VISIT(st->timeout);
	return 0;
}

static int core_clear(PyObject *module)
{
	core_state *st = PyModule_GetState(module);

	Py_CLEAR(st->bytesview_type);
	Py_CLEAR(st->client_type);
	Py_CLEAR(st->prefetcher_type);
	Py_CLEAR(st->error);
	Py_CLEAR(st->not_found);
	Py_CLEAR(st->permission);
	Py_CLEAR(st->invalid);
	Py_CLEAR(st->connection);
	Py_CLEAR(st->timeout);
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
    {"zstd_compress", (PyCFunction)(void (*)(void))zstd_compress_py, METH_VARARGS | METH_KEYWORDS,
     "zstd_compress(buffer, level=3) -> bytes: one zstd frame of buffer."},
    {"zstd_decompress", (PyCFunction)(void (*)(void))zstd_decompress_py,
     METH_VARARGS | METH_KEYWORDS,
     "zstd_decompress(buffer, max_size=2**30) -> bytes: every zstd frame of buffer, "
     "decompressed (ValueError when corrupt, truncated or larger than max_size)."},
    {"zstd_decompress_view", (PyCFunction)(void (*)(void))zstd_decompress_view_py,
     METH_VARARGS | METH_KEYWORDS,
     "zstd_decompress_view(buffer, max_size=2**30) -> BytesView: as zstd_decompress, into "
     "a BytesView (one copy: the decompression itself)."},
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
