"""put_bytes, stat, exists, list, delete against the real server, checked against the disk."""
import datetime
import os

import numpy as np
import pytest

from s3dtest import file_uri


# ---- put_bytes ----
def _payload(n=10000):
    return os.urandom(n)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "memoryview-slice",
                                  "numpy-uint8", "numpy-float32-2d", "bytesview"])
def test_put_bytes_buffer_kinds_roundtrip(transport, data, scratch, kind):
    path, base = scratch
    raw = _payload(40000)
    if kind == "bytes":
        obj, want = raw, raw
    elif kind == "bytearray":
        obj, want = bytearray(raw), raw
    elif kind == "memoryview":
        obj, want = memoryview(raw), raw
    elif kind == "memoryview-slice":
        obj, want = memoryview(raw)[123:30123], raw[123:30123]
    elif kind == "numpy-uint8":
        obj, want = np.frombuffer(raw, dtype=np.uint8).copy(), raw
    elif kind == "numpy-float32-2d":
        arr = np.frombuffer(raw, dtype=np.float32).reshape(100, 100).copy()
        obj, want = arr, arr.tobytes()
    else:
        rel = data.size_rel(65537)
        obj, want = transport.get(data.uri(rel)), data.bytes(rel)
    uri = base + f"obj-{kind}.bin"
    assert transport.put_bytes(uri, obj) is None
    with open(os.path.join(path, f"obj-{kind}.bin"), "rb") as f:
        assert f.read() == want
    assert bytes(transport.get(uri)) == want


def test_put_creates_parent_directories(s3, scratch):
    path, base = scratch
    raw = _payload()
    uri = base + "x/y/z/deep.bin"
    s3.put_bytes(uri, raw)
    assert os.path.isdir(os.path.join(path, "x", "y", "z"))
    assert bytes(s3.get(uri)) == raw


def test_put_zero_bytes(s3, scratch):
    path, base = scratch
    s3.put_bytes(base + "empty.bin", b"")
    assert os.path.getsize(os.path.join(path, "empty.bin")) == 0
    assert len(s3.get(base + "empty.bin")) == 0
    assert s3.stat(base + "empty.bin")["size"] == 0


def test_put_20_mib(transport, scratch):
    path, base = scratch
    raw = np.random.default_rng(7).integers(0, 256, 20 << 20, dtype=np.uint8)
    transport.put_bytes(base + "twenty.bin", raw)
    with open(os.path.join(path, "twenty.bin"), "rb") as f:
        assert f.read() == raw.tobytes()
    view = transport.get(base + "twenty.bin")
    assert view == raw.tobytes()


def test_put_overwrites(s3, scratch):
    path, base = scratch
    uri = base + "ow.bin"
    s3.put_bytes(uri, b"first version, longer")
    s3.put_bytes(uri, b"second")
    assert bytes(s3.get(uri)) == b"second"
    with open(os.path.join(path, "ow.bin"), "rb") as f:
        assert f.read() == b"second"


def test_put_rejects_non_buffer(s3, scratch):
    _, base = scratch
    with pytest.raises(TypeError):
        s3.put_bytes(base + "str.bin", "a str is not bytes")
    with pytest.raises(TypeError):
        s3.put_bytes(base + "int.bin", 12345)
    assert not s3.exists(base + "str.bin")


def test_put_leaves_no_temporary_files(s3, scratch):
    path, base = scratch
    for i in range(20):
        s3.put_bytes(base + f"f{i}.bin", _payload(1000 + i))
    assert sorted(os.listdir(path)) == sorted(f"f{i}.bin" for i in range(20))
    assert s3.list(base) == sorted(base + f"f{i}.bin" for i in range(20))


def test_put_outside_allow_refused(s3, data):
    uri = file_uri(data.outside) + "/put_here.bin"
    with pytest.raises(PermissionError) as ei:
        s3.put_bytes(uri, b"x")
    assert uri in str(ei.value)
    assert not os.path.exists(os.path.join(data.outside, "put_here.bin"))


# ---- stat ----
def test_stat_fields(s3, data):
    rel = data.size_rel(65537)
    st = s3.stat(data.uri(rel))
    assert isinstance(st, dict)
    for k in ("size", "last_modified", "mtime_ns", "etag", "content_type", "metadata"):
        assert k in st, f"stat() lacks {k!r}: {st}"
    assert st["size"] == 65537
    assert isinstance(st["etag"], str) and st["etag"]
    assert st["content_type"] is None
    assert st["metadata"] == {}
    os_st = os.stat(data.path(rel))
    assert st["mtime_ns"] == os_st.st_mtime_ns
    lm = st["last_modified"]
    assert isinstance(lm, str)
    assert lm.endswith("Z") or lm.endswith("+00:00"), f"not UTC: {lm!r}"
    parsed = datetime.datetime.fromisoformat(lm.replace("Z", "+00:00"))
    assert parsed.utcoffset() == datetime.timedelta(0)
    assert abs(parsed.timestamp() - os_st.st_mtime_ns / 1e9) < 1.0


@pytest.mark.parametrize("size", [0, 1, 4096, (9 << 20) + 3])
def test_stat_size(s3, data, size):
    assert s3.stat(data.uri(data.size_rel(size)))["size"] == size


def test_stat_etag_stable_and_changes_with_content(s3, scratch):
    path, base = scratch
    uri = base + "etag.bin"
    s3.put_bytes(uri, b"one")
    e1 = s3.stat(uri)["etag"]
    assert s3.stat(uri)["etag"] == e1
    s3.put_bytes(uri, b"two two")
    st = s3.stat(uri)
    assert st["size"] == 7
    assert st["etag"] != e1


def test_stat_missing(s3, data):
    uri = data.uri("sizes/none.bin")
    with pytest.raises(FileNotFoundError) as ei:
        s3.stat(uri)
    assert uri in str(ei.value)


# ---- exists ----
def test_exists(s3, data):
    assert s3.exists(data.uri(data.size_rel(0))) is True
    assert s3.exists(data.uri(data.size_rel(4096))) is True
    assert s3.exists(data.uri("sizes/nope.bin")) is False
    assert s3.exists(data.uri("no/such/dir/file.bin")) is False


def test_exists_after_put_and_delete(s3, scratch):
    _, base = scratch
    uri = base + "e.bin"
    assert s3.exists(uri) is False
    s3.put_bytes(uri, b"x")
    assert s3.exists(uri) is True
    s3.delete(uri)
    assert s3.exists(uri) is False


# ---- list ----
def _model_list(root, prefix, recursive):
    """S3 semantics over the files under root: keys (relative paths) starting with prefix;
    non-recursive groups keys with a '/' after the prefix into 'prefix.../' entries."""
    keys = []
    for d, _, files in os.walk(root):
        for f in files:
            keys.append(os.path.relpath(os.path.join(d, f), root))
    out = set()
    for k in keys:
        if not k.startswith(prefix):
            continue
        rest = k[len(prefix):]
        if not recursive and "/" in rest:
            out.add(prefix + rest.split("/", 1)[0] + "/")
        else:
            out.add(k)
    return sorted(file_uri(root) + "/" + k for k in out)


def _tree(data):
    return data.path("tree")


def test_list_non_recursive(transport, data):
    base = data.uri("tree") + "/"
    got = transport.list(base, include_dirs=True)
    assert got == [base + n for n in ["a.bin", "b.txt", "prefix_x.bin", "prefixed/",
                                      "sub1/", "sub1x.bin", "sub2/"]]
    assert got == _model_list(_tree(data), "", False)
    # by default objects only, as the original lists
    assert transport.list(base) == [u for u in got if not u.endswith("/")]


def test_list_recursive(transport, data):
    base = data.uri("tree") + "/"
    got = transport.list(base, recursive=True)
    assert got == sorted(base + n for n in data.TREE)
    assert all(not u.endswith("/") for u in got)


def test_list_default_is_non_recursive(s3, data):
    base = data.uri("tree") + "/"
    assert s3.list(base) == s3.list(base, recursive=False)
    assert s3.list(base) != s3.list(base, recursive=True)


def test_list_subdirectory(s3, data):
    base = data.uri("tree/sub1") + "/"
    assert s3.list(base, include_dirs=True) == [base + "c.bin", base + "deep/"]
    assert s3.list(base) == [base + "c.bin"]
    assert s3.list(base, recursive=True) == [base + "c.bin", base + "deep/d.bin",
                                             base + "deep/e.txt"]


def _model_named(root, name, recursive):
    """file:// semantics of a URI without a trailing slash (PROTOCOL.md): a directory is
    listed as if the slash were there, a file alone, anything else (a partial name) not."""
    p = os.path.join(root, name)
    if os.path.isfile(p):
        return [file_uri(p)]
    if os.path.isdir(p):
        return _model_list(root, name + "/", recursive)
    return []


@pytest.mark.parametrize("prefix", ["pre", "sub1", "sub", "a", "a.bin", "prefixed", "zzz"])
@pytest.mark.parametrize("recursive", [False, True])
def test_list_prefix_not_ending_in_slash(s3, data, prefix, recursive):
    """A file:// URI that does not end in '/' names one path, never a prefix of sibling
    names (issue 10): tree/sub1 lists sub1/ only (not sub1x.bin), tree/pre lists nothing."""
    got = s3.list(data.uri("tree/" + prefix), recursive=recursive)
    assert got == [u for u in _model_named(_tree(data), prefix, recursive)
                   if recursive or not u.endswith("/")]


def test_list_prefix_pre_explicit(s3, data):
    base = data.uri("tree") + "/"
    assert s3.list(data.uri("tree/pre")) == []
    assert s3.list(data.uri("tree/pre"), recursive=True) == []
    assert s3.list(data.uri("tree/sub1"), recursive=True) == [
        base + "sub1/c.bin", base + "sub1/deep/d.bin", base + "sub1/deep/e.txt"]


def test_list_pattern_regex(s3, data):
    base = data.uri("tree") + "/"
    got = s3.list(base, recursive=True, pattern=r"\.bin$")
    assert got == sorted(base + n for n in data.TREE if n.endswith(".bin"))
    got = s3.list(base, recursive=True, pattern=r"deep/.\.")
    assert got == [base + "sub1/deep/d.bin", base + "sub1/deep/e.txt"]
    got = s3.list(base, recursive=True, pattern="txt")  # searched, not anchored
    assert got == [base + "b.txt", base + "sub1/deep/e.txt"]
    assert s3.list(base, recursive=True, pattern="^nothing-matches$") == []


def test_list_pattern_keyword_non_recursive(s3, data):
    base = data.uri("tree") + "/"
    got = s3.list(base, pattern=r"sub", include_dirs=True)
    assert got == [base + "sub1/", base + "sub1x.bin", base + "sub2/"]
    assert s3.list(base, pattern=r"sub") == [base + "sub1x.bin"]


def test_list_bad_pattern(s3, data):
    with pytest.raises(ValueError):
        s3.list(data.uri("tree") + "/", pattern="([unclosed")


def test_list_many_entries_sorted(transport, data):
    base = data.uri("small") + "/"
    got = transport.list(base)
    assert len(got) == 500
    assert got == sorted(got)
    assert got == [base + f"obj_{i:04d}.bin" for i in range(500)]


def test_list_returns_full_uris_usable_by_get(s3, data):
    for u in s3.list(data.uri("tree") + "/", recursive=True):
        rel = u[len(data.uri("")):]
        assert bytes(s3.get(u)) == data.bytes(rel)


def test_list_empty_prefix_result(s3, scratch):
    _, base = scratch
    assert s3.list(base) == []
    assert s3.list(base + "nothing-here", recursive=True) == []
    # PROTOCOL.md: a missing directory lists nothing
    assert s3.list(base + "no/such/dir/") == []
    assert s3.list(base + "no/such/dir/", recursive=True) == []


def test_list_outside_allow_refused(s3, data):
    uri = file_uri(data.outside) + "/"
    with pytest.raises(PermissionError) as ei:
        s3.list(uri)
    assert uri in str(ei.value)


# ---- delete ----
def test_delete(s3, scratch):
    path, base = scratch
    s3.put_bytes(base + "d.bin", b"data")
    assert s3.delete(base + "d.bin") is None
    assert not os.path.exists(os.path.join(path, "d.bin"))
    assert s3.exists(base + "d.bin") is False
    with pytest.raises(FileNotFoundError):
        s3.get(base + "d.bin")


def test_delete_missing_is_done(s3, scratch):
    """As the original (and S3's DELETE): deleting what is not there succeeds."""
    _, base = scratch
    assert s3.delete(base + "never.bin") is None


def test_delete_recursive(s3, scratch):
    path, base = scratch
    keep = {"ab.bin": b"keep-sibling", "other/k.bin": b"keep-other"}
    gone = ["a/1.bin", "a/2.bin", "a/b/3.bin", "a/b/c/4.bin"]
    for k, v in keep.items():
        s3.put_bytes(base + k, v)
    for k in gone:
        s3.put_bytes(base + k, b"delete me " + k.encode())
    assert s3.delete(base + "a/", recursive=True) is None
    for k in gone:
        assert not os.path.exists(os.path.join(path, k))
        assert s3.exists(base + k) is False
    for k, v in keep.items():
        assert bytes(s3.get(base + k)) == v
    assert s3.list(base, recursive=True) == sorted(base + k for k in keep)


def test_delete_outside_allow_refused(s3, data):
    uri = file_uri(data.outside) + "/secret.bin"
    with pytest.raises(PermissionError):
        s3.delete(uri)
    assert os.path.exists(os.path.join(data.outside, "secret.bin"))
