"""PyTorch datasets over object storage (any backend): ``s3dlio.torch``. Importing it needs
PyTorch.

- ``S3IterableDataset`` / ``ObjectStoreIterableDataset`` (``(uri, *, loader_opts, ...)`` or
  ``.from_prefix(uri, batch_size=1, shuffle=False, seed=0, prefetch=8, ...)``, the
  original's signatures, plus this package's ``shuffle``, ``seed``, ``zero_copy``,
  ``transform``, ``rank``, ``world_size``, ``prefetch``, ``max_in_flight``, ``return_uri``):
  streams items through the C prefetch engine. Each epoch every item comes exactly once
  across ranks and DataLoader workers: item i belongs to rank ``i % world_size``; a rank's
  items are shuffled (by ``seed`` and the epoch) and then split between the DataLoader's
  workers (always: the original gave every worker every item). Ranks: ``rank`` and
  ``world_size`` if given, else, with ``enable_sharding`` (the default of
  ObjectStoreIterableDataset, not of S3IterableDataset, as in the original),
  ``torch.distributed`` when initialised. Each epoch has a new order: the dataset counts its
  epochs, and in DataLoader workers (copies whose counter starts again each epoch unless
  they are persistent) torch's per-epoch base seed is mixed in, so the orders follow
  ``torch.manual_seed`` (or the DataLoader's ``generator``) and every worker of an epoch
  agrees on one. ``set_epoch(e)`` (as with DistributedSampler) instead makes the order
  depend on ``seed`` and ``e`` only.
- ``S3MapDataset`` / ``ObjectStoreMapDataset(uri, *, reader_mode, part_size,
  max_inflight_parts, writable, suppress_nonwritable_warning, return_type)``: ``ds[i]`` fetches
  object i; sharding is the sampler's job (DistributedSampler).

Items (``return_type``): "tensor" (default): 1-D uint8 tensors sharing the memory of the
received BytesView (zero-copy; ``torch.frombuffer`` keeps the view alive; treat them as
read-only: PyTorch has no read-only tensors, and writing to one writes into the view's
private buffer); ``writable=True`` (or ``zero_copy=False``) gives ordinary writable tensors
(one copy). "bytes": bytes. "reader": a file-like reader (read, readinto, readall, read_all,
seek, tell, close, len, context manager) over the received buffer. ``transform`` (a
callable) is applied to each item; ``return_uri=True`` yields ``(uri, item)`` pairs.
"""

import random
import warnings

import torch
from torch.utils.data import Dataset as _TorchDataset
from torch.utils.data import IterableDataset as _TorchIterable

from . import _core
from ._dataset import PyBytesAsyncDataLoader, PyDataset, _index, _read_ranges, create_dataset
from ._loader_options import as_bool
from ._loader_options import parse as _parse_options
from ._server import client as _client

__all__ = ["S3IterableDataset", "S3MapDataset", "ObjectStoreIterableDataset",
           "ObjectStoreMapDataset", "view_to_tensor"]

_RETURN_TYPES = ("tensor", "bytes", "reader")
_NONWRITABLE = "The given buffer is not writable"

# The original's from_prefix defaults (its _normalize_opts).
_FROM_PREFIX = {"batch_size": 1, "drop_last": False, "shuffle": False, "seed": 0,
                "num_workers": 0, "prefetch": 8, "auto_tune": False,
                "reader_mode": "sequential", "part_size": 8 << 20, "max_inflight_parts": 4}


def view_to_tensor(view, zero_copy=True, suppress_nonwritable_warning=True):
    """A 1-D uint8 tensor over a BytesView (or any buffer): shared memory when zero_copy,
    else a writable copy."""
    if len(view) == 0:
        return torch.empty(0, dtype=torch.uint8)
    if not zero_copy:
        return torch.frombuffer(bytearray(view), dtype=torch.uint8)
    if not suppress_nonwritable_warning:
        return torch.frombuffer(view, dtype=torch.uint8)
    with warnings.catch_warnings():
        # the buffer is read-only on purpose (see the module doc)
        warnings.filterwarnings("ignore", message=_NONWRITABLE)
        return torch.frombuffer(view, dtype=torch.uint8)


class _BytesReader:
    """A file-like reader over one object's bytes (the original's "reader" items); the
    buffer is shared until read."""

    def __init__(self, data):
        self._buf = memoryview(data)
        self._pos = 0
        self._closed = False

    def _check(self):
        if self._closed:
            raise ValueError("I/O operation on closed reader")

    def read(self, size=-1):
        self._check()
        end = len(self._buf) if size is None or size < 0 else min(len(self._buf),
                                                                   self._pos + int(size))
        start = min(self._pos, end)
        self._pos = max(self._pos, end)
        return bytes(self._buf[start:end])

    def readall(self):
        return self.read(-1)

    read_all = readall

    def readinto(self, b):
        self._check()
        dst = memoryview(b).cast("B")
        n = max(0, min(len(dst), len(self._buf) - self._pos))
        dst[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def seek(self, offset, whence=0):
        self._check()
        base = {0: 0, 1: self._pos, 2: len(self._buf)}.get(whence)
        if base is None:
            raise ValueError("whence must be 0, 1 or 2, got %r" % (whence,))
        pos = base + int(offset)
        if pos < 0:
            raise ValueError("negative seek position %d" % pos)
        self._pos = pos
        return pos

    def tell(self):
        self._check()
        return self._pos

    def readable(self):
        return True

    def seekable(self):
        return True

    def writable(self):
        return False

    @property
    def closed(self):
        return self._closed

    def close(self):
        self._closed = True
        self._buf.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    def __len__(self):
        return len(self._buf)


def _return_type(rt):
    r = str(rt).lower()
    if r not in _RETURN_TYPES:
        raise _core.InvalidArgumentError("return_type must be 'tensor', 'bytes', or 'reader', "
                                         "got %r" % (rt,))
    return r


def _copy_mode(zero_copy, writable):
    """True when tensors are copied (writable=True or zero_copy=False: one choice, two
    names)."""
    w = as_bool("writable", writable)
    if w and zero_copy is not None and as_bool("zero_copy", zero_copy):
        raise _core.InvalidArgumentError("writable=True contradicts zero_copy=True (writable "
                                         "tensors are copies)")
    return w or zero_copy is not None and not as_bool("zero_copy", zero_copy)


def _uris(uri_or_uris):
    if isinstance(uri_or_uris, PyDataset):
        return uri_or_uris.get_uris()
    return create_dataset(uri_or_uris).get_uris()


def _dist_rank_world(rank, world_size):
    if rank is not None and world_size is not None:
        return rank, world_size
    d = getattr(torch, "distributed", None)
    if d is not None and d.is_available() and d.is_initialized():
        return (d.get_rank() if rank is None else rank,
                d.get_world_size() if world_size is None else world_size)
    return (0 if rank is None else rank), (1 if world_size is None else world_size)


class _Items:
    """How one object's buffer becomes an item (shared by both dataset kinds)."""

    def _init_items(self, return_type, zero_copy, writable, suppress_nonwritable_warning,
                    transform, return_uri):
        self.return_type = _return_type(return_type)
        self.copy = _copy_mode(zero_copy, writable)
        self.zero_copy = not self.copy
        self.suppress_nonwritable_warning = bool(suppress_nonwritable_warning)
        self.transform = transform
        self.return_uri = bool(return_uri)

    def _item(self, uri, buf):
        rt = self.return_type
        if rt == "tensor":
            x = view_to_tensor(buf, not self.copy, self.suppress_nonwritable_warning)
        elif rt == "reader":
            x = _BytesReader(buf)
        else:
            x = buf if type(buf) is bytes else bytes(buf)
        if self.transform is not None:
            x = self.transform(x)
        return (uri, x) if self.return_uri else x


def _mix_seed(seed, base_seed):
    """One 63-bit seed from the dataset's seed and torch's per-epoch base seed."""
    m = (1 << 64) - 1
    h = ((seed & m) * 0x9E3779B97F4A7C15 + (base_seed & m)) & m
    h = ((h ^ (h >> 31)) * 0xBF58476D1CE4E5B9) & m  # splitmix64's finalizer
    return (h ^ (h >> 29)) >> 1


class ObjectStoreIterableDataset(_Items, _TorchIterable):
    """Objects streamed as uint8 tensors (or bytes, or readers), each exactly once per epoch
    across ranks and DataLoader workers (see the module doc). Loader options come from
    loader_opts (a dict or a PyLoaderOptions), then other keywords, then the explicit
    shuffle, seed, prefetch and max_in_flight."""

    _default_sharding = True

    def __init__(self, uri, shuffle=None, seed=None, zero_copy=None, transform=None,
                 rank=None, world_size=None, prefetch=None, max_in_flight=None,
                 return_uri=False, *, loader_opts=None, writable=False,
                 suppress_nonwritable_warning=True, enable_sharding=None,
                 return_type="tensor", **options):
        super().__init__()
        self._init_items(return_type, zero_copy, writable, suppress_nonwritable_warning,
                         transform, return_uri)
        explicit = {"shuffle": shuffle, "seed": seed, "prefetch": prefetch,
                    "max_in_flight": max_in_flight}
        o, given = _parse_options({"batch_size": 1, "prefetch": 64}, loader_opts, options,
                                  explicit)
        if o["seed"] is None:
            # one seed for the dataset, so its DataLoader workers (copies) agree
            o["seed"] = random.SystemRandom().randrange(1 << 62)
        o["zero_copy"] = self.return_type != "bytes"
        self.opts = o
        self._opts_sharded = "shard_world_size" in given or "shard_rank" in given
        self.uris = _uris(uri)
        self.rank = rank
        self.world_size = world_size
        self.enable_sharding = (self._default_sharding if enable_sharding is None
                                else as_bool("enable_sharding", enable_sharding))
        self._epoch = 0
        self._epoch_set = False  # set_epoch() called: the order is the seed's and the epoch's

    @property
    def shuffle(self):
        return self.opts["shuffle"]

    @property
    def seed(self):
        return self.opts["seed"]

    @classmethod
    def from_prefix(cls, uri, *, batch_size=1, drop_last=False, shuffle=False, seed=0,
                    num_workers=0, prefetch=8, auto_tune=False, reader_mode="sequential",
                    part_size=8 << 20, max_inflight_parts=4, enable_sharding=None,
                    writable=False, suppress_nonwritable_warning=True, return_type="tensor",
                    loader_opts=None, **kwargs):
        """The original's from_prefix. loader_opts (this package's addition) first, then the
        keywords that differ from their defaults; other keywords go to the constructor."""
        named = {"batch_size": batch_size, "drop_last": drop_last, "shuffle": shuffle,
                 "seed": seed, "num_workers": num_workers, "prefetch": prefetch,
                 "auto_tune": auto_tune, "reader_mode": reader_mode, "part_size": part_size,
                 "max_inflight_parts": max_inflight_parts}
        opts = dict(_FROM_PREFIX)
        if loader_opts is not None:
            opts.update(_parse_options(loader_opts)[1])
        opts.update((k, v) for k, v in named.items() if v != _FROM_PREFIX[k])
        return cls(uri, loader_opts=opts, enable_sharding=enable_sharding, writable=writable,
                   suppress_nonwritable_warning=suppress_nonwritable_warning,
                   return_type=return_type, **kwargs)

    def set_epoch(self, epoch):
        self._epoch = int(epoch)
        self._epoch_set = True

    def _loader(self):
        o = dict(self.opts)
        info = torch.utils.data.get_worker_info()
        if info is not None and not self._epoch_set:
            # Workers are fresh copies each epoch (their counter restarts): mix in torch's
            # base seed of this epoch (worker seed - worker id), drawn from torch's RNG for
            # every new DataLoader iterator and the same in all of its workers.
            o["seed"] = _mix_seed(o["seed"], info.seed - info.id)
        if self.rank is not None or self.world_size is not None or (
                self.enable_sharding and not self._opts_sharded):
            o["shard_rank"], o["shard_world_size"] = _dist_rank_world(self.rank,
                                                                      self.world_size)
        ld = PyBytesAsyncDataLoader(PyDataset.from_uris(self.uris), o)
        ld.set_epoch(self._epoch)
        self._epoch += 1
        return ld

    def __iter__(self):
        ld = self._loader()
        order = ld.epoch_order()
        it = iter(ld)
        try:
            for i, buf in zip(order, it):
                yield self._item(self.uris[i], buf)
        finally:
            it.close()


class ObjectStoreMapDataset(_Items, _TorchDataset):
    """``ds[i]``: object i (listing order, or the given URIs) as a uint8 tensor (or bytes,
    or a reader)."""

    def __init__(self, uri, zero_copy=None, transform=None, return_uri=False, *,
                 reader_mode="sequential", part_size=8 << 20, max_inflight_parts=4,
                 writable=False, suppress_nonwritable_warning=True, return_type="tensor"):
        super().__init__()
        self._init_items(return_type, zero_copy, writable, suppress_nonwritable_warning,
                         transform, return_uri)
        o, _ = _parse_options({"reader_mode": reader_mode, "part_size": part_size,
                               "max_inflight_parts": max_inflight_parts})
        self.reader_mode = o["reader_mode"]
        self.part_size = o["part_size"]
        self.max_inflight_parts = o["max_inflight_parts"]
        self.uris = _uris(uri)

    @classmethod
    def from_prefix(cls, uri, **kwargs):
        return cls(uri, **kwargs)

    def __len__(self):
        return len(self.uris)

    def __getitem__(self, i):
        uri = self.uris[_index(i, len(self.uris))]
        if self.reader_mode == "range":
            buf = _read_ranges(uri, self.part_size, self.max_inflight_parts)
        else:
            buf = _client().get(uri)
        return self._item(uri, buf)


class S3IterableDataset(ObjectStoreIterableDataset):
    """The original's name and defaults (ranks from torch.distributed only with
    enable_sharding=True); works on every scheme."""

    _default_sharding = False


class S3MapDataset(ObjectStoreMapDataset):
    """The original's name; works on every scheme (the original rebuilt s3:// URIs)."""
