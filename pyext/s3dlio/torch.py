"""PyTorch datasets over object storage (any backend): ``s3dlio.torch``.

- ``ObjectStoreIterableDataset.from_prefix(uri, ...)`` (or ``(uris, ...)``): streams items
  through the C prefetch engine. Each epoch every item is yielded exactly once across ranks
  and DataLoader workers: item i belongs to rank ``i % world_size`` (rank and world_size from
  the arguments, else from ``torch.distributed`` when initialised, else 0 and 1); a rank's
  items are shuffled (``shuffle=True``: by ``seed`` and the epoch) and then split between the
  DataLoader's workers. Call ``set_epoch(e)`` each epoch (as with DistributedSampler) when
  DataLoader workers are not persistent: workers are copies, so their epoch counter does not
  advance on its own.
- ``ObjectStoreMapDataset(uri_or_uris, ...)``: ``ds[i]`` fetches object i; sharding is the
  sampler's job (DistributedSampler), as for any map-style dataset.

Items are 1-D uint8 tensors that share the memory of the received BytesView (zero-copy;
``torch.frombuffer`` keeps the view alive). Treat them as read-only: PyTorch has no read-only
tensors, and writing to one writes into the view's private buffer. ``zero_copy=False`` gives
ordinary writable tensors (a copy). ``transform`` (a callable) is applied to each tensor;
``return_uri=True`` yields ``(uri, tensor)`` pairs.
"""

import warnings

import torch
from torch.utils.data import Dataset as _TorchDataset
from torch.utils.data import IterableDataset as _TorchIterable

from ._dataset import PyBytesAsyncDataLoader, PyDataset, create_dataset

__all__ = ["ObjectStoreIterableDataset", "ObjectStoreMapDataset", "view_to_tensor"]


def view_to_tensor(view, zero_copy=True):
    """A 1-D uint8 tensor over a BytesView (or any buffer): shared memory when zero_copy,
    else a writable copy."""
    if len(view) == 0:
        return torch.empty(0, dtype=torch.uint8)
    if not zero_copy:
        return torch.frombuffer(bytearray(view), dtype=torch.uint8)
    with warnings.catch_warnings():
        # the buffer is read-only on purpose (see the module doc)
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(view, dtype=torch.uint8)


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


class ObjectStoreIterableDataset(_TorchIterable):
    """Objects streamed as uint8 tensors, each exactly once per epoch across ranks and
    DataLoader workers (see the module doc)."""

    def __init__(self, uris, shuffle=False, seed=0, zero_copy=True, transform=None,
                 rank=None, world_size=None, prefetch=64, max_in_flight=None,
                 return_uri=False):
        super().__init__()
        self.uris = _uris(uris)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.zero_copy = bool(zero_copy)
        self.transform = transform
        self.rank = rank
        self.world_size = world_size
        self.prefetch = prefetch
        self.max_in_flight = max_in_flight
        self.return_uri = return_uri
        self._epoch = 0

    @classmethod
    def from_prefix(cls, uri, **kwargs):
        return cls(create_dataset(uri), **kwargs)

    def set_epoch(self, epoch):
        self._epoch = int(epoch)

    def _loader(self):
        rank, world = _dist_rank_world(self.rank, self.world_size)
        ds = PyDataset.from_uris(self.uris)
        ld = PyBytesAsyncDataLoader(ds, batch_size=1, prefetch=self.prefetch,
                                    shuffle=self.shuffle, seed=self.seed, shard_rank=rank,
                                    shard_world_size=world, zero_copy=True,
                                    max_in_flight=self.max_in_flight)
        ld.set_epoch(self._epoch)
        self._epoch += 1
        return ld

    def __iter__(self):
        ld = self._loader()
        order = ld.epoch_order()
        it = iter(ld)
        try:
            for i, view in zip(order, it):
                t = view_to_tensor(view, self.zero_copy)
                if self.transform is not None:
                    t = self.transform(t)
                yield (self.uris[i], t) if self.return_uri else t
        finally:
            it.close()


class ObjectStoreMapDataset(_TorchDataset):
    """``ds[i]``: object i (prefix listing order, or the given URIs) as a uint8 tensor."""

    def __init__(self, uris, zero_copy=True, transform=None, return_uri=False):
        super().__init__()
        self.uris = _uris(uris)
        self.zero_copy = bool(zero_copy)
        self.transform = transform
        self.return_uri = return_uri

    @classmethod
    def from_prefix(cls, uri, **kwargs):
        return cls(create_dataset(uri), **kwargs)

    def __len__(self):
        return len(self.uris)

    def __getitem__(self, i):
        from ._server import client
        uri = self.uris[i]
        t = view_to_tensor(client().get(uri), self.zero_copy)
        if self.transform is not None:
            t = self.transform(t)
        return (uri, t) if self.return_uri else t
