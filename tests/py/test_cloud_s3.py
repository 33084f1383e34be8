"""s3:// through s3dliod against @20minutes/s3rver (which verifies SigV4), with boto3 as the
independent client. The emulator and the servers run on 127.0.0.1; the module skips when the
emulator is not installed (tests/emulators/install.sh).

The server runs with small sizes (multipart above 6 MiB in 5 MiB parts, LIST pages of 5) so
multipart uploads and paging are exercised on small objects.
"""
import os
import random
import threading
import time

import pytest

import cloudemu
import s3dtest

BUCKET = "cloud"
OTHER = "other"


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    e = cloudemu.s3rver(str(tmp_path_factory.mktemp("s3rver")), [BUCKET, OTHER])
    yield e
    e.stop()


def _start(emu, extra=(), allow=(f"s3://{BUCKET}/",), **env):
    return s3dtest.start_server(list(allow), threads=2, extra=cloudemu.CLOUD_FLAGS + list(extra),
                                env=cloudemu.s3_env(emu.endpoint, **env))


@pytest.fixture(scope="module")
def srv(emu):
    s = _start(emu)
    yield s
    cloudemu.stop_server(s)


@pytest.fixture
def s3c(s3dlio_mod, srv):
    s3dlio_mod.connect(srv.tcp_url)
    return s3dlio_mod


@pytest.fixture(scope="module")
def boto(emu):
    return cloudemu.boto_s3(emu.endpoint)


def _uri(key):
    return f"s3://{BUCKET}/{key}"


def _rand(n, seed):
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("size", [0, 1, 4095, 65537, (1 << 20) + 3])
def test_s3_put_get_stat_delete(s3c, size):
    key = f"rt/obj-{size}.bin"
    data = _rand(size, size)
    s3c.put_bytes(_uri(key), data)
    assert bytes(s3c.get(_uri(key))) == data
    st = s3c.stat(_uri(key))
    assert st["size"] == size
    assert st["etag"]
    assert st["mtime_ns"] > 0
    assert s3c.exists(_uri(key))
    s3c.delete(_uri(key))
    assert not s3c.exists(_uri(key))
    with pytest.raises(FileNotFoundError):
        s3c.stat(_uri(key))


def test_s3_get_object(s3c):
    data = _rand(3000, 7)
    s3c.put_bytes(_uri("go/x.bin"), data)
    assert bytes(s3c.get_object(BUCKET, "go/x.bin")) == data


def test_s3_ranges(s3c):
    data = _rand(100_000, 11)
    s3c.put_bytes(_uri("ranges/r.bin"), data)
    u = _uri("ranges/r.bin")
    for off, ln in [(0, 1), (0, 10), (1, 1), (5, 1000), (99_999, 1), (50_000, None),
                    (0, 100_000), (90_000, 50_000), (12345, 0)]:
        got = bytes(s3c.get_range(u, off, ln))
        want = data[off:] if ln is None else data[off:off + ln]
        assert got == want, (off, ln)
    assert bytes(s3c.get_range(u, 100_000, 10)) == b""  # at the end: empty
    with pytest.raises(ValueError, match="past the end"):
        s3c.get_range(u, 100_001, 10)


def test_s3_multipart_put(s3c, boto):
    size = (13 << 20) + 12345  # 3 parts of 5 MiB, the last short
    data = _rand(size, 13)
    s3c.put_bytes(_uri("mp/big.bin"), data)
    head = boto.head_object(Bucket=BUCKET, Key="mp/big.bin")
    assert head["ContentLength"] == size
    # (s3rver gives an assembled multipart object the MD5 of the whole, unlike S3)
    assert head["ETag"].strip('"') == __import__("hashlib").md5(data).hexdigest()
    assert boto.get_object(Bucket=BUCKET, Key="mp/big.bin")["Body"].read() == data
    assert bytes(s3c.get(_uri("mp/big.bin"))) == data
    assert bytes(s3c.get_range(_uri("mp/big.bin"), (5 << 20) - 7, 100)) == \
        data[(5 << 20) - 7:(5 << 20) + 93]


def test_s3_list_pages(s3c, boto):
    keys = [f"lst/d{i % 3}/k{i:03d}" for i in range(23)] + ["lst/top.bin"]
    for k in keys:
        s3c.put_bytes(_uri(k), k.encode())
    rec = s3c.list(_uri("lst/"), recursive=True)
    assert rec == sorted(_uri(k) for k in keys)
    flat = s3c.list(_uri("lst/"), include_dirs=True)
    assert flat == [_uri("lst/d0/"), _uri("lst/d1/"), _uri("lst/d2/"), _uri("lst/top.bin")]
    assert s3c.list(_uri("lst/")) == [_uri("lst/top.bin")]  # objects only, as the original
    assert s3c.list(_uri("lst/d1/k00")) == [_uri("lst/d1/k001"), _uri("lst/d1/k004"),
                                             _uri("lst/d1/k007")]
    assert s3c.list(_uri("nothing-here/")) == []
    # the same as boto3 sees
    seen = []
    for page in boto.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="lst/"):
        seen += [o["Key"] for o in page.get("Contents", [])]
    assert sorted(_uri(k) for k in seen) == rec
    s3c.delete(_uri("lst/"), recursive=True)
    assert s3c.list(_uri("lst/"), recursive=True) == []


def test_s3_missing(s3c):
    u = _uri("missing/none.bin")
    with pytest.raises(FileNotFoundError) as ei:
        s3c.get(u)
    msg = str(ei.value)
    assert u in msg and "s3" in msg and "404" in msg and "NoSuchKey" in msg
    with pytest.raises(FileNotFoundError):
        s3c.stat(u)
    with pytest.raises(FileNotFoundError):
        s3c.get_range(u, 5, 5)
    assert s3c.delete(u) is None  # a missing object: nothing to do, as the original
    assert not s3c.exists(u)


def test_s3_missing_bucket_not_allowed(s3c):
    with pytest.raises(PermissionError):
        s3c.get(f"s3://{OTHER}/x")


def test_s3_odd_keys(s3c, boto):
    for key in ["odd/a b.bin", "odd/plus+sign", "odd/eq=amp&q?.bin", "odd/ünï©ødé",
                "odd/tilde~star*(paren)", "odd/pct%20lit"]:
        data = key.encode() * 3
        s3c.put_bytes(_uri(key), data)
        assert boto.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data, key
        assert bytes(s3c.get(_uri(key))) == data, key
        assert s3c.stat(_uri(key))["size"] == len(data)
    assert len(s3c.list(_uri("odd/"))) == 6


def test_s3_boto3_interop(s3c, boto):
    small, big = _rand(70_000, 21), _rand((7 << 20) + 1, 22)
    boto.put_object(Bucket=BUCKET, Key="interop/from-boto-small", Body=small)
    boto.upload_fileobj(__import__("io").BytesIO(big), BUCKET, "interop/from-boto-big")
    assert bytes(s3c.get(_uri("interop/from-boto-small"))) == small
    assert bytes(s3c.get(_uri("interop/from-boto-big"))) == big
    assert bytes(s3c.get_range(_uri("interop/from-boto-big"), 1 << 20, 4096)) == \
        big[1 << 20:(1 << 20) + 4096]
    s3c.put_bytes(_uri("interop/from-s3dlio-small"), small)
    s3c.put_bytes(_uri("interop/from-s3dlio-big"), big)
    assert boto.get_object(Bucket=BUCKET, Key="interop/from-s3dlio-small")["Body"].read() == small
    assert boto.get_object(Bucket=BUCKET, Key="interop/from-s3dlio-big")["Body"].read() == big


def test_s3_many_in_flight(s3c):
    blobs = {f"many/{i:03d}": _rand(1000 + i * 37, i) for i in range(40)}
    for k, v in blobs.items():
        s3c.put_bytes(_uri(k), v)
    got = s3c.get_many([_uri(k) for k in blobs], max_in_flight=32)
    assert [(u, bytes(g)) for u, g in got] == [(_uri(k), v) for k, v in blobs.items()]


def test_s3_wrong_credentials(emu, s3dlio_mod):
    bad = _start(emu, AWS_SECRET_ACCESS_KEY="not-the-secret")
    try:
        s3dlio_mod.connect(bad.tcp_url)
        with pytest.raises(PermissionError) as ei:
            s3dlio_mod.get(_uri("anything"))
        assert "403" in str(ei.value) and "SignatureDoesNotMatch" in str(ei.value)
        with pytest.raises(PermissionError):
            s3dlio_mod.put_bytes(_uri("denied.bin"), b"x" * 10)
        with pytest.raises(PermissionError):
            s3dlio_mod.list(_uri(""))
    finally:
        cloudemu.stop_server(bad)


def test_s3_profile_credentials(emu, s3dlio_mod, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = nope\naws_secret_access_key = nope\n"
                     f"[emu]\naws_access_key_id = {cloudemu.S3RVER_KEY}\n"
                     f"aws_secret_access_key = {cloudemu.S3RVER_SECRET}\n")
    env = cloudemu.s3_env(emu.endpoint)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_PROFILE="emu")
    srv = s3dtest.start_server([f"s3://{BUCKET}/"], threads=1, extra=cloudemu.CLOUD_FLAGS,
                               env=env)
    try:
        s3dlio_mod.connect(srv.tcp_url)
        s3dlio_mod.put_bytes(_uri("profile/x"), b"from a profile")
        assert bytes(s3dlio_mod.get(_uri("profile/x"))) == b"from a profile"
    finally:
        cloudemu.stop_server(srv)


def test_s3_config_file(emu, s3dlio_mod, tmp_path):
    """Endpoint and credentials from --config, none from the environment."""
    cfg = tmp_path / "s3dliod.conf"
    cfg.write_text(f"s3-endpoint = {emu.endpoint}\ns3-region = us-east-1\n"
                   f"s3_access_key_id = {cloudemu.S3RVER_KEY}\n"
                   f"s3_secret_access_key = {cloudemu.S3RVER_SECRET}\n"
                   "multipart-threshold = 6m\npart-size = 5m\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)  # no ~/.aws here
    srv = s3dtest.start_server([f"s3://{BUCKET}/"], threads=1, extra=["--config", str(cfg)],
                               env=env)
    try:
        s3dlio_mod.connect(srv.tcp_url)
        data = _rand((6 << 20) + 100, 5)
        s3dlio_mod.put_bytes(_uri("cfg/x"), data)
        assert bytes(s3dlio_mod.get(_uri("cfg/x"))) == data
    finally:
        cloudemu.stop_server(srv)


# ---- an emulator that goes away ----

@pytest.fixture
def lone_emu(tmp_path):
    """A private emulator (this test stops it), with its own server."""
    e = cloudemu.s3rver(str(tmp_path / "data"), [BUCKET])
    yield e
    e.kill()


def test_s3_emulator_stopped_mid_transfer(lone_emu, s3dlio_mod):
    srv = _start(lone_emu)
    try:
        s3dlio_mod.connect(srv.tcp_url)
        size = 48 << 20
        data = _rand(size, 99)
        s3dlio_mod.put_bytes(_uri("stop/big"), data)
        with s3dtest.WireConn(srv.address()) as w:
            w.hello()
            w.send([s3dtest.GET, 1, _uri("stop/big"), 0, None])
            f = w.frame()
            assert f[0] == s3dtest.HEADER and f[2] == size
            first = w.frame()
            assert first[0] == s3dtest.DATA
            # we read no more: the server's output fills, it pauses the transfer mid-body
            time.sleep(0.5)
            lone_emu.kill()
            got = len(first[-1])
            while True:
                f = w.frame()
                if f[0] == s3dtest.DATA:
                    got += len(f[-1])
                    continue
                break
            assert f[0] == s3dtest.ERROR, f[:4]
            assert got < size
            assert "s3 GET" in f[3], f
        # the server keeps serving: other requests get a clear error, not a hang
        t0 = time.monotonic()
        with pytest.raises(s3dlio_mod.Error if hasattr(s3dlio_mod, "Error") else Exception) \
                as ei:
            s3dlio_mod.get(_uri("stop/big"))
        assert "s3" in str(ei.value) and time.monotonic() - t0 < 20
        assert srv.alive()
        with s3dtest.WireConn(srv.address()) as w:
            w.hello()
    finally:
        cloudemu.stop_server(srv)


def test_s3_retry_until_emulator_returns(lone_emu, s3dlio_mod):
    """Connection refused is retried with backoff: an emulator back within the retry budget
    is never noticed by the caller."""
    srv = _start(lone_emu, extra=["--retries", "8", "--retry-base-ms", "100"])
    try:
        s3dlio_mod.connect(srv.tcp_url)
        s3dlio_mod.put_bytes(_uri("retry/x"), b"survives")
        lone_emu.kill()
        result = {}

        def reader():
            try:
                result["data"] = bytes(s3dlio_mod.get(_uri("retry/x")))
            except Exception as e:  # noqa: BLE001 (reported below)
                result["err"] = e

        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.4)
        lone_emu.start()
        t.join(60)
        assert result.get("data") == b"survives", result
    finally:
        cloudemu.stop_server(srv)


# ---- retries ----

def _slowdown(n_fail, status=503, code="SlowDown", match=None):
    """An intercept that answers S3's error for the first n_fail requests (matching)."""
    left = {"n": n_fail}

    def hit(method, path, headers):
        if match and not match(method, path):
            return None
        if left["n"] <= 0:
            return None
        left["n"] -= 1
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f'<Message>injected {status}</Message></Error>').encode()
        return (status, "application/xml", body)
    return hit


@pytest.mark.parametrize("status,code", [(503, "SlowDown"), (500, "InternalError"),
                                         (429, "TooManyRequests")])
def test_s3_retries_transient_errors(emu, s3dlio_mod, s3c, status, code):
    data = _rand(200_000, 31)
    s3c.put_bytes(_uri(f"retry/{status}"), data)
    proxy = cloudemu.Proxy(emu.endpoint, _slowdown(2, status, code), keep_host=True)
    srv = _start(proxy, extra=["--retries", "3", "--retry-base-ms", "20"])
    try:
        s3dlio_mod.connect(srv.tcp_url)
        assert bytes(s3dlio_mod.get(_uri(f"retry/{status}"))) == data
        assert len(proxy.seen) == 3  # two failures, then the answer
        s3dlio_mod.put_bytes(_uri(f"retry/{status}-put"), data)  # fresh budget: ok at once
    finally:
        cloudemu.stop_server(srv)
        proxy.close()


def test_s3_gives_up_after_retries(emu, s3dlio_mod):
    proxy = cloudemu.Proxy(emu.endpoint, _slowdown(100), keep_host=True)
    srv = _start(proxy, extra=["--retries", "2", "--retry-base-ms", "10"])
    try:
        s3dlio_mod.connect(srv.tcp_url)
        with pytest.raises(Exception) as ei:
            s3dlio_mod.get(_uri("anything"))
        assert "503" in str(ei.value) and "SlowDown" in str(ei.value)
        assert len(proxy.seen) == 3  # the first try and 2 retries
    finally:
        cloudemu.stop_server(srv)
        proxy.close()


def test_s3_no_retry_of_403(emu, s3dlio_mod):
    proxy = cloudemu.Proxy(emu.endpoint, _slowdown(100, 403, "AccessDenied"), keep_host=True)
    srv = _start(proxy, extra=["--retries", "5", "--retry-base-ms", "10"])
    try:
        s3dlio_mod.connect(srv.tcp_url)
        with pytest.raises(PermissionError):
            s3dlio_mod.get(_uri("anything"))
        assert len(proxy.seen) == 1
    finally:
        cloudemu.stop_server(srv)
        proxy.close()


def test_s3_multipart_part_failure_aborts(emu, s3dlio_mod, boto):
    """A part that keeps failing fails the PUT (after retries), which is reported, and
    nothing is left at the key."""
    proxy = cloudemu.Proxy(emu.endpoint, _slowdown(
        100, match=lambda m, p: m == "PUT" and "partNumber=2" in p), keep_host=True)
    srv = _start(proxy, extra=["--retries", "1", "--retry-base-ms", "10"])
    try:
        s3dlio_mod.connect(srv.tcp_url)
        with pytest.raises(Exception) as ei:
            s3dlio_mod.put_bytes(_uri("mpfail/x"), _rand((11 << 20) + 1, 3))
        assert "UploadPart 2" in str(ei.value) and "503" in str(ei.value)
        deadline = time.monotonic() + 5  # the abort is sent after the error is reported
        while not any(m == "DELETE" and "uploadId=" in p for m, p, _ in proxy.seen):
            assert time.monotonic() < deadline, proxy.seen
            time.sleep(0.05)
        with pytest.raises(Exception):
            boto.head_object(Bucket=BUCKET, Key="mpfail/x")
        assert srv.alive()
    finally:
        cloudemu.stop_server(srv)
        proxy.close()


def test_s3_session_token_is_signed(emu, s3dlio_mod):
    proxy = cloudemu.Proxy(emu.endpoint, keep_host=True)
    srv = _start(proxy, AWS_SESSION_TOKEN="tok-123")
    try:
        s3dlio_mod.connect(srv.tcp_url)
        s3dlio_mod.put_bytes(_uri("token/x"), b"t")
        assert bytes(s3dlio_mod.get(_uri("token/x"))) == b"t"
        # the token travelled and was among the signed headers (s3rver checked the signature)
        assert all("x-amz-security-token" in (a or "") for _, _, a in proxy.seen)
    finally:
        cloudemu.stop_server(srv)
        proxy.close()


def _rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    return 0


@pytest.mark.skipif(os.environ.get("S3DLIO_ASAN") == "1", reason="RSS under ASan is not telling")
def test_s3_slow_reader_backpressure(emu, s3dlio_mod, srv, boto):
    """A client that stops reading a large GET: the server pauses the S3 transfer instead of
    buffering the object, then finishes it byte for byte once the client reads again."""
    size = 64 << 20
    data = _rand(size, 64)
    boto.put_object(Bucket=BUCKET, Key="slow/big", Body=data)
    base = _rss(srv.pid)
    with s3dtest.WireConn(srv.address()) as w:
        w.hello()
        w.send([s3dtest.GET, 1, _uri("slow/big"), 0, None])
        f = w.frame()
        assert f[0] == s3dtest.HEADER and f[2] == size
        time.sleep(1.5)  # the emulator could send it all by now; the server must hold back
        grown = _rss(srv.pid) - base
        assert grown < 40 << 20, f"server grew by {grown >> 20} MiB for a reader that stalled"
        r = w.read_reply(1)
        assert r.ok and r.data == data
        assert r.end[2] == size and r.end[3] == s3dtest.crc32c(data)


@pytest.mark.skipif(os.environ.get("S3DLIO_ASAN") == "1", reason="RSS under ASan is not telling")
def test_s3_upload_backpressure(emu, s3dlio_mod, srv, boto):
    """A multipart upload faster than the store: the server holds at most parts-in-flight + 1
    parts (2 + 1 of 5 MiB here) and stops reading the client meanwhile, rather than buffering
    the object."""
    size = 80 << 20
    data = _rand(size, 80)
    s3dlio_mod.connect(srv.tcp_url)
    base = _rss(srv.pid)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss(srv.pid) - base)
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    try:
        s3dlio_mod.put_bytes(_uri("upbp/big"), data)
    finally:
        done.set()
        t.join()
    assert peak[0] < 48 << 20, f"server grew by {peak[0] >> 20} MiB during an 80 MiB upload"
    assert boto.get_object(Bucket=BUCKET, Key="upbp/big")["Body"].read() == data
