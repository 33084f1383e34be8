"""MKDIR and RMDIR (issue 10; PROTOCOL.md): Client.mkdir(uri) and Client.rmdir(uri) through the
real server on every backend.

- file:// and direct://: mkdir -p beneath the allowed root (no symlink escape; an existing
  directory is fine; a file in the way is a clear error); rmdir of an empty directory.
- s3:// (s3rver), az:// (Azurite): a bucket-level URI creates or deletes the bucket or
  container, checked with an independent client; a deeper prefix needs no request (MKDIR) or
  must hold nothing (RMDIR).
- gs://: the firebase storage emulator has no bucket calls (buckets.insert, get and delete
  answer 501); the prefix forms are tested against it, and the bucket-level requests against
  a small recording HTTP store here (the request shape, the project, the 409 handling).
- Admission as for PUT and DELETE: --allow, token rights, tenant limits; metrics; wire frames.
"""
import http.server
import json
import os
import threading
import urllib.parse

import pytest

import cloudemu
import s3dtest

MKDIR, RMDIR = 9, 10
RW_TOKEN = "mk-rw-token-0123456789"
RO_TOKEN = "mk-ro-token-9876543210"


@pytest.fixture
def core(s3dlio_mod, server):
    from s3dlio import _core
    c = _core.Client(server.tcp_url)
    yield c
    c.close()


def _wire(srv, frame, token=None):
    """One request on a fresh raw connection: its terminal frame."""
    with s3dtest.WireConn(srv.address()) as w:
        w.hello(token=token)
        w.send(frame)
        while True:
            f = w.frame()
            if f[0] in (s3dtest.END, s3dtest.ERROR):
                return f


# ---- file:// ----

def test_mkdir_creates_nested_directories(core, scratch):
    path, base = scratch
    assert core.mkdir(base + "a/b/c") is None
    assert os.path.isdir(os.path.join(path, "a/b/c"))
    assert core.mkdir(base + "a/b/c/d/") is None
    assert os.path.isdir(os.path.join(path, "a/b/c/d"))
    # existing: success, nothing changes
    before = os.stat(os.path.join(path, "a/b")).st_ino
    core.mkdir(base + "a/b")
    core.mkdir(base + "a/b/")
    assert os.stat(os.path.join(path, "a/b")).st_ino == before
    # the scratch directory itself, and the allowed root
    core.mkdir(base)
    core.mkdir(base.rstrip("/"))


def test_mkdir_then_put_and_list(core, scratch):
    _, base = scratch
    core.mkdir(base + "ds/train")
    assert core.list(base + "ds/", False) == [base + "ds/train/"]
    core.put_bytes(base + "ds/train/x.bin", b"12345")
    assert core.list(base + "ds/train", True) == [base + "ds/train/x.bin"]


def test_mkdir_over_a_file_is_a_clear_error(core, scratch):
    path, base = scratch
    with open(os.path.join(path, "f.bin"), "wb") as f:
        f.write(b"x")
    for uri in (base + "f.bin", base + "f.bin/", base + "f.bin/sub/deeper"):
        with pytest.raises(ValueError) as ei:
            core.mkdir(uri)
        msg = str(ei.value)
        assert uri in msg and "not a directory" in msg
        assert os.path.join(path, "f.bin") in msg  # names what is in the way
    assert os.path.isfile(os.path.join(path, "f.bin"))


def test_mkdir_error_class_is_also_runtime_error(s3dlio_mod, core, scratch):
    path, base = scratch
    open(os.path.join(path, "g.bin"), "wb").close()
    with pytest.raises(RuntimeError):
        core.mkdir(base + "g.bin/x")
    with pytest.raises(s3dlio_mod.Error):
        core.mkdir(base + "g.bin/x")


def test_mkdir_outside_the_root_is_refused(core, data):
    outside = s3dtest.file_uri(data.outside) + "/newdir"
    with pytest.raises(PermissionError) as ei:
        core.mkdir(outside)
    assert outside in str(ei.value)
    assert not os.path.exists(os.path.join(data.outside, "newdir"))
    # a name that extends the root's is not under it
    with pytest.raises(PermissionError):
        core.mkdir(s3dtest.file_uri(data.sibling) + "/x")
    assert not os.path.exists(os.path.join(data.sibling, "x"))


@pytest.mark.parametrize("link", ["outdir", "etc"])
def test_mkdir_through_a_link_out_of_the_root_is_refused(core, data, link):
    uri = data.uri(f"links/{link}/made-by-mkdir/deeper")
    with pytest.raises(PermissionError) as ei:
        core.mkdir(uri)
    assert uri in str(ei.value)
    assert not os.path.exists(os.path.join(data.outside, "made-by-mkdir"))
    assert not os.path.exists("/etc/made-by-mkdir")


def test_mkdir_through_a_link_inside_the_root(core, scratch):
    path, base = scratch
    os.makedirs(os.path.join(path, "real"))
    os.symlink("real", os.path.join(path, "alias"))
    core.mkdir(base + "alias/new/deeper")
    assert os.path.isdir(os.path.join(path, "real/new/deeper"))


def test_mkdir_dangling_link_is_refused(core, scratch):
    path, base = scratch
    os.symlink("/nonexistent-target-of-test", os.path.join(path, "dangling"))
    with pytest.raises(PermissionError):
        core.mkdir(base + "dangling/x")
    assert not os.path.exists("/nonexistent-target-of-test")


@pytest.mark.parametrize("bad", ["a/../b", "./a", "a/./b"])
def test_mkdir_dot_segments_are_invalid(core, scratch, bad):
    _, base = scratch
    with pytest.raises(ValueError, match=r"'\.\.?'"):
        core.mkdir(base + bad)


def test_mkdir_bad_arguments(core):
    with pytest.raises(TypeError):
        core.mkdir(5)
    with pytest.raises(TypeError):
        core.mkdir()
    with pytest.raises(ValueError):
        core.mkdir("no-scheme/path")
    with pytest.raises(ValueError):
        core.mkdir("file://relative/path")


def test_rmdir_removes_an_empty_directory(core, scratch):
    path, base = scratch
    os.makedirs(os.path.join(path, "e1/e2"))
    assert core.rmdir(base + "e1/e2/") is None
    assert not os.path.exists(os.path.join(path, "e1/e2"))
    core.rmdir(base + "e1")
    assert not os.path.exists(os.path.join(path, "e1"))


def test_rmdir_not_empty_names_it(core, scratch):
    path, base = scratch
    os.makedirs(os.path.join(path, "full"))
    open(os.path.join(path, "full/x"), "wb").close()
    with pytest.raises(ValueError) as ei:
        core.rmdir(base + "full")
    assert base + "full" in str(ei.value) and "not empty" in str(ei.value)
    assert os.path.exists(os.path.join(path, "full/x"))


def test_rmdir_missing_is_not_found(core, scratch):
    _, base = scratch
    with pytest.raises(FileNotFoundError) as ei:
        core.rmdir(base + "never/was")
    assert base + "never/was" in str(ei.value)
    with pytest.raises(FileNotFoundError):
        core.rmdir(base + "never")


def test_rmdir_of_a_file_or_link_is_refused(core, scratch):
    path, base = scratch
    open(os.path.join(path, "plain"), "wb").close()
    os.makedirs(os.path.join(path, "target"))
    os.symlink("target", os.path.join(path, "link"))
    with pytest.raises(ValueError, match="not a directory"):
        core.rmdir(base + "plain")
    with pytest.raises(ValueError, match="symbolic link"):
        core.rmdir(base + "link")
    assert os.path.isfile(os.path.join(path, "plain"))
    assert os.path.islink(os.path.join(path, "link"))
    assert os.path.isdir(os.path.join(path, "target"))


def test_rmdir_of_the_allowed_root_is_refused(core, data):
    for uri in (data.uri(), data.uri().rstrip("/")):
        with pytest.raises(PermissionError, match="root"):
            core.rmdir(uri)
    assert os.path.isdir(data.root)


def test_rmdir_outside_or_through_escaping_link_is_refused(core, data):
    os.makedirs(os.path.join(data.outside, "victim"), exist_ok=True)
    try:
        with pytest.raises(PermissionError):
            core.rmdir(data.uri("links/outdir/victim"))
        with pytest.raises(PermissionError):
            core.rmdir(s3dtest.file_uri(data.outside) + "/victim")
        assert os.path.isdir(os.path.join(data.outside, "victim"))
    finally:
        os.rmdir(os.path.join(data.outside, "victim"))


def test_wire_frames(server, scratch):
    path, base = scratch
    f = _wire(server, [MKDIR, 7, base + "w/x"])
    assert f == [s3dtest.END, 7, 0, 0]
    assert os.path.isdir(os.path.join(path, "w/x"))
    f = _wire(server, [RMDIR, 8, base + "w/x"])
    assert f == [s3dtest.END, 8, 0, 0]
    f = _wire(server, [RMDIR, 9, base + "w/x"])
    assert f[0] == s3dtest.ERROR and f[1] == 9 and f[2] == s3dtest.E_NOT_FOUND
    assert base + "w/x" in f[3]
    # a peer may append scalar fields
    f = _wire(server, [MKDIR, 10, base + "w/y", 1, "later"])
    assert f == [s3dtest.END, 10, 0, 0]


def test_wire_mkdir_without_uri_is_a_protocol_error(server):
    with s3dtest.WireConn(server.address()) as w:
        w.hello()
        w.send([MKDIR, 1])
        err = w.expect_error_or_close()
    assert err is None or err[2] == s3dtest.E_PROTOCOL


# ---- direct:// ----

def test_direct_mkdir_rmdir(new_server, data, scratch):
    from s3dlio import _core
    path, _ = scratch
    droot = "direct://" + data.root + "/"
    srv = new_server.start(allow=[data.allow, droot])
    rel = os.path.relpath(path, data.root)
    base = droot + rel + "/"
    with _core.Client(srv.tcp_url) as c:
        c.mkdir(base + "d1/d2")
        assert os.path.isdir(os.path.join(path, "d1/d2"))
        c.put_bytes(base + "d1/d2/o.bin", b"direct")
        with pytest.raises(ValueError, match="not empty"):
            c.rmdir(base + "d1/d2")
        c.delete(base + "d1/d2/o.bin")
        c.rmdir(base + "d1/d2")
        c.rmdir(base + "d1")
        assert not os.path.exists(os.path.join(path, "d1"))
        # direct:// is allowed separately from file://
        with pytest.raises(PermissionError):
            c.mkdir("direct://" + data.outside + "/x")


# ---- admission: tokens, tenants, metrics, routing ----

@pytest.fixture
def tok_server(new_server, data, tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(
        f"{RW_TOKEN} team-rw rw {data.uri('scratch')}/\n"
        f"{RO_TOKEN} team-ro ro {data.uri('scratch')}/\n"
        f"slow-token-0123456789 team-slow rw {data.uri('scratch')}/ max-bytes-per-sec=1k\n")
    return new_server.start(extra=["--token-file", str(tokens), "--metrics",
                                   "tcp://127.0.0.1:0"])


def test_read_only_token_cannot_mkdir_or_rmdir(tok_server, scratch):
    path, base = scratch
    os.makedirs(os.path.join(path, "keep"))
    for typ, name, uri in ((MKDIR, "MKDIR", base + "ro-made"), (RMDIR, "RMDIR", base + "keep")):
        f = _wire(tok_server, [typ, 1, uri], token=RO_TOKEN)
        assert f[0] == s3dtest.ERROR and f[2] == s3dtest.E_PERMISSION, f
        assert "read-only" in f[3] and name in f[3] and "team-ro" in f[3] and uri in f[3]
    assert not os.path.exists(os.path.join(path, "ro-made"))
    assert os.path.isdir(os.path.join(path, "keep"))
    assert _wire(tok_server, [MKDIR, 2, base + "rw-made"], token=RW_TOKEN)[0] == s3dtest.END
    assert _wire(tok_server, [RMDIR, 3, base + "keep"], token=RW_TOKEN)[0] == s3dtest.END
    assert os.path.isdir(os.path.join(path, "rw-made"))
    assert not os.path.exists(os.path.join(path, "keep"))


def test_token_prefix_bounds_mkdir(tok_server, data):
    uri = data.uri("small/not-for-this-token")
    f = _wire(tok_server, [MKDIR, 1, uri], token=RW_TOKEN)
    assert f[0] == s3dtest.ERROR and f[2] == s3dtest.E_PERMISSION and "team-rw" in f[3]
    assert not os.path.exists(data.path("small/not-for-this-token"))


def test_python_client_with_read_only_token(s3dlio_mod, tok_server, scratch):
    from s3dlio import _core
    _, base = scratch
    with _core.Client(tok_server.tcp_url, token=RO_TOKEN) as c:
        with pytest.raises(PermissionError, match="read-only"):
            c.mkdir(base + "x")
        with pytest.raises(s3dlio_mod.Error):
            c.rmdir(base + "x")


def test_tenant_byte_rate_applies_to_mkdir(tok_server, scratch):
    """A tenant in debt for its byte rate gets BUSY for MKDIR as for any request."""
    _, base = scratch
    payload = b"z" * 8192  # 8 s of a 1k/s budget
    with s3dtest.WireConn(tok_server.address()) as w:
        w.hello(token="slow-token-0123456789")
        w.send([s3dtest.PUT, 1, base + "debt.bin", len(payload)])
        w.send_data(1, 0, payload)
        w.send([s3dtest.END, 1, len(payload), s3dtest.crc32c(payload)])
        assert w.read_reply(1).ok
        w.send([MKDIR, 2, base + "later"])
        f = w.read_reply(2).error
    assert f is not None and f[2] == s3dtest.E_BUSY and f[4] > 0, f


def test_metrics_count_mkdir_and_rmdir(tok_server, scratch):
    _, base = scratch
    _wire(tok_server, [MKDIR, 1, base + "m1"], token=RW_TOKEN)
    _wire(tok_server, [MKDIR, 2, base + "m1"], token=RW_TOKEN)
    _wire(tok_server, [RMDIR, 3, base + "m1"], token=RW_TOKEN)
    _wire(tok_server, [RMDIR, 4, base + "m1"], token=RW_TOKEN)  # NOT_FOUND
    m = s3dtest.scrape(tok_server)
    assert s3dtest.metric(m, "s3dliod_requests_total", backend="file", op="MKDIR") == 2
    assert s3dtest.metric(m, "s3dliod_requests_total", backend="file", op="RMDIR") == 2
    assert s3dtest.metric(m, "s3dliod_errors_total", backend="file", code="NOT_FOUND") >= 1


def test_mkdir_is_routed_like_put(new_server, data, scratch):
    """With several servers a MKDIR goes where a PUT of the same URI goes (rendezvous)."""
    from s3dlio import _core
    _, base = scratch
    srvs = [new_server.start(extra=["--metrics", "tcp://127.0.0.1:0"]) for _ in range(3)]
    url = ",".join(s.tcp_url for s in srvs)
    with _core.Client(url) as c:
        for i in range(6):
            c.mkdir(base + f"r{i}")
            c.rmdir(base + f"r{i}")
            c.put_bytes(base + f"r{i}", b"o")  # the same URI, now an object
    for s in srvs:
        m = s3dtest.scrape(s)
        n = [s3dtest.metric(m, "s3dliod_requests_total", backend="file", op=op)
             for op in ("MKDIR", "RMDIR", "PUT")]
        assert n[0] == n[1] == n[2], (s.tcp_url, n)
    assert sum(s3dtest.metric(s3dtest.scrape(s), "s3dliod_requests_total", backend="file",
                              op="MKDIR") for s in srvs) == 6


# ---- a recording HTTP store (GCS bucket calls, S3 CreateBucket bodies) ----

class RecordingStore:
    """Answers with handler(method, path, query, body) -> (status, content_type, body) and
    records every request as (method, path, query dict, body bytes, headers)."""

    def __init__(self, handler):
        store = self
        self.seen = []

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _do(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                u = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
                store.seen.append((self.command, u.path, q, body, dict(self.headers)))
                st, ctype, data = handler(self.command, u.path, q, body)
                self.send_response(st)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _do

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _json(st, obj):
    return st, "application/json", json.dumps(obj).encode()


class FakeGcs:
    """Just enough of the GCS JSON API's bucket calls: buckets.insert/get/delete and an
    object listing. `mine` are the project's buckets, `foreign` someone else's."""

    def __init__(self):
        self.mine = {"taken-by-me": []}
        self.foreign = {"taken-by-other"}

    def __call__(self, method, path, q, body):
        parts = path.split("/")  # ['', 'storage', 'v1', 'b', NAME, 'o']
        if method == "POST" and path == "/storage/v1/b":
            name = json.loads(body)["name"]
            if name in self.mine or name in self.foreign:
                return _json(409, {"error": {"code": 409, "message": "Your previous request "
                                             "to create the named bucket succeeded and you "
                                             "already own it." if name in self.mine else
                                             "The requested bucket name is not available.",
                                             "errors": [{"reason": "conflict"}]}})
            self.mine[name] = []
            return _json(200, {"kind": "storage#bucket", "name": name})
        if len(parts) >= 5 and parts[3] == "b":
            name = parts[4]
            if name in self.foreign:
                return _json(403, {"error": {"code": 403, "message": "no access"}})
            if name not in self.mine:
                return _json(404, {"error": {"code": 404, "message": "Not Found",
                                             "errors": [{"reason": "notFound"}]}})
            if len(parts) == 5 and method == "GET":
                return _json(200, {"kind": "storage#bucket", "name": name})
            if len(parts) == 5 and method == "DELETE":
                del self.mine[name]
                return 204, "application/json", b""
            if len(parts) == 6 and method == "GET":
                pre = q.get("prefix", "")
                items = [{"name": o, "size": "1", "updated": "2024-01-01T00:00:00.000Z"}
                         for o in self.mine[name] if o.startswith(pre)]
                return _json(200, {"kind": "storage#objects", "items": items[:1]})
        return 501, "text/plain", b"Not Implemented"


@pytest.fixture
def fake_gcs():
    fake = FakeGcs()
    store = RecordingStore(fake)
    store.fake = fake
    yield store
    store.close()


def _gs_server(endpoint, buckets, project="proj-x"):
    env = cloudemu.gs_env(endpoint)
    env.pop("GOOGLE_CLOUD_PROJECT", None)
    if project:
        env["GOOGLE_CLOUD_PROJECT"] = project
    allow = [f"gs://{b}/" if b else "gs://" for b in buckets]  # "": every bucket
    return s3dtest.start_server(allow, threads=1, extra=cloudemu.CLOUD_FLAGS, env=env)


def test_gs_bucket_insert_request(fake_gcs):
    from s3dlio import _core
    # scheme-wide: a bucket that is itself an --allow root is never removed (rmdir below)
    srv = _gs_server(fake_gcs.endpoint, [""])
    try:
        with _core.Client(srv.tcp_url) as c:
            c.mkdir("gs://new-bucket")
            method, path, q, body, hdrs = fake_gcs.seen[-1]
            assert (method, path) == ("POST", "/storage/v1/b")
            assert q == {"project": "proj-x"}
            assert json.loads(body) == {"name": "new-bucket"}
            assert hdrs.get("Content-Type") == "application/json"
            assert "new-bucket" in fake_gcs.fake.mine
            # 409 for a bucket of ours: asked, and success
            n = len(fake_gcs.seen)
            c.mkdir("gs://taken-by-me/")
            assert [(s[0], s[1]) for s in fake_gcs.seen[n:]] == [
                ("POST", "/storage/v1/b"), ("GET", "/storage/v1/b/taken-by-me")]
            # 409 for someone else's: the store's conflict, clearly
            with pytest.raises(RuntimeError) as ei:
                c.mkdir("gs://taken-by-other")
            msg = str(ei.value)
            assert "gs://taken-by-other" in msg and "409" in msg and "not available" in msg
            # a deeper prefix: no request at all
            n = len(fake_gcs.seen)
            c.mkdir("gs://new-bucket/some/prefix")
            assert len(fake_gcs.seen) == n
            # rmdir: a one-entry listing, then the bucket's DELETE
            c.rmdir("gs://new-bucket")
            assert [(s[0], s[1]) for s in fake_gcs.seen[n:]] == [
                ("GET", "/storage/v1/b/new-bucket/o"), ("DELETE", "/storage/v1/b/new-bucket")]
            assert fake_gcs.seen[n][2].get("maxResults") == "1"
            assert "delimiter" not in fake_gcs.seen[n][2]
            assert "new-bucket" not in fake_gcs.fake.mine
            fake_gcs.fake.mine["taken-by-me"] = ["obj"]
            with pytest.raises(ValueError, match="not empty"):
                c.rmdir("gs://taken-by-me")
            assert "taken-by-me" in fake_gcs.fake.mine
            with pytest.raises(FileNotFoundError):
                c.rmdir("gs://new-bucket")
    finally:
        cloudemu.stop_server(srv)


def test_gs_mkdir_bucket_needs_a_project(fake_gcs):
    from s3dlio import _core
    srv = _gs_server(fake_gcs.endpoint, ["nb"], project=None)
    try:
        with _core.Client(srv.tcp_url) as c:
            with pytest.raises(ValueError, match="GOOGLE_CLOUD_PROJECT"):
                c.mkdir("gs://nb")
            c.mkdir("gs://nb/prefix/")  # no request, no project needed
        assert fake_gcs.seen == []
    finally:
        cloudemu.stop_server(srv)


def test_gs_project_from_service_account_key(fake_gcs, tmp_path):
    """GOOGLE_APPLICATION_CREDENTIALS's project_id names the project (no emulator: the
    token exchange goes to the recording store too)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from s3dlio import _core
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    fake = fake_gcs.fake

    def with_token(method, path, q, body):
        if path == "/token":
            return _json(200, {"access_token": "tok", "expires_in": 3600})
        return fake(method, path, q, body)
    store = RecordingStore(with_token)
    cred = tmp_path / "sa.json"
    cred.write_text(json.dumps({
        "type": "service_account", "client_email": "t@proj-from-key.iam",
        "private_key": pem, "project_id": "proj-from-key",
        "token_uri": store.endpoint + "/token"}))
    env = cloudemu.gs_env(store.endpoint, emulator=False)
    env.pop("GOOGLE_CLOUD_PROJECT", None)
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(cred)
    srv = s3dtest.start_server(["gs://keyed/"], threads=1, extra=cloudemu.CLOUD_FLAGS, env=env)
    try:
        with _core.Client(srv.tcp_url) as c:
            c.mkdir("gs://keyed")
        ins = [s for s in store.seen if s[0] == "POST" and s[1] == "/storage/v1/b"]
        assert len(ins) == 1 and ins[0][2] == {"project": "proj-from-key"}
        assert ins[0][4].get("Authorization") == "Bearer tok"
    finally:
        cloudemu.stop_server(srv)
        store.close()


@pytest.fixture(scope="module")
def gcs_emu():
    e = cloudemu.gcs()
    yield e
    e.stop()


def test_gs_emulator_prefixes_and_missing_bucket_calls(gcs_emu):
    """Against the firebase emulator: prefix MKDIR/RMDIR work; its missing bucket calls
    (501) surface as the store's error, naming the status."""
    from s3dlio import _core
    env = cloudemu.gs_env(gcs_emu.endpoint)
    env["GOOGLE_CLOUD_PROJECT"] = "demo-s3dlio"
    srv = s3dtest.start_server(["gs://emub/"], threads=1, extra=cloudemu.CLOUD_FLAGS, env=env)
    try:
        with _core.Client(srv.tcp_url) as c:
            c.mkdir("gs://emub/deep/prefix")
            c.put_bytes("gs://emub/dir/x", b"hello")
            with pytest.raises(ValueError) as ei:
                c.rmdir("gs://emub/dir")
            assert "not empty" in str(ei.value) and "gs://emub/dir/x" in str(ei.value)
            c.rmdir("gs://emub/di")       # nothing under di/ (dir/x is not)
            c.rmdir("gs://emub/other/")
            c.delete("gs://emub/dir/x")
            c.rmdir("gs://emub/dir")
            with pytest.raises(RuntimeError, match="HTTP 501"):
                c.mkdir("gs://emub")
            with pytest.raises(PermissionError, match="root of the allowed prefix"):
                c.rmdir("gs://emub")   # an --allow root is never removed
    finally:
        cloudemu.stop_server(srv)


# ---- s3:// against s3rver ----

@pytest.fixture(scope="module")
def s3emu(tmp_path_factory):
    e = cloudemu.s3rver(str(tmp_path_factory.mktemp("s3rver-mkdir")), ["pre-existing"])
    yield e
    e.stop()


@pytest.fixture
def s3srv(s3emu):
    srv = s3dtest.start_server(["s3://made-here/", "s3://pre-existing/", "s3://Bad_Name/",
                                "s3://never-made/"],
                               threads=2, extra=cloudemu.CLOUD_FLAGS,
                               env=cloudemu.s3_env(s3emu.endpoint))
    yield srv
    cloudemu.stop_server(srv)


def _buckets(boto):
    return sorted(b["Name"] for b in boto.list_buckets()["Buckets"])


def test_s3_mkdir_rmdir_bucket(s3emu, s3srv):
    from s3dlio import _core
    boto = cloudemu.boto_s3(s3emu.endpoint)
    with _core.Client(s3srv.tcp_url) as c:
        c.mkdir("s3://made-here")
        assert "made-here" in _buckets(boto)
        c.mkdir("s3://made-here/")            # exists and is ours
        c.mkdir("s3://pre-existing")          # made by someone with our keys: ours
        c.mkdir("s3://made-here/a/b/c")       # a prefix: nothing to do
        boto.put_object(Bucket="made-here", Key="dir/x", Body=b"x")
        with pytest.raises(PermissionError, match="root of the allowed prefix"):
            c.rmdir("s3://made-here")         # an --allow root, full or not
        with pytest.raises(ValueError, match="not empty"):
            c.rmdir("s3://made-here/dir")
        c.rmdir("s3://made-here/di")          # dir/x is not under di/
        c.rmdir("s3://made-here/empty/")
        assert "made-here" in _buckets(boto)
        boto.delete_object(Bucket="made-here", Key="dir/x")
        c.rmdir("s3://made-here/dir")
        # the bucket is the root of an --allow prefix: never removed (as a file:// root)
        with pytest.raises(PermissionError) as ei:
            c.rmdir("s3://made-here/")
        assert "root of the allowed prefix" in str(ei.value)
        assert "made-here" in _buckets(boto)
        with pytest.raises(ValueError) as ei:
            c.mkdir("s3://Bad_Name")
        assert "InvalidBucketName" in str(ei.value) and "s3://Bad_Name" in str(ei.value)
        with pytest.raises(PermissionError):
            c.mkdir("s3://not-allowed")
        assert "not-allowed" not in _buckets(boto)


def test_s3_scheme_wide_allow_creates_any_bucket(s3emu):
    """--allow s3:// allows every bucket: what create_bucket of any name needs."""
    from s3dlio import _core
    boto = cloudemu.boto_s3(s3emu.endpoint)
    srv = s3dtest.start_server(["s3://"], threads=1, extra=cloudemu.CLOUD_FLAGS,
                               env=cloudemu.s3_env(s3emu.endpoint))
    try:
        with _core.Client(srv.tcp_url) as c:
            for name in ("wide-one", "wide-two"):
                c.mkdir(f"s3://{name}")
                c.put_bytes(f"s3://{name}/k", name.encode())
                assert bytes(c.get(f"s3://{name}/k")) == name.encode()
            assert {"wide-one", "wide-two"} <= set(_buckets(boto))
            with pytest.raises(ValueError) as ei:
                c.rmdir("s3://wide-one")
            assert "not empty" in str(ei.value) and "s3://wide-one/k" in str(ei.value)
            for name in ("wide-one", "wide-two"):
                c.delete(f"s3://{name}/k")
                c.rmdir(f"s3://{name}/")
            assert not {"wide-one", "wide-two"} & set(_buckets(boto))
            with pytest.raises(FileNotFoundError) as ei:
                c.rmdir("s3://wide-one")
            assert "NoSuchBucket" in str(ei.value)
            with pytest.raises(ValueError, match="no bucket"):
                c.mkdir("s3://")
            with pytest.raises(PermissionError):
                c.mkdir("az://acct/container")  # another scheme is not allowed
    finally:
        cloudemu.stop_server(srv)


def test_s3_bucket_of_someone_else(s3emu):
    """409 BucketAlreadyExists and a HEAD that is refused: the conflict is reported."""
    from s3dlio import _core

    def icpt(method, path, headers):
        if path.startswith("/taken"):
            if method == "PUT":
                return (409, "application/xml",
                        b"<Error><Code>BucketAlreadyExists</Code><Message>The requested "
                        b"bucket name is not available.</Message></Error>")
            return 403, "application/xml", b""
        return None
    px = cloudemu.Proxy(s3emu.endpoint, intercept=icpt, keep_host=True)
    srv = s3dtest.start_server(["s3://taken/"], threads=1, extra=cloudemu.CLOUD_FLAGS,
                               env=cloudemu.s3_env(px.endpoint))
    try:
        with _core.Client(srv.tcp_url) as c:
            with pytest.raises(RuntimeError) as ei:
                c.mkdir("s3://taken")
        assert "409" in str(ei.value) and "BucketAlreadyExists" in str(ei.value)
        assert [(m, p) for m, p, _ in px.seen] == [("PUT", "/taken"), ("HEAD", "/taken")]
    finally:
        cloudemu.stop_server(srv)
        px.httpd.shutdown()


@pytest.mark.parametrize("region,want", [
    ("us-east-1", b""),
    ("eu-west-1", b"<LocationConstraint>eu-west-1</LocationConstraint>"),
])
def test_s3_create_bucket_location_constraint(region, want):
    store = RecordingStore(lambda m, p, q, b: (200, "application/xml", b""))
    srv = s3dtest.start_server(["s3://regional/"], threads=1, extra=cloudemu.CLOUD_FLAGS,
                               env=cloudemu.s3_env(store.endpoint, AWS_REGION=region))
    try:
        from s3dlio import _core
        with _core.Client(srv.tcp_url) as c:
            c.mkdir("s3://regional")
        method, path, q, body, hdrs = store.seen[-1]
        assert (method, path) == ("PUT", "/regional")
        if want:
            assert want in body and body.startswith(b"<CreateBucketConfiguration")
        else:
            assert body == b""
        assert f"/{region}/s3/aws4_request" in hdrs.get("Authorization", "")
    finally:
        cloudemu.stop_server(srv)
        store.close()


# ---- az:// against Azurite ----

@pytest.fixture(scope="module")
def azemu(tmp_path_factory):
    e = cloudemu.azurite(str(tmp_path_factory.mktemp("azurite-mkdir")))
    yield e
    e.stop()


def test_az_mkdir_rmdir_container(azemu):
    from s3dlio import _core
    acct = cloudemu.AZ_ACCOUNT
    ep = f"{azemu.endpoint}/{acct}"
    peer = cloudemu.AzureClient(ep)
    peer.create_container("pre-made")

    def containers():
        st, body, _ = peer.request("GET", "", {"comp": "list"})
        assert st == 200
        return body

    # scheme-wide: a container that is itself an --allow root is never removed
    srv = s3dtest.start_server(["az://"], threads=2, extra=cloudemu.CLOUD_FLAGS,
                               env=cloudemu.az_env(ep))
    try:
        with _core.Client(srv.tcp_url) as c:
            c.mkdir(f"az://{acct}/newc")
            assert b"<Name>newc</Name>" in containers()
            c.mkdir(f"az://{acct}/newc/")       # ContainerAlreadyExists: ours
            c.mkdir(f"az://{acct}/pre-made")
            c.mkdir(f"az://{acct}/newc/deep/prefix")
            peer.put("newc", "dir/x", b"x")
            # Azure would delete a full container: the listing first refuses
            with pytest.raises(ValueError, match="not empty"):
                c.rmdir(f"az://{acct}/newc")
            assert peer.get("newc", "dir/x") == b"x"
            with pytest.raises(ValueError, match="not empty"):
                c.rmdir(f"az://{acct}/newc/dir")
            c.rmdir(f"az://{acct}/newc/di")
            c.delete(f"az://{acct}/newc/dir/x")
            c.rmdir(f"az://{acct}/newc")
            assert b"<Name>newc</Name>" not in containers()
            with pytest.raises(FileNotFoundError, match="ContainerNotFound"):
                c.rmdir(f"az://{acct}/newc")
    finally:
        cloudemu.stop_server(srv)
