"""Writers that build one object from many writes: the original's streaming writers
(PyWriterOptions, PyObjectWriter and create_{s3,azure,gcs,filesystem,direct_filesystem}_writer,
optionally zstd-compressed under a ".zst" name) and MultipartUploadWriter (write, or
reserve/commit straight into the writer's buffer), on every scheme.

Memory: the client has no streamed upload yet, so a writer holds the object (compressed, when
asked) in one growing bytearray and stores it with a single put_bytes, sent from that buffer
without a further copy, when it is finalized / closed. Nothing is stored before that, and
nothing at all if finalize() / close() is never reached (or, for MultipartUploadWriter, on an
exception inside ``with``): a partial object is never written.

Threads: each writer serializes its calls with a lock (the original raised "already
borrowed" instead), so chunks written from several threads at once go in whole, one after
another, and a write either lands in the stored object or raises because the writer was
finalized / closed first.
"""

import threading
import time

from . import _core
from ._server import client as _client

__all__ = ["PyWriterOptions", "PyObjectWriter", "create_s3_writer", "create_azure_writer",
           "create_gcs_writer", "create_filesystem_writer", "create_direct_filesystem_writer",
           "MultipartUploadWriter"]

_ZSTD_EXT = ".zst"
_ZSTD_DEFAULT_LEVEL = 3
_ZSTD_MAX_LEVEL = 22            # libzstd's maximum: higher levels are clamped, as zstd does
_ZSTD_MIN_LEVEL = -(1 << 17)    # libzstd's minimum (the fastest "negative" levels)
_MIB = 1 << 20
_MIN_PART_SIZE = 5 * _MIB       # S3's minimum part size (the original's check)
_DEFAULT_PART_SIZE = 16 * _MIB
_DEFAULT_MAX_IN_FLIGHT = 16
_ZERO_BLOCK = bytes(_MIB)       # reserve() grows the buffer from this, a megabyte at a time


def _data(data, what="data"):
    """data as a 1-D memoryview of bytes: any contiguous buffer (bytes, bytearray,
    memoryview, numpy array, BytesView); str is refused."""
    if isinstance(data, str):
        raise TypeError("%s expects bytes-like (bytes, bytearray, memoryview, NumPy buffer), "
                        "not str" % what)
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError("%s expects bytes-like (bytes, bytearray, memoryview, NumPy buffer), "
                        "not %s" % (what, type(data).__name__)) from None
    if not mv.c_contiguous:
        raise _core.InvalidArgumentError("%s: the buffer must be C-contiguous" % what)
    return mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv


def _object_uri(uri, what):
    """uri if it names an object (scheme://bucket/key, file:///path), else
    InvalidArgumentError naming it."""
    if not isinstance(uri, str):
        raise TypeError("uri must be a str, not %s" % type(uri).__name__)
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme or not rest or rest.endswith("/"):
        raise _core.InvalidArgumentError(
            "%s: %r is not an object URI (scheme://bucket/key)" % (what, uri))
    if scheme not in ("file", "direct") and ("/" not in rest or rest.startswith("/")):
        raise _core.InvalidArgumentError("%s: %r has no key after the bucket" % (what, uri))
    return uri


def _check_uri(uri, schemes, fn):
    if isinstance(uri, str) and not uri.startswith(schemes):
        raise _core.InvalidArgumentError(
            "%s expects a %s URI, got %r" % (fn, " or ".join(schemes), uri))
    return _object_uri(uri, fn)


class _Buffer:
    """One growing bytearray holding an object until it is stored. It grows in place (the
    allocator moves large blocks by remapping, not copying); if a view the caller still holds
    pins it, the bytes move once to a new bytearray instead."""

    def __init__(self):
        self.buf = bytearray()

    def __len__(self):
        return len(self.buf)

    def append(self, mv):
        try:
            self.buf += mv
        except BufferError:  # an old reserve() view is still alive: leave it its memory
            self.buf = bytearray(self.buf)
            self.buf += mv

    def grow(self, n):
        """Adds n zero bytes; returns the offset of the first."""
        start = len(self.buf)
        try:
            self._extend_zeros(n)
        except BufferError:
            self.buf = bytearray(self.buf)
            self._extend_zeros(n)
        return start

    def _extend_zeros(self, n):
        while n > 0:
            k = min(n, len(_ZERO_BLOCK))
            self.buf += _ZERO_BLOCK[:k] if k < len(_ZERO_BLOCK) else _ZERO_BLOCK
            n -= k

    def truncate(self, size):
        try:
            del self.buf[size:]
        except BufferError:
            self.buf = bytearray(memoryview(self.buf)[:size])

    def take(self):
        buf, self.buf = self.buf, bytearray()
        return buf


# ---- the original's streaming writers ----

class PyWriterOptions:
    """Options of a streaming writer: with_compression("zstd" | "none", level=None) and
    with_buffer_size(size). Both change the options in place and return None, as the
    original's."""

    def __init__(self):
        self.compression = "none"
        self.compression_level = None
        self.buffer_size = None

    def with_compression(self, compression_type, level=None):
        """"zstd" (level: default 3, clamped to zstd's range as zstd does) or "none" (any
        case); anything else raises InvalidArgumentError (a RuntimeError and ValueError)."""
        if not isinstance(compression_type, str):
            raise TypeError("compression_type must be a str, not %s"
                            % type(compression_type).__name__)
        kind = compression_type.lower()
        if kind == "zstd":
            if level is None:
                level = _ZSTD_DEFAULT_LEVEL
            elif isinstance(level, bool) or not isinstance(level, int):
                raise TypeError("level must be an int or None, not %s" % type(level).__name__)
            self.compression = "zstd"
            self.compression_level = max(_ZSTD_MIN_LEVEL, min(_ZSTD_MAX_LEVEL, level))
        elif kind == "none":
            self.compression = "none"
            self.compression_level = None
        else:
            raise _core.InvalidArgumentError(
                "Unsupported compression type: %s" % compression_type)

    def with_buffer_size(self, size):
        """Accepted for compatibility: the writer holds the whole object until finalize()."""
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError("size must be an int, not %s" % type(size).__name__)
        if size < 0:
            raise _core.InvalidArgumentError("size must be >= 0, got %d" % size)
        self.buffer_size = size

    def __repr__(self):
        return ("PyWriterOptions(compression=%r, level=%r, buffer_size=%r)"
                % (self.compression, self.compression_level, self.buffer_size))


class PyObjectWriter:
    """A streaming writer made by create_*_writer: write_chunk() / write_owned_bytes() any
    number of times, then finalize() stores the object (at ``uri``, which has ".zst" appended
    when compressing) and returns (bytes_written, compressed_bytes).

    Nothing is stored until finalize(), and nothing if it is never called (the client has no
    streamed upload yet: the writer holds the object, compressed when asked, in memory).
    Calls from several threads are serialized (see the module doc)."""

    def __init__(self, uri, options=None):
        opts = options if options is not None else PyWriterOptions()
        if not isinstance(opts, PyWriterOptions):
            raise TypeError("options must be a PyWriterOptions or None, not %s"
                            % type(opts).__name__)
        self._zstd = None
        if opts.compression == "zstd":
            self._zstd = _core.ZstdCompressor(opts.compression_level)
            if not uri.endswith(_ZSTD_EXT):
                uri += _ZSTD_EXT
        self.uri = uri
        self._lock = threading.Lock()
        self._buf = _Buffer()
        self._written = 0
        self._crc = 0
        self._sealed = False  # finalize() began: the compressed frame is ended
        self._final = None    # (bytes_written, compressed_bytes) once finalized

    def _live(self):
        if self._sealed:
            raise _core.Error("Writer has been finalized")

    def write_chunk(self, data):
        """Adds data (any bytes-like object) to the object."""
        mv = _data(data, "write_chunk")
        with self._lock:
            self._live()
            self._crc = _core.crc32c(mv, self._crc)
            self._written += len(mv)
            if self._zstd is None:
                self._buf.append(mv)
            else:
                out = self._zstd.compress(mv)
                if out:
                    self._buf.append(out)

    def write_owned_bytes(self, data):
        """write_chunk(data) (the original's variant that takes ownership; same here)."""
        self.write_chunk(data)

    def finalize(self):
        """Stores the object; returns (bytes_written, compressed_bytes), compressed_bytes
        being the stored size. A second call raises Error (a RuntimeError)."""
        with self._lock:
            if self._final is not None:
                raise _core.Error("Writer already finalized")
            if not self._sealed:
                self._sealed = True
                if self._zstd is not None:
                    self._buf.append(self._zstd.flush())
                    self._zstd = None
            buf = self._buf.buf
            _client().put_bytes(self.uri, buf)  # on failure finalize() may be called again
            self._final = (self._written, len(buf))
            self._buf.take()
            return self._final

    def bytes_written(self):
        """Bytes given to the writer (before compression)."""
        return self._written

    def compressed_bytes(self):
        """Bytes of the object as stored so far: the compressed size with zstd (growing as
        the compressor emits blocks; the final size after finalize()), else bytes_written."""
        if self._final is not None:
            return self._final[1]
        return len(self._buf)

    def checksum(self):
        """"crc32c:xxxxxxxx": the CRC32C of the bytes given (before compression), also after
        finalize()."""
        return "crc32c:%08x" % self._crc

    def __repr__(self):
        state = "finalized" if self._final is not None else "open"
        return "<PyObjectWriter %s %s written=%d>" % (self.uri, state, self._written)


def create_s3_writer(uri, options=None):
    """A PyObjectWriter for an s3:// object."""
    return PyObjectWriter(_check_uri(uri, ("s3://",), "create_s3_writer"), options)


def create_azure_writer(uri, options=None):
    """A PyObjectWriter for an az:// blob."""
    return PyObjectWriter(_check_uri(uri, ("az://",), "create_azure_writer"), options)


def create_gcs_writer(uri, options=None):
    """A PyObjectWriter for a gs:// object (not in the original, which had no GCS writer)."""
    return PyObjectWriter(_check_uri(uri, ("gs://", "gcs://"), "create_gcs_writer"), options)


def create_filesystem_writer(uri, options=None):
    """A PyObjectWriter for a file:// path."""
    return PyObjectWriter(_check_uri(uri, ("file://",), "create_filesystem_writer"), options)


def create_direct_filesystem_writer(uri, options=None):
    """A PyObjectWriter for a direct:// path (O_DIRECT on the server); a file:// URI is taken
    too, as the original."""
    return PyObjectWriter(_check_uri(uri, ("direct://", "file://"),
                                     "create_direct_filesystem_writer"), options)


# ---- MultipartUploadWriter ----

def _release(mv):
    """Ends the caller's reserve() view, so the buffer may grow again. A view the caller
    derived from it (np.frombuffer(mv)) keeps the memory pinned: the buffer then moves
    instead (_Buffer)."""
    try:
        mv.release()
    except BufferError:
        pass


def _opt_int(v, what, minimum):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("%s must be an int or None, not %s" % (what, type(v).__name__))
    if v < minimum:
        raise _core.InvalidArgumentError("%s must be >= %d, got %d" % (what, minimum, v))
    return v


class MultipartUploadWriter:
    """The original's streaming multipart uploader, for any URI: write(data) or
    reserve(size) -> writable memoryview, fill it, commit(nbytes); close() stores the object
    and returns {etag, total_bytes, parts, started_at, completed_at}.

    MultipartUploadWriter(bucket, key, ...) writes s3://bucket/key; from_uri(uri, ...) any
    scheme (file://, direct://, s3://, az://, gs://). part_size (default 16 MiB, at least
    5 MiB as S3 requires) sets how ``parts`` is counted: the number of part_size pieces of
    the object; the server picks its own upload method per backend. max_in_flight,
    content_type and abort_on_drop are accepted as the original's (the server sends no
    content type yet).

    Nothing is stored before close(), and nothing at all on abort(), on an exception inside
    ``with``, or if the writer is dropped unclosed (the client has no streamed upload yet:
    the object is held in one growing buffer; reserve() hands out a view of that buffer, so
    reserve/commit copies nothing). Calls from several threads are serialized (see the module
    doc); a reservation is the writer's until commit(), whichever thread made it."""

    def __init__(self, bucket, key, part_size=None, max_in_flight=None, content_type=None,
                 abort_on_drop=None):
        if not isinstance(bucket, str) or not isinstance(key, str):
            raise TypeError("bucket and key must be str")
        if not bucket or "/" in bucket:
            raise _core.InvalidArgumentError("bucket must be a name without '/': %r" % bucket)
        if not key:
            raise _core.InvalidArgumentError("key must not be empty")
        self._setup("s3://%s/%s" % (bucket, key), part_size, max_in_flight, content_type,
                    abort_on_drop)

    @classmethod
    def from_uri(cls, uri, part_size=None, max_in_flight=None, content_type=None,
                 abort_on_drop=None):
        """A writer for uri (any scheme the server serves)."""
        _object_uri(uri, "Multipart init failed")
        self = cls.__new__(cls)
        self._setup(uri, part_size, max_in_flight, content_type, abort_on_drop)
        return self

    def _setup(self, uri, part_size, max_in_flight, content_type, abort_on_drop):
        part_size = _opt_int(part_size, "part_size", 0)
        if part_size is not None and part_size < _MIN_PART_SIZE:
            raise _core.InvalidArgumentError(
                "Multipart init failed: part_size must be at least 5 MiB for S3 Multipart "
                "Upload (got %d)" % part_size)
        max_in_flight = _opt_int(max_in_flight, "max_in_flight", 1)
        if content_type is not None and not isinstance(content_type, str):
            raise TypeError("content_type must be a str or None")
        self.uri = uri
        self.part_size = part_size or _DEFAULT_PART_SIZE
        self.max_in_flight = max_in_flight or _DEFAULT_MAX_IN_FLIGHT
        self.content_type = content_type
        self.abort_on_drop = True if abort_on_drop is None else bool(abort_on_drop)
        self._lock = threading.Lock()
        self._buf = _Buffer()
        self._pending = None   # (offset, size, memoryview) between reserve() and commit()
        self._closed = False
        self._started = time.time()

    def _live(self):
        if self._closed:
            raise _core.Error("writer is closed")

    def _no_pending(self, what):
        if self._pending is not None:
            raise _core.Error("%s called while a reserved buffer is pending; call commit() "
                              "first" % what)

    def write(self, data):
        """Appends data (any bytes-like object); returns the number of bytes accepted."""
        mv = _data(data, "write()")
        with self._lock:
            self._live()
            self._no_pending("write()")
            self._buf.append(mv)
        return len(mv)

    def reserve(self, size):
        """A writable memoryview of size bytes at the end of the object, in the writer's own
        buffer: fill it, then commit(nbytes). Only one may be pending; the view is released
        by commit()."""
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError("size must be an int, not %s" % type(size).__name__)
        if size < 0:
            raise _core.InvalidArgumentError("size must be >= 0, got %d" % size)
        with self._lock:
            self._live()
            self._no_pending("reserve()")
            start = self._buf.grow(size)
            mv = memoryview(self._buf.buf)[start:start + size]
            self._pending = (start, size, mv)
        return mv

    def commit(self, nbytes):
        """Keeps the first nbytes of the reserved buffer (the rest is dropped). nbytes past
        the reserved size raises InvalidArgumentError (a ValueError and RuntimeError) and
        leaves the reservation pending."""
        with self._lock:
            self._live()
            if self._pending is None:
                raise _core.Error("no pending buffer; call reserve() first")
            if isinstance(nbytes, bool) or not isinstance(nbytes, int):
                raise TypeError("nbytes must be an int, not %s" % type(nbytes).__name__)
            start, size, mv = self._pending
            if nbytes < 0 or nbytes > size:
                raise _core.InvalidArgumentError(
                    "commit(nbytes=%d) exceeds reserved size %d" % (nbytes, size))
            self._pending = None
            _release(mv)
            if nbytes < size:
                self._buf.truncate(start + nbytes)

    def flush(self):
        """Nothing to send early (the object is stored whole by close())."""
        with self._lock:
            self._live()

    @property
    def total_bytes(self):
        """Bytes committed so far."""
        with self._lock:
            return len(self._buf) - (self._pending[1] if self._pending else 0)

    def close(self):
        """Stores the object; returns {etag, total_bytes, parts, started_at, completed_at}
        (times in Unix seconds). A pending reserve() is dropped, not stored. A second call
        raises Error (a RuntimeError)."""
        with self._lock:
            if self._closed:
                raise _core.Error("writer already closed")
            if self._pending is not None:
                start, _, mv = self._pending
                self._pending = None
                _release(mv)
                self._buf.truncate(start)
            buf = self._buf.buf
            c = _client()
            c.put_bytes(self.uri, buf)  # on failure the writer stays open: close() may retry
            total = len(buf)
            self._closed = True
            self._buf.take()
        try:
            etag = c.stat(self.uri).get("etag")
        except _core.Error:
            etag = None  # stored and verified; only the etag lookup failed
        return {"etag": etag, "total_bytes": total, "parts": -(-total // self.part_size),
                "started_at": self._started, "completed_at": time.time()}

    def abort(self):
        """Drops everything written; nothing is stored. Harmless when closed already."""
        with self._lock:
            if self._pending is not None:
                _release(self._pending[2])
                self._pending = None
            self._closed = True
            self._buf.take()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._closed:
            return False
        if exc_type is not None:
            self.abort()  # an exception inside ``with``: store nothing (the original stored it)
        else:
            self.close()
        return False

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return "<MultipartUploadWriter %s %s total_bytes=%d>" % (self.uri, state,
                                                                  self.total_bytes)
