"""Request coalescing in the object cache: concurrent GETs of one object cause one backend
read, against the S3 emulator (s3rver). Backend reads are counted by the server's /metrics.

A gate (a loopback proxy between the server and the emulator that holds GETs of chosen keys)
makes the "concurrent" part deterministic: the test sees every waiter queued (by the
server's own s3dliod_cache_coalesced_total) before it lets the one backend GET through."""
import hashlib
import json
import random
import threading
import time

import pytest

import cloudemu
import s3dtest

BUCKET = "coal"
MET = ["--metrics", "tcp://127.0.0.1:0"]
POLL_LIMIT = 60.0  # seconds before a wait for the server's counters is called a hang


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    e = cloudemu.s3rver(str(tmp_path_factory.mktemp("s3rver-coal")), [BUCKET])
    yield e
    e.stop()


@pytest.fixture(scope="module")
def boto(emu):
    return cloudemu.boto_s3(emu.endpoint)


class Gate:
    """Holds backend GETs of keys under a prefix until released; can fail them instead."""

    def __init__(self, emu, prefix):
        self.prefix = f"/{BUCKET}/{prefix}"
        self.open = threading.Event()
        self.fail = False
        self.proxy = cloudemu.Proxy(emu.endpoint, self.intercept, keep_host=True)

    def intercept(self, method, path, headers):
        if method == "GET" and path.startswith(self.prefix):
            self.open.wait(POLL_LIMIT)
            if self.fail:
                return (403, "application/xml",
                        b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code>"
                        b"<Message>gate says no</Message></Error>")
        return None

    def close(self):
        self.open.set()
        self.proxy.close()


@pytest.fixture
def gated(emu):
    started, gates = [], []

    def start(prefix, extra=()):
        g = Gate(emu, prefix)
        gates.append(g)
        s = s3dtest.start_server([f"s3://{BUCKET}/"], threads=4,
                                 extra=cloudemu.CLOUD_FLAGS + MET + ["--cache-mem", "64m",
                                                                     "--cache-validate",
                                                                     "3600"] + list(extra),
                                 env=cloudemu.s3_env(g.proxy.endpoint))
        started.append(s)
        return s, g
    yield start
    for g in gates:
        g.close()
    for s in started:
        cloudemu.stop_server(s)


def _uri(key):
    return f"s3://{BUCKET}/{key}"


def _wait_metric(srv, name, want):
    deadline = time.monotonic() + POLL_LIMIT
    while True:
        got = s3dtest.metric(s3dtest.scrape(srv), name)
        if got == want:
            return
        assert got < want, f"{name} went past {want}: {got}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} stayed at {got}, waiting for {want}")
        time.sleep(0.02)


def test_waiters_share_one_read_despite_cancel_and_disconnect(emu, boto, gated):
    data = random.Random(1).randbytes(500_000)
    boto.put_object(Bucket=BUCKET, Key="g1/x.bin", Body=data)
    srv, gate = gated("g1/")
    ranges = [(0, None), (0, None), (10, 100), (499_000, None), (250_000, 4096),
              (0, 1), (0, None), (0, None)]
    conns = []
    for i, (off, ln) in enumerate(ranges):
        w = s3dtest.WireConn(srv.address())
        w.hello()
        w.send([s3dtest.GET, 100 + i, _uri("g1/x.bin"), off, ln])
        conns.append(w)
    _wait_metric(srv, "s3dliod_cache_coalesced_total", len(ranges) - 1)
    # one waiter cancels, one goes away: the others must not notice
    conns[6].send([s3dtest.CANCEL, 106])
    r = conns[6].read_reply(106)
    assert r.error[2] == s3dtest.E_CANCELLED
    conns[7].close()
    gate.open.set()
    for i, (off, ln) in enumerate(ranges[:6]):
        r = conns[i].read_reply(100 + i)
        assert r.ok, r.error
        want = data[off:] if ln is None else data[off:off + ln]
        assert r.data == want, i
        assert r.end[3] == s3dtest.crc32c(want)
        assert r.header[3] == len(data)
    for w in conns:
        w.close()
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend="s3", op="GET") == 1
    assert s3dtest.metric(m, "s3dliod_cache_misses_total") == 1
    assert s3dtest.metric(m, "s3dliod_cache_coalesced_total") == len(ranges) - 1


def test_failed_fetch_fails_every_waiter_and_caches_nothing(emu, boto, gated):
    data = random.Random(2).randbytes(20_000)
    boto.put_object(Bucket=BUCKET, Key="g2/y.bin", Body=data)
    srv, gate = gated("g2/")
    gate.fail = True
    conns = []
    for i in range(4):
        w = s3dtest.WireConn(srv.address())
        w.hello()
        w.send([s3dtest.GET, 1, _uri("g2/y.bin"), 0, None])
        conns.append(w)
    _wait_metric(srv, "s3dliod_cache_coalesced_total", 3)
    gate.open.set()
    errors = [w.read_reply(1).error for w in conns]
    assert all(e is not None and e[2] == s3dtest.E_PERMISSION for e in errors), errors
    assert len({e[3] for e in errors}) == 1, errors  # the same message for all
    assert "g2/y.bin" in errors[0][3] and "AccessDenied" in errors[0][3]
    gate.fail = False
    r = conns[0].get(_uri("g2/y.bin"), rid=2)
    assert r.ok and r.data == data
    for w in conns:
        w.close()
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend="s3", op="GET") == 2
    assert s3dtest.metric(m, "s3dliod_backend_errors_total", backend="s3", op="GET") == 1


N_OBJECTS = 200
N_CLIENTS = 16

CLIENT = r"""
import hashlib, json, sys
import s3dlio
url, uris = sys.argv[1], json.loads(sys.stdin.read())
s3dlio.connect(url)
print(json.dumps({u: hashlib.sha256(bytes(s3dlio.get(u))).hexdigest() for u in uris}))
"""


def test_sixteen_clients_two_hundred_objects_two_hundred_reads(emu, boto, tmp_path):
    rnd = random.Random(3)
    want = {}
    for i in range(N_OBJECTS):
        key = f"many/obj{i:03d}.bin"
        body = rnd.randbytes(rnd.randrange(1, 64 << 10))
        boto.put_object(Bucket=BUCKET, Key=key, Body=body)
        want[_uri(key)] = hashlib.sha256(body).hexdigest()
    srv = s3dtest.start_server([f"s3://{BUCKET}/"], threads=4,
                               extra=cloudemu.CLOUD_FLAGS + MET + ["--cache-mem", "256m"],
                               env=cloudemu.s3_env(emu.endpoint))
    try:
        script = tmp_path / "client.py"
        script.write_text(CLIENT)
        import subprocess
        import sys
        uris = sorted(want)  # the same order for all: many GETs of one object at once
        procs = [subprocess.Popen([sys.executable, str(script), srv.tcp_url],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for _ in range(N_CLIENTS)]
        outs = [p.communicate(json.dumps(uris), timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
            assert json.loads(out) == want
        m = s3dtest.scrape(srv)
        assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend="s3",
                              op="GET") == N_OBJECTS
        assert s3dtest.metric(m, "s3dliod_cache_misses_total") == N_OBJECTS
        assert s3dtest.metric(m, "s3dliod_cache_hits_total") + \
            s3dtest.metric(m, "s3dliod_cache_coalesced_total") == N_OBJECTS * (N_CLIENTS - 1)
        assert s3dtest.metric(m, "s3dliod_requests_total", backend="s3", op="GET") == \
            N_OBJECTS * N_CLIENTS
    finally:
        cloudemu.stop_server(srv)


def test_drain_finishes_a_fetch_others_wait_on(emu, boto, gated):
    """The fetch runs on the loop of the connection that missed first; on SIGTERM that loop
    keeps running it after its own connections are gone, for waiters on other loops."""
    import signal
    data = random.Random(4).randbytes(70_000)
    boto.put_object(Bucket=BUCKET, Key="g3/z.bin", Body=data)
    srv, gate = gated("g3/", ["--drain-timeout", "60"])
    first = s3dtest.WireConn(srv.address())
    first.hello()
    first.send([s3dtest.GET, 1, _uri("g3/z.bin"), 0, None])
    _wait_metric(srv, "s3dliod_cache_misses_total", 1)
    # accepted next, so handed to the next worker (round-robin)
    other = s3dtest.WireConn(srv.address())
    other.hello()
    other.send([s3dtest.GET, 1, _uri("g3/z.bin"), 0, None])
    _wait_metric(srv, "s3dliod_cache_coalesced_total", 1)
    first.send([s3dtest.CANCEL, 1])
    assert first.read_reply(1).error[2] == s3dtest.E_CANCELLED
    srv.signal(signal.SIGTERM)
    first.close()
    _wait_line = time.monotonic() + POLL_LIMIT
    while not any("stopping (SIGTERM)" in ln for ln in srv.log):
        assert time.monotonic() < _wait_line
        time.sleep(0.02)
    gate.open.set()
    r = other.read_reply(1)
    assert r.ok and r.data == data
    other.close()
    srv.stopped_rc = srv.wait()
    assert srv.stopped_rc == 0, srv.stderr_tail()


CHURN = r"""
import hashlib, json, random, sys
import s3dlio
url, seed, uris = sys.argv[1], int(sys.argv[2]), json.loads(sys.stdin.read())
s3dlio.connect(url)
rnd = random.Random(seed)
out = {}
for _ in range(300):
    u = rnd.choice(sorted(uris))
    if rnd.random() < 0.3:
        off = rnd.randrange(0, 50_000)
        b = bytes(s3dlio.get_range(u, off, 5000))
        out[f"{u}@{off}"] = hashlib.sha256(b).hexdigest()
    else:
        out[u] = hashlib.sha256(bytes(s3dlio.get(u))).hexdigest()
print(json.dumps(out))
"""


def test_churn_evictions_revalidations_and_coalescing(emu, boto, tmp_path):
    """Many clients, a budget that holds a fifth of the objects, validation on every GET: the
    cache evicts, revalidates and coalesces all the time, and every byte is still right."""
    import subprocess
    import sys
    rnd = random.Random(5)
    bodies = {}
    for i in range(40):
        key = f"churn/o{i:02d}.bin"
        bodies[_uri(key)] = rnd.randbytes(rnd.randrange(50_000, 120_000))
        boto.put_object(Bucket=BUCKET, Key=key, Body=bodies[_uri(key)])
    srv = s3dtest.start_server([f"s3://{BUCKET}/"], threads=4,
                               extra=cloudemu.CLOUD_FLAGS + MET + [
                                   "--cache-mem", "1m", "--cache-max-object", "200k",
                                   "--cache-validate", "0"],
                               env=cloudemu.s3_env(emu.endpoint))
    try:
        script = tmp_path / "churn.py"
        script.write_text(CHURN)
        procs = [subprocess.Popen([sys.executable, str(script), srv.tcp_url, str(seed)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for seed in range(8)]
        outs = [p.communicate(json.dumps(list(bodies)), timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
            for k, h in json.loads(out).items():
                if "@" in k:
                    u, off = k.rsplit("@", 1)
                    want = bodies[u][int(off):int(off) + 5000]
                else:
                    want = bodies[k]
                assert h == hashlib.sha256(want).hexdigest(), k
        m = s3dtest.scrape(srv)
        assert s3dtest.metric(m, "s3dliod_cache_evictions_total") > 0
        assert s3dtest.metric(m, "s3dliod_cache_revalidations_total") > 0
        assert s3dtest.metric(m, "s3dliod_cache_bytes") <= 1 << 20
        assert s3dtest.metric(m, "s3dliod_requests_in_flight") == 0
    finally:
        cloudemu.stop_server(srv)
