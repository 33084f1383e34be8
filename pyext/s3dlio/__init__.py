"""s3dlio: the Python API of s3dlio 0.9.1, served by s3dliod.

Object bytes arrive straight into buffers owned by ``BytesView`` objects (zero-copy through the
buffer protocol: ``np.frombuffer(view.memoryview())``) or into the caller's own buffer
(``get_into``). Which server: ``connect(url)`` if called, else ``S3DLIO_SERVER``, else a private
``s3dliod`` started on first use (see ``s3dlio._server``).

This layer stays thin: argument checks and the URI bookkeeping of list/delete; every byte moves
in the C extension with the GIL released.
"""

import re as _re

from ._core import BytesView, Client, Error, crc32c
from ._server import connect
from ._server import client as _client
from ._checkpoint import (CheckpointError, CheckpointReader, CheckpointStore, CheckpointWriter,
                          ObjectReader, ObjectWriter, load_checkpoint,
                          load_checkpoint_with_validation, open_reader, open_writer,
                          save_checkpoint)
from ._dataset import PyBytesAsyncDataLoader, PyDataset, create_async_loader, create_dataset

__version__ = "0.9.1"

__all__ = [
    "BytesView", "Client", "Error", "connect", "delete", "exists", "get", "get_into",
    "get_many", "get_object", "get_range", "list", "prefetch", "put_bytes", "stat", "stats",
    "__version__", "crc32c",
    "CheckpointError", "CheckpointReader", "CheckpointStore", "CheckpointWriter",
    "ObjectReader", "ObjectWriter", "load_checkpoint", "load_checkpoint_with_validation",
    "open_reader", "open_writer", "save_checkpoint",
    "PyBytesAsyncDataLoader", "PyDataset", "create_async_loader", "create_dataset",
]


def get(uri):
    """The whole object at uri, as a BytesView (zero-copy)."""
    return _client().get(uri)


def get_range(uri, offset, length=None):
    """length bytes of the object at uri from offset (None: to the end), as a BytesView.
    An offset past the end raises ValueError."""
    if offset is None:
        raise TypeError("offset must be an int, not None")
    return _client().get(uri, offset, length)


def get_many(uris, max_in_flight=64):
    """[(uri, BytesView)] for every URI, in input order, fetched pipelined with at most
    max_in_flight requests outstanding. The first failure (in input order) raises, naming
    its URI."""
    return _client().get_many(uris, max_in_flight)


def prefetch(uris, max_in_flight=64):
    """Warm the server's object cache for a coming epoch: the server fetches every URI into its
    cache (one backend read per object, shared with any GET of it already running) and this
    returns once all are cached, with the number of bytes cached. URIs the server does not
    cache (local files, a server without --cache-mem, objects over its size limit) count 0.
    With several servers, each URI warms the server that will serve it. The first failure
    (in input order) raises, naming its URI."""
    return _client().prefetch(uris, max_in_flight)


def get_object(bucket, key):
    """get(f"s3://{bucket}/{key}") (the legacy S3 call)."""
    if not isinstance(bucket, str) or not isinstance(key, str):
        raise TypeError("bucket and key must be str")
    if not bucket or "/" in bucket:
        raise ValueError("bucket must be a non-empty name without '/': %r" % bucket)
    if not key:
        raise ValueError("key must not be empty")
    return _client().get("s3://" + bucket + "/" + key)


def get_into(uri, buffer, offset=0, length=None):
    """Receives the object at uri (or length bytes from offset) into buffer, any writable
    C-contiguous buffer; returns the bytes written. A buffer too small raises ValueError."""
    return _client().get_into(uri, buffer, offset, length)


def put_bytes(uri, data):
    """Stores data (any contiguous buffer, sent without a copy) at uri; returns once the
    server stored and verified the whole object."""
    _client().put_bytes(uri, data)


def stat(uri):
    """dict(size, last_modified, mtime_ns, etag, content_type, metadata) of the object."""
    return _client().stat(uri)


def exists(uri):
    """True when an object is at uri."""
    try:
        _client().stat(uri)
    except FileNotFoundError:
        return False
    return True


def list(uri, recursive=False, pattern=None):  # noqa: A001 (the s3dlio name)
    """Full URIs under uri, sorted. Non-recursive listings include "sub-directories" as URIs
    ending in '/'. pattern: a regex (str or compiled) searched in each URI."""
    if pattern is not None and not hasattr(pattern, "search"):
        if not isinstance(pattern, str):
            raise TypeError("pattern must be a str regex or None, not %s"
                            % type(pattern).__name__)
        try:
            pattern = _re.compile(pattern)
        except _re.error as e:
            raise ValueError("pattern is not a valid regex: %r: %s" % (pattern, e)) from None
    uris = _client().list(uri, bool(recursive))
    if pattern is not None:
        uris = [u for u in uris if pattern.search(u)]
    uris.sort()
    return uris


def delete(uri, recursive=False):
    """Deletes the object at uri; recursive=True deletes every object under the prefix."""
    c = _client()
    if not recursive:
        c.delete(uri)
        return
    for u in sorted(c.list(uri, True)):
        if u.endswith("/"):
            continue
        try:
            c.delete(u)
        except FileNotFoundError:
            pass  # deleted meanwhile: the goal holds


def stats():
    """Counters of this process's client: requests, errors, bytes_received, bytes_direct,
    bytes_copied, bytes_sent, connects, reconnects, busy_retries."""
    return _client().stats()

