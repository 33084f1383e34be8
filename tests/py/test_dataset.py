"""create_dataset / create_async_loader (issue: checkpoints and datasets). Data: the session
tree's small/ objects (file://); extra prefixes of other backends can be given in
S3DLIO_TEST_DATASET_PREFIXES (space-separated, objects already there)."""
import asyncio
import os

import pytest


def _prefixes(data):
    return [data.uri("small") + "/"] + os.environ.get("S3DLIO_TEST_DATASET_PREFIXES",
                                                      "").split()


@pytest.fixture(params=["file"] + os.environ.get("S3DLIO_TEST_DATASET_PREFIXES", "").split())
def prefix(request, s3, data):
    return data.uri("small") + "/" if request.param == "file" else request.param


def _expected(s3, prefix):
    uris = [u for u in s3.list(prefix, recursive=True) if not u.endswith("/")]
    return sorted(uris)


def test_dataset_prefix_items_and_keys(s3, prefix):
    ds = s3.create_dataset(prefix)
    uris = _expected(s3, prefix)
    assert len(ds) == len(uris) > 0
    assert ds.get_uris() == uris
    assert ds.keys() == [u[len(prefix):] for u in uris]  # relative to the prefix
    item = ds.get_item(3)
    assert type(item) is bytes and item == s3.get(uris[3])
    assert ds[-1] == s3.get(uris[-1])
    with pytest.raises(IndexError):
        ds.get_item(len(ds))
    zc = s3.create_dataset(prefix, zero_copy=True)
    v = zc.get_item(3)
    assert isinstance(v, s3.BytesView) and v == item
    zc2 = s3.create_dataset(prefix, {"zero_copy": True})
    assert isinstance(zc2.get_item(0), s3.BytesView)


def test_dataset_from_uris(s3, data):
    uris = [data.uri(data.small_rel(i)) for i in (5, 1, 9)]
    ds = s3.PyDataset.from_uris(uris)
    assert ds.get_uris() == uris  # the given order
    assert [ds.get_item(i) for i in range(3)] == [data.bytes(data.small_rel(i))
                                                  for i in (5, 1, 9)]
    assert s3.create_dataset(uris).get_uris() == uris
    one = s3.create_dataset(data.uri(data.small_rel(7)))
    assert len(one) == 1 and one.get_item(0) == data.bytes(data.small_rel(7))


def test_loader_plain_iteration_one_item_per_next(s3, prefix):
    uris = _expected(s3, prefix)
    loader = s3.create_async_loader(prefix, batch_size=32)
    items = list(loader)
    assert len(items) == len(uris)
    assert all(type(x) is bytes for x in items)
    assert items[:5] == [s3.get(u) for u in uris[:5]]
    st = loader.last_stats
    assert st["fetched"] == len(uris) and st["windows"] > 1
    zc = list(s3.create_async_loader(prefix, {"batch_size": 8, "zero_copy": True}))
    assert all(isinstance(x, s3.BytesView) for x in zc) and zc == items


def test_loader_batches_drop_last_and_async(s3, prefix):
    n = len(_expected(s3, prefix))
    loader = s3.create_async_loader(prefix, {"batch_size": 7})
    b = list(loader.batches())
    assert [len(x) for x in b] == [7] * (n // 7) + ([n % 7] if n % 7 else [])
    d = list(s3.create_async_loader(prefix, {"batch_size": 7, "drop_last": True}).batches())
    assert [len(x) for x in d] == [7] * (n // 7)
    assert len(list(s3.create_async_loader(prefix, batch_size=7, drop_last=True))) == \
        7 * (n // 7)

    async def run():
        out = []
        async for batch in s3.create_async_loader(prefix, {"batch_size": 64}):
            out.append(batch)
        return out
    ab = asyncio.run(run())
    assert sum(len(x) for x in ab) == n and len(ab[0]) == 64
    assert [y for x in ab for y in x] == [y for x in b for y in x]


def test_loader_shuffle_reproducible_and_new_each_epoch(s3, prefix):
    uris = _expected(s3, prefix)
    a = s3.create_async_loader(prefix, shuffle=True, seed=42, batch_size=16)
    b = s3.create_async_loader(prefix, {"shuffle": True, "seed": 42, "batch_size": 16})
    a1, a2 = a.epoch_order(0), a.epoch_order(1)
    assert a1 == b.epoch_order(0) and a1 != a2 and sorted(a1) == list(range(len(uris)))
    e0 = list(a)
    e1 = list(a)
    assert e0 == list(b) and e0 != e1 and sorted(e0) == sorted(e1)
    assert e0 == [s3.get(uris[i]) for i in a1]
    c = s3.create_async_loader(prefix, shuffle=True, seed=43)
    assert c.epoch_order(0) != a1


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (3, 2), (2, 3)])
def test_loader_shards_cover_every_item_once(s3, prefix, world, workers):
    n = len(_expected(s3, prefix))
    for shuffle in (False, True):
        seen = []
        for rank in range(world):
            ld = s3.create_async_loader(prefix, shard_rank=rank, shard_world_size=world,
                                        shuffle=shuffle, seed=7)
            for w in range(workers):
                order = ld.epoch_order(epoch=3, worker=(w, workers))
                if not shuffle:
                    assert all(i % world == rank for i in order)
                seen += order
        assert sorted(seen) == list(range(n))
    # the bytes follow the order: rank 1 of 2 actually fetches its own items
    ld = s3.create_async_loader(prefix, {"shard_rank": 1, "shard_world_size": 2,
                                         "zero_copy": True})
    uris = _expected(s3, prefix)
    got = list(ld)
    assert got == [s3.get(uris[i]) for i in range(1, n, 2)]


def test_loader_options_validated(s3, prefix):
    # unknown names warn and are ignored, as the original does (issue 10)
    with pytest.warns(UserWarning, match="unknown loader option 'batchsize'.*batch_size"):
        ld = s3.create_async_loader(prefix, {"batchsize": 3})
    assert ld.opts["batch_size"] == 1
    with pytest.raises(ValueError, match="shard_rank"):
        s3.create_async_loader(prefix, shard_rank=2, shard_world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        s3.create_async_loader(prefix, batch_size=0)
    # keywords win over the dict
    ld = s3.create_async_loader(prefix, {"batch_size": 3}, batch_size=5)
    assert len(next(iter(ld.batches()))) == 5


def test_loader_prefetch_in_flight_and_range_mode(s3, prefix):
    uris = _expected(s3, prefix)
    ld = s3.create_async_loader(prefix, batch_size=4, prefetch=2, num_workers=3)
    items = list(ld)
    st = ld.last_stats
    assert st["capacity"] == 8 and st["window"] == 3 and st["max_in_flight"] == 3
    rng = s3.create_async_loader(prefix, reader_mode="range", part_size=700)
    assert list(rng) == items == [s3.get(u) for u in uris]


def test_loader_early_break_and_errors(s3, data, scratch):
    ld = s3.create_async_loader(data.uri("small") + "/", batch_size=4, prefetch=1)
    for i, _ in enumerate(ld):
        if i == 3:
            break  # the engine stops; nothing hangs
    uris = [data.uri(data.small_rel(0)), scratch[1] + "missing.bin",
            data.uri(data.small_rel(1))]
    it = iter(s3.create_async_loader(uris, batch_size=1))
    assert next(it) == data.bytes(data.small_rel(0))
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        next(it)


def test_seed_example_8_as_written(s3, data):
    """create_async_loader(uri, batch_size=32) and `for batch in loader` yields bytes."""
    import numpy as np
    loader = s3.create_async_loader(data.uri("small") + "/", batch_size=32)
    count = 0
    for batch in loader:
        arr = np.frombuffer(batch, dtype=np.uint8)
        count += 1
    assert count == len(_expected(s3, data.uri("small") + "/")) and arr.dtype == np.uint8
