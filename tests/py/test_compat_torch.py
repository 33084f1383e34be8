"""The original 0.9.1 s3dlio.torch API (issue 10): S3IterableDataset / S3MapDataset with the
original's signatures, beside ObjectStoreIterableDataset / ObjectStoreMapDataset, on file://,
s3://, az:// and gs:// (emulators behind their own s3dliod: the `clouds` fixtures of
test_checkpoint_cloud.py; a cloud backend skips only when its emulator is not installed).
Each item once per epoch in a DataLoader with workers (the original gave every worker every
item), shuffle and seed honoured, return types, zero-copy tensors by default."""
import inspect
import warnings

import pytest

from test_checkpoint_cloud import clouds  # noqa: F401 (session fixture shared with it)

torch = pytest.importorskip("torch")
N = 21


def _content(i):
    return b"obj%02d|" % i + bytes([i]) * (i * 13)


@pytest.fixture(params=["file", "s3", "az", "gs"])
def objs(request, s3dlio_mod, clouds):  # noqa: F811
    """(s3dlio, s3dlio.torch, prefix ending '/', {uri: bytes}), plus a sibling directory
    that must never be read."""
    import s3dlio.torch as st
    b = clouds.get(request.param)
    s3dlio_mod.connect(b.srv.tcp_url)
    base = b.fresh()
    prefix = base + "train/"
    items = {prefix + "o%02d.bin" % i: _content(i) for i in range(N)}
    for u, d in items.items():
        s3dlio_mod.put_bytes(u, d)
    s3dlio_mod.put_bytes(base + "train_extra/x.bin", b"sibling")
    return s3dlio_mod, st, prefix, items


def test_signatures_as_the_original(s3dlio_mod):
    import s3dlio.torch as st
    sig = inspect.signature(st.S3IterableDataset.from_prefix)
    want = {"batch_size": 1, "drop_last": False, "shuffle": False, "seed": 0,
            "num_workers": 0, "prefetch": 8, "auto_tune": False, "reader_mode": "sequential",
            "part_size": 8 << 20, "max_inflight_parts": 4, "suppress_nonwritable_warning": True,
            "return_type": "tensor", "writable": False}
    for k, v in want.items():
        p = sig.parameters[k]
        assert p.kind is p.KEYWORD_ONLY and p.default == v, k
    assert sig.parameters["enable_sharding"].kind is inspect.Parameter.KEYWORD_ONLY
    ctor = inspect.signature(st.S3IterableDataset)
    for k in ("loader_opts", "writable", "suppress_nonwritable_warning", "enable_sharding",
              "return_type"):
        assert ctor.parameters[k].kind is inspect.Parameter.KEYWORD_ONLY, k
    m = inspect.signature(st.S3MapDataset)
    for k, v in (("reader_mode", "sequential"), ("part_size", 8 << 20),
                 ("max_inflight_parts", 4), ("writable", False),
                 ("suppress_nonwritable_warning", True),
                 ("return_type", "tensor")):
        assert m.parameters[k].default == v and \
            m.parameters[k].kind is inspect.Parameter.KEYWORD_ONLY, k
    assert s3dlio_mod.S3IterableDataset is st.S3IterableDataset
    assert s3dlio_mod.S3MapDataset is st.S3MapDataset
    assert issubclass(st.S3IterableDataset, torch.utils.data.IterableDataset)
    assert issubclass(st.S3MapDataset, torch.utils.data.Dataset)


def test_iterable_forms_of_the_original(objs):
    s3, st, prefix, items = objs
    want = sorted(items.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeprecationWarning for the 0.9.1 names
        forms = [st.S3IterableDataset(prefix, loader_opts={}),
                 st.S3IterableDataset(prefix.rstrip("/")),
                 st.S3IterableDataset.from_prefix(prefix, prefetch=8),
                 st.S3IterableDataset(prefix, loader_opts={
                     "batch_size": 1, "drop_last": False, "shuffle": False, "seed": 0,
                     "num_workers": 0, "prefetch": 8, "auto_tune": False,
                     "reader_mode": "sequential", "part_size": 8 << 20,
                     "max_inflight_parts": 4}),
                 st.ObjectStoreIterableDataset.from_prefix(prefix, batch_size=4),
                 st.S3MapDataset(prefix)]
    for ds in forms:
        got = [bytes(t.numpy()) for t in ds]
        assert sorted(got) == want, type(ds).__name__
        assert all(b"sibling" != g for g in got)
    # listing order when not shuffled
    assert [bytes(t.numpy()) for t in forms[0]] == [items[u] for u in sorted(items)]


def test_pytorch_smoke_usage(objs):
    """The original's pytorch_smoke.py: DataLoader(batch_size=2, collate_fn=list)."""
    s3, st, prefix, items = objs
    uris = s3.list(prefix)
    ds = st.S3IterableDataset.from_prefix(prefix, prefetch=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=0,
                                         collate_fn=lambda xs: xs)
    n = 0
    for i, batch in enumerate(loader):
        sizes = [int(t.numel()) for t in batch]
        assert sizes == [s3.stat(uris[i * 2 + j])["size"] for j in range(len(batch))]
        n += len(batch)
    assert n == N


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shuffle", [False, True])
def test_dataloader_two_workers_each_item_once(objs, shuffle):
    s3, st, prefix, items = objs
    for ds in (st.S3IterableDataset.from_prefix(prefix, shuffle=shuffle, seed=7),
               st.ObjectStoreIterableDataset.from_prefix(prefix, shuffle=shuffle, seed=7,
                                                         return_type="bytes")):
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        got = [bytes(x.numpy()) if torch.is_tensor(x) else x for x in dl]
        assert len(got) == N and sorted(got) == sorted(items.values()), type(ds).__name__


@pytest.mark.timeout(180)
@pytest.mark.parametrize("objs", ["file"], indirect=True)
def test_dataloader_workers_new_order_each_epoch(objs):
    """Without set_epoch(), DataLoader workers (fresh copies each epoch) still shuffle anew
    every epoch, reproducibly under torch.manual_seed, each item once per epoch."""
    s3, st, prefix, items = objs
    ds = st.S3IterableDataset.from_prefix(prefix, shuffle=True, seed=1, return_type="bytes")
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)

    def epochs(n, seed):
        torch.manual_seed(seed)
        return [list(dl) for _ in range(n)]
    e = epochs(3, 1234)
    for order in e:
        assert len(order) == N and sorted(order) == sorted(items.values())
    assert e[0] != e[1] and e[1] != e[2] and e[0] != e[2]
    assert epochs(3, 1234) == e  # the same torch seed: the same orders
    assert epochs(1, 4321)[0] != e[0]
    # set_epoch(): the order is the dataset seed's and the epoch's, whatever torch's seed
    ds.set_epoch(5)
    torch.manual_seed(1)
    a = list(dl)
    ds.set_epoch(5)
    torch.manual_seed(2)
    assert list(dl) == a and sorted(a) == sorted(items.values())
    # persistent workers count their epochs themselves
    ds = st.S3IterableDataset.from_prefix(prefix, shuffle=True, seed=1, return_type="bytes")
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                     persistent_workers=True)
    p = [list(dl) for _ in range(2)]
    assert p[0] != p[1] and sorted(p[0]) == sorted(p[1]) == sorted(items.values())


def test_shuffle_and_seed_determinism(objs):
    s3, st, prefix, items = objs
    listing = [items[u] for u in sorted(items)]

    def epoch(ds):
        return [bytes(t.numpy()) for t in ds]
    a = st.S3IterableDataset.from_prefix(prefix, shuffle=True, seed=123)
    b = st.S3IterableDataset(prefix, loader_opts={"shuffle": True, "seed": 123})
    c = st.S3IterableDataset.from_prefix(prefix, shuffle=True, seed=124)
    ea = epoch(a)
    assert ea == epoch(b) and ea != listing and sorted(ea) == sorted(listing)
    assert epoch(c) != ea
    a2 = epoch(a)  # the next epoch: a new order
    assert a2 != ea and sorted(a2) == sorted(ea)
    a.set_epoch(0)
    assert epoch(a) == ea
    # the original's keywords and a PyLoaderOptions in loader_opts
    o = st.ObjectStoreIterableDataset.from_prefix(
        prefix, loader_opts=s3.PyLoaderOptions().shuffle(True, 123))
    assert epoch(o) == ea


def test_return_types(objs):
    s3, st, prefix, items = objs
    uris = sorted(items)
    by = list(st.S3IterableDataset.from_prefix(prefix, return_type="bytes"))
    assert all(type(x) is bytes for x in by) and by == [items[u] for u in uris]
    readers = list(st.S3IterableDataset.from_prefix(prefix, return_type="READER"))
    r = readers[5]
    want = items[uris[5]]
    with r:
        assert len(r) == len(want)
        assert r.read(4) == want[:4] and r.tell() == 4
        buf = bytearray(3)
        assert r.readinto(buf) == 3 and bytes(buf) == want[4:7]
        assert r.readall() == want[7:] and r.read() == b""
        r.seek(0)
        assert r.read_all() == want
    assert r.closed
    with pytest.raises(ValueError):
        r.read()
    m = st.S3MapDataset(prefix, return_type="bytes")
    assert len(m) == N and m[3] == items[uris[3]] and type(m[3]) is bytes
    mr = st.S3MapDataset.from_prefix(prefix, return_type="reader")
    assert mr[-1].read() == items[uris[-1]]
    t = st.S3MapDataset(prefix)[7]
    assert t.dtype == torch.uint8 and t.dim() == 1 and bytes(t.numpy()) == items[uris[7]]
    rng = st.S3MapDataset(prefix, reader_mode="range", part_size=16, max_inflight_parts=3)
    assert [bytes(rng[i].numpy()) for i in range(N)] == [items[u] for u in uris]
    with pytest.raises(ValueError, match="return_type"):
        st.S3IterableDataset(prefix, loader_opts={}, return_type="numpy")
    with pytest.raises(IndexError):
        m[N]
    # transform and (uri, item) pairs (this package's)
    pairs = list(st.ObjectStoreIterableDataset(prefix, return_uri=True, transform=len))
    assert pairs == [(u, len(items[u])) for u in uris]


def test_tensors_zero_copy_by_default_writable_copies(objs):
    """A zero-copy tensor lies on the received buffer (C memory): building it allocates no
    Python memory of the object's size; writable=True copies once into Python memory."""
    import tracemalloc
    s3, st, prefix, items = objs
    big = prefix.rstrip("/") + "_big/blob.bin"
    payload = bytes(range(256)) * (16 << 10)  # 4 MiB
    s3.put_bytes(big, payload)

    def peak(fn):
        tracemalloc.start()
        try:
            x = fn()
            return x, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to see: the non-writable warning is off
        m = st.S3MapDataset(big)
        it = st.S3IterableDataset(big, loader_opts={})
        t, p_map = peak(lambda: m[0])
        ti, p_it = peak(lambda: next(iter(it)))
        w, p_wmap = peak(lambda: st.S3MapDataset(big, writable=True)[0])
        wi, p_wit = peak(lambda: next(iter(st.S3IterableDataset.from_prefix(
            big, writable=True))))
    assert p_map < len(payload) // 4 and p_it < len(payload) // 4, (p_map, p_it)
    assert p_wmap >= len(payload) and p_wit >= len(payload), (p_wmap, p_wit)
    for x in (t, ti, w, wi):
        assert x.dtype == torch.uint8 and bytes(x.numpy()) == payload
    for x in (w, wi):
        x[0] = 77  # a private copy
        assert bytes(x[1:].numpy()) == payload[1:]
    with pytest.raises(ValueError):
        st.ObjectStoreMapDataset(prefix, zero_copy=True, writable=True)


def test_map_dataset_on_every_scheme_with_workers(objs):
    s3, st, prefix, items = objs
    ds = st.S3MapDataset.from_prefix(prefix.rstrip("/"), return_type="bytes")
    assert len(ds) == N  # never the sibling train_extra/
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, shuffle=True)
    assert sorted(dl) == sorted(items.values())


def test_sharding_from_loader_opts_and_arguments(objs):
    s3, st, prefix, items = objs
    seen = []
    for rank in range(3):
        ds = st.S3IterableDataset.from_prefix(prefix, shuffle=True, seed=5,
                                              loader_opts={"shard_rank": rank,
                                                           "shard_world_size": 3})
        got = [bytes(t.numpy()) for t in ds]
        assert len(got) == 7
        seen += got
    assert sorted(seen) == sorted(items.values())
    a = [bytes(t.numpy()) for t in st.ObjectStoreIterableDataset(prefix, rank=1,
                                                                 world_size=2)]
    assert a == [items[u] for u in sorted(items)[1::2]]
    # enable_sharding without torch.distributed initialised: rank 0 of 1
    assert len(list(st.S3IterableDataset.from_prefix(prefix, enable_sharding=True))) == N


def test_missing_prefix_raises(objs):
    s3, st, prefix, items = objs
    with pytest.raises(s3.NotFoundError):
        st.S3IterableDataset(prefix + "nothing/", loader_opts={})
    with pytest.raises(RuntimeError):
        st.S3MapDataset(prefix + "nothing")
