"""The original 0.9.1's writers on this package (issue 10): PyWriterOptions, the
create_*_writer streaming writers (plain and zstd, stored under ".zst") and
MultipartUploadWriter (write, reserve/commit, close, abort, with-blocks), on file://,
direct:// and s3:// (s3rver through s3dliod). Objects are read back without s3dlio (the
file itself, boto3) and decompressed by the zstd CLI when it is installed. Real servers, no
mocks."""
import os
import re
import shutil
import subprocess

import pytest

import cloudemu
import s3dtest

BUCKET = "compat-writers"


# ---- backends: where objects go, and how to read them back independently ----
@pytest.fixture(scope="module")
def local_srv(data):
    srv = s3dtest.start_server([data.allow, "direct://" + data.root + "/"], threads=2)
    yield srv
    cloudemu.stop_server(srv)


@pytest.fixture(scope="module")
def s3_emu(tmp_path_factory):
    e = cloudemu.s3rver(str(tmp_path_factory.mktemp("s3rver-writers")), [BUCKET])
    yield e
    e.stop()


@pytest.fixture(scope="module")
def s3_srv(s3_emu):
    srv = cloudemu.s3_server(s3_emu, [BUCKET])
    yield srv
    cloudemu.stop_server(srv)


class Backend:
    def __init__(self, mod, kind, base, read):
        self.mod, self.kind, self.base, self._read = mod, kind, base, read

    def uri(self, name):
        return self.base + name

    def read(self, uri):
        """The stored bytes, read without s3dlio; None when there is no object."""
        return self._read(uri)


@pytest.fixture(params=["file", "direct", "s3"])
def be(request, s3dlio_mod, scratch):
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:80]
    if request.param == "s3":
        emu = request.getfixturevalue("s3_emu")
        srv = request.getfixturevalue("s3_srv")
        boto = cloudemu.boto_s3(emu.endpoint)

        def read(uri):
            key = uri[len(f"s3://{BUCKET}/"):]
            try:
                return boto.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            except boto.exceptions.NoSuchKey:
                return None
        s3dlio_mod.connect(srv.tcp_url)
        return Backend(s3dlio_mod, "s3", f"s3://{BUCKET}/{name}/", read)
    srv = request.getfixturevalue("local_srv")
    path, _ = scratch
    s3dlio_mod.connect(srv.tcp_url)

    def read(uri):
        p = uri.split("://", 1)[1]
        if not os.path.exists(p):
            return None
        with open(p, "rb") as f:
            return f.read()
    return Backend(s3dlio_mod, request.param, f"{request.param}://{path}/", read)


@pytest.fixture
def fs(s3dlio_mod, local_srv, scratch):
    """s3dlio connected to the local server, and a scratch (path, file:// base)."""
    s3dlio_mod.connect(local_srv.tcp_url)
    return s3dlio_mod, scratch[0], scratch[1]


def _unzstd(blob):
    """zstd frames decompressed by the zstd CLI (independent of the package), else by the
    package's own decoder."""
    if shutil.which("zstd"):
        r = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True,
                           env=cloudemu.node_env())  # no sanitizer runtime preloaded
        return r.stdout
    import s3dlio
    return s3dlio._core.zstd_decompress(blob)


def _payload(n, seed):
    """n bytes mixing random and compressible runs."""
    rnd = os.urandom(n // 2)
    return (rnd + bytes([seed & 0xFF]) * (n - len(rnd)))[:n]


def _writer_for(mod, kind):
    return {"file": mod.create_filesystem_writer, "direct": mod.create_direct_filesystem_writer,
            "s3": mod.create_s3_writer}[kind]


# ---- PyWriterOptions ----
def test_writer_options(s3dlio_mod):
    o = s3dlio_mod.PyWriterOptions()
    assert o.with_compression("zstd", 5) is None  # in place, as the original
    assert (o.compression, o.compression_level) == ("zstd", 5)
    o.with_compression("ZSTD")  # any case; level defaults to 3
    assert o.compression_level == 3
    o.with_compression("zstd", 99)  # clamped as zstd clamps
    assert o.compression_level == 22
    o.with_compression("None", None)
    assert o.compression == "none"
    assert o.with_buffer_size(1 << 20) is None and o.buffer_size == 1 << 20
    for bad in ("gzip", "", "lz4"):
        with pytest.raises(RuntimeError) as ei:
            o.with_compression(bad, None)
        assert isinstance(ei.value, ValueError)
        assert str(ei.value) == "Unsupported compression type: %s" % bad
    with pytest.raises(TypeError):
        o.with_compression(3)
    with pytest.raises(ValueError):
        o.with_buffer_size(-1)


# ---- streaming writers: round trips on every backend ----
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_streaming_writer_roundtrip(be, compression):
    import numpy as np

    mod = be.mod
    opts = mod.PyWriterOptions()
    opts.with_compression(compression, 3 if compression == "zstd" else None)
    uri = be.uri("stream.bin")
    w = _writer_for(mod, be.kind)(uri, opts)
    pieces = [_payload(5 << 20, 1), bytearray(_payload(3000, 2)),
              memoryview(_payload(2 << 20, 3)), np.arange(1000, dtype=np.float32), b""]
    want = b"".join(bytes(memoryview(p).cast("B")) for p in pieces)
    for i, p in enumerate(pieces):
        (w.write_chunk if i % 2 else w.write_owned_bytes)(p)
    assert w.bytes_written() == len(want)
    assert w.checksum() == "crc32c:%08x" % s3dtest.crc32c(want)
    stored_uri = uri + (".zst" if compression == "zstd" else "")
    assert w.uri == stored_uri
    assert be.read(stored_uri) is None, "nothing may be stored before finalize()"
    written, stored = w.finalize()
    blob = be.read(stored_uri)
    assert blob is not None and written == len(want) and stored == len(blob)
    if compression == "zstd":
        assert be.read(uri) is None  # only the .zst name
        assert stored < written
        assert _unzstd(blob) == want
    else:
        assert blob == want
    # after finalize: stats stay, writes and a second finalize raise (RuntimeError family)
    assert (w.bytes_written(), w.compressed_bytes()) == (written, stored)
    assert w.checksum() == "crc32c:%08x" % s3dtest.crc32c(want)
    with pytest.raises(RuntimeError, match="finalized"):
        w.write_chunk(b"x")
    with pytest.raises(RuntimeError, match="finalized"):
        w.write_owned_bytes(b"x")
    with pytest.raises(RuntimeError, match="already finalized"):
        w.finalize()
    assert be.read(stored_uri) == blob


def test_streaming_writer_empty_objects(be):
    mod = be.mod
    w = _writer_for(mod, be.kind)(be.uri("empty.bin"))
    assert w.finalize() == (0, 0)
    assert be.read(be.uri("empty.bin")) == b""
    o = mod.PyWriterOptions()
    o.with_compression("zstd", None)
    w = _writer_for(mod, be.kind)(be.uri("empty-z.bin"), o)
    written, stored = w.finalize()
    blob = be.read(be.uri("empty-z.bin.zst"))
    assert written == 0 and stored == len(blob) > 0 and _unzstd(blob) == b""


def test_streaming_writer_never_finalized_stores_nothing(fs):
    mod, path, base = fs
    w = mod.create_filesystem_writer(base + "dropped.bin")
    w.write_chunk(b"abc" * 1000)
    del w
    assert not os.path.exists(os.path.join(path, "dropped.bin"))


def test_streaming_writer_zst_name_not_doubled(fs):
    mod, path, base = fs
    o = mod.PyWriterOptions()
    o.with_compression("zstd", 1)
    for name, stored in [("a.bin", "a.bin.zst"), ("b", "b.zst"), ("c.zst", "c.zst")]:
        w = mod.create_filesystem_writer(base + name, o)
        w.write_chunk(b"A" * 8192)
        w.finalize()
        with open(os.path.join(path, stored), "rb") as f:
            assert _unzstd(f.read()) == b"A" * 8192
    assert sorted(os.listdir(path)) == ["a.bin.zst", "b.zst", "c.zst"]


def test_streaming_writer_compression_ratio(fs):
    mod, path, base = fs
    o = mod.PyWriterOptions()
    o.with_compression("zstd", 3)
    w = mod.create_filesystem_writer(base + "ratio", o)
    w.write_owned_bytes(b"A" * 8192)
    written, stored = w.finalize()
    assert written == 8192 and os.path.getsize(os.path.join(path, "ratio.zst")) == stored
    assert written / stored > 10


@pytest.mark.parametrize("fn,uri", [
    ("create_s3_writer", "file:///tmp/x"), ("create_azure_writer", "s3://b/k"),
    ("create_filesystem_writer", "s3://b/k"), ("create_filesystem_writer", "/plain/path"),
    ("create_direct_filesystem_writer", "s3://b/k"), ("create_gcs_writer", "file:///x"),
    ("create_s3_writer", "s3://bucket/"), ("create_s3_writer", "s3://bucket"),
    ("create_filesystem_writer", "file://"), ("create_azure_writer", "az://acct/cont/"),
])
def test_writer_scheme_mismatch_is_refused(s3dlio_mod, fn, uri):
    with pytest.raises(RuntimeError) as ei:
        getattr(s3dlio_mod, fn)(uri)
    assert isinstance(ei.value, ValueError) and repr(uri) in str(ei.value)


def test_direct_writer_takes_file_uris(fs):
    mod, path, base = fs
    w = mod.create_direct_filesystem_writer(base + "via-direct.bin", None)
    w.write_chunk(b"q" * 5000)
    assert w.finalize() == (5000, 5000)
    with open(os.path.join(path, "via-direct.bin"), "rb") as f:
        assert f.read() == b"q" * 5000


def test_writer_refuses_non_buffers(fs):
    mod, _, base = fs
    w = mod.create_filesystem_writer(base + "x.bin")
    with pytest.raises(TypeError):
        w.write_chunk("text")
    with pytest.raises(TypeError):
        w.write_chunk(12)
    with pytest.raises(TypeError):
        mod.create_filesystem_writer(base + "y.bin", {"compression": "zstd"})


# ---- MultipartUploadWriter ----
def test_multipart_write_roundtrip(be):
    import numpy as np

    mod = be.mod
    uri = be.uri("mpu.bin")
    w = mod.MultipartUploadWriter.from_uri(uri, part_size=5 << 20, max_in_flight=4)
    view_src = be.uri("src.bin")
    mod.put_bytes(view_src, _payload(70000, 9))
    pieces = [_payload(6 << 20, 4), bytearray(b"tail" * 10), np.arange(3000, dtype=np.int32),
              memoryview(_payload(1 << 20, 5))[1000:], mod.get(view_src), b""]
    want = b"".join(bytes(memoryview(p).cast("B")) for p in pieces)
    for p in pieces:
        assert w.write(p) == len(memoryview(p).cast("B"))
    w.flush()
    assert w.total_bytes == len(want)
    assert be.read(uri) is None, "nothing may be stored before close()"
    info = w.close()
    assert be.read(uri) == want
    assert set(info) == {"etag", "total_bytes", "parts", "started_at", "completed_at"}
    assert info["total_bytes"] == len(want)
    assert info["parts"] == -(-len(want) // (5 << 20)) == 2
    assert isinstance(info["etag"], str) and info["etag"]
    assert info["started_at"] <= info["completed_at"]
    with pytest.raises(RuntimeError, match="already closed"):
        w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.write(b"x")
    with pytest.raises(RuntimeError, match="closed"):
        w.reserve(1)
    w.abort()  # harmless after close
    assert be.read(uri) == want


def test_multipart_reserve_commit(be):
    mod = be.mod
    uri = be.uri("reserve.bin")
    w = mod.MultipartUploadWriter.from_uri(uri)
    mv = w.reserve(1 << 20)
    assert isinstance(mv, memoryview) and not mv.readonly and len(mv) == 1 << 20
    # the view is the writer's own buffer (no copy at commit)
    assert s3dtest.buffer_address(mv) == s3dtest.buffer_address(w._buf.buf)
    mv[:] = b"\xab" * (1 << 20)
    with pytest.raises(RuntimeError, match="pending"):
        w.reserve(10)
    with pytest.raises(RuntimeError, match="pending"):
        w.write(b"x")
    with pytest.raises(RuntimeError) as ei:
        w.commit((1 << 20) + 1)
    assert isinstance(ei.value, ValueError) and "exceeds reserved size" in str(ei.value)
    w.commit(1 << 20)  # still pending after the refused commit
    with pytest.raises(ValueError):
        mv[0]  # the view is spent
    with pytest.raises(RuntimeError, match="no pending buffer"):
        w.commit(1)
    mv = w.reserve(100)
    mv[:10] = b"0123456789"
    w.commit(10)
    mv = w.reserve(0)
    assert len(mv) == 0
    w.commit(0)
    w.write(b"end")
    info = w.close()
    want = b"\xab" * (1 << 20) + b"0123456789end"
    assert info["total_bytes"] == len(want) and be.read(uri) == want


def test_multipart_reserve_view_kept_by_caller(fs):
    import numpy as np

    mod, path, base = fs
    w = mod.MultipartUploadWriter.from_uri(base + "kept.bin")
    mv = w.reserve(4096)
    arr = np.frombuffer(mv, dtype=np.uint8)  # a derived view outlives commit()
    mv[:] = b"k" * 4096
    w.commit(100)
    w.write(b"after" * 1000)  # the buffer moves instead of growing under arr
    assert arr.size == 4096
    w.close()
    with open(os.path.join(path, "kept.bin"), "rb") as f:
        assert f.read() == b"k" * 100 + b"after" * 1000


def test_multipart_close_drops_pending_reservation(fs):
    mod, path, base = fs
    w = mod.MultipartUploadWriter.from_uri(base + "pending.bin")
    w.write(b"kept")
    mv = w.reserve(50)
    mv[:] = b"z" * 50
    assert w.close()["total_bytes"] == 4
    with open(os.path.join(path, "pending.bin"), "rb") as f:
        assert f.read() == b"kept"


def test_multipart_with_block(be):
    mod = be.mod
    ok, bad = be.uri("with-ok.bin"), be.uri("with-bad.bin")
    with mod.MultipartUploadWriter.from_uri(ok) as w:
        w.write(b"complete")
    assert be.read(ok) == b"complete"
    with pytest.raises(KeyError):
        with mod.MultipartUploadWriter.from_uri(bad) as w:
            w.write(b"partial" * 1000)
            raise KeyError("boom")
    assert be.read(bad) is None, "an exception inside with must store nothing"


def test_multipart_abort_stores_nothing(fs):
    mod, path, base = fs
    w = mod.MultipartUploadWriter.from_uri(base + "aborted.bin")
    w.write(b"x" * 100)
    w.reserve(10)
    w.abort()
    w.abort()
    with pytest.raises(RuntimeError, match="closed"):
        w.write(b"y")
    with pytest.raises(RuntimeError, match="already closed"):
        w.close()
    assert not os.path.exists(os.path.join(path, "aborted.bin"))


def test_multipart_dropped_unclosed_stores_nothing(fs):
    mod, path, base = fs
    w = mod.MultipartUploadWriter.from_uri(base + "dropped.bin", abort_on_drop=False)
    w.write(b"x" * 100)
    del w
    assert not os.path.exists(os.path.join(path, "dropped.bin"))


def test_multipart_dlio_adapter_pattern(fs):
    """The DLIO storage adapter's put_data for objects >= 32 MiB: from_uri, 16 MiB pieces."""
    mod, path, base = fs
    content = os.urandom(1 << 20) * 40  # 40 MiB
    part = 16 << 20
    w = mod.MultipartUploadWriter.from_uri(base + "dlio.npz", part_size=part, max_in_flight=8,
                                           abort_on_drop=True)
    for off in range(0, len(content), part):
        w.write(content[off:off + part])
    info = w.close()
    assert info["total_bytes"] == len(content) and info["parts"] == 3
    with open(os.path.join(path, "dlio.npz"), "rb") as f:
        assert f.read() == content


def test_multipart_bucket_key_form(be):
    if be.kind != "s3":
        pytest.skip("bucket + key names an s3:// object")
    mod = be.mod
    key = be.base[len(f"s3://{BUCKET}/"):] + "by-key.bin"
    w = mod.MultipartUploadWriter(BUCKET, key, part_size=8 << 20, max_in_flight=2,
                                  content_type="application/octet-stream")
    w.write(b"bucket and key")
    assert w.close()["total_bytes"] == 14
    assert be.read(f"s3://{BUCKET}/{key}") == b"bucket and key"


@pytest.mark.parametrize("kwargs", [{"part_size": 1 << 20}, {"part_size": (5 << 20) - 1},
                                    {"part_size": 0}, {"max_in_flight": 0}])
def test_multipart_bad_options(s3dlio_mod, kwargs):
    with pytest.raises(RuntimeError) as ei:
        s3dlio_mod.MultipartUploadWriter.from_uri("file:///tmp/x.bin", **kwargs)
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("uri", ["s3://bucket", "s3://bucket/", "nothing", "file://",
                                 "s3:///key"])
def test_multipart_bad_uris(s3dlio_mod, uri):
    with pytest.raises(RuntimeError) as ei:
        s3dlio_mod.MultipartUploadWriter.from_uri(uri)
    assert isinstance(ei.value, ValueError)


def test_multipart_bad_arguments(fs):
    mod, _, base = fs
    with pytest.raises(ValueError):
        mod.MultipartUploadWriter("a/b", "key")
    with pytest.raises(ValueError):
        mod.MultipartUploadWriter("bucket", "")
    w = mod.MultipartUploadWriter.from_uri(base + "args.bin")
    with pytest.raises(TypeError):
        w.write("text")
    with pytest.raises(ValueError):
        w.reserve(-1)
    mv = w.reserve(4)
    with pytest.raises(ValueError):
        w.commit(-1)
    mv[:] = b"abcd"
    w.commit(4)
    assert w.close()["total_bytes"] == 4


# ---- threads: each writer serializes its calls ----
def _race_close(write, close, chunk):
    """Writes chunk from a thread while close() runs, until a write raises; returns (bytes
    accepted before, what that write raised)."""
    import threading
    accepted, ended = [], []
    started = threading.Event()

    def writer():
        started.set()
        while True:
            try:
                write(chunk)
            except BaseException as e:  # noqa: B902 (returned)
                ended.append(e)
                return
            accepted.append(len(chunk))
    t = threading.Thread(target=writer)
    t.start()
    started.wait()
    close()
    t.join()
    return sum(accepted), ended[0]


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_streaming_writer_from_threads(fs, compression):
    mod, path, base = fs
    o = mod.PyWriterOptions()
    o.with_compression(compression, 1)
    w = mod.create_filesystem_writer(base + "threads.bin", o)
    size, count = 1 << 18, 12
    chunks = s3dtest.threaded_chunks(4, count, size)
    s3dtest.in_threads(lambda t: [w.write_chunk(chunks[(t, i)]) for i in range(count)], 4)
    written, stored = w.finalize()
    assert written == 4 * count * size
    with open(w.uri.split("://", 1)[1], "rb") as f:
        blob = f.read()
    assert len(blob) == stored
    data = _unzstd(blob) if compression == "zstd" else blob
    s3dtest.check_interleaving(data, chunks, size)
    assert w.checksum() == "crc32c:%08x" % mod.crc32c(data)


def test_multipart_writer_from_threads(fs):
    mod, path, base = fs
    w = mod.MultipartUploadWriter.from_uri(base + "mpu-threads.bin")
    size, count = 1 << 16, 50
    chunks = s3dtest.threaded_chunks(4, count, size)

    def retry(call, *args):
        # calls are serialized, reserve/commit pairs are not: another thread's reservation
        # may be pending, which write() and reserve() refuse
        while True:
            try:
                return call(*args)
            except RuntimeError as e:
                assert "pending" in str(e)

    def work(t):
        for i in range(count):
            if i % 2:
                assert retry(w.write, chunks[(t, i)]) == size
            else:
                mv = retry(w.reserve, size)
                mv[:] = chunks[(t, i)]
                w.commit(size)
    s3dtest.in_threads(work, 4)
    assert w.close()["total_bytes"] == 4 * count * size
    with open(os.path.join(path, "mpu-threads.bin"), "rb") as f:
        s3dtest.check_interleaving(f.read(), chunks, size)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_streaming_writer_write_racing_finalize(fs, compression):
    """A write_chunk either lands in the stored object or raises (finalized): none is lost."""
    mod, path, base = fs
    o = mod.PyWriterOptions()
    o.with_compression(compression, 1)
    w = mod.create_filesystem_writer(base + "race.bin", o)
    w.write_chunk(bytes(64 << 20))
    n, err = _race_close(w.write_chunk, w.finalize, b"y" * 65536)
    assert isinstance(err, RuntimeError) and "finalized" in str(err)
    assert w.bytes_written() == (64 << 20) + n
    with open(w.uri.split("://", 1)[1], "rb") as f:
        blob = f.read()
    data = _unzstd(blob) if compression == "zstd" else blob
    assert len(data) == (64 << 20) + n and data[64 << 20:] == b"y" * n


def test_multipart_write_racing_close(fs):
    mod, path, base = fs
    w = mod.MultipartUploadWriter.from_uri(base + "mpu-race.bin")
    w.write(bytes(64 << 20))
    n, err = _race_close(w.write, w.close, b"y" * 65536)
    assert isinstance(err, RuntimeError) and "closed" in str(err)
    assert os.path.getsize(os.path.join(path, "mpu-race.bin")) == (64 << 20) + n


# ---- az:// (Azurite) and gs:// (the firebase storage emulator): the same calls ----
CLOUD = "compat-writers"


@pytest.fixture(scope="module")
def az_backend(tmp_path_factory):
    e = cloudemu.azurite(str(tmp_path_factory.mktemp("azurite-writers")))
    peer = cloudemu.AzureClient(e.endpoint + "/" + cloudemu.AZ_ACCOUNT)
    peer.create_container(CLOUD)
    srv = s3dtest.start_server([f"az://{cloudemu.AZ_ACCOUNT}/{CLOUD}/"], threads=2,
                               extra=cloudemu.CLOUD_FLAGS,
                               env=cloudemu.az_env(f"{e.endpoint}/{cloudemu.AZ_ACCOUNT}"))
    yield srv, peer
    cloudemu.stop_server(srv)
    e.stop()


@pytest.fixture(scope="module")
def gs_backend():
    e = cloudemu.gcs()
    srv = s3dtest.start_server([f"gs://{CLOUD}/"], threads=2, extra=cloudemu.CLOUD_FLAGS,
                               env=cloudemu.gs_env(e.endpoint))
    yield srv, cloudemu.GcsClient(e.endpoint)
    cloudemu.stop_server(srv)
    e.stop()


@pytest.fixture(params=["az", "gs"])
def cloud(request, s3dlio_mod):
    import urllib.parse

    srv, peer = request.getfixturevalue(request.param + "_backend")
    s3dlio_mod.connect(srv.tcp_url)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:80]
    if request.param == "az":
        root = f"az://{cloudemu.AZ_ACCOUNT}/{CLOUD}/"

        def read(uri):
            st, body, _ = peer.request("GET", f"{CLOUD}/{uri[len(root):]}")
            return body if st == 200 else None
        writer = s3dlio_mod.create_azure_writer
    else:
        root = f"gs://{CLOUD}/"

        def read(uri):
            key = urllib.parse.quote(uri[len(root):], safe="")
            st, body, _ = peer.request("GET", f"/storage/v1/b/{CLOUD}/o/{key}", {"alt": "media"})
            return body if st == 200 else None
        writer = s3dlio_mod.create_gcs_writer
    b = Backend(s3dlio_mod, request.param, f"{root}{name}/", read)
    b.writer = writer
    return b


def test_cloud_writers(cloud):
    mod = cloud.mod
    data = _payload((7 << 20) + 11, 7)
    o = mod.PyWriterOptions()
    o.with_compression("zstd", 3)
    w = cloud.writer(cloud.uri("s.bin"), o)
    for off in range(0, len(data), 1 << 20):
        w.write_chunk(memoryview(data)[off:off + (1 << 20)])
    assert cloud.read(cloud.uri("s.bin.zst")) is None
    written, stored = w.finalize()
    blob = cloud.read(cloud.uri("s.bin.zst"))
    assert written == len(data) and stored == len(blob) and _unzstd(blob) == data

    w = mod.MultipartUploadWriter.from_uri(cloud.uri("m.bin"), part_size=5 << 20)
    mv = w.reserve(len(data))
    mv[:] = data
    w.commit(len(data))
    w.write(b"!")
    info = w.close()
    assert info["parts"] == 2 and cloud.read(cloud.uri("m.bin")) == data + b"!"
    with pytest.raises(RuntimeError):
        with mod.MultipartUploadWriter.from_uri(cloud.uri("never.bin")) as w:
            w.write(data)
            raise RuntimeError("inside with")
    assert cloud.read(cloud.uri("never.bin")) is None


def test_cloud_put_and_formats(cloud):
    import io

    import numpy as np

    mod = cloud.mod
    mod.put(cloud.base, 2, "o{}.npz", size=100_000, object_type="npz", compress_factor=2)
    for i in range(2):
        with np.load(io.BytesIO(cloud.read(cloud.uri(f"o{i}.npz")))) as z:
            assert z["data"].shape == (100_000,)
        assert mod.read_npz(cloud.uri(f"o{i}.npz")).shape == (100_000,)
    mod.put(cloud.base, 1, "t.tfrecord", size=5000, object_type="tfrecord")
    assert mod.create_tfrecord_index(cloud.uri("t.tfrecord")) == 1
    assert cloud.read(cloud.uri("t.tfrecord.idx")) == b"0 5016\n"
    mod.put_many([(cloud.uri("pm.bin"), b"many")])
    assert cloud.read(cloud.uri("pm.bin")) == b"many"
