"""Bearer tokens (--token-file): checked at HELLO and on every request, with clear errors;
without a token file only loopback and Unix-socket peers are served. Real server, raw wire
connections for exact frames, and the real Python package for the exceptions users see."""
import os
import signal
import socket
import time

import pytest

import s3dtest

RW_TOKEN = "rw-token-0123456789abcdef"
RO_TOKEN = "ro-token-fedcba9876543210"
POLL_LIMIT = 60.0


def _token_file(tmp_path, data, lines=None):
    path = tmp_path / "tokens.txt"
    if lines is None:
        lines = [
            "# token  tenant  rights  prefixes",
            f"{RW_TOKEN} team-a rw {data.uri('scratch')}/,{data.uri('tree')}/",
            "",
            f"{RO_TOKEN}\tteam-b\tro\t{data.uri('tree')}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def tok_server(new_server, data, tmp_path):
    path = _token_file(tmp_path, data)
    srv = new_server.start(extra=["--token-file", path, "--metrics", "tcp://127.0.0.1:0"])
    srv.token_file = path
    return srv


def _hello_refused(srv, token, kind="tcp"):
    with s3dtest.WireConn(srv.address(kind)) as w:
        w.send([s3dtest.HELLO, 0, 1, token, "pytest"])
        f = w.frame()
        assert f[0] == s3dtest.ERROR and f[1] == 0, f
        assert w.wait_closed() == []
        return f


def test_missing_token_is_refused(tok_server):
    for kind in ("tcp", "unix"):  # with a token file, Unix-socket peers need one too
        f = _hello_refused(tok_server, None, kind)
        assert f[2] == s3dtest.E_PERMISSION
        assert "requires a token" in f[3] and "S3DLIO_TOKEN" in f[3]


def test_wrong_token_is_refused(tok_server):
    for token in ("nope", RW_TOKEN + "x", RW_TOKEN[:-1], ""):
        f = _hello_refused(tok_server, token)
        assert f[2] == s3dtest.E_PERMISSION
        assert ("not valid" in f[3]) or ("requires a token" in f[3] and token == "")
    m = s3dtest.scrape(tok_server)
    assert s3dtest.metric(m, "s3dliod_refused_connections_total") == 4


def test_read_only_token_cannot_write(tok_server, data):
    with s3dtest.WireConn(tok_server.address()) as w:
        w.hello(token=RO_TOKEN)
        rel = "tree/a.bin"
        r = w.get(data.uri(rel), rid=1)
        assert r.ok and r.data == data.bytes(rel)
        w.send([s3dtest.PUT, 2, data.uri("tree/new.bin"), 3])
        w.send_data(2, 0, b"abc")
        w.send([s3dtest.END, 2, 3, s3dtest.crc32c(b"abc")])
        r = w.read_reply(2)
        assert r.error[2] == s3dtest.E_PERMISSION
        assert "team-b" in r.error[3] and "read-only" in r.error[3] and "PUT" in r.error[3]
        assert data.uri("tree/new.bin") in r.error[3]
        w.send([s3dtest.DELETE, 3, data.uri(rel)])
        r = w.read_reply(3)
        assert r.error[2] == s3dtest.E_PERMISSION and "DELETE" in r.error[3]
        # the connection goes on working
        w.send([s3dtest.STAT, 4, data.uri(rel)])
        assert w.read_reply(4).ok
    assert not os.path.exists(data.path("tree/new.bin"))
    assert os.path.exists(data.path("tree/a.bin"))


def test_prefix_token_cannot_read_elsewhere(tok_server, data):
    with s3dtest.WireConn(tok_server.address()) as w:
        w.hello(token=RO_TOKEN)
        other = data.uri(data.small_rel(3))  # served by --allow, not by this token
        r = w.get(other, rid=1)
        assert r.error[2] == s3dtest.E_PERMISSION
        assert "team-b" in r.error[3] and other in r.error[3]
        assert data.uri("tree") + "/" in r.error[3]  # says what the token covers
        w.send([s3dtest.LIST, 2, data.uri(), 1])  # a listing wider than the token
        assert w.read_reply(2).error[2] == s3dtest.E_PERMISSION
        w.send([s3dtest.LIST, 3, data.uri("tree") + "/", 1])
        r = w.read_reply(3)
        assert r.ok and len(r.entries) == len(data.TREE)
        # a name that extends the prefix is not under it
        w.send([s3dtest.STAT, 4, data.uri("tree") + "x/a.bin"])
        assert w.read_reply(4).error[2] == s3dtest.E_PERMISSION
        # prefixes match the parsed URI: scheme case and repeated slashes do not matter
        spelled = "FILE://" + data.uri("tree/a.bin")[len("file://"):].replace("/tree/", "//tree//")
        w.send([s3dtest.STAT, 5, spelled])
        assert w.read_reply(5).ok


def test_read_write_token_writes_under_its_prefix(tok_server, data, scratch):
    path, uri = scratch
    with s3dtest.WireConn(tok_server.address()) as w:
        w.hello(token=RW_TOKEN)
        w.send([s3dtest.PUT, 1, uri + "ok.bin", 3])
        w.send_data(1, 0, b"abc")
        w.send([s3dtest.END, 1, 3, s3dtest.crc32c(b"abc")])
        assert w.read_reply(1).ok
        w.send([s3dtest.PUT, 2, data.uri("small/forbidden.bin"), 3])
        w.send_data(2, 0, b"abc")
        w.send([s3dtest.END, 2, 3, s3dtest.crc32c(b"abc")])
        r = w.read_reply(2)
        assert r.error[2] == s3dtest.E_PERMISSION and "team-a" in r.error[3]
    with open(os.path.join(path, "ok.bin"), "rb") as f:
        assert f.read() == b"abc"
    assert not os.path.exists(data.path("small/forbidden.bin"))
    m = s3dtest.scrape(tok_server)
    assert s3dtest.metric(m, "s3dliod_tenant_requests_total", tenant="team-a") == 1
    assert s3dtest.metric(m, "s3dliod_tenant_refused_total", tenant="team-a") == 1
    assert s3dtest.metric(m, "s3dliod_tenant_bytes_total", tenant="team-a") == 3


def test_python_errors_name_tenant_and_uri(tok_server, data):
    code = f"""
        import s3dlio
        s3dlio.connect({tok_server.tcp_url!r})
        assert bytes(s3dlio.get({data.uri('tree/b.txt')!r})) == {data.bytes('tree/b.txt')!r}
        try:
            s3dlio.get({data.uri(data.small_rel(1))!r})
        except PermissionError as e:
            print("GET", e)
        try:
            s3dlio.put_bytes({data.uri('tree/x.bin')!r}, b"x")
        except PermissionError as e:
            print("PUT", e)
    """
    out = s3dtest.run_py(code, env={"S3DLIO_TOKEN": RO_TOKEN}).stdout
    assert "GET" in out and "team-b" in out and data.small_rel(1) in out
    assert "PUT" in out and "read-only" in out
    bad = s3dtest.run_py(f"""
        import s3dlio
        try:
            s3dlio.connect({tok_server.tcp_url!r})
            s3dlio.stat({data.uri('tree/b.txt')!r})
        except Exception as e:
            print(type(e).__name__, e)
    """, env={"S3DLIO_TOKEN": "wrong"}).stdout
    assert "not valid" in bad


def test_sighup_reloads_tokens(tok_server, data, tmp_path):
    w_ro = s3dtest.WireConn(tok_server.address())
    w_ro.hello(token=RO_TOKEN)
    new_token = "new-token-" + "7" * 20
    _token_file(tmp_path, data, [f"{RW_TOKEN} team-a rw {data.uri('tree')}/",
                                 f"{new_token} team-c ro *"])
    n_before = sum("token file reloaded" in line for line in tok_server.log)
    tok_server.signal(signal.SIGHUP)
    deadline = time.monotonic() + POLL_LIMIT
    while sum("token file reloaded" in line for line in tok_server.log) == n_before:
        assert time.monotonic() < deadline, tok_server.stderr_tail()
        time.sleep(0.02)
    # the removed token: the next request on its connection ends it
    w_ro.send([s3dtest.STAT, 1, data.uri("tree/a.bin")])
    f = w_ro.frame()
    assert f[0] == s3dtest.ERROR and f[2] == s3dtest.E_PERMISSION and "revoked" in f[3]
    assert w_ro.wait_closed() == []
    w_ro.close()
    f = _hello_refused(tok_server, RO_TOKEN)
    assert "not valid" in f[3]
    with s3dtest.WireConn(tok_server.address()) as w:
        w.hello(token=new_token)
        r = w.get(data.uri(data.small_rel(2)), rid=1)  # '*': whatever --allow serves
        assert r.ok and r.data == data.bytes(data.small_rel(2))
    # a broken file is refused and the table in use stays
    (tmp_path / "tokens.txt").write_text("only-two fields\n")
    tok_server.signal(signal.SIGHUP)
    deadline = time.monotonic() + POLL_LIMIT
    while not any("only-two" in line or "tokens.txt:1" in line for line in tok_server.log):
        assert time.monotonic() < deadline, tok_server.stderr_tail()
        time.sleep(0.02)
    with s3dtest.WireConn(tok_server.address()) as w:
        w.hello(token=new_token)


def test_bad_token_file_is_a_config_error(data, tmp_path):
    import subprocess
    bad = tmp_path / "bad.txt"
    for text, what in [("tok team rx file:///x/\n", "ro or rw"),
                       ("tok team ro /x/\n", "URI prefix"),
                       ("tok te@m ro file:///x/\n", "tenant name"),
                       ("tok team ro file:///x/ max-conns=a\n", "not a number"),
                       ("tok team ro file:///x/ speed=1\n", "unknown limit"),
                       ("tok a ro file:///x/\ntok b ro file:///y/\n", "twice")]:
        bad.write_text(text)
        p = subprocess.run([s3dtest.server_binary(), "--listen", "tcp://127.0.0.1:0",
                            "--allow", data.allow, "--token-file", str(bad)],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, (text, p.stderr)
        assert what in p.stderr and "bad.txt" in p.stderr, (text, p.stderr)
    p = subprocess.run([s3dtest.server_binary(), "--token-file", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "No such file" in p.stderr


def _outward_address():
    """An address of this host that is not loopback (None if it has none)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
        ip = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if ip.startswith("127.") else ip


def test_without_token_file_only_local_peers(new_server, data):
    ip = _outward_address()
    if not ip:
        pytest.skip("this host has no non-loopback IPv4 address")
    port = s3dtest.free_tcp_port()
    srv = s3dtest.start_server([data.allow], tcp=False, unix_path=new_server.sock_path(),
                               extra=["--listen", f"tcp://0.0.0.0:{port}"], expect=2)
    try:
        # loopback and Unix: served
        for addr in (("127.0.0.1", port), srv.unix_path):
            with s3dtest.WireConn(addr) as w:
                w.hello()
        # the same server reached from the host's own outward address: refused
        with s3dtest.WireConn((ip, port)) as w:
            w.send([s3dtest.HELLO, 0, 1, None, "pytest"])
            f = w.frame()
            assert f[0] == s3dtest.ERROR and f[2] == s3dtest.E_PERMISSION
            assert ip in f[3] and "--token-file" in f[3]
            assert w.wait_closed() == []
    finally:
        assert srv.stop() == 0, srv.stderr_tail()


def test_moving_a_token_to_another_tenant_keeps_both_counts(tok_server, data, tmp_path,
                                                           big_file):
    """A request in flight when SIGHUP moves its token to another tenant is given back to
    the tenant that counted it: neither tenant's in-flight gauge drifts."""
    rel = big_file[0]
    w = s3dtest.WireConn(tok_server.address())
    w.hello(token=RW_TOKEN)
    # a large GET we do not read: it stays in flight, counted against team-a
    w.send([s3dtest.GET, 1, data.uri(rel), 0, None])
    _token_file(tmp_path, data, [f"{RW_TOKEN} team-z rw {data.uri('scratch')}/,"
                                 f"{data.uri('tree')}/,{data.uri('big')}/"])
    n_before = sum("token file reloaded" in line for line in tok_server.log)
    tok_server.signal(signal.SIGHUP)
    deadline = time.monotonic() + POLL_LIMIT
    while sum("token file reloaded" in line for line in tok_server.log) == n_before:
        assert time.monotonic() < deadline, tok_server.stderr_tail()
        time.sleep(0.02)
    w.send([s3dtest.STAT, 2, data.uri("tree/a.bin")])  # the connection now belongs to team-z
    w.close()  # ends both requests

    def gauge(tenant):
        return s3dtest.metric(s3dtest.scrape(tok_server), "s3dliod_tenant_requests_in_flight",
                              tenant=tenant)
    deadline = time.monotonic() + POLL_LIMIT
    while gauge("team-a") != 0 or gauge("team-z") != 0:
        assert time.monotonic() < deadline, (gauge("team-a"), gauge("team-z"))
        time.sleep(0.05)
    # team-z is not left at a wrapped count: its requests are served
    with s3dtest.WireConn(tok_server.address()) as w2:
        w2.hello(token=RW_TOKEN)
        r = w2.get(data.uri("tree/a.bin"), rid=1)
        assert r.error is None and r.data == data.bytes("tree/a.bin"), r.error
