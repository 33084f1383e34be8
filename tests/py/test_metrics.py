"""--metrics: Prometheus /metrics, /healthz and /readyz of a real s3dliod serving file://.

Counts asserted here are exact: each test starts its own server, so nothing else adds to
its counters."""
import os
import signal

import s3dtest

MET = ["--metrics", "tcp://127.0.0.1:0"]


def test_metrics_counts_requests_bytes_errors(new_server, data, s3dlio_mod):
    srv = new_server.start(extra=MET, threads=2)
    s3dlio_mod.connect(srv.tcp_url)
    rels = [data.small_rel(i) for i in range(20)]
    total = 0
    for rel in rels:
        got = bytes(s3dlio_mod.get(data.uri(rel)))
        assert got == data.bytes(rel)
        total += len(got)
    size_rel = data.size_rel(65537)
    assert bytes(s3dlio_mod.get_range(data.uri(size_rel), 10, 1000)) == \
        data.bytes(size_rel)[10:1010]
    total += 1000
    for _ in range(3):
        try:
            s3dlio_mod.get(data.uri("no/such/object.bin"))
            raise AssertionError("GET of a missing file succeeded")
        except FileNotFoundError:
            pass
    s3dlio_mod.stat(data.uri(rels[0]))

    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_requests_total", backend="file", op="GET") == 20 + 1 + 3
    assert s3dtest.metric(m, "s3dliod_requests_total", backend="file", op="STAT") == 1
    assert s3dtest.metric(m, "s3dliod_errors_total", backend="file", code="NOT_FOUND") == 3
    assert s3dtest.metric(m, "s3dliod_sent_bytes_total", backend="file") == total
    assert s3dtest.metric(m, "s3dliod_sent_bytes_total", backend="s3") == 0
    assert s3dtest.metric(m, "s3dliod_connections") >= 1
    assert s3dtest.metric(m, "s3dliod_connections_total") >= 1
    assert s3dtest.metric(m, "s3dliod_requests_in_flight") == 0
    # the lead's CRC cache: present, and it saw whole-file GETs of small files or none
    assert ("s3dliod_crc_cache_hits_total", frozenset()) in m
    assert ("s3dliod_crc_cache_misses_total", frozenset()) in m
    # the object cache is off: present at zero
    assert s3dtest.metric(m, "s3dliod_cache_budget_bytes") == 0
    assert s3dtest.metric(m, "s3dliod_cache_hits_total") == 0


def test_metrics_put_counts_received_bytes(new_server, scratch, s3dlio_mod):
    srv = new_server.start(extra=MET)
    s3dlio_mod.connect(srv.tcp_url)
    path, uri = scratch
    payload = os.urandom(300_000)
    s3dlio_mod.put_bytes(uri + "up.bin", payload)
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_requests_total", backend="file", op="PUT") == 1
    assert s3dtest.metric(m, "s3dliod_received_bytes_total", backend="file") == len(payload)


def test_metrics_busy_and_permission_errors(new_server, data):
    srv = new_server.start(extra=MET + ["--max-in-flight", "1"])
    with s3dtest.WireConn(srv.address()) as w:
        w.hello()
        # two GETs pipelined with room for one: the second is BUSY (the first is large
        # enough to still be in flight)
        big = data.uri(data.size_rel((9 << 20) + 3))
        w.send([s3dtest.GET, 1, big, 0, None], [s3dtest.GET, 2, big, 0, None])
        replies = w.read_replies([1, 2])
        assert replies[1].ok
        assert replies[2].error is not None and replies[2].error[2] == s3dtest.E_BUSY
        w.send([s3dtest.STAT, 3, "file:///etc/passwd"])
        r = w.read_reply(3)
        assert r.error[2] == s3dtest.E_PERMISSION
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_busy_total") == 1
    assert s3dtest.metric(m, "s3dliod_errors_total", backend="file", code="BUSY") == 1
    assert s3dtest.metric(m, "s3dliod_errors_total", backend="file", code="PERMISSION") == 1


def test_metrics_health_ready_and_404(new_server, scratch):
    srv = new_server.start(extra=MET, drain_timeout=20)
    base = s3dtest.metrics_url(srv)
    assert s3dtest.http_get(base + "/healthz") == (200, "ok\n")
    assert s3dtest.http_get(base + "/readyz") == (200, "ready\n")
    status, body = s3dtest.http_get(base + "/nope")
    assert status == 404 and "/metrics" in body
    # an upload in flight keeps the server draining after SIGTERM: not ready, still healthy
    path, uri = scratch
    w = s3dtest.WireConn(srv.address())
    w.hello()
    w.send([s3dtest.PUT, 7, uri + "slow.bin", 10])
    w.send_data(7, 0, b"12345")
    w.send([s3dtest.STAT, 8, uri])  # a round trip: the PUT is in flight before the signal
    w.read_reply(8)
    srv.signal(signal.SIGTERM)
    status = None
    for _ in range(200):
        status, body = s3dtest.http_get(base + "/readyz")
        if status == 503:
            break
        __import__("time").sleep(0.05)
    assert status == 503 and body == "draining\n"
    assert s3dtest.http_get(base + "/healthz")[0] == 200
    w.send_data(7, 5, b"67890")
    w.send([s3dtest.END, 7, 10, s3dtest.crc32c(b"1234567890")])
    r = w.read_reply(7)
    assert r.ok
    w.close()
    srv.stopped_rc = srv.wait()
    assert srv.stopped_rc == 0


def test_metrics_bad_flag(new_server):
    import subprocess
    p = subprocess.run([s3dtest.server_binary(), "--metrics", "http://x"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2
    assert "--metrics" in p.stderr and "tcp://HOST:PORT" in p.stderr
