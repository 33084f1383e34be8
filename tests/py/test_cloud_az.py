"""az:// through s3dliod against Azurite (which verifies Shared Key and SAS), with a hand-signed
REST client (cloudemu.AzureClient) as the independent peer. Emulator and servers run on
127.0.0.1; the module skips when Azurite is not installed (tests/emulators/install.sh).

Small sizes on the server: Put Block / Put Block List above 6 MiB in 5 MiB blocks, LIST pages
of 5.
"""
import random
import time

import pytest

import cloudemu
import s3dtest

ACCOUNT = cloudemu.AZ_ACCOUNT
CONTAINER = "cloud"


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    e = cloudemu.azurite(str(tmp_path_factory.mktemp("azurite")))
    cloudemu.AzureClient(e.endpoint + "/" + ACCOUNT).create_container(CONTAINER)
    yield e
    e.stop()


def _endpoint(emu):
    return f"{emu.endpoint}/{ACCOUNT}"


def _start(emu, extra=(), **kw):
    return s3dtest.start_server([f"az://{ACCOUNT}/{CONTAINER}/"], threads=2,
                                extra=cloudemu.CLOUD_FLAGS + list(extra),
                                env=cloudemu.az_env(_endpoint(emu), **kw))


@pytest.fixture(scope="module")
def srv(emu):
    s = _start(emu)
    yield s
    cloudemu.stop_server(s)


@pytest.fixture
def azc(s3dlio_mod, srv):
    s3dlio_mod.connect(srv.tcp_url)
    return s3dlio_mod


@pytest.fixture(scope="module")
def peer(emu):
    return cloudemu.AzureClient(_endpoint(emu))


def _uri(blob):
    return f"az://{ACCOUNT}/{CONTAINER}/{blob}"


def _rand(n, seed):
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("size", [0, 1, 4095, 65537, (1 << 20) + 3])
def test_az_put_get_stat_delete(azc, size):
    blob = f"rt/obj-{size}.bin"
    data = _rand(size, size)
    azc.put_bytes(_uri(blob), data)
    assert bytes(azc.get(_uri(blob))) == data
    st = azc.stat(_uri(blob))
    assert st["size"] == size and st["etag"] and st["mtime_ns"] > 0
    azc.delete(_uri(blob))
    assert not azc.exists(_uri(blob))
    with pytest.raises(FileNotFoundError):
        azc.stat(_uri(blob))


def test_az_ranges(azc):
    data = _rand(100_000, 11)
    u = _uri("ranges/r.bin")
    azc.put_bytes(u, data)
    for off, ln in [(0, 1), (0, 10), (1, 1), (5, 1000), (99_999, 1), (50_000, None),
                    (0, 100_000), (90_000, 50_000), (12345, 0)]:
        got = bytes(azc.get_range(u, off, ln))
        want = data[off:] if ln is None else data[off:off + ln]
        assert got == want, (off, ln)
    assert bytes(azc.get_range(u, 100_000, 10)) == b""
    with pytest.raises(ValueError, match="past the end"):
        azc.get_range(u, 100_001, 10)


def test_az_block_list_put(azc, peer):
    size = (13 << 20) + 12345  # 3 blocks
    data = _rand(size, 13)
    azc.put_bytes(_uri("blocks/big.bin"), data)
    assert peer.get(CONTAINER, "blocks/big.bin") == data
    st, body, _ = peer.request("GET", f"{CONTAINER}/blocks/big.bin",
                               {"comp": "blocklist", "blocklisttype": "committed"})
    assert st == 200 and body.count(b"<Block>") == 3, body[:500]
    assert bytes(azc.get(_uri("blocks/big.bin"))) == data


def test_az_list_pages(azc):
    blobs = [f"lst/d{i % 3}/k{i:03d}" for i in range(23)] + ["lst/top.bin"]
    for b in blobs:
        azc.put_bytes(_uri(b), b.encode())
    rec = azc.list(_uri("lst/"), recursive=True)
    assert rec == sorted(_uri(b) for b in blobs)
    assert azc.list(_uri("lst/"), include_dirs=True) == [
        _uri("lst/d0/"), _uri("lst/d1/"), _uri("lst/d2/"), _uri("lst/top.bin")]
    assert azc.list(_uri("lst/")) == [_uri("lst/top.bin")]  # objects only, as the original
    assert azc.list(_uri("lst/d1/k00")) == [_uri("lst/d1/k001"), _uri("lst/d1/k004"),
                                             _uri("lst/d1/k007")]
    assert azc.list(_uri("nothing-here/")) == []
    azc.delete(_uri("lst/"), recursive=True)
    assert azc.list(_uri("lst/"), recursive=True) == []


def test_az_missing(azc):
    u = _uri("missing/none.bin")
    with pytest.raises(FileNotFoundError) as ei:
        azc.get(u)
    msg = str(ei.value)
    assert u in msg and "az" in msg and "404" in msg and "BlobNotFound" in msg
    with pytest.raises(FileNotFoundError):
        azc.stat(u)
    assert azc.delete(u) is None  # a missing object: nothing to do, as the original


def test_az_odd_names(azc, peer):
    for blob in ["odd/a b.bin", "odd/plus+sign", "odd/eq=amp&q.bin", "odd/ünï©ødé"]:
        data = blob.encode() * 3
        azc.put_bytes(_uri(blob), data)
        assert peer.get(CONTAINER, blob) == data, blob
        assert bytes(azc.get(_uri(blob))) == data, blob


def test_az_peer_interop(azc, peer):
    small, big = _rand(70_000, 21), _rand((7 << 20) + 1, 22)
    peer.put(CONTAINER, "interop/from-peer-small", small)
    peer.put(CONTAINER, "interop/from-peer-big", big)
    assert bytes(azc.get(_uri("interop/from-peer-small"))) == small
    assert bytes(azc.get(_uri("interop/from-peer-big"))) == big
    azc.put_bytes(_uri("interop/from-s3dlio-small"), small)
    azc.put_bytes(_uri("interop/from-s3dlio-big"), big)
    assert peer.get(CONTAINER, "interop/from-s3dlio-small") == small
    assert peer.get(CONTAINER, "interop/from-s3dlio-big") == big


def test_az_sas_token(emu, s3dlio_mod, peer):
    sas = peer.sas(CONTAINER)
    srv = _start(emu, key=None, sas=sas)
    try:
        s3dlio_mod.connect(srv.tcp_url)
        data = _rand((6 << 20) + 77, 3)  # block list, by SAS
        s3dlio_mod.put_bytes(_uri("sas/x"), data)
        assert bytes(s3dlio_mod.get(_uri("sas/x"))) == data
        assert bytes(s3dlio_mod.get_range(_uri("sas/x"), 7, 7)) == data[7:14]
        assert _uri("sas/x") in s3dlio_mod.list(_uri("sas/"))
        s3dlio_mod.delete(_uri("sas/x"))
        assert not s3dlio_mod.exists(_uri("sas/x"))
    finally:
        cloudemu.stop_server(srv)


def test_az_wrong_key(emu, s3dlio_mod):
    bad = _start(emu, key="d3JvbmcgeWV0IHZhbGlkIGJhc2U2NCBrZXkgZm9yIHRlc3Rpbmc=")
    try:
        s3dlio_mod.connect(bad.tcp_url)
        with pytest.raises(PermissionError) as ei:
            s3dlio_mod.get(_uri("anything"))
        assert "403" in str(ei.value) and "AuthorizationFailure" in str(ei.value)
        with pytest.raises(PermissionError):
            s3dlio_mod.put_bytes(_uri("denied.bin"), b"x" * 10)
    finally:
        cloudemu.stop_server(bad)


@pytest.fixture
def lone_emu(tmp_path):
    e = cloudemu.azurite(str(tmp_path / "data"))
    cloudemu.AzureClient(e.endpoint + "/" + ACCOUNT).create_container(CONTAINER)
    yield e
    e.kill()


def test_az_emulator_stopped_mid_transfer(lone_emu, s3dlio_mod):
    srv = _start(lone_emu)
    try:
        s3dlio_mod.connect(srv.tcp_url)
        size = 48 << 20
        s3dlio_mod.put_bytes(_uri("stop/big"), _rand(size, 99))
        with s3dtest.WireConn(srv.address()) as w:
            w.hello()
            w.send([s3dtest.GET, 1, _uri("stop/big"), 0, None])
            f = w.frame()
            assert f[0] == s3dtest.HEADER and f[2] == size
            got = len(w.frame()[-1])
            time.sleep(0.5)  # unread: the server pauses the transfer mid-body
            lone_emu.kill()
            while True:
                f = w.frame()
                if f[0] != s3dtest.DATA:
                    break
                got += len(f[-1])
            assert f[0] == s3dtest.ERROR and got < size, f[:4]
            assert "az GET" in f[3], f
        with pytest.raises(Exception) as ei:
            s3dlio_mod.stat(_uri("stop/big"))
        assert "az" in str(ei.value)
        assert srv.alive()
    finally:
        cloudemu.stop_server(srv)
