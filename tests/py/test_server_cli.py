"""s3dliod's command line: --help, bad flags, a busy port, --threads, several --allow roots."""
import os
import socket
import subprocess

import pytest

import s3dtest
from s3dtest import WireConn


def _run(args, timeout=30):
    return subprocess.run([s3dtest.server_binary()] + args, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def test_help_exits_zero_and_lists_flags():
    p = _run(["--help"])
    assert p.returncode == 0, p.stderr
    text = p.stdout + p.stderr
    for flag in ("--listen", "--allow", "--threads", "--max-in-flight", "--max-frame",
                 "--idle-timeout", "--drain-timeout", "--parent-pid"):
        assert flag in text, f"--help does not mention {flag}"


@pytest.mark.parametrize("args", [["--no-such-flag"], ["--listen"], ["--threads", "zero"],
                                  ["--listen", "bogus://x", "--allow", "file:///tmp/"],
                                  ["--max-frame", "-1"]])
def test_bad_arguments_exit_nonzero(args):
    p = _run(args)
    assert p.returncode not in (0, None) and p.returncode > 0, \
        f"{args}: rc={p.returncode}\n{p.stderr}"
    assert p.stderr.strip(), "no message on stderr"


def test_port_in_use_fails_fast(data):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        p = _run(["--listen", f"tcp://127.0.0.1:{port}", "--allow", data.allow])
        assert p.returncode > 0, p.stderr
        assert str(port) in p.stderr
    finally:
        s.close()


@pytest.mark.parametrize("threads", [1, 4])
def test_threads(new_server, data, threads):
    srv = new_server.start(threads=threads)
    conns = [WireConn(srv.address("tcp" if i % 2 else "unix")) for i in range(8)]
    try:
        for c in conns:
            c.hello()
        for i, c in enumerate(conns):
            rel = data.size_rel(65537)
            r = c.get(data.uri(rel), rid=i + 1)
            assert r.ok and r.data == data.bytes(rel)
    finally:
        for c in conns:
            c.close()


def test_several_allow_roots(new_server, data, tmp_path):
    other = os.path.realpath(str(tmp_path))
    with open(os.path.join(other, "o.bin"), "wb") as f:
        f.write(b"other-root")
    srv = new_server.start(allow=[data.allow, "file://" + other + "/"])
    with WireConn(srv.address("tcp")) as c:
        c.hello()
        r = c.get("file://" + other + "/o.bin")
        assert r.ok and r.data == b"other-root"
        r = c.get(data.uri(data.size_rel(1)), rid=2)
        assert r.ok and r.data == data.bytes(data.size_rel(1))
        r = c.get("file://" + data.outside + "/secret.bin", rid=3)
        assert r.error is not None and r.error[2] == s3dtest.E_PERMISSION


def test_unix_socket_removed_on_clean_exit(new_server, data):
    srv = new_server.start()
    assert srv.unix_path and os.path.exists(srv.unix_path)
    rc = srv.stop()
    assert rc == 0
    assert not os.path.exists(srv.unix_path), "socket file left behind after a clean exit"


def test_sigterm_right_after_listening_exits_cleanly(data, sock_dir):
    """Whoever reads the 'listening on' line may signal at once (supervisors, the embedded
    starter): every such stop must be clean (exit 0, socket removed), never a signal death."""
    for i in range(25):
        path = os.path.join(sock_dir, f"quick-{i}.sock")
        srv = s3dtest.start_server([data.allow], unix_path=path)
        rc = srv.stop()
        assert rc == 0, f"round {i}: rc={rc}\n" + srv.describe()
        assert not os.path.exists(path), f"round {i}: socket left behind"
