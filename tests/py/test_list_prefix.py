"""LIST of file:// and direct:// URIs without a trailing slash (issue 10, PROTOCOL.md "LIST
semantics"): such a URI names one path. A directory is listed as if the slash were there
(never its siblings: file:///d/val must not list /d/val_extra/), a regular file is listed
alone, and a partial name or a missing path lists nothing, as the original s3dlio does.
Listings ending in '/' are unchanged. Also: direct:// LIST and STAT work (the original
panics there).

The server's own answers are checked through the C client (s3dlio._core.Client), below the
Python layer's filtering, and one test goes through s3dlio.list as a user would."""
import os

import pytest

import s3dtest

TREE = {
    "val/a.bin": b"a" * 10,
    "val/b.bin": b"b" * 20,
    "val/sub/c.bin": b"c" * 30,
    "val_extra/x.bin": b"x" * 40,
    "valfile.bin": b"v" * 50,
    "other/y.bin": b"y" * 60,
}


@pytest.fixture
def tree(scratch):
    path, base = scratch
    for rel, data in TREE.items():
        p = os.path.join(path, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return path, base


@pytest.fixture
def core(s3dlio_mod, server):
    from s3dlio import _core
    c = _core.Client(server.tcp_url)
    yield c
    c.close()


def _uris(base, rels):
    return sorted(base + r for r in rels)


def test_directory_without_slash_lists_that_directory(core, tree):
    _, base = tree
    want_flat = _uris(base, ["val/a.bin", "val/b.bin", "val/sub/"])
    want_rec = _uris(base, ["val/a.bin", "val/b.bin", "val/sub/c.bin"])
    assert core.list(base + "val", False) == want_flat
    assert core.list(base + "val", True) == want_rec
    # exactly what the trailing-slash spelling gives
    assert core.list(base + "val/", False) == want_flat
    assert core.list(base + "val/", True) == want_rec


@pytest.mark.parametrize("recursive", [False, True])
def test_sibling_with_longer_name_is_never_listed(core, tree, recursive):
    _, base = tree
    got = core.list(base + "val", recursive)
    assert got, "the directory itself lists its files"
    assert not any("val_extra" in u or "valfile" in u for u in got), got


@pytest.mark.parametrize("recursive", [False, True])
def test_regular_file_lists_itself(core, tree, recursive):
    _, base = tree
    assert core.list(base + "valfile.bin", recursive) == [base + "valfile.bin"]
    assert core.list(base + "val/sub/c.bin", recursive) == [base + "val/sub/c.bin"]


@pytest.mark.parametrize("partial", ["va", "val_", "valf", "oth", "val/s", "val/a"])
@pytest.mark.parametrize("recursive", [False, True])
def test_partial_name_lists_nothing(core, tree, partial, recursive):
    """The original lists nothing for a name that is neither a file nor a directory; so do
    we (a file:// URI is a path, not a key prefix)."""
    _, base = tree
    assert core.list(base + partial, recursive) == []


@pytest.mark.parametrize("recursive", [False, True])
def test_missing_path_lists_nothing(core, tree, recursive):
    _, base = tree
    assert core.list(base + "nope", recursive) == []
    assert core.list(base + "nope/deeper", recursive) == []
    assert core.list(base + "nope/", recursive) == []
    # a file named with a trailing slash is not a directory: nothing under it
    assert core.list(base + "valfile.bin/", recursive) == []


def test_allow_root_without_slash_lists_the_root(core, data):
    root = data.uri().rstrip("/")
    got = core.list(root, False)
    assert root + "/tree/" in got and root + "/sizes/" in got
    assert got == core.list(root + "/", False)


def test_non_recursive_lists_subdirectories_as_prefixes(core, tree):
    """Our documented form (PROTOCOL.md): sub-directories come as URIs ending in '/'. The
    original lists only files here; the Python layer decides what to show."""
    _, base = tree
    got = core.list(base.rstrip("/"), False)
    assert got == _uris(base, ["other/", "val/", "val_extra/", "valfile.bin"])


def test_link_to_directory_inside_root_is_listed_under_its_own_name(core, tree):
    path, base = tree
    os.symlink("val", os.path.join(path, "alias"))
    assert core.list(base + "alias", True) == _uris(base, ["alias/a.bin", "alias/b.bin",
                                                          "alias/sub/c.bin"])


def test_link_leading_out_of_the_root_is_refused(core, data):
    uri = data.uri("links/outdir")
    with pytest.raises(PermissionError) as ei:
        core.list(uri, False)
    assert uri in str(ei.value)
    with pytest.raises(PermissionError):
        core.list(uri + "/", True)


def test_upload_temp_named_directly_is_not_listed(core, tree):
    path, base = tree
    name = ".z.bin.s3dlio-0123456789abcdef.tmp"
    with open(os.path.join(path, name), "wb") as f:
        f.write(b"partial")
    assert core.list(base + name, False) == []
    assert base + name not in core.list(base, True)


def test_package_list_uses_directory_semantics(s3, tree):
    _, base = tree
    got = s3.list(base + "val", recursive=True)
    assert got == _uris(base, ["val/a.bin", "val/b.bin", "val/sub/c.bin"])
    assert s3.list(base + "valfile.bin") == [base + "valfile.bin"]
    assert s3.list(base + "va", recursive=True) == []


# ---- direct:// ----

@pytest.fixture
def direct_core(new_server, data):
    from s3dlio import _core
    droot = "direct://" + data.root + "/"
    srv = new_server.start(allow=[data.allow, droot])
    c = _core.Client(srv.tcp_url)
    yield c, droot
    c.close()


def test_direct_list_and_stat(direct_core, tree, data):
    c, droot = direct_core
    path, _ = tree
    rel = os.path.relpath(path, data.root)
    base = droot + rel + "/"
    assert c.list(base + "val", True) == _uris(base, ["val/a.bin", "val/b.bin",
                                                      "val/sub/c.bin"])
    assert c.list(base + "val", False) == _uris(base, ["val/a.bin", "val/b.bin", "val/sub/"])
    assert c.list(base + "va", True) == []
    assert c.list(base + "valfile.bin", False) == [base + "valfile.bin"]
    st = c.stat(base + "val/sub/c.bin")
    assert st["size"] == 30 and st["mtime_ns"] > 0 and st["etag"]
    with pytest.raises(FileNotFoundError):
        c.stat(base + "val/missing.bin")
    with pytest.raises(ValueError, match="is a directory"):
        c.stat(base + "val")


def test_direct_listing_reads_back(direct_core, data):
    c, droot = direct_core
    rel = data.size_rel(65537)
    uri = droot + rel
    listed = c.list(droot + os.path.dirname(rel), False)
    assert uri in listed
    assert bytes(c.get(uri)) == data.bytes(rel)
    assert c.stat(uri)["size"] == 65537


def test_server_list_frames_for_named_directory(server, tree):
    """The wire view: ENTRY frames in URI order, END with their count."""
    _, base = tree
    with s3dtest.WireConn(server.address()) as w:
        w.hello()
        w.send([s3dtest.LIST, 5, base + "val", 1])
        frames = []
        while True:
            f = w.frame()
            frames.append(f)
            if f[0] in (s3dtest.END, s3dtest.ERROR):
                break
    entries = [f[2] for f in frames if f[0] == s3dtest.ENTRY]
    assert entries == _uris(base, ["val/a.bin", "val/b.bin", "val/sub/c.bin"])
    assert frames[-1][0] == s3dtest.END and frames[-1][2] == 3
