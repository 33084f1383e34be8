"""The original 0.9.1's format functions on this package (issue 10): read_npz (checked against
numpy's own reader) and the TFRecord index functions (checked against an independent parse
of records this file writes with real masked CRC32C fields), for local paths and for URIs on
file:// and s3:// (s3rver through s3dliod). Real servers, no mocks."""
import io
import os
import re
import struct
import zipfile

import pytest

import cloudemu
import s3dtest

np = pytest.importorskip("numpy")

BUCKET = "compat-formats"


# ---- backends ----
@pytest.fixture(scope="module")
def local_srv(data):
    srv = s3dtest.start_server([data.allow], threads=2)
    yield srv
    cloudemu.stop_server(srv)


@pytest.fixture(scope="module")
def s3_emu(tmp_path_factory):
    e = cloudemu.s3rver(str(tmp_path_factory.mktemp("s3rver-formats")), [BUCKET])
    yield e
    e.stop()


@pytest.fixture(scope="module")
def s3_srv(s3_emu):
    srv = cloudemu.s3_server(s3_emu, [BUCKET])
    yield srv
    cloudemu.stop_server(srv)


@pytest.fixture(params=["file", "s3"])
def base(request, s3dlio_mod, scratch):
    """(s3dlio, base URI) on that backend, with the module connected to its server."""
    if request.param == "s3":
        srv = request.getfixturevalue("s3_srv")
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:80]
        s3dlio_mod.connect(srv.tcp_url)
        return s3dlio_mod, f"s3://{BUCKET}/{name}/"
    s3dlio_mod.connect(request.getfixturevalue("local_srv").tcp_url)
    return s3dlio_mod, scratch[1]


@pytest.fixture
def local(s3dlio_mod, local_srv, scratch):
    s3dlio_mod.connect(local_srv.tcp_url)
    return s3dlio_mod, scratch[0], scratch[1]


# ---- read_npz ----
def _npz_bytes(compressed=False, **arrays):
    f = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return f.getvalue()


ARRAYS = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
    "f64": np.linspace(0, 1, 7),
    "i16": np.array([[-1, 2], [3, -4]], dtype=np.int16),
    "flags": np.array([True, False, True]),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
    "empty": np.zeros((0, 5), dtype=np.uint8),
    "last": np.arange(5, dtype=np.float32) * 1.5,
}


@pytest.mark.parametrize("compressed", [False, True])
def test_read_npz_matches_numpy(base, compressed):
    mod, b = base
    uri = b + ("c.npz" if compressed else "s.npz")
    mod.put_bytes(uri, _npz_bytes(compressed, **ARRAYS))
    # default: the archive's last array, as the original picks it
    got = mod.read_npz(uri)
    assert got.dtype == np.float32 and np.array_equal(got, ARRAYS["last"])
    for name, want in ARRAYS.items():
        for key in (name, name + ".npy"):
            got = mod.read_npz(uri, key)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got, want), name
            assert got.flags.writeable
        got[...] = 0  # an array of its own: the stored object is untouched
    assert np.array_equal(mod.read_npz(uri, "f64"), ARRAYS["f64"])


def test_read_npz_plain_npy(local):
    mod, path, b = local
    f = io.BytesIO()
    np.save(f, ARRAYS["i16"])
    mod.put_bytes(b + "a.npy", f.getvalue())
    assert np.array_equal(mod.read_npz(b + "a.npy"), ARRAYS["i16"])


def test_read_npz_errors(local):
    mod, path, b = local
    uri = b + "e.npz"
    mod.put_bytes(uri, _npz_bytes(x=np.ones(3), y=np.zeros(2)))
    with pytest.raises(RuntimeError) as ei:
        mod.read_npz(uri, "z")
    assert isinstance(ei.value, ValueError) and "'x', 'y'" in str(ei.value)
    with pytest.raises(FileNotFoundError) as ei:
        mod.read_npz(b + "missing.npz")
    assert isinstance(ei.value, RuntimeError)
    mod.put_bytes(b + "text.npz", b"this is not a zip archive")
    with pytest.raises(ValueError, match="not an .npz"):
        mod.read_npz(b + "text.npz")
    mod.put_bytes(b + "none.npz", _npz_bytes())
    with pytest.raises(ValueError, match="NPZ file is empty"):
        mod.read_npz(b + "none.npz")
    mod.put_bytes(b + "obj.npz", _npz_bytes(o=np.array([{"a": 1}], dtype=object)))
    with pytest.raises(ValueError, match="object array"):
        mod.read_npz(b + "obj.npz")
    # a corrupted stored member fails its CRC-32
    blob = bytearray(_npz_bytes(x=np.arange(1000, dtype=np.int64)))
    blob[200] ^= 0xFF
    mod.put_bytes(b + "bad.npz", blob)
    with pytest.raises(ValueError, match="CRC"):
        mod.read_npz(b + "bad.npz")
    with pytest.raises(TypeError):
        mod.read_npz(uri, 3)


def _npy_with_header(header, data=b""):
    h = header.encode("latin1")
    h += b" " * ((-(10 + len(h) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data


def test_read_npz_crafted_archives(local):
    """Offsets and headers of a crafted archive are checked: InvalidArgumentError (a
    ValueError and RuntimeError) naming the cause, never a bare struct.error, IndexError or
    zipfile.BadZipFile."""
    mod, path, b = local
    uri = b + "crafted.npz"
    # the central directory sends the member's local header into the archive's comment,
    # 14 bytes before the end: its 30 bytes cannot fit
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        m = io.BytesIO()
        np.save(m, np.arange(4, dtype=np.uint8))
        z.writestr("data.npy", m.getvalue())
        z.comment = b"PK\x03\x04" + b"\0" * 10
    blob = bytearray(buf.getvalue())
    cd = blob.rfind(b"PK\x01\x02")
    struct.pack_into("<I", blob, cd + 42, len(blob) - 14)
    mod.put_bytes(uri, bytes(blob))
    with pytest.raises(mod.InvalidArgumentError, match="local header.*not inside the archive"):
        mod.read_npz(uri)
    # a member whose data runs past the end
    blob = bytearray(buf.getvalue())
    struct.pack_into("<I", blob, cd + 42, 0)
    lh_size = struct.unpack_from("<I", blob, 22)[0]
    struct.pack_into("<II", blob, cd + 20, lh_size + 1000, lh_size + 1000)
    mod.put_bytes(uri, bytes(blob))
    with pytest.raises(RuntimeError) as ei:
        mod.read_npz(uri)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, mod.Error)
    # .npy headers: a negative dimension, a shape that is no tuple, an unknown version
    for npy in (_npy_with_header("{'descr': '<i4', 'fortran_order': False, 'shape': (-1,), }",
                                 bytes(16)),
                _npy_with_header("{'descr': '<i4', 'fortran_order': False, 'shape': 'x', }"),
                _npy_with_header("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }")
                .replace(b"NUMPY\x01", b"NUMPY\x09", 1),
                _npy_with_header("{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }",
                                 bytes(15))):
        mod.put_bytes(b + "crafted.npy", npy)
        with pytest.raises(mod.InvalidArgumentError):
            mod.read_npz(b + "crafted.npy")
    # every truncation and many byte changes of real archives: an array or the package's error
    for blob in (_npz_bytes(a=np.arange(20, dtype=np.int32), b=np.ones((3, 4))),
                 _npz_bytes(True, a=np.arange(20, dtype=np.int32), b=np.ones((3, 4)))):
        cases = [blob[:n] for n in range(0, len(blob), 3)]
        for i in range(max(0, len(blob) - 200), len(blob)):
            for v in (0x00, 0xFF, blob[i] ^ 0x80):
                cases.append(blob[:i] + bytes([v]) + blob[i + 1:])
        for case in cases:
            mod.put_bytes(uri, case)
            for name in (None, "b"):
                try:
                    mod.read_npz(uri, name)
                except mod.Error:
                    pass


# ---- TFRecord framing written here, independently of the package ----
def _masked(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _record(payload):
    head = struct.pack("<Q", len(payload))
    return (head + struct.pack("<I", _masked(s3dtest.crc32c(head))) + payload
            + struct.pack("<I", _masked(s3dtest.crc32c(payload))))


PAYLOADS = [b"first record", b"", os.urandom(5000), b"x" * 70000, b"last"]


def _tfrecord():
    data = b"".join(_record(p) for p in PAYLOADS)
    entries, off = [], 0
    for p in PAYLOADS:
        entries.append((off, len(p) + 16))
        off += len(p) + 16
    return data, entries


def test_index_tfrecord_bytes_and_entries(s3dlio_mod):
    data, want = _tfrecord()
    assert s3dlio_mod.get_tfrecord_index_entries(data) == want
    text = s3dlio_mod.index_tfrecord_bytes(data)
    assert text == "".join("%d %d\n" % e for e in want)
    for form in (bytearray(data), memoryview(data), np.frombuffer(data, dtype=np.uint8)):
        assert s3dlio_mod.get_tfrecord_index_entries(form) == want
    assert s3dlio_mod.index_tfrecord_bytes(b"") == ""
    assert s3dlio_mod.get_tfrecord_index_entries(b"") == []
    with pytest.raises(TypeError):
        s3dlio_mod.index_tfrecord_bytes("text")


def test_index_does_not_check_crcs(s3dlio_mod):
    """As the original (DALI's test files carry dummy CRCs): framing only."""
    rec = struct.pack("<Q", 3) + b"\0" * 4 + b"abc" + b"\0" * 4
    assert s3dlio_mod.get_tfrecord_index_entries(rec * 2) == [(0, 19), (19, 19)]


@pytest.mark.parametrize("cut", ["payload", "crc", "header", "trailing"])
def test_truncated_tfrecord_raises(s3dlio_mod, cut):
    data, want = _tfrecord()
    last_off = want[-1][0]
    bad = {"payload": data[:last_off + 14], "crc": data[:-2], "header": data[:last_off + 5],
           "trailing": data + b"\x01\x02\x03"}[cut]
    with pytest.raises(RuntimeError) as ei:
        s3dlio_mod.get_tfrecord_index_entries(bad)
    assert isinstance(ei.value, ValueError) and "Truncated TFRecord at offset" in str(ei.value)
    expect_off = len(data) if cut == "trailing" else last_off
    assert "offset %d" % expect_off in str(ei.value)


def test_create_tfrecord_index_local_paths(s3dlio_mod, tmp_path):
    data, want = _tfrecord()
    rec = tmp_path / "train.tfrecord"
    rec.write_bytes(data)
    assert s3dlio_mod.create_tfrecord_index(str(rec), str(tmp_path / "x.idx")) == len(want)
    assert (tmp_path / "x.idx").read_text() == "".join("%d %d\n" % e for e in want)
    assert s3dlio_mod.create_tfrecord_index(str(rec)) == len(want)  # default: + ".idx"
    assert (tmp_path / "train.tfrecord.idx").read_text() == (tmp_path / "x.idx").read_text()
    assert s3dlio_mod.read_tfrecord_index(str(tmp_path / "x.idx")) == want
    # random access through the index gives back every payload
    with open(rec, "rb") as f:
        for (off, size), payload in zip(s3dlio_mod.read_tfrecord_index(str(tmp_path / "x.idx")),
                                        PAYLOADS):
            f.seek(off)
            r = f.read(size)
            assert r[12:-4] == payload
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    assert s3dlio_mod.create_tfrecord_index(str(empty)) == 0
    assert (tmp_path / "empty.tfrecord.idx").read_text() == ""


def test_create_tfrecord_index_failures(s3dlio_mod, tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        s3dlio_mod.create_tfrecord_index(str(tmp_path / "missing.tfrecord"))
    assert isinstance(ei.value, RuntimeError) and "missing.tfrecord" in str(ei.value)
    data, _ = _tfrecord()
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(data[:-3])
    with pytest.raises(ValueError, match="Truncated"):
        s3dlio_mod.create_tfrecord_index(str(bad))
    assert not (tmp_path / "bad.tfrecord.idx").exists(), "no index for a truncated file"
    assert sorted(os.listdir(tmp_path)) == ["bad.tfrecord"]


def test_tfrecord_index_through_uris(base, tmp_path):
    mod, b = base
    data, want = _tfrecord()
    mod.put_bytes(b + "d.tfrecord", data)
    assert mod.create_tfrecord_index(b + "d.tfrecord") == len(want)
    assert bytes(mod.get(b + "d.tfrecord.idx")).decode() == "".join("%d %d\n" % e
                                                                    for e in want)
    assert mod.read_tfrecord_index(b + "d.tfrecord.idx") == want
    # a URI source with a local index, and a local source with a URI index
    assert mod.create_tfrecord_index(b + "d.tfrecord", str(tmp_path / "l.idx")) == len(want)
    assert mod.read_tfrecord_index(str(tmp_path / "l.idx")) == want
    (tmp_path / "l.tfrecord").write_bytes(data)
    assert mod.create_tfrecord_index(str(tmp_path / "l.tfrecord"), b + "u.idx") == len(want)
    assert mod.read_tfrecord_index(b + "u.idx") == want
    with pytest.raises(FileNotFoundError):
        mod.create_tfrecord_index(b + "none.tfrecord")


def test_read_tfrecord_index_format(s3dlio_mod, tmp_path):
    p = tmp_path / "ok.idx"
    p.write_text("0 20\n\n   20 3  \n+23 7\n")
    assert s3dlio_mod.read_tfrecord_index(str(p)) == [(0, 20), (20, 3), (23, 7)]
    for text, line, what in [("0 20\nxx 1\n", 2, "offset"), ("0 -5\n", 1, "size"),
                             ("1 2 3\n", 1, None), ("7\n", 1, None)]:
        p.write_text(text)
        with pytest.raises(RuntimeError) as ei:
            s3dlio_mod.read_tfrecord_index(str(p))
        assert isinstance(ei.value, ValueError) and "line %d" % line in str(ei.value)
        if what:
            assert what in str(ei.value)
    with pytest.raises(FileNotFoundError):
        s3dlio_mod.read_tfrecord_index(str(tmp_path / "nope.idx"))


def test_zip_reader_sees_one_member(local):
    """The npz put() makes is a plain zip (read here with zipfile, independent of numpy)."""
    mod, path, b = local
    mod.put(b + "zipcheck/", 1, "o.npz", size=10000, object_type="npz")
    with zipfile.ZipFile(os.path.join(path, "zipcheck", "o.npz")) as z:
        assert z.namelist() == ["data.npy"] and z.testzip() is None
        assert z.getinfo("data.npy").compress_type == zipfile.ZIP_STORED


def test_tfrecord_index_of_a_local_file_reads_headers_only(s3dlio_mod, tmp_path):
    """A local TFRecord is scanned header by header: a 4 GiB record (sparse here) costs a few
    reads, not 4 GiB of memory, and the index agrees with the in-memory parse."""
    import resource
    import struct
    p = tmp_path / "big.tfrecord"
    small = struct.pack("<Q", 3) + b"\0" * 4 + b"abc" + b"\0" * 4
    big_len = 4 << 30
    with open(p, "wb") as f:
        f.write(small)
        f.write(struct.pack("<Q", big_len) + b"\0" * 4)
        f.seek(big_len + 4, os.SEEK_CUR)   # data and CRC: a hole
        f.write(small)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert s3dlio_mod.create_tfrecord_index(str(p)) == 3
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 256 << 10, "the scan read the file into memory"
    want = [(0, 19), (19, big_len + 16), (19 + big_len + 16, 19)]
    assert s3dlio_mod.read_tfrecord_index(str(p) + ".idx") == want
    os.truncate(p, 19 + 16 + 100)                     # the big record cut short
    with pytest.raises(ValueError) as ei:
        s3dlio_mod.create_tfrecord_index(str(p), str(tmp_path / "x.idx"))
    assert "Truncated TFRecord at offset 19" in str(ei.value)
    assert not (tmp_path / "x.idx").exists()
