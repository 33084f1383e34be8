"""The original s3dlio 0.9.1's checkpoint API (issue 10): PyCheckpointStore / PyCheckpointWriter
/ PyCheckpointReader / PyCheckpointInfo as the same classes as the seed's CheckpointStore...,
both save signatures, strategies, zstd compression_level, the shard stream, the module
functions (save_checkpoint, load_checkpoint, save_distributed_shard,
finalize_distributed_checkpoint, load_checkpoint_with_validation) and RuntimeError for every
failure, as the original raises. Runs on file:// and direct:// under the test data root, and once
on s3:// through s3rver (the emulator setup of test_checkpoint_cloud.py)."""
import json
import os
import re
import uuid
import warnings

import numpy as np
import pytest

import s3dtest
from test_checkpoint_cloud import clouds  # noqa: F401 (the session's emulators)


@pytest.fixture(params=["file", "direct"])
def base(request, s3, scratch, data, new_server):
    """A fresh checkpoint base (ending '/'): file:// on the session server, direct:// on a
    private one that allows it."""
    uri = scratch[1]
    if request.param == "direct":
        srv = new_server.start(allow=[data.allow, "direct://" + data.root + "/"])
        s3.connect(srv.tcp_url)
        uri = "direct://" + uri[len("file://"):]
    return uri + "ck/"


def _corrupt(s3, uri, how="flip"):
    data = bytearray(s3.get(uri).to_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-1:]
    s3.put_bytes(uri, data)


def _payload(n, seed=0):
    return np.random.default_rng(seed).integers(0, 255, n, dtype=np.uint8).tobytes()


def _is_key(key, prefix, rank, ext=".bin"):
    """key is one save's shard key: prefix, rank-{rank}, a 12-hex-digit nonce, ext."""
    return re.fullmatch(r"%srank-%d\.[0-9a-f]{12}%s" % (re.escape(prefix), rank,
                                                      re.escape(ext)), key) is not None


# ---- names ----

def test_original_names_are_the_seed_classes(s3):
    assert s3.PyCheckpointStore is s3.CheckpointStore
    assert s3.PyCheckpointWriter is s3.CheckpointWriter
    assert s3.PyCheckpointReader is s3.CheckpointReader
    assert s3.PyCheckpointInfo is s3.CheckpointInfo
    for n in ("PyCheckpointStore", "PyCheckpointWriter", "PyCheckpointReader",
              "PyCheckpointInfo", "save_checkpoint", "load_checkpoint", "save_distributed_shard",
              "finalize_distributed_checkpoint", "load_checkpoint_with_validation"):
        assert n in s3.__all__ and callable(getattr(s3, n)), n
    assert issubclass(s3.CheckpointError, s3.Error)
    assert issubclass(s3.CheckpointError, RuntimeError)


def test_store_makes_writers_and_readers_of_those_classes(s3, base):
    store = s3.PyCheckpointStore(base, None, None)
    assert isinstance(store, s3.CheckpointStore)
    w = store.writer(world_size=2, rank=1)
    assert isinstance(w, s3.PyCheckpointWriter) and (w.world_size, w.rank) == (2, 1)
    assert isinstance(store.reader(), s3.PyCheckpointReader)
    # a store where the seed takes a URI
    assert s3.PyCheckpointReader(store).base == store.base
    assert s3.PyCheckpointWriter(store, 1, 0).base == store.base


# ---- save: both signatures ----

def test_save_original_and_seed_signatures(s3, base):
    store = s3.PyCheckpointStore(base)
    # the original: save(step, epoch, framework, data, user_meta=None)
    assert store.save(1, 10, "torch", b"one", {"lr": 0.1}) == "manifests/ckpt-1.json"
    assert store.save(2, 20, "jax", b"two") == "manifests/ckpt-2.json"
    assert store.save(3, 30, "torch", data=b"three", user_meta=None)
    # the seed: save(step, data, epoch=None, user_meta=None, framework="bytes")
    arr = np.arange(100, dtype=np.float32)
    store.save(4, arr, epoch=40, user_meta={"note": "seed"})
    store.save(5, b"five", 50, {"k": [1, 2]}, "tf")
    store.save(6, b"six")
    # keywords only mean the same in both
    store.save(step=7, epoch=70, framework="torch", data=b"seven")
    r = store.reader()
    want = {1: (10, "torch", {"lr": 0.1}, b"one"), 2: (20, "jax", None, b"two"),
            3: (30, "torch", None, b"three"), 4: (40, "bytes", {"note": "seed"}, arr.tobytes()),
            5: (50, "tf", {"k": [1, 2]}, b"five"), 6: (0, "bytes", None, b"six"),
            7: (70, "torch", None, b"seven")}
    for step, (epoch, fw, meta, data) in want.items():
        m = r.load_manifest(step)
        assert (m["global_step"], m["epoch"], m["framework"], m["user_meta"]) == \
            (step, epoch, fw, meta), step
        assert r.read_shard_by_rank(m, 0) == data
    latest = store.load_latest()
    assert isinstance(latest, s3.BytesView) and latest == b"seven"
    with pytest.raises(TypeError):
        store.save(8, 80, "torch")  # the original's form without data
    with pytest.raises(TypeError):
        store.save(8, b"x", bogus=1)
    with pytest.raises(TypeError):
        store.save(8, 80, "torch", "a str is not a buffer")


def test_user_meta_any_json_value(s3, base):
    store = s3.PyCheckpointStore(base)
    store.save(1, 0, "torch", b"x", [1, "two", {"three": 3.0}])
    store.save(2, 0, "torch", b"x", {"lr": np.float32(0.5), "shape": np.arange(3)})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        store.save(3, 0, "torch", b"x", {"opt": object()})
    assert any("not JSON-serializable" in str(x.message) for x in w)
    metas = {i.step: i.user_meta for i in store.list_checkpoints()}
    assert metas[1] == [1, "two", {"three": 3.0}]
    assert metas[2] == {"lr": 0.5, "shape": [0, 1, 2]}
    assert metas[3]["opt"].startswith("<object object")


# ---- list_checkpoints ----

def test_list_checkpoints_gives_checkpoint_info(s3, base):
    store = s3.PyCheckpointStore(base)
    store.save(10, 1, "torch", b"a" * 1000, {"x": 1})
    w = [store.writer(2, r) for r in range(2)]
    recs = [w[r].save_distributed_shard(20, 2, "jax", b"b" * (300 + r)) for r in range(2)]
    w[0].finalize_distributed_checkpoint(20, 2, "jax", recs)
    infos = store.list_checkpoints()
    assert [type(i) for i in infos] == [s3.PyCheckpointInfo] * 2
    a, b = infos
    assert (a.step, a.epoch, a.status, a.framework, a.world_size, a.total_size) == \
        (10, 1, "complete", "torch", 1, 1000)
    assert (b.step, b.epoch, b.framework, b.world_size, b.total_size) == (20, 2, "jax", 2, 601)
    assert a.is_complete and a.is_single_rank and b.is_complete and not b.is_single_rank
    assert a.size_mb == 1000 / (1 << 20) and a.size_gb == 1000 / (1 << 30)
    assert re.fullmatch(r"\d{8}-\d{6}", a.timestamp), a.timestamp
    # this package's earlier dict entries still read the same
    assert (a["step"], a["epoch"], a["status"], a["world_size"], a["user_meta"]) == \
        (10, 1, "complete", 1, {"x": 1})
    assert a["manifest_key"] == "manifests/ckpt-10.json" and a.get("nope") is None
    with pytest.raises(KeyError):
        a["nope"]
    assert "step=10" in repr(a) and "framework='torch'" in repr(a)


# ---- strategies ----

@pytest.mark.parametrize("strategy,rank,prefix", [
    (None, 3, "shards/ckpt-5/"), ("flat", 3, "shards/ckpt-5/"),
    ("round_robin", 17, "shards/rr/01/ckpt-5/"), ("RoundRobin", 3, "shards/rr/03/ckpt-5/"),
    ("roundrobin", 3, "shards/rr/03/ckpt-5/"), ("binary", 3, "shards/bin/0000/ckpt-5/"),
    ("BINARY", 200, "shards/bin/1100/ckpt-5/")])
def test_strategies_lay_out_shards(s3, base, strategy, rank, prefix):
    store = s3.PyCheckpointStore(base, strategy=strategy)
    recs = [store.writer(rank + 1, r).save_distributed_shard(5, 0, "t", b"%d" % r)
            for r in (0, rank)]
    assert _is_key(recs[1]["key"], prefix, rank), recs[1]["key"]
    assert s3.exists(base + recs[1]["key"])
    assert store.delete_checkpoint(5)  # finds shards without a manifest too
    assert not s3.exists(base + recs[1]["key"]) and not s3.exists(base + recs[0]["key"])


def test_bad_strategy_and_arguments_raise_runtime_errors(s3, base):
    with pytest.raises(RuntimeError, match="Valid options: flat, round_robin, binary"):
        s3.PyCheckpointStore(base, strategy="zigzag")
    with pytest.raises(ValueError):  # the precise class is also a ValueError
        s3.PyCheckpointStore(base, "zigzag", None)
    for bad in ("/no/scheme", "bogus://x/y", "file:///"):
        with pytest.raises(RuntimeError, match="invalid checkpoint URI"):
            s3.PyCheckpointStore(bad)
    with pytest.raises(RuntimeError, match="rank"):
        s3.PyCheckpointStore(base).writer(2, 2)
    with pytest.raises(RuntimeError, match="step"):
        s3.PyCheckpointStore(base).save(-1, 0, "t", b"x")
    with pytest.raises(TypeError):
        s3.PyCheckpointStore(base, compression_level="high")


# ---- compression ----

def test_compression_round_trip_and_corruption(s3, base):
    data = b"checkpoint " * 5000
    store = s3.PyCheckpointStore(base, compression_level=9)
    assert store.compression_level == 9
    assert s3.PyCheckpointStore(base, compression_level=99).compression_level == 22  # clamped
    store.save(1, 1, "torch", data, None)
    m = store.reader().load_latest_manifest()
    rec = m["shards"][0]
    assert _is_key(rec["key"], "shards/ckpt-1/", 0, ".bin.zst"), rec["key"]
    stored = s3.get(base + rec["key"])
    # size and checksum cover the stored frame; the uncompressed ones are recorded beside
    assert rec["size"] == len(stored) < len(data)
    assert rec["checksum"] == "crc32c:%08x" % s3.crc32c(stored)
    assert rec["compression"] == "zstd" and rec["uncompressed_size"] == len(data)
    assert rec["uncompressed_checksum"] == "crc32c:%08x" % s3.crc32c(data)
    view = store.load_latest()
    assert isinstance(view, s3.BytesView) and view == data
    assert s3.load_checkpoint(base) == data
    assert s3.load_checkpoint_with_validation(base) == data
    assert s3.load_checkpoint_with_validation(base + rec["key"]) == data
    buf = bytearray(len(data) + 10)
    assert store.reader().read_shard_into(m, 0, buf) == len(data) and buf[:len(data)] == data
    with store.reader().open_shard(m, 0) as f:
        assert f.read() == data
    # distributed and streamed shards are compressed the same way
    w = [store.writer(2, r) for r in range(2)]
    s = w[1].get_distributed_shard_stream(2, 0, "torch")
    for i in range(0, len(data), 7000):
        s.write_chunk(data[i:i + 7000])
    recs = [w[0].save_distributed_shard(2, 0, "torch", data[:100]), s.finalize()]
    assert recs[1]["key"].endswith(".zst") and recs[1]["uncompressed_size"] == len(data)
    w[0].finalize_distributed_checkpoint(2, 0, "torch", recs)
    assert store.load(2, rank=1) == data and store.load(2) == data[:100]
    # a corrupted compressed shard is caught before it is decompressed
    _corrupt(s3, base + rec["key"])
    with pytest.raises(s3.CheckpointError, match="CRC32C"):
        store.load(1)
    with pytest.raises(s3.CheckpointError):
        s3.load_checkpoint_with_validation(base + rec["key"])
    # a manifest without the stored checksum (as the original writes it): the zstd frame
    # check or the uncompressed checksum catches it
    key1 = "manifests/ckpt-1.json"
    m1 = json.loads(bytes(s3.get(base + key1)))
    m1["shards"][0]["checksum"] = None
    s3.put_bytes(base + key1, json.dumps(m1).encode())
    with pytest.raises(s3.CheckpointError, match=r"rank-0\.[0-9a-f]{12}\.bin\.zst"):
        store.load(1)


# ---- streams ----

def test_stream_write_cancel_finalize(s3, base):
    store = s3.PyCheckpointStore(base)
    w = store.writer(1, 0)
    data = _payload(300000)
    # cancel: nothing stored, the stream is over
    s = w.get_distributed_shard_stream(1, 0, "torch")
    assert s.write_chunk(data[:1000]) == 1000 and s.bytes_written() == 1000
    s.cancel()
    assert s3.list(base, recursive=True) == []
    with pytest.raises(RuntimeError):
        s.write_chunk(b"more")
    with pytest.raises(RuntimeError):
        s.finalize()
    s.cancel()  # again: a no-op
    # an exception inside `with` cancels too
    with pytest.raises(KeyError):
        with w.get_distributed_shard_stream(1, 0, "torch") as s:
            s.write_chunk(b"partial")
            raise KeyError("boom")
    assert s3.list(base, recursive=True) == []
    # finalize: the record, as save_distributed_shard's
    s = w.get_distributed_shard_stream(1, 3, "torch")
    for i in range(0, len(data), 65536):
        assert s.write_chunk(memoryview(data)[i:i + 65536]) == len(data[i:i + 65536])
    assert s.bytes_written() == len(data)
    rec = s.finalize()
    assert {"step", "epoch", "rank", "key", "size", "etag", "checksum"} <= set(rec)
    assert (rec["step"], rec["epoch"], rec["rank"], rec["size"]) == (1, 3, 0, len(data))
    assert _is_key(rec["key"], "shards/ckpt-1/", 0), rec["key"]
    assert rec["checksum"] == "crc32c:%08x" % s3.crc32c(data)
    assert s3.get(base + rec["key"]) == data
    with pytest.raises(RuntimeError, match="finalized"):
        s.write_chunk(b"x")
    with pytest.raises(RuntimeError, match="finalized"):
        s.finalize()
    s.cancel()  # after finalize: keeps the shard
    assert s3.exists(base + rec["key"])
    w.finalize_distributed_checkpoint(1, 3, "torch", [rec])
    assert store.load_latest() == data
    # an empty stream stores an empty shard
    s = w.get_distributed_shard_stream(2, 0, "torch")
    rec = s.finalize()
    assert rec["size"] == 0 and s3.get(base + rec["key"]) == b""


# ---- finalize ----

def test_finalize_shard_metas_keyword_and_records(s3, base):
    store = s3.PyCheckpointStore(base)
    w = [store.writer(3, r) for r in range(3)]
    recs = [w[r].save_distributed_shard(5, 1, "torch", b"rank %d" % r) for r in range(3)]
    assert [set(r) >= {"step", "timestamp", "rank", "key", "size", "etag", "checksum"}
            for r in recs] == [True] * 3
    with pytest.raises(RuntimeError, match="rank"):
        w[0].finalize_distributed_checkpoint(5, 1, "torch", shard_metas=recs[:2])
    with pytest.raises(RuntimeError, match="dict"):
        w[0].finalize_distributed_checkpoint(5, 1, "torch", ["not a record"] * 3)
    with pytest.raises(RuntimeError, match="Missing key"):
        w[0].finalize_distributed_checkpoint(5, 1, "torch", [{"rank": 0, "size": 1}] * 3)
    with pytest.raises(RuntimeError, match="not both"):
        w[0].finalize_distributed_checkpoint(5, 1, "torch", shard_metas=recs,
                                             shard_records=recs)
    assert not s3.exists(base + "latest.json")
    assert w[0].finalize_distributed_checkpoint(5, 1, "torch", shard_metas=recs,
                                                user_meta={"a": 1}) == "manifests/ckpt-5.json"
    assert w[0].finalize_distributed_checkpoint(step=5, epoch=1, framework="torch",
                                                shard_records=list(reversed(recs)))
    w[0].finalize_distributed_checkpoint(5, 1, "torch", recs, {"b": 2})
    r = store.reader()
    m = r.load_latest_manifest()
    assert m["user_meta"] == {"b": 2} and m["world_size"] == 3
    assert [r.read_shard_by_rank(m, k) for k in range(3)] == [b"rank %d" % k for k in range(3)]
    with pytest.raises(RuntimeError, match="rank 7"):
        r.read_shard_by_rank(m, 7)


# ---- module functions ----

def test_module_functions_original_and_seed_forms(s3, base):
    # the original's forms
    assert s3.save_checkpoint(base + "a", 3, 1, "torch", b"state-3", {"m": 1}) == \
        "manifests/ckpt-3.json"
    view = s3.load_checkpoint(base + "a")
    assert isinstance(view, s3.BytesView) and view == b"state-3"
    assert s3.PyCheckpointStore(base + "a").list_checkpoints()[0].user_meta == {"m": 1}
    assert s3.load_checkpoint(base + "nothing-here") is None
    recs = [s3.save_distributed_shard(base + "d", 4, 2, "jax", b"r%d" % r, 2, r)
            for r in range(2)]
    assert recs[1]["rank"] == 1 and _is_key(recs[1]["key"], "shards/ckpt-4/", 1)
    assert s3.finalize_distributed_checkpoint(base + "d", 4, 2, "jax", recs, 2, 0,
                                              {"u": 1}) == "manifests/ckpt-4.json"
    m = s3.PyCheckpointStore(base + "d").reader().load_latest_manifest()
    assert (m["epoch"], m["framework"], m["user_meta"]) == (2, "jax", {"u": 1})
    assert s3.finalize_distributed_checkpoint(base + "d", 4, 2, "jax", shard_metas=recs,
                                              world_size=2, rank=0)
    # the seed's forms
    obj = base + "obj/model.bin"
    assert s3.save_checkpoint(obj, b"abc" * 100) == obj
    assert s3.load_checkpoint(obj) == b"abc" * 100
    s3.save_checkpoint(base + "st", b"xyz", step=9, epoch=1)
    assert s3.load_checkpoint(base + "st") == b"xyz"
    # load_checkpoint_with_validation: bytes (a copy)
    data = s3.load_checkpoint_with_validation(base + "a")
    assert type(data) is bytes and data == b"state-3"
    assert s3.load_checkpoint_with_validation(base + "a", validate_integrity=True) == b"state-3"
    assert s3.load_checkpoint_with_validation(obj, True) == b"abc" * 100
    # validate_integrity=False just reads
    s3.put_bytes(base + "raw.bin", b"raw")
    assert s3.load_checkpoint_with_validation(base + "raw.bin", validate_integrity=False) == \
        b"raw"
    with pytest.raises(s3.CheckpointError, match="cannot validate"):
        s3.load_checkpoint_with_validation(base + "raw.bin")
    with pytest.raises(FileNotFoundError):
        s3.load_checkpoint_with_validation(base + "nothing-here")


@pytest.mark.parametrize("strategy", ["flat", "binary"])
def test_validation_of_shard_uris(s3, base, strategy):
    store = s3.PyCheckpointStore(base, strategy=strategy)
    w = [store.writer(2, r) for r in range(2)]
    recs = [w[r].save_distributed_shard(7, 0, "torch", _payload(5000, r)) for r in range(2)]
    uri1 = base + recs[1]["key"]
    # not finalized yet: nothing to validate against
    with pytest.raises(s3.CheckpointError, match="not finalized"):
        s3.load_checkpoint_with_validation(uri1)
    w[0].finalize_distributed_checkpoint(7, 0, "torch", recs)
    data = s3.load_checkpoint_with_validation(uri1)
    assert type(data) is bytes and data == _payload(5000, 1)
    assert s3.load_checkpoint(uri1) == _payload(5000, 1)
    _corrupt(s3, uri1)
    with pytest.raises(s3.CheckpointError, match="CRC32C"):
        s3.load_checkpoint_with_validation(uri1)
    with pytest.raises(s3.CheckpointError):
        s3.load_checkpoint(uri1)
    assert len(s3.load_checkpoint_with_validation(uri1, validate_integrity=False)) == 5000
    _corrupt(s3, uri1, "truncate")
    with pytest.raises(s3.CheckpointError, match="size"):
        s3.load_checkpoint_with_validation(uri1)


# ---- errors ----

def test_every_failure_is_a_runtime_error(s3, base):
    store = s3.PyCheckpointStore(base)
    store.save(1, 0, "torch", b"ok")
    rec = store.reader().load_latest_manifest()["shards"][0]
    _corrupt(s3, base + rec["key"])
    failures = [
        lambda: store.load_latest(),                                   # corrupted
        lambda: s3.load_checkpoint_with_validation(base),              # corrupted
        lambda: s3.load_checkpoint_with_validation(base + "missing"),  # missing object
        lambda: store.load(42),                                        # no such step
        lambda: store.writer(1, 0).finalize_distributed_checkpoint(2, 0, "t", []),
        lambda: s3.PyCheckpointStore(base, strategy="nope"),
        lambda: s3.PyCheckpointStore("nope"),
        lambda: store.reader().read_shard_by_rank(None, 0),
    ]
    for i, f in enumerate(failures):
        with pytest.raises(RuntimeError):
            f()
    s = store.writer(1, 0).get_distributed_shard_stream(3, 0, "t")
    s.finalize()
    with pytest.raises(RuntimeError):
        s.finalize()


# ---- delete, and the original's own layout ----

def test_delete_newest_keeps_load_latest(s3, base):
    store = s3.PyCheckpointStore(base, strategy="round_robin", compression_level=3)
    for step in (1, 2, 3):
        store.save(step, step, "torch", b"s%d" % step * 50, None)
    assert store.delete_checkpoint(3) is True
    assert store.load_latest() == b"s2" * 50
    assert [i.step for i in store.list_checkpoints()] == [1, 2]
    assert store.delete_checkpoint(3) is False
    assert not [u for u in s3.list(base, recursive=True) if "ckpt-3" in u]


def test_reads_a_checkpoint_laid_out_by_the_original(s3, base):
    """Names, timestamps and a compressed shard as the original 0.9.1 writes them."""
    import s3dlio._core as core
    ts = "20250101-120000"
    raw = b"original " * 300
    frame = core.zstd_compress(raw, 3)
    key = f"shards/rr/00/ckpt-8-{ts}/rank-0.bin.zst"
    s3.put_bytes(base + key, frame)
    manifest = {"format_version": 1, "framework": "torch", "global_step": 8, "epoch": 2,
                "wall_time": "2025-01-01T12:00:00.123456789+00:00", "world_size": 1,
                "shards": [{"rank": 0, "key": key, "size": len(frame), "etag": "e",
                            "checksum": None}], "status": "complete", "user_meta": None}
    s3.put_bytes(base + f"manifests/ckpt-8-{ts}.json", json.dumps(manifest).encode())
    s3.put_bytes(base + "latest.json", json.dumps(
        {"manifest_key": f"manifests/ckpt-8-{ts}.json", "global_step": 8, "ts": ts}).encode())
    store = s3.PyCheckpointStore(base)
    assert store.load_latest() == raw
    (info,) = store.list_checkpoints()
    assert (info.step, info.epoch, info.timestamp, info.total_size) == (8, 2, ts, len(frame))
    assert s3.load_checkpoint_with_validation(base + key) == raw
    store.save(9, 3, "torch", b"ours", None)  # ours beside it
    assert [i.step for i in store.list_checkpoints()] == [8, 9]
    assert store.delete_checkpoint(9) and store.load_latest() == raw
    assert store.delete_checkpoint(8) and store.load_latest() is None
    assert s3.list(base, recursive=True) == []


# ---- re-saves, damaged manifests and pointers, bounds (the review of issue 10) ----

def _shards_of(s3, base, step):
    return sorted(u[len(base):] for u in s3.list(base, recursive=True)
                  if "/ckpt-%d/" % step in u)


def test_resave_of_a_step_never_overwrites_its_complete_shards(s3, base):
    store = s3.PyCheckpointStore(base)
    store.save(10, 0, "torch", b"A" * 1000, None)
    store.save(20, 0, "torch", b"B" * 1000, None)
    first = _shards_of(s3, base, 20)
    # the restarted job saves step 20 again and dies after its shard, before finalize
    w = store.writer(1, 0)
    rec = w.save_distributed_shard(20, 0, "torch", b"C" * 999)
    assert rec["key"] not in first and len(_shards_of(s3, base, 20)) == 2
    assert store.load_latest() == b"B" * 1000  # latest.json's checkpoint is intact
    s3.delete(base + "latest.json")
    assert store.load_latest() == b"B" * 1000  # and so is the scan's
    # two saves of one step never share a key, streamed or not
    s = w.get_distributed_shard_stream(20, 0, "torch")
    s.write_chunk(b"D" * 10)
    assert s.key != rec["key"] and s.key != w.shard_key(20) != w.shard_key(20)
    s.cancel()
    # finishing the re-save moves the checkpoint to it
    w.finalize_distributed_checkpoint(20, 0, "torch", [rec])
    assert store.load_latest() == b"C" * 999 and store.load(20) == b"C" * 999
    # delete removes the shards of every save of the step, and only those
    assert store.delete_checkpoint(20)
    assert _shards_of(s3, base, 20) == []
    assert store.load_latest() == b"A" * 1000 and len(_shards_of(s3, base, 10)) == 1


def test_shards_of_the_earlier_layout_load_and_finalize(s3, base):
    """This package's shards before nonces (rank-{r}.bin): read, and accepted by finalize."""
    store = s3.PyCheckpointStore(base)
    keys = ["shards/ckpt-3/rank-%d.bin" % r for r in range(2)]
    for r, k in enumerate(keys):
        s3.put_bytes(base + k, b"old %d" % r)
    recs = [{"rank": r, "key": k, "size": 5, "checksum": "crc32c:%08x" % s3.crc32c(b"old %d" % r)}
            for r, k in enumerate(keys)]
    store.writer(2, 0).finalize_distributed_checkpoint(3, 0, "torch", recs)
    assert store.load(3, rank=1) == b"old 1" and store.load_latest() == b"old 0"
    assert s3.load_checkpoint_with_validation(base + keys[1]) == b"old 1"
    with pytest.raises(RuntimeError, match="not a shard key"):
        store.writer(2, 0).finalize_distributed_checkpoint(
            3, 0, "torch", [recs[0], dict(recs[1], key="shards/ckpt-3/rank-1.xyz.bin")])
    assert store.delete_checkpoint(3) and s3.list(base, recursive=True) == []


def test_delete_checkpoint_deletes_only_shards_of_its_step(s3, base):
    store = s3.PyCheckpointStore(base)
    store.save(1, 0, "torch", b"one", None)
    store.save(2, 0, "torch", b"two", None)
    key1 = store.reader().load_manifest(1)["shards"][0]["key"]
    s3.put_bytes(base + "datasets/train.bin", b"precious")
    # a damaged (or crafted) manifest of step 2 names other objects under the base
    mkey = base + "manifests/ckpt-2.json"
    m = json.loads(bytes(s3.get(mkey)))
    m["shards"] += [{"rank": 1, "key": "datasets/train.bin", "size": 8},
                    {"rank": 2, "key": key1, "size": 3},
                    {"rank": 0, "key": "shards/ckpt-2/../../datasets/train.bin", "size": 8},
                    {"rank": 0, "key": "latest.json", "size": 1},
                    {"rank": 0, "key": None}, "not a record"]
    s3.put_bytes(mkey, json.dumps(m).encode())
    assert store.delete_checkpoint(2)
    assert s3.get(base + "datasets/train.bin") == b"precious"
    assert s3.exists(base + key1) and store.load_latest() == b"one"
    assert _shards_of(s3, base, 2) == []


@pytest.mark.parametrize("pointer", [
    {"manifest_key": "../elsewhere/manifests/ckpt-1.json", "global_step": 1},
    {"manifest_key": "", "global_step": 1},
    {"manifest_key": "manifests/", "global_step": 1},
    {"manifest_key": "manifests/ckpt-1.json\0", "global_step": 1},
    {"manifest_key": "manifests/ckpt-1.json\n", "global_step": 1},
    {"manifest_key": "/manifests/ckpt-1.json", "global_step": 1},
    {"manifest_key": "x/manifests/ckpt-1.json", "global_step": 1},
    {"manifest_key": "shards/ckpt-1/rank-0.bin", "global_step": 1},
    {"manifest_key": {"x": 1}, "global_step": 1},
    {"manifest_key": 7},
    {"global_step": 1},
    ["manifests/ckpt-1.json"],
    "manifests/ckpt-1.json",
])
def test_unusable_latest_pointer_falls_back_to_the_scan(s3, base, pointer):
    store = s3.PyCheckpointStore(base)
    store.save(1, 0, "torch", b"good", None)
    s3.put_bytes(base + "latest.json", json.dumps(pointer).encode())
    assert store.load_latest() == b"good"
    assert store.reader().load_latest_manifest()["global_step"] == 1
    assert s3.load_checkpoint(base) == b"good"
    assert s3.load_checkpoint_with_validation(base) == b"good"


def test_zst_named_objects_of_save_checkpoint_round_trip(s3, base):
    """save_checkpoint(uri, data) stores data as given, whatever uri's name: a ".zst" name
    is the user's, not a sign of this package's compression."""
    import s3dlio._core as core
    uri = base + "obj/model.zst"
    raw = b"plain bytes, not a zstd frame" * 10
    s3.save_checkpoint(uri, raw)
    assert s3.load_checkpoint_with_validation(uri) == raw
    assert s3.load_checkpoint(uri) == raw
    pre = core.zstd_compress(b"user data " * 100)  # the user's own zstd bytes
    s3.save_checkpoint(uri, pre)
    assert s3.load_checkpoint_with_validation(uri) == pre
    assert s3.load_checkpoint(uri) == pre
    # a compressed store's records say compression: "zstd"; only those are decompressed
    store = s3.PyCheckpointStore(base + "z", compression_level=3)
    store.save(1, 0, "torch", raw, None)
    assert store.reader().load_latest_manifest()["shards"][0]["compression"] == "zstd"
    assert store.load_latest() == raw


def _zeros_frame(core, mib):
    """A zstd frame (no declared size) of mib MiB of zeros, a few KiB long."""
    z = core.ZstdCompressor(3)
    block = bytes(1 << 20)
    return b"".join([z.compress(block) for _ in range(mib)] + [z.flush()])


def test_decompression_is_bounded_for_records_without_uncompressed_size(s3, base):
    """A compressed shard whose record has no uncompressed_size (the original's manifests, or
    a damaged one) decompresses to at most max(64 MiB, 1024 x its stored size)."""
    import s3dlio._core as core
    store = s3.PyCheckpointStore(base, compression_level=3)
    store.save(1, 0, "torch", b"small" * 10, None)
    mkey = base + "manifests/ckpt-1.json"
    m = json.loads(bytes(s3.get(mkey)))
    rec = m["shards"][0]
    bomb = _zeros_frame(core, 100)
    assert len(bomb) * 1024 < 64 << 20  # the 64 MiB floor is the limit here
    s3.put_bytes(base + rec["key"], bomb)
    rec.update(size=len(bomb), checksum="crc32c:%08x" % s3.crc32c(bomb))
    for k in ("uncompressed_size", "uncompressed_checksum"):
        del rec[k]
    s3.put_bytes(mkey, json.dumps(m).encode())
    with pytest.raises(s3.CheckpointError, match=str(64 << 20)) as ei:
        store.load_latest()
    assert rec["key"] in str(ei.value)
    with pytest.raises(s3.CheckpointError, match=str(64 << 20)):
        s3.load_checkpoint_with_validation(base + rec["key"])
    # within the bound it loads: 40 MiB of zeros from the same kind of record
    ok = _zeros_frame(core, 40)
    s3.put_bytes(base + rec["key"], ok)
    rec.update(size=len(ok), checksum="crc32c:%08x" % s3.crc32c(ok))
    s3.put_bytes(mkey, json.dumps(m).encode())
    assert len(store.load_latest()) == 40 << 20
    # with uncompressed_size, that is the bound
    rec["uncompressed_size"] = 1 << 20
    s3.put_bytes(mkey, json.dumps(m).encode())
    with pytest.raises(s3.CheckpointError, match=str(1 << 20)):
        store.load_latest()


# ---- threads ----

@pytest.mark.parametrize("level", [None, 1])
def test_stream_written_from_threads(s3, base, level):
    store = s3.PyCheckpointStore(base, compression_level=level)
    w = store.writer(1, 0)
    size, count = 1 << 18, 12
    chunks = s3dtest.threaded_chunks(4, count, size)
    s = w.get_distributed_shard_stream(1, 0, "torch")
    s3dtest.in_threads(lambda t: [s.write_chunk(chunks[(t, i)]) for i in range(count)], 4)
    rec = s.finalize()
    assert s.bytes_written() == 4 * count * size
    w.finalize_distributed_checkpoint(1, 0, "torch", [rec])
    s3dtest.check_interleaving(bytes(store.load_latest()), chunks, size)  # CRC32C checked too


def _race_close(write, close, chunk, closed_error):
    """Writes chunk from a thread while close() runs, until a write raises closed_error (the
    writer is closed; anything else fails); returns the bytes accepted before."""
    import threading
    accepted, ended = [], []
    started = threading.Event()

    def writer():
        started.set()
        while True:
            try:
                write(chunk)
            except BaseException as e:  # noqa: B902 (checked below)
                ended.append(e)
                return
            accepted.append(len(chunk))
    t = threading.Thread(target=writer)
    t.start()
    started.wait()
    close()
    t.join()
    assert len(ended) == 1 and isinstance(ended[0], closed_error), ended
    return sum(accepted)


def test_object_writer_from_threads_and_racing_close(s3, base):
    size, count = 1 << 16, 40
    chunks = s3dtest.threaded_chunks(4, count, size)
    f = s3.open_writer(base + "obj/threads.bin")
    s3dtest.in_threads(lambda t: [f.write(chunks[(t, i)]) for i in range(count)], 4)
    f.close()
    s3dtest.check_interleaving(s3.get(base + "obj/threads.bin").to_bytes(), chunks, size)
    # a write either lands in the stored object or raises ValueError (closed)
    f = s3.open_writer(base + "obj/race.bin")
    f.write(bytes(64 << 20))
    n = _race_close(f.write, f.close, b"y" * 65536, ValueError)
    assert s3.stat(base + "obj/race.bin")["size"] == (64 << 20) + n


# ---- s3:// through the emulator ----

@pytest.fixture
def s3_base(s3dlio_mod, clouds):  # noqa: F811 (pytest fixture injection)
    b = clouds.get("s3")
    s3dlio_mod.connect(b.srv.tcp_url)
    uri = f"{b.root}compat-{uuid.uuid4().hex[:10]}/"
    yield s3dlio_mod, uri
    try:
        s3dlio_mod.connect(b.srv.tcp_url)
        s3dlio_mod.delete(uri, recursive=True)
    except Exception:
        pass


def test_s3_original_api_end_to_end(s3_base):
    s3, base = s3_base
    store = s3.PyCheckpointStore(base, strategy="binary", compression_level=3)
    big = os.urandom(7 << 20)  # above the servers' multipart threshold (stored compressed)
    store.save(1, 0, "torch", big + b"tail" * 1000, {"run": "s3"})
    w = [store.writer(2, r) for r in range(2)]
    s = w[1].get_distributed_shard_stream(2, 1, "torch")
    s.write_chunk(b"streamed " * 1000)
    recs = [w[0].save_distributed_shard(2, 1, "torch", b"rank0"), s.finalize()]
    w[0].finalize_distributed_checkpoint(2, 1, "torch", shard_metas=recs)
    infos = store.list_checkpoints()
    assert [(i.step, i.world_size, i.is_complete) for i in infos] == [(1, 1, True),
                                                                       (2, 2, True)]
    assert infos[0]["user_meta"] == {"run": "s3"}
    r = store.reader()
    m = r.load_latest_manifest()
    assert r.read_shard_by_rank(m, 1) == b"streamed " * 1000
    assert s3.load_checkpoint_with_validation(base + recs[1]["key"]) == b"streamed " * 1000
    assert store.delete_checkpoint(2)
    assert store.load_latest() == big + b"tail" * 1000
    c = s3.PyCheckpointStore(base).reader().load_latest_manifest()["shards"][0]
    assert c["key"].startswith("shards/bin/0000/ckpt-1/") and c["key"].endswith(".zst")
