"""Checkpoints and loaders on s3:// (the s3rver emulator, as test_cloud_s3.py starts it): the
same code path as file://, through the s3dlio data calls only. Skips when the emulator is not
installed. Other cloud backends: add their fixtures here when their server backends land."""
import uuid

import pytest

import cloudemu
import s3dtest

BUCKET = "ckpt"


@pytest.fixture(scope="module")
def s3srv(tmp_path_factory):
    e = cloudemu.s3rver(str(tmp_path_factory.mktemp("s3rver-ckpt")), [BUCKET])
    s = s3dtest.start_server([f"s3://{BUCKET}/"], threads=2, extra=cloudemu.CLOUD_FLAGS,
                             env=cloudemu.s3_env(e.endpoint))
    yield s
    s.stop()
    e.stop()


@pytest.fixture
def cs3(s3dlio_mod, s3srv):
    s3dlio_mod.connect(s3srv.tcp_url)
    return s3dlio_mod


def test_s3_checkpoint_distributed_and_corruption(cs3):
    s3 = cs3
    base = f"s3://{BUCKET}/{uuid.uuid4().hex}/"
    store = s3.CheckpointStore(base)
    for step, world in ((1, 2), (2, 3)):
        recs = [store.writer(world, r).save_distributed_shard(step, 0, "bytes",
                                                              bytes([r]) * (7 << 20 if r == 0
                                                                            else 1000))
                for r in range(world)]
        store.writer(world, 0).finalize_distributed_checkpoint(step, 0, "bytes", recs,
                                                               user_meta={"s": step})
    # a crash after the shards of step 3: latest still names step 2
    store.writer(1, 0).save_distributed_shard(3, 0, "bytes", b"x")
    r = store.reader()
    m = r.load_latest_manifest()
    assert m["global_step"] == 2 and m["user_meta"] == {"s": 2}
    assert r.read_shard_by_rank(m, 0) == bytes([0]) * (7 << 20)
    assert r.read_shard_by_rank(m, 2) == bytes([2]) * 1000
    key = base + m["shards"][1]["key"]
    s3.put_bytes(key, b"\x01" * 999 + b"\x02")  # same size, one byte flipped
    with pytest.raises(s3.CheckpointError, match="CRC32C"):
        r.read_shard_by_rank(m, 1)
    assert s3.load_checkpoint_with_validation(base) == bytes([0]) * (7 << 20)
    assert [c["step"] for c in store.list_checkpoints()] == [1, 2]


def test_s3_dataset_and_loader(cs3):
    s3 = cs3
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex}/data/"
    items = {prefix + "i%03d.bin" % i: bytes([i]) * (i + 1) for i in range(30)}
    for u, b in items.items():
        s3.put_bytes(u, b)
    ds = s3.create_dataset(prefix)
    assert ds.get_uris() == sorted(items)
    seen = []
    for rank in range(2):
        ld = s3.create_async_loader(prefix, {"batch_size": 4, "shuffle": True, "seed": 1,
                                             "shard_rank": rank, "shard_world_size": 2})
        order = ld.epoch_order()
        got = list(ld)
        assert got == [items[ds.get_uris()[i]] for i in order]
        seen += order
    assert sorted(seen) == list(range(30))
