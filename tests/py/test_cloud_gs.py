"""gs:// through s3dliod against firebase-tools' storage emulator (the GCS JSON API), with a
plain JSON API client (cloudemu.GcsClient) as the independent peer. The emulator checks no
auth, so bearer tokens are checked by a loopback proxy in front of it (cloudemu.BearerProxy).
Emulator and servers run on 127.0.0.1; the module skips when the emulator is not installed.

Small sizes on the server: resumable uploads above 6 MiB (fed in 5 MiB parts), LIST pages of 5.
"""
import json
import random
import time

import pytest

import cloudemu
import s3dtest

BUCKET = "cloud-gs"


@pytest.fixture(scope="module")
def emu():
    e = cloudemu.gcs()
    yield e
    e.stop()


def _start(endpoint, extra=(), **kw):
    return s3dtest.start_server([f"gs://{BUCKET}/", f"gcs://{BUCKET}/"], threads=2,
                                extra=cloudemu.CLOUD_FLAGS + list(extra),
                                env=cloudemu.gs_env(endpoint, **kw))


@pytest.fixture(scope="module")
def srv(emu):
    s = _start(emu.endpoint)
    yield s
    cloudemu.stop_server(s)


@pytest.fixture
def gsc(s3dlio_mod, srv):
    s3dlio_mod.connect(srv.tcp_url)
    return s3dlio_mod


@pytest.fixture(scope="module")
def peer(emu):
    return cloudemu.GcsClient(emu.endpoint)


def _uri(name):
    return f"gs://{BUCKET}/{name}"


def _rand(n, seed):
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("size", [0, 1, 4095, 65537, (1 << 20) + 3])
def test_gs_put_get_stat_delete(gsc, size):
    name = f"rt/obj-{size}.bin"
    data = _rand(size, size)
    gsc.put_bytes(_uri(name), data)
    assert bytes(gsc.get(_uri(name))) == data
    st = gsc.stat(_uri(name))
    assert st["size"] == size and st["etag"] and st["mtime_ns"] > 0
    gsc.delete(_uri(name))
    assert not gsc.exists(_uri(name))
    with pytest.raises(FileNotFoundError):
        gsc.stat(_uri(name))


def test_gs_gcs_scheme(gsc):
    gsc.put_bytes(f"gcs://{BUCKET}/alias/x", b"via gcs://")
    assert bytes(gsc.get(_uri("alias/x"))) == b"via gcs://"
    assert gsc.list(f"gcs://{BUCKET}/alias/") == [f"gcs://{BUCKET}/alias/x"]


def test_gs_ranges(gsc):
    data = _rand(100_000, 11)
    u = _uri("ranges/r.bin")
    gsc.put_bytes(u, data)
    for off, ln in [(0, 1), (0, 10), (1, 1), (5, 1000), (99_999, 1), (50_000, None),
                    (0, 100_000), (90_000, 50_000), (12345, 0)]:
        got = bytes(gsc.get_range(u, off, ln))
        want = data[off:] if ln is None else data[off:off + ln]
        assert got == want, (off, ln)
    assert bytes(gsc.get_range(u, 100_000, 10)) == b""
    with pytest.raises(ValueError, match="past the end"):
        gsc.get_range(u, 100_001, 10)


def test_gs_resumable_put(gsc, peer):
    size = (13 << 20) + 12345  # above the threshold: a resumable session fed in 3 parts
    data = _rand(size, 13)
    gsc.put_bytes(_uri("big/big.bin"), data)
    assert peer.get(BUCKET, "big/big.bin") == data
    assert bytes(gsc.get(_uri("big/big.bin"))) == data
    assert bytes(gsc.get_range(_uri("big/big.bin"), (5 << 20) - 7, 100)) == \
        data[(5 << 20) - 7:(5 << 20) + 93]


def test_gs_list_pages(gsc, peer):
    names = [f"lst/d{i % 3}/k{i:03d}" for i in range(23)] + ["lst/top.bin"]
    for n in names:
        gsc.put_bytes(_uri(n), n.encode())
    rec = gsc.list(_uri("lst/"), recursive=True)
    assert rec == sorted(_uri(n) for n in names)
    assert sorted(_uri(n) for n in peer.names(BUCKET, "lst/")) == rec
    assert gsc.list(_uri("lst/"), include_dirs=True) == [
        _uri("lst/d0/"), _uri("lst/d1/"), _uri("lst/d2/"), _uri("lst/top.bin")]
    assert gsc.list(_uri("lst/")) == [_uri("lst/top.bin")]  # objects only, as the original
    assert gsc.list(_uri("lst/d1/k00")) == [_uri("lst/d1/k001"), _uri("lst/d1/k004"),
                                             _uri("lst/d1/k007")]
    assert gsc.list(_uri("nothing-here/")) == []
    gsc.delete(_uri("lst/"), recursive=True)
    assert gsc.list(_uri("lst/"), recursive=True) == []


def test_gs_missing(gsc):
    u = _uri("missing/none.bin")
    with pytest.raises(FileNotFoundError) as ei:
        gsc.get(u)
    msg = str(ei.value)
    assert u in msg and "gs" in msg and "404" in msg
    with pytest.raises(FileNotFoundError):
        gsc.stat(u)
    assert gsc.delete(u) is None  # a missing object: nothing to do, as the original


def test_gs_odd_names(gsc, peer):
    for name in ["odd/a b.bin", "odd/plus+sign", "odd/eq=amp&q?.bin", "odd/ünï©ødé"]:
        data = name.encode() * 3
        gsc.put_bytes(_uri(name), data)
        assert peer.get(BUCKET, name) == data, name
        assert bytes(gsc.get(_uri(name))) == data, name


def test_gs_peer_interop(gsc, peer):
    small, big = _rand(70_000, 21), _rand((7 << 20) + 1, 22)
    peer.put(BUCKET, "interop/from-peer-small", small)
    peer.put(BUCKET, "interop/from-peer-big", big)
    assert bytes(gsc.get(_uri("interop/from-peer-small"))) == small
    assert bytes(gsc.get(_uri("interop/from-peer-big"))) == big
    gsc.put_bytes(_uri("interop/from-s3dlio-small"), small)
    gsc.put_bytes(_uri("interop/from-s3dlio-big"), big)
    assert peer.get(BUCKET, "interop/from-s3dlio-small") == small
    assert peer.get(BUCKET, "interop/from-s3dlio-big") == big


def test_gs_bearer_token(emu, s3dlio_mod):
    proxy = cloudemu.BearerProxy(emu.endpoint, "good-token")
    good = _start(proxy.endpoint, token="good-token", emulator=False)
    bad = _start(proxy.endpoint, token="stale-token", emulator=False)
    try:
        s3dlio_mod.connect(good.tcp_url)
        s3dlio_mod.put_bytes(_uri("auth/x"), b"with a token")
        assert bytes(s3dlio_mod.get(_uri("auth/x"))) == b"with a token"
        assert s3dlio_mod.stat(_uri("auth/x"))["size"] == 12
        assert "Bearer good-token" in proxy.bearer_seen()
        s3dlio_mod.connect(bad.tcp_url)
        with pytest.raises(PermissionError) as ei:
            s3dlio_mod.get(_uri("auth/x"))
        assert "401" in str(ei.value) and "Invalid Credentials" in str(ei.value)
        with pytest.raises(PermissionError):
            s3dlio_mod.put_bytes(_uri("auth/y"), b"no")
    finally:
        cloudemu.stop_server(good)
        cloudemu.stop_server(bad)
        proxy.close()


def test_gs_emulator_stopped_mid_transfer(s3dlio_mod):
    lone = cloudemu.gcs()
    try:
        srv = _start(lone.endpoint)
        try:
            s3dlio_mod.connect(srv.tcp_url)
            size = 48 << 20
            s3dlio_mod.put_bytes(_uri("stop/big"), _rand(size, 99))
            with s3dtest.WireConn(srv.address()) as w:
                w.hello()
                w.send([s3dtest.GET, 1, _uri("stop/big"), 0, None])
                f = w.frame()
                assert f[0] == s3dtest.HEADER and f[2] == size
                got = len(w.frame()[-1])
                time.sleep(0.5)  # unread: the server pauses the transfer mid-body
                lone.kill()
                while True:
                    f = w.frame()
                    if f[0] != s3dtest.DATA:
                        break
                    got += len(f[-1])
                assert f[0] == s3dtest.ERROR and got < size, f[:4]
                assert "gs GET" in f[3], f
            with pytest.raises(Exception) as ei:
                s3dlio_mod.stat(_uri("stop/big"))
            assert "gs" in str(ei.value)
            assert srv.alive()
        finally:
            cloudemu.stop_server(srv)
    finally:
        lone.kill()


# ---- service-account keys: a signed JWT exchanged for tokens ----

class TokenServer:
    """A loopback OAuth2 token endpoint that checks the JWT assertion's RS256 signature with
    the service account's public key and hands out short-lived tokens."""

    def __init__(self, public_key, email, ttl):
        import base64
        import http.server
        import threading
        import urllib.parse
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        srv = self
        self.issued, self.requests, self.ttl = [], 0, ttl

        def b64d(x):
            return base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                srv.requests += 1
                form = urllib.parse.parse_qs(self.rfile.read(
                    int(self.headers["Content-Length"])).decode())
                status, out = 400, {"error": "invalid_grant",
                                    "error_description": "Invalid JWT Signature."}
                try:
                    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
                    h, c, sig = form["assertion"][0].split(".")
                    public_key.verify(b64d(sig), f"{h}.{c}".encode(), padding.PKCS1v15(),
                                      hashes.SHA256())
                    claims = json.loads(b64d(c))
                    assert json.loads(b64d(h))["alg"] == "RS256"
                    assert claims["iss"] == email and claims["aud"] == srv.uri
                    assert "devstorage" in claims["scope"]
                    assert claims["exp"] > claims["iat"]
                    tok = f"tok-{len(srv.issued)}"
                    srv.issued.append(tok)
                    status, out = 200, {"access_token": tok, "expires_in": srv.ttl,
                                        "token_type": "Bearer"}
                except Exception:  # noqa: BLE001 (any defect: the 400 above)
                    pass
                body = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _sa_key(tmp_path, name, token_uri, private_key):
    from cryptography.hazmat.primitives import serialization
    pem = private_key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"type": "service_account", "project_id": "demo",
                                "client_email": "s3dlio@demo.iam.gserviceaccount.com",
                                "private_key": pem, "token_uri": token_uri}))
    return str(path)


def test_gs_service_account(emu, s3dlio_mod, tmp_path):
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = TokenServer(key.public_key(), "s3dlio@demo.iam.gserviceaccount.com", ttl=10)
    proxy = cloudemu.Proxy(emu.endpoint, lambda m, p, h: None if (
        h.get("Authorization", "").removeprefix("Bearer ") in tokens.issued) else
        (401, "application/json", b'{"error": {"code": 401, "message": "Invalid Credentials"}}'))
    env = cloudemu.gs_env(proxy.endpoint, emulator=False)
    env["GOOGLE_APPLICATION_CREDENTIALS"] = _sa_key(tmp_path, "good", tokens.uri, key)
    good = s3dtest.start_server([f"gs://{BUCKET}/"], threads=1, extra=cloudemu.CLOUD_FLAGS,
                                env=env)
    env = dict(env, GOOGLE_APPLICATION_CREDENTIALS=_sa_key(tmp_path, "bad", tokens.uri, other))
    bad = s3dtest.start_server([f"gs://{BUCKET}/"], threads=1, extra=cloudemu.CLOUD_FLAGS,
                               env=env)
    try:
        s3dlio_mod.connect(good.tcp_url)
        t0 = time.monotonic()
        s3dlio_mod.put_bytes(_uri("sa/x"), b"signed by a service account")
        assert bytes(s3dlio_mod.get(_uri("sa/x"))) == b"signed by a service account"
        assert s3dlio_mod.list(_uri("sa/")) == [_uri("sa/x")]
        # A 10 s token is refreshed after half its life. On a machine so loaded that the
        # calls above took most of that, only the counts that cannot depend on it are checked.
        in_time = time.monotonic() - t0 < 4.0
        if in_time:
            assert tokens.requests == 1  # one token serves many requests
        time.sleep(max(0.0, 5.3 - (time.monotonic() - t0)))
        assert s3dlio_mod.stat(_uri("sa/x"))["size"] == 27
        if in_time:
            assert tokens.requests == 2 and len(tokens.issued) == 2
        else:
            assert tokens.requests >= 2
        # a key the token endpoint does not accept: a clear error, no request goes out
        s3dlio_mod.connect(bad.tcp_url)
        with pytest.raises(PermissionError) as ei:
            s3dlio_mod.get(_uri("sa/x"))
        assert "token exchange" in str(ei.value) and "invalid_grant" in str(ei.value)
    finally:
        cloudemu.stop_server(good)
        cloudemu.stop_server(bad)
        proxy.close()
        tokens.close()
