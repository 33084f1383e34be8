"""Checkpoints (issue: checkpoints and datasets): CheckpointStore / CheckpointWriter /
CheckpointReader, load_checkpoint_with_validation, file-like writer and reader.

Every test goes through the s3dlio data calls only (corruption too: get, flip, put_bytes), so
it runs unchanged on every backend. Bases: file:// under the served root, plus any base URIs
in S3DLIO_TEST_CKPT_BASES (space-separated, e.g. s3://bucket/ckpt-tests/) for cloud backends
the connected server serves."""
import json
import os
import re
import threading
import uuid

import numpy as np
import pytest


def _bases():
    extra = os.environ.get("S3DLIO_TEST_CKPT_BASES", "").split()
    return ["file"] + extra


@pytest.fixture(params=_bases())
def base(request, s3, scratch):
    if request.param == "file":
        yield scratch[1]
        return
    b = request.param.rstrip("/") + "/" + uuid.uuid4().hex + "/"
    yield b
    try:
        s3.delete(b, recursive=True)
    except Exception:
        pass


def _payload(rank, step, n=4096):
    rng = np.random.default_rng(step * 100 + rank)
    return rng.integers(0, 255, n, dtype=np.uint8).tobytes()


def _save_distributed(s3, base, step, world, size=4096, user_meta=None, finalize=True):
    store = s3.CheckpointStore(base)
    recs = [None] * world

    def one(rank):
        w = store.writer(world_size=world, rank=rank)
        recs[rank] = w.save_distributed_shard(step, step // 10, "numpy",
                                              _payload(rank, step, size))

    threads = [threading.Thread(target=one, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if finalize:
        store.writer(world, 0).finalize_distributed_checkpoint(step, step // 10, "numpy", recs,
                                                               user_meta=user_meta)
    return recs


def _corrupt(s3, uri, how):
    data = bytearray(s3.get(uri).to_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-1:]
    s3.put_bytes(uri, data)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_save_load_several_steps_and_world_sizes(s3, base, world):
    store = s3.CheckpointStore(base)
    assert store.load_latest() is None
    assert store.reader().load_latest_manifest() is None
    for step in (10, 20, 30):
        recs = _save_distributed(s3, base, step, world, size=1000 + step,
                                 user_meta={"lr": 0.1, "step": step})
        for r in recs:
            assert r["checksum"].startswith("crc32c:") and r["size"] == 1000 + step
    reader = s3.CheckpointReader(base)
    m = reader.load_latest_manifest()
    assert m["global_step"] == 30 and m["world_size"] == world and m["status"] == "complete"
    assert m["user_meta"] == {"lr": 0.1, "step": 30}
    assert [s["rank"] for s in m["shards"]] == list(range(world))
    for rank in range(world):
        view = reader.read_shard_by_rank(m, rank)
        assert isinstance(view, s3.BytesView)
        assert bytes(view) == _payload(rank, 30, 1030)
        buf = np.empty(2000, dtype=np.uint8)
        n = reader.read_shard_into(m, rank, buf)
        assert n == 1030 and buf[:n].tobytes() == _payload(rank, 30, 1030)
    latest = store.load_latest()
    assert isinstance(latest, s3.BytesView) and bytes(latest) == _payload(0, 30, 1030)
    assert [c["step"] for c in store.list_checkpoints()] == [10, 20, 30]
    assert bytes(store.load(20, rank=world - 1)) == _payload(world - 1, 20, 1020)
    pointer = json.loads(bytes(s3.get(base + "latest.json")))
    assert pointer["global_step"] == 30 and pointer["manifest_key"] == m["manifest_key"]
    assert set(pointer) == {"manifest_key", "global_step", "ts"}


def test_ranks_need_not_agree_on_shard_keys(s3, base):
    """Every save has its own shard key (a fresh nonce), carried to rank 0 by its record; the
    manifest key depends on the step only."""
    a = s3.CheckpointStore(base).writer(4, 1)
    b = s3.CheckpointWriter(base, world_size=4, rank=1)
    keys = [a.shard_key(7), a.shard_key(7), b.shard_key(7)]
    assert all(re.fullmatch(r"shards/ckpt-7/rank-1\.[0-9a-f]{12}\.bin", k) for k in keys)
    assert len(set(keys)) == 3
    assert a.manifest_key(7) == b.manifest_key(7) == "manifests/ckpt-7.json"


def test_single_rank_save_and_meta(s3, base):
    store = s3.CheckpointStore(base)
    arr = np.arange(1000, dtype=np.float32)
    store.save(1, arr, epoch=0, user_meta={"note": "x"})
    store.save(2, arr * 2, epoch=1)
    view = store.load_latest()
    assert np.array_equal(np.frombuffer(view.memoryview(), dtype=np.float32), arr * 2)
    cps = store.list_checkpoints()
    assert [(c["step"], c["epoch"]) for c in cps] == [(1, 0), (2, 1)]
    assert cps[0]["user_meta"] == {"note": "x"}


def test_large_shard_roundtrip(s3, base):
    data = os.urandom((9 << 20) + 3)
    s3.CheckpointStore(base).save(5, data)
    assert s3.CheckpointStore(base).load_latest() == data


def test_crash_between_shards_and_manifest(s3, base):
    store = s3.CheckpointStore(base)
    _save_distributed(s3, base, 1, 2)
    # step 2: every shard written, then the job dies before rank 0 finalizes
    _save_distributed(s3, base, 2, 2, finalize=False)
    m = store.reader().load_latest_manifest()
    assert m["global_step"] == 1
    assert bytes(store.load_latest()) == _payload(0, 1)
    # step 3: one of two shards written (crash mid-way), no manifest
    store.writer(2, 0).save_distributed_shard(3, 0, "numpy", _payload(0, 3))
    assert store.reader().load_latest_manifest()["global_step"] == 1
    # latest.json lost: the scan ignores steps without a complete manifest
    s3.delete(base + "latest.json")
    assert store.reader().load_latest_manifest()["global_step"] == 1
    # a manifest that says incomplete is not taken either
    s3.put_bytes(base + "manifests/ckpt-4.json", json.dumps(
        {"format_version": 1, "global_step": 4, "world_size": 1, "status": "incomplete",
         "shards": []}).encode())
    assert store.reader().load_latest_manifest()["global_step"] == 1


def test_crash_between_manifest_and_latest(s3, base):
    store = s3.CheckpointStore(base)
    _save_distributed(s3, base, 1, 1)
    pointer = s3.get(base + "latest.json").to_bytes()
    _save_distributed(s3, base, 2, 1)
    s3.put_bytes(base + "latest.json", pointer)  # as if the job died before the pointer
    assert store.reader().load_latest_manifest()["global_step"] == 1


def test_finalize_refuses_missing_or_short_shard(s3, base):
    store = s3.CheckpointStore(base)
    recs = _save_distributed(s3, base, 1, 2, finalize=False)
    with pytest.raises(s3.CheckpointError, match="rank"):
        store.writer(2, 0).finalize_distributed_checkpoint(1, 0, "numpy", recs[:1])
    _corrupt(s3, base + recs[1]["key"], "truncate")
    with pytest.raises(s3.CheckpointError, match=r"rank-1\.[0-9a-f]{12}\.bin"):
        store.writer(2, 0).finalize_distributed_checkpoint(1, 0, "numpy", recs)
    assert not s3.exists(base + "latest.json")


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_corruption_detected(s3, base, how):
    store = s3.CheckpointStore(base)
    recs = _save_distributed(s3, base, 1, 2)
    _corrupt(s3, base + recs[1]["key"], how)
    reader = store.reader()
    m = reader.load_latest_manifest()
    assert bytes(reader.read_shard_by_rank(m, 0)) == _payload(0, 1)
    with pytest.raises(s3.CheckpointError, match=r"rank-1\.[0-9a-f]{12}\.bin"):
        reader.read_shard_by_rank(m, 1)
    with pytest.raises(s3.CheckpointError, match=r"rank-1\.[0-9a-f]{12}\.bin"):
        reader.read_shard_into(m, 1, bytearray(8192))
    _corrupt(s3, base + recs[0]["key"], how)
    with pytest.raises(s3.CheckpointError, match=r"rank-0\.[0-9a-f]{12}\.bin"):
        store.load_latest()
    with pytest.raises(s3.CheckpointError):
        s3.load_checkpoint_with_validation(base)
    assert issubclass(s3.CheckpointError, s3.Error)


def test_load_checkpoint_with_validation(s3, base):
    s3.CheckpointStore(base).save(3, b"state-3")
    data = s3.load_checkpoint_with_validation(base)
    assert type(data) is bytes and data == b"state-3"
    # a plain object with its stored checksum
    obj = base + "single/model.bin"
    s3.save_checkpoint(obj, b"abc" * 1000)
    assert s3.load_checkpoint_with_validation(obj) == b"abc" * 1000
    assert s3.load_checkpoint(obj) == b"abc" * 1000
    _corrupt(s3, obj, "flip")
    with pytest.raises(s3.CheckpointError, match="CRC32C"):
        s3.load_checkpoint_with_validation(obj)
    # nothing to validate against: an error, not silently unvalidated bytes
    s3.put_bytes(base + "single/raw.bin", b"raw")
    with pytest.raises(s3.CheckpointError, match="cannot validate"):
        s3.load_checkpoint_with_validation(base + "single/raw.bin")
    # save_checkpoint with a step goes through the store
    s3.save_checkpoint(base + "st", b"x" * 10, step=4)
    assert s3.load_checkpoint(base + "st") == b"x" * 10


def test_delete_checkpoint_moves_latest_first(s3, base):
    store = s3.CheckpointStore(base)
    for step in (1, 2, 3):
        store.save(step, b"s%d" % step)
    assert store.delete_checkpoint(3)
    assert bytes(store.load_latest()) == b"s2"
    assert json.loads(bytes(s3.get(base + "latest.json")))["global_step"] == 2
    assert store.delete_checkpoint(1)
    assert [c["step"] for c in store.list_checkpoints()] == [2]
    assert not s3.list(base + "shards/ckpt-1/", recursive=True)
    store.delete_checkpoint(2)
    assert store.load_latest() is None
    assert not s3.exists(base + "latest.json")
    assert not store.delete_checkpoint(9)


def test_crc32c_helper(s3):
    assert s3.crc32c(b"123456789") == 0xE3069283
    assert s3.crc32c(b"6789", s3.crc32c(b"12345")) == 0xE3069283
    assert s3.crc32c(np.zeros(0, dtype=np.uint8)) == 0


def test_file_like_writer_reader(s3, base):
    uri = base + "obj/blob.bin"
    data = os.urandom(3 << 20)
    with s3.open_writer(uri) as f:
        f.write(data[:100])
        f.write(memoryview(data)[100:])
        f.seek(0)
        f.write(data[:10])  # overwrite in place
        assert f.tell() == 10
    assert s3.get(uri) == data
    # an exception inside `with` stores nothing
    with pytest.raises(RuntimeError):
        with s3.open_writer(base + "obj/never.bin") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert not s3.exists(base + "obj/never.bin")
    r = s3.open_reader(uri, checksum=s3.crc32c(data))
    assert r.read(5) == data[:5]
    r.seek(-7, 2)
    assert r.read() == data[-7:]
    r.seek(1 << 20)
    buf = bytearray(2 << 20)
    assert r.readinto(buf) == 2 << 20 and bytes(buf) == data[1 << 20:3 << 20]
    # reading in order verifies the whole object's CRC32C
    r = s3.open_reader(uri, checksum=s3.crc32c(data) ^ 1)
    with pytest.raises(s3.CheckpointError, match="CRC32C"):
        while r.read(700000):
            pass


def test_torch_save_load_through_store(s3, base):
    torch = pytest.importorskip("torch")
    store = s3.CheckpointStore(base)
    world = 2
    state = {r: {"w": torch.arange(1000 * (r + 1), dtype=torch.float32), "r": r}
             for r in range(world)}
    recs = []
    for r in range(world):
        with store.writer(world, r).open_shard(7, epoch=1, framework="torch") as f:
            torch.save(state[r], f)
        recs.append(f.record)
    store.writer(world, 0).finalize_distributed_checkpoint(7, 1, "torch", recs)
    reader = store.reader()
    m = reader.load_latest_manifest()
    assert m["framework"] == "torch"
    for r in range(world):
        with reader.open_shard(m, r) as f:
            got = torch.load(f)
        assert got["r"] == r and torch.equal(got["w"], state[r]["w"])
