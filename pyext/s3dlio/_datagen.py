"""Synthetic data: the generator behind put() and generate_data(), and the bulk uploads put,
put_async, put_many and put_many_async.

The generator works on 4 KiB blocks, as the original's: ``dedup`` N makes 1/N of the blocks
unique (block i repeats unique block i % U), ``compress`` N zeroes the first (N-1)/N of every
block (the rounding remainder spread over the blocks, as the original does) and fills the
rest with random bytes, so the data compresses about N:1. The random bytes come from numpy's SFC64 generator, drawn a
megabyte at a time in calls that release the GIL: several threads generate at once, and no
Python loop touches single bytes.

put() generates each object on its own (distinct objects; the original uploads one buffer to
every URI) in the object type it names (raw, npz, tfrecord, hdf5: valid files, see
_formats.build_object) and uploads it with put_bytes. Memory: each upload worker holds one
object; the number of workers is bounded so that at most _PUT_MEMORY bytes are held at once.
"""

import operator
import os
import re
import threading

from . import _core, _formats
from ._server import client as _client
from ._threads import run_each

__all__ = ["put", "put_async", "put_many", "put_many_async", "generate_data",
           "generate_data_with_threads", "generate_into_buffer", "py_total_cpus",
           "py_default_data_gen_threads"]

BLOCK = 4096                    # the original's BLK_SIZE: the unit of dedup and compress
DEFAULT_OBJECT_SIZE = 20 << 20  # the original's DEFAULT_OBJECT_SIZE
_DRAW = 1 << 20                 # random bytes per numpy call (a multiple of BLOCK)
_MIN_PER_THREAD = 4 << 20       # below this a generation thread costs more than it saves
_PUT_MEMORY = 512 << 20         # bytes put() may hold in objects being uploaded at once
_GEN_MODES = {"streaming", "single-pass", "single_pass", "singlepass"}
_GEN_ALGORITHMS = {"random", "prand"}  # 0.9.90's data_gen_algorithm: both mean random here


# ---- argument checks (the original raises RuntimeError: InvalidArgumentError is one) ----

def _int(v, what, minimum=0):
    if isinstance(v, bool):
        raise TypeError("%s must be an int, not bool" % what)
    try:
        v = operator.index(v)  # int, numpy integers
    except TypeError:
        raise TypeError("%s must be an int, not %s" % (what, type(v).__name__)) from None
    if v < minimum:
        raise _core.InvalidArgumentError("%s must be >= %d, got %d" % (what, minimum, v))
    return v


def _factor(v, what):
    # 0 means 1 in the original (no dedup / incompressible)
    return max(1, _int(v, what))


def _threads(v):
    if v is None:
        return py_default_data_gen_threads()
    return max(1, _int(v, "threads"))


# ---- CPUs ----

def py_total_cpus():
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def py_default_data_gen_threads():
    """Threads generate_data() and generate_into_buffer() use by default: half the CPUs (at
    least 1), as the original."""
    return max(1, py_total_cpus() // 2)


# ---- the generator ----

def _zero_plan(compress):
    """(floor_len, rem, den): block j gets floor_len zero bytes, plus one when the running
    remainder ((j+1)*rem // den - j*rem // den) says so (the original's Bresenham spread)."""
    if compress <= 1:
        return None
    num = compress - 1
    return (num * BLOCK) // compress, (num * BLOCK) % compress, compress


def _zero_prefixes(np, arr, start, end, plan):
    """Zeroes the compressible prefix of every block in arr[start:end] (start block-aligned)."""
    floor_len, rem, den = plan
    b0 = start // BLOCK
    nfull = (end - start) // BLOCK
    if nfull:
        view = arr[start:start + nfull * BLOCK].reshape(nfull, BLOCK)
        view[:, :floor_len] = 0
        if rem and floor_len < BLOCK:
            j = np.arange(b0, b0 + nfull, dtype=np.int64)
            extra = ((j + 1) * rem) // den - (j * rem) // den
            view[extra.astype(bool), floor_len] = 0
    tail = start + nfull * BLOCK
    if tail < end:  # the object's last, partial block
        j = b0 + nfull
        z = floor_len + ((j + 1) * rem) // den - (j * rem) // den
        arr[tail:tail + min(z, end - tail)] = 0


def _random_range(np, arr, start, end, seed, plan):
    gen = np.random.SFC64(seed)
    pos = start
    while pos < end:
        k = min(_DRAW, end - pos)
        words = gen.random_raw((k + 7) // 8)  # releases the GIL
        arr[pos:pos + k] = words.view(np.uint8)[:k]
        if plan is not None:
            _zero_prefixes(np, arr, pos, pos + k, plan)
        pos += k


def _replicate(arr, start, end, period):
    """arr[p] = arr[p % period] for p in [start, end) (period <= start: no overlap)."""
    pos = start
    while pos < end:
        src = pos % period
        k = min(end - pos, period - src)
        arr[pos:pos + k] = arr[src:src + k]
        pos += k


def _split(start, end, parts):
    """[start, end) in block-aligned ranges, one per part (fewer when small)."""
    n = end - start
    parts = max(1, min(parts, n // _MIN_PER_THREAD))
    step = -(-n // parts)
    step = -(-step // BLOCK) * BLOCK
    return [(s, min(end, s + step)) for s in range(start, end, step)]


def _run(jobs):
    """Runs the callables, all but the first on threads; re-raises the first failure."""
    if len(jobs) == 1:
        jobs[0]()
        return
    errors = []

    def guard(fn):
        try:
            fn()
        except BaseException as e:  # noqa: B902 (re-raised in the caller's thread)
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(fn,), name="s3dlio-datagen")
               for fn in jobs[1:]]
    for t in threads:
        t.start()
    guard(jobs[0])
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def fill(buffer, dedup=1, compress=1, threads=1):
    """Fills buffer (a writable, C-contiguous buffer) with generated data; returns its size
    in bytes. dedup / compress as the module says; threads: how many generate at once."""
    import numpy as np

    arr = _writable_bytes(np, buffer)
    n = arr.size
    if n == 0:
        return 0
    nblocks = -(-n // BLOCK)
    # the original: round(nblocks / dedup), at least 1
    unique = nblocks if dedup <= 1 else max(1, int(nblocks / dedup + 0.5))
    ulen = min(n, unique * BLOCK)
    plan = _zero_plan(compress)
    ranges = _split(0, ulen, threads)
    seeds = np.random.SeedSequence().spawn(len(ranges))
    _run([lambda r=r, s=s: _random_range(np, arr, r[0], r[1], s, plan)
          for r, s in zip(ranges, seeds)])
    if ulen < n:
        _run([lambda r=r: _replicate(arr, r[0], r[1], ulen)
              for r in _split(ulen, n, threads)])
    return n


def _writable_bytes(np, buffer):
    """buffer as a writable 1-D uint8 numpy array sharing its memory."""
    try:
        mv = memoryview(buffer)
    except TypeError:
        raise TypeError("buffer must support the buffer protocol (bytearray, memoryview, "
                        "numpy array, ...), not %s" % type(buffer).__name__) from None
    if mv.readonly:
        raise _core.InvalidArgumentError("Buffer must be writable")
    if not mv.c_contiguous:
        raise _core.InvalidArgumentError("Buffer must be C-contiguous for zero-copy operation")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return np.frombuffer(mv, dtype=np.uint8)


def generate_data(size, dedup=1, compress=1):
    """size bytes of generated data as a BytesView (read-only, buffer protocol)."""
    return generate_data_with_threads(size, dedup, compress, None)


def generate_data_with_threads(size, dedup=1, compress=1, threads=None):
    """generate_data() on threads threads (None: py_default_data_gen_threads())."""
    import numpy as np

    size = _int(size, "size")
    dedup, compress = _factor(dedup, "dedup"), _factor(compress, "compress")
    threads = _threads(threads)
    arr = np.empty(size, dtype=np.uint8)
    fill(arr, dedup, compress, threads)
    # One copy into the BytesView's own memory: a BytesView cannot adopt a numpy array.
    return _core._bytesview(arr)


def generate_into_buffer(buffer, dedup=1, compress=1, threads=None):
    """Fills buffer (bytearray, writable memoryview, numpy array: writable and C-contiguous)
    in place with generated data; returns the number of bytes written (its whole size)."""
    dedup, compress = _factor(dedup, "dedup"), _factor(compress, "compress")
    return fill(buffer, dedup, compress, _threads(threads))


# ---- put: generated objects ----

_FIELD = re.compile(r"\{(:[^{}]*)?\}")


def _name(template, i, num):
    """The template's first "{}" (or "{:spec}", as the original's documentation writes
    "sample_{:06d}.npz") becomes i, its second num; later fields stay as written."""
    values = iter((i, num))

    def sub(m):
        v = next(values, None)
        if v is None:
            return m.group(0)
        try:
            return format(v, m.group(1)[1:] if m.group(1) else "")
        except ValueError as e:
            raise _core.InvalidArgumentError("template %r: %s" % (template, e)) from None
    return _FIELD.sub(sub, template)


def build_uri_list(prefix, template, num):
    """(bucket, [uri]) as the original's build_uri_list: each name (see _name) goes under
    the prefix, a "/" added."""
    if not isinstance(prefix, str):
        raise TypeError("prefix must be a str, not %s" % type(prefix).__name__)
    if not isinstance(template, str):
        raise TypeError("template must be a str, not %s" % type(template).__name__)
    scheme_end = prefix.find("://")
    if scheme_end <= 0:
        raise _core.InvalidArgumentError(
            "prefix must be a URI with a scheme (s3://, az://, gs://, file://, direct://): %r"
            % prefix)
    scheme, rest = prefix[:scheme_end + 3], prefix[scheme_end + 3:]
    bucket, _, key = rest.partition("/")
    if key and not key.endswith("/"):
        key += "/"
    uris = []
    for i in range(num):
        name = _name(template, i, num)
        uris.append("%s%s/%s%s" % (scheme, bucket, key, name))
    if num > 1 and len(set(uris)) != num:
        raise _core.InvalidArgumentError(
            "template %r names several of the %d objects alike (it needs a '{}' for the "
            "index): they would overwrite each other" % (template, num))
    return bucket, uris


def _bucket_level(prefix):
    """The URI should_create_bucket makes: the directory for file:// and direct://, else the
    bucket (s3://, gs://) or the container (az://account/container/)."""
    scheme, _, rest = prefix.partition("://")
    if scheme in ("file", "direct"):
        return prefix
    parts = rest.split("/")
    depth = 2 if scheme == "az" else 1
    return "%s://%s/" % (scheme, "/".join(parts[:depth]))


def _gen_mode(mode):
    if not isinstance(mode, str):
        raise TypeError("data_gen_mode must be a str, not %s" % type(mode).__name__)
    if mode.lower() not in _GEN_MODES:
        raise _core.InvalidArgumentError(
            "data_gen_mode must be 'streaming' or 'single-pass', got %r" % mode)


def _gen_algorithm(alg):
    if not isinstance(alg, str):
        raise TypeError("data_gen_algorithm must be a str, not %s" % type(alg).__name__)
    if alg.lower() not in _GEN_ALGORITHMS:
        raise _core.InvalidArgumentError(
            "data_gen_algorithm must be 'random' (or 'prand', the same here), got %r" % alg)


def _put_plan(prefix, num, template, max_in_flight, size, object_type, dedup_factor,
              compress_factor, data_gen_mode, chunk_size, more, data_gen_algorithm):
    """Checks put()'s arguments; returns (uris, size, max_in_flight, kind, dedup, compress)."""
    # 0.9.90 inserted data_gen_algorithm before data_gen_mode: put(..., 'random',
    # 'streaming'[, chunk_size]) positionally lands here as data_gen_mode='random',
    # chunk_size='streaming', more=(chunk_size,).
    if isinstance(chunk_size, str) and isinstance(data_gen_mode, str) \
            and data_gen_mode.lower() in _GEN_ALGORITHMS and len(more) <= 1:
        data_gen_algorithm, data_gen_mode, chunk_size = \
            data_gen_mode, chunk_size, (more[0] if more else 262144)
    elif more:
        raise TypeError("put() takes at most 11 positional arguments (12 in 0.9.90's order: "
                        "..., data_gen_algorithm, data_gen_mode, chunk_size)")
    num = _int(num, "num")
    if template is None:
        template = "object-{}"  # 0.9.90's default
    max_in_flight = _int(max_in_flight, "max_in_flight", 1)
    size = DEFAULT_OBJECT_SIZE if size is None else _int(size, "size")
    if not isinstance(object_type, str):
        raise TypeError("object_type must be a str, not %s" % type(object_type).__name__)
    dedup, compress = _factor(dedup_factor, "dedup_factor"), _factor(compress_factor,
                                                                      "compress_factor")
    _gen_mode(data_gen_mode)
    _gen_algorithm(data_gen_algorithm)
    _int(chunk_size, "chunk_size", 1)
    _, uris = build_uri_list(prefix, template, num)
    return uris, size, max_in_flight, _formats.object_kind(object_type), dedup, compress


def _put_objects(prefix, uris, size, max_in_flight, kind, dedup, compress,
                 should_create_bucket):
    c = _client()
    if should_create_bucket:
        try:
            c.mkdir(_bucket_level(prefix))
        except _core.Error:
            pass  # as the original: an existing bucket is fine, and a real fault shows below

    workers = max(1, min(max_in_flight, len(uris), _PUT_MEMORY // max(1, size)))
    gen_threads = max(1, py_total_cpus() // workers)  # few large objects: split each

    def one(uri):
        obj = _formats.build_object(kind, size,
                                    lambda buf: fill(buf, dedup, compress, gen_threads))
        c.put_bytes(uri, obj)

    run_each(one, uris, workers)


def put(prefix, num, template=None, max_in_flight=64, size=None, should_create_bucket=False,
        object_type="zeros", dedup_factor=1, compress_factor=1, data_gen_mode="streaming",
        chunk_size=262144, *more, data_gen_algorithm="random"):
    """Uploads num generated objects of size bytes under prefix (any scheme), named by
    template ("{}" or "{:06d}" -> index, a second field -> num; None: "object-{}"), up to
    max_in_flight at once.

    object_type: "npz", "tfrecord", "hdf5" (valid files of that format holding size bytes
    of data), anything else raw bytes ("zeros", the default, is the original's name for raw:
    the bytes follow dedup_factor / compress_factor, they are not zeros). dedup_factor N:
    1/N of each object's 4 KiB blocks unique; compress_factor N: about N:1 compressible.
    data_gen_mode / data_gen_algorithm / chunk_size: accepted as the original's; they do not
    change the data's properties; 0.9.90's positional order (data_gen_algorithm before
    data_gen_mode) is recognised. should_create_bucket: mkdir the bucket (or directory)
    first. The first failure raises once the uploads under way have ended."""
    uris, size, mif, kind, dedup, compress = _put_plan(
        prefix, num, template, max_in_flight, size, object_type, dedup_factor,
        compress_factor, data_gen_mode, chunk_size, more, data_gen_algorithm)
    _put_objects(prefix, uris, size, mif, kind, dedup, compress, bool(should_create_bucket))


def _submit(fn):
    from . import _aio
    return _aio._submit(fn)


def put_async(prefix, num, template=None, max_in_flight=64, size=None,
              should_create_bucket=False, object_type="zeros", dedup_factor=1,
              compress_factor=1, data_gen_mode="streaming", chunk_size=262144, *more,
              data_gen_algorithm="random"):
    """put() as an asyncio future (started at once; call it with an event loop running).
    Bad arguments raise here, as the original's."""
    uris, size, mif, kind, dedup, compress = _put_plan(
        prefix, num, template, max_in_flight, size, object_type, dedup_factor,
        compress_factor, data_gen_mode, chunk_size, more, data_gen_algorithm)
    create = bool(should_create_bucket)
    return _submit(lambda: _put_objects(prefix, uris, size, mif, kind, dedup, compress,
                                        create))


# ---- put_many: caller's data ----

def _items(items):
    if isinstance(items, (str, bytes)):
        raise TypeError("items must be a list of (uri, data) pairs")
    out = []
    for n, item in enumerate(items):
        try:
            uri, data = item
        except (TypeError, ValueError):
            raise TypeError("items[%d] must be a (uri, data) pair, not %r"
                            % (n, type(item).__name__)) from None
        if not isinstance(uri, str):
            raise TypeError("items[%d]: uri must be a str, not %s" % (n, type(uri).__name__))
        try:
            memoryview(data)
        except TypeError:
            raise TypeError("items[%d]: data must be bytes-like (bytes, bytearray, memoryview, "
                            "numpy array, BytesView), not %s"
                            % (n, type(data).__name__)) from None
        out.append((uri, data))
    return out


def _put_items(items, max_in_flight):
    c = _client()
    run_each(lambda it: c.put_bytes(it[0], it[1]), items, min(max_in_flight, 64))


def put_many(items, max_in_flight=64):
    """Stores every (uri, data) of items (data: any contiguous buffer, sent without a copy),
    up to max_in_flight at once; the first failure (in input order) raises once the uploads
    under way have ended."""
    items = _items(items)
    _put_items(items, _int(max_in_flight, "max_in_flight", 1))


def put_many_async(items, max_in_flight=64):
    """put_many() as an asyncio future (started at once; needs a running event loop)."""
    items = _items(items)
    mif = _int(max_in_flight, "max_in_flight", 1)
    return _submit(lambda: _put_items(items, mif))
