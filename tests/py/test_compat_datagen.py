"""The original's data generation on this package (issue 10): put / put_async (its object types
decoded as real files: numpy for NPZ, an independent TFRecord parse with CRC32C checks, h5py
for HDF5; dedup and compress factors measured), the URI list its templates make, put_many /
put_many_async, generate_data / generate_data_with_threads / generate_into_buffer and the CPU
helpers, on file:// and s3:// (s3rver through s3dliod). Real servers, no mocks."""
import asyncio
import io
import os
import re
import struct
import zlib

import pytest

import cloudemu
import s3dtest

np = pytest.importorskip("numpy")

BUCKET = "compat-datagen"
NEW_BUCKET = "made-by-put"


# ---- backends ----
@pytest.fixture(scope="module")
def local_srv(data):
    srv = s3dtest.start_server([data.allow], threads=2)
    yield srv
    cloudemu.stop_server(srv)


@pytest.fixture(scope="module")
def s3_emu(tmp_path_factory):
    e = cloudemu.s3rver(str(tmp_path_factory.mktemp("s3rver-datagen")), [BUCKET])
    yield e
    e.stop()


@pytest.fixture(scope="module")
def s3_srv(s3_emu):
    srv = cloudemu.s3_server(s3_emu, [BUCKET, NEW_BUCKET])
    yield srv
    cloudemu.stop_server(srv)


class Backend:
    def __init__(self, mod, kind, base, read, names):
        self.mod, self.kind, self.base = mod, kind, base
        self.read, self.names = read, names  # independent of s3dlio


@pytest.fixture(params=["file", "s3"])
def be(request, s3dlio_mod, scratch):
    if request.param == "s3":
        emu = request.getfixturevalue("s3_emu")
        srv = request.getfixturevalue("s3_srv")
        boto = cloudemu.boto_s3(emu.endpoint)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:80]
        root = f"s3://{BUCKET}/"

        def read(uri):
            b, _, key = uri[5:].partition("/")
            return boto.get_object(Bucket=b, Key=key)["Body"].read()

        def names(uri):
            b, _, key = uri[5:].partition("/")
            out = boto.list_objects_v2(Bucket=b, Prefix=key).get("Contents", [])
            return sorted(o["Key"][len(key):] for o in out)
        s3dlio_mod.connect(srv.tcp_url)
        return Backend(s3dlio_mod, "s3", f"{root}{name}/", read, names)
    s3dlio_mod.connect(request.getfixturevalue("local_srv").tcp_url)

    def read(uri):
        with open(uri[len("file://"):], "rb") as f:
            return f.read()

    def names(uri):
        p = uri[len("file://"):]
        return sorted(os.listdir(p)) if os.path.isdir(p) else []
    return Backend(s3dlio_mod, "file", scratch[1], read, names)


@pytest.fixture
def local(s3dlio_mod, local_srv, scratch):
    s3dlio_mod.connect(local_srv.tcp_url)
    return s3dlio_mod, scratch[0], scratch[1]


# ---- measures ----
BLOCK = 4096


def _unique_block_share(b):
    n = -(-len(b) // BLOCK)
    return len({b[i:i + BLOCK] for i in range(0, len(b), BLOCK)}) / n


def _zlib_ratio(b):
    return len(b) / len(zlib.compress(b, 6))


def _masked(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _parse_tfrecord(blob):
    """[payload] of a TFRecord file, checking both masked CRC32C fields."""
    out, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from("<Q", blob, pos)
        (lcrc,) = struct.unpack_from("<I", blob, pos + 8)
        assert lcrc == _masked(s3dtest.crc32c(blob[pos:pos + 8])), "length CRC"
        payload = blob[pos + 12:pos + 12 + n]
        (dcrc,) = struct.unpack_from("<I", blob, pos + 12 + n)
        assert dcrc == _masked(s3dtest.crc32c(payload)), "data CRC"
        out.append(payload)
        pos += 16 + n
    assert pos == len(blob)
    return out


# ---- put: object types decoded ----
SIZE = 300_000  # not a multiple of the 4 KiB block


@pytest.mark.parametrize("object_type", ["zeros", "raw", "RAW", "binary", "random"])
def test_put_raw_objects(be, object_type):
    be.mod.put(be.base + "raw/", 3, "obj-{}.bin", size=SIZE, object_type=object_type)
    assert be.names(be.base + "raw/") == ["obj-0.bin", "obj-1.bin", "obj-2.bin"]
    blobs = [be.read(be.base + f"raw/obj-{i}.bin") for i in range(3)]
    assert all(len(b) == SIZE for b in blobs)
    assert _zlib_ratio(blobs[0]) < 1.01  # incompressible by default
    assert len({b for b in blobs}) == 3  # distinct objects
    assert not set(blobs[0][i:i + BLOCK] for i in range(0, SIZE, BLOCK)) & \
        set(blobs[1][i:i + BLOCK] for i in range(0, SIZE, BLOCK))


def test_put_npz_objects(be):
    be.mod.put(be.base, 2, "sample-{}.npz", size=SIZE, object_type="NPZ")
    for i in range(2):
        blob = be.read(be.base + f"sample-{i}.npz")
        with np.load(io.BytesIO(blob)) as z:
            assert z.files == ["data"]
            a = z["data"]
        assert a.dtype == np.uint8 and a.shape == (SIZE,)
        assert _zlib_ratio(a.tobytes()) < 1.01
        # and our own reader agrees
        got = be.mod.read_npz(be.base + f"sample-{i}.npz")
        assert np.array_equal(got, a)


def test_put_tfrecord_objects(be):
    be.mod.put(be.base, 2, "t-{}.tfrecord", size=SIZE, object_type="tfrecord",
               compress_factor=2)
    for i in range(2):
        blob = be.read(be.base + f"t-{i}.tfrecord")
        payloads = _parse_tfrecord(blob)
        assert [len(p) for p in payloads] == [SIZE]
        assert be.mod.get_tfrecord_index_entries(blob) == [(0, SIZE + 16)]


def test_put_hdf5_objects(be, tmp_path):
    h5py = pytest.importorskip("h5py")
    be.mod.put(be.base, 2, "h-{}.h5", size=SIZE, object_type="hdf5", dedup_factor=2)
    for i in range(2):
        blob = be.read(be.base + f"h-{i}.h5")
        p = tmp_path / f"h-{i}.h5"
        p.write_bytes(blob)
        with h5py.File(p, "r") as f:
            assert list(f.keys()) == ["data"]
            d = f["data"][()]
        assert d.dtype == np.uint8 and d.shape == (SIZE,)
        assert d.tobytes() == blob[-SIZE:]  # contiguous, at the end of the file
        assert 0.45 < _unique_block_share(d.tobytes()) < 0.55


def test_put_hdf5_empty_and_tiny(local, tmp_path):
    h5py = pytest.importorskip("h5py")
    mod, path, base = local
    for size in (0, 1, 4097):
        mod.put(base, 1, f"s{size}.h5", size=size, object_type="HDF5")
        with h5py.File(os.path.join(path, f"s{size}.h5"), "r") as f:
            assert f["data"].shape == (size,)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097])
def test_put_exact_sizes(local, size):
    mod, path, base = local
    mod.put(base, 1, "x", size=size)
    assert os.path.getsize(os.path.join(path, "x")) == size  # the original made >= 4 KiB
    mod.put(base, 1, "y.npz", size=size, object_type="npz")
    with np.load(os.path.join(path, "y.npz")) as z:
        assert z["data"].shape == (size,)


# ---- put: dedup and compress factors measured ----
@pytest.mark.parametrize("dedup,compress", [(1, 1), (4, 1), (1, 3), (2, 4), (0, 0)])
def test_put_dedup_compress_factors(be, dedup, compress):
    size = 2 << 20
    be.mod.put(be.base, 1, "f", size=size, object_type="raw", dedup_factor=dedup,
               compress_factor=compress)
    blob = be.read(be.base + "f")
    assert len(blob) == size
    d, c = max(1, dedup), max(1, compress)
    assert _unique_block_share(blob) == pytest.approx(1 / d, rel=0.01)
    # zlib sees only 32 KiB back: measure compressibility on unique data, per block run
    unique = blob[:size // d]
    assert _zlib_ratio(unique) == pytest.approx(c, rel=0.15)


# ---- put: names, arguments ----
def test_put_uri_list(be):
    be.mod.put(be.base + "n", 3, "obj-{}-of-{}.dat", size=10)  # "/" added to the prefix
    assert be.names(be.base + "n/") == ["obj-0-of-3.dat", "obj-1-of-3.dat", "obj-2-of-3.dat"]
    be.mod.put(be.base + "d/", 2, size=10)  # template None: 0.9.90's "object-{}"
    assert be.names(be.base + "d/") == ["object-0", "object-1"]
    be.mod.put(be.base + "zero/", 0, "x{}", size=10)
    assert be.names(be.base + "zero/") == []
    # the original's documented "sample_{:06d}.npz" (its code left the field as written)
    be.mod.put(be.base + "fmt/", 2, "sample_{:06d}_{:>3}.npz", size=10)
    assert be.names(be.base + "fmt/") == ["sample_000000_  2.npz", "sample_000001_  2.npz"]


def test_put_positional_forms(local):
    mod, path, base = local
    # 0.9.1 order: ..., compress_factor, data_gen_mode, chunk_size
    mod.put(base, 1, "a{}", 4, 100, False, "raw", 1, 1, "single-pass", 4096)
    # 0.9.90 order: ..., compress_factor, data_gen_algorithm, data_gen_mode, chunk_size
    mod.put(base, 1, "b{}", 4, 100, False, "raw", 1, 1, "random", "streaming", 8192)
    mod.put(base, 1, "c{}", size=100, data_gen_algorithm="prand", data_gen_mode="streaming")
    assert sorted(os.listdir(path)) == ["a0", "b0", "c0"]


@pytest.mark.parametrize("kwargs,exc", [
    ({"max_in_flight": 0}, ValueError), ({"size": -1}, ValueError),
    ({"data_gen_mode": "invalidmode"}, ValueError),
    ({"data_gen_algorithm": "bogus"}, ValueError), ({"chunk_size": 0}, ValueError),
    ({"template": "same"}, ValueError), ({"num": -1}, ValueError),
    ({"template": "o{:q}"}, ValueError),
    ({"size": "big"}, TypeError), ({"object_type": 3}, TypeError),
])
def test_put_bad_arguments(local, kwargs, exc):
    mod, path, base = local
    args = dict(prefix=base, num=2, template="o{}", size=10)
    args.update(kwargs)
    with pytest.raises(exc) as ei:
        mod.put(**args)
    if exc is ValueError:
        assert isinstance(ei.value, RuntimeError)
    assert os.listdir(path) == []


def test_put_prefix_needs_a_scheme(s3dlio_mod):
    with pytest.raises(RuntimeError) as ei:
        s3dlio_mod.put("bucket/prefix", 1, "x")
    assert isinstance(ei.value, ValueError)


def test_put_failure_names_the_uri(local, data):
    mod = local[0]
    with pytest.raises(PermissionError) as ei:
        mod.put("file:///etc/s3dlio-test/", 2, "x{}", size=10)
    assert isinstance(ei.value, RuntimeError) and "/etc/s3dlio-test/x0" in str(ei.value)


def test_put_should_create_bucket(be):
    if be.kind != "s3":
        mod, base = be.mod, be.base
        mod.put(base + "made/deeper/", 1, "x", size=10, should_create_bucket=True)
        assert be.read(base + "made/deeper/x") is not None
        return
    be.mod.put(f"s3://{NEW_BUCKET}/p/", 2, "o{}", size=1000, should_create_bucket=True)
    assert be.names(f"s3://{NEW_BUCKET}/p/") == ["o0", "o1"]
    be.mod.put(f"s3://{NEW_BUCKET}/p/", 1, "again", size=10, should_create_bucket=True)


def test_put_async(be):
    async def main():
        fut = be.mod.put_async(be.base, 4, "a-{}", size=5000, object_type="npz")
        assert await fut is None
        return await be.mod.put_async(be.base + "b/", 1, "x", max_in_flight=1, size=10)
    assert asyncio.run(main()) is None
    assert be.names(be.base)[:4] == ["a-0", "a-1", "a-2", "a-3"]
    assert be.names(be.base + "b/") == ["x"]


def test_put_async_checks_arguments_at_once(local):
    mod, path, base = local

    async def main():
        with pytest.raises(ValueError):
            mod.put_async(base, 1, "x", data_gen_mode="nope")
    asyncio.run(main())
    with pytest.raises(RuntimeError):  # no running event loop, as the original
        mod.put_async(base, 1, "x", size=1)


# ---- put_many ----
def test_put_many(be):
    mod = be.mod
    payloads = [os.urandom(n) for n in (0, 1, 70000, (6 << 20) + 5)]
    items = [(be.base + f"m{i}.bin", p) for i, p in enumerate(payloads)]
    forms = [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, dtype=np.uint8)]
    items = [(u, f(p)) for (u, p), f in zip(items, forms)]
    assert mod.put_many(items, max_in_flight=2) is None
    for (u, _), p in zip(items, payloads):
        assert be.read(u) == p
    mod.put_many([(be.base + "from-view.bin", mod.get(items[2][0]))])
    assert be.read(be.base + "from-view.bin") == payloads[2]

    async def main():
        return await mod.put_many_async([(be.base + "async.bin", b"async")])
    assert asyncio.run(main()) is None
    assert be.read(be.base + "async.bin") == b"async"


def test_put_many_failure(local):
    mod, path, base = local
    items = [(base + "ok.bin", b"ok"), ("file:///etc/s3dlio-nope.bin", b"no"),
             (base + "ok2.bin", b"ok2")]
    with pytest.raises(RuntimeError) as ei:
        mod.put_many(items, max_in_flight=1)
    assert isinstance(ei.value, PermissionError) and "s3dlio-nope.bin" in str(ei.value)
    assert open(os.path.join(path, "ok.bin"), "rb").read() == b"ok"
    for bad in (["x"], [("u", "text")], [(1, b"x")], "file:///x"):
        with pytest.raises(TypeError):
            mod.put_many(bad)
    with pytest.raises(ValueError):
        mod.put_many([], max_in_flight=0)


# ---- generate_data and friends ----
def test_generate_data(s3dlio_mod):
    v = s3dlio_mod.generate_data(1 << 20)
    assert isinstance(v, s3dlio_mod.BytesView) and len(v) == 1 << 20
    b = bytes(memoryview(v))
    assert _zlib_ratio(b) < 1.01 and _unique_block_share(b) == 1.0
    assert bytes(s3dlio_mod.generate_data(1 << 20)) != b  # fresh data each call
    assert len(s3dlio_mod.generate_data(0)) == 0
    assert len(s3dlio_mod.generate_data(4097)) == 4097


@pytest.mark.parametrize("dedup,compress", [(2, 1), (1, 3), (2, 3), (8, 2)])
def test_generate_data_factors(s3dlio_mod, dedup, compress):
    size = 1 << 20
    b = bytes(s3dlio_mod.generate_data(size, dedup=dedup, compress=compress))
    assert len(b) == size
    assert _unique_block_share(b) == pytest.approx(1 / dedup, rel=0.01)
    assert _zlib_ratio(b[:size // dedup]) == pytest.approx(compress, rel=0.15)


@pytest.mark.parametrize("threads", [None, 1, 2, 4])
def test_generate_data_with_threads(s3dlio_mod, threads):
    size = 24 << 20  # large enough to be split between threads
    v = s3dlio_mod.generate_data_with_threads(size, dedup=3, compress=2, threads=threads)
    b = bytes(v)
    assert len(b) == size
    assert _unique_block_share(b) == pytest.approx(1 / 3, rel=0.01)
    assert _zlib_ratio(b[:size // 3]) == pytest.approx(2, rel=0.15)
    # the threads' ranges do not repeat each other
    n = size // 3 // BLOCK
    assert len({b[i * BLOCK:(i + 1) * BLOCK] for i in range(n)}) == n


def test_generate_into_buffer(s3dlio_mod):
    buf = bytearray(512 * 1024)
    addr = s3dtest.buffer_address(buf)
    assert s3dlio_mod.generate_into_buffer(buf, dedup=2, compress=3) == len(buf)
    assert s3dtest.buffer_address(buf) == addr and len(buf) == 512 * 1024
    assert _unique_block_share(bytes(buf)) == pytest.approx(0.5, rel=0.01)
    arr = np.zeros((64, 1024), dtype=np.float32)  # any C-contiguous buffer, in place
    assert s3dlio_mod.generate_into_buffer(arr) == arr.nbytes
    assert np.count_nonzero(arr.view(np.uint32)) > arr.size * 0.99
    mv = memoryview(bytearray(10000))
    assert s3dlio_mod.generate_into_buffer(mv[100:200]) == 100
    assert bytes(mv[:100]) == bytes(100) and bytes(mv[200:]) == bytes(9800)
    assert s3dlio_mod.generate_into_buffer(bytearray()) == 0


def test_generate_into_buffer_refuses(s3dlio_mod):
    with pytest.raises(ValueError):
        s3dlio_mod.generate_into_buffer(b"read-only bytes")
    with pytest.raises(ValueError):
        s3dlio_mod.generate_into_buffer(np.zeros((8, 8), dtype=np.uint8)[:, ::2])
    with pytest.raises(TypeError):
        s3dlio_mod.generate_into_buffer("text")
    with pytest.raises(ValueError):
        s3dlio_mod.generate_data(-1)
    with pytest.raises(TypeError):
        s3dlio_mod.generate_data(1.5)


def test_cpu_helpers(s3dlio_mod):
    total = s3dlio_mod.py_total_cpus()
    default = s3dlio_mod.py_default_data_gen_threads()
    assert isinstance(total, int) and total >= 1
    assert default == max(1, total // 2)
