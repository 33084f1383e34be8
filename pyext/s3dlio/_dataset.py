"""Datasets and loaders: the original's PyDataset, PyS3Dataset, PyVecDataset,
PyAsyncDataLoader, PyBytesAsyncDataLoader (+ their async iterators), the compatibility
names, create_dataset / create_async_loader, on any backend (listed through the server;
bytes come through get or the C prefetch engine).

Options: a dict, a PyLoaderOptions, keywords, or several (keywords win); see
_loader_options.py for the names and their checks.
  batch_size        items per batch for ``async for`` and ``batches()`` (32; 1 for
                    create_async_loader when not given, as the original)
  drop_last         drop a last partial batch (also drops its items from plain iteration)
  shuffle, seed     a new order each epoch, the same for the same seed and epoch; seed None:
                    one random seed per loader (all its epochs and DataLoader workers agree)
  prefetch          batches fetched ahead (0: the engine's minimum)
  num_workers       requests kept in flight by the prefetch engine (0: auto)
  max_in_flight     same as num_workers (wins when both are given)
  shard_rank, shard_world_size
                    item i (listing order) belongs to rank r when i % world == r; the rank's
                    items are then shuffled (when shuffle) and split between DataLoader
                    workers (worker w takes every n-th position from w)
  worker_id, num_workers_pytorch
                    that worker split given explicitly; else from torch's get_worker_info()
  reader_mode       "sequential" (whole objects, pipelined by the C engine) or "range" (each
                    object read in part_size ranges straight into one buffer, at most
                    max_inflight_parts at once)
  zero_copy         items are BytesView (no copy) instead of bytes
  auto_tune         accepted; the engine's sizing is fixed

What a dataset URI means: a URI ending in '/' is a directory (every object under it); else
the object it names, or the directory of that name (never its siblings: file:///data/val
does not read /data/val_extra/). On s3/az/gs a name that is neither is a key prefix
(s3://b/train- is every key starting with train-). Nothing there raises NotFoundError.
"""

import asyncio
import operator
import random
import re
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

from . import _core
from ._loader_options import PyLoaderOptions
from ._loader_options import parse as _parse_options
from ._server import client as _client
from ._server import raw_client as _raw_client

__all__ = ["PyDataset", "PyS3Dataset", "PyVecDataset", "PyAsyncDataLoader",
           "PyAsyncDataLoaderIter", "PyBytesAsyncDataLoader", "PyBytesAsyncDataLoaderIter",
           "PyS3DatasetCompat", "PyS3AsyncDataLoaderCompat", "PyS3AsyncDataLoader",
           "PyLoaderOptions", "DatasetIndexError", "create_dataset", "create_async_loader"]

_PATH_SCHEMES = ("file", "direct")


class DatasetIndexError(IndexError, _core.Error):
    """An index out of range: an IndexError, and a RuntimeError as the original raises."""


class _ItemBytes(bytes):
    """An item's bytes that may also be awaited: the original's get_item returns an
    awaitable, the seed's returns bytes; ``await ds.get_item(i)`` gives these bytes."""

    __slots__ = ()

    def __await__(self):
        return self
        yield  # a generator that finishes at once: await gives the bytes


def _item(data):
    """get_item's bytes: plain bytes (one copy), or, inside a running event loop (where the
    caller may ``await`` it as with the original), awaitable bytes (a bytes subclass, which
    costs CPython a second copy)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return data if type(data) is bytes else bytes(data)
    return _ItemBytes(data)


# ---- listing ----

def _scheme(uri):
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def _collapse(prefix):
    """A file/direct URI with runs of '/' in its path made one (the server's spelling)."""
    scheme, rest = prefix.split("://", 1)
    return scheme + "://" + re.sub("/{2,}", "/", rest)


def _list_under(prefix):
    """The objects under prefix (ending '/'), sorted. Entries outside it are dropped, so a
    server that lists by string prefix cannot leak siblings."""
    keep = (prefix, _collapse(prefix)) if _scheme(prefix) in _PATH_SCHEMES else (prefix,)
    uris = [u for u in _client().list(prefix, True)
            if not u.endswith("/") and u.startswith(keep)]
    uris.sort()
    return uris


def _not_found(uri, what):
    return _core.NotFoundError("%s: %s" % (uri, what))


def _parent(uri):
    return uri[:uri.rfind("/") + 1]


def _resolve(uri):
    """(the sorted object URIs a dataset URI stands for, the directory URI their keys are
    relative to); see the module doc."""
    if not isinstance(uri, str):
        raise TypeError("uri must be a str or a list of str, not %s" % type(uri).__name__)
    if not uri:
        raise _core.InvalidArgumentError("uri must not be empty")
    path_like = _scheme(uri) in _PATH_SCHEMES
    c = _client()
    if uri.endswith("/"):
        uris = _list_under(uri)
        if uris:
            return uris, uri
        if not path_like:
            raise _not_found(uri, "no objects under this prefix")
        try:
            c.stat(uri.rstrip("/"))
        except _core.InvalidArgumentError as e:
            if "directory" in str(e).lower():
                return [], uri  # an empty directory
            raise
        raise _not_found(uri, "not a directory")
    dir_error = None
    try:
        c.stat(uri)
        return [uri], _parent(uri)
    except FileNotFoundError:
        pass
    except _core.InvalidArgumentError as e:
        dir_error = e  # a directory (file, direct), or no object name (s3://bucket)
    uris = _list_under(uri + "/")
    if uris:
        return uris, uri + "/"
    if dir_error is not None:
        if path_like and "directory" in str(dir_error).lower():
            return [], uri + "/"
        if path_like:
            raise dir_error
    if not path_like:
        uris = sorted(u for u in c.list(uri, True)
                      if not u.endswith("/") and u.startswith(uri))
        if uris:
            return uris, _parent(uri)
        raise _not_found(uri, "no such object, and no objects under this prefix")
    raise _not_found(uri, "no such file or directory")


def _relative(uri, base):
    """uri's key under base (base as given, or in the server's spelling)."""
    for b in (base, _collapse(base) if _scheme(base) in _PATH_SCHEMES else base):
        if uri.startswith(b):
            return uri[len(b):]
    return uri


def _check_uris(uris):
    if isinstance(uris, (str, bytes)):
        raise TypeError("uris must be a list of str, not a single %s" % type(uris).__name__)
    out = list(uris)
    for u in out:
        if not isinstance(u, str):
            raise TypeError("uris must be str, got %s" % type(u).__name__)
    return out


def _read_ranges(uri, part_size, max_parts=1):
    """The object at uri read in part_size ranges straight into one buffer (a bytearray),
    at most max_parts ranges at once."""
    c = _client()
    size = c.stat(uri)["size"]
    buf = bytearray(size)
    mv = memoryview(buf)

    def part(off):
        n = min(part_size, size - off)
        got = c.get_into(uri, mv[off:off + n], off, n)
        if got != n:
            raise _core.Error("%s: short range read at %d: %d of %d bytes" % (uri, off, got, n))

    offsets = range(0, size, part_size)
    if max_parts <= 1 or len(offsets) <= 1:
        for off in offsets:
            part(off)
    else:
        # the client is thread-safe and releases the GIL: parts arrive in parallel
        with ThreadPoolExecutor(min(max_parts, len(offsets))) as ex:
            for f in [ex.submit(part, off) for off in offsets]:
                f.result()
    return buf


def _index(index, n):
    try:
        i = operator.index(index)
    except TypeError:
        raise TypeError("dataset index must be an int, not %s" % type(index).__name__) \
            from None
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise DatasetIndexError("Index %d out of range (dataset has %d items)" % (index, n))
    return i


# ---- datasets ----

class PyDataset:
    """The objects under a URI (see the module doc), a list of URIs, or in-memory items.

    ``len(ds)``; ``ds.get_item(i)`` / ``ds[i]``: bytes (awaitable too, as the original's),
    or a BytesView with zero_copy; ``get_uris()``: the URIs, in order; ``keys()``: their
    keys relative to the dataset's directory."""

    def __init__(self, uri, opts=None, **kwargs):
        self.opts, self._given = _parse_options(opts, kwargs)
        self._mem = None
        self._base = None  # the directory URI keys() are relative to (None: keys are URIs)
        if isinstance(uri, str):
            self._uris, self._base = _resolve(uri)
        elif uri is None:
            raise TypeError("uri must be a str or a list of str, not None")
        else:
            self._uris = _check_uris(uri)

    @classmethod
    def from_uris(cls, uris, opts=None, **kwargs):
        """Exactly these URIs, in this order."""
        return cls(_check_uris(uris), opts, **kwargs)

    @classmethod
    def from_prefix(cls, uri, opts=None, **kwargs):
        if not isinstance(uri, str):
            raise TypeError("uri must be a str, not %s" % type(uri).__name__)
        return cls(uri, opts, **kwargs)

    @classmethod
    def from_bytes_list(cls, items, opts=None, **kwargs):
        """A dataset of these byte strings, in memory (for tests and small data)."""
        ds = cls([], opts, **kwargs)
        ds._mem = [bytes(memoryview(x)) for x in items]
        return ds

    @property
    def zero_copy(self):
        return self.opts["zero_copy"]

    def __len__(self):
        return len(self._mem) if self._mem is not None else len(self._uris)

    def keys(self):
        """The objects' keys, in order: relative to the directory the dataset was made of
        ("sub/x.bin" for file:///d/sub/x.bin in create_dataset("file:///d/")), as later
        versions of the original return them (0.9.1 raised); the URIs themselves for a
        dataset made of a list of URIs."""
        if self._mem is not None:
            raise _core.Error("keys() not supported for an in-memory dataset")
        if self._base is None:
            return list(self._uris)
        return [_relative(u, self._base) for u in self._uris]

    def get_uris(self):
        """The object URIs, in order."""
        if self._mem is not None:
            raise _core.Error("get_uris() not supported for an in-memory dataset")
        return list(self._uris)

    def get_item(self, index):
        """Item index: bytes (a copy, as the seed; ``await`` gives the same bytes, as the
        original), or a BytesView (zero-copy) when the dataset was made with zero_copy."""
        i = _index(index, len(self))
        if self._mem is not None:
            return _item(self._mem[i])
        uri = self._uris[i]
        if self.opts["reader_mode"] == "range":
            buf = _read_ranges(uri, self.opts["part_size"], self.opts["max_inflight_parts"])
            return _core._bytesview(buf) if self.zero_copy else _item(buf)
        view = _client().get(uri)
        return view if self.zero_copy else _item(view.to_bytes())

    __getitem__ = get_item

    def __repr__(self):
        return "<s3dlio dataset of %d objects>" % len(self)


def _bucket_key(uri):
    rest = uri.split("://", 1)[-1]
    return rest.split("/", 1)[1] if "/" in rest else ""


class PyS3Dataset(PyDataset):
    """PyDataset whose keys() are the object keys (bucket-relative, as the original's:
    "prefix/file.bin" for s3://bucket/prefix/file.bin), on every scheme (file:///d/f:
    "d/f")."""

    def keys(self):
        return [_bucket_key(u) for u in self.get_uris()]


class PyS3DatasetCompat(PyS3Dataset):
    """The original's deprecated PyS3Dataset shim (any scheme here, not only s3://)."""

    def __init__(self, uri, opts=None, **kwargs):
        warnings.warn("PyS3DatasetCompat is deprecated: use PyDataset or create_dataset()",
                      DeprecationWarning, stacklevel=2)
        super().__init__(uri, opts, **kwargs)


class PyVecDataset:
    """A list of ints (the original's test dataset for PyAsyncDataLoader)."""

    def __init__(self, obj):
        if isinstance(obj, (str, bytes)):
            raise TypeError("PyVecDataset takes a list of ints, not %s" % type(obj).__name__)
        items = []
        for x in obj:
            if isinstance(x, float):
                raise TypeError("PyVecDataset items must be ints, not float")
            try:
                items.append(operator.index(x))
            except TypeError:
                raise TypeError("PyVecDataset items must be ints, not %s"
                                % type(x).__name__) from None
        self._items = items

    def __len__(self):
        return len(self._items)

    def __getitem__(self, idx):
        return self._items[_index(idx, len(self._items))]

    def __repr__(self):
        return "<s3dlio PyVecDataset of %d ints>" % len(self._items)


# ---- epoch order ----

def _torch_worker():
    tud = sys.modules.get("torch.utils.data")
    if tud is None:
        return 0, 1
    info = tud.get_worker_info()
    if info is None:
        return 0, 1
    return info.id, info.num_workers


def _worker_of(o):
    if o["num_workers_pytorch"] > 1:
        return o["worker_id"], o["num_workers_pytorch"]
    return _torch_worker()


def _epoch_order(n, o, seed, epoch, worker):
    """The indices of one epoch for a rank and DataLoader worker: the rank's share (i % world
    == rank), shuffled by seed and epoch, then the worker's every n-th position."""
    world, rank = o["shard_world_size"], o["shard_rank"]
    idx = list(range(rank, n, world))
    if o["shuffle"]:
        rng = random.Random(seed * 1000003 + epoch)
        if o["_replacement"]:
            idx = [idx[rng.randrange(len(idx))] for _ in idx]
        else:
            rng.shuffle(idx)
    wid, nw = worker
    if nw > 1:
        idx = idx[wid::nw]
    if o["drop_last"]:
        del idx[len(idx) - len(idx) % o["batch_size"]:]
    return idx


def _new_seed(o):
    seed = o["seed"]
    return seed if seed is not None else random.SystemRandom().randrange(1 << 62)


def _chunks(seq, size):
    return [seq[i:i + size] for i in range(0, len(seq), size)]


class PyAsyncDataLoaderIter:
    """The async iterator of a PyAsyncDataLoader: lists of ints, one per batch."""

    def __init__(self, batches):
        self._it = iter(batches)

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


class PyAsyncDataLoader:
    """``async for batch in PyAsyncDataLoader(PyVecDataset([...]), opts)``: lists of ints of
    batch_size (drop_last, shuffle/seed and sharding honoured; each iteration one epoch)."""

    def __init__(self, dataset, opts=None, **kwargs):
        if not isinstance(dataset, PyVecDataset):
            raise TypeError("PyAsyncDataLoader takes a PyVecDataset, not %s"
                            % type(dataset).__name__)
        self.dataset = dataset
        self.opts, self._given = _parse_options(opts, kwargs)
        self._seed = _new_seed(self.opts)
        self._epoch = 0

    def set_epoch(self, epoch):
        self._epoch = int(epoch)

    def __aiter__(self):
        o = self.opts
        idx = _epoch_order(len(self.dataset), o, self._seed, self._epoch, _worker_of(o))
        self._epoch += 1
        items = self.dataset._items
        return PyAsyncDataLoaderIter(_chunks([items[i] for i in idx], o["batch_size"]))


_END = object()


class PyBytesAsyncDataLoaderIter:
    """The async iterator of a PyBytesAsyncDataLoader: one epoch as lists of batch_size
    items. Each batch is awaited off the event loop (a worker thread waits for the
    engine). close() / aclose() stop the engine early (dropping the iterator does too)."""

    def __init__(self, loader):
        self._batches = loader.batches()
        self._lock = threading.Lock()
        self._done = False

    def __aiter__(self):
        return self

    def _next(self):
        with self._lock:
            return next(self._batches, _END)

    async def __anext__(self):
        if self._done:
            raise StopAsyncIteration
        b = await asyncio.get_running_loop().run_in_executor(None, self._next)
        if b is _END:
            self._done = True
            raise StopAsyncIteration
        return b

    def close(self):
        with self._lock:
            self._done = True
            self._batches.close()

    async def aclose(self):
        self.close()


class PyBytesAsyncDataLoader:
    """Iterates a dataset, fetching ahead on a C thread (see the module doc for options).

    ``async for batch in loader`` (as the original) and ``for batch in loader.batches()``:
    lists of batch_size items. ``for item in loader`` (the seed): one item per step (bytes,
    or BytesView with zero_copy). Every iteration (of any kind) is one epoch; with shuffle
    the order changes each epoch (``set_epoch(e)`` sets the next epoch's number)."""

    def __init__(self, dataset, opts=None, **kwargs):
        if isinstance(dataset, (str, list, tuple)):
            dataset = create_dataset(dataset)
        if not isinstance(dataset, PyDataset):
            raise TypeError("PyBytesAsyncDataLoader takes a PyDataset, not %s"
                            % type(dataset).__name__)
        self.dataset = dataset
        self.opts, self._given = _parse_options(dataset._given, opts, kwargs)
        self._seed = _new_seed(self.opts)
        self._epoch = 0
        self.last_stats = None

    def set_epoch(self, epoch):
        self._epoch = int(epoch)

    @property
    def epoch(self):
        return self._epoch

    def epoch_order(self, epoch=None, worker=None):
        """The item indices of one epoch for this rank (and DataLoader worker), in order."""
        return _epoch_order(len(self.dataset), self.opts, self._seed,
                            self._epoch if epoch is None else epoch,
                            _worker_of(self.opts) if worker is None else worker)

    def _items(self):
        """One epoch's items, in order (a generator; closing it stops the engine)."""
        o = self.opts
        idx = self.epoch_order()
        self._epoch += 1
        ds = self.dataset
        if ds._mem is not None:
            for i in idx:
                yield ds._mem[i]
            return
        order = [ds._uris[i] for i in idx]
        zero_copy = o["zero_copy"]
        if o["reader_mode"] == "range":
            for u in order:
                buf = _read_ranges(u, o["part_size"], o["max_inflight_parts"])
                yield _core._bytesview(buf) if zero_copy else bytes(buf)
            return
        ahead = o["prefetch"] * o["batch_size"]
        in_flight = o["max_in_flight"] or o["num_workers"] or min(64, max(16, ahead // 2))
        cap = max(ahead, 2 * in_flight, 2)
        window = max(1, min(cap // 2, in_flight))
        # the C engine needs the real client (not the op-log's wrapper): its fetches are
        # not logged one by one
        pf = _core.Prefetcher(_raw_client(), order, cap, window, in_flight, not zero_copy)
        try:
            yield from pf
        finally:
            self.last_stats = pf.stats()
            pf.close()

    def __iter__(self):
        return self._items()

    def batches(self):
        """One epoch as lists of batch_size items (the last shorter unless drop_last)."""
        bs = self.opts["batch_size"]
        batch = []
        it = self._items()
        try:
            for item in it:
                batch.append(item)
                if len(batch) == bs:
                    yield batch
                    batch = []
            if batch and not self.opts["drop_last"]:
                yield batch
        finally:
            it.close()

    def __aiter__(self):
        return PyBytesAsyncDataLoaderIter(self)

    def __repr__(self):
        return "<s3dlio loader of %d objects, batch_size=%d>" % (len(self.dataset),
                                                                  self.opts["batch_size"])


def create_dataset(uri, opts=None, **kwargs):
    """A PyDataset: uri a directory or prefix, one object, or a list of URIs (see the
    module doc). opts / keywords: loader options (zero_copy=True for BytesView items)."""
    if isinstance(uri, (list, tuple)):
        return PyDataset.from_uris(uri, opts, **kwargs)
    if not isinstance(uri, str):
        raise TypeError("uri must be a str or a list of str, not %s" % type(uri).__name__)
    return PyDataset(uri, opts, **kwargs)


def create_async_loader(uri, opts=None, **kwargs):
    """A PyBytesAsyncDataLoader over create_dataset(uri, opts) (uri may also be a PyDataset).
    batch_size is 1 unless given (the original's default here)."""
    if isinstance(uri, PyDataset):
        loader = PyBytesAsyncDataLoader(uri, opts, **kwargs)
    else:
        loader = PyBytesAsyncDataLoader(create_dataset(uri, opts, **kwargs))
    if "batch_size" not in loader._given:
        loader.opts["batch_size"] = 1
    return loader


class PyS3AsyncDataLoaderCompat(PyBytesAsyncDataLoader):
    """The original's deprecated PyS3AsyncDataLoader: create_async_loader(uri, opts) as a
    class (any scheme here, not only s3://; ``async for`` works, unlike the original's)."""

    def __init__(self, uri, opts=None, **kwargs):
        warnings.warn("PyS3AsyncDataLoader is deprecated: use create_async_loader()",
                      DeprecationWarning, stacklevel=2)
        if isinstance(uri, PyDataset):
            super().__init__(uri, opts, **kwargs)
        else:
            super().__init__(create_dataset(uri, opts, **kwargs))
        if "batch_size" not in self._given:
            self.opts["batch_size"] = 1


PyS3AsyncDataLoader = PyS3AsyncDataLoaderCompat
