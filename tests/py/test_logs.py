"""Structured logs: one line per event as key=value (default) or JSON (--log-format json);
SIGHUP re-reads the --config file's log-level."""
import json
import signal
import subprocess
import time

import s3dtest

POLL_LIMIT = 60.0


def _wait_line(srv, pred, start=0):
    deadline = time.monotonic() + POLL_LIMIT
    while True:
        for line in srv.log[start:]:
            if pred(line):
                return line
        assert time.monotonic() < deadline, srv.stderr_tail()
        time.sleep(0.02)


def _event_lines(srv):
    return [ln for ln in srv.log if " listening on " not in ln and " metrics on " not in ln]


def test_json_lines(new_server, data):
    srv = new_server.start(extra=["--log-format", "json", "--log-level", "debug"])
    with s3dtest.WireConn(srv.address()) as w:
        w.hello(agent='agent "quoted" x=1')
        r = w.get(data.uri("no/such\tfile.bin"), rid=77)
        assert r.error[2] == s3dtest.E_NOT_FOUND
    line = _wait_line(srv, lambda ln: "NOT_FOUND" in ln)
    ev = json.loads(line)
    assert ev["level"] == "error" and ev["code"] == "NOT_FOUND" and ev["id"] == 77
    assert ev["uri"] == data.uri("no/such\tfile.bin")
    assert "No such file" in ev["msg"] and ev["ts"].endswith("Z")
    hello = json.loads(_wait_line(srv, lambda ln: '"hello"' in ln))
    assert hello["agent"] == 'agent "quoted" x=1'
    for ln in _event_lines(srv):  # every event line is one JSON object
        obj = json.loads(ln)
        assert {"ts", "level"} <= set(obj), ln


def test_kv_lines_by_default(new_server, data):
    srv = new_server.start()
    with s3dtest.WireConn(srv.address()) as w:
        w.hello()
        assert w.get(data.uri("no/such.bin"), rid=5).error[2] == s3dtest.E_NOT_FOUND
    line = _wait_line(srv, lambda ln: "NOT_FOUND" in ln)
    assert line.startswith("s3dliod: level=error ") and " id=5 " in line
    assert all(ln.startswith("s3dliod: ") for ln in srv.log)


def test_sighup_rereads_log_level(new_server, data, tmp_path):
    conf = tmp_path / "s3dliod.conf"
    conf.write_text("log-level = warn\n")
    srv = new_server.start(extra=["--config", str(conf)])
    with s3dtest.WireConn(srv.address()) as w:
        w.hello()
        assert w.get(data.uri(data.small_rel(4)), rid=1).ok
        n = len(srv.log)
        conf.write_text("# louder\nlog-level = debug\n")
        srv.signal(signal.SIGHUP)
        _wait_line(srv, lambda ln: "log level set" in ln and "debug" in ln, n)
        assert w.get(data.uri(data.small_rel(5)), rid=2).ok
        _wait_line(srv, lambda ln: "level=debug" in ln and "op=GET" in ln, n)
    # the GET before the reload logged nothing at debug
    assert not any("level=debug" in ln and data.small_rel(4) in ln for ln in srv.log)


def test_bad_log_format():
    p = subprocess.run([s3dtest.server_binary(), "--log-format", "xml"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "kv or json" in p.stderr


def test_json_line_with_a_long_uri_stays_json(new_server, data):
    srv = new_server.start(extra=["--log-format", "json"])
    long_name = "q\"\\/" + "/".join(["x" * 200] * 19) + ".bin"  # short segments, long URI
    with s3dtest.WireConn(srv.address()) as w:
        w.hello()
        assert w.get(data.uri(long_name), rid=3).error[2] == s3dtest.E_NOT_FOUND
    line = _wait_line(srv, lambda ln: "NOT_FOUND" in ln)
    ev = json.loads(line)
    assert ev["code"] == "NOT_FOUND" and ev["uri"].startswith(data.uri("q\"\\/xxx"))
