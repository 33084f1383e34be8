"""The original 0.9.1's core calls on this package (issue 10): exception classes that are both
precise and RuntimeError, stat's keys, get_object's forms, list/delete semantics, upload and
download, get_many_stats, the async twins, mp_get, the op-log and init_logging, the _pymod
name, zstd helpers, and the lazily imported framework names. Real server, no mocks."""
import asyncio
import logging
import os
import subprocess

import pytest

import s3dtest


# ---- exceptions ----
@pytest.mark.parametrize("name,builtin", [
    ("NotFoundError", FileNotFoundError), ("PermissionDeniedError", PermissionError),
    ("InvalidArgumentError", ValueError), ("ServerConnectionError", ConnectionError),
    ("RequestTimeoutError", TimeoutError)])
def test_precise_errors_are_also_runtime_errors(s3dlio_mod, name, builtin):
    cls = getattr(s3dlio_mod, name)
    assert issubclass(cls, builtin)
    assert issubclass(cls, s3dlio_mod.Error) and issubclass(cls, RuntimeError)
    assert cls is getattr(s3dlio_mod._core, name)


def test_missing_object_caught_both_ways(s3, data):
    uri = data.uri("sizes/none.bin")
    for exc in (FileNotFoundError, RuntimeError, s3.Error):
        with pytest.raises(exc) as ei:
            s3.get(uri)
        assert uri in str(ei.value)
        assert type(ei.value) is s3.NotFoundError


def test_failed_batch_is_runtime_error(s3, data):
    good, bad = data.uri(data.size_rel(1)), data.uri("sizes/none.bin")
    with pytest.raises(RuntimeError) as ei:
        s3.get_many([good, bad])
    assert bad in str(ei.value)


@pytest.mark.parametrize("uri", ["bogus://x/y", "file://relative/path", "s3://", "nothing"])
def test_bad_uri_is_value_and_runtime_error(s3, uri):
    with pytest.raises(ValueError) as ei:
        s3.get(uri)
    assert isinstance(ei.value, RuntimeError)


def test_refused_uri_is_permission_and_runtime_error(s3, data):
    with pytest.raises(RuntimeError) as ei:
        s3.get("file:///etc/hostname")
    assert isinstance(ei.value, PermissionError)


def test_unreachable_server_is_connection_and_runtime_error(s3dlio_mod):
    port = s3dtest.free_tcp_port()
    with pytest.raises(RuntimeError) as ei:
        s3dlio_mod.Client("tcp://127.0.0.1:%d" % port, connect_timeout=2).get("file:///x")
    assert isinstance(ei.value, ConnectionError)


# ---- stat, get_object ----
_ORIG_STAT_KEYS = {"size", "last_modified", "etag", "content_type", "content_language",
                   "content_encoding", "cache_control", "content_disposition", "expires",
                   "storage_class", "server_side_encryption", "ssekms_key_id",
                   "sse_customer_algorithm", "version_id", "replication_status", "metadata"}


def test_stat_has_the_original_keys(s3, data):
    d = s3.stat(data.uri(data.size_rel(4096)))
    assert _ORIG_STAT_KEYS <= set(d)
    assert d["size"] == 4096 and d["metadata"] == {} and d["mtime_ns"] > 0
    assert isinstance(d["etag"], str) and d["etag"]


def test_get_object_forms(s3, data):
    rel = data.size_rel(65537)
    want = data.bytes(rel)
    uri = data.uri(rel)
    assert bytes(s3.get_object(uri)) == want                    # later original: (uri)
    assert bytes(s3.get_object(uri, offset=None)) == want
    assert isinstance(s3.get_object(uri), s3.BytesView)
    with pytest.raises(TypeError):
        s3.get_object("just-a-name")
    with pytest.raises(ValueError):
        s3.get_object("a/b", "key")
    with pytest.raises(ValueError):
        s3.get_object("bucket", "")


def test_get_object_bucket_key_range_goes_to_s3(s3):
    # the server behind `s3` serves file:// only: the request must name s3://bucket/key
    with pytest.raises(PermissionError) as ei:
        s3.get_object("bkt", "dir/k.bin", 10, 20)
    assert "s3://bkt/dir/k.bin" in str(ei.value)


# ---- list ----
def test_list_objects_only_by_default(s3, data):
    base = data.uri("tree") + "/"
    got = s3.list(base)
    assert got == [base + n for n in ["a.bin", "b.txt", "prefix_x.bin", "sub1x.bin"]]
    assert all(bytes(s3.get(u)) == data.bytes("tree/" + u[len(base):]) for u in got)
    dirs = s3.list(base, include_dirs=True)
    assert set(dirs) - set(got) == {base + "prefixed/", base + "sub1/", base + "sub2/"}


def test_list_helpers(s3, data):
    base = data.uri("tree") + "/"
    assert s3.list_uris(base) == s3.list(base, recursive=True)
    assert s3.list_full_uris(base) == s3.list(base, recursive=True)
    assert s3.list_keys(base) == sorted(data.TREE)


# ---- delete ----
def test_delete_missing_is_not_an_error(s3, scratch):
    _, base = scratch
    assert s3.delete(base + "never.bin") is None


def test_delete_trailing_slash_deletes_one_level(s3, scratch):
    path, base = scratch
    for k in ("d/a.bin", "d/b.bin", "d/sub/c.bin", "d_sibling.bin"):
        s3.put_bytes(base + k, k.encode())
    s3.delete(base + "d/")
    assert s3.list(base, recursive=True) == [base + "d/sub/c.bin", base + "d_sibling.bin"]
    s3.delete(base + "d", recursive=True)
    assert s3.list(base, recursive=True) == [base + "d_sibling.bin"]


# ---- upload / download ----
def test_upload_download_roundtrip(s3, scratch, tmp_path):
    _, base = scratch
    src = tmp_path / "src"
    src.mkdir()
    files = {"a.bin": os.urandom(3 << 20), "b.npz": os.urandom(10), "c.txt": b"",
             "skip.tmp": b"not uploaded"}
    for n, b in files.items():
        (src / n).write_bytes(b)
    s3.upload([str(src / "a.bin"), str(src / "*.npz"), str(src) + r"/c\.t.t"], base + "up")
    assert s3.list(base + "up/") == sorted(base + "up/" + n for n in ("a.bin", "b.npz",
                                                                      "c.txt"))
    s3.upload([str(src)], base + "all/", max_in_flight=2)   # a directory: its files
    assert len(s3.list(base + "all/")) == 4
    dest = tmp_path / "dest"
    s3.download(base + "up/", str(dest))
    assert sorted(os.listdir(dest)) == ["a.bin", "b.npz", "c.txt"]
    for n in ("a.bin", "b.npz", "c.txt"):
        assert (dest / n).read_bytes() == files[n]
    with pytest.raises(FileNotFoundError):
        s3.upload([str(src / "nothing*.bin")], base + "x/")
    with pytest.raises(RuntimeError):
        s3.download(base + "empty/", str(tmp_path / "d2"))


def test_download_flat_names_and_collisions(s3, scratch, tmp_path):
    _, base = scratch
    s3.put_bytes(base + "t/x.bin", b"top")
    s3.put_bytes(base + "t/deep/y.bin", b"deep")
    d1 = tmp_path / "one"
    s3.download(base + "t/", str(d1), recursive=False)
    assert os.listdir(d1) == ["x.bin"]
    d2 = tmp_path / "all"
    s3.download(base + "t/", str(d2))
    assert sorted(os.listdir(d2)) == ["x.bin", "y.bin"]          # flattened, as the original
    s3.put_bytes(base + "t/deep/x.bin", b"clash")
    d3 = tmp_path / "clash"
    with pytest.raises(ValueError) as ei:
        s3.download(base + "t/", str(d3))
    assert "x.bin" in str(ei.value)
    assert not d3.exists() or os.listdir(d3) == []              # nothing half-done


# ---- batches, async, mp_get ----
def test_get_many_stats(s3, data):
    uris = [data.uri(data.small_rel(i)) for i in range(100)]
    n, total = s3.get_many_stats(uris, max_in_flight=7)
    assert n == 100 and total == sum(len(data.bytes(data.small_rel(i))) for i in range(100))


def test_async_twins(s3, data):
    rel = data.size_rel(65537)
    uris = [data.uri(data.small_rel(i)) for i in range(20)]

    async def main():
        fut = s3.get_async(data.uri(rel))
        assert isinstance(fut, asyncio.Future)          # started before it is awaited
        v = await fut
        assert bytes(v) == data.bytes(rel)
        pairs = await s3.get_many_async(uris, 4)
        assert [u for u, _ in pairs] == uris
        st = await s3.stat_async(data.uri(rel))
        assert st["size"] == 65537
        sts = await s3.stat_many_async(uris)
        assert [d["size"] for d in sts] == [len(data.bytes(data.small_rel(i)))
                                            for i in range(20)]
        assert await s3.get_many_stats_async(uris) == (20, sum(d["size"] for d in sts))
        assert bytes(await s3.get_range_async(data.uri(rel), 1, 3)) == data.bytes(rel)[1:4]
        assert await s3.exists_async(data.uri(rel)) is True
        with pytest.raises(FileNotFoundError):
            await s3.get_async(data.uri("sizes/none.bin"))
        return True

    assert asyncio.run(main())
    with pytest.raises(RuntimeError):       # no running loop: as the original's futures
        s3.get_async(data.uri(rel))


def test_put_bytes_async(s3, scratch):
    _, base = scratch

    async def main():
        await asyncio.gather(*(s3.put_bytes_async(base + "p%d" % i, b"x" * i)
                               for i in range(10)))
    asyncio.run(main())
    assert [len(s3.get(base + "p%d" % i)) for i in range(10)] == list(range(10))


def test_mp_get(s3, scratch):
    _, base = scratch
    for i in range(12):
        s3.put_bytes(base + "object_%d.dat" % i, b"z" * (100 + i))
    r = s3.mp_get(base, procs=3, jobs=4, num=12)
    assert r["total_objects"] == 12 and r["total_bytes"] == sum(100 + i for i in range(12))
    assert len(r["workers"]) == 3 and sum(w["objects"] for w in r["workers"]) == 12
    assert r["duration_seconds"] > 0 and r["ops_per_sec"] > 0
    with pytest.raises(FileNotFoundError):
        s3.mp_get(base, procs=2, jobs=2, num=13)


# ---- op-log, logging ----
def test_op_log_records_every_call(s3, scratch, tmp_path):
    _, base = scratch
    log = tmp_path / "ops.tsv.zst"
    assert not s3.is_op_log_active()
    s3.init_op_log(str(log))
    try:
        assert s3.is_op_log_active()
        s3.init_op_log(str(tmp_path / "ignored.zst"))      # once per process, as the original
        s3.put_bytes(base + "o.bin", b"12345")
        s3.get(base + "o.bin")
        s3.get_range(base + "o.bin", 1, 2)
        s3.stat(base + "o.bin")
        s3.list(base)
        with pytest.raises(FileNotFoundError):
            s3.get(base + "missing.bin")
        s3.delete(base + "o.bin")
    finally:
        s3.finalize_op_log()
    assert not s3.is_op_log_active()
    assert not (tmp_path / "ignored.zst").exists()
    # an independent decoder: the zstd command line tool
    text = subprocess.run(["zstd", "-dc", str(log)], check=True,
                          capture_output=True).stdout.decode()
    lines = text.splitlines()
    assert lines[0].split("\t") == ["idx", "thread", "op", "client_id", "n_objects", "bytes",
                                    "endpoint", "file", "error", "start", "first_byte", "end",
                                    "duration_ns"]
    rows = [ln.split("\t") for ln in lines[1:]]
    assert [r[2] for r in rows] == ["PUT", "GET", "GET_RANGE", "HEAD", "LIST", "GET", "DELETE"]
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    assert rows[0][5] == "5" and rows[1][5] == "5" and rows[2][5] == "2"
    assert rows[0][7] == base + "o.bin"
    assert "NotFoundError" in rows[5][8] and "missing.bin" in rows[5][8] and rows[1][8] == ""
    assert all(r[9].endswith("Z") and int(r[12]) >= 0 for r in rows)


def test_init_logging(s3dlio_mod):
    lg = logging.getLogger("s3dlio")
    old = lg.level
    try:
        s3dlio_mod.init_logging("debug")
        assert lg.level == logging.DEBUG
        s3dlio_mod.init_logging("WARN")
        assert lg.level == logging.WARNING
        s3dlio_mod.init_logging("nonsense")          # the original falls back to info
        assert lg.level == logging.INFO
        assert sum(getattr(h, "_s3dlio", False) for h in lg.handlers) == 1
    finally:
        lg.setLevel(old)


# ---- names ----
def test_pymod_is_the_package(s3dlio_mod):
    import s3dlio._pymod as core
    from s3dlio import _pymod
    assert core is s3dlio_mod and _pymod is s3dlio_mod


def test_lazy_framework_names_listed(s3dlio_mod):
    names = dir(s3dlio_mod)
    for n in ("S3IterableDataset", "S3MapDataset", "ObjectStoreIterableDataset",
              "S3JaxIterable", "make_tf_dataset"):
        assert n in names and n in s3dlio_mod.__all__


def test_import_does_not_import_torch():
    out = s3dtest.run_py("import sys, s3dlio; print('torch' in sys.modules)").stdout
    assert out.strip().splitlines()[-1] == "False"


# ---- zstd helpers ----
def test_zstd_roundtrip_and_limits(s3dlio_mod):
    c = s3dlio_mod._core
    data = os.urandom(5000) * 200
    z = c.zstd_compress(data, 7)
    assert len(z) < len(data) // 50 and c.zstd_decompress(z) == data
    k = c.ZstdCompressor(3)
    parts = [k.compress(data[i:i + 9999]) for i in range(0, len(data), 9999)] + [k.flush()]
    zz = b"".join(parts)
    assert c.zstd_decompress(zz) == data and c.zstd_decompress(zz + z) == data + data
    proc = subprocess.run(["zstd", "-dc"], input=zz, capture_output=True, check=True)
    assert proc.stdout == data                     # an independent decoder agrees
    for bad in (zz[:-1], b"not zstd", zz[:8]):
        with pytest.raises(ValueError):
            c.zstd_decompress(bad)
    with pytest.raises(ValueError):
        c.zstd_decompress(z, max_size=len(data) - 1)
    assert c.zstd_decompress(z, max_size=len(data)) == data
    with pytest.raises(ValueError):
        c.zstd_compress(b"x", 99)


def test_zstd_decompress_view(s3dlio_mod):
    c = s3dlio_mod._core
    data = os.urandom(7000) * 50
    k = c.ZstdCompressor(5)
    streamed = k.compress(data) + k.flush()              # no declared size
    one_shot = c.zstd_compress(data)                      # declared size
    for z, want in ((one_shot, data), (streamed, data), (one_shot + streamed, data + data),
                    (one_shot + one_shot, data + data)):
        v = c.zstd_decompress_view(z)
        assert isinstance(v, c.BytesView) and v == want
    assert len(c.zstd_decompress_view(b"")) == 0
    for bad in (one_shot[:-1], streamed[:-1], b"junk"):
        with pytest.raises(ValueError):
            c.zstd_decompress_view(bad)
    for z in (one_shot, streamed):
        with pytest.raises(ValueError):
            c.zstd_decompress_view(z, max_size=len(data) - 1)


def test_bytesview_indexing_like_bytes(s3, data):
    rel = data.size_rel(4096)
    want = data.bytes(rel)
    v = s3.get(data.uri(rel))
    assert v[0] == want[0] and v[-1] == want[-1]
    assert v[10:20] == want[10:20] and isinstance(v[10:20], bytes)
    assert v[::-7] == want[::-7] and v[5000:] == b""
    assert list(v)[:50] == list(want[:50])
    with pytest.raises(IndexError):
        v[4096]
    with pytest.raises(TypeError):
        v["0"]


def test_op_log_with_the_loader(s3, data, tmp_path):
    """The C prefetch engine takes the real client while an op-log wraps it."""
    log = tmp_path / "loader.zst"
    s3.init_op_log(str(log))
    try:
        items = list(s3.create_async_loader(data.uri("small") + "/"))
        assert len(items) == 500
    finally:
        s3.finalize_op_log()
    text = subprocess.run(["zstd", "-dc", str(log)], check=True,
                          capture_output=True).stdout.decode()
    assert "\tLIST\t" in text


def test_jax_iterable_numpy_only(s3, data):
    np = pytest.importorskip("numpy")
    base = data.uri("tree") + "/"
    it = s3.S3JaxIterable.from_prefix(base, shuffle=True, seed=3)
    arrays = list(it)
    assert len(arrays) == len(data.TREE)
    assert sorted(a.tobytes() for a in arrays) == sorted(data.bytes("tree/" + n)
                                                          for n in data.TREE)
    assert all(a.dtype == np.uint8 and not a.flags.writeable for a in arrays)
    w = list(s3.JaxIterable.from_prefix(base, writable=True,
                                        transform=lambda a: a[:1]))
    assert all(a.flags.writeable and len(a) == 1 for a in w)
    if s3dtest.run_py("import importlib.util as u; print(u.find_spec('tensorflow') is None)"
                      ).stdout.strip() == "True":
        with pytest.raises(ImportError):
            s3.make_tf_dataset(base)


def test_exists_of_a_directory_is_false(s3, data):
    assert s3.exists(data.uri("tree")) is False
    assert s3.exists(data.uri("tree") + "/") is False
    assert s3.exists(data.uri("tree/a.bin")) is True
    with pytest.raises(ValueError):
        s3.exists("bogus://x")


def test_put_bytes_takes_objects_with_dunder_bytes(s3, scratch):
    _, base = scratch

    class Custom:
        def __bytes__(self):
            return b"custom payload"

    s3.put_bytes(base + "c.bin", Custom())
    assert s3.get(base + "c.bin") == b"custom payload"
    with pytest.raises(TypeError):
        s3.put_bytes(base + "d.bin", object())
    with pytest.raises(TypeError):
        s3.put_bytes(base + "e.bin", "a str is not bytes")


def test_zstd_compressor_shared_by_threads():
    """One compressor fed from several threads at once (a writer used from threads): the C
    side serializes the calls, so nothing crashes (run in a child: a crash is a signal) and
    the compressor stays usable."""
    out = s3dtest.run_py("""
        import os, threading
        from s3dlio import _core as c
        k = c.ZstdCompressor(1)
        chunks = [os.urandom(1 << 20) for i in range(8)]  # incompressible: long calls
        def feed():
            for _ in range(25):
                for ch in chunks:
                    k.compress(ch)
                k.flush()
        ts = [threading.Thread(target=feed) for _ in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        whole = b"".join(chunks)
        z = b"".join(k.compress(ch) for ch in chunks) + k.flush()
        assert c.zstd_decompress(z, max_size=len(whole)) == whole
        print("ok")
    """, timeout=600)
    assert out.stdout.strip().endswith("ok")


def test_upload_refuses_two_files_with_one_name(s3, scratch, tmp_path):
    _, base = scratch
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "same.bin").write_bytes(d.encode())
    with pytest.raises(ValueError) as ei:
        s3.upload([str(tmp_path / "a" / "same.bin"), str(tmp_path / "b" / "same.bin")],
                  base + "dup/")
    assert "same.bin" in str(ei.value)
    assert s3.list(base + "dup/") == []                      # nothing stored


def test_download_files_get_the_umask_mode(s3, scratch, tmp_path):
    _, base = scratch
    s3.put_bytes(base + "m/x.bin", b"mode")
    s3.download(base + "m/", str(tmp_path / "out"))
    mode = os.stat(tmp_path / "out" / "x.bin").st_mode & 0o777
    old = os.umask(0)
    os.umask(old)
    assert mode == 0o666 & ~old


def test_upload_of_a_file_truncated_meanwhile_does_not_kill(s3dlio_mod, server, tmp_path):
    """Another program truncating a file while it uploads: the upload stores what it read
    (or fails cleanly); the process must not die of SIGBUS (as from a shared mapping)."""
    src = tmp_path / "big.bin"
    out = s3dtest.run_py(f"""
        import os, threading, time, s3dlio
        s3dlio.connect({server.tcp_url!r})
        p = {str(src)!r}
        for attempt in range(8):
            with open(p, "wb") as f:
                f.truncate(256 << 20)          # sparse: quick to read
            delay = 0.002 * (attempt + 1)
            t = threading.Thread(target=lambda: (time.sleep(delay), os.truncate(p, 0)))
            t.start()
            try:
                s3dlio.upload(p, "file://{tmp_path}/dst/")
            except Exception as e:
                print("raised", type(e).__name__)
            t.join()
        print("alive")
    """, check=False, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("alive"), out.stderr[-2000:]


def test_download_to_a_full_filesystem_raises(s3dlio_mod, server, data, tmp_path):
    """A full disk is an OSError (ENOSPC) naming the file, never a SIGBUS; nothing half
    written is left behind. Runs where a private 1 MiB tmpfs can be mounted (unshare)."""
    import shutil
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    mnt = tmp_path / "small"
    mnt.mkdir()
    code = f"""
        import errno, os, s3dlio
        s3dlio.connect({server.tcp_url!r})
        d = {str(mnt)!r} + "/out"
        os.makedirs(d)
        fd = os.open({str(mnt)!r} + "/filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\\0" * 65536)
        except OSError:
            pass
        os.close(fd)
        os.unlink({str(mnt)!r} + "/filler")
        fd = os.open({str(mnt)!r} + "/filler", os.O_WRONLY | os.O_CREAT)
        os.write(fd, b"\\0" * (900 << 10))   # leave about 100 KiB
        os.close(fd)
        try:
            s3dlio.download({data.uri("sizes") + "/"!r}, d)
            print("no error")
        except OSError as e:
            print("oserror", e.errno == errno.ENOSPC, "size_" in str(e))
        print("left", sorted(n for n in os.listdir(d) if n.startswith(".")))
    """
    import sys
    import textwrap
    script = tmp_path / "full.py"
    script.write_text(textwrap.dedent(code))
    p = subprocess.run(["unshare", "-rm", "sh", "-c",
                        f"mount -t tmpfs -o size=1m tmpfs {mnt} && exec {sys.executable} {script}"],
                       capture_output=True, text=True, timeout=300)
    if "mount" in p.stderr and p.returncode != 0 and "oserror" not in p.stdout:
        pytest.skip("cannot mount a private tmpfs here: " + p.stderr.strip()[-200:])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "oserror True True" in p.stdout, p.stdout
    assert "left []" in p.stdout, p.stdout
