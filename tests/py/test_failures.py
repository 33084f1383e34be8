"""Failures of peers: clients killed mid-transfer, the server killed mid-transfer, SIGTERM
draining a transfer in flight, idle timeouts, a dead --parent-pid."""
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

import s3dtest
from s3dtest import END, ERROR, GET, HEADER, Reply, WireConn

HERE = os.path.dirname(os.path.abspath(__file__))


def _check_serving(s3dlio_mod, srv, data, url=None):
    """srv is alive and a fresh client gets byte-exact data from it."""
    assert srv.alive(), "server died\n" + srv.describe()
    s3dlio_mod.connect(url or srv.tcp_url)
    for size in (0, 65537, (9 << 20) + 3):
        rel = data.size_rel(size)
        assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)
    with WireConn(srv.address("unix")) as c:
        c.hello()
        r = c.get(data.uri(data.size_rel(4096)))
        assert r.ok and r.data == data.bytes(data.size_rel(4096))


RAW_CLIENT = """
    import sys, time
    sys.path.insert(0, {here!r})
    from s3dtest import WireConn, GET, HEADER, DATA
    c = WireConn({addr!r})
    c.hello()
    c.send([GET, 1, {uri!r}, 0, None])
    h = c.frame()
    assert h[0] == HEADER, h
    d = c.frame()
    assert d[0] == DATA, d[:3]
    print("READY", flush=True)
    time.sleep(300)
"""


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_raw_clients_sigkilled_mid_transfer(s3dlio_mod, new_server, data, big_file, kind):
    srv = new_server.start()
    rel, size, digest, tail = big_file
    addr = srv.address(kind)
    procs = [s3dtest.popen_py(RAW_CLIENT.format(here=HERE, addr=addr, uri=data.uri(rel)))
             for _ in range(4)]
    try:
        for p in procs:
            s3dtest.read_line_until(p, lambda line: line == "READY")
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    _check_serving(s3dlio_mod, srv, data)
    # the big object itself is still served whole
    v = s3dlio_mod.get(data.uri(rel))
    assert len(v) == size and s3dtest.sha256(v) == digest


def test_s3dlio_client_sigkilled_mid_transfer(s3dlio_mod, new_server, data, big_file):
    srv = new_server.start()
    rel, size, _, _ = big_file
    p = s3dtest.popen_py(f"""
        import s3dlio
        s3dlio.connect({srv.tcp_url!r})
        for i in range(100000):
            v = s3dlio.get({data.uri(rel)!r})
            assert len(v) == {size}
            print("GOT", i, flush=True)
        """)
    try:
        s3dtest.read_line_until(p, lambda line: line.startswith("GOT 1"))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    _check_serving(s3dlio_mod, srv, data)


def _loop_gets(fn, state, started, limit=200):
    try:
        for _ in range(limit):
            fn()
            state["done"] += 1
            started.set()
    except BaseException as e:  # noqa: BLE001 - examined by the test
        state["exc"] = e
    finally:
        started.set()


@pytest.mark.parametrize("call", ["get", "get_into", "get_many"])
def test_server_sigkilled_mid_get_raises_connection_error(s3dlio_mod, new_server, data,
                                                          big_file, call):
    rel, size, _, tail = big_file
    uri = data.uri(rel)
    srv = new_server.start()
    s3dlio_mod.connect(srv.tcp_url)
    state = {"done": 0, "exc": None, "bad": []}
    started = threading.Event()
    buf = bytearray(size)

    def one():
        if call == "get":
            v = s3dlio_mod.get(uri)
        elif call == "get_into":
            n = s3dlio_mod.get_into(uri, buf)
            v = memoryview(buf)[:n]
        else:
            v = s3dlio_mod.get_many([uri, data.uri(data.size_rel(1 << 20))], max_in_flight=2)[0][1]
        if len(v) != size or bytes(memoryview(v)[-4096:]) != tail:
            state["bad"].append(len(v))

    t = threading.Thread(target=_loop_gets, args=(one, state, started), daemon=True)
    t.start()
    assert started.wait(120), "the first get never finished"
    assert state["exc"] is None, f"the first gets failed: {state['exc']!r}"
    srv.kill()
    t.join(120)
    assert not t.is_alive(), f"{call} hung after the server was killed"
    assert not state["bad"], f"{call} returned partial objects: sizes {state['bad']}"
    exc = state["exc"]
    assert isinstance(exc, ConnectionError), f"{call} raised {exc!r}, not ConnectionError"
    assert uri in str(exc) or "127.0.0.1" in str(exc), str(exc)

    srv2 = new_server.start()
    s3dlio_mod.connect(srv2.tcp_url)
    v = s3dlio_mod.get(uri)
    assert len(v) == size and bytes(v.memoryview()[-4096:]) == tail


def test_restart_on_same_tcp_port_client_reconnects(s3dlio_mod, new_server, data):
    srv = new_server.start(unix=False)
    port = srv.port
    s3dlio_mod.connect(srv.tcp_url)
    rel = data.size_rel(65537)
    assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)
    before = s3dlio_mod.stats()
    srv.kill()
    with pytest.raises(ConnectionError):
        s3dlio_mod.get(data.uri(rel))
    new_server.start(unix=False, tcp_port=port)
    # the same client (no new connect()) finds the restarted server
    assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)
    after = s3dlio_mod.stats()
    assert after["connects"] + after["reconnects"] > before["connects"] + before["reconnects"]


def test_restart_on_same_unix_socket_after_sigkill(s3dlio_mod, new_server, data):
    """A crashed server leaves its socket file behind; the next one on that path must take it
    over, and a client connected to that path reconnects."""
    path = new_server.sock_path("restart")
    srv = new_server.start(unix_path=path)
    s3dlio_mod.connect("unix://" + path)
    rel = data.size_rel(4096)
    assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)
    srv.kill()
    with pytest.raises(ConnectionError) as ei:
        s3dlio_mod.get(data.uri(rel))
    assert path in str(ei.value) or data.uri(rel) in str(ei.value)
    new_server.start(unix_path=path)
    assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)


def test_sigterm_drains_raw_transfer_in_flight(new_server, data, big_file):
    rel, size, digest, _ = big_file
    srv = new_server.start(drain_timeout=120)
    c = WireConn(srv.address("tcp"))
    c.hello()
    c.send([GET, 1, data.uri(rel), 0, None])
    reply = Reply(1)
    first = c.frame()
    assert first[0] == HEADER, first
    reply.add(first)
    reply.add(c.frame())
    srv.signal(signal.SIGTERM)

    # new work is refused (connection refused, closed, or ERROR SHUTDOWN) while we drain
    refused = None
    deadline = time.monotonic() + 30
    while refused is None and time.monotonic() < deadline:
        try:
            with WireConn(srv.address("tcp"), timeout=30) as c2:
                c2.send([s3dtest.HELLO, 0, 1, None, "late"],
                        [GET, 9, data.uri(data.size_rel(1)), 0, None])
                seen = []
                try:
                    while True:
                        f = c2.frame()
                        seen.append(f[0])
                        if f[0] == ERROR:
                            refused = f"ERROR {f[2]}"
                            break
                        if f[0] == END:
                            break
                except (EOFError, ConnectionResetError):
                    refused = "closed"
            if refused is None:
                time.sleep(0.05)
        except ConnectionRefusedError:
            refused = "refused"
        except (ConnectionResetError, BrokenPipeError):
            # the kernel completed the handshake as the listener closed: reset, i.e. refused
            refused = "reset"
    assert refused is not None, "the draining server kept taking new requests"

    # the request in flight completes, whole and intact
    for _ in range(1_000_000):
        f = c.frame()
        assert f[1] == 1, f[:3]
        if reply.add(f):
            break
    assert reply.error is None, f"drain cut the transfer: {reply.error}"
    assert reply.end[2] == size
    body = reply.data
    assert len(body) == size and s3dtest.sha256(body) == digest
    assert reply.end[3] == s3dtest.crc32c(body)
    c.wait_closed()
    c.close()
    rc = srv.wait(60)
    assert rc == 0, f"s3dliod exited {rc} after draining\n" + srv.describe()
    srv.stopped_rc = rc


def test_sigterm_while_s3dlio_gets_in_flight(s3dlio_mod, new_server, data, big_file):
    rel, size, _, tail = big_file
    srv = new_server.start(drain_timeout=60)
    s3dlio_mod.connect(srv.tcp_url)
    state = {"done": 0, "exc": None, "bad": []}
    started = threading.Event()

    def one():
        v = s3dlio_mod.get(data.uri(rel))
        if len(v) != size or bytes(v.memoryview()[-4096:]) != tail:
            state["bad"].append(len(v))

    t = threading.Thread(target=_loop_gets, args=(one, state, started), daemon=True)
    t.start()
    assert started.wait(120)
    done_before = state["done"]
    srv.signal(signal.SIGTERM)
    rc = srv.wait(90)
    t.join(90)
    assert not t.is_alive()
    assert rc == 0, f"s3dliod exited {rc} after SIGTERM\n" + srv.describe()
    srv.stopped_rc = rc
    assert not state["bad"], f"partial objects returned: {state['bad']}"
    assert state["done"] >= done_before
    # PROTOCOL.md: SHUTDOWN (draining) and a closed connection are both ConnectionError
    assert isinstance(state["exc"], ConnectionError), repr(state["exc"])


def test_drain_timeout_bounds_shutdown_with_stalled_reader(new_server, data, big_file):
    rel = big_file[0]
    srv = new_server.start(drain_timeout=2)
    c = WireConn(srv.address("tcp"))
    c.hello()
    c.send([GET, 1, data.uri(rel), 0, None])
    assert c.frame()[0] == HEADER
    srv.signal(signal.SIGTERM)  # and never read again
    rc = srv.wait(60)
    c.close()
    assert rc is not None, "s3dliod did not exit after --drain-timeout with a stalled reader"
    assert rc >= 0, f"s3dliod died of signal {-rc}"
    srv.stopped_rc = rc


# ---- idle timeout ----
def test_idle_connection_after_hello_is_closed(new_server):
    srv = new_server.start(extra=["--idle-timeout", "1"])
    with WireConn(srv.address("tcp"), timeout=60) as c:
        c.hello()
        try:
            frames = c.wait_closed()
        except socket.timeout:
            pytest.fail("idle connection still open after 60 s with --idle-timeout 1")
        assert all(f[0] == ERROR for f in frames), frames


@pytest.mark.parametrize("sent", [b"", b"\x95\x01"], ids=["silent", "partial-hello"])
def test_idle_connection_before_hello_is_closed(new_server, sent):
    srv = new_server.start(extra=["--idle-timeout", "1"])
    with WireConn(srv.address("unix"), timeout=60) as c:
        if sent:
            c.send_raw(sent)
        try:
            c.wait_closed()
        except socket.timeout:
            pytest.fail("stalled connection still open after 60 s with --idle-timeout 1")
    assert srv.alive()


def test_client_survives_idle_close(s3dlio_mod, new_server, data):
    srv = new_server.start(extra=["--idle-timeout", "1"])
    s3dlio_mod.connect(srv.tcp_url)
    rel = data.size_rel(65537)
    assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)
    before = s3dlio_mod.stats()
    time.sleep(3)  # the pooled connection is closed by the server meanwhile
    assert bytes(s3dlio_mod.get(data.uri(rel))) == data.bytes(rel)
    res = s3dlio_mod.get_many([data.uri(data.small_rel(i)) for i in range(20)], max_in_flight=8)
    assert all(bytes(v) == data.bytes(data.small_rel(i)) for i, (_, v) in enumerate(res))
    after = s3dlio_mod.stats()
    assert after["connects"] > before["connects"]


# ---- parent pid ----
def test_server_exits_when_parent_pid_dies(new_server, data):
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        srv = new_server.start(extra=["--parent-pid", str(sleeper.pid)])
        assert srv.alive()
        sleeper.kill()
        sleeper.wait()
        rc = srv.wait(60)
        assert rc is not None, "s3dliod still running 60 s after its --parent-pid died"
        assert rc == 0, f"exit code {rc}\n" + srv.describe()
        srv.stopped_rc = rc
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
