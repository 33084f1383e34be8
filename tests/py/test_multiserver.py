"""Several servers behind one client (clientlib/cl_route.c): a server list in the URL,
rendezvous hashing of URIs over the servers, and failover when one dies.

Which server served a URI is read from each server's own debug log ("op=GET uri=..."): the
servers are real s3dliod processes on loopback, not stand-ins."""
import os
import re
import subprocess
import sys
import threading
import time

import pytest

import s3dtest

_GET_RE = re.compile(r"op=GET uri=(\S+)")
N = 300


def _servers(new_server, k):
    return [new_server.start(unix=False, extra=["--log-level", "debug"]) for _ in range(k)]


def _list_url(servers):
    return ",".join(s.tcp_url for s in servers)


def _served(srv):
    """URIs each GET log line of srv names, in order (quotes stripped)."""
    out = []
    for line in list(srv.log):
        m = _GET_RE.search(line)
        if m:
            out.append(m.group(1).strip('"'))
    return out


def _wait_logged(servers, want, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(len(_served(s)) for s in servers) >= want:
            return
        time.sleep(0.05)


def _uris(data, n=N):
    return [data.uri(data.small_rel(i)) for i in range(n)]


def test_keys_spread_over_servers_each_uri_to_one(s3dlio_mod, new_server, data):
    servers = _servers(new_server, 3)
    s3dlio_mod.connect(_list_url(servers))
    uris = _uris(data)
    got = s3dlio_mod.get_many(uris)
    for i, (uri, (u, view)) in enumerate(zip(uris, got)):
        assert u == uri
        assert bytes(view) == data.bytes(data.small_rel(i)), uri
    _wait_logged(servers, N)
    per = [_served(s) for s in servers]
    assert sum(len(p) for p in per) == N, [len(p) for p in per]
    owners = {}
    for k, p in enumerate(per):
        assert p, f"server {k} got no request: keys are not spread ({[len(q) for q in per]})"
        assert len(p) < N * 0.6, f"server {k} got {len(p)} of {N}: badly unbalanced"
        for u in p:
            assert u not in owners, f"{u} went to two servers"
            owners[u] = k
    # single calls follow the same routing: get() of a URI goes to its owner
    before = [len(p) for p in per]
    for i in (0, 7, 42):
        assert bytes(s3dlio_mod.get(uris[i])) == data.bytes(data.small_rel(i))
    _wait_logged(servers, N + 3)
    after = [len(_served(s)) for s in servers]
    for i in (0, 7, 42):
        k = owners[uris[i]]
        assert after[k] > before[k], f"get({uris[i]}) did not go to server {k}"
    assert sum(after) == N + 3


def test_another_process_routes_the_same_way(s3dlio_mod, new_server, data):
    """Rendezvous hashing needs no coordination: a second client (another process, servers
    listed in another order) sends every URI to the same server."""
    servers = _servers(new_server, 3)
    uris = _uris(data, 120)
    s3dlio_mod.connect(_list_url(servers))
    s3dlio_mod.get_many(uris)
    _wait_logged(servers, 120)
    first = [set(_served(s)) for s in servers]
    code = ("import sys, s3dlio\n"
            "s3dlio.connect(sys.argv[1])\n"
            "s3dlio.get_many(sys.argv[2:])\n")
    env = dict(os.environ)
    subprocess.run([sys.executable, "-c", code, _list_url(servers[::-1])] + uris, env=env,
                   check=True, timeout=120)
    _wait_logged(servers, 240)
    for k, s in enumerate(servers):
        second = _served(s)[len(first[k]):]
        assert set(second) == first[k], f"server {k} saw a different share the second time"


def test_one_server_killed_mid_run_job_completes(s3dlio_mod, new_server, data):
    servers = _servers(new_server, 3)
    s3dlio_mod.connect(_list_url(servers))
    uris = _uris(data)
    errors = []
    rounds = []
    stop = threading.Event()

    def job():
        try:
            for r in range(40):
                got = s3dlio_mod.get_many(uris, max_in_flight=16)
                for i, (_, view) in enumerate(got):
                    if bytes(view) != data.bytes(data.small_rel(i)):
                        errors.append(f"round {r}: wrong bytes for {uris[i]}")
                        return
                rounds.append(r)
                if stop.is_set() and r >= 3:
                    return
        except Exception as e:  # the job must not fail: report it to the test thread
            errors.append(repr(e))

    t = threading.Thread(target=job)
    t.start()
    deadline = time.monotonic() + 60
    while len(rounds) < 2 and not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    victim = servers[1]
    victim.kill()
    stop.set()
    t.join(timeout=300)
    assert not t.is_alive(), "the job hung after a server was killed"
    assert not errors, errors
    assert len(rounds) >= 4
    # after the kill, everything still works and nothing goes to the dead server
    got = s3dlio_mod.get_many(uris)
    assert [bytes(v) for _, v in got] == [data.bytes(data.small_rel(i)) for i in range(N)]
    for i in range(0, N, 37):
        assert bytes(s3dlio_mod.get(uris[i])) == data.bytes(data.small_rel(i))
    assert not victim.alive()


def test_server_down_at_connect_is_skipped(s3dlio_mod, new_server, data):
    servers = _servers(new_server, 2)
    dead = f"tcp://127.0.0.1:{s3dtest.free_tcp_port()}"
    s3dlio_mod.connect(",".join([servers[0].tcp_url, dead, servers[1].tcp_url]))
    uris = _uris(data, 100)
    got = s3dlio_mod.get_many(uris)
    assert [bytes(v) for _, v in got] == [data.bytes(data.small_rel(i)) for i in range(100)]
    _wait_logged(servers, 100)
    assert sum(len(_served(s)) for s in servers) == 100


def test_all_servers_down_is_one_clear_error(s3dlio_mod, new_server, data):
    servers = _servers(new_server, 2)
    s3dlio_mod.connect(_list_url(servers))
    uri = data.uri(data.small_rel(3))
    assert bytes(s3dlio_mod.get(uri)) == data.bytes(data.small_rel(3))
    for s in servers:
        s.kill()
    with pytest.raises(ConnectionError) as ei:
        s3dlio_mod.get(uri)
    msg = str(ei.value)
    assert "all 2 servers failed" in msg, msg
    for s in servers:
        assert s.tcp_url in msg, msg
    with pytest.raises(ConnectionError):
        s3dlio_mod.get_many(_uris(data, 20))


def test_no_server_reachable_at_connect(s3dlio_mod):
    urls = [f"tcp://127.0.0.1:{s3dtest.free_tcp_port()}" for _ in range(2)]
    with pytest.raises(ConnectionError) as ei:
        s3dlio_mod.connect(",".join(urls))
    assert "none of the 2 servers answered" in str(ei.value)
    s3dlio_mod.connect(None)


@pytest.mark.parametrize("bad", ["tcp://127.0.0.1:1,,tcp://127.0.0.1:2",
                                 "tcp://127.0.0.1:1, ", "tcp://127.0.0.1:1,http://x:1"])
def test_malformed_server_list(s3dlio_mod, bad):
    with pytest.raises(ValueError) as ei:
        s3dlio_mod.connect(bad)
    assert "127.0.0.1:1" in str(ei.value) or "http://x:1" in str(ei.value)
    s3dlio_mod.connect(None)


def test_put_stat_delete_follow_the_route(s3dlio_mod, new_server, data, tmp_path):
    servers = _servers(new_server, 3)
    s3dlio_mod.connect(_list_url(servers))
    base = data.uri("multiserver/")
    for i in range(12):
        uri = f"{base}obj{i}.bin"
        payload = os.urandom(1000 + i)
        s3dlio_mod.put_bytes(uri, payload)
        assert s3dlio_mod.stat(uri)["size"] == len(payload)
        assert bytes(s3dlio_mod.get(uri)) == payload
        s3dlio_mod.delete(uri)
        assert not s3dlio_mod.exists(uri)


def test_a_server_that_never_answers_is_passed_over(s3dlio_mod, new_server, data):
    """A listener that accepts TCP connections but never answers HELLO (a hung server): the
    client's connect times out and the requests move to the next server."""
    import socket
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    try:
        good = _servers(new_server, 1)[0]
        url = f"tcp://127.0.0.1:{hung.getsockname()[1]},{good.tcp_url}"
        s3dlio_mod.connect(url)  # succeeds: one server answers
        time.sleep(1.2)  # past the 1 s the failed probe avoids it: the next call tries it
        uris = _uris(data, 60)
        for _ in range(2):
            got = s3dlio_mod.get_many(uris)
            assert [bytes(v) for _, v in got] == [data.bytes(data.small_rel(i))
                                                  for i in range(60)]
        _wait_logged([good], 120)
        assert len(_served(good)) == 120
    finally:
        hung.close()
        s3dlio_mod.connect(None)
