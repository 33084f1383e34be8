"""The storage calls of the s3dlio API (the seed's and the original 0.9.1's), on every backend,
through the server (``_server.client()``): get, get_range, get_many, get_object, get_into,
put_bytes, stat, exists, list, delete, prefetch, mkdir, the original's list_objects,
create_bucket/delete_bucket, get_many_stats, download/upload, mp_get and its small helpers.

This layer stays thin: argument checks, the original's argument forms, and the URI
bookkeeping of list/delete/download/upload. Every byte moves in the C extension with the GIL
released; download and upload map files and move bytes straight between the page cache and
the server (no intermediate buffer).

Where the original differs from the seed or is unsafe, the choice is documented in
pyext/API.md ("Differences from the original").
"""

import builtins
import concurrent.futures
import glob as _glob
import logging
import mmap
import multiprocessing
import os
import re
import tempfile
import threading
import time

from . import _core
from ._server import client as _client
from ._threads import run_each

__all__ = [
    "get", "get_range", "get_many", "get_object", "get_into", "put_bytes", "stat", "exists",
    "list", "delete", "prefetch", "stats", "mkdir", "list_objects", "create_bucket",
    "delete_bucket", "get_many_stats", "download", "upload", "mp_get", "list_keys_from_s3",
    "list_uris", "get_by_key", "stat_key", "list_keys", "list_full_uris", "stat_object",
]

_log = logging.getLogger("s3dlio")

# The original's stat() keys; the server knows size, mtime, etag (and for some stores the
# content type); the rest are None unless the store reports them.
_STAT_KEYS = ("size", "last_modified", "etag", "content_type", "content_language",
              "content_encoding", "cache_control", "content_disposition", "expires",
              "storage_class", "server_side_encryption", "ssekms_key_id",
              "sse_customer_algorithm", "version_id", "replication_status", "metadata")

_SCHEMES = ("file://", "direct://", "s3://", "az://", "gs://", "gcs://")


def _check_uri(uri, what="uri"):
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise TypeError("%s must be a str, not %s" % (what, type(uri).__name__))
    if not uri:
        raise _core.InvalidArgumentError("%s must not be empty" % what)
    return uri


# ---- reads ----

def get(uri):
    """The whole object at uri, as a BytesView (zero-copy)."""
    return _client().get(_check_uri(uri))


def get_range(uri, offset, length=None):
    """length bytes of the object at uri from offset (None: to the end), as a BytesView.
    An offset past the end raises InvalidArgumentError (a ValueError and RuntimeError)."""
    if offset is None:
        raise TypeError("offset must be an int, not None")
    return _client().get(_check_uri(uri), offset, length)


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


def get_object(bucket, key=None, offset=None, length=None):
    """The original's S3 call: get_object(bucket, key, offset=None, length=None) reads
    s3://bucket/key (a range when offset/length are given) as a BytesView. Also
    get_object(uri) (one argument with a scheme, the later original's form) for any
    backend."""
    if key is None:
        uri = _check_uri(bucket, "uri")
        if "://" not in uri:
            raise TypeError("get_object() takes (bucket, key) or (uri): got one argument "
                            "without a scheme: %r" % uri)
    else:
        if not isinstance(bucket, str) or not isinstance(key, str):
            raise TypeError("bucket and key must be str")
        b = bucket[5:] if bucket.startswith("s3://") else bucket
        b = b.rstrip("/")
        if not b or "/" in b:
            raise _core.InvalidArgumentError(
                "bucket must be a non-empty name without '/': %r" % bucket)
        if not key:
            raise _core.InvalidArgumentError("key must not be empty")
        uri = "s3://" + b + "/" + key.lstrip("/")
    if offset is None and length is None:
        return _client().get(uri)
    return _client().get(uri, 0 if offset is None else offset, length)


def get_into(uri, buffer, offset=0, length=None):
    """Receives the object at uri (or length bytes from offset) into buffer, any writable
    C-contiguous buffer; returns the bytes written. A buffer too small raises
    InvalidArgumentError."""
    return _client().get_into(_check_uri(uri), buffer, offset, length)


# ---- writes ----

def _buffer_arg(data):
    """data as a buffer: itself when it has the buffer protocol; else an object with
    __bytes__ (the original accepts those) is converted once."""
    try:
        memoryview(data).release()
        return data
    except TypeError:
        if hasattr(type(data), "__bytes__"):
            return bytes(data)
        raise TypeError("data must be bytes-like (bytes, bytearray, memoryview, numpy array, "
                        "BytesView) or define __bytes__, not %s" % type(data).__name__) \
            from None


def put_bytes(uri, data):
    """Stores data (any contiguous buffer, sent without a copy; or an object with __bytes__)
    at uri; returns once the server stored and verified the whole object."""
    _client().put_bytes(_check_uri(uri), _buffer_arg(data))


def mkdir(uri):
    """Makes uri exist as a place to put objects: file:// and direct:// create the directory
    (and its parents); for s3://, az:// and gs:// a bucket-level URI creates the bucket or
    container, a deeper prefix needs nothing (object stores have no directories)."""
    _client().mkdir(_check_uri(uri))


def _bucket_uri(name, what):
    """The bucket-level URI for the original's create_bucket/delete_bucket argument: a bare
    name (or "s3://name/") is an S3 bucket; any other URI is taken as given."""
    name = _check_uri(name, what)
    if "://" in name and not name.startswith("s3://"):
        return name
    b = name[5:] if name.startswith("s3://") else name
    b = b.rstrip("/")
    if not b or "/" in b:
        raise _core.InvalidArgumentError("%s must be a bucket name, got %r" % (what, name))
    return "s3://" + b


def create_bucket(bucket_name):
    """Creates the bucket (a bare name or s3://name: S3; az://account/container, gs://bucket,
    file:///dir: that store's container). An existing bucket you own is not an error."""
    _client().mkdir(_bucket_uri(bucket_name, "bucket_name"))


def delete_bucket(bucket_name):
    """Deletes the (empty) bucket or container named as for create_bucket."""
    _client().rmdir(_bucket_uri(bucket_name, "bucket_name"))


# ---- metadata ----

def stat(uri):
    """dict of the object's metadata with the original's keys (size, last_modified, etag,
    content_type, ..., metadata; None where the store reports nothing) and mtime_ns."""
    d = _client().stat(_check_uri(uri))
    for k in _STAT_KEYS:
        d.setdefault(k, None)
    if d.get("metadata") is None:
        d["metadata"] = {}
    return d


# What the file backend answers for a directory (server/backends/file.c)
_IS_A_DIRECTORY = ": is a directory"


def exists(uri):
    """True when an object is at uri (a file:// directory is not an object: False, as in the
    original)."""
    try:
        _client().stat(_check_uri(uri))
    except FileNotFoundError:
        return False
    except _core.InvalidArgumentError as e:
        if str(e).endswith(_IS_A_DIRECTORY):
            return False
        raise
    return True


def list(uri, recursive=False, pattern=None, include_dirs=False):  # noqa: A001 (the name)
    """Full URIs of the objects under uri, sorted. A file:// URI naming a directory lists
    that directory (with or without a trailing slash); object stores take uri as a key
    prefix. recursive=False lists one level. pattern: a regex (str or compiled) searched in
    each URI. include_dirs=True adds the "sub-directories" of a one-level listing as URIs
    ending in '/' (the original lists objects only)."""
    uri = _check_uri(uri)
    if pattern is not None and not hasattr(pattern, "search"):
        if not isinstance(pattern, str):
            raise TypeError("pattern must be a str regex or None, not %s"
                            % type(pattern).__name__)
        try:
            pattern = re.compile(pattern)
        except re.error as e:
            raise _core.InvalidArgumentError("pattern is not a valid regex: %r: %s"
                                             % (pattern, e)) from None
    uris = _client().list(uri, bool(recursive))
    if not include_dirs:
        uris = [u for u in uris if not u.endswith("/")]
    if pattern is not None:
        uris = [u for u in uris if pattern.search(u)]
    uris.sort()
    return uris


def _under(uri, recursive):
    return [u for u in _client().list(uri, recursive) if not u.endswith("/")]


def delete(uri, recursive=False):
    """Deletes the object at uri. A URI ending in '/' (or recursive=True) deletes the
    objects under that prefix: one level, or all levels with recursive=True. Deleting
    what is not there is not an error (as in the original, and as S3's DELETE). A file://
    directory named without a trailing slash and without recursive=True is refused
    (InvalidArgumentError), not emptied."""
    uri = _check_uri(uri)
    c = _client()
    if uri.endswith("/") or recursive:
        prefix = uri if uri.endswith("/") else uri + "/"
        targets = []
        if not uri.endswith("/"):
            targets.append(uri)  # an object named exactly uri goes too
        try:
            targets += _under(prefix, bool(recursive))
        except FileNotFoundError:
            pass
        for u in sorted(set(targets)):
            try:
                c.delete(u)
            except FileNotFoundError:
                pass  # gone meanwhile (or never there): the goal holds
            except _core.InvalidArgumentError:
                if u != uri:
                    raise
                # uri itself is a directory (file://): its contents were the target
        return None
    try:
        c.delete(uri)
    except FileNotFoundError:
        pass
    return None


def stats():
    """Counters of this process's client: requests, errors, bytes_received, bytes_direct,
    bytes_copied, bytes_sent, connects, reconnects, busy_retries."""
    return _client().stats()


# ---- batches ----

def get_many_stats(uris, max_in_flight=64):
    """(count, total_bytes) of fetching every URI (the bytes are dropped as they arrive, in
    windows, so memory stays bounded); the first failure raises, naming its URI."""
    if isinstance(uris, (str, bytes)):
        raise TypeError("uris must be a list of str, not a single string")
    uris = builtins.list(uris)
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise _core.InvalidArgumentError("max_in_flight must be an int >= 1, got %r"
                                         % (max_in_flight,))
    c = _client()
    count = total = 0
    step = max(1, max_in_flight)
    for i in range(0, len(uris), step):
        for _, v in c.get_many(uris[i:i + step], max_in_flight):
            count += 1
            total += len(v)
    return count, total


def _umask():
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _download_one(uri, path):
    """uri into the file path: received straight into the mapped file's pages, written
    under a temporary name and renamed, so a failure never leaves a partial file. The
    file's blocks are allocated first, so a full disk is an OSError (ENOSPC) naming the
    file, never a SIGBUS of a write through the mapping."""
    c = _client()
    size = c.stat(uri)["size"]
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=d)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would have made it, not mkstemp's 0600
        if size > 0:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                raise OSError(e.errno, "download: cannot store %d bytes of %s in %s: %s"
                              % (size, uri, path, e.strerror)) from None
            with mmap.mmap(fd, size) as m:
                n = c.get_into(uri, m)
            if n != size:  # the object changed size between stat and get
                os.ftruncate(fd, n)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        tmp = None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return size


def download(src_uri, dest_dir, max_in_flight=64, recursive=True):
    """Copies the objects under src_uri (one level, or all with recursive=True) into the
    local directory dest_dir (created if needed), each as dest_dir/<its last name component>
    as the original does. Two objects with the same last name would overwrite each other:
    that raises InvalidArgumentError naming both, before anything is written. Returns
    None; every file is complete (written under a temporary name, then renamed)."""
    src_uri = _check_uri(src_uri, "src_uri")
    dest_dir = os.fspath(dest_dir)
    uris = [u for u in _client().list(src_uri, bool(recursive)) if not u.endswith("/")]
    if not uris:
        raise _core.NotFoundError("download: no objects under %s" % src_uri)
    names = {}
    for u in sorted(uris):
        name = u.rstrip("/").rsplit("/", 1)[-1]
        if name in ("", ".", ".."):
            raise _core.InvalidArgumentError("download: %s has no usable file name" % u)
        if name in names:
            raise _core.InvalidArgumentError(
                "download: %s and %s would both be written to %s"
                % (names[name], u, os.path.join(dest_dir, name)))
        names[name] = u
    os.makedirs(dest_dir, exist_ok=True)
    run_each(lambda kv: _download_one(kv[1], os.path.join(dest_dir, kv[0])),
             sorted(names.items()), max_in_flight)
    return None


def _expand(patterns):
    """The local files the original's upload patterns name: a file; a directory (its files,
    one level); a glob (* ? [); else a regex matched against the names in its directory."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    out = []
    for p in patterns:
        p = os.fspath(p)
        if not isinstance(p, str):
            raise TypeError("src_patterns must be str paths")
        if os.path.isfile(p):
            out.append(p)
        elif os.path.isdir(p):
            out += sorted(os.path.join(p, n) for n in os.listdir(p)
                          if os.path.isfile(os.path.join(p, n)))
        elif any(ch in p for ch in "*?["):
            out += sorted(f for f in _glob.glob(p) if os.path.isfile(f))
        else:
            d, pat = os.path.split(p)
            d = d or "."
            try:
                rx = re.compile(pat or ".*")
                names = os.listdir(d)
            except (re.error, OSError):
                continue
            out += sorted(os.path.join(d, n) for n in names
                          if rx.fullmatch(n) and os.path.isfile(os.path.join(d, n)))
    seen = set()
    return [f for f in out if not (f in seen or seen.add(f))]


class _ByteBudget:
    """Bounds the bytes that concurrent uploads hold in memory at once (one file above the
    limit still goes, alone)."""

    def __init__(self, limit):
        self.limit = limit
        self.used = 0
        self.cv = threading.Condition()

    def take(self, n):
        n = min(n, self.limit)
        with self.cv:
            while self.used and self.used + n > self.limit:
                self.cv.wait()
            self.used += n
        return n

    def give(self, n):
        with self.cv:
            self.used -= n
            self.cv.notify_all()


_UPLOAD_BUDGET = 1 << 30


def _upload_one(path, uri, budget):
    """The file at path stored at uri. Read into memory first (one copy): sending from a
    shared mapping would kill the process (SIGBUS) if another program truncated the file
    meanwhile. What the read got is what is stored."""
    c = _client()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        held = budget.take(size)
        try:
            buf = bytearray(size)
            mv = memoryview(buf)
            n = 0
            while n < size:
                got = f.readinto(mv[n:])
                if not got:
                    break  # the file shrank while we read it
                n += got
            c.put_bytes(uri, mv[:n])
            mv.release()
        finally:
            budget.give(held)
    return n


def upload(src_patterns, dest_prefix, max_in_flight=32, create_bucket=False):
    """Stores local files under dest_prefix, each as dest_prefix/<its file name>.
    src_patterns: paths, directories (their files), globs, or regexes over the names of one
    directory (e.g. "/data/shard_[0-9]+\\.npz"). create_bucket=True first creates the
    destination's bucket/container. No match raises NotFoundError; two files with one name
    raise InvalidArgumentError before anything is stored. Each file is read once into memory
    (at most 1 GiB held by concurrent uploads, one larger file alone)."""
    dest_prefix = _check_uri(dest_prefix, "dest_prefix")
    files = _expand(src_patterns)
    if not files:
        raise _core.NotFoundError("upload: no files matched %r" % (src_patterns,))
    if create_bucket:
        scheme, rest = dest_prefix.split("://", 1) if "://" in dest_prefix else ("s3", "")
        parts = rest.split("/")
        n = 2 if scheme == "az" else 1
        if scheme in ("s3", "az", "gs", "gcs") and len(parts) >= n and all(parts[:n]):
            _client().mkdir(scheme + "://" + "/".join(parts[:n]))
    base = dest_prefix if dest_prefix.endswith("/") else dest_prefix + "/"
    names = {}
    for f in files:
        name = os.path.basename(f)
        if name in names:
            raise _core.InvalidArgumentError(
                "upload: %s and %s would both be stored at %s"
                % (names[name], f, base + name))
        names[name] = f
    budget = _ByteBudget(_UPLOAD_BUDGET)
    run_each(lambda f: _upload_one(f, base + os.path.basename(f), budget), files,
             max_in_flight)
    return None


# ---- the original's multi-process GET benchmark ----

def _mp_worker(uris, jobs):
    t0 = time.perf_counter()
    n, b = get_many_stats(uris, jobs)
    return n, b, time.perf_counter() - t0


def mp_get(uri, procs=4, jobs=64, num=1000, template="object_{}.dat"):
    """The original's multi-process GET: fetches num objects named uri + template (with {}
    replaced by 0..num-1) from procs worker processes, each keeping jobs requests in flight,
    and returns {total_objects, total_bytes, duration_seconds, throughput_mb_s,
    ops_per_sec, workers: [{worker_id, objects, bytes, throughput_mb_s}]}
    (MB = 2**20 bytes, as the original). Any failed object raises, naming it."""
    uri = _check_uri(uri)
    for name, v in (("procs", procs), ("jobs", jobs), ("num", num)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "num" else 1):
            raise _core.InvalidArgumentError("%s must be a positive int, got %r" % (name, v))
    if not isinstance(template, str):
        raise TypeError("template must be a str")
    names = [template.replace("{}", str(i)) if "{}" in template else template + str(i)
             for i in range(num)]
    uris = [uri + n for n in names]
    shards = [uris[i::procs] for i in range(procs)]
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:
        ctx = multiprocessing.get_context()
    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=procs, mp_context=ctx) as ex:
        futs = [ex.submit(_mp_worker, s, jobs) for s in shards]
        concurrent.futures.wait(futs)
    elapsed = time.perf_counter() - t0
    workers = []
    tot_n = tot_b = 0
    for i, f in enumerate(futs):
        n, b, _ = f.result()
        tot_n += n
        tot_b += b
        workers.append({"worker_id": i, "objects": n, "bytes": b,
                        "throughput_mb_s": (b / 1048576.0) / elapsed if elapsed > 0 else 0.0})
    return {"total_objects": tot_n, "total_bytes": tot_b, "duration_seconds": elapsed,
            "throughput_mb_s": (tot_b / 1048576.0) / elapsed if elapsed > 0 else 0.0,
            "ops_per_sec": tot_n / elapsed if elapsed > 0 else 0.0, "workers": workers}


# ---- the original's small helpers (python/s3dlio/__init__.py of 0.9.1 and later) ----

def list_keys_from_s3(uri):
    """Object keys (without the bucket) under an s3://bucket/prefix/."""
    return list_objects(*_split_s3(uri), recursive=True)


def list_uris(uri):
    """Full URIs under the prefix (recursive)."""
    return list(uri, recursive=True)


def list_full_uris(uri):
    return list(uri, recursive=True)


def list_keys(uri):
    """The names of the objects under uri relative to it (recursive)."""
    base = _check_uri(uri)
    if not base.endswith("/"):
        base += "/"
    return [u[len(base):] for u in list(uri, recursive=True) if u.startswith(base)]


def get_by_key(bucket, key):
    return get_object(bucket, key)


def stat_key(bucket, key):
    return stat("s3://%s/%s" % (bucket, key))


def stat_object(uri):
    return stat(uri)


def _split_s3(uri):
    uri = _check_uri(uri)
    if not uri.startswith("s3://"):
        raise _core.InvalidArgumentError("expected an s3:// URI, got %r" % uri)
    rest = uri[5:]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise _core.InvalidArgumentError("no bucket in %r" % uri)
    return bucket, prefix


def list_objects(bucket, prefix, recursive=False):
    """The original's S3 listing: keys (without the bucket) of the objects under
    s3://bucket/prefix, one level unless recursive."""
    if not isinstance(bucket, str) or not isinstance(prefix, str):
        raise TypeError("bucket and prefix must be str")
    b = bucket[5:] if bucket.startswith("s3://") else bucket
    b = b.strip("/")
    if not b or "/" in b:
        raise _core.InvalidArgumentError("bucket must be a bucket name, got %r" % bucket)
    base = "s3://%s/" % b
    return [u[len(base):] for u in list(base + prefix.lstrip("/"), recursive=recursive)
            if u.startswith(base)]
