"""The wire protocol spoken by hand (msgpack, schema/wire.h): a valid handshake and GET with
the exact frame shapes and CRC32C, then hostile peers. Each hostile connection must get an
ERROR or be closed, the server must stay up, and a separate client must keep getting correct
data."""
import os
import socket
import time

import msgpack
import pytest

import s3dtest
from s3dtest import (CANCEL, DATA, DELETE, E_BUSY, E_CANCELLED, E_CHECKSUM, E_NOT_FOUND,
                     E_PERMISSION, E_RANGE, END, ENTRY, ERROR, GET, HEADER, HELLO, LIST,
                     LIST_RECURSIVE, PUT, STAT, WELCOME, Reply, WireConn, crc32c, crc32c_py,
                     file_uri)

pk = msgpack.packb


# ---- helpers ----
def _check_error_frame(f):
    assert len(f) >= 5, f"ERROR frame too short: {f!r}"
    assert f[0] == ERROR
    assert isinstance(f[1], int) and f[1] >= 0
    assert isinstance(f[2], int) and 1 <= f[2] <= 15, f"unknown error code in {f!r}"
    assert isinstance(f[3], str)
    try:
        f[3].encode("utf-8")
    except UnicodeEncodeError:
        raise AssertionError(f"ERROR message is a msgpack str that is not UTF-8: {f[3]!r}")
    assert isinstance(f[4], int) and f[4] >= 0


def _healthy(srv, data):
    """The server is alive and a separate connection (tcp and unix) gets byte-exact data."""
    assert srv.alive(), "s3dliod died\n" + srv.describe()
    for kind in ("tcp", "unix"):
        with WireConn(srv.address(kind)) as c:
            c.hello()
            rel = data.size_rel(65537)
            r = c.get(data.uri(rel), rid=77)
            assert r.ok, f"GET over {kind} failed after a hostile peer: {r.error}"
            assert r.data == data.bytes(rel)
            assert r.end[3] == crc32c(r.data)


@pytest.fixture
def hsrv(new_server):
    return new_server.start()


# ---- CRC32C reference ----
def test_crc32c_reference_vectors():
    assert crc32c_py(b"") == 0
    assert crc32c_py(b"123456789") == 0xE3069283
    assert crc32c_py(b"\x00" * 32) == 0x8A9136AA
    assert crc32c_py(b"\xff" * 32) == 0x62A8AB43
    assert crc32c_py(bytes(range(32))) == 0x46DD794E
    d = os.urandom(10000)
    assert crc32c_py(d[5000:], crc32c_py(d[:5000])) == crc32c_py(d)
    assert crc32c(d) == crc32c_py(d)


# ---- the valid protocol ----
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_handshake_welcome_shape(hsrv, kind):
    with WireConn(hsrv.address(kind)) as c:
        w = c.hello()
        assert len(w) >= 6, w
        assert w[0] == WELCOME and w[1] == 0
        assert w[2] == 1
        assert isinstance(w[3], int) and 0 < w[3] <= s3dtest.WIRE_MAX_FRAME_CAP
        assert isinstance(w[4], int) and w[4] > 0
        assert isinstance(w[5], str) and w[5]


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("size", [0, 1, 4096, 65537, 1 << 20, (9 << 20) + 3])
def test_raw_get_frames(hsrv, data, kind, size):
    rel = data.size_rel(size)
    want = data.bytes(rel)
    st = os.stat(data.path(rel))
    with WireConn(hsrv.address(kind)) as c:
        c.hello()
        c.send([GET, 5, data.uri(rel), 0, None])
        r = c.read_reply(5)
        assert r.error is None, r.error
        h = r.header
        assert h is not None, "no HEADER before the data"
        assert len(h) >= 6 and h[0] == HEADER and h[1] == 5
        assert h[2] == size and h[3] == size
        assert h[4] == st.st_mtime_ns
        assert h[5] is None or (isinstance(h[5], str) and len(h[5]) <= 256)
        for off, payload in r.chunks:
            assert 0 < len(payload) <= c.max_frame
        assert r.data == want
        e = r.end
        assert len(e) >= 4 and e[0] == END and e[1] == 5
        assert e[2] == size
        assert e[3] == crc32c(want)


@pytest.mark.parametrize("offset,length", [(0, 1), (100, 1000), (65536, 1), (65537, 0),
                                           (65537, None), (10, None), (0, 65537)])
def test_raw_get_range_frames(hsrv, data, offset, length):
    rel = data.size_rel(65537)
    full = data.bytes(rel)
    want = full[offset:] if length is None else full[offset:offset + length]
    with WireConn(hsrv.address("tcp")) as c:
        c.hello()
        r = c.get(data.uri(rel), offset, length, rid=9)
        assert r.ok, r.error
        assert r.header[2] == len(want)
        assert r.header[3] == 65537
        assert r.chunks == [] or r.chunks[0][0] == 0, "DATA offsets are positions in the reply"
        assert r.data == want
        assert r.end[2] == len(want) and r.end[3] == crc32c(want)


def test_raw_errors(hsrv, data):
    with WireConn(hsrv.address("tcp")) as c:
        c.hello()
        missing = data.uri("sizes/missing.bin")
        r = c.get(missing, rid=1)
        _check_error_frame(r.error)
        assert r.error[2] == E_NOT_FOUND and missing in r.error[3]
        assert r.header is None and r.chunks == []
        r = c.get(data.uri(data.size_rel(4096)), 4097, None, rid=2)
        _check_error_frame(r.error)
        assert r.error[2] == E_RANGE
        forbidden = file_uri(data.outside) + "/secret.bin"
        r = c.get(forbidden, rid=3)
        _check_error_frame(r.error)
        assert r.error[2] == E_PERMISSION and r.chunks == []
        r = c.get(data.uri("links/secret.bin"), rid=4)
        _check_error_frame(r.error)
        assert r.error[2] == E_PERMISSION and r.chunks == []
        # the connection carries on after errors
        r = c.get(data.uri(data.size_rel(4096)), rid=5)
        assert r.ok and r.data == data.bytes(data.size_rel(4096))


def test_raw_pipelined_gets_interleave_correctly(hsrv, data):
    rels = [data.size_rel(s) for s in (0, 1, 4095, 4096, 65537, 1 << 20, (9 << 20) + 3)]
    rels += [data.small_rel(i) for i in range(13)]
    ids = [1000 + 7 * i for i in range(len(rels))]
    ids[-1] = (1 << 63) + 5  # large ids are fine
    with WireConn(hsrv.address("unix")) as c:
        c.hello()
        n = min(len(rels), c.max_in_flight)
        c.send(*[[GET, i, data.uri(r), 0, None] for i, r in zip(ids[:n], rels[:n])])
        replies = c.read_replies(ids[:n])
        for i, r in zip(ids[:n], rels[:n]):
            rep = replies[i]
            assert rep.ok, rep.error
            assert rep.data == data.bytes(r), r
            assert rep.end[3] == crc32c(rep.data)


def test_raw_list_frames(hsrv, data):
    base = data.uri("tree") + "/"
    with WireConn(hsrv.address("tcp")) as c:
        c.hello()
        c.send([LIST, 3, base, 0])
        r = c.read_reply(3)
        assert r.ok, r.error
        names = []
        for e in r.entries:
            assert len(e) >= 6 and e[0] == ENTRY and e[1] == 3
            assert isinstance(e[2], str) and e[2].startswith(base)
            assert isinstance(e[3], int) and isinstance(e[4], int) and isinstance(e[5], bool)
            assert e[5] == e[2].endswith("/")
            names.append(e[2][len(base):])
        assert sorted(names) == ["a.bin", "b.txt", "prefix_x.bin", "prefixed/", "sub1/",
                                 "sub1x.bin", "sub2/"]
        c.send([LIST, 4, base, LIST_RECURSIVE])
        r = c.read_reply(4)
        assert r.ok
        got = {e[2][len(base):]: e[3] for e in r.entries}
        assert got == {n: len(data.bytes("tree/" + n)) for n in data.TREE}


def test_raw_cancel(hsrv, data, big_file):
    rel = big_file[0]
    with WireConn(hsrv.address("tcp")) as c:
        c.hello()
        c.send([GET, 1, data.uri(rel), 0, None])
        r = Reply(1)
        r.add(c.frame())
        assert r.header is not None
        c.send([CANCEL, 1])
        for _ in range(1_000_000):
            if r.add(c.frame()):
                break
        if r.error is not None:
            _check_error_frame(r.error)
            assert r.error[2] == E_CANCELLED
        else:  # it finished before the cancel arrived: then it is whole
            assert len(r.data) == big_file[1]
        # the connection is still usable
        r2 = c.get(data.uri(data.size_rel(4096)), rid=2)
        assert r2.ok and r2.data == data.bytes(data.size_rel(4096))


def test_max_frame_flag_honoured(new_server, s3dlio_mod, data):
    srv = new_server.start(extra=["--max-frame", "65536"])
    with WireConn(srv.address("tcp")) as c:
        c.hello()
        assert c.max_frame == 65536
        rel = data.size_rel((9 << 20) + 3)
        r = c.get(data.uri(rel))
        assert r.ok and r.data == data.bytes(rel)
        assert max(len(p) for _, p in r.chunks) <= 65536
        assert len(r.chunks) >= ((9 << 20) + 3) // 65536
    s3dlio_mod.connect(srv.tcp_url)
    assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)


def test_max_in_flight_busy(new_server, s3dlio_mod, data):
    srv = new_server.start(extra=["--max-in-flight", "2"])
    rel = data.size_rel(1 << 20)
    ids = list(range(1, 17))
    with WireConn(srv.address("tcp")) as c:
        c.hello()
        assert c.max_in_flight == 2
        c.send(*[[GET, i, data.uri(rel), 0, None] for i in ids])
        replies = c.read_replies(ids)
        busy = 0
        for i in ids:
            rep = replies[i]
            if rep.error is not None:
                _check_error_frame(rep.error)
                assert rep.error[2] == E_BUSY, rep.error
                assert rep.chunks == []
                busy += 1
            else:
                assert rep.data == data.bytes(rel)
        assert busy >= 1, "16 pipelined requests past --max-in-flight 2 and no BUSY"
        assert busy < 16
        r = c.get(data.uri(rel), rid=100)
        assert r.ok
    # the real client copes with the cap
    s3dlio_mod.connect(srv.tcp_url)
    uris = [data.uri(data.small_rel(i)) for i in range(100)]
    res = s3dlio_mod.get_many(uris, max_in_flight=64)
    assert [bytes(v) for _, v in res] == [data.bytes(data.small_rel(i)) for i in range(100)]


# ---- hostile peers ----
def _uri(data):
    return data.uri(data.size_rel(4096))


# (id, send HELLO first?, bytes to send given data and max_frame)
HOSTILE = [
    ("garbage-c1", False, lambda d, mf: b"\xc1" * 64),
    ("http-request", False, lambda d, mf: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("random", False, lambda d, mf: b"\xc1" + os.urandom(4095)),
    ("zeros", False, lambda d, mf: b"\x00" * 256),
    ("map-not-array", False, lambda d, mf: pk({"type": 1, "id": 0})),
    ("hello-wrong-types", False, lambda d, mf: pk([HELLO, 0, "one", None, "x"])),
    ("hello-too-short", False, lambda d, mf: pk([HELLO, 0])),
    ("hello-token-too-long", False, lambda d, mf: pk([HELLO, 0, 1, "t" * 2000, "x"])),
    ("get-before-hello", False, lambda d, mf: pk([GET, 1, _uri(d), 0, None])),
    ("stat-before-hello", False, lambda d, mf: pk([STAT, 1, _uri(d)])),
    ("data-before-hello", False, lambda d, mf: pk([DATA, 1, 0]) + pk(b"abc")),
    ("array32-huge", False, lambda d, mf: b"\xdd\xff\xff\xff\xff"),
    ("array16-huge", False, lambda d, mf: b"\xdc\xff\xff" + b"\x01" * 16),
    ("map32-huge", False, lambda d, mf: b"\xdf\xff\xff\xff\xff"),
    ("str32-huge-uri", True, lambda d, mf: b"\x95\x02\x01\xdb\xff\xff\xff\xff"),
    ("bin32-huge-uri", True, lambda d, mf: b"\x95\x02\x01\xc6\xff\xff\xff\xff"),
    ("uri-9000-bytes", True, lambda d, mf: pk([GET, 1, "file://" + "a" * 9000, 0, None])),
    ("uri-4097-bytes", True, lambda d, mf: pk([GET, 1, "file:///" + "a" * 4089, 0, None])),
    ("header-over-8192", True, lambda d, mf: pk([GET, 1, _uri(d), 0, None] + ["x" * 1000] * 9)),
    ("get-uri-int", True, lambda d, mf: pk([GET, 1, 12345, 0, None])),
    ("get-offset-str", True, lambda d, mf: pk([GET, 1, _uri(d), "zero", None])),
    ("get-id-str", True, lambda d, mf: pk([GET, "id", _uri(d), 0, None])),
    ("get-id-negative", True, lambda d, mf: pk([GET, -1, _uri(d), 0, None])),
    ("get-offset-negative", True, lambda d, mf: pk([GET, 1, _uri(d), -5, None])),
    ("get-offset-float", True, lambda d, mf: pk([GET, 1, _uri(d), 0.5, None])),
    ("type-as-string", True, lambda d, mf: pk(["2", 1, _uri(d), 0, None])),
    ("get-uri-nested-array", True, lambda d, mf: pk([GET, 1, [_uri(d)], 0, None])),
    ("get-uri-map", True, lambda d, mf: pk([GET, 1, {"u": 1}, 0, None])),
    ("get-too-short", True, lambda d, mf: pk([GET, 1, _uri(d)])),
    ("empty-array", True, lambda d, mf: pk([])),
    ("type-huge-int", True, lambda d, mf: pk([2 ** 64 - 1, 1])),
    ("unknown-type-99", True, lambda d, mf: pk([99, 1, _uri(d)])),
    ("unknown-type-0", True, lambda d, mf: pk([0, 0])),
    ("server-type-welcome", True, lambda d, mf: pk([WELCOME, 0, 1, 1, 1, "x"])),
    ("server-type-header", True, lambda d, mf: pk([HEADER, 1, 0, 0, 0, None])),
    ("server-type-error", True, lambda d, mf: pk([ERROR, 1, 1, "x", 0])),
    ("data-without-put", True, lambda d, mf: pk([DATA, 7, 0]) + pk(b"x" * 10)),
    ("end-without-put", True, lambda d, mf: pk([END, 7, 0, 0])),
    ("data-over-max-frame", True,
     lambda d, mf: pk([PUT, 1, d.uri("scratch/hostile-mf.bin"), 10 * mf]) +
     pk([DATA, 1, 0]) + b"\xc6" + (mf + 1).to_bytes(4, "big")),
    ("data-over-hard-cap", True,
     lambda d, mf: pk([PUT, 1, d.uri("scratch/hostile-cap.bin"), 1 << 40]) +
     pk([DATA, 1, 0]) + b"\xc6\xff\xff\xff\xff"),
    ("data-bin-marker-wrong", True,
     lambda d, mf: pk([PUT, 1, d.uri("scratch/hostile-bm.bin"), 10]) + pk([DATA, 1, 0]) +
     pk("a str, not bin")),
    ("nul-in-uri", True, lambda d, mf: pk([GET, 1, _uri(d) + "\x00/../../../etc/passwd", 0, None])),
    ("invalid-utf8-uri", True, lambda d, mf: b"\x95\x02\x01\xa4\xff\xfe\xfd\xfc\x00\xc0"),
]


# Well-formed frames whose content is refused: a per-request ERROR (the connection may stay).
REQUEST_LEVEL = {"nul-in-uri", "invalid-utf8-uri"}


@pytest.mark.parametrize("name,hello_first,make", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_frame(hsrv, data, name, hello_first, make):
    with WireConn(hsrv.address("tcp"), timeout=30) as c:
        mf = 4 << 20
        if hello_first:
            mf = c.hello()[3]
        try:
            c.send_raw(make(data, mf))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: fine
        try:
            err = c.expect_error_or_close()
        except socket.timeout:
            pytest.fail(f"{name}: the server neither answered ERROR nor closed within 30 s")
        if err is not None:
            _check_error_frame(err)
            if name not in REQUEST_LEVEL:
                # PROTOCOL.md: ERROR(0, PROTOCOL, cause), then the connection is closed
                assert err[1] == 0 and err[2] == s3dtest.E_PROTOCOL, err
                try:
                    rest = c.wait_closed()
                except socket.timeout:
                    pytest.fail(f"{name}: connection left open after a PROTOCOL error")
                assert rest == [], rest
        # a separate client works while the hostile connection is still open
        _healthy(hsrv, data)
    _healthy(hsrv, data)
    for f in ("hostile-mf.bin", "hostile-cap.bin", "hostile-bm.bin"):
        assert not os.path.exists(data.path("scratch/" + f))


def test_hello_twice(hsrv, data):
    with WireConn(hsrv.address("tcp"), timeout=30) as c:
        c.hello()
        c.send([HELLO, 0, 1, None, "again"])
        c.send([GET, 1, _uri(data), 0, None])
        try:
            f = c.frame()
            if f[0] == ERROR:
                _check_error_frame(f)
            else:
                assert f[0] in (WELCOME, HEADER), f
        except (EOFError, ConnectionResetError):
            pass
    _healthy(hsrv, data)


def test_hello_unknown_version(hsrv, data):
    """PROTOCOL.md: a wrong version gets ERROR and the connection is closed."""
    with WireConn(hsrv.address("tcp"), timeout=30) as c:
        c.send([HELLO, 0, 999, None, "future"])
        err = c.expect_error_or_close()
        if err is not None:
            _check_error_frame(err)
            assert c.wait_closed() == []
    _healthy(hsrv, data)


def test_all_hostile_frames_against_one_server(hsrv, data):
    """The same inputs back to back (and several at once) against a single server."""
    open_conns = []
    try:
        for name, hello_first, make in HOSTILE:
            c = WireConn(hsrv.address("unix"), timeout=30)
            open_conns.append(c)
            mf = c.hello()[3] if hello_first else 4 << 20
            try:
                c.send_raw(make(data, mf))
            except (BrokenPipeError, ConnectionResetError):
                pass
        for c in open_conns:
            try:
                err = c.expect_error_or_close()
            except socket.timeout:
                pytest.fail("a hostile connection got neither ERROR nor close within 30 s")
            if err is not None:
                _check_error_frame(err)
        _healthy(hsrv, data)
    finally:
        for c in open_conns:
            c.close()
    _healthy(hsrv, data)


def test_duplicate_request_ids(hsrv, data):
    rel = data.size_rel((9 << 20) + 3)
    with WireConn(hsrv.address("tcp"), timeout=30) as c:
        c.hello()
        c.send([GET, 5, data.uri(rel), 0, None], [GET, 5, data.uri(rel), 0, None])
        ends = 0
        err = None
        try:
            for _ in range(100_000):
                f = c.frame()
                if f[0] == END and f[1] == 5:
                    ends += 1
                    if ends > 1:
                        break
                if f[0] == ERROR:
                    err = f
                    break
        except (EOFError, ConnectionResetError):
            pass
        except socket.timeout:
            pytest.fail("duplicate id: neither ERROR nor close within 30 s")
        assert ends <= 1, "the server served two requests with the same id as if distinct"
        if err is not None:
            _check_error_frame(err)
        _healthy(hsrv, data)
    _healthy(hsrv, data)


def test_connection_flood(hsrv, data):
    conns = []
    try:
        for i in range(200):
            c = WireConn(hsrv.address("tcp" if i % 2 else "unix"), timeout=30)
            conns.append(c)
            c.send([HELLO, 0, 1, None, f"flood-{i}"])
        for c in conns:
            assert c.frame()[0] == WELCOME
        _healthy(hsrv, data)
    finally:
        for c in conns:
            c.close()
    _healthy(hsrv, data)


def test_stalled_readers_do_not_block_others(hsrv, s3dlio_mod, data, big_file):
    rel = big_file[0]
    stalled = []
    try:
        for i in range(4):
            c = WireConn(hsrv.address("tcp"), timeout=30)
            stalled.append(c)
            c.hello()
            c.send(*[[GET, k, data.uri(rel), 0, None] for k in range(1, 3)])
        s3dlio_mod.connect(hsrv.tcp_url)
        for _ in range(3):
            _healthy(hsrv, data)
            r = data.size_rel((9 << 20) + 3)
            assert bytes(s3dlio_mod.get(data.uri(r))) == data.bytes(r)
    finally:
        for c in stalled:
            c.close()
    _healthy(hsrv, data)


# ---- uploads that go wrong ----
def _dir_listing_raw(srv, uri):
    with WireConn(srv.address("tcp")) as c:
        c.hello()
        c.send([LIST, 1, uri, LIST_RECURSIVE])
        r = c.read_reply(1)
        assert r.error is None or r.error[2] == E_NOT_FOUND, r.error
        return [e[2] for e in r.entries]


def _wait_dir_empty(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.listdir(path):
            return []
        time.sleep(0.05)
    return os.listdir(path)


def test_put_disconnect_mid_stream_leaves_nothing(hsrv, data, scratch):
    path, base = scratch
    uri = base + "partial.bin"
    c = WireConn(hsrv.address("tcp"), timeout=30)
    try:
        c.hello()
        c.send([PUT, 1, uri, 1 << 20])
        c.send_data(1, 0, os.urandom(100_000))
        c.send_data(1, 100_000, os.urandom(100_000))
        # while the upload is open: not published, nothing visible through the server
        time.sleep(0.2)
        assert not os.path.exists(os.path.join(path, "partial.bin"))
        visible = _dir_listing_raw(hsrv, base)
        assert visible == [], f"an upload in progress is visible in LIST: {visible}"
    finally:
        c.close()
    _healthy(hsrv, data)
    assert not os.path.exists(os.path.join(path, "partial.bin"))
    assert _dir_listing_raw(hsrv, base) == []
    left = _wait_dir_empty(path)
    assert left == [], f"temporary files left on disk after an aborted upload: {left}"


def _put_expect_failure(srv, uri, frames_bytes):
    with WireConn(srv.address("tcp"), timeout=30) as c:
        c.hello()
        try:
            c.send_raw(frames_bytes)
        except (BrokenPipeError, ConnectionResetError):
            return None
        try:
            return c.expect_error_or_close()
        except socket.timeout:
            pytest.fail("bad upload: neither ERROR nor close within 30 s")


def test_put_bad_crc_rejected(hsrv, data, scratch):
    path, base = scratch
    uri = base + "badcrc.bin"
    body = os.urandom(300_000)
    frames = pk([PUT, 1, uri, len(body)]) + pk([DATA, 1, 0]) + pk(body) + \
        pk([END, 1, len(body), crc32c(body) ^ 1])
    err = _put_expect_failure(hsrv, uri, frames)
    if err is not None:
        _check_error_frame(err)
        assert err[2] == E_CHECKSUM, err
    assert not os.path.exists(os.path.join(path, "badcrc.bin"))
    assert _dir_listing_raw(hsrv, base) == []
    assert _wait_dir_empty(path) == []
    _healthy(hsrv, data)


@pytest.mark.parametrize("case", ["more-than-declared", "end-size-mismatch", "offset-gap",
                                  "end-before-all-data"])
def test_put_inconsistent_sizes_rejected(hsrv, data, scratch, case):
    path, base = scratch
    uri = base + "bad.bin"
    body = os.urandom(4000)
    if case == "more-than-declared":
        frames = pk([PUT, 1, uri, 1000]) + pk([DATA, 1, 0]) + pk(body) + \
            pk([END, 1, len(body), crc32c(body)])
    elif case == "end-size-mismatch":
        frames = pk([PUT, 1, uri, len(body)]) + pk([DATA, 1, 0]) + pk(body) + \
            pk([END, 1, len(body) + 1, crc32c(body)])
    elif case == "offset-gap":
        frames = pk([PUT, 1, uri, len(body)]) + pk([DATA, 1, 500]) + pk(body[500:]) + \
            pk([END, 1, len(body), crc32c(body)])
    else:
        frames = pk([PUT, 1, uri, len(body)]) + pk([DATA, 1, 0]) + pk(body[:2000]) + \
            pk([END, 1, 2000, crc32c(body[:2000])])
    err = _put_expect_failure(hsrv, uri, frames)
    if err is not None:
        _check_error_frame(err)
    assert not os.path.exists(os.path.join(path, "bad.bin"))
    assert _wait_dir_empty(path) == []
    _healthy(hsrv, data)


def test_raw_put_stat_delete_happy_path(hsrv, data, scratch):
    """PUT: DATA* then END(size, crc); the server answers END(size, crc) once stored.
    STAT: HEADER, END(0, 0). DELETE: END(0, 0)."""
    path, base = scratch
    uri = base + "raw-put.bin"
    body = os.urandom(3 * 65536 + 17)
    with WireConn(hsrv.address("tcp")) as c:
        c.hello()
        chunk = min(65536, c.max_frame)
        c.send([PUT, 1, uri, len(body)])
        for off in range(0, len(body), chunk):
            c.send_data(1, off, body[off:off + chunk])
        c.send([END, 1, len(body), crc32c(body)])
        r = c.read_reply(1)
        assert r.error is None, r.error
        assert r.end[2] == len(body) and r.end[3] == crc32c(body)
        with open(os.path.join(path, "raw-put.bin"), "rb") as f:
            assert f.read() == body
        st = os.stat(os.path.join(path, "raw-put.bin"))
        c.send([STAT, 2, uri])
        r = c.read_reply(2)
        assert r.ok, r.error
        assert r.header[2] == r.header[3] == len(body)
        assert r.header[4] == st.st_mtime_ns
        assert r.end[2:4] == [0, 0] and r.chunks == []
        c.send([DELETE, 3, uri])
        r = c.read_reply(3)
        assert r.ok and r.end[2:4] == [0, 0]
        assert not os.path.exists(os.path.join(path, "raw-put.bin"))
        c.send([DELETE, 4, uri])
        r = c.read_reply(4)
        _check_error_frame(r.error)
        assert r.error[2] == E_NOT_FOUND and uri in r.error[3]
        # an empty upload
        c.send([PUT, 5, base + "empty.bin", 0], [END, 5, 0, 0])
        r = c.read_reply(5)
        assert r.ok and r.end[2] == 0
        assert os.path.getsize(os.path.join(path, "empty.bin")) == 0


def test_raw_error_after_bad_put_keeps_connection(hsrv, data, scratch):
    """PROTOCOL.md: after a PUT's ERROR the server drops that request's remaining DATA and END;
    the connection carries on."""
    path, base = scratch
    body = os.urandom(200_000)
    with WireConn(hsrv.address("tcp")) as c:
        c.hello()
        c.send([PUT, 1, base + "bad.bin", len(body)])
        c.send_data(1, 0, body)
        c.send([END, 1, len(body), crc32c(body) ^ 0xFFFF])
        r = c.read_reply(1)
        _check_error_frame(r.error)
        assert r.error[2] == E_CHECKSUM
        g = c.get(data.uri(data.size_rel(4096)), rid=2)
        assert g.ok and g.data == data.bytes(data.size_rel(4096))
    assert not os.path.exists(os.path.join(path, "bad.bin"))


def test_raw_delete_and_stat_outside_allow(hsrv, data):
    secret = file_uri(data.outside) + "/secret.bin"
    with WireConn(hsrv.address("tcp")) as c:
        c.hello()
        c.send([DELETE, 1, secret])
        r = c.read_reply(1)
        _check_error_frame(r.error)
        assert r.error[2] == E_PERMISSION
        c.send([STAT, 2, secret])
        r = c.read_reply(2)
        _check_error_frame(r.error)
        assert r.error[2] == E_PERMISSION
    assert os.path.exists(os.path.join(data.outside, "secret.bin"))


# ---- store names that would point a signed request elsewhere ----
def test_bucket_names_cannot_name_another_host(s3dlio_mod, tmp_path):
    """With --allow s3:// (every bucket) and virtual-hosted addressing, the bucket is the
    request's host: "127.0.0.1:PORT#" would send the server's signed request (and its
    session token) to a listener the client chose. Such names are refused before any
    request leaves the server."""
    import socket
    import threading

    import cloudemu
    got = []
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(5)
    ls.settimeout(0.2)
    port = ls.getsockname()[1]
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except OSError:
                continue
            got.append(c.recv(65536))
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstole")
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    env = cloudemu.s3_env("http://127.0.0.1:9", AWS_SESSION_TOKEN="SESSION-SECRET")
    srv = s3dtest.start_server(["s3://", "az://", "gs://"], env=env,
                               extra=["--s3-path-style", "0"])
    try:
        c = s3dlio_mod.Client(srv.url)
        for uri in (f"s3://127.0.0.1:{port}#/key", f"s3://127.0.0.1:{port}?/key",
                    f"s3://x@127.0.0.1:{port}/key", f"gs://127.0.0.1:{port}#/o",
                    f"az://127.0.0.1:{port}#/c/b"):
            with pytest.raises(ValueError) as ei:
                c.get(uri)
            assert "not a valid" in str(ei.value) and isinstance(ei.value, RuntimeError)
            with pytest.raises(ValueError):
                c.mkdir(uri.rsplit("/", 1)[0])
        assert got == []
    finally:
        stop.set()
        t.join()
        ls.close()
        srv.stop()
