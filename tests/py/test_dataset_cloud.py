"""Datasets and loaders on every backend: file://, s3:// (s3rver), az:// (Azurite), gs://
(firebase-tools' storage emulator), with the session-scoped emulators and servers of
test_checkpoint_cloud.py (`clouds`, `cb`). A cloud backend skips, with the reason, only when
its emulator is not installed.

Per backend one small prefix of N objects (sizes 0..N-1 bytes plus a tag; one empty object),
listed through the server in pages of 5 (CLOUD_FLAGS): every item is checked against the
bytes written, not against another read through the same server.
"""
import asyncio

import pytest

from test_checkpoint_cloud import cb, clouds  # noqa: F401 (fixtures shared with that module)

N = 23
_PREFIXES = {}


def _content(i):
    return b"" if i == 0 else (b"item%02d:" % i + bytes([i]) * i)


@pytest.fixture
def ds(cb):  # noqa: F811
    """(s3dlio, prefix, expected {uri: bytes} in sorted order), written once per backend."""
    s3, b = cb
    prefix = _PREFIXES.get(b.name)
    if prefix is None:
        prefix = b.fresh() + "data/"
        for i in range(N):
            s3.put_bytes(prefix + "i%03d.bin" % i, _content(i))
        _PREFIXES[b.name] = prefix
    items = {prefix + "i%03d.bin" % i: _content(i) for i in range(N)}
    return s3, prefix, items


def test_dataset_lists_and_reads_every_item(ds):
    s3, prefix, items = ds
    uris = sorted(items)
    d = s3.create_dataset(prefix)
    assert len(d) == N and d.get_uris() == uris
    assert d.keys() == ["i%03d.bin" % i for i in range(N)]  # relative to the prefix
    assert [d.get_item(i) for i in range(N)] == [items[u] for u in uris]
    assert d[-1] == items[uris[-1]]
    zc = s3.create_dataset(prefix, zero_copy=True)
    assert isinstance(zc.get_item(5), s3.BytesView) and zc.get_item(5) == items[uris[5]]
    one = s3.create_dataset(uris[3])
    assert len(one) == 1 and one.get_item(0) == items[uris[3]]
    lst = s3.create_dataset([uris[7], uris[2]])
    assert lst.get_uris() == [uris[7], uris[2]]


def test_loader_plain_and_batches(ds):
    s3, prefix, items = ds
    want = [items[u] for u in sorted(items)]
    assert list(s3.create_async_loader(prefix, batch_size=4)) == want
    got = list(s3.create_async_loader(prefix, {"batch_size": 4, "zero_copy": True,
                                               "reader_mode": "range", "part_size": 16}))
    assert all(isinstance(x, s3.BytesView) for x in got) and got == want
    b = list(s3.create_async_loader(prefix, {"batch_size": 5}).batches())
    assert [len(x) for x in b] == [5] * (N // 5) + [N % 5]
    assert [y for x in b for y in x] == want

    async def run():
        return [x async for x in s3.create_async_loader(prefix, batch_size=6, drop_last=True)]
    ab = asyncio.run(run())
    assert [len(x) for x in ab] == [6] * (N // 6)
    assert [y for x in ab for y in x] == want[:6 * (N // 6)]


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (3, 2), (2, 3)])
def test_loader_every_item_once_across_ranks_and_workers(ds, world, workers):
    s3, prefix, items = ds
    uris = sorted(items)
    for shuffle in (False, True):
        seen, fetched = [], []
        for rank in range(world):
            ld = s3.create_async_loader(prefix, shard_rank=rank, shard_world_size=world,
                                        shuffle=shuffle, seed=7, batch_size=4)
            ld.set_epoch(2)
            for w in range(workers):
                order = ld.epoch_order(epoch=2, worker=(w, workers))
                if not shuffle:
                    assert all(i % world == rank for i in order)
                seen += order
            # outside a DataLoader worker the loader yields its rank's whole epoch
            order = ld.epoch_order(epoch=2)
            got = list(ld)
            assert got == [items[uris[i]] for i in order]
            fetched += got
        assert sorted(seen) == list(range(N))
        assert sorted(fetched) == sorted(items.values())


def test_loader_shuffle_reproducible_by_seed_and_new_each_epoch(ds):
    s3, prefix, items = ds
    uris = sorted(items)
    a = s3.create_async_loader(prefix, shuffle=True, seed=42, batch_size=8)
    b = s3.create_async_loader(prefix, {"shuffle": True, "seed": 42, "batch_size": 8})
    o0, o1 = a.epoch_order(0), a.epoch_order(1)
    assert o0 == b.epoch_order(0) and o0 != o1 and sorted(o0) == list(range(N))
    e0, e1 = list(a), list(a)
    assert e0 == [items[uris[i]] for i in o0] and e1 == [items[uris[i]] for i in o1]
    assert e0 == list(b) and e0 != e1 and sorted(e0) == sorted(e1)
    b.set_epoch(0)
    assert list(b) == e0
    assert s3.create_async_loader(prefix, shuffle=True, seed=43).epoch_order(0) != o0


@pytest.mark.timeout(120)
def test_torch_dataloader_ranks_and_workers_each_item_once(ds):
    torch = pytest.importorskip("torch")
    import s3dlio.torch as st
    s3, prefix, items = ds
    world = 2
    per_epoch = []
    for epoch in (0, 1, 0):
        seen = []
        for rank in range(world):
            d = st.ObjectStoreIterableDataset(prefix, rank=rank, world_size=world,
                                              shuffle=True, seed=11, return_uri=True)
            d.set_epoch(epoch)
            dl = torch.utils.data.DataLoader(d, batch_size=None, num_workers=2)
            for uri, t in dl:
                assert bytes(t.numpy()) == items[uri], uri
                seen.append(uri)
        assert sorted(seen) == sorted(items)
        per_epoch.append(seen)
    assert per_epoch[0] == per_epoch[2] and per_epoch[0] != per_epoch[1]
