"""Reading checkpoints: CheckpointReader finds the latest complete manifest (latest.json, or a
scan of manifests/ when that pointer is missing, unusable or names an incomplete checkpoint)
and reads shards, checking each one's size and CRC32C against its manifest before handing
bytes out. Reads this package's layout and the original s3dlio's (ckpt-{step}-{ts} names)."""

import io

from . import _core
from ._checkpoint_common import (LATEST, MANIFEST_RE, CheckpointError, as_view, base_uri,
                                 check_bytes, decode, get_json, is_compressed,
                                 manifest_key_ok, parse_crc, uint)
from ._checkpoint_files import ObjectReader
from ._server import client as _client

__all__ = ["CheckpointReader"]


class CheckpointReader:
    """Reads checkpoints under a base URI: ``store.reader()`` or
    ``CheckpointReader(uri_or_store)``. Manifests are dicts: format_version, framework,
    global_step, epoch, wall_time, world_size, status, user_meta, manifest_key and shards
    [{rank, key, size, etag, checksum}]."""

    def __init__(self, uri):
        if not isinstance(uri, str) and hasattr(uri, "base"):
            uri = uri.base  # a CheckpointStore
        self.base = base_uri(uri)

    def __repr__(self):
        return "PyCheckpointReader(%r)" % self.base

    def manifests(self):
        """[(step, ts, key)] of the manifests under the base, by step then ts (ts is "" for
        this package's manifests, the original's timestamp for its own)."""
        out = []
        try:
            uris = _client().list(self.base + "manifests/", True)
        except FileNotFoundError:
            return out
        for u in uris:
            if not u.startswith(self.base):
                continue
            m = MANIFEST_RE.fullmatch(u[len(self.base):])
            if m:
                out.append((int(m.group(1)), m.group(2) or "", u[len(self.base):]))
        out.sort()
        return out

    def load_manifest(self, key_or_step):
        """The manifest (a dict) for a manifest key or a step (its newest manifest)."""
        if not isinstance(key_or_step, str):
            step = uint(key_or_step, "step")
            keys = [k for s, _, k in self.manifests() if s == step]
            if not keys:
                raise _core.NotFoundError("%s: no checkpoint for step %d" % (self.base, step))
            key_or_step = keys[-1]
        m = get_json(self.base + key_or_step)
        if not isinstance(m, dict):
            raise CheckpointError("%s%s: not a manifest" % (self.base, key_or_step))
        m.setdefault("manifest_key", key_or_step)
        return m

    def is_complete(self, m):
        """m says complete, has one shard per rank, and every shard is stored at its size."""
        shards = m.get("shards") or []
        if m.get("status") != "complete" or len(shards) != m.get("world_size", len(shards)):
            return False
        c = _client()
        for s in shards:
            try:
                info = c.stat(self.base + s["key"])
            except (FileNotFoundError, KeyError, TypeError, ValueError):
                return False  # missing, or a damaged record (no key, or one no URI can hold)
            if s.get("size") is not None and info["size"] != s["size"]:
                return False
        return True

    def _latest_pointer(self):
        """The manifest key latest.json names, or None when it is missing, not JSON, or
        names anything but a manifest key (damaged or hostile: never followed)."""
        try:
            latest = get_json(self.base + LATEST)
        except (FileNotFoundError, CheckpointError):
            return None
        key = latest.get("manifest_key") if isinstance(latest, dict) else None
        return key if manifest_key_ok(key) else None

    def load_latest_manifest(self):
        """The manifest named by latest.json; when latest.json is missing, unreadable, names
        something other than a manifest key or a manifest that is not complete, the complete
        manifest of the highest step. None when there is no complete checkpoint."""
        key = self._latest_pointer()
        if key is not None:
            try:
                m = self.load_manifest(key)
                if m.get("status") == "complete":
                    return m
            except (FileNotFoundError, CheckpointError):
                pass
        for _, _, key in reversed(self.manifests()):
            try:
                m = self.load_manifest(key)
            except (FileNotFoundError, CheckpointError):
                continue
            if self.is_complete(m):
                return m
        return None

    def shard_record(self, manifest, rank):
        """rank's shard record in manifest."""
        if manifest is None:
            raise _core.InvalidArgumentError("manifest is None (no checkpoint)")
        if not isinstance(manifest, dict):
            raise TypeError("manifest must be a dict (from load_latest_manifest), not %s"
                            % type(manifest).__name__)
        rank = uint(rank, "rank")
        for s in manifest.get("shards") or []:
            if s.get("rank") == rank:
                return s
        raise CheckpointError("%s: the manifest of step %r has no shard for rank %d"
                              % (self.base, manifest.get("global_step"), rank))

    def shard_uri(self, manifest, rank):
        return self.base + self.shard_record(manifest, rank)["key"]

    def read_record(self, rec):
        """The shard bytes of a record, checked (and decompressed when compressed): a
        BytesView of the stored object, or of the decompressed bytes."""
        uri = self.base + rec["key"]
        return decode(uri, _client().get(uri), rec, shard=True)

    def read_shard_by_rank(self, manifest, rank):
        """rank's shard as a BytesView (zero-copy for an uncompressed shard), its size and
        CRC32C checked against the manifest (CheckpointError when they do not match)."""
        return as_view(self.read_record(self.shard_record(manifest, rank)))

    def read_shard_into(self, manifest, rank, buffer):
        """Receives rank's shard into buffer (any writable C-contiguous buffer of at least
        the shard's size), checks its size and CRC32C; returns the number of bytes."""
        rec = self.shard_record(manifest, rank)
        uri = self.base + rec["key"]
        if is_compressed(uri, rec, shard=True):  # decompressed here, then copied in
            data = self.read_record(rec)
            mv = memoryview(buffer).cast("B")
            if len(mv) < len(data):
                raise _core.InvalidArgumentError("%s: buffer of %d bytes, the shard has %d"
                                                 % (uri, len(mv), len(data)))
            mv[:len(data)] = data
            return len(data)
        n = _client().get_into(uri, buffer)
        check_bytes(uri, buffer, n, rec.get("size"), rec.get("checksum"))
        return n

    def open_shard(self, manifest, rank, verify=True):
        """A file-like reader (read/readinto/seek/tell) of rank's shard, for ``torch.load``;
        bytes are fetched by ranges on demand. verify=True checks the whole shard's CRC32C
        when the reads covered it in order (see ObjectReader). A compressed shard is read
        and checked whole, then served from memory."""
        rec = self.shard_record(manifest, rank)
        uri = self.base + rec["key"]
        if is_compressed(uri, rec, shard=True):
            return io.BytesIO(self.read_record(rec))
        return ObjectReader(uri, size=rec.get("size"),
                            checksum=parse_crc(rec.get("checksum")) if verify else None)
