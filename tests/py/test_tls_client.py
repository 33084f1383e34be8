"""The client's side of TLS (clientlib/cl_tls.c) against s3dliod --tls-cert: which URLs and
environment turn TLS on, server verification by S3DLIO_CA_BUNDLE (chain and name), clear
errors when either side does not speak TLS, and the data path over TLS (large objects,
get_many, several servers). Certificates are made per session with the openssl command."""
import hashlib
import os
import shutil
import subprocess

import pytest


pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


def _run(*argv, cwd):
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """ca.pem signs srv.pem (localhost, 127.0.0.1) and name.pem (only DNS:elsewhere.test);
    other.pem is an unrelated CA."""
    d = str(tmp_path_factory.mktemp("pki"))
    for ca in ("ca", "other"):
        _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
             f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN={ca} test CA",
             cwd=d)
    for name, san in (("srv", "DNS:localhost,IP:127.0.0.1"), ("name", "DNS:elsewhere.test")):
        _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName={san}\n")
        _run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey",
             "ca.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
             f"{name}.ext", cwd=d)
    return d


def _tls_server(new_server, pki, cert="srv"):
    return new_server.start(unix=False, extra=["--tls-cert", os.path.join(pki, f"{cert}.pem"),
                                               "--tls-key", os.path.join(pki, f"{cert}.key")])


def _port(srv):
    return srv.tcp_url.rsplit(":", 1)[1]


@pytest.fixture
def clean_env(monkeypatch, s3dlio_mod):
    for k in ("S3DLIO_CA_BUNDLE", "S3DLIO_TLS"):
        monkeypatch.delenv(k, raising=False)
    yield monkeypatch
    s3dlio_mod.connect(None)


def test_tls_url_with_the_right_ca(s3dlio_mod, new_server, data, pki, clean_env):
    srv = _tls_server(new_server, pki)
    clean_env.setenv("S3DLIO_CA_BUNDLE", os.path.join(pki, "ca.pem"))
    rel = data.size_rel((9 << 20) + 3)
    for url in (f"tls://127.0.0.1:{_port(srv)}", f"tls://localhost:{_port(srv)}",
                srv.tcp_url):  # tcp:// with S3DLIO_CA_BUNDLE set: TLS too
        s3dlio_mod.connect(url)
        assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)
        uris = [data.uri(data.small_rel(i)) for i in range(200)]
        got = s3dlio_mod.get_many(uris, max_in_flight=32)
        assert [bytes(v) for _, v in got] == [data.bytes(data.small_rel(i)) for i in range(200)]
        buf = bytearray(len(data.bytes(rel)))
        assert s3dlio_mod.get_into(data.uri(rel), buf) == len(buf)
        assert hashlib.sha256(buf).digest() == hashlib.sha256(data.bytes(rel)).digest()


def test_put_over_tls(s3dlio_mod, new_server, data, pki, clean_env):
    srv = _tls_server(new_server, pki)
    clean_env.setenv("S3DLIO_CA_BUNDLE", os.path.join(pki, "ca.pem"))
    s3dlio_mod.connect(f"tls://127.0.0.1:{_port(srv)}")
    uri = data.uri("tls/put.bin")
    payload = os.urandom((5 << 20) + 11)
    s3dlio_mod.put_bytes(uri, payload)
    assert bytes(s3dlio_mod.get(uri)) == payload
    s3dlio_mod.delete(uri)


def test_wrong_ca_is_refused_clearly(s3dlio_mod, new_server, pki, clean_env):
    srv = _tls_server(new_server, pki)
    clean_env.setenv("S3DLIO_CA_BUNDLE", os.path.join(pki, "other.pem"))
    with pytest.raises(PermissionError) as ei:
        s3dlio_mod.connect(f"tls://127.0.0.1:{_port(srv)}")
    msg = str(ei.value)
    assert "certificate" in msg and "other.pem" in msg, msg


def test_system_trust_store_does_not_know_a_private_ca(s3dlio_mod, new_server, pki, clean_env):
    srv = _tls_server(new_server, pki)
    with pytest.raises(PermissionError) as ei:
        s3dlio_mod.connect(f"tls://127.0.0.1:{_port(srv)}")
    assert "system's CA certificates" in str(ei.value)


def test_certificate_for_another_name_is_refused(s3dlio_mod, new_server, pki, clean_env):
    srv = _tls_server(new_server, pki, cert="name")
    clean_env.setenv("S3DLIO_CA_BUNDLE", os.path.join(pki, "ca.pem"))
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(PermissionError) as ei:
            s3dlio_mod.connect(f"tls://{host}:{_port(srv)}")
        assert "mismatch" in str(ei.value), str(ei.value)


def test_plain_client_to_tls_server_says_so(s3dlio_mod, new_server, pki, clean_env):
    srv = _tls_server(new_server, pki)
    with pytest.raises(ConnectionError) as ei:
        s3dlio_mod.connect(srv.tcp_url)
    assert "tls://" in str(ei.value), str(ei.value)


def test_tls_client_to_plain_server_says_so(s3dlio_mod, new_server, pki, clean_env):
    srv = new_server.start(unix=False)
    clean_env.setenv("S3DLIO_CA_BUNDLE", os.path.join(pki, "ca.pem"))
    with pytest.raises(ConnectionError) as ei:
        s3dlio_mod.connect(f"tls://127.0.0.1:{_port(srv)}")
    assert "speak TLS" in str(ei.value), str(ei.value)
    # S3DLIO_TLS=0 turns the CA bundle's implied TLS off for tcp:// URLs
    clean_env.setenv("S3DLIO_TLS", "0")
    s3dlio_mod.connect(srv.tcp_url)


def test_missing_ca_bundle_file(s3dlio_mod, new_server, pki, clean_env, tmp_path):
    srv = _tls_server(new_server, pki)
    clean_env.setenv("S3DLIO_CA_BUNDLE", str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError) as ei:
        s3dlio_mod.connect(f"tls://127.0.0.1:{_port(srv)}")
    assert "nope.pem" in str(ei.value)


def test_several_tls_servers(s3dlio_mod, new_server, data, pki, clean_env):
    servers = [_tls_server(new_server, pki) for _ in range(2)]
    clean_env.setenv("S3DLIO_CA_BUNDLE", os.path.join(pki, "ca.pem"))
    s3dlio_mod.connect(",".join(f"tls://127.0.0.1:{_port(s)}" for s in servers))
    uris = [data.uri(data.small_rel(i)) for i in range(100)]
    got = s3dlio_mod.get_many(uris)
    assert [bytes(v) for _, v in got] == [data.bytes(data.small_rel(i)) for i in range(100)]


def test_forked_child_opens_its_own_tls_connections(s3dlio_mod, new_server, data, pki,
                                                    clean_env):
    srv = _tls_server(new_server, pki)
    clean_env.setenv("S3DLIO_CA_BUNDLE", os.path.join(pki, "ca.pem"))
    s3dlio_mod.connect(f"tls://127.0.0.1:{_port(srv)}")
    rel = data.small_rel(5)
    assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's TLS sessions must not be reused
        os.close(r)
        ok = 0
        try:
            ok = int(bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel))
        finally:
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)
