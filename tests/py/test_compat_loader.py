"""The original 0.9.1 dataset and loader API (issue 10): PyLoaderOptions and its builder,
options dicts (unknown names warn), PyDataset / PyS3Dataset / PyVecDataset /
PyAsyncDataLoader / PyBytesAsyncDataLoader and the compatibility names, create_dataset /
create_async_loader (what ``async for`` yields), and what a dataset URI means (a directory
never reads its siblings; a path that does not exist raises).

Data tests run on file:// (the session server), s3://, az:// and gs:// (emulators behind their
own s3dliod: the `clouds` fixtures of test_checkpoint_cloud.py; a cloud backend skips only when
its emulator is not installed); every item is checked against the bytes written.
"""
import asyncio
import os
import pickle
import warnings

import pytest

from test_checkpoint_cloud import clouds  # noqa: F401 (session fixture shared with it)
from test_direct import d, o_direct_ok  # noqa: F401 (a server allowing direct://)


def _content(i):
    return b"item%03d:" % i + bytes([i % 251]) * (i * 7 % 300)


@pytest.fixture(params=["file", "s3", "az", "gs"])
def tree(request, s3dlio_mod, clouds):  # noqa: F811
    """(s3dlio connected to the backend's server, base URI ending '/', {uri: bytes} of
    base/val/ and of its siblings base/val_extra/ and base/valx.bin)."""
    b = clouds.get(request.param)
    s3dlio_mod.connect(b.srv.tcp_url)
    base = b.fresh()
    items = {}
    for i in range(12):
        items[base + "val/i%03d.bin" % i] = _content(i)
    items[base + "val/sub/deep.bin"] = b"deep"
    for i in range(3):
        items[base + "val_extra/e%d.bin" % i] = b"sibling%d" % i
    items[base + "valx.bin"] = b"sibling file"
    for u, d in items.items():
        s3dlio_mod.put_bytes(u, d)
    return s3dlio_mod, base, items


def _under(items, prefix):
    return sorted(u for u in items if u.startswith(prefix))


def _run(coro):
    return asyncio.run(coro)


async def _collect(loader):
    return [b async for b in loader]


# ---- PyLoaderOptions ----

def test_loader_options_builder_returns_new_options(s3dlio_mod):
    O = s3dlio_mod.PyLoaderOptions
    base = O()
    o = base.with_batch_size(256).drop_last(True).shuffle(True, 42).num_workers(8) \
        .prefetch(4).auto_tune(True)
    assert isinstance(o, O) and o is not base
    assert (o.batch_size, o.seed) == (256, 42)
    assert o.drop_last == True and o.shuffle == True and o.auto_tune == True  # noqa: E712
    assert o.num_workers == 8 and o.prefetch == 4 and o.num_workers * 2 == 16
    # the original's receiver is unchanged
    assert base == O() and base.batch_size == 32 and not base.shuffle
    assert base.num_workers == 0 and not bool(base.num_workers) and base.prefetch == 0
    assert (base.seed, base.timeout_seconds, base.shard_rank, base.shard_world_size) == \
        (0, None, 0, 1)
    # shuffle(False, seed) keeps the seed, as the original
    assert o.shuffle(False, 7).seed == 42 and o.shuffle(on=True, seed=7).seed == 7


def test_loader_options_knobs_read_and_build(s3dlio_mod):
    """pin_memory & co. are values AND builder methods (the original's methods hid the
    values: `opts.pin_memory == True` failed there)."""
    O = s3dlio_mod.PyLoaderOptions
    o = O().pin_memory(True).persistent_workers(True).non_blocking(True) \
        .enable_transforms(True).collate_buffer_size(2048)
    for name in ("pin_memory", "persistent_workers", "non_blocking", "enable_transforms"):
        v = getattr(o, name)
        assert v == True and bool(v) and repr(v) == "True" and str(v) == "True", name  # noqa
        assert getattr(O(), name) == False and repr(getattr(O(), name)) == "False", name  # noqa
        assert hash(v) == hash(True)
        assert pickle.loads(pickle.dumps(v)) is True
    assert o.collate_buffer_size == 2048 and f"{o.collate_buffer_size}" == "2048"
    assert O().collate_buffer_size(10).collate_buffer_size == 64  # the original's minimum
    assert o.pin_memory(False).pin_memory == False  # noqa: E712
    assert o.to_dict()["pin_memory"] is True


def test_loader_options_presets_as_the_original(s3dlio_mod):
    O = s3dlio_mod.PyLoaderOptions
    g = O().gpu_optimized()
    assert g.pin_memory == True and g.persistent_workers == True  # noqa: E712
    assert g.non_blocking == True and g.memory_format == "channels_first"  # noqa: E712
    assert g.multiprocessing_context == "spawn"
    d = O().use_fork().with_timeout(99.0).num_workers(5).auto_tune(True).debug_mode()
    assert d.num_workers == 0 and d.persistent_workers == False  # noqa: E712
    assert d.timeout_seconds == 10.0 and d.auto_tune == False  # noqa: E712
    assert d.multiprocessing_context == "fork"
    for rank in range(4):
        x = O().distributed_optimized(rank=rank, world_size=4).with_batch_size(32) \
            .num_workers(6).with_generator_seed(42 + rank)
        assert (x.shard_rank, x.shard_world_size) == (rank, 4)
        assert x.pin_memory == True and x.sampler_type == "distributed"  # noqa: E712
        assert (x.sampler_rank, x.sampler_world_size, x.generator_seed) == (rank, 4, 42 + rank)
    # distributed_sampling sets the sampler only, as the original (shard_* unchanged)
    s = O().distributed_sampling(rank=2, world_size=8)
    assert (s.shard_rank, s.shard_world_size, s.sampler_type) == (0, 1, "distributed")
    r = O().random_sampling(replacement=True)
    assert r.sampler_type == "random" and r.replacement is True
    assert O().channels_last().memory_format == "channels_last"
    assert O().use_forkserver().multiprocessing_context == "forkserver"
    assert O().use_fork().use_spawn().multiprocessing_context == "spawn"
    assert O(batch_size=8, reader_mode="RANGE").reader_mode == "range"
    assert "batch_size=8" in repr(O().with_batch_size(8)) and repr(O()) == "PyLoaderOptions()"
    x = O().distributed_optimized(1, 4).with_timeout(3)
    assert pickle.loads(pickle.dumps(x)) == x and x != O()


def test_loader_options_bad_values_raise(s3dlio_mod):
    O = s3dlio_mod.PyLoaderOptions
    for call in (lambda: O().with_batch_size(0), lambda: O().num_workers(-1),
                 lambda: O().with_timeout(0), lambda: O().distributed_sampling(4, 4),
                 lambda: O().distributed_optimized(rank=0, world_size=0)):
        with pytest.raises(s3dlio_mod.InvalidArgumentError) as e:
            call()
        assert isinstance(e.value, ValueError) and isinstance(e.value, RuntimeError)
    with pytest.raises(TypeError, match="seed"):
        O().shuffle(True, "x")
    with pytest.raises(TypeError, match="batch_size"):
        O().with_batch_size(2.5)
    with pytest.raises(TypeError, match="unexpected option 'bogus'"):
        O(bogus=1)


# ---- options dicts ----

def test_unknown_option_warns_and_is_ignored(s3dlio_mod, tree):
    s3, base, items = tree
    with pytest.warns(UserWarning) as rec:
        ld = s3.create_async_loader(base + "val/", {"batch_size": 5, "pin_memory": True,
                                                    "bogus": 1})
    msgs = [str(w.message) for w in rec]
    for name in ("pin_memory", "bogus"):
        m = [x for x in msgs if repr(name) in x]
        assert m and "batch_size" in m[0] and "max_inflight_parts" in m[0], msgs
    assert rec[0].filename == __file__  # points at the caller's line
    got = _run(_collect(ld))
    assert [len(b) for b in got] == [5, 5, 3]
    # the original's own torch wrapper passes these: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s3.create_dataset(base + "val/", {"auto_tune": False, "max_inflight_parts": 4,
                                          "part_size": 1 << 20, "worker_id": 0,
                                          "num_workers_pytorch": 1})


def test_known_option_bad_values_raise(s3, data):
    prefix = data.uri("small") + "/"
    for bad in ({"batch_size": 0}, {"part_size": 0}, {"reader_mode": "parallel"},
                {"shard_rank": 2, "shard_world_size": 2},
                {"worker_id": 1, "num_workers_pytorch": 1}, {"max_inflight_parts": 0}):
        with pytest.raises(s3.InvalidArgumentError) as e:
            s3.create_async_loader(prefix, bad)
        assert isinstance(e.value, RuntimeError) and list(bad)[0] in str(e.value)
    for bad in ({"batch_size": "8"}, {"shuffle": "yes"}, {"prefetch": 1.5}):
        with pytest.raises(TypeError, match=list(bad)[0]):
            s3.create_async_loader(prefix, bad)
    # None counts as not given
    ld = s3.create_async_loader(prefix, {"batch_size": None, "seed": None}, batch_size=3)
    assert ld.opts["batch_size"] == 3
    # reader_mode is case-insensitive, as the original
    assert s3.create_dataset(prefix, {"reader_mode": "Range"}).opts["reader_mode"] == "range"


def test_loader_options_object_wherever_a_dict_is(s3, data):
    prefix = data.uri("small") + "/"
    O = s3.PyLoaderOptions
    n = len(s3.create_dataset(prefix))
    o = O().with_batch_size(7).drop_last(True).shuffle(True, 5)
    for ld in (s3.create_async_loader(prefix, o),
               s3.PyBytesAsyncDataLoader(s3.PyDataset(prefix, o)),
               s3.PyBytesAsyncDataLoader(s3.create_dataset(prefix), o)):
        assert ld.opts["batch_size"] == 7 and ld.opts["drop_last"] and ld.opts["shuffle"]
        assert ld.opts["seed"] == 5
        got = list(ld.batches())
        assert [len(b) for b in got] == [7] * (n // 7)
    # batch_size not set through the builder: create_async_loader's default of 1 holds
    assert s3.create_async_loader(prefix, O().shuffle(True, 1)).opts["batch_size"] == 1
    assert s3.create_async_loader(prefix, O().with_batch_size(32)).opts["batch_size"] == 32
    # the sampler and generator seed are honoured
    r = s3.create_async_loader(prefix, O().random_sampling(False).with_generator_seed(9))
    order = r.epoch_order(0)
    assert sorted(order) == list(range(n)) and order != list(range(n))
    assert order == s3.create_async_loader(prefix, {"shuffle": True, "seed": 9}).epoch_order(0)
    rep = s3.create_async_loader(prefix, O().random_sampling(True)).epoch_order(0)
    assert len(rep) == n and len(set(rep)) < n  # with replacement
    d = s3.create_async_loader(prefix, O().distributed_sampling(1, 3))
    assert sorted(d.epoch_order(0)) == list(range(1, n, 3))
    v = s3.PyAsyncDataLoader(s3.PyVecDataset(range(10)), O().with_batch_size(4))
    assert [len(b) for b in _run(_collect(v))] == [4, 4, 2]


# ---- datasets ----

def test_pydataset_takes_a_prefix_not_characters(tree):
    s3, base, items = tree
    want = _under(items, base + "val/")
    rel = [u[len(base + "val/"):] for u in want]
    assert rel[-1] == "sub/deep.bin"
    for ds in (s3.PyDataset(base + "val/", None), s3.PyDataset(base + "val"),
               s3.create_dataset(base + "val", {}), s3.PyDataset(want)):
        assert len(ds) == len(want) == 13
        assert ds.get_uris() == want
        assert [ds.get_item(i) for i in range(len(ds))] == [items[u] for u in want]
    # keys: relative to the directory (later originals; 0.9.1 raised); of a list: the URIs
    assert s3.create_dataset(base + "val").keys() == rel
    assert s3.PyDataset(base + "val/", None).keys() == rel
    assert s3.PyDataset(want).keys() == want
    assert s3.PyDataset.from_uris(want[::-1]).get_uris() == want[::-1]
    one = s3.create_dataset(want[4])
    assert len(one) == 1 and one.get_item(0) == items[want[4]]
    assert one.keys() == ["i004.bin"]


def test_get_item_bytes_and_awaitable(tree):
    s3, base, items = tree
    want = _under(items, base + "val/")
    ds = s3.create_dataset(base + "val")
    it = ds.get_item(2)
    assert type(it) is bytes and it == items[want[2]]

    async def run():
        direct = ds.get_item(3)  # the seed's form inside a coroutine
        awaited = await ds.get_item(3)  # the original's form
        return direct, awaited
    direct, awaited = _run(run())
    assert isinstance(direct, bytes) and direct == awaited == items[want[3]]
    with pytest.raises(IndexError) as e:
        ds.get_item(13)
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, s3.DatasetIndexError)
    assert ds.get_item(-1) == items[want[-1]]


def test_prefix_without_slash_never_reads_siblings(tree):
    s3, base, items = tree
    want = _under(items, base + "val/")
    ds = s3.create_dataset(base + "val")
    assert ds.get_uris() == want
    assert not any("val_extra" in u or "valx" in u for u in ds.get_uris())
    ld = s3.create_async_loader(base + "val", batch_size=4)
    assert [y for b in _run(_collect(ld)) for y in b] == [items[u] for u in want]


def test_path_that_does_not_exist_raises(tree):
    s3, base, items = tree
    for uri in (base + "nothing", base + "nothing/", base + "val/i000.bin/"):
        with pytest.raises(s3.NotFoundError) as e:
            s3.create_dataset(uri)
        assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, RuntimeError)
        assert uri.rstrip("/") in str(e.value)
        with pytest.raises(RuntimeError):
            s3.create_async_loader(uri)
    with pytest.raises(s3.InvalidArgumentError):
        s3.create_dataset("")
    with pytest.raises(TypeError):
        s3.create_dataset(None)


def test_file_prefix_rules(s3, scratch):
    path, uri = scratch
    os.makedirs(os.path.join(path, "empty"))
    os.makedirs(os.path.join(path, "val"))
    os.makedirs(os.path.join(path, "val_extra"))
    for d in ("val", "val_extra"):
        with open(os.path.join(path, d, "a.bin"), "wb") as f:
            f.write(d.encode())
    assert len(s3.create_dataset(uri + "empty")) == 0  # the original: an empty dataset
    assert len(s3.create_dataset(uri + "empty/")) == 0
    # a file path is a path, not a string prefix (the original: "Path does not exist")
    with pytest.raises(s3.NotFoundError):
        s3.create_dataset(uri + "va")
    assert s3.create_dataset(uri + "val").get_uris() == [uri + "val/a.bin"]
    # runs of '/' are the same directory
    dd = s3.create_dataset(uri + "/val//")
    assert dd.get_uris() == [uri + "val/a.bin"] and dd.keys() == ["a.bin"]


def test_direct_prefix_is_a_directory(d, scratch):
    path, uri = scratch
    for sub in ("val", "val_extra"):
        os.makedirs(os.path.join(path, sub))
        with open(os.path.join(path, sub, "a.bin"), "wb") as f:
            f.write(sub.encode() * 1000)
    du = uri.replace("file://", "direct://", 1)
    ds = d.create_dataset(du + "val")
    assert ds.get_uris() == [du + "val/a.bin"] and ds.get_item(0) == b"val" * 1000
    with pytest.raises(d.NotFoundError):
        d.create_dataset(du + "va")


def test_object_store_key_prefix_fallback(s3dlio_mod, clouds):  # noqa: F811
    """On s3, a name that is neither an object nor a directory is a key prefix."""
    b = clouds.get("s3")
    s3dlio_mod.connect(b.srv.tcp_url)
    base = b.fresh()
    for name in ("train-0.bin", "train-1.bin", "test-0.bin"):
        s3dlio_mod.put_bytes(base + name, name.encode())
    ds = s3dlio_mod.create_dataset(base + "train-")
    assert ds.get_uris() == [base + "train-0.bin", base + "train-1.bin"]
    assert ds.keys() == ["train-0.bin", "train-1.bin"]
    bucket_root = base.split("/")[2]
    keys = s3dlio_mod.PyS3Dataset(base + "train-", None).keys()
    assert keys == [base[len("s3://" + bucket_root + "/"):] + "train-%d.bin" % i
                    for i in (0, 1)]


def test_pys3dataset_keys_and_compat_names(tree):
    s3, base, items = tree
    want = _under(items, base + "val/")
    ds = s3.PyS3Dataset(base + "val/", None)
    rest = base.split("://", 1)[1]
    keys = [u.split("://", 1)[1][len(rest.split("/", 1)[0]) + 1:] for u in want]
    assert ds.keys() == keys and keys[0].endswith("val/i000.bin")
    assert not keys[0].startswith("/") and "://" not in keys[0]
    assert len(ds) == 13 and ds.get_item(0) == items[want[0]]
    with pytest.warns(DeprecationWarning):
        c = s3.PyS3DatasetCompat(base + "val", None)
    assert c.keys() == keys and len(c) == 13 and c.get_item(1) == items[want[1]]
    assert s3.PyS3AsyncDataLoader is s3.PyS3AsyncDataLoaderCompat
    with pytest.warns(DeprecationWarning):
        ld = s3.PyS3AsyncDataLoader(base + "val", {"batch_size": 5})
    got = _run(_collect(ld))  # the original's __aiter__ here gave no async iterator
    assert [len(x) for x in got] == [5, 5, 3]
    assert [y for x in got for y in x] == [items[u] for u in want]


def test_from_bytes_list(s3dlio_mod):
    ds = s3dlio_mod.PyDataset.from_bytes_list([b"a", bytearray(b"bc"), memoryview(b"def")])
    assert len(ds) == 3 and ds.get_item(1) == b"bc"
    ld = s3dlio_mod.PyBytesAsyncDataLoader(ds, {"batch_size": 2})
    assert _run(_collect(ld)) == [[b"a", b"bc"], [b"def"]]
    assert list(ld) == [b"a", b"bc", b"def"]


# ---- loaders ----

def test_async_loader_batch_shapes(tree):
    s3, base, items = tree
    want = [items[u] for u in _under(items, base + "val/")]
    n = len(want)
    one = _run(_collect(s3.create_async_loader(base + "val")))
    assert one == [[x] for x in want]  # batch_size 1 when not given, as the original
    assert all(type(b) is list and type(b[0]) is bytes for b in one)
    for bs, drop in ((1, False), (4, False), (4, True), (13, False), (32, False)):
        got = _run(_collect(s3.create_async_loader(base + "val", {"batch_size": bs,
                                                                 "drop_last": drop})))
        sizes = [bs] * (n // bs) + ([n % bs] if n % bs and not drop else [])
        assert [len(b) for b in got] == sizes
        assert [y for b in got for y in b] == want[:sum(sizes)]
    # PyBytesAsyncDataLoader's own default is 32, as the original
    ds = s3.PyDataset(base + "val", None)
    assert [len(b) for b in _run(_collect(s3.PyBytesAsyncDataLoader(ds)))] == [13]
    it = s3.create_async_loader(base + "val").__aiter__()
    assert isinstance(it, s3.PyBytesAsyncDataLoaderIter)
    # the seed's plain iteration: one item per step
    assert list(s3.create_async_loader(base + "val", batch_size=4)) == want
    zc = list(s3.create_async_loader(base + "val", zero_copy=True))
    assert all(isinstance(x, s3.BytesView) for x in zc) and zc == want


def test_async_loader_shuffle_seed_and_epochs(tree):
    s3, base, items = tree
    uris = _under(items, base + "val/")
    a = s3.create_async_loader(base + "val", {"shuffle": True, "seed": 42, "batch_size": 3})
    b = s3.create_async_loader(base + "val", s3.PyLoaderOptions().shuffle(True, 42)
                               .with_batch_size(3))
    e0a, e0b = _run(_collect(a)), _run(_collect(b))
    assert e0a == e0b
    flat = [y for x in e0a for y in x]
    assert sorted(flat) == sorted(items[u] for u in uris) and flat != [items[u] for u in uris]
    assert flat == [items[uris[i]] for i in a.epoch_order(0)]
    e1 = [y for x in _run(_collect(a)) for y in x]
    assert e1 != flat and sorted(e1) == sorted(flat)  # the next epoch, a new order
    c = s3.create_async_loader(base + "val", {"shuffle": True, "seed": 43})
    assert c.epoch_order(0) != a.epoch_order(0)


def test_sharding_ranks_and_explicit_workers(tree):
    s3, base, items = tree
    uris = _under(items, base + "val/")
    seen = []
    for rank in range(2):
        for w in range(3):
            ld = s3.create_async_loader(base + "val", {
                "shard_rank": rank, "shard_world_size": 2, "worker_id": w,
                "num_workers_pytorch": 3, "shuffle": True, "seed": 4, "batch_size": 2})
            got = [y for b in _run(_collect(ld)) for y in b]
            assert got == [items[uris[i]] for i in ld.epoch_order(0)]
            assert all(i % 2 == rank for i in ld.epoch_order(0))
            seen += got
    assert sorted(seen) == sorted(items[u] for u in uris)


def test_loader_error_is_a_runtime_error(s3, data, scratch):
    uris = [data.uri(data.small_rel(0)), scratch[1] + "missing.bin"]
    ld = s3.create_async_loader(uris, batch_size=1)

    async def run():
        out = []
        async for b in ld:
            out.append(b)
        return out
    with pytest.raises(RuntimeError, match="missing.bin") as e:
        _run(run())
    assert isinstance(e.value, FileNotFoundError)


def test_early_break_in_async_for(s3, data):
    ld = s3.create_async_loader(data.uri("small") + "/", batch_size=2, prefetch=1)

    async def run():
        it = ld.__aiter__()
        n = 0
        async for b in it:
            n += len(b)
            if n >= 6:
                break
        await it.aclose()
        return n
    assert _run(run()) == 6
    assert ld.last_stats is not None  # the engine stopped


# ---- PyVecDataset / PyAsyncDataLoader ----

def test_vec_dataset_and_async_loader(s3dlio_mod):
    s = s3dlio_mod
    ds = s.PyVecDataset([10, 20, 30, 40, 50])
    assert len(ds) == 5 and [ds[i] for i in range(5)] == [10, 20, 30, 40, 50]
    assert ds[-1] == 50
    with pytest.raises(IndexError) as e:
        ds[5]
    assert isinstance(e.value, RuntimeError)
    with pytest.raises(TypeError):
        s.PyVecDataset(["a"])
    assert len(s.PyVecDataset([])) == 0
    ld = s.PyAsyncDataLoader(ds, {"batch_size": 2, "drop_last": False, "shuffle": False})
    it = ld.__aiter__()
    assert isinstance(it, s.PyAsyncDataLoaderIter)
    assert _run(_collect(ld)) == [[10, 20], [30, 40], [50]]
    assert _run(_collect(s.PyAsyncDataLoader(ds, {"batch_size": 2, "drop_last": True}))) == \
        [[10, 20], [30, 40]]
    assert _run(_collect(s.PyAsyncDataLoader(ds, None))) == [[10, 20, 30, 40, 50]]
    big = s.PyVecDataset(range(1, 101))
    a = _run(_collect(s.PyAsyncDataLoader(big, {"batch_size": 3, "shuffle": True,
                                                 "seed": 42})))
    b = _run(_collect(s.PyAsyncDataLoader(big, {"batch_size": 3, "shuffle": True,
                                                 "seed": 42})))
    flat = [x for batch in a for x in batch]
    assert a == b and sorted(flat) == list(range(1, 101)) and flat != list(range(1, 101))
    assert [len(x) for x in a] == [3] * 33 + [1]
    with pytest.raises(TypeError):
        s.PyAsyncDataLoader([1, 2, 3])


def test_every_name_of_the_original_is_exported(s3dlio_mod):
    for name in ("PyLoaderOptions", "PyDataset", "PyS3Dataset", "PyVecDataset",
                 "PyAsyncDataLoader", "PyAsyncDataLoaderIter", "PyBytesAsyncDataLoader",
                 "PyBytesAsyncDataLoaderIter", "PyS3DatasetCompat",
                 "PyS3AsyncDataLoaderCompat", "PyS3AsyncDataLoader", "create_dataset",
                 "create_async_loader"):
        assert hasattr(s3dlio_mod, name), name
        assert name in s3dlio_mod.__all__, name


def test_loaders_in_one_event_loop_concurrently(tree):
    """Two loaders awaited at once in one event loop (batches are awaited off the loop)."""
    s3, base, items = tree
    want = [items[u] for u in _under(items, base + "val/")]

    async def run():
        a = s3.create_async_loader(base + "val", batch_size=2)
        b = s3.create_async_loader(base + "val", batch_size=5)
        return await asyncio.gather(_collect(a), _collect(b))
    x, y = _run(run())
    assert [i for b in x for i in b] == want == [i for b in y for i in b]
