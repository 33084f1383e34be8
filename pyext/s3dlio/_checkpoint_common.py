"""What the checkpoint modules share, at the bottom of their imports: the error class, argument
checks, the key layout (the original's three strategies), manifest JSON I/O and the check and
decoding of a shard's stored bytes. Stores are reached through s3dlio's data calls only.

Key layout under a base URI (the original s3dlio's, with the checkpoint id ``ckpt-{step}``):

    flat          shards/ckpt-{step}/rank-{r}.bin
    round_robin   shards/rr/{r % 16:02x}/ckpt-{step}/rank-{r}.bin
    binary        shards/bin/{first 4 of r as 8 binary digits}/ckpt-{step}/rank-{r}.bin
    compressed    the same + ".zst" (one zstd frame)
    manifests/ckpt-{step}.json, latest.json

Compressed shards: the record's ``size`` and ``checksum`` cover the bytes as stored (the zstd
frame), so a corrupted object is caught before it is decompressed, and ``size`` is what the
backend holds, as with the original (its ShardMeta.size came from stat). The record adds
``compression: "zstd"``, ``uncompressed_size`` and ``uncompressed_checksum``, checked after
decompression (which is bounded by ``uncompressed_size``).
"""

import datetime
import json
import numbers
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

# manifests/ckpt-{step}.json (ours) or manifests/ckpt-{step}-{ts}.json (the original's)
MANIFEST_RE = re.compile(r"(?:^|/)manifests/ckpt-(\d+)(?:-([^/]+))?\.json$")
# a shard key of any strategy, ours or the original's, compressed or not, after its base
SHARD_RE = re.compile(r"^(?P<base>(?:.*/)?)shards/(?:rr/[0-9a-f]{2}/|bin/[01]{4}/)?"
                      r"ckpt-(?P<step>\d+)(?:-[^/]+)?/rank-(?P<rank>\d+)\.bin(?:\.zst)?$")


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


def shard_key(step, rank, strategy="flat", compressed=False):
    cid = checkpoint_id(step)
    if strategy == "round_robin":
        d = "shards/rr/%02x/%s" % (rank % 16, cid)  # 16 prefixes against S3 hot spots
    elif strategy == "binary":
        d = "shards/bin/%s/%s" % (format(rank, "08b")[:4], cid)
    else:
        d = "shards/" + cid
    return "%s/rank-%d.bin%s" % (d, rank, ZSTD_EXT if compressed else "")


def manifest_key(step):
    return "manifests/%s.json" % checkpoint_id(step)


def shard_key_matches(key, step, rank):
    """True when key is a shard key (any strategy, ours or the original's) of step and rank."""
    m = SHARD_RE.match(key) if isinstance(key, str) else None
    return bool(m) and not m.group("base") and int(m.group("step")) == step \
        and int(m.group("rank")) == rank


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


def decode(uri, stored, rec):
    """The shard's bytes from its stored object: checked against rec, then, for a ".zst" key,
    decompressed straight into a BytesView and checked against the uncompressed size and
    CRC32C. An uncompressed shard comes back as it was given (a BytesView: zero-copy)."""
    verify(uri, stored, len(stored), rec)
    if not uri.endswith(ZSTD_EXT):
        return stored
    raw_size = rec.get("uncompressed_size")
    try:
        if raw_size is None:
            out = _core.zstd_decompress_view(stored)
        else:
            out = _core.zstd_decompress_view(stored, raw_size)
    except ValueError as e:
        raise CheckpointError("%s: corrupted compressed shard: %s" % (uri, e)) from None
    check_bytes(uri, out, len(out), raw_size, rec.get("uncompressed_checksum"),
                "shard (after decompression)")
    return out


def as_view(data):
    """A BytesView of data: itself when it is one (decoded shards are); other buffers are
    copied into one."""
    return data if isinstance(data, _core.BytesView) else _core._bytesview(data)


def as_bytes(data):
    return data.to_bytes() if isinstance(data, _core.BytesView) else bytes(data)
