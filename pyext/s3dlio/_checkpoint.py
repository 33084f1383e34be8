"""Checkpoints on any backend, through the s3dlio data calls only (put_bytes, get, get_into,
get_range, stat, list, delete), so they work for file://, direct://, s3://, az:// and gs://.

Layout under a base URI (REFERENCE.md, the original s3dlio's):

    shards/ckpt-{step}/rank-{r}.bin      one shard per rank
    manifests/ckpt-{step}.json           {format_version, framework, global_step, epoch,
                                          wall_time, world_size, status, user_meta,
                                          shards: [{rank, key, size, etag, checksum}]}
    latest.json                          {manifest_key, global_step, ts}

Differences from the original, on purpose (its defects):
- The checkpoint id is derived from the step alone (``ckpt-{step}``), so every rank of a step
  computes the same shard paths without talking to the others; the timestamp (``wall_time`` in
  the manifest, ``ts`` in latest.json) is chosen by rank 0 at finalize. Manifests named the
  original's way (``ckpt-{step}-{ts}.json``, shards under ``ckpt-{step}-{ts}/``) still load.
- Every shard record carries ``checksum: "crc32c:xxxxxxxx"`` (CRC32C of the shard's bytes) and
  readers verify it (and the size) before handing bytes out; a mismatch raises
  ``CheckpointError``. Manifests without a checksum (written by the original) are checked for
  size only.
- ``user_meta`` is kept; ``load_checkpoint_with_validation`` really validates.
- Commit order: shards, then the manifest with status "complete", then ``latest.json``. A crash
  at any point leaves ``latest.json`` naming the previous complete checkpoint, and the scan
  fallback only considers manifests with status "complete" whose shards all exist.
"""

import io
import json
import re
import time

from . import _core
from ._server import client as _client

__all__ = [
    "CheckpointError", "CheckpointStore", "CheckpointWriter", "CheckpointReader",
    "ObjectWriter", "ObjectReader", "crc32c", "save_checkpoint", "load_checkpoint",
    "load_checkpoint_with_validation", "open_writer", "open_reader",
]

FORMAT_VERSION = 1
LATEST = "latest.json"
_MANIFEST_RE = re.compile(r"(?:^|/)manifests/ckpt-(\d+)(?:-(\d+))?\.json$")
_SIDECAR = ".crc32c.json"

crc32c = _core.crc32c


class CheckpointError(_core.Error):
    """A checkpoint that is missing a part, incomplete, truncated or corrupted (its size or
    CRC32C does not match its manifest or stored checksum). The message names the URI."""


def _fmt_crc(c):
    return "crc32c:%08x" % c


def _parse_crc(s):
    if s is None or s == "":
        return None
    if isinstance(s, int):
        return s
    if isinstance(s, str) and s.startswith("crc32c:"):
        try:
            return int(s[7:], 16)
        except ValueError:
            pass
    raise CheckpointError("unknown checksum format %r (expected 'crc32c:xxxxxxxx')" % (s,))


def _base(uri):
    if not isinstance(uri, str) or not uri:
        raise TypeError("uri must be a non-empty str")
    return uri if uri.endswith("/") else uri + "/"


def _step_int(step, what="step"):
    try:
        s = int(step)
    except (TypeError, ValueError):
        raise TypeError("%s must be an int, not %r" % (what, step)) from None
    if s < 0 or s != step:
        raise ValueError("%s must be an int >= 0, got %r" % (what, step))
    return s


def _verify(uri, view_or_buf, nbytes, rec):
    """Checks nbytes and the CRC32C of the bytes against a shard record."""
    size = rec.get("size")
    if size is not None and nbytes != size:
        raise CheckpointError("%s: truncated or resized shard: %d bytes, the manifest says %d"
                              % (uri, nbytes, size))
    want = _parse_crc(rec.get("checksum"))
    if want is not None:
        got = crc32c(memoryview(view_or_buf).cast("B")[:nbytes])
        if got != want:
            raise CheckpointError("%s: corrupted shard: CRC32C %08x, the manifest says %08x"
                                  % (uri, got, want))


def _put_json(uri, obj):
    _client().put_bytes(uri, json.dumps(obj, sort_keys=True, indent=1).encode())


def _get_json(uri):
    v = _client().get(uri)
    try:
        return json.loads(bytes(v).decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError("%s: not valid JSON: %s" % (uri, e)) from None


class CheckpointWriter:
    """Writes the shards of distributed checkpoints (one writer per rank) and, on rank 0,
    the manifest and the latest pointer. Ranks need not talk to each other: shard paths
    depend on the step and rank only."""

    def __init__(self, uri, world_size=1, rank=0):
        self.base = _base(uri)
        self.world_size = _step_int(world_size, "world_size")
        self.rank = _step_int(rank, "rank")
        if self.world_size < 1 or self.rank >= self.world_size:
            raise ValueError("need 0 <= rank < world_size, got rank=%r world_size=%r"
                             % (rank, world_size))

    # paths
    @staticmethod
    def checkpoint_id(step):
        return "ckpt-%d" % _step_int(step)

    def shard_key(self, step, rank=None):
        return "shards/%s/rank-%d.bin" % (self.checkpoint_id(step),
                                          self.rank if rank is None else rank)

    def manifest_key(self, step):
        return "manifests/%s.json" % self.checkpoint_id(step)

    def save_distributed_shard(self, step, epoch, framework, data):
        """Stores this rank's shard for step from data (any contiguous buffer: bytes,
        bytearray, memoryview, numpy array, BytesView), sent from the caller's buffer without
        a copy; the server streams it to the backend (multipart, block list or resumable
        upload for large shards) and answers only once the whole object is stored and its
        size and CRC32C checked. Returns the shard record for the manifest:
        {rank, key, size, etag, checksum, epoch, framework}."""
        step = _step_int(step)
        key = self.shard_key(step)
        mv = memoryview(data)
        if not mv.contiguous:
            raise ValueError("data must be a contiguous buffer")
        size = mv.nbytes
        checksum = crc32c(mv)  # of the caller's bytes, before they travel
        c = _client()
        c.put_bytes(self.base + key, mv)
        info = c.stat(self.base + key)
        if info["size"] != size:  # a truncated upload must not look complete
            raise CheckpointError("%s: stored %d bytes, wrote %d" % (self.base + key,
                                                                      info["size"], size))
        return {"rank": self.rank, "key": key, "size": size, "etag": info.get("etag"),
                "checksum": _fmt_crc(checksum), "epoch": epoch, "framework": framework}

    def open_shard(self, step, epoch=None, framework="torch"):
        """A file-like writer (write/seek/tell/close) whose bytes become this rank's shard
        for step when it is closed; its ``record`` is then the shard record. For
        ``torch.save(state, f)``; it holds the checkpoint in memory once (see ObjectWriter)."""
        return ObjectWriter(None, _on_close=lambda buf: self.save_distributed_shard(
            step, epoch, framework, buf))

    def finalize_distributed_checkpoint(self, step, epoch, framework, shard_records,
                                        user_meta=None):
        """On rank 0, after every rank saved its shard: checks that every rank's shard is
        there with its recorded size, writes the manifest (status "complete", every shard's
        size and CRC32C) and then, last, latest.json. Returns the manifest key."""
        step = _step_int(step)
        recs = sorted((dict(r) for r in shard_records), key=lambda r: r["rank"])
        ranks = [r["rank"] for r in recs]
        if ranks != list(range(self.world_size)):
            raise CheckpointError("%s: step %d: need one shard record per rank 0..%d, got "
                                  "ranks %r" % (self.base, step, self.world_size - 1, ranks))
        c = _client()
        shards = []
        for r in recs:
            if r.get("key") != self.shard_key(step, r["rank"]):
                raise CheckpointError("%s: step %d: rank %d's record names %r, expected %r"
                                      % (self.base, step, r["rank"], r.get("key"),
                                         self.shard_key(step, r["rank"])))
            try:
                info = c.stat(self.base + r["key"])
            except FileNotFoundError:
                raise CheckpointError("%s%s: rank %d's shard is missing"
                                      % (self.base, r["key"], r["rank"])) from None
            if info["size"] != r["size"]:
                raise CheckpointError("%s%s: %d bytes stored, the record says %d"
                                      % (self.base, r["key"], info["size"], r["size"]))
            shards.append({"rank": r["rank"], "key": r["key"], "size": r["size"],
                           "etag": r.get("etag"), "checksum": r.get("checksum")})
        ts = int(time.time())
        manifest = {"format_version": FORMAT_VERSION, "framework": framework,
                    "global_step": step, "epoch": epoch, "wall_time": time.time(),
                    "world_size": self.world_size, "shards": shards, "status": "complete",
                    "user_meta": user_meta if user_meta is not None else {}}
        mkey = self.manifest_key(step)
        _put_json(self.base + mkey, manifest)
        _put_json(self.base + LATEST, {"manifest_key": mkey, "global_step": step, "ts": ts})
        return mkey


class CheckpointReader:
    """Reads checkpoints written by CheckpointWriter (or laid out as the original's)."""

    def __init__(self, uri):
        self.base = _base(uri)

    def _manifests(self):
        """[(step, ts, key)] of the manifests under base."""
        out = []
        try:
            uris = _client().list(self.base + "manifests/", True)
        except FileNotFoundError:
            return out
        for u in uris:
            if not u.startswith(self.base):
                continue
            m = _MANIFEST_RE.search(u[len(self.base):])
            if m:
                out.append((int(m.group(1)), int(m.group(2) or 0), u[len(self.base):]))
        out.sort()
        return out

    def load_manifest(self, key_or_step):
        """The manifest (a dict) for a manifest key or a step."""
        if isinstance(key_or_step, int):
            keys = [k for s, _, k in self._manifests() if s == key_or_step]
            if not keys:
                raise FileNotFoundError("%s: no checkpoint for step %d" % (self.base,
                                                                           key_or_step))
            key_or_step = keys[-1]
        m = _get_json(self.base + key_or_step)
        m.setdefault("manifest_key", key_or_step)
        return m

    def _complete(self, m):
        if m.get("status") != "complete":
            return False
        c = _client()
        for s in m.get("shards", []):
            try:
                info = c.stat(self.base + s["key"])
            except FileNotFoundError:
                return False
            if s.get("size") is not None and info["size"] != s["size"]:
                return False
        return len(m.get("shards", [])) == m.get("world_size", len(m.get("shards", [])))

    def load_latest_manifest(self):
        """The manifest named by latest.json; when latest.json is missing, unreadable or
        names a manifest that is not complete, the complete manifest of the highest step.
        None when there is no complete checkpoint."""
        try:
            latest = _get_json(self.base + LATEST)
            m = self.load_manifest(latest["manifest_key"])
            if m.get("status") == "complete":
                return m
        except (FileNotFoundError, CheckpointError, KeyError, TypeError):
            pass
        for _, _, key in reversed(self._manifests()):
            try:
                m = self.load_manifest(key)
            except (FileNotFoundError, CheckpointError):
                continue
            if self._complete(m):
                return m
        return None

    @staticmethod
    def _shard(manifest, rank):
        if manifest is None:
            raise ValueError("manifest is None (no checkpoint)")
        for s in manifest.get("shards", []):
            if s.get("rank") == rank:
                return s
        raise ValueError("the manifest of step %r has no shard for rank %r"
                         % (manifest.get("global_step"), rank))

    def shard_uri(self, manifest, rank):
        return self.base + self._shard(manifest, rank)["key"]

    def read_shard_by_rank(self, manifest, rank):
        """rank's shard as a BytesView (zero-copy), its size and CRC32C verified against the
        manifest (CheckpointError when they do not match)."""
        rec = self._shard(manifest, rank)
        uri = self.base + rec["key"]
        view = _client().get(uri)
        _verify(uri, view, len(view), rec)
        return view

    def read_shard_into(self, manifest, rank, buffer):
        """Receives rank's shard into buffer (any writable C-contiguous buffer of at least
        the shard's size), verifies size and CRC32C; returns the number of bytes."""
        rec = self._shard(manifest, rank)
        uri = self.base + rec["key"]
        n = _client().get_into(uri, buffer)
        _verify(uri, buffer, n, rec)
        return n

    def open_shard(self, manifest, rank, verify=True):
        """A file-like reader (read/readinto/seek/tell) of rank's shard, for ``torch.load``;
        bytes are fetched by ranges on demand. verify=True checks the whole shard's CRC32C
        when the reads covered it in order (see ObjectReader)."""
        rec = self._shard(manifest, rank)
        return ObjectReader(self.base + rec["key"], size=rec.get("size"),
                            checksum=_parse_crc(rec.get("checksum")) if verify else None)


class CheckpointStore:
    """Checkpoints under a base URI (any backend). ``save``/``load_latest`` for one rank;
    ``writer(world_size, rank)`` and ``reader()`` for distributed checkpoints.
    strategy and multipart_threshold are accepted for compatibility with the original: the
    server chooses the upload method for each backend."""

    def __init__(self, uri, strategy=None, multipart_threshold=None):
        self.base = _base(uri)
        self.strategy = strategy
        self.multipart_threshold = multipart_threshold

    def writer(self, world_size=1, rank=0):
        return CheckpointWriter(self.base, world_size, rank)

    def reader(self):
        return CheckpointReader(self.base)

    def save(self, step, data, epoch=None, user_meta=None, framework="bytes"):
        """One-rank checkpoint: the shard, the manifest, then latest.json. Returns the
        manifest key."""
        w = self.writer(1, 0)
        rec = w.save_distributed_shard(step, epoch, framework, data)
        return w.finalize_distributed_checkpoint(step, epoch, framework, [rec], user_meta)

    def load_latest(self):
        """Rank 0's shard of the latest complete checkpoint as a BytesView (zero-copy,
        size and CRC32C verified), or None when there is none."""
        r = self.reader()
        m = r.load_latest_manifest()
        if m is None:
            return None
        return r.read_shard_by_rank(m, 0)

    def load(self, step, rank=0):
        r = self.reader()
        return r.read_shard_by_rank(r.load_manifest(_step_int(step)), rank)

    def latest_manifest(self):
        return self.reader().load_latest_manifest()

    def list_checkpoints(self):
        """[{step, manifest_key, status, epoch, world_size, wall_time, user_meta}] sorted by
        step (one entry per manifest)."""
        r = self.reader()
        out = []
        for step, _, key in r._manifests():
            try:
                m = r.load_manifest(key)
            except (FileNotFoundError, CheckpointError):
                continue
            out.append({"step": step, "manifest_key": key, "status": m.get("status"),
                        "epoch": m.get("epoch"), "world_size": m.get("world_size"),
                        "wall_time": m.get("wall_time"), "user_meta": m.get("user_meta")})
        return out

    def delete_checkpoint(self, step):
        """Deletes step's checkpoint. latest.json is moved first (to the newest other
        complete checkpoint, or removed), so it never names a deleted checkpoint; then the
        manifest, then the shards. Returns True when something was deleted."""
        step = _step_int(step)
        r = self.reader()
        c = _client()
        keys = [k for s, _, k in r._manifests() if s == step]
        try:
            latest = _get_json(self.base + LATEST)
        except (FileNotFoundError, CheckpointError):
            latest = None
        if latest is not None and (latest.get("global_step") == step
                                   or latest.get("manifest_key") in keys):
            repl = None
            for s, _, k in reversed(r._manifests()):
                if s == step:
                    continue
                try:
                    m = r.load_manifest(k)
                except (FileNotFoundError, CheckpointError):
                    continue
                if r._complete(m):
                    repl = (s, k)
                    break
            if repl is None:
                c.delete(self.base + LATEST)
            else:
                _put_json(self.base + LATEST, {"manifest_key": repl[1],
                                               "global_step": repl[0],
                                               "ts": int(time.time())})
        shard_keys = set()
        for k in keys:
            try:
                m = r.load_manifest(k)
                shard_keys.update(s["key"] for s in m.get("shards", []))
            except (FileNotFoundError, CheckpointError):
                pass
            try:
                c.delete(self.base + k)
            except FileNotFoundError:
                pass
        prefix = self.base + "shards/ckpt-%d/" % step
        try:
            for u in c.list(prefix, True):
                if not u.endswith("/"):
                    shard_keys.add(u[len(self.base):])
        except FileNotFoundError:
            pass
        for k in shard_keys:
            try:
                c.delete(self.base + k)
            except FileNotFoundError:
                pass
        return bool(keys or shard_keys)


# ---- file-like objects ----

class ObjectWriter(io.RawIOBase):
    """A writable, seekable file whose bytes are stored at uri by close() (one put_bytes,
    sent from this writer's buffer without a further copy). For ``torch.save(obj, f)``.

    Memory: the client has no streaming upload yet, so the writer holds the whole object in
    one growing bytearray until close(): the checkpoint once in memory, not twice (no
    BytesIO + getvalue() copy). Nothing is stored if close() is not reached (or on an
    exception inside ``with``): a partial object is never written."""

    def __init__(self, uri, _on_close=None):
        super().__init__()
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
        if self.closed:
            raise ValueError("write to a closed ObjectWriter")
        mv = memoryview(b).cast("B")
        n = len(mv)
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
        size = self._pos if size is None else size
        del self._buf[size:]
        return size

    def flush(self):
        pass

    def close(self):
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


# ---- conveniences ----

def _is_checkpoint_base(uri):
    c = _client()
    b = _base(uri)
    try:
        c.stat(b + LATEST)
        return True
    except FileNotFoundError:
        pass
    return bool(CheckpointReader(b)._manifests())


def save_checkpoint(uri, data, step=None, epoch=None, user_meta=None):
    """With step: CheckpointStore(uri).save(step, data, epoch, user_meta). Without: stores
    data at the object uri, then its checksum beside it at ``uri + '.crc32c.json'`` (size and
    CRC32C), so load_checkpoint_with_validation(uri) can verify it."""
    if step is not None:
        return CheckpointStore(uri).save(step, data, epoch=epoch, user_meta=user_meta)
    mv = memoryview(data)
    c = _client()
    c.put_bytes(uri, mv)
    _put_json(uri + _SIDECAR, {"size": mv.nbytes, "checksum": _fmt_crc(crc32c(mv)),
                               "user_meta": user_meta or {}})
    return uri


def _load_validated(uri):
    if _is_checkpoint_base(uri):
        r = CheckpointReader(uri)
        m = r.load_latest_manifest()
        if m is None:
            raise CheckpointError("%s: no complete checkpoint" % uri)
        return r.read_shard_by_rank(m, 0)
    c = _client()
    try:
        rec = _get_json(uri + _SIDECAR)
    except FileNotFoundError:
        rec = None
    view = c.get(uri)
    if rec is None:
        raise CheckpointError("%s: cannot validate: no manifest (latest.json, manifests/) "
                              "and no stored checksum (%s)" % (uri, uri + _SIDECAR))
    _verify(uri, view, len(view), rec)
    return view


def load_checkpoint(uri):
    """The checkpoint at uri as a BytesView (zero-copy), validated as by
    load_checkpoint_with_validation: uri is a checkpoint base (rank 0's shard of the latest
    complete checkpoint) or an object saved by save_checkpoint (checked against its stored
    checksum)."""
    return _load_validated(uri)


def load_checkpoint_with_validation(uri):
    """As the seed: returns bytes (a copy). Validates the object's size and CRC32C against
    its manifest (uri a checkpoint base) or its stored checksum (uri an object saved by
    save_checkpoint); a corrupted, truncated or unverifiable checkpoint raises
    CheckpointError instead of loading."""
    return _load_validated(uri).to_bytes()
