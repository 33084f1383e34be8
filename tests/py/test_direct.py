"""direct:// (O_DIRECT reads into aligned buffers, then the requested bytes): byte-exact for
unaligned sizes and ranges, and confined like file://."""
import errno
import os

import numpy as np
import pytest

from conftest import SIZES
from s3dtest import file_uri


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
