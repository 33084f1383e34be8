"""TLS on TCP (--tls-cert, --tls-key, --tls-client-ca): a client that trusts the server's CA
works, one with another CA fails the handshake; client certificates when asked for. The
certificates are made here with the openssl command; the client is Python's ssl module over
raw wire frames (the s3dlio client's TLS is tested with the client)."""
import os
import shutil
import socket
import ssl
import subprocess

import pytest

import s3dtest


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d, name):
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def _signed(d, name, ca, server=True):
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        if server:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        else:
            f.write("extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f"{name}.pem", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is not installed")
    d = str(tmp_path_factory.mktemp("pki"))
    _ca(d, "ca")
    _ca(d, "otherca")
    _signed(d, "server", "ca")
    _signed(d, "client", "ca", server=False)
    _signed(d, "stranger", "otherca", server=False)
    return lambda name: os.path.join(d, name)


def _tls_conn(srv, cafile, cert=None, hostname="localhost"):
    ctx = ssl.create_default_context(cafile=cafile)
    if cert:
        ctx.load_cert_chain(cert + ".pem", cert + ".key")
    w = s3dtest.WireConn(srv.address())
    w.sock = ctx.wrap_socket(w.sock, server_hostname=hostname)
    return w


def _flags(pki, client_ca=False):
    f = ["--tls-cert", pki("server.pem"), "--tls-key", pki("server.key")]
    if client_ca:
        f += ["--tls-client-ca", pki("ca.pem")]
    return f


def test_right_ca_works(new_server, data, pki):
    srv = new_server.start(extra=_flags(pki))
    with _tls_conn(srv, pki("ca.pem")) as w:
        w.hello()
        for rel in (data.small_rel(7), data.size_rel(65537), data.size_rel((9 << 20) + 3)):
            r = w.get(data.uri(rel), rid=1)
            assert r.ok and r.data == data.bytes(rel), rel
            assert r.end[3] == s3dtest.crc32c(data.bytes(rel))
        rel = data.size_rel(1 << 20)
        r = w.get(data.uri(rel), 1000, 300_000, rid=2)
        assert r.ok and r.data == data.bytes(rel)[1000:301_000]
    # the Unix socket stays plain
    with s3dtest.WireConn(srv.address("unix")) as w:
        w.hello()
        assert w.get(data.uri(data.small_rel(7)), rid=1).ok


def test_wrong_ca_fails(new_server, data, pki):
    srv = new_server.start(extra=_flags(pki))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _tls_conn(srv, pki("otherca.pem"))
    # the name must match too
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|doesn't match"):
        _tls_conn(srv, pki("ca.pem"), hostname="elsewhere.example")
    # a plain client gets no frames: the server waits for a TLS handshake and drops it
    with s3dtest.WireConn(srv.address()) as w:
        w.send([s3dtest.HELLO, 0, 1, None, "plain"])
        with pytest.raises((EOFError, ConnectionResetError, s3dtest.WireError, ValueError)):
            w.frame()
    # the server is fine afterwards
    with _tls_conn(srv, pki("ca.pem")) as w:
        w.hello()


def test_client_certificates(new_server, data, pki):
    srv = new_server.start(extra=_flags(pki, client_ca=True))
    with _tls_conn(srv, pki("ca.pem"), cert=pki("client")) as w:
        w.hello()
        assert w.get(data.uri(data.small_rel(9)), rid=1).ok
    for cert in (None, pki("stranger")):
        # TLS 1.3 finishes the client's side of the handshake before the server has
        # checked the certificate: the refusal shows on the first read
        with pytest.raises((ssl.SSLError, EOFError, ConnectionResetError)):
            w = _tls_conn(srv, pki("ca.pem"), cert=cert)
            w.hello()


def test_tls_config_errors(pki, tmp_path):
    def run(*args):
        return subprocess.run([s3dtest.server_binary(), "--listen", "tcp://127.0.0.1:0",
                               *args], capture_output=True, text=True, timeout=30)
    p = run("--tls-cert", pki("server.pem"))
    assert p.returncode == 2 and "go together" in p.stderr
    p = run("--tls-cert", pki("server.pem"), "--tls-key", pki("client.key"))
    assert p.returncode == 2 and "--tls-key" in p.stderr and "client.key" in p.stderr
    p = run("--tls-cert", str(tmp_path / "none.pem"), "--tls-key", pki("server.key"))
    assert p.returncode == 2 and "none.pem" in p.stderr
