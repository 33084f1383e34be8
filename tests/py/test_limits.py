"""Per-tenant limits from the token file: connections, requests in flight, bytes per second.
Past a limit the server answers BUSY with a retry hint (retry_ms in the ERROR frame)."""
import pytest

import s3dtest

TOKEN = "limited-token-0123456789"


@pytest.fixture
def limited(new_server, data, tmp_path):
    def start(limits):
        path = tmp_path / "tokens.txt"
        path.write_text(f"{TOKEN} team-l rw * {limits}\n")
        return new_server.start(extra=["--token-file", str(path),
                                       "--metrics", "tcp://127.0.0.1:0"])
    return start


def _hello(srv):
    w = s3dtest.WireConn(srv.address())
    w.hello(token=TOKEN)
    return w


def test_connection_limit(limited):
    srv = limited("max-conns=2")
    a, b = _hello(srv), _hello(srv)
    with s3dtest.WireConn(srv.address()) as c:
        c.send([s3dtest.HELLO, 0, 1, TOKEN, "pytest"])
        f = c.frame()
        assert f[0] == s3dtest.ERROR and f[2] == s3dtest.E_BUSY
        assert f[4] == 1000 and "team-l" in f[3] and "2 connections" in f[3]
        assert c.wait_closed() == []
    a.close()
    # the server hears about the close asynchronously: retry as a client would
    for _ in range(500):
        try:
            d = _hello(srv)
            break
        except (s3dtest.WireError, EOFError, ConnectionError):
            __import__("time").sleep(0.01)
    else:
        raise AssertionError("no connection admitted after one was closed")
    d.close()
    b.close()
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_tenant_busy_total", tenant="team-l") >= 1


def test_requests_in_flight_limit_across_connections(limited, data, scratch):
    srv = limited("max-in-flight=2")
    path, uri = scratch
    a, b = _hello(srv), _hello(srv)
    # two uploads left open hold the tenant's two requests
    a.send([s3dtest.PUT, 1, uri + "p1.bin", 4])
    b.send([s3dtest.PUT, 1, uri + "p2.bin", 4])
    a.send_data(1, 0, b"ab")
    b.send_data(1, 0, b"ab")
    a.send([s3dtest.STAT, 2, data.uri(data.small_rel(0))])
    r = a.read_reply(2)
    assert r.error[2] == s3dtest.E_BUSY and r.error[4] == 5
    assert "team-l" in r.error[3] and "2 requests in flight" in r.error[3]
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_tenant_requests_in_flight", tenant="team-l") == 2
    a.send_data(1, 2, b"cd")
    a.send([s3dtest.END, 1, 4, s3dtest.crc32c(b"abcd")])
    assert a.read_reply(1).ok
    a.send([s3dtest.STAT, 3, data.uri(data.small_rel(0))])
    assert a.read_reply(3).ok
    b.send_data(1, 2, b"cd")
    b.send([s3dtest.END, 1, 4, s3dtest.crc32c(b"abcd")])
    assert b.read_reply(1).ok
    a.close()
    b.close()


def test_bytes_per_second_limit(limited, data):
    rate = 100 << 10
    srv = limited(f"max-bytes-per-sec={rate // 1024}k")
    w = _hello(srv)
    rel = data.size_rel(1 << 20)
    r = w.get(data.uri(rel), rid=1)  # admitted with a full bucket, then 900 KiB in debt
    assert r.ok and r.data == data.bytes(rel)
    w.send([s3dtest.STAT, 2, data.uri(rel)])
    r = w.read_reply(2)
    assert r.error[2] == s3dtest.E_BUSY
    assert "bytes per second" in r.error[3] and "team-l" in r.error[3]
    # the hint is the time the debt takes to pay off at the tenant's rate: about 9 s
    debt_ms = ((1 << 20) - rate) * 1000 // rate
    assert debt_ms // 2 < r.error[4] <= debt_ms + 1001, r.error
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_tenant_bytes_total", tenant="team-l") == 1 << 20
    w.close()
