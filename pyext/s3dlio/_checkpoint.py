"""Checkpoints on any backend (file://, direct://, s3://, az://, gs://), through the s3dlio
data calls only: the original s3dlio 0.9.1's API (PyCheckpointStore, PyCheckpointWriter,
PyCheckpointReader, PyCheckpointInfo, save_checkpoint, load_checkpoint,
save_distributed_shard, finalize_distributed_checkpoint, load_checkpoint_with_validation)
and the seed's spellings of the same (CheckpointStore, CheckpointWriter, CheckpointReader are
the same classes). This file holds the store, the listing entries and the module functions;
writing is in _checkpoint_writer, reading in _checkpoint_reader, the layout in
_checkpoint_common, file-like objects in _checkpoint_files.

Layout under a base URI (the original's):

    shards/[rr/XX/|bin/BBBB/]ckpt-{step}/rank-{r}.{nonce}.bin[.zst]   one shard per rank and
                                    save ({nonce}: random per save, so a second save of a
                                    step never overwrites the shards of its complete one)
    manifests/ckpt-{step}.json      {format_version, framework, global_step, epoch, wall_time,
                                     world_size, status, user_meta, shards: [{rank, key,
                                     size, etag, checksum}]}
    latest.json                     {manifest_key, global_step, ts}

Differences from the original, on purpose (its defects):
- The checkpoint id is ``ckpt-{step}``: ranks need not agree on a timestamp (each record
  carries its shard key); rank 0 picks the timestamp at finalize. The original's
  ``ckpt-{step}-{ts}`` checkpoints (and this package's earlier ``rank-{r}.bin`` shards) still
  load.
- Every shard record carries ``checksum: "crc32c:xxxxxxxx"``, and readers check it (and the
  size) before handing bytes out (CheckpointError on a mismatch); manifests without one are
  checked for size only.
- user_meta is stored; load_checkpoint_with_validation really validates; delete_checkpoint
  of the newest step moves latest.json to the previous complete checkpoint first.
- Commit order: shards, the manifest (status "complete"), then latest.json. A crash at any
  point leaves latest.json naming the previous complete checkpoint; without a usable
  latest.json only complete manifests whose shards all exist are taken.
"""

import inspect
import numbers

from . import _core
from ._checkpoint_common import (LATEST, SHARD_RE, SIDECAR, CheckpointError, as_bytes,
                                 as_view, base_uri, buffer_arg, crc32c, decode, fmt_crc,
                                 get_json, json_meta, level_arg, put_json, shard_key_matches,
                                 strategy_arg, ts_of_wall_time, uint)
from ._checkpoint_files import ObjectReader, ObjectWriter, open_reader, open_writer
from ._checkpoint_reader import CheckpointReader
from ._checkpoint_writer import CheckpointStream, CheckpointWriter
from ._server import client as _client

__all__ = [
    "CheckpointError", "CheckpointStore", "CheckpointWriter", "CheckpointReader",
    "CheckpointInfo", "PyCheckpointStore", "PyCheckpointWriter", "PyCheckpointReader",
    "PyCheckpointInfo", "ObjectWriter", "ObjectReader", "crc32c", "save_checkpoint",
    "load_checkpoint", "load_checkpoint_with_validation", "save_distributed_shard",
    "finalize_distributed_checkpoint", "open_writer", "open_reader",
]

_SEED_SAVE = ("data", "epoch", "user_meta", "framework")        # save(step, data, ...)
_ORIG_SAVE = ("epoch", "framework", "data", "user_meta")        # save(step, epoch, ...)


def _signature(fn, names, defaults):
    """Shows fn (which takes both forms) with the original's signature in help() and
    inspect.signature; the docstring gives the seed's form."""
    P = inspect.Parameter
    fn.__signature__ = inspect.Signature(
        [P(n, P.POSITIONAL_OR_KEYWORD, default=defaults.get(n, P.empty)) for n in names])
    return fn


def _is_int(x):
    return isinstance(x, numbers.Integral)


def _bind(fname, names, args, kwargs, defaults):
    """args/kwargs bound to names (positional order), with defaults; TypeError as Python's."""
    if len(args) > len(names):
        raise TypeError("%s() takes at most %d arguments after step (%d given)"
                        % (fname, len(names), len(args)))
    out = dict(defaults)
    out.update(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            raise TypeError("%s() got an unexpected keyword argument %r" % (fname, k))
        if k in names[:len(args)]:
            raise TypeError("%s() got multiple values for argument %r" % (fname, k))
        out[k] = v
    missing = [n for n in names if n not in out]
    if missing:
        raise TypeError("%s() missing required argument(s): %s" % (fname, ", ".join(missing)))
    return out


def _save_args(fname, args, kwargs):
    """Tells the two save signatures apart: the original's (step, epoch, framework, data,
    user_meta=None) and the seed's (step, data, epoch=None, user_meta=None,
    framework="bytes"). The argument after step decides: an int is the original's epoch,
    anything else (a buffer) the seed's data. Keyword-only calls mean the same in both."""
    if args and _is_int(args[0]):
        return _bind(fname, _ORIG_SAVE, args, kwargs, {"user_meta": None})
    return _bind(fname, _SEED_SAVE, args, kwargs,
                 {"epoch": None, "user_meta": None, "framework": "bytes"})


class CheckpointInfo:
    """One checkpoint in list_checkpoints(): the original's PyCheckpointInfo attributes
    (step, epoch, timestamp, status, framework, world_size, total_size, size_mb, size_gb,
    is_complete, is_single_rank) plus manifest_key, wall_time and user_meta. ``info["step"]``
    and the other keys of this package's earlier dict entries read the same values."""

    _KEYS = ("step", "epoch", "timestamp", "status", "framework", "world_size", "total_size",
             "manifest_key", "wall_time", "user_meta")

    def __init__(self, step, epoch=0, timestamp="", status="", framework="", world_size=1,
                 total_size=0, manifest_key=None, wall_time=None, user_meta=None):
        self.step, self.epoch, self.timestamp, self.status = step, epoch, timestamp, status
        self.framework, self.world_size, self.total_size = framework, world_size, total_size
        self.manifest_key, self.wall_time, self.user_meta = manifest_key, wall_time, user_meta

    @classmethod
    def from_manifest(cls, step, ts, key, m):
        shards = m.get("shards") or []
        return cls(step=step, epoch=m.get("epoch"), timestamp=ts or ts_of_wall_time(
            m.get("wall_time")), status=m.get("status") or "", framework=m.get("framework")
            or "", world_size=m.get("world_size", len(shards)), total_size=sum(
            s.get("size") or 0 for s in shards), manifest_key=key,
            wall_time=m.get("wall_time"), user_meta=m.get("user_meta"))

    @property
    def size_mb(self):
        return self.total_size / (1024.0 * 1024.0)

    @property
    def size_gb(self):
        return self.total_size / (1024.0 * 1024.0 * 1024.0)

    @property
    def is_complete(self):
        return self.status == "complete"

    @property
    def is_single_rank(self):
        return self.world_size == 1

    def keys(self):
        return list(self._KEYS)

    def __getitem__(self, key):
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key) if key in self._KEYS else default

    def __contains__(self, key):
        return key in self._KEYS

    def to_dict(self):
        return {k: getattr(self, k) for k in self._KEYS}

    def __eq__(self, other):
        return isinstance(other, CheckpointInfo) and self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self):
        return ("PyCheckpointInfo(step=%r, epoch=%r, status=%r, framework=%r, world_size=%r, "
                "total_size=%r, timestamp=%r)" % (self.step, self.epoch, self.status,
                                                  self.framework, self.world_size,
                                                  self.total_size, self.timestamp))


class CheckpointStore:
    """Checkpoints under a base URI (any backend): ``save``/``load_latest`` for one rank;
    ``writer(world_size, rank)`` and ``reader()`` for distributed checkpoints.

    strategy: the original's shard layout, "flat" (default), "round_robin" or "binary"
    (case-insensitive; anything else raises). compression_level: None (default) or a zstd
    level (clamped to 1..22 as the original does): shards are stored as zstd frames under
    "rank-{r}.bin.zst" and decompressed (and checked) by every reader. multipart_threshold
    is accepted and kept for compatibility: the server chooses each backend's upload method
    (multipart, block list or resumable upload) itself."""

    def __init__(self, uri, strategy=None, multipart_threshold=None, compression_level=None):
        self.base = base_uri(uri)
        self.uri = uri
        self.strategy = strategy_arg(strategy)
        if multipart_threshold is not None:
            multipart_threshold = uint(multipart_threshold, "multipart_threshold")
        self.multipart_threshold = multipart_threshold
        self.compression_level = level_arg(compression_level)

    def __repr__(self):
        return "PyCheckpointStore(%r, strategy=%r, compression_level=%r)" % (
            self.base, self.strategy, self.compression_level)

    def writer(self, world_size=1, rank=0):
        return CheckpointWriter(self, world_size, rank)

    def reader(self):
        return CheckpointReader(self.base)

    def save(self, step, *args, **kwargs):
        """One-rank checkpoint: the shard, the manifest, then latest.json; returns the
        manifest key. Both signatures: the original's save(step, epoch, framework, data,
        user_meta=None) and the seed's save(step, data, epoch=None, user_meta=None,
        framework="bytes"); the argument after step decides (an int: the original's epoch;
        a buffer: the seed's data). user_meta: any JSON-able object, stored in the manifest."""
        a = _save_args("save", args, kwargs)
        w = self.writer(1, 0)
        rec = w.save_distributed_shard(step, a["epoch"], a["framework"], a["data"])
        return w.finalize_distributed_checkpoint(step, a["epoch"], a["framework"], [rec],
                                                 a["user_meta"])

    def load_latest(self):
        """Rank 0's shard of the latest complete checkpoint as a BytesView (zero-copy unless
        compressed; size and CRC32C checked), or None when there is none."""
        r = self.reader()
        m = r.load_latest_manifest()
        if m is None:
            return None
        return r.read_shard_by_rank(m, 0)

    def load(self, step, rank=0):
        """rank's shard of step's checkpoint as a BytesView (checked)."""
        r = self.reader()
        return r.read_shard_by_rank(r.load_manifest(uint(step, "step")), rank)

    def latest_manifest(self):
        return self.reader().load_latest_manifest()

    def list_checkpoints(self):
        """[PyCheckpointInfo] of every manifest under the base (complete or not), by step."""
        r = self.reader()
        out = []
        for step, ts, key in r.manifests():
            try:
                m = r.load_manifest(key)
            except (FileNotFoundError, CheckpointError):
                continue
            out.append(CheckpointInfo.from_manifest(step, ts, key, m))
        return out

    def _step_shards(self, r, step):
        """Stored shard keys of step found by listing: its flat directory and the subtree of
        this store's strategy (every save's shards, also those of saves never finalized)."""
        c = _client()
        prefixes = ["shards/ckpt-%d/" % step]
        if self.strategy == "round_robin":
            prefixes.append("shards/rr/")
        elif self.strategy == "binary":
            prefixes.append("shards/bin/")
        keys = set()
        for p in prefixes:
            try:
                uris = c.list(self.base + p, True)
            except FileNotFoundError:
                continue
            for u in uris:
                if u.startswith(self.base) and shard_key_matches(u[len(self.base):], step):
                    keys.add(u[len(self.base):])
        return keys

    def delete_checkpoint(self, step):
        """Deletes step's checkpoint. latest.json is moved first (to the newest other
        complete checkpoint, or removed), so it never names a deleted checkpoint; then the
        manifests, then the shards of every save of the step: those its manifests name and
        those found by listing. Only shard keys of that step (and the record's rank) under
        the base are deleted, whatever else a damaged manifest lists. Returns True when
        something was deleted."""
        step = uint(step, "step")
        r = self.reader()
        c = _client()
        all_manifests = r.manifests()
        keys = [k for s, _, k in all_manifests if s == step]
        try:
            latest = get_json(self.base + LATEST)
        except (FileNotFoundError, CheckpointError):
            latest = None
        if isinstance(latest, dict) and (latest.get("global_step") == step
                                         or latest.get("manifest_key") in keys):
            repl = None
            for s, _, k in reversed(all_manifests):
                if s == step:
                    continue
                try:
                    m = r.load_manifest(k)
                except (FileNotFoundError, CheckpointError):
                    continue
                if r.is_complete(m):
                    repl = (s, k, m)
                    break
            if repl is None:
                c.delete(self.base + LATEST)
            else:
                put_json(self.base + LATEST, {"manifest_key": repl[1], "global_step": repl[0],
                                              "ts": ts_of_wall_time(repl[2].get("wall_time"))})
        shard_keys = set()
        for k in keys:
            try:
                m = r.load_manifest(k)
            except (FileNotFoundError, CheckpointError):
                m = {}
            shards = m.get("shards")
            for s in shards if isinstance(shards, list) else []:
                if isinstance(s, dict) and shard_key_matches(s.get("key"), step, s.get("rank")):
                    shard_keys.add(s["key"])
            try:
                c.delete(self.base + k)
            except FileNotFoundError:
                pass
        shard_keys |= self._step_shards(r, step)
        for k in shard_keys:
            try:
                c.delete(self.base + k)
            except FileNotFoundError:
                pass
        return bool(keys or shard_keys)


_signature(CheckpointStore.save, ("self", "step") + _ORIG_SAVE, {"user_meta": None})


# The original's names are the same classes (not copies): isinstance and subclassing agree.
PyCheckpointStore = CheckpointStore
PyCheckpointWriter = CheckpointWriter
PyCheckpointReader = CheckpointReader
PyCheckpointInfo = CheckpointInfo
PyCheckpointStream = CheckpointStream


# ---- module functions ----

def save_checkpoint(uri, *args, **kwargs):
    """The original's save_checkpoint(uri, step, epoch, framework, data, user_meta=None):
    CheckpointStore(uri).save(...), returning the manifest key. The seed's
    save_checkpoint(uri, data, step=None, epoch=None, user_meta=None): with step the same;
    without, data is stored at the object uri and its size and CRC32C beside it at
    ``uri + '.crc32c.json'``, for load_checkpoint_with_validation(uri); returns uri.
    The argument after uri decides (an int: the original's step; a buffer: the seed's data)."""
    if args and _is_int(args[0]):
        a = _bind("save_checkpoint", ("step",) + _ORIG_SAVE, args, kwargs, {"user_meta": None})
        return CheckpointStore(uri).save(a["step"], a["epoch"], a["framework"], a["data"],
                                         a["user_meta"])
    a = _bind("save_checkpoint", ("data", "step", "epoch", "user_meta", "framework"), args,
              kwargs, {"step": None, "epoch": None, "user_meta": None, "framework": "bytes"})
    if a["step"] is not None:
        return CheckpointStore(uri).save(a["step"], a["data"], epoch=a["epoch"],
                                         user_meta=a["user_meta"], framework=a["framework"])
    base_uri(uri)  # the same URI check as a store's
    mv = buffer_arg(a["data"])
    meta = json_meta(a["user_meta"])
    c = _client()
    c.put_bytes(uri, mv)
    put_json(uri + SIDECAR, {"size": mv.nbytes, "checksum": fmt_crc(crc32c(mv)),
                             "user_meta": meta if meta is not None else {}})
    return uri


_signature(save_checkpoint, ("uri", "step") + _ORIG_SAVE, {"user_meta": None})


def save_distributed_shard(uri, step, epoch, framework, data, world_size, rank):
    """CheckpointStore(uri).writer(world_size, rank).save_distributed_shard(step, epoch,
    framework, data): the shard record."""
    return CheckpointStore(uri).writer(world_size, rank).save_distributed_shard(
        step, epoch, framework, data)


def finalize_distributed_checkpoint(uri, step, epoch, framework, shard_metas, world_size,
                                    rank, user_meta=None):
    """CheckpointStore(uri).writer(world_size, rank).finalize_distributed_checkpoint(...):
    the manifest key."""
    return CheckpointStore(uri).writer(world_size, rank).finalize_distributed_checkpoint(
        step, epoch, framework, shard_metas, user_meta)


def _exists(uri):
    try:
        _client().stat(uri)
        return True
    except FileNotFoundError:
        return False


def _load(uri, missing_ok):
    """The checkpoint at uri, checked: bytes or a BytesView. uri may be a checkpoint base
    (rank 0's shard of its latest complete checkpoint), an object saved by save_checkpoint
    (its stored size and CRC32C) or a shard of a store (the record of the manifest that names
    it, found above it). missing_ok: None when there is nothing at uri (load_checkpoint, as
    the original's); else NotFoundError / CheckpointError."""
    base = base_uri(uri)
    r = CheckpointReader(base)
    if _exists(base + LATEST) or r.manifests():
        m = r.load_latest_manifest()
        if m is None:
            if missing_ok:
                return None
            raise CheckpointError("%s: no complete checkpoint" % uri)
        return r.read_record(r.shard_record(m, 0))
    try:
        rec = get_json(uri + SIDECAR)
    except FileNotFoundError:
        rec = None
    if rec is not None:
        if not isinstance(rec, dict):
            raise CheckpointError("%s: not a checksum record" % (uri + SIDECAR))
        return decode(uri, _client().get(uri), rec, shard=False)
    shard = SHARD_RE.fullmatch(uri)
    if shard and shard.group("base"):
        sr = CheckpointReader(shard.group("base"))
        key = uri[len(sr.base):]
        step = int(shard.group("step"))
        for s, _, mkey in reversed(sr.manifests()):
            if s != step:
                continue
            try:
                m = sr.load_manifest(mkey)
            except (FileNotFoundError, CheckpointError):
                continue
            for rec in m.get("shards") or []:
                if rec.get("key") == key:
                    return sr.read_record(rec)
        if _exists(uri):
            raise CheckpointError("%s: cannot validate: no manifest under %s names this shard "
                                  "(its checkpoint was not finalized)" % (uri, sr.base))
    if missing_ok and not _exists(uri):
        return None
    if not _exists(uri):
        raise _core.NotFoundError("%s: no checkpoint or object there" % uri)
    raise CheckpointError("%s: cannot validate: no manifest (latest.json, manifests/), no "
                          "stored checksum (%s) and not a shard of a checkpoint"
                          % (uri, uri + SIDECAR))


def load_checkpoint(uri):
    """The original's load_checkpoint(uri): the latest checkpoint at base uri as a BytesView
    (zero-copy unless compressed), or None when there is none. Checked as by
    load_checkpoint_with_validation, which also takes an object saved by save_checkpoint or a
    shard URI."""
    data = _load(uri, missing_ok=True)
    return None if data is None else as_view(data)


def load_checkpoint_with_validation(uri, validate_integrity=True):
    """The checkpoint at uri as bytes (a copy, as the seed says). validate_integrity=True
    checks size and CRC32C against the manifest (uri a checkpoint base: rank 0's shard of its
    latest complete checkpoint; or a shard URI of a store, e.g. .../shards/ckpt-N/rank-R.bin,
    against the manifest above it) or the stored checksum (an object saved by
    save_checkpoint); corrupted, truncated or unverifiable: CheckpointError.
    validate_integrity=False just reads the object at uri (a checkpoint base: its latest
    rank 0 shard, unchecked)."""
    if not validate_integrity:
        try:
            return _client().get(uri).to_bytes()
        except (FileNotFoundError, IsADirectoryError, _core.Error):
            r = CheckpointReader(uri)
            m = r.load_latest_manifest()
            if m is None:
                raise
            rec = dict(r.shard_record(m, 0), size=None, checksum=None,
                       uncompressed_checksum=None)
            return as_bytes(r.read_record(rec))
    return as_bytes(_load(uri, missing_ok=False))


# Shown (and pickled) by the names users import them under.
for _cls in (CheckpointError, CheckpointStore, CheckpointWriter, CheckpointReader,
             CheckpointInfo, CheckpointStream, ObjectWriter, ObjectReader):
    _cls.__module__ = "s3dlio"
del _cls
