"""Writing checkpoints: CheckpointWriter (one per rank: its shard, and on rank 0 the manifest
and latest.json) and CheckpointStream (a shard written chunk by chunk).

Ranks need not talk to each other: a shard's key depends on the step, the rank, the store's
strategy and a nonce drawn for each save (so a second save of a step never overwrites the
shards a complete manifest names); every record carries its key to rank 0, which chooses the
timestamp when it finalizes. Commit order: every shard, then the manifest (status
"complete", each shard's size and CRC32C), then latest.json, so a crash at any point leaves
latest.json naming a complete checkpoint.
"""

import collections.abc
import threading

from . import _core
from ._checkpoint_common import (FORMAT_VERSION, LATEST, CheckpointError, base_uri,
                                 buffer_arg, crc32c, epoch_arg, fmt_crc, framework_arg,
                                 json_meta, level_arg, manifest_key, new_nonce, now_stamps,
                                 put_json, shard_key, shard_key_matches, strategy_arg, uint)
from ._checkpoint_files import ObjectWriter
from ._server import client as _client

__all__ = ["CheckpointWriter", "CheckpointStream"]


class CheckpointWriter:
    """Writes rank's shards of distributed checkpoints under a base URI and, on rank 0, their
    manifests and latest.json. ``store.writer(world_size, rank)`` makes one with the store's
    strategy and compression; ``CheckpointWriter(uri_or_store, world_size=1, rank=0)`` too."""

    def __init__(self, uri, world_size=1, rank=0, strategy=None, compression_level=None,
                 multipart_threshold=None):
        if not isinstance(uri, str) and hasattr(uri, "base") and hasattr(uri, "strategy"):
            store = uri  # a CheckpointStore: its base and settings
            uri, strategy = store.base, store.strategy
            compression_level = store.compression_level
            multipart_threshold = store.multipart_threshold
        self.base = base_uri(uri)
        self.world_size = uint(world_size, "world_size")
        self.rank = uint(rank, "rank")
        if self.world_size < 1 or self.rank >= self.world_size:
            raise _core.InvalidArgumentError("need 0 <= rank < world_size, got rank=%d "
                                             "world_size=%d" % (self.rank, self.world_size))
        self.strategy = strategy_arg(strategy)
        self.compression_level = level_arg(compression_level)
        self.multipart_threshold = multipart_threshold

    def __repr__(self):
        return "PyCheckpointWriter(%r, world_size=%d, rank=%d, strategy=%r)" % (
            self.base, self.world_size, self.rank, self.strategy)

    # ---- keys ----
    @staticmethod
    def checkpoint_id(step):
        return "ckpt-%d" % uint(step, "step")

    def shard_key(self, step, rank=None):
        """A key (relative to the base) for one save of rank's shard for step (default: this
        rank): shards/[rr/XX/|bin/BBBB/]ckpt-{step}/rank-{r}.{nonce}.bin[.zst], with a new
        nonce on every call, so no save overwrites another's shard (the record carries the
        key)."""
        rank = self.rank if rank is None else uint(rank, "rank")
        return shard_key(uint(step, "step"), rank, self.strategy,
                         self.compression_level is not None, new_nonce())

    def manifest_key(self, step):
        return manifest_key(uint(step, "step"))

    # ---- shards ----
    def _store_shard(self, key, step, epoch, framework, payload, checksum, raw=None):
        """Stores payload (the shard's bytes as stored: compressed when raw is given as
        (uncompressed_size, crc)) at key and returns its record; checksum is payload's
        CRC32C."""
        uri = self.base + key
        size = memoryview(payload).nbytes
        c = _client()
        c.put_bytes(uri, payload)
        info = c.stat(uri)
        if info["size"] != size:  # a truncated upload must not look complete
            raise CheckpointError("%s: stored %d bytes, wrote %d" % (uri, info["size"], size))
        _, ts = now_stamps()
        rec = {"step": step, "epoch": epoch, "framework": framework, "timestamp": ts,
               "rank": self.rank, "key": key, "size": size, "etag": info.get("etag"),
               "checksum": fmt_crc(checksum)}
        if raw is not None:
            rec.update(compression="zstd", uncompressed_size=raw[0],
                       uncompressed_checksum=fmt_crc(raw[1]))
        return rec

    def save_distributed_shard(self, step, epoch, framework, data):
        """Stores this rank's shard for step from data (any contiguous buffer: bytes,
        bytearray, memoryview, numpy array, BytesView), sent from the caller's buffer without
        a copy (compressed first when the store has compression_level). The server answers
        once the whole object is stored and its size and CRC32C checked. Returns the shard
        record for finalize: {step, epoch, framework, timestamp, rank, key, size, etag,
        checksum} (+ compression, uncompressed_size, uncompressed_checksum)."""
        step = uint(step, "step")
        epoch = epoch_arg(epoch)
        framework = framework_arg(framework)
        mv = buffer_arg(data)
        crc = crc32c(mv)  # of the caller's bytes, before they travel
        key = self.shard_key(step)
        if self.compression_level is None:
            return self._store_shard(key, step, epoch, framework, mv, crc)
        z = _core.zstd_compress(mv, self.compression_level)
        return self._store_shard(key, step, epoch, framework, z, crc32c(z), (mv.nbytes, crc))

    def get_distributed_shard_stream(self, step, epoch, framework):
        """A CheckpointStream: write this rank's shard for step chunk by chunk
        (write_chunk), then finalize() for its record, or cancel()."""
        return CheckpointStream(self, uint(step, "step"), epoch_arg(epoch),
                                framework_arg(framework))

    def open_shard(self, step, epoch=None, framework="torch"):
        """A file-like writer (write/seek/tell/close) whose bytes become this rank's shard
        for step when it is closed; its ``record`` is then the shard record. For
        ``torch.save(state, f)``; it holds the checkpoint in memory once (see ObjectWriter)."""
        step, epoch, framework = uint(step, "step"), epoch_arg(epoch), framework_arg(framework)
        return ObjectWriter(None, _on_close=lambda buf: self.save_distributed_shard(
            step, epoch, framework, buf))

    # ---- manifest ----
    def _records(self, step, records):
        if isinstance(records, (str, bytes)) or not isinstance(records, collections.abc.Iterable):
            raise TypeError("shard_metas must be a list of shard records (dicts)")
        recs = []
        for r in records:
            if not isinstance(r, collections.abc.Mapping):
                raise _core.InvalidArgumentError("Shard meta must be a dict, got %s"
                                                 % type(r).__name__)
            for k in ("rank", "key", "size"):
                if r.get(k) is None:
                    raise _core.InvalidArgumentError("Missing %s in shard meta %r" % (k, r))
            recs.append(r)
        recs.sort(key=lambda r: r["rank"])
        ranks = [r["rank"] for r in recs]
        if ranks != list(range(self.world_size)):
            raise CheckpointError("%s: step %d: need one shard record per rank 0..%d, got "
                                  "ranks %r" % (self.base, step, self.world_size - 1, ranks))
        return recs

    def finalize_distributed_checkpoint(self, step, epoch, framework, shard_metas=None,
                                        user_meta=None, *, shard_records=None):
        """On rank 0, after every rank saved its shard: checks that every rank's shard is
        stored with its recorded size, writes the manifest (status "complete", every shard's
        size and CRC32C, user_meta) and then, last, latest.json. shard_metas (the original's
        name) or shard_records (this package's earlier name): the records the ranks' saves
        returned. Returns the manifest key."""
        if shard_metas is not None and shard_records is not None:
            raise _core.InvalidArgumentError("give shard_metas or shard_records, not both")
        records = shard_metas if shard_metas is not None else shard_records
        if records is None:
            raise TypeError("finalize_distributed_checkpoint() missing the shard records "
                            "(shard_metas)")
        step = uint(step, "step")
        epoch = epoch_arg(epoch)
        framework = framework_arg(framework)
        meta = json_meta(user_meta)
        c = _client()
        shards = []
        for r in self._records(step, records):
            rank, key = r["rank"], r["key"]
            if not shard_key_matches(key, step, rank):
                raise CheckpointError("%s: step %d: rank %d's record names %r, not a shard "
                                      "key of that step and rank (such as %r)"
                                      % (self.base, step, rank, key, self.shard_key(step, rank)))
            try:
                info = c.stat(self.base + key)
            except FileNotFoundError:
                raise CheckpointError("%s%s: rank %d's shard is missing"
                                      % (self.base, key, rank)) from None
            if info["size"] != r["size"]:
                raise CheckpointError("%s%s: %d bytes stored, the record says %d"
                                      % (self.base, key, info["size"], r["size"]))
            s = {"rank": rank, "key": key, "size": r["size"], "etag": r.get("etag"),
                 "checksum": r.get("checksum")}
            for k in ("compression", "uncompressed_size", "uncompressed_checksum"):
                if r.get(k) is not None:
                    s[k] = r[k]
            shards.append(s)
        wall_time, ts = now_stamps()
        manifest = {"format_version": FORMAT_VERSION, "framework": framework,
                    "global_step": step, "epoch": epoch, "wall_time": wall_time,
                    "world_size": self.world_size, "shards": shards, "status": "complete",
                    "user_meta": meta}
        mkey = self.manifest_key(step)
        put_json(self.base + mkey, manifest)
        put_json(self.base + LATEST, {"manifest_key": mkey, "global_step": step, "ts": ts})
        return mkey


class CheckpointStream:
    """One rank's shard written chunk by chunk (the original's PyCheckpointStream, from
    ``writer.get_distributed_shard_stream(step, epoch, framework)``).

    write_chunk(data) -> bytes taken; bytes_written(); finalize() -> the shard record (as
    save_distributed_shard's); cancel(). As a context manager it finalizes on success and
    cancels on an exception. Calls from several threads are serialized (a lock): each chunk
    goes in whole, and a chunk that write_chunk accepted is in the shard finalize stores.

    Memory: the client has no streamed upload yet, so the chunks are gathered once in one
    buffer (compressed as they arrive when the store compresses) and uploaded by finalize();
    nothing is stored before finalize, so cancel() (or a crash) leaves nothing behind."""

    def __init__(self, writer, step, epoch, framework):
        self._w = writer
        self.step, self.epoch, self.framework = step, epoch, framework
        self.key = writer.shard_key(step)  # this stream's own key (a fresh nonce)
        self.record = None
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._n = 0
        self._crc = 0  # of the uncompressed bytes
        self._z = (None if writer.compression_level is None
                   else _core.ZstdCompressor(writer.compression_level))
        self._ended = False  # finalize started (the zstd frame is closed): no more chunks
        self._state = "open"  # then "finalized" or "cancelled"

    def __repr__(self):
        return "PyCheckpointStream(key=%r, bytes_written=%d, %s)" % (
            self._w.base + self.key, self._n, self._state)

    def write_chunk(self, data):
        mv = buffer_arg(data)
        with self._lock:
            if self._state != "open" or self._ended:
                raise _core.Error("Stream has been %s" % (
                    "cancelled" if self._state == "cancelled" else "finalized"))
            self._crc = crc32c(mv, self._crc)
            if self._z is None:
                self._buf += mv
            else:
                self._buf += self._z.compress(mv)
            self._n += mv.nbytes
        return mv.nbytes

    def bytes_written(self):
        """Bytes given to write_chunk so far (uncompressed)."""
        return self._n

    def finalize(self):
        """Stores the shard and returns its record. If the upload fails, the chunks are kept:
        finalize() may be called again, or cancel()."""
        with self._lock:
            if self._state != "open":
                raise _core.Error("Stream already %s" % self._state)
            if not self._ended:
                if self._z is not None:
                    self._buf += self._z.flush()
                self._ended = True
            w = self._w
            if self._z is None:
                rec = w._store_shard(self.key, self.step, self.epoch, self.framework,
                                     self._buf, self._crc)
            else:
                rec = w._store_shard(self.key, self.step, self.epoch, self.framework,
                                     self._buf, crc32c(self._buf), (self._n, self._crc))
            self._state = "finalized"
            self._buf = bytearray()
            self.record = rec
            return rec

    def cancel(self):
        """Drops the chunks; nothing is stored. A no-op after finalize or cancel."""
        with self._lock:
            if self._state == "open":
                self._state = "cancelled"
            self._buf = bytearray()
            self._z = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.cancel()
        elif self._state == "open":
            self.finalize()
