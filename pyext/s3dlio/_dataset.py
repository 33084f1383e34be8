"""Datasets and the async loader: the seed's create_dataset / create_async_loader, on any
backend (prefixes are listed through the server; bytes come through get / the C prefetch
engine).

Loader options (a dict, keywords, or both; keywords win). Unknown names raise ValueError.
  batch_size        items per batch (default 32) for ``async for`` and ``batches()``
  drop_last         drop a last partial batch (also drops its items from plain iteration)
  shuffle, seed     a new order each epoch, the same for the same seed and epoch; seed None:
                    one random seed per loader (all its epochs and DataLoader workers agree)
  prefetch          batches fetched ahead (queue of prefetch * batch_size items, >= 2)
  num_workers       requests kept in flight by the prefetch engine (0: auto, half the queue,
                    at most 64)
  max_in_flight     same as num_workers (wins when both are given)
  shard_rank, shard_world_size
                    item i (listing order) belongs to rank r when i % world == r; the rank's
                    items are then shuffled (when shuffle) and split between PyTorch
                    DataLoader workers (worker w takes every num_workers-th position from w)
  reader_mode       "sequential" (whole objects, pipelined by the C engine) or "range" (each
                    object read in part_size ranges straight into one buffer)
  part_size         range size for reader_mode "range" (default 8 MiB)
  zero_copy         items are BytesView (no copy) instead of bytes
"""

import asyncio
import random
import sys

from . import _core
from ._server import client as _client

__all__ = ["PyDataset", "PyBytesAsyncDataLoader", "create_dataset", "create_async_loader"]

DEFAULTS = {
    "batch_size": 32, "drop_last": False, "shuffle": False, "seed": None, "num_workers": 0,
    "max_in_flight": None, "prefetch": 4, "shard_rank": 0, "shard_world_size": 1,
    "reader_mode": "sequential", "part_size": 8 << 20, "zero_copy": False,
}


def _options(opts, kwargs):
    o = dict(DEFAULTS)
    for src in (opts or {}), kwargs:
        if not hasattr(src, "items"):
            raise TypeError("opts must be a dict, not %s" % type(src).__name__)
        for k, v in src.items():
            if k not in DEFAULTS:
                raise ValueError("unknown loader option %r (known: %s)"
                                 % (k, ", ".join(sorted(DEFAULTS))))
            o[k] = v
    for k in ("batch_size", "prefetch", "shard_world_size", "part_size"):
        if not isinstance(o[k], int) or isinstance(o[k], bool) or o[k] < 1:
            raise ValueError("%s must be an int >= 1, got %r" % (k, o[k]))
    for k in ("num_workers", "shard_rank"):
        if not isinstance(o[k], int) or isinstance(o[k], bool) or o[k] < 0:
            raise ValueError("%s must be an int >= 0, got %r" % (k, o[k]))
    if o["max_in_flight"] is not None and (not isinstance(o["max_in_flight"], int)
                                           or o["max_in_flight"] < 1):
        raise ValueError("max_in_flight must be an int >= 1, got %r" % (o["max_in_flight"],))
    if o["shard_rank"] >= o["shard_world_size"]:
        raise ValueError("shard_rank must be < shard_world_size, got %d and %d"
                         % (o["shard_rank"], o["shard_world_size"]))
    if o["reader_mode"] not in ("sequential", "range"):
        raise ValueError("reader_mode must be 'sequential' or 'range', got %r"
                         % (o["reader_mode"],))
    if o["seed"] is not None and not isinstance(o["seed"], int):
        raise ValueError("seed must be an int or None, got %r" % (o["seed"],))
    for k in ("drop_last", "shuffle", "zero_copy"):
        o[k] = bool(o[k])
    return o


def _list_prefix(uri):
    return [u for u in _client().list(uri, True) if not u.endswith("/")]


def _read_ranges(uri, part_size):
    """The object at uri read in part_size ranges straight into one buffer (a bytearray)."""
    c = _client()
    size = c.stat(uri)["size"]
    buf = bytearray(size)
    mv = memoryview(buf)
    off = 0
    while off < size:
        n = min(part_size, size - off)
        got = c.get_into(uri, mv[off:off + n], off, n)
        if got != n:
            raise _core.Error("%s: short range read at %d: %d of %d bytes" % (uri, off, got, n))
        off += n
    return buf


class PyDataset:
    """A list of object URIs: ``len(ds)``, ``ds[i]`` / ``get_item(i)`` (bytes, or BytesView
    with zero_copy), ``keys()`` / ``get_uris()`` (the URIs, in order)."""

    def __init__(self, uris, opts=None, **kwargs):
        self._uris = [u for u in uris]
        for u in self._uris:
            if not isinstance(u, str):
                raise TypeError("uris must be str, got %s" % type(u).__name__)
        self.opts = _options(opts, kwargs)

    @classmethod
    def from_uris(cls, uris, opts=None, **kwargs):
        if isinstance(uris, str):
            raise TypeError("from_uris takes a list of URIs, not a single str")
        return cls(uris, opts, **kwargs)

    @classmethod
    def from_prefix(cls, uri, opts=None, **kwargs):
        """Every object under the prefix uri, sorted (listed through the server). A uri that
        names an object (and is not a prefix of others) gives that one object."""
        uris = _list_prefix(uri)
        if not uris and not uri.endswith("/"):
            try:
                _client().stat(uri)
                uris = [uri]
            except FileNotFoundError:
                pass
        uris.sort()
        return cls(uris, opts, **kwargs)

    @property
    def zero_copy(self):
        return self.opts["zero_copy"]

    def __len__(self):
        return len(self._uris)

    def keys(self):
        return list(self._uris)

    def get_uris(self):
        return list(self._uris)

    def get_item(self, index):
        """Item index: bytes (a copy, as the seed), or a BytesView (zero-copy) when the
        dataset was made with zero_copy=True."""
        n = len(self._uris)
        if not isinstance(index, int):
            index = index.__index__()
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("dataset index %d out of range (%d items)" % (index, n))
        uri = self._uris[index]
        if self.opts["reader_mode"] == "range":
            buf = _read_ranges(uri, self.opts["part_size"])
            return _core._bytesview(buf) if self.zero_copy else bytes(buf)
        view = _client().get(uri)
        return view if self.zero_copy else view.to_bytes()

    __getitem__ = get_item

    def __repr__(self):
        return "<s3dlio dataset of %d objects>" % len(self._uris)


def _torch_worker():
    tud = sys.modules.get("torch.utils.data")
    if tud is None:
        return 0, 1
    info = tud.get_worker_info()
    if info is None:
        return 0, 1
    return info.id, info.num_workers


class PyBytesAsyncDataLoader:
    """Iterates a dataset, fetching ahead on a C thread (see the module doc for options).

    ``for item in loader``: one item per ``__next__`` (bytes, or BytesView with zero_copy),
    as the seed. ``async for batch in loader`` and ``for batch in loader.batches()``: lists
    of batch_size items. Every iteration (of any kind) is one epoch; with shuffle the order
    changes each epoch (``set_epoch(e)`` sets the next epoch's number explicitly)."""

    def __init__(self, dataset, opts=None, **kwargs):
        self.dataset = dataset
        merged = dict(dataset.opts)
        merged.update(opts or {})
        merged.update(kwargs)
        self.opts = _options(merged, {})
        seed = self.opts["seed"]
        self._seed = seed if seed is not None else random.SystemRandom().randrange(1 << 62)
        self._epoch = 0
        self.last_stats = None

    def set_epoch(self, epoch):
        self._epoch = int(epoch)

    @property
    def epoch(self):
        return self._epoch

    def epoch_order(self, epoch=None, worker=None):
        """The item indices of one epoch for this rank (and DataLoader worker), in order."""
        o = self.opts
        epoch = self._epoch if epoch is None else epoch
        wid, nw = _torch_worker() if worker is None else worker
        world, rank = o["shard_world_size"], o["shard_rank"]
        idx = list(range(rank, len(self.dataset), world))
        if o["shuffle"]:
            random.Random(self._seed * 1000003 + epoch).shuffle(idx)
        if nw > 1:
            idx = idx[wid::nw]
        if o["drop_last"]:
            bs = o["batch_size"]
            del idx[len(idx) - len(idx) % bs:]
        return idx

    def _items(self):
        """One epoch's items, in order (a generator; closing it stops the engine)."""
        o = self.opts
        idx = self.epoch_order()
        self._epoch += 1
        uris = self.dataset._uris
        order = [uris[i] for i in idx]
        zero_copy = o["zero_copy"]
        if o["reader_mode"] == "range":
            for u in order:
                buf = _read_ranges(u, o["part_size"])
                yield _core._bytesview(buf) if zero_copy else bytes(buf)
            return
        cap = max(2, o["prefetch"] * o["batch_size"])
        in_flight = o["max_in_flight"] or o["num_workers"] or max(1, min(64, cap // 2))
        window = max(1, min(cap // 2, max(in_flight, 1)))
        pf = _core.Prefetcher(_client(), order, cap, window, in_flight, not zero_copy)
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

    async def _abatches(self):
        loop = asyncio.get_running_loop()
        it = self.batches()
        end = object()
        try:
            while True:
                b = await loop.run_in_executor(None, next, it, end)
                if b is end:
                    break
                yield b
        finally:
            it.close()

    def __aiter__(self):
        return self._abatches()

    def __repr__(self):
        return "<s3dlio loader of %d objects, batch_size=%d>" % (len(self.dataset),
                                                                  self.opts["batch_size"])


def create_dataset(uri, opts=None, **kwargs):
    """A PyDataset: uri a prefix (every object under it, listed through the server), one
    object, or a list of URIs. opts/keywords: loader options (zero_copy=True for BytesView
    items)."""
    if isinstance(uri, (list, tuple)):
        return PyDataset.from_uris(uri, opts, **kwargs)
    if not isinstance(uri, str):
        raise TypeError("uri must be a str or a list of str, not %s" % type(uri).__name__)
    return PyDataset.from_prefix(uri, opts, **kwargs)


def create_async_loader(uri, opts=None, **kwargs):
    """A PyBytesAsyncDataLoader over create_dataset(uri) (uri may also be a PyDataset or a
    list of URIs). Options from the opts dict and/or keywords (batch_size=32 as in the
    seed)."""
    ds = uri if isinstance(uri, PyDataset) else create_dataset(uri)
    return PyBytesAsyncDataLoader(ds, opts, **kwargs)
