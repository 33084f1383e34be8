"""Checkpoints on every backend: file:// (the session server) and s3:// (s3rver), az://
(Azurite) and gs:// (firebase-tools' storage emulator), each behind its own s3dliod, through
the s3dlio data calls only. The same tests run on every backend (parametrised by name); a
cloud backend skips, with the reason, only when its emulator is not installed.

Emulators and servers are session-scoped and started lazily: `clouds` keeps one
emulator + s3dliod per backend for the whole run (test_dataset_cloud.py shares them: it
imports `clouds` and `cb` from here). Corruption goes through the store, never the
filesystem: the backend's independent client (boto3, cloudemu.AzureClient,
cloudemu.GcsClient) puts a modified copy over the shard, or s3dlio's put_bytes when there is
no independent client (file://).

Small objects only, except one shard above the servers' 6 MiB multipart threshold per cloud.
"""
import json
import os
import re
import threading
import uuid

import pytest

import cloudemu
import s3dtest

BACKENDS = ["file", "s3", "az", "gs"]
S3_BUCKET = "ckpt"
AZ_CONTAINER = "ckpt"
GS_BUCKET = "ckpt-gs"


class Backend:
    """One backend: its s3dliod (`srv`), a root URI (ending '/'), an independent writer
    (`peer_put(uri, data)`, None for file://) and what to stop at the end."""

    def __init__(self, name, srv, root, peer_put=None, stops=()):
        self.name, self.srv, self.root, self.peer_put = name, srv, root, peer_put
        self.stops = list(stops)

    def fresh(self):
        return f"{self.root}{uuid.uuid4().hex[:12]}/"

    def stop(self):
        for f in self.stops:
            f()


def _start_s3(tmp):
    e = cloudemu.s3rver(tmp, [S3_BUCKET])
    try:
        srv = s3dtest.start_server([f"s3://{S3_BUCKET}/"], threads=2,
                                   extra=cloudemu.CLOUD_FLAGS, env=cloudemu.s3_env(e.endpoint))
    except Exception:
        e.stop()
        raise
    peer = None
    try:
        import boto3
        from botocore.config import Config
        client = boto3.client("s3", endpoint_url=e.endpoint, region_name="us-east-1",
                              aws_access_key_id=cloudemu.S3RVER_KEY,
                              aws_secret_access_key=cloudemu.S3RVER_SECRET,
                              config=Config(s3={"addressing_style": "path"},
                                            retries={"max_attempts": 1}))
        pre = f"s3://{S3_BUCKET}/"

        def peer(uri, data):
            assert uri.startswith(pre), uri
            client.put_object(Bucket=S3_BUCKET, Key=uri[len(pre):], Body=bytes(data))
    except ImportError:
        pass
    return Backend("s3", srv, f"s3://{S3_BUCKET}/", peer,
                   [lambda: cloudemu.stop_server(srv), e.stop])


def _start_az(tmp):
    e = cloudemu.azurite(tmp)
    acct = cloudemu.AZ_ACCOUNT
    client = cloudemu.AzureClient(f"{e.endpoint}/{acct}")
    try:
        client.create_container(AZ_CONTAINER)
        srv = s3dtest.start_server([f"az://{acct}/{AZ_CONTAINER}/"], threads=2,
                                   extra=cloudemu.CLOUD_FLAGS,
                                   env=cloudemu.az_env(f"{e.endpoint}/{acct}"))
    except Exception:
        e.stop()
        raise
    pre = f"az://{acct}/{AZ_CONTAINER}/"

    def peer(uri, data):
        assert uri.startswith(pre), uri
        client.put(AZ_CONTAINER, uri[len(pre):], bytes(data))
    return Backend("az", srv, pre, peer, [lambda: cloudemu.stop_server(srv), e.stop])


def _start_gs(tmp):
    e = cloudemu.gcs()  # keeps its blobs in its own temporary directory
    try:
        srv = s3dtest.start_server([f"gs://{GS_BUCKET}/"], threads=2,
                                   extra=cloudemu.CLOUD_FLAGS,
                                   env=cloudemu.gs_env(e.endpoint))
    except Exception:
        e.stop()
        raise
    client = cloudemu.GcsClient(e.endpoint)
    pre = f"gs://{GS_BUCKET}/"

    def peer(uri, data):
        assert uri.startswith(pre), uri
        client.put(GS_BUCKET, uri[len(pre):], bytes(data))
    return Backend("gs", srv, pre, peer, [lambda: cloudemu.stop_server(srv), e.stop])


class Clouds:
    """Backends started on first use and kept for the session; a backend whose emulator is
    not installed is remembered as skipped (the same reason for every test)."""

    def __init__(self, request, tmp_path_factory):
        self.request, self.tmp = request, tmp_path_factory
        self.live = {}

    def get(self, name):
        b = self.live.get(name)
        if b is None:
            try:
                if name == "file":
                    data = self.request.getfixturevalue("data")
                    path = data.path(f"ckpt-cloud-{uuid.uuid4().hex[:8]}")
                    os.makedirs(path)
                    b = Backend("file", self.request.getfixturevalue("server"),
                                s3dtest.file_uri(path) + "/")
                else:
                    start = {"s3": _start_s3, "az": _start_az, "gs": _start_gs}[name]
                    b = start(str(self.tmp.mktemp(f"emu-{name}")))
            except pytest.skip.Exception as e:
                b = e
            self.live[name] = b
        if isinstance(b, BaseException):
            raise b
        return b

    def stop(self):
        errors = []
        for b in self.live.values():
            if isinstance(b, Backend):
                try:
                    b.stop()
                except Exception as e:  # stop the rest, then report
                    errors.append(f"{b.name}: {e}")
        self.live.clear()
        assert not errors, "\n".join(errors)


_CLOUDS = []


@pytest.fixture(scope="session")
def clouds(request, tmp_path_factory):
    # one registry even when another module imports this fixture (its own FixtureDef)
    if not _CLOUDS:
        _CLOUDS.append(Clouds(request, tmp_path_factory))
        request.addfinalizer(_CLOUDS[0].stop)
    return _CLOUDS[0]


@pytest.fixture(params=BACKENDS)
def cb(request, s3dlio_mod, clouds):
    """(s3dlio connected to the backend's server, Backend)."""
    b = clouds.get(request.param)
    s3dlio_mod.connect(b.srv.tcp_url)
    return s3dlio_mod, b


@pytest.fixture
def base(cb):
    s3, b = cb
    u = b.fresh()
    yield u
    try:
        s3.connect(b.srv.tcp_url)
        s3.delete(u, recursive=True)
    except Exception:
        pass


# ---- helpers ----

def _payload(rank, step, n):
    import random
    return random.Random(step * 1000 + rank).randbytes(n)


def _save_distributed(s3, base, step, world, size=777, user_meta=None, finalize=True):
    store = s3.CheckpointStore(base)
    recs = [None] * world
    errs = []

    def one(rank):
        try:
            recs[rank] = store.writer(world, rank).save_distributed_shard(
                step, step // 10, "bytes", _payload(rank, step, size + rank))
        except Exception as e:  # pragma: no cover - reported below
            errs.append(e)

    threads = [threading.Thread(target=one, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errs, errs
    if finalize:
        store.writer(world, 0).finalize_distributed_checkpoint(step, step // 10, "bytes", recs,
                                                               user_meta=user_meta)
    return recs


def _corrupt(s3, b, uri, how):
    """Store a modified copy over uri: through the backend's independent client when there is
    one, else put_bytes. Then check the store really returns the modified bytes."""
    data = bytearray(s3.get(uri).to_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-1:]
    (b.peer_put or s3.put_bytes)(uri, data)
    assert s3.get(uri) == data, f"{b.name}: the modified copy is not what the store returns"
    return bytes(data)


# ---- tests ----

@pytest.mark.parametrize("world", [1, 2, 3])
def test_save_load_several_steps_and_world_sizes(cb, base, world):
    s3, b = cb
    store = s3.CheckpointStore(base)
    assert store.load_latest() is None
    assert store.reader().load_latest_manifest() is None
    for step in (10, 20, 30):
        recs = _save_distributed(s3, base, step, world, size=500 + step,
                                 user_meta={"step": step, "backend": b.name})
        assert [r["rank"] for r in recs] == list(range(world))
        for r in recs:
            assert r["checksum"].startswith("crc32c:") and r["size"] == 500 + step + r["rank"]
            assert r["checksum"] == "crc32c:%08x" % s3.crc32c(_payload(r["rank"], step,
                                                                       r["size"]))
    reader = s3.CheckpointReader(base)
    m = reader.load_latest_manifest()
    assert (m["global_step"], m["world_size"], m["status"]) == (30, world, "complete")
    assert m["user_meta"] == {"step": 30, "backend": b.name}
    assert [s["rank"] for s in m["shards"]] == list(range(world))
    for rank in range(world):
        assert reader.read_shard_by_rank(m, rank) == _payload(rank, 30, 530 + rank)
        buf = bytearray(2000)
        assert reader.read_shard_into(m, rank, buf) == 530 + rank
        assert bytes(buf[:530 + rank]) == _payload(rank, 30, 530 + rank)
    for step in (10, 20):
        for rank in range(world):
            assert store.load(step, rank=rank) == _payload(rank, step, 500 + step + rank)
    assert store.load_latest() == _payload(0, 30, 530)
    assert s3.load_checkpoint_with_validation(base) == _payload(0, 30, 530)
    assert [(c["step"], c["world_size"], c["status"]) for c in store.list_checkpoints()] == \
        [(s, world, "complete") for s in (10, 20, 30)]
    pointer = json.loads(bytes(s3.get(base + "latest.json")))
    assert pointer["global_step"] == 30 and pointer["manifest_key"] == m["manifest_key"]
    # the layout as stored on the backend: one shard per rank, each save's own nonce
    stored = sorted(s3.list(base + "shards/ckpt-30/", recursive=True))
    assert len(stored) == world and all(
        re.fullmatch(re.escape(base) + r"shards/ckpt-30/rank-%d\.[0-9a-f]{12}\.bin" % r, u)
        for r, u in enumerate(stored))
    assert stored == sorted(base + s["key"] for s in m["shards"])


def test_large_shard_multipart(cb, base):
    """One shard above the servers' 6 MiB multipart threshold (cloud: multipart upload / block
    list / resumable upload), next to a small one."""
    s3, b = cb
    big = _payload(0, 1, (7 << 20) + 5)
    store = s3.CheckpointStore(base)
    recs = [store.writer(2, 0).save_distributed_shard(1, 0, "bytes", big),
            store.writer(2, 1).save_distributed_shard(1, 0, "bytes", b"small")]
    assert recs[0]["size"] == len(big)
    store.writer(2, 0).finalize_distributed_checkpoint(1, 0, "bytes", recs)
    r = store.reader()
    m = r.load_latest_manifest()
    assert r.read_shard_by_rank(m, 0) == big and r.read_shard_by_rank(m, 1) == b"small"
    assert s3.stat(base + m["shards"][0]["key"])["size"] == len(big)


def test_latest_after_crash_between_shards_and_manifest(cb, base):
    s3, b = cb
    store = s3.CheckpointStore(base)
    _save_distributed(s3, base, 1, 2, user_meta={"s": 1})
    # step 2: every shard written, the job dies before rank 0 writes the manifest
    recs2 = _save_distributed(s3, base, 2, 2, finalize=False)
    assert s3.exists(base + recs2[1]["key"])
    assert not s3.exists(base + "manifests/ckpt-2.json")
    m = store.reader().load_latest_manifest()
    assert m["global_step"] == 1 and m["user_meta"] == {"s": 1}
    assert store.load_latest() == _payload(0, 1, 777)
    # step 3: one of two shards, then the crash
    store.writer(2, 0).save_distributed_shard(3, 0, "bytes", b"partial")
    assert store.reader().load_latest_manifest()["global_step"] == 1
    assert [c["step"] for c in store.list_checkpoints() if c["status"] == "complete"] == [1]
    # latest.json lost as well: the scan skips steps without a complete manifest
    s3.delete(base + "latest.json")
    assert store.reader().load_latest_manifest()["global_step"] == 1
    assert store.load_latest() == _payload(0, 1, 777)
    # an unusable latest.json (torn write) is ignored the same way
    s3.put_bytes(base + "latest.json", b'{"manifest_key": "manif')
    assert store.reader().load_latest_manifest()["global_step"] == 1
    # finishing step 2 afterwards moves the pointer
    keys = [recs2[r]["key"] for r in range(2)]
    recs = [{"rank": r, "key": keys[r], "size": 777 + r, "etag": s3.stat(base + keys[r])["etag"],
             "checksum": "crc32c:%08x" % s3.crc32c(_payload(r, 2, 777 + r))} for r in range(2)]
    store.writer(2, 0).finalize_distributed_checkpoint(2, 0, "bytes", recs)
    assert store.reader().load_latest_manifest()["global_step"] == 2
    assert store.load(2, rank=1) == _payload(1, 2, 778)


def test_latest_after_crash_between_manifest_and_pointer(cb, base):
    s3, b = cb
    store = s3.CheckpointStore(base)
    _save_distributed(s3, base, 1, 2)
    pointer = s3.get(base + "latest.json").to_bytes()
    _save_distributed(s3, base, 2, 2)
    s3.put_bytes(base + "latest.json", pointer)  # as if the job died before the pointer
    assert store.reader().load_latest_manifest()["global_step"] == 1
    assert store.load_latest() == _payload(0, 1, 777)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_corrupted_shard_detected(cb, base, how):
    s3, b = cb
    store = s3.CheckpointStore(base)
    recs = _save_distributed(s3, base, 1, 2)
    _corrupt(s3, b, base + recs[1]["key"], how)
    reader = store.reader()
    m = reader.load_latest_manifest()
    assert reader.read_shard_by_rank(m, 0) == _payload(0, 1, 777)
    want = "CRC32C" if how == "flip" else "size"
    with pytest.raises(s3.CheckpointError, match=r"rank-1\.[0-9a-f]{12}\.bin") as ei:
        reader.read_shard_by_rank(m, 1)
    assert want.lower() in str(ei.value).lower(), str(ei.value)
    with pytest.raises(s3.CheckpointError, match=r"rank-1\.[0-9a-f]{12}\.bin"):
        reader.read_shard_into(m, 1, bytearray(4096))
    with pytest.raises(s3.CheckpointError, match=r"rank-1\.[0-9a-f]{12}\.bin"):
        store.load(1, rank=1)
    with pytest.raises(s3.CheckpointError, match=r"rank-1\.[0-9a-f]{12}\.bin"):
        with reader.open_shard(m, 1) as f:  # the file-like path (torch.load), read in order
            while f.read(100):
                pass
    _corrupt(s3, b, base + recs[0]["key"], how)
    with pytest.raises(s3.CheckpointError, match=r"rank-0\.[0-9a-f]{12}\.bin"):
        store.load_latest()
    with pytest.raises(s3.CheckpointError):
        s3.load_checkpoint_with_validation(base)
    with pytest.raises(s3.CheckpointError):
        s3.load_checkpoint(base)


def test_finalize_refuses_truncated_shard(cb, base):
    s3, b = cb
    store = s3.CheckpointStore(base)
    recs = _save_distributed(s3, base, 1, 2, finalize=False)
    _corrupt(s3, b, base + recs[1]["key"], "truncate")
    with pytest.raises(s3.CheckpointError, match=r"rank-1\.[0-9a-f]{12}\.bin"):
        store.writer(2, 0).finalize_distributed_checkpoint(1, 0, "bytes", recs)
    assert not s3.exists(base + "latest.json")
    assert store.reader().load_latest_manifest() is None


def test_single_object_checksum_and_delete(cb, base):
    s3, b = cb
    obj = base + "single/model.bin"
    s3.save_checkpoint(obj, b"abc" * 333)
    assert s3.load_checkpoint_with_validation(obj) == b"abc" * 333
    _corrupt(s3, b, obj, "flip")
    with pytest.raises(s3.CheckpointError, match="CRC32C"):
        s3.load_checkpoint_with_validation(obj)
    store = s3.CheckpointStore(base + "ck/")
    for step in (1, 2, 3):
        store.save(step, b"s%d" % step)
    assert store.delete_checkpoint(3)
    assert store.load_latest() == b"s2"
    assert json.loads(bytes(s3.get(base + "ck/latest.json")))["global_step"] == 2
    assert [c["step"] for c in store.list_checkpoints()] == [1, 2]
    assert not s3.list(base + "ck/shards/ckpt-3/", recursive=True)
