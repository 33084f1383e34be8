"""s3dlio: the Python API of s3dlio 0.9.1, served by s3dliod.

Object bytes arrive straight into buffers owned by ``BytesView`` objects (zero-copy through the
buffer protocol: ``np.frombuffer(view.memoryview())``) or into the caller's own buffer
(``get_into``). Which server: ``connect(url)`` if called, else ``S3DLIO_SERVER``, else a private
``s3dliod`` started on first use (see ``s3dlio._server``).

The whole API of the original 0.9.1 is here (pyext/API.md lists it with every deliberate
difference), beside the seed's zero-copy calls. Each part lives in its own module:

    _ops          storage calls (get, put_bytes, list, stat, delete, upload/download, ...)
    _aio          their async twins (get_many_async, stat_async, ...)
    _oplog        init_logging and the op-log
    _checkpoint   checkpoints (PyCheckpointStore = CheckpointStore, ...)
    _dataset      datasets and loaders (create_dataset, create_async_loader, ...)
    _writers      streaming writers (PyWriterOptions, create_*_writer, MultipartUploadWriter)
    _formats      read_npz and the TFRecord index functions
    _datagen      data generation (put, put_async, put_many, generate_data, ...)
    torch         PyTorch datasets, imported on first use of s3dlio.torch or its names
    jax_tf        JAX / TensorFlow helpers, likewise

Errors: every failure is an ``s3dlio.Error`` (a RuntimeError, as the original raises); the
precise ones are also the builtin that names the cause (``NotFoundError`` is a
FileNotFoundError, ...).
"""

import importlib as _importlib

from . import _core
from ._core import (BytesView, Client, Error, InvalidArgumentError, NotFoundError,
                    PermissionDeniedError, RequestTimeoutError, ServerConnectionError,
                    crc32c)
from ._server import connect

__version__ = "0.9.1"

__all__ = ["BytesView", "Client", "Error", "NotFoundError", "PermissionDeniedError",
           "InvalidArgumentError", "ServerConnectionError", "RequestTimeoutError", "connect",
           "crc32c", "__version__"]

# Each module says what it adds to the package (its __all__); later modules do not shadow
# earlier ones.
for _name in ("_ops", "_aio", "_oplog", "_checkpoint", "_dataset", "_writers", "_formats",
              "_datagen"):
    try:
        _mod = _importlib.import_module("." + _name, __name__)
    except ModuleNotFoundError as _e:
        if _e.name != __name__ + "." + _name:
            raise
        continue  # a module this build does not have
    for _n in getattr(_mod, "__all__", ()):
        if _n not in __all__:
            globals()[_n] = getattr(_mod, _n)
            __all__.append(_n)
del _name, _mod, _n

# Imported on first use (PEP 562): PyTorch, JAX and TensorFlow are heavy, and optional.
_LAZY = {
    "torch": ("torch", None),
    "S3IterableDataset": ("torch", "S3IterableDataset"),
    "S3MapDataset": ("torch", "S3MapDataset"),
    "ObjectStoreIterableDataset": ("torch", "ObjectStoreIterableDataset"),
    "ObjectStoreMapDataset": ("torch", "ObjectStoreMapDataset"),
    "jax_tf": ("jax_tf", None),
    "S3JaxIterable": ("jax_tf", "S3JaxIterable"),
    "JaxIterable": ("jax_tf", "JaxIterable"),
    "make_tf_dataset": ("jax_tf", "make_tf_dataset"),
}
__all__ += [k for k in _LAZY if k not in ("torch", "jax_tf")]


def __getattr__(name):
    spec = _LAZY.get(name)
    if spec is None:
        raise AttributeError("module 's3dlio' has no attribute %r" % name)
    modname, attr = spec
    try:
        mod = _importlib.import_module("." + modname, __name__)
    except ImportError as e:
        raise AttributeError("s3dlio.%s needs %s, which cannot be imported here: %s"
                             % (name, "PyTorch" if modname == "torch" else "numpy", e)) from e
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
