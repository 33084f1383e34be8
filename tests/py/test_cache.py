"""The object cache of remote backends (--cache-mem) against the S3 emulator (s3rver), with
boto3 as the independent client that changes objects behind the server's back. Backend reads
are counted by the server's own /metrics (s3dliod_backend_requests_total)."""
import hashlib
import random

import pytest

import cloudemu
import s3dtest

BUCKET = "cache"
MET = ["--metrics", "tcp://127.0.0.1:0"]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    e = cloudemu.s3rver(str(tmp_path_factory.mktemp("s3rver-cache")), [BUCKET])
    yield e
    e.stop()


@pytest.fixture(scope="module")
def boto(emu):
    return cloudemu.boto_s3(emu.endpoint)


@pytest.fixture
def servers():
    started = []

    def start(emu, extra=(), endpoint=None):
        s = s3dtest.start_server([f"s3://{BUCKET}/"], threads=2,
                                 extra=cloudemu.CLOUD_FLAGS + MET + list(extra),
                                 env=cloudemu.s3_env(endpoint or emu.endpoint))
        started.append(s)
        return s
    yield start
    for s in started:
        cloudemu.stop_server(s)


def _uri(key):
    return f"s3://{BUCKET}/{key}"


def _rand(n, seed):
    return random.Random(seed).randbytes(n)


def _reads(srv, op="GET"):
    return s3dtest.metric(s3dtest.scrape(srv), "s3dliod_backend_requests_total", backend="s3",
                          op=op)


def test_cache_hits_and_ranges_from_one_read(emu, boto, servers, s3dlio_mod):
    data = _rand(300_000, 1)
    boto.put_object(Bucket=BUCKET, Key="hr/obj.bin", Body=data)
    srv = servers(emu, ["--cache-mem", "64m", "--cache-validate", "3600"])
    s3dlio_mod.connect(srv.tcp_url)
    u = _uri("hr/obj.bin")
    assert bytes(s3dlio_mod.get(u)) == data
    for off, ln in [(0, 1), (5, 1000), (299_999, 1), (150_000, None), (0, 300_000),
                    (290_000, 50_000), (12345, 0)]:
        got = bytes(s3dlio_mod.get_range(u, off, ln))
        assert got == (data[off:] if ln is None else data[off:off + ln]), (off, ln)
    assert bytes(s3dlio_mod.get_range(u, 300_000, 10)) == b""
    with pytest.raises(ValueError, match="past the end"):
        s3dlio_mod.get_range(u, 300_001, 10)
    assert bytes(s3dlio_mod.get(u)) == data
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend="s3", op="GET") == 1
    assert s3dtest.metric(m, "s3dliod_cache_misses_total") == 1
    assert s3dtest.metric(m, "s3dliod_cache_hits_total") == 10
    assert s3dtest.metric(m, "s3dliod_cache_objects") == 1
    assert s3dtest.metric(m, "s3dliod_cache_inserted_bytes_total") == len(data)
    assert s3dtest.metric(m, "s3dliod_sent_bytes_total", backend="s3") == \
        len(data) * 3 + 1 + 1000 + 1 + 150_000 + 10_000
    # the backend latency histogram saw the one GET
    assert s3dtest.metric(m, "s3dliod_backend_latency_seconds_count", backend="s3",
                          op="GET") == 1
    assert s3dtest.metric(m, "s3dliod_backend_latency_seconds_bucket", backend="s3", op="GET",
                          le="+Inf") == 1


def test_cache_missing_object_is_not_cached(emu, boto, servers, s3dlio_mod):
    srv = servers(emu, ["--cache-mem", "64m", "--cache-validate", "3600"])
    s3dlio_mod.connect(srv.tcp_url)
    u = _uri("missing/late.bin")
    with pytest.raises(FileNotFoundError, match="late.bin"):
        s3dlio_mod.get(u)
    boto.put_object(Bucket=BUCKET, Key="missing/late.bin", Body=b"now here")
    assert bytes(s3dlio_mod.get(u)) == b"now here"
    assert _reads(srv) == 2


def test_cache_eviction_under_small_budget(emu, boto, servers, s3dlio_mod):
    objs = {f"ev/o{i}.bin": _rand(200_000, 100 + i) for i in range(10)}
    for k, v in objs.items():
        boto.put_object(Bucket=BUCKET, Key=k, Body=v)
    srv = servers(emu, ["--cache-mem", "1m", "--cache-max-object", "512k",
                        "--cache-validate", "3600"])
    s3dlio_mod.connect(srv.tcp_url)
    for k, v in objs.items():
        assert bytes(s3dlio_mod.get(_uri(k))) == v
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend="s3", op="GET") == 10
    assert s3dtest.metric(m, "s3dliod_cache_bytes") <= 1 << 20
    # 1 MiB holds five 200 kB objects (plus overhead), never six
    assert s3dtest.metric(m, "s3dliod_cache_objects") == 5
    assert s3dtest.metric(m, "s3dliod_cache_evictions_total") == 5
    assert s3dtest.metric(m, "s3dliod_cache_evicted_bytes_total") == 5 * 200_000
    # the most recent five are hits; the first one was evicted: a new backend read
    for i in range(5, 10):
        assert bytes(s3dlio_mod.get(_uri(f"ev/o{i}.bin"))) == objs[f"ev/o{i}.bin"]
    assert _reads(srv) == 10
    assert bytes(s3dlio_mod.get(_uri("ev/o0.bin"))) == objs["ev/o0.bin"]
    assert _reads(srv) == 11
    # S3-FIFO: o0 was seen lately (a ghost), so it enters the main queue; o5..o9 were read
    # again while in the small queue, so they move to the main queue, whose oldest (o5, its
    # hit spent by the move) makes room; o9 still hits
    assert bytes(s3dlio_mod.get(_uri("ev/o9.bin"))) == objs["ev/o9.bin"]
    assert _reads(srv) == 11
    assert bytes(s3dlio_mod.get(_uri("ev/o5.bin"))) == objs["ev/o5.bin"]
    assert _reads(srv) == 12


def test_cache_large_object_bypasses(emu, boto, servers, s3dlio_mod):
    big = _rand(700_000, 5)
    boto.put_object(Bucket=BUCKET, Key="big/o.bin", Body=big)
    srv = servers(emu, ["--cache-mem", "4m", "--cache-max-object", "512k",
                        "--cache-validate", "3600"])
    s3dlio_mod.connect(srv.tcp_url)
    for _ in range(3):
        assert bytes(s3dlio_mod.get(_uri("big/o.bin"))) == big
    assert bytes(s3dlio_mod.get_range(_uri("big/o.bin"), 600_000, 100)) == \
        big[600_000:600_100]
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_cache_objects") == 1  # the "not cacheable" note
    assert s3dtest.metric(m, "s3dliod_cache_inserted_bytes_total") == 0
    assert s3dtest.metric(m, "s3dliod_cache_bypass_total") == 3
    # one fetch stopped at its header, then every GET read directly
    assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend="s3", op="GET") == 1 + 4


def test_cache_changed_object_not_served_stale(emu, boto, servers, s3dlio_mod):
    """--cache-validate 0: every GET asks the backend (HEAD) whether the etag changed."""
    v1, v2 = _rand(50_000, 21), _rand(50_000, 22)
    boto.put_object(Bucket=BUCKET, Key="stale/o.bin", Body=v1)
    srv = servers(emu, ["--cache-mem", "16m", "--cache-validate", "0"])
    s3dlio_mod.connect(srv.tcp_url)
    u = _uri("stale/o.bin")
    assert bytes(s3dlio_mod.get(u)) == v1
    assert bytes(s3dlio_mod.get(u)) == v1  # unchanged: a HEAD, no GET
    assert _reads(srv, "GET") == 1
    assert _reads(srv, "STAT") == 1
    boto.put_object(Bucket=BUCKET, Key="stale/o.bin", Body=v2)  # same size, new etag
    assert bytes(s3dlio_mod.get(u)) == v2
    assert bytes(s3dlio_mod.get_range(u, 100, 50)) == v2[100:150]
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_cache_revalidations_total") == 3
    assert s3dtest.metric(m, "s3dliod_cache_revalidation_changed_total") == 1
    assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend="s3", op="GET") == 2
    boto.delete_object(Bucket=BUCKET, Key="stale/o.bin")
    with pytest.raises(FileNotFoundError):
        s3dlio_mod.get(u)


def test_cache_fresh_period_then_revalidation(emu, boto, servers, s3dlio_mod):
    """Within --cache-validate a changed object is still served from the cache (the documented
    trade: no request per hit); the server's own PUT and DELETE invalidate at once."""
    v1, v2, v3 = _rand(10_000, 31), _rand(10_000, 32), _rand(12_000, 33)
    boto.put_object(Bucket=BUCKET, Key="fresh/o.bin", Body=v1)
    srv = servers(emu, ["--cache-mem", "16m", "--cache-validate", "3600"])
    s3dlio_mod.connect(srv.tcp_url)
    u = _uri("fresh/o.bin")
    assert bytes(s3dlio_mod.get(u)) == v1
    boto.put_object(Bucket=BUCKET, Key="fresh/o.bin", Body=v2)
    assert bytes(s3dlio_mod.get(u)) == v1  # fresh: no request to the backend
    assert _reads(srv, "STAT") == 0
    s3dlio_mod.put_bytes(u, v3)  # through this server: invalidates
    assert bytes(s3dlio_mod.get(u)) == v3
    s3dlio_mod.delete(u)
    with pytest.raises(FileNotFoundError):
        s3dlio_mod.get(u)


def test_prefetch_warms_the_cache(emu, boto, servers, data):
    objs = {f"pf/o{i}.bin": _rand(30_000 + i, 40 + i) for i in range(5)}
    for k, v in objs.items():
        boto.put_object(Bucket=BUCKET, Key=k, Body=v)
    srv = servers(emu, ["--cache-mem", "16m", "--cache-validate", "3600"])
    with s3dtest.WireConn(srv.address()) as w:
        w.hello()
        ids = list(range(1, 6))
        for i, k in zip(ids, objs):
            w.send([s3dtest.PREFETCH, i, _uri(k)])
        replies = w.read_replies(ids)
        for i, k in zip(ids, objs):
            assert replies[i].ok, replies[i].error
            assert replies[i].header is None and not replies[i].chunks
            assert replies[i].end[2] == len(objs[k])
            assert replies[i].end[3] == s3dtest.crc32c(objs[k])
        assert _reads(srv) == 5
        for i, (k, v) in enumerate(objs.items(), start=10):
            r = w.get(_uri(k), rid=i)
            assert r.ok and r.data == v
        assert _reads(srv) == 5
        # a missing object: the fetch's error
        w.send([s3dtest.PREFETCH, 30, _uri("pf/none.bin")])
        r = w.read_reply(30)
        assert r.error[2] == s3dtest.E_NOT_FOUND and "pf/none.bin" in r.error[3]
        # outside --allow: refused like any request
        w.send([s3dtest.PREFETCH, 31, "s3://elsewhere/x"])
        assert w.read_reply(31).error[2] == s3dtest.E_PERMISSION
    m = s3dtest.scrape(srv)
    # a request refused before it starts counts only as an error
    assert s3dtest.metric(m, "s3dliod_requests_total", backend="s3", op="PREFETCH") == 6
    assert s3dtest.metric(m, "s3dliod_errors_total", backend="s3", code="PERMISSION") == 1
    assert s3dtest.metric(m, "s3dliod_errors_total", backend="s3", code="NOT_FOUND") == 1


def test_prefetch_of_local_file_is_a_no_op(new_server, data):
    srv = new_server.start()
    with s3dtest.WireConn(srv.address()) as w:
        w.hello()
        w.send([s3dtest.PREFETCH, 1, data.uri(data.small_rel(1))])
        r = w.read_reply(1)
        assert r.ok and r.end[2:] == [0, 0]


def _wait_metric(srv, name, want, limit=60.0):
    import time
    deadline = time.monotonic() + limit
    while True:
        got = s3dtest.metric(s3dtest.scrape(srv), name)
        if got == want:
            return
        assert got < want, f"{name} went past {want}: {got}"
        assert time.monotonic() < deadline, f"{name} stayed at {got}, waiting for {want}"
        time.sleep(0.02)


def test_disk_tier_keeps_evicted_objects(emu, boto, servers, s3dlio_mod, tmp_path):
    import os
    objs = {f"dk/o{i}.bin": _rand(200_000, 200 + i) for i in range(10)}
    for k, v in objs.items():
        boto.put_object(Bucket=BUCKET, Key=k, Body=v)
    d = tmp_path / "nvme"
    d.mkdir()
    (d / "0000000000000bad.obj").write_bytes(b"left over")  # from an earlier run: removed
    (d / "keep.txt").write_text("not ours")
    srv = servers(emu, ["--cache-mem", "1m", "--cache-max-object", "512k",
                        "--cache-dir", str(d), "--cache-disk", "64m",
                        "--cache-validate", "3600"])
    assert not (d / "0000000000000bad.obj").exists()
    s3dlio_mod.connect(srv.tcp_url)
    for k, v in objs.items():
        assert bytes(s3dlio_mod.get(_uri(k))) == v
    _wait_metric(srv, "s3dliod_cache_disk_writes_total", 5)  # o0..o4, evicted
    assert len([f for f in os.listdir(d) if f.endswith(".obj")]) == 5
    for i in range(5):  # back from disk, not from the store
        assert bytes(s3dlio_mod.get(_uri(f"dk/o{i}.bin"))) == objs[f"dk/o{i}.bin"]
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend="s3", op="GET") == 10
    assert s3dtest.metric(m, "s3dliod_cache_disk_hits_total") == 5
    # o5..o9 went to disk in turn
    _wait_metric(srv, "s3dliod_cache_disk_writes_total", 10)
    assert s3dtest.metric(s3dtest.scrape(srv), "s3dliod_cache_disk_bytes") == 10 * 200_000
    # a PUT through the server drops the disk copy too
    s3dlio_mod.put_bytes(_uri("dk/o7.bin"), b"seven")
    assert bytes(s3dlio_mod.get(_uri("dk/o7.bin"))) == b"seven"
    # damaged files are noticed (CRC32C) and the store is asked instead
    for f in os.listdir(d):
        if f.endswith(".obj"):
            p = d / f
            b = bytearray(p.read_bytes())
            b[1000] ^= 0xFF
            p.write_bytes(bytes(b))
    before = _reads(srv)
    for i in (5, 6, 8, 9):
        assert bytes(s3dlio_mod.get(_uri(f"dk/o{i}.bin"))) == objs[f"dk/o{i}.bin"]
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_cache_disk_errors_total") == 4
    assert _reads(srv) == before + 4
    cloudemu.stop_server(srv)
    assert sorted(os.listdir(d)) == ["keep.txt"]  # the tier's files go at exit


def test_disk_tier_flags(tmp_path):
    import subprocess
    p = subprocess.run([s3dtest.server_binary(), "--cache-mem", "1m", "--cache-dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "go together" in p.stderr
    p = subprocess.run([s3dtest.server_binary(), "--cache-dir", str(tmp_path), "--cache-disk",
                        "1m"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--cache-mem" in p.stderr
    afile = tmp_path / "a-file"
    afile.write_text("x")
    p = subprocess.run([s3dtest.server_binary(), "--listen", "tcp://127.0.0.1:0",
                        "--cache-mem", "1m", "--cache-dir", str(afile), "--cache-disk", "1m"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--cache-dir" in p.stderr and "Not a directory" in p.stderr


@pytest.mark.parametrize("store", ["az", "gs"])
def test_cache_on_azure_and_gcs(store, tmp_path, s3dlio_mod):
    """The cache sits above every remote backend: one read for many GETs, and a change by
    another writer is seen at the next validation (etag)."""
    if store == "az":
        emu = cloudemu.azurite(str(tmp_path / "azurite"))
        peer = cloudemu.AzureClient(f"{emu.endpoint}/{cloudemu.AZ_ACCOUNT}")
        peer.create_container("cachec")
        allow, env = f"az://{cloudemu.AZ_ACCOUNT}/cachec/", \
            cloudemu.az_env(f"{emu.endpoint}/{cloudemu.AZ_ACCOUNT}")
        put = lambda name, data: peer.put("cachec", name, data)  # noqa: E731
    else:
        emu = cloudemu.gcs()
        peer = cloudemu.GcsClient(emu.endpoint)
        allow, env = "gs://cc-gs/", cloudemu.gs_env(emu.endpoint)
        put = lambda name, data: peer.put("cc-gs", name, data)  # noqa: E731
    srv = None
    try:
        v1, v2 = _rand(40_000, 51), _rand(40_000, 52)
        put("o.bin", v1)
        srv = s3dtest.start_server([allow], threads=2,
                                   extra=cloudemu.CLOUD_FLAGS + MET + ["--cache-mem", "16m",
                                                                       "--cache-validate", "0"],
                                   env=env)
        s3dlio_mod.connect(srv.tcp_url)
        u = allow + "o.bin"
        for _ in range(3):
            assert bytes(s3dlio_mod.get(u)) == v1
        assert bytes(s3dlio_mod.get_range(u, 100, 10)) == v1[100:110]
        m = s3dtest.scrape(srv)
        assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend=store, op="GET") == 1
        assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend=store,
                              op="STAT") == 3
        put("o.bin", v2)
        assert bytes(s3dlio_mod.get(u)) == v2
        assert s3dtest.metric(s3dtest.scrape(srv), "s3dliod_backend_requests_total",
                              backend=store, op="GET") == 2
    finally:
        if srv:
            cloudemu.stop_server(srv)
        emu.stop()


def test_cache_empty_and_tiny_objects(emu, boto, servers, s3dlio_mod):
    boto.put_object(Bucket=BUCKET, Key="tiny/empty", Body=b"")
    boto.put_object(Bucket=BUCKET, Key="tiny/one", Body=b"x")
    srv = servers(emu, ["--cache-mem", "16m", "--cache-validate", "3600"])
    s3dlio_mod.connect(srv.tcp_url)
    for _ in range(2):
        assert bytes(s3dlio_mod.get(_uri("tiny/empty"))) == b""
        assert bytes(s3dlio_mod.get(_uri("tiny/one"))) == b"x"
    assert bytes(s3dlio_mod.get_range(_uri("tiny/one"), 1, 5)) == b""
    with pytest.raises(ValueError, match="past the end"):
        s3dlio_mod.get_range(_uri("tiny/empty"), 1, 5)
    assert _reads(srv) == 2
    with s3dtest.WireConn(srv.address()) as w:
        w.hello()
        r = w.get(_uri("tiny/empty"), rid=1)
        assert r.ok and r.header[2:4] == [0, 0] and r.end[2:] == [0, 0]
        r = w.get(_uri("tiny/one"), rid=2)
        assert r.ok and r.data == b"x" and r.end[3] == s3dtest.crc32c(b"x")


def test_cache_scan_does_not_push_out_shared_objects(emu, boto, servers, s3dlio_mod):
    """S3-FIFO: an object read again stays while a scan of objects read once passes through
    the small queue (under LRU the scan would have evicted it)."""
    hot = _rand(200_000, 300)
    boto.put_object(Bucket=BUCKET, Key="scan/hot.bin", Body=hot)
    scan = {f"scan/s{i}.bin": _rand(200_000, 310 + i) for i in range(12)}
    for k, v in scan.items():
        boto.put_object(Bucket=BUCKET, Key=k, Body=v)
    srv = servers(emu, ["--cache-mem", "1m", "--cache-max-object", "512k",
                        "--cache-validate", "3600"])
    s3dlio_mod.connect(srv.tcp_url)
    assert bytes(s3dlio_mod.get(_uri("scan/hot.bin"))) == hot
    assert bytes(s3dlio_mod.get(_uri("scan/hot.bin"))) == hot  # a second reader
    for k, v in scan.items():  # twelve objects, the budget holds five
        assert bytes(s3dlio_mod.get(_uri(k))) == v
    assert _reads(srv) == 13
    assert bytes(s3dlio_mod.get(_uri("scan/hot.bin"))) == hot
    assert _reads(srv) == 13  # still cached
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_cache_evictions_total") == 13 - 5
    assert s3dtest.metric(m, "s3dliod_cache_bytes") <= 1 << 20


def test_dot_segments_in_remote_keys_are_refused(emu, servers, s3dlio_mod):
    """libcurl would resolve "a/../b" in the request URL: such keys would read past an
    --allow or token prefix, so the server refuses them by name."""
    srv = servers(emu, ["--cache-mem", "16m"])
    s3dlio_mod.connect(srv.tcp_url)
    for bad in (f"s3://{BUCKET}/a/../b.bin", f"s3://{BUCKET}/./b.bin", f"s3://{BUCKET}/a/.."):
        with pytest.raises(ValueError, match="segment"):
            s3dlio_mod.get(bad)
        with pytest.raises(ValueError, match="segment"):
            s3dlio_mod.put_bytes(bad, b"x")
    assert _reads(srv) == 0


def test_every_spelling_of_an_object_is_one_cache_entry(emu, boto, servers, s3dlio_mod):
    """S3:// and s3:// name the same object: a DELETE under one spelling drops the entry a
    GET under the other filled."""
    boto.put_object(Bucket=BUCKET, Key="spell/obj.bin", Body=b"hello")
    srv = servers(emu, ["--cache-mem", "16m", "--cache-validate", "3600"])
    s3dlio_mod.connect(srv.tcp_url)
    assert bytes(s3dlio_mod.get(_uri("spell/obj.bin"))) == b"hello"
    assert bytes(s3dlio_mod.get(f"S3://{BUCKET}/spell/obj.bin")) == b"hello"
    assert _reads(srv) == 1  # one entry for both spellings
    s3dlio_mod.delete(f"S3://{BUCKET}/spell/obj.bin")
    with pytest.raises(FileNotFoundError):
        s3dlio_mod.get(_uri("spell/obj.bin"))
