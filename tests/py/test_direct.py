"""direct:// (O_DIRECT reads into aligned buffers, then the requested bytes): byte-exact for
unaligned sizes and ranges, and confined like file://. The reads run on the server's I/O
threads, so they also must interleave with other requests, survive cancels, disconnects and
shrinking files, and drain on SIGTERM."""
import errno
import os
import random
import shutil
import signal

import numpy as np
import pytest

import s3dtest
from conftest import SIZES
from s3dtest import (CANCEL, DATA, E_CANCELLED, E_IO, END, ERROR, GET, HEADER, Reply, WireConn,
                     file_uri)

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def o_direct_ok(data):
    path = data.path(data.size_rel(4096))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            pytest.skip("the test filesystem does not support O_DIRECT")
        raise
    os.close(fd)


@pytest.fixture
def d(o_direct_ok, new_server, data, s3dlio_mod):
    srv = new_server.start(allow=[data.allow, "direct://" + data.root + "/"])
    s3dlio_mod.connect(srv.unix_url)
    return s3dlio_mod


def duri(data, rel):
    return "direct://" + data.path(rel)


def test_direct_get_sizes(d, data):
    for size in SIZES:
        rel = data.size_rel(size)
        v = d.get(duri(data, rel))
        assert len(v) == size
        assert bytes(v) == data.bytes(rel), f"direct:// get of {size} bytes"


@pytest.mark.parametrize("offset,length", [(0, 1), (1, 1), (4095, 2), (4096, 4096),
                                           (4097, 10000), (65535, None), (1, (1 << 20) - 2),
                                           (1000, 0), (1 << 20, None)])
def test_direct_unaligned_ranges(d, data, offset, length):
    rel = data.size_rel(1 << 20)
    want = data.bytes(rel)[offset:] if length is None else \
        data.bytes(rel)[offset:offset + length]
    assert bytes(d.get_range(duri(data, rel), offset, length)) == want


def test_direct_range_past_end(d, data):
    uri = duri(data, data.size_rel(4095))
    with pytest.raises(ValueError) as ei:
        d.get_range(uri, 4096, None)
    assert uri in str(ei.value)


def test_direct_get_many_and_get_into(d, data):
    rels = [data.size_rel(s) for s in SIZES] + [data.small_rel(i) for i in range(40)]
    res = d.get_many([duri(data, r) for r in rels], max_in_flight=16)
    assert [bytes(v) for _, v in res] == [data.bytes(r) for r in rels]
    rel = data.size_rel((9 << 20) + 3)
    arr = np.zeros((9 << 20) + 3, dtype=np.uint8)
    assert d.get_into(duri(data, rel), arr) == (9 << 20) + 3
    assert arr.tobytes() == data.bytes(rel)
    buf = bytearray(5000)
    assert d.get_into(duri(data, rel), buf, offset=12345, length=5000) == 5000
    assert bytes(buf) == data.bytes(rel)[12345:17345]


def test_direct_zero_copy_view(d, data):
    from s3dtest import buffer_info

    rel = data.size_rel(65537)
    v = d.get(duri(data, rel))
    arr = np.frombuffer(v.memoryview(), dtype=np.uint8)
    assert arr.ctypes.data == buffer_info(v)[0]
    assert arr.tobytes() == data.bytes(rel)


def test_direct_missing_and_confinement(d, data):
    missing = duri(data, "sizes/nope.bin")
    with pytest.raises(FileNotFoundError) as ei:
        d.get(missing)
    assert missing in str(ei.value)
    with pytest.raises(PermissionError):
        d.get("direct://" + data.outside + "/secret.bin")
    with pytest.raises((PermissionError, ValueError)):
        d.get("direct://" + data.root + "/../" + os.path.basename(data.outside) + "/secret.bin")
    with pytest.raises(PermissionError):
        d.get(duri(data, "links/secret.bin"))
    # file:// of the same root still works on this server
    assert bytes(d.get(file_uri(data.path(data.size_rel(1))))) == data.bytes(data.size_rel(1))


def test_direct_list_gives_direct_uris(d, data):
    base = "direct://" + data.path("tree") + "/"
    got = d.list(base, recursive=True)
    assert got == sorted(base + n for n in data.TREE)


def test_direct_stat(d, data):
    rel = data.size_rel((9 << 20) + 3)
    st = d.stat(duri(data, rel))
    assert st["size"] == (9 << 20) + 3
    assert st["mtime_ns"] == os.stat(data.path(rel)).st_mtime_ns


# ---- reads off the event loop ----

def _direct_server(new_server, data, *extra, threads=1, **kw):
    # one event loop: every connection shares the loop the direct:// reads must not block
    return new_server.start(allow=[data.allow, "direct://" + data.root + "/"], threads=threads,
                            extra=list(extra), **kw)


def _check_reply(r, want):
    assert r.error is None, r.error[:4]
    assert r.header[2] == len(want)
    body = r.data
    assert body == want
    assert r.end[2] == len(want) and r.end[3] == s3dtest.crc32c(body)


def test_direct_big_gets_interleave_with_small_file_get(o_direct_ok, new_server, data, big_file):
    srv = _direct_server(new_server, data, "--max-frame", "65536")
    rel9 = data.size_rel((9 << 20) + 3)
    small = data.size_rel(65537)
    with WireConn(srv.address("unix")) as c:
        c.hello()
        c.send([GET, 1, duri(data, big_file[0]), 0, None],
               [GET, 2, duri(data, rel9), 0, None],
               [GET, 3, duri(data, rel9), 5, None],
               [GET, 4, file_uri(data.path(small)), 0, None])
        replies = {i: Reply(i) for i in (1, 2, 3, 4)}
        ended = []
        big = bytearray()
        while len(ended) < 4:
            f = c.frame()
            if f[1] == 1 and f[0] == DATA:
                assert f[2] == len(big)  # stream the 128 MiB one, do not keep its frames
                big += f[-1]
                continue
            if replies[f[1]].add(f):
                ended.append(f[1])
        # the small file:// GET was answered while the big direct:// reads were going
        assert ended.index(4) < ended.index(1)
        _check_reply(replies[4], data.bytes(small))
        _check_reply(replies[2], data.bytes(rel9))
        _check_reply(replies[3], data.bytes(rel9)[5:])
        assert replies[1].error is None and replies[1].end[2] == big_file[1]
        assert s3dtest.sha256(bytes(big)) == big_file[2]
        assert replies[1].end[3] == s3dtest.crc32c(bytes(big))


def test_direct_many_unaligned_ranges_byte_exact(o_direct_ok, new_server, data):
    # a frame size that is no multiple of the alignment: every chunk edge is unaligned too
    srv = _direct_server(new_server, data, "--max-frame", "70001", "--direct-threads", "3")
    rel = data.size_rel((9 << 20) + 3)
    want = data.bytes(rel)
    size = len(want)
    rng = random.Random(1234)
    ranges = [(0, None), (size - 1, None), (size, None), (size - 4096, 4096), (4095, 1),
              (4096, 70001), (4095, 70003)]
    while len(ranges) < 200:
        off = rng.randrange(size)
        if rng.random() < 0.3:
            off = off & ~4095  # aligned starts
        length = rng.choice([1, 511, 4095, 4096, 4097, 70000, 140003, 1 << 20,
                             rng.randrange(3 << 20)])
        ranges.append((off, length))
    with WireConn(srv.address("unix")) as c:
        c.hello()
        for batch in range(0, len(ranges), 50):
            ids = list(range(batch + 1, min(batch + 50, len(ranges)) + 1))
            c.send(*[[GET, i, duri(data, rel), *ranges[i - 1]] for i in ids])
            replies = c.read_replies(ids)
            for i in ids:
                off, length = ranges[i - 1]
                _check_reply(replies[i], want[off:] if length is None else
                             want[off:off + length])


RAW_DIRECT_CLIENT = """
    import sys, time
    sys.path.insert(0, {here!r})
    from s3dtest import WireConn, GET, HEADER, DATA
    c = WireConn({addr!r})
    c.hello()
    c.send([GET, 1, {uri!r}, 0, None], [GET, 2, {uri!r}, 12345, None])
    h = c.frame()
    assert h[0] == HEADER, h
    d = c.frame()
    print("READY", flush=True)
    time.sleep(300)
"""


def test_direct_client_killed_mid_read(o_direct_ok, new_server, data, big_file):
    srv = _direct_server(new_server, data, "--max-frame", "1m", threads=2)
    uri = duri(data, big_file[0])
    procs = [s3dtest.popen_py(RAW_DIRECT_CLIENT.format(here=HERE, addr=srv.address("unix"),
                                                       uri=uri)) for _ in range(4)]
    try:
        for p in procs:
            s3dtest.read_line_until(p, lambda line: line == "READY")
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # and connections closed by us right after asking, before any reply
    for _ in range(8):
        c = WireConn(srv.address("unix"))
        c.hello()
        c.send([GET, 1, uri, 0, None], [GET, 2, uri, 1, 3 << 20])
        c.close()
    assert srv.alive(), srv.describe()
    with WireConn(srv.address("unix")) as c:
        c.hello()
        rel = data.size_rel((9 << 20) + 3)
        _check_reply(c.get(duri(data, rel), 3, 5 << 20), data.bytes(rel)[3:3 + (5 << 20)])


def test_direct_cancel_mid_read(o_direct_ok, new_server, data, big_file):
    srv = _direct_server(new_server, data)
    with WireConn(srv.address("unix")) as c:
        c.hello()
        for rid in (1, 2, 3):
            c.send([GET, rid, duri(data, big_file[0]), rid, None])
            r = Reply(rid)
            r.add(c.frame())
            assert r.header is not None and r.header[0] == HEADER
            c.send([CANCEL, rid])
            for _ in range(1_000_000):
                if r.add(c.frame()):
                    break
            if r.error is not None:
                assert r.error[2] == E_CANCELLED
                assert duri(data, big_file[0]) in r.error[3]
            else:  # it finished before the cancel arrived: then it is whole
                assert len(r.data) == big_file[1] - rid
        small = data.size_rel(65537)
        _check_reply(c.get(duri(data, small), rid=9), data.bytes(small))


def test_direct_file_shrank_during_read(o_direct_ok, new_server, data, big_file, scratch):
    path = os.path.join(scratch[0], "shrink.bin")
    shutil.copyfile(data.path(big_file[0]), path)
    srv = _direct_server(new_server, data, "--max-frame", "1m")
    uri = "direct://" + path
    with WireConn(srv.address("unix")) as c:
        c.hello()
        c.send([GET, 1, uri, 4097, None])
        f = c.frame()
        assert f[0] == HEADER and f[2] == big_file[1] - 4097
        os.truncate(path, 32 << 20)
        while f[0] not in (END, ERROR):
            f = c.frame()
        assert f[0] == ERROR and f[2] == E_IO, f[:4]
        assert f[3] == uri + ": file shrank during read"
        small = data.size_rel(4095)
        _check_reply(c.get(duri(data, small), rid=2), data.bytes(small))


def test_direct_sigterm_drains_read_in_flight(o_direct_ok, new_server, data, big_file):
    srv = _direct_server(new_server, data, drain_timeout=120)
    c = WireConn(srv.address("unix"))
    c.hello()
    c.send([GET, 1, duri(data, big_file[0]), 0, None])
    r = Reply(1)
    r.add(c.frame())
    r.add(c.frame())
    srv.signal(signal.SIGTERM)
    for _ in range(1_000_000):
        if r.add(c.frame()):
            break
    assert r.error is None, f"drain cut the transfer: {r.error}"
    body = r.data
    assert len(body) == big_file[1] and s3dtest.sha256(body) == big_file[2]
    assert r.end[3] == s3dtest.crc32c(body)
    c.wait_closed()
    c.close()
    rc = srv.wait(60)
    assert rc == 0, f"s3dliod exited {rc} after draining\n" + srv.describe()
    srv.stopped_rc = rc
