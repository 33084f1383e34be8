"""What the checkpoint modules share, at the bottom of their imports: the error class, argument
checks, the key layout (the original's three strategies), manifest JSON I/O and the check and
decoding of a shard's stored bytes. Stores are reached through s3dlio's data calls only.

Key layout under a base URI (the original s3dlio's, with the checkpoint id ``ckpt-{step}``):

    flat          shards/ckpt-{step}/rank-{r}.{nonce}.bin
    round_robin   shards/rr/{r % 16:02x}/ckpt-{step}/rank-{r}.{nonce}.bin
    binary        shards/bin/{first 4 of r as 8 binary digits}/ckpt-{step}/rank-{r}.{nonce}.bin
    compressed    the same + ".zst" (one zstd frame)
    manifests/ckpt-{step}.json, latest.json

{nonce} (12 hex digits) is drawn anew for every save of a shard: a second save of a step
never overwrites the shards that the step's complete manifest (and latest.json) name, so a
crash during it leaves the previous checkpoint loadable. Ranks need not agree on it: each
rank's record carries its key. Readers also take the layouts written before: this package's
``rank-{r}.bin`` and the original's ``ckpt-{step}-{ts}`` directories.

Compressed shards: the record's ``size`` and ``checksum`` cover the bytes as stored (the zstd
frame), so a corrupted object is caught before it is decompressed, and ``size`` is what the
backend holds, as with the original (its ShardMeta.size came from stat). The record adds
``compression: "zstd"``, ``uncompressed_size`` and ``uncompressed_checksum``, checked after
decompression. Decompression is always bounded: by ``uncompressed_size``, or, for a record
without it (the original's manifests), by max(64 MiB, 1024 x the stored size).
"""

import datetime
import json
import numbers
import os
import re
import warnings

from . import _core
from ._server import client

FORMAT_VERSION = 1
LATEST = "latest.json"
SIDECAR = ".crc32c.json"
ZSTD_EXT = ".zst"
STRATEGIES = ("flat", "round_robin", "binary")
_SCHEMES = ("file", "direct", "s3", "az", "gs", "gcs")
_MAX_LEVEL = 22  # the original clamps zstd levels to 1..22

crc32c = _core.crc32c

# The original's ts part of an id (%Y%m%d-%H%M%S), loosely: no '/', no control characters.
_TS = r"[0-9A-Za-z_.:+-]+"
# manifests/ckpt-{step}.json (ours) or manifests/ckpt-{step}-{ts}.json (the original's),
# relative to the base (fullmatch)
MANIFEST_RE = re.compile(r"manifests/ckpt-(\d+)(?:-(%s))?\.json" % _TS)
# a shard key of any strategy, ours (with or without a nonce) or the original's, compressed
# or not, after its base (fullmatch)
NONCE_HEX = 12
SHARD_RE = re.compile(r"(?P<base>(?:.*/)?)shards/(?:rr/[0-9a-f]{2}/|bin/[01]{4}/)?"
                      r"ckpt-(?P<step>\d+)(?:-%s)?/rank-(?P<rank>\d+)(?:\.[0-9a-f]{%d})?"
                      r"\.bin(?:\.zst)?" % (_TS, NONCE_HEX))
# Decompression bound of a compressed shard whose record has no uncompressed_size.
UNBOUNDED_MIN = 64 << 20
UNBOUNDED_RATIO = 1024


class CheckpointError(_core.Error):
    """A checkpoint that is missing a part, incomplete, truncated or corrupted (its size or
    CRC32C does not match its manifest or stored checksum). An s3dlio.Error, so a
    RuntimeError as the original's errors. The message names the URI."""


# ---- arguments ----

def base_uri(uri):
    """uri as a checkpoint base ending in '/'; InvalidArgumentError for a URI s3dlio cannot
    serve (the original refused those when the store was made, too)."""
    if not isinstance(uri, str):
        raise TypeError("uri must be a str, not %s" % type(uri).__name__)
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() not in _SCHEMES or not rest.strip("/"):
        raise _core.InvalidArgumentError(
            "invalid checkpoint URI %r: expected file://, direct://, s3://, az:// or gs:// "
            "and a path" % (uri,))
    return uri if uri.endswith("/") else uri + "/"


def uint(value, what):
    """value as an int >= 0 (the original's u64/u32 arguments)."""
    if not isinstance(value, numbers.Integral):
        raise TypeError("%s must be an int, not %s" % (what, type(value).__name__))
    v = int(value)
    if v < 0:
        raise _core.InvalidArgumentError("%s must be >= 0, got %d" % (what, v))
    return v


def epoch_arg(epoch):
    """The seed lets epoch be None; the manifest stores an int, as the original reads it."""
    return 0 if epoch is None else uint(epoch, "epoch")


def framework_arg(framework):
    if not isinstance(framework, str):
        raise TypeError("framework must be a str, not %s" % type(framework).__name__)
    return framework


def strategy_arg(strategy):
    """The original's Strategy::from_str: case-insensitive flat, round_robin (or roundrobin),
    binary; None is flat."""
    if strategy is None:
        return "flat"
    if not isinstance(strategy, str):
        raise TypeError("strategy must be a str or None, not %s" % type(strategy).__name__)
    s = strategy.lower()
    s = "round_robin" if s == "roundrobin" else s
    if s not in STRATEGIES:
        raise _core.InvalidArgumentError("Invalid strategy: Unknown strategy: %s. Valid "
                                         "options: flat, round_robin, binary" % strategy)
    return s


def level_arg(level):
    """None (no compression) or a zstd level; like the original, any int turns zstd on and is
    clamped to 1..22."""
    if level is None:
        return None
    if isinstance(level, bool) or not isinstance(level, numbers.Integral):
        raise TypeError("compression_level must be an int or None, not %s"
                        % type(level).__name__)
    return min(max(int(level), 1), _MAX_LEVEL)


def buffer_arg(data, what="data"):
    """data as a flat byte memoryview (any contiguous buffer, no copy)."""
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError("%s must be a bytes-like object (bytes, bytearray, memoryview, numpy "
                        "array, BytesView), not %s" % (what, type(data).__name__)) from None
    if not mv.c_contiguous:
        raise _core.InvalidArgumentError("%s must be a C-contiguous buffer" % what)
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def json_meta(user_meta):
    """user_meta as plain JSON values, as the manifest stores them. NumPy and torch values
    become numbers or lists (tolist()); anything else JSON cannot hold is stored as its repr()
    with a warning, rather than failing a save the original accepted (it dropped user_meta)."""
    if user_meta is None:
        return None
    as_repr = []

    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        if isinstance(o, (set, frozenset)):
            return sorted(o, key=repr)
        as_repr.append(type(o).__name__)
        return repr(o)
    try:
        out = json.loads(json.dumps(user_meta, default=default))
    except (TypeError, ValueError) as e:
        raise _core.InvalidArgumentError("user_meta cannot be stored as JSON: %s" % e) from None
    if as_repr:
        warnings.warn("user_meta: %s not JSON-serializable; stored as repr()"
                      % ", ".join(sorted(set(as_repr))), RuntimeWarning, stacklevel=3)
    return out


# ---- layout ----

def checkpoint_id(step):
    return "ckpt-%d" % step


def new_nonce():
    """A fresh attempt id for a shard key (random: writers of one step need not agree)."""
    return os.urandom(NONCE_HEX // 2).hex()


def shard_key(step, rank, strategy="flat", compressed=False, nonce=None):
    """rank's shard key for step; nonce None gives the key without one (this package's
    earlier layout, still read)."""
    cid = checkpoint_id(step)
    if strategy == "round_robin":
        d = "shards/rr/%02x/%s" % (rank % 16, cid)  # 16 prefixes against S3 hot spots
    elif strategy == "binary":
        d = "shards/bin/%s/%s" % (format(rank, "08b")[:4], cid)
    else:
        d = "shards/" + cid
    return "%s/rank-%d%s.bin%s" % (d, rank, "." + nonce if nonce else "",
                                    ZSTD_EXT if compressed else "")


def manifest_key(step):
    return "manifests/%s.json" % checkpoint_id(step)


def manifest_key_ok(key):
    """True when key (relative to a base) has the form of a manifest key, ours or the
    original's; what latest.json names is only followed then."""
    return isinstance(key, str) and MANIFEST_RE.fullmatch(key) is not None


def shard_key_matches(key, step, rank=None):
    """True when key (relative to a base) is a shard key of step (and rank, unless None), of
    any strategy and any layout, ours or the original's."""
    m = SHARD_RE.fullmatch(key) if isinstance(key, str) else None
    if not m or m.group("base") or int(m.group("step")) != step:
        return False
    return rank is None or (isinstance(rank, int) and int(m.group("rank")) == rank)


def now_stamps():
    """(wall_time, ts) as the original writes them: RFC 3339 UTC, and %Y%m%d-%H%M%S."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(), now.strftime("%Y%m%d-%H%M%S")


def ts_of_wall_time(wall_time):
    """The original's ts format from a manifest's wall_time (RFC 3339, or the seconds since
    the epoch that earlier versions of this package wrote); "" when there is none."""
    try:
        if isinstance(wall_time, (int, float)):
            t = datetime.datetime.fromtimestamp(wall_time, datetime.timezone.utc)
        elif isinstance(wall_time, str):
            t = datetime.datetime.fromisoformat(wall_time.replace("Z", "+00:00"))
        else:
            return ""
    except (ValueError, OverflowError, OSError):
        return ""
    return t.strftime("%Y%m%d-%H%M%S")


# ---- JSON objects ----

def put_json(uri, obj):
    client().put_bytes(uri, json.dumps(obj, sort_keys=True, indent=1).encode())


def get_json(uri):
    v = client().get(uri)
    try:
        return json.loads(bytes(v).decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError("%s: not valid JSON: %s" % (uri, e)) from None


# ---- checksums and shard bytes ----

def fmt_crc(c):
    return "crc32c:%08x" % c


def parse_crc(s):
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


def check_bytes(uri, buf, nbytes, size, checksum, what="shard"):
    """Checks nbytes against size and the CRC32C of buf[:nbytes] against checksum (either may
    be None: not recorded)."""
    if size is not None and nbytes != size:
        raise CheckpointError("%s: truncated or resized %s: %d bytes, the manifest says %d"
                              % (uri, what, nbytes, size))
    want = parse_crc(checksum)
    if want is not None:
        got = crc32c(memoryview(buf).cast("B")[:nbytes])
        if got != want:
            raise CheckpointError("%s: corrupted %s: CRC32C %08x, the manifest says %08x"
                                  % (uri, what, got, want))


def verify(uri, buf, nbytes, rec):
    """Checks stored bytes against a shard record (or a save_checkpoint sidecar)."""
    check_bytes(uri, buf, nbytes, rec.get("size"), rec.get("checksum"))


def is_compressed(uri, rec, shard):
    """True when the object at uri, described by rec, is a zstd frame: the record says
    ``compression: "zstd"``. A shard record without a "compression" key (the original's
    manifests) is compressed when its name ends in ".zst", as the original decided; never
    the record of an object saved by save_checkpoint (its name is the user's)."""
    if "compression" not in rec:
        return shard and uri.endswith(ZSTD_EXT)
    c = rec["compression"]
    if c is None or c == "none":
        return False
    if c != "zstd":
        raise CheckpointError("%s: unknown compression %r in its record" % (uri, c))
    return True


def _decompress_limit(uri, rec, stored_size):
    """(limit, why): the most bytes uri's frame may decompress to."""
    raw = rec.get("uncompressed_size")
    if raw is None:
        return (max(UNBOUNDED_MIN, UNBOUNDED_RATIO * stored_size),
                "no uncompressed_size recorded: max(64 MiB, 1024 x the stored size)")
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise CheckpointError("%s: invalid uncompressed_size %r in its record" % (uri, raw))
    return raw, "the record's uncompressed_size"


def decode(uri, stored, rec, shard):
    """The bytes of the object at uri from its stored bytes: checked against rec (a shard
    record when shard, else a save_checkpoint sidecar), then, when compressed (see
    is_compressed), decompressed straight into a BytesView, within a bound, and checked
    against the uncompressed size and CRC32C. An uncompressed object comes back as it was
    given (a BytesView: zero-copy)."""
    verify(uri, stored, len(stored), rec)
    if not is_compressed(uri, rec, shard):
        return stored
    limit, why = _decompress_limit(uri, rec, len(stored))
    try:
        out = _core.zstd_decompress_view(stored, limit)
    except ValueError as e:
        raise CheckpointError("%s: corrupted compressed shard: %s (limit %d bytes: %s)"
                              % (uri, e, limit, why)) from None
    check_bytes(uri, out, len(out), rec.get("uncompressed_size"),
                rec.get("uncompressed_checksum"), "shard (after decompression)")
    return out


def as_view(data):
    """A BytesView of data: itself when it is one (decoded shards are); other buffers are
    copied into one."""
    return data if isinstance(data, _core.BytesView) else _core._bytesview(data)


def as_bytes(data):
    return data.to_bytes() if isinstance(data, _core.BytesView) else bytes(data)
