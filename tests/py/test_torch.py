"""s3dlio.torch with torch.utils.data.DataLoader (Debian's python3-torch)."""
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture
def st(s3):
    import s3dlio.torch as st
    return st


def _prefix(data):
    return data.uri("small") + "/"


def _all(s3, data):
    return sorted(u for u in s3.list(_prefix(data), recursive=True) if not u.endswith("/"))


def test_iterable_zero_copy_read_only_uint8(s3, st, data):
    ds = st.ObjectStoreIterableDataset.from_prefix(_prefix(data), return_uri=True)
    n = 0
    for uri, t in ds:
        assert t.dtype == torch.uint8 and t.dim() == 1
        assert bytes(t.numpy()) == s3.get(uri)
        n += 1
    assert n == len(_all(s3, data))
    # the tensor lives on its BytesView's memory (no copy)
    view = s3.get(data.uri(data.small_rel(42)))
    import numpy as np
    t = st.view_to_tensor(view)
    assert t.data_ptr() == np.frombuffer(view, dtype=np.uint8).ctypes.data
    c = st.view_to_tensor(view, zero_copy=False)
    assert c.data_ptr() != t.data_ptr() and torch.equal(c, t)


@pytest.mark.parametrize("shuffle", [False, True])
def test_dataloader_two_workers_each_item_once(s3, st, data, shuffle):
    ds = st.ObjectStoreIterableDataset.from_prefix(_prefix(data), return_uri=True,
                                                   shuffle=shuffle, seed=3)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    seen = {}
    for uri, t in dl:
        assert uri not in seen
        seen[uri] = t
    assert sorted(seen) == _all(s3, data)
    for uri in list(seen)[:20]:
        assert bytes(seen[uri].numpy()) == s3.get(uri)


def test_dataloader_ranks_and_workers_cover_once(s3, st, data):
    world = 2
    seen = []
    for rank in range(world):
        ds = st.ObjectStoreIterableDataset(_prefix(data), rank=rank, world_size=world,
                                           shuffle=True, seed=11, return_uri=True)
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        seen += [u for u, _ in dl]
    assert sorted(seen) == _all(s3, data)


def test_shuffle_changes_with_epoch(s3, st, data):
    ds = st.ObjectStoreIterableDataset(_prefix(data), shuffle=True, seed=5, return_uri=True)
    ds.set_epoch(0)
    e0 = [u for u, _ in ds]
    e1 = [u for u, _ in ds]  # the counter advances in this process
    ds.set_epoch(0)
    again = [u for u, _ in ds]
    assert e0 == again and e0 != e1 and sorted(e0) == sorted(e1)


def test_map_dataset_with_dataloader(s3, st, data):
    ds = st.ObjectStoreMapDataset(_prefix(data), return_uri=True)
    assert len(ds) == len(_all(s3, data))
    uri, t = ds[3]
    assert bytes(t.numpy()) == s3.get(uri)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, shuffle=True)
    seen = [u for u, _ in dl]
    assert sorted(seen) == _all(s3, data)
