"""File-like objects over stored objects, for ``torch.save(obj, f)`` / ``torch.load(f)``:
ObjectWriter (the bytes are stored when it is closed) and ObjectReader (ranges fetched on
demand, the whole object's CRC32C checked when read in order). Checkpoint shards use them
through CheckpointWriter.open_shard / CheckpointReader.open_shard."""

import io
import threading

from ._checkpoint_common import CheckpointError, crc32c
from ._server import client as _client

__all__ = ["ObjectWriter", "ObjectReader", "open_writer", "open_reader"]


class ObjectWriter(io.RawIOBase):
    """A writable, seekable file whose bytes are stored at uri by close() (one put_bytes,
    sent from this writer's buffer without a further copy). For ``torch.save(obj, f)``.

    Memory: the client has no streaming upload yet, so the writer holds the whole object in
    one growing bytearray until close(): the checkpoint once in memory, not twice (no
    BytesIO + getvalue() copy). Nothing is stored if close() is not reached (or on an
    exception inside ``with``): a partial object is never written. Calls from several threads
    are serialized (a lock): each write goes in whole, and a write that returned is in what
    close() stores (after close, write raises ValueError as files do)."""

    def __init__(self, uri, _on_close=None):
        super().__init__()
        self._lock = threading.Lock()
        self.uri = uri
        self._buf = bytearray()
        self._pos = 0
        self._on_close = _on_close
        self.record = None
        self._discard = False

    def writable(self):
        return True

    def seekable(self):
        return True

    def readable(self):
        return False

    def write(self, b):
        mv = memoryview(b).cast("B")
        n = len(mv)
        with self._lock:
            if self.closed:
                raise ValueError("write to a closed ObjectWriter")
            end = self._pos + n
            if self._pos == len(self._buf):
                self._buf += mv
            else:
                if end > len(self._buf):
                    self._buf.extend(bytes(end - len(self._buf)))
                self._buf[self._pos:end] = mv
            self._pos = end
        return n

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        with self._lock:
            if whence == io.SEEK_SET:
                pos = offset
            elif whence == io.SEEK_CUR:
                pos = self._pos + offset
            elif whence == io.SEEK_END:
                pos = len(self._buf) + offset
            else:
                raise ValueError("invalid whence %r" % (whence,))
            if pos < 0:
                raise ValueError("negative seek position %d" % pos)
            self._pos = pos
            return pos

    def truncate(self, size=None):
        with self._lock:
            size = self._pos if size is None else size
            del self._buf[size:]
            return size

    def flush(self):
        pass

    def close(self):
        with self._lock:
            if self.closed:
                return
            try:
                if not self._discard:
                    if self._on_close is not None:
                        self.record = self._on_close(self._buf)
                    else:
                        _client().put_bytes(self.uri, self._buf)
            finally:
                self._buf = bytearray()
                super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._discard = True
        self.close()


class ObjectReader(io.RawIOBase):
    """A readable, seekable file over the object at uri, fetched by ranges on demand
    (get_into straight into the caller's buffer for large reads; small reads are served from
    a read-ahead block of ``block_size`` bytes). For ``torch.load(f)``: memory holds what the
    loader asks for, not a second copy of the object.

    Every range is checked by the transport (CRC32C per reply). With ``checksum`` (a CRC32C
    int), reading the object in order from start to end also verifies the whole object's
    CRC32C and raises CheckpointError at the end on a mismatch; seeks break that chain (then
    use CheckpointReader.read_shard_into for a verified whole-object read)."""

    def __init__(self, uri, size=None, checksum=None, block_size=1 << 20):
        super().__init__()
        self.uri = uri
        self.size = _client().stat(uri)["size"] if size is None else size
        self._pos = 0
        self._block = b""
        self._block_off = 0
        self._bs = block_size
        self._want_crc = checksum
        self._crc = 0
        self._crc_pos = 0
        self._crc_ok = checksum is not None

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError("invalid whence %r" % (whence,))
        if pos < 0:
            raise ValueError("negative seek position %d" % pos)
        self._pos = pos
        return pos

    def _track(self, mv, pos):
        if not self._crc_ok:
            return
        if pos != self._crc_pos:
            if pos > self._crc_pos:
                self._crc_ok = False  # a gap: cannot verify the whole object
            elif pos + len(mv) > self._crc_pos:  # overlap: take the new part only
                mv = mv[self._crc_pos - pos:]
                pos = self._crc_pos
            else:
                return
        if pos == self._crc_pos:
            self._crc = crc32c(mv, self._crc)
            self._crc_pos += len(mv)
            if self._crc_pos == self.size and self._crc != self._want_crc:
                raise CheckpointError("%s: corrupted object: CRC32C %08x, expected %08x"
                                      % (self.uri, self._crc, self._want_crc))

    def readinto(self, b):
        mv = memoryview(b).cast("B")
        n = min(len(mv), max(0, self.size - self._pos))
        if n == 0:
            return 0
        pos = self._pos
        bo = self._block_off
        if bo <= pos and pos + n <= bo + len(self._block):
            mv[:n] = memoryview(self._block)[pos - bo:pos - bo + n]
        elif n >= self._bs:
            got = _client().get_into(self.uri, mv[:n], pos, n)
            if got != n:
                raise CheckpointError("%s: short read at %d: %d of %d bytes"
                                      % (self.uri, pos, got, n))
        else:
            ln = min(self._bs, self.size - pos)
            self._block = _client().get(self.uri, pos, ln)
            self._block_off = pos
            if len(self._block) != ln:
                raise CheckpointError("%s: short read at %d: %d of %d bytes"
                                      % (self.uri, pos, len(self._block), ln))
            mv[:n] = memoryview(self._block)[:n]
        self._track(mv[:n], pos)
        self._pos = pos + n
        return n

    def read(self, size=-1):
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        buf = bytearray(min(size, max(0, self.size - self._pos)))
        n = self.readinto(buf)
        del buf[n:]
        return bytes(buf)

    def readall(self):
        return self.read(-1)


def open_writer(uri):
    """A file-like writer whose bytes are stored at uri on close (see ObjectWriter)."""
    return ObjectWriter(uri)


def open_reader(uri, checksum=None, block_size=1 << 20):
    """A file-like reader of the object at uri, fetched by ranges (see ObjectReader)."""
    return ObjectReader(uri, checksum=checksum, block_size=block_size)
