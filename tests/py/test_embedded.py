"""The embedded default: with no S3DLIO_SERVER and no connect(), the package starts a private
s3dliod (found by its --parent-pid argument) that lives exactly as long as the process; a
forked child can use it too."""
import json
import os
import signal
import stat

import pytest

import s3dtest

HERE = os.path.dirname(os.path.abspath(__file__))
UNSET = ("S3DLIO_SERVER",)

CHILD_WAIT = """
    import json, os, sys
    sys.path.insert(0, {here!r})
    import s3dlio
    from s3dtest import servers_with_parent_pid
    with open({path!r}, "rb") as f:
        want = f.read()
    v = s3dlio.get({uri!r})
    ok = bytes(v) == want
    r = s3dlio.get_range({uri!r}, 10, 100)
    ok = ok and bytes(r) == want[10:110]
    print(json.dumps(dict(pid=os.getpid(), ok=ok,
                          servers=servers_with_parent_pid(os.getpid()))), flush=True)
    sys.stdin.readline()
    print("BYE", flush=True)
"""


def _start_child(data, unset=UNSET, env=None):
    rel = data.size_rel(65537)
    p = s3dtest.popen_py(CHILD_WAIT.format(here=HERE, path=data.path(rel), uri=data.uri(rel)),
                         unset=unset, env=env)
    line = s3dtest.read_line_until(p, lambda ln: ln.startswith("{"), timeout=90)
    return p, json.loads(line)


def _private_socket(pid):
    args = s3dtest.cmdline(pid) or []
    for i, a in enumerate(args):
        v = None
        if a == "--listen" and i + 1 < len(args):
            v = args[i + 1]
        elif a.startswith("--listen="):
            v = a.split("=", 1)[1]
        if v and v.startswith("unix://"):
            return v[len("unix://"):]
    return None


def test_embedded_get_works_and_server_lives_with_process(data):
    p, info = _start_child(data)
    try:
        assert info["ok"], "embedded get returned wrong bytes"
        servers = info["servers"]
        assert len(servers) == 1, f"expected one private s3dliod with --parent-pid " \
                                  f"{info['pid']}, found {servers}"
        spid = servers[0]
        assert s3dtest.pid_running(spid)
        args = s3dtest.cmdline(spid)
        assert any("s3dliod" in a for a in args[:1]), args
        # only a unix socket, in a private directory
        assert not any(a.startswith("tcp://") or "tcp://" in a for a in args), args
        sock = _private_socket(spid)
        assert sock, f"no unix listener in {args}"
        d = os.stat(os.path.dirname(sock))
        assert d.st_uid == os.getuid()
        assert stat.S_IMODE(d.st_mode) & 0o077 == 0, \
            f"private socket dir {os.path.dirname(sock)} is mode {oct(d.st_mode)}"
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=60) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert s3dtest.wait_pid_gone(spid, 60), \
        f"private s3dliod {spid} still running after its process exited"


def test_embedded_server_gone_after_sigkill_of_process(data):
    p, info = _start_child(data)
    try:
        assert info["ok"]
        assert len(info["servers"]) == 1, info
        spid = info["servers"][0]
        sock = _private_socket(spid)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert s3dtest.wait_pid_gone(spid, 60), \
        f"private s3dliod {spid} outlived its SIGKILLed parent by 60 s"
    if sock:
        assert not os.path.exists(sock), f"socket {sock} left behind"


def test_embedded_socket_cleaned_up_on_exit(data):
    p, info = _start_child(data)
    spid = info["servers"][0] if info["servers"] else None
    assert spid, info
    sock = _private_socket(spid)
    assert sock and os.path.exists(sock)
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.wait(timeout=60) == 0
    assert s3dtest.wait_pid_gone(spid, 60)
    assert not os.path.exists(sock), f"socket {sock} left behind"
    assert not os.path.exists(os.path.dirname(sock)), \
        f"private directory {os.path.dirname(sock)} left behind"


def test_embedded_uses_shipped_binary_without_s3dliod_env(data, s3dlio_mod):
    shipped = os.path.join(os.path.dirname(s3dlio_mod.__file__), "bin", "s3dliod")
    assert os.access(shipped, os.X_OK), f"the package ships no s3dliod at {shipped}"
    p, info = _start_child(data, unset=UNSET + ("S3DLIOD",))
    try:
        assert info["ok"] and len(info["servers"]) == 1, info
        exe = os.path.realpath(f"/proc/{info['servers'][0]}/exe")
        assert exe == os.path.realpath(shipped), exe
    finally:
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=60)


def test_two_processes_get_separate_private_servers(data):
    p1, i1 = _start_child(data)
    p2, i2 = _start_child(data)
    try:
        assert i1["ok"] and i2["ok"]
        assert len(i1["servers"]) == 1 and len(i2["servers"]) == 1
        assert i1["servers"] != i2["servers"]
    finally:
        for p in (p1, p2):
            p.stdin.write("\n")
            p.stdin.flush()
            p.wait(timeout=60)


FORK_CHILD = """
    import os, sys, time, traceback
    sys.path.insert(0, {here!r})
    import s3dlio
    from s3dtest import servers_with_parent_pid

    def read(p):
        with open(p, "rb") as f:
            return f.read()

    a, b = {a!r}, {b!r}
    pa, pb = {pa!r}, {pb!r}
    smalls = {smalls!r}
    assert bytes(s3dlio.get(a)) == read(pa)          # the parent's pool exists before fork
    before = servers_with_parent_pid(os.getpid())
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            assert bytes(s3dlio.get(b)) == read(pb), "child get"
            assert servers_with_parent_pid(os.getpid()) == [], "the child started its own server"
            res = s3dlio.get_many([u for u, _ in smalls], max_in_flight=8)
            assert [bytes(v) for _, v in res] == [read(q) for _, q in smalls], "child get_many"
            buf = bytearray(len(read(pa)))
            assert s3dlio.get_into(a, buf) == len(buf) and bytes(buf) == read(pa)
        except BaseException:
            traceback.print_exc()
            code = 3
        sys.stdout.flush()
        os._exit(code)
    # the parent keeps working while and after the child runs
    assert bytes(s3dlio.get(b)) == read(pb), "parent during child"
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("CHILD HUNG", flush=True)
            sys.exit(5)
        time.sleep(0.02)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {{status}}"
    for _ in range(3):
        assert bytes(s3dlio.get(a)) == read(pa), "parent after child exit"
    after = servers_with_parent_pid(os.getpid())
    assert before == after, (before, after)
    print("FORK OK", flush=True)
"""


@pytest.mark.parametrize("mode", ["embedded", "tcp", "unix"])
def test_fork_child_can_get(data, server, mode):
    a, b = data.size_rel(65537), data.size_rel(1 << 20)
    smalls = [(data.uri(data.small_rel(i)), data.path(data.small_rel(i))) for i in range(30)]
    code = FORK_CHILD.format(here=HERE, a=data.uri(a), b=data.uri(b), pa=data.path(a),
                             pb=data.path(b), smalls=smalls)
    if mode == "embedded":
        p = s3dtest.run_py(code, unset=UNSET, timeout=240)
    else:
        url = server.tcp_url if mode == "tcp" else server.unix_url
        p = s3dtest.run_py(code, env={"S3DLIO_SERVER": url}, timeout=240)
    assert "FORK OK" in p.stdout, p.stdout + p.stderr


def test_env_server_is_used_instead_of_embedded(data, server):
    rel = data.size_rel(4096)
    p = s3dtest.run_py(f"""
        import os, sys, json
        sys.path.insert(0, {HERE!r})
        import s3dlio
        from s3dtest import servers_with_parent_pid
        v = s3dlio.get({data.uri(rel)!r})
        print(json.dumps(dict(n=len(v), servers=servers_with_parent_pid(os.getpid()),
                              connects=s3dlio.stats()["connects"])))
        """, env={"S3DLIO_SERVER": server.unix_url})
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["n"] == 4096
    assert r["servers"] == [], "an embedded server was started although S3DLIO_SERVER was set"
    assert r["connects"] >= 1


def test_connect_overrides_env(data, server, new_server):
    other = new_server.start()
    rel = data.size_rel(4096)
    p = s3dtest.run_py(f"""
        import sys
        import s3dlio
        s3dlio.connect({other.tcp_url!r})
        assert len(s3dlio.get({data.uri(rel)!r})) == 4096
        print("OK")
        """, env={"S3DLIO_SERVER": "tcp://127.0.0.1:1"})
    assert "OK" in p.stdout


def test_embedded_allows_any_file_path(tmp_path):
    """The embedded server serves file:/// (a path outside any test data root)."""
    f = tmp_path / "own.bin"
    payload = os.urandom(5000)
    f.write_bytes(payload)
    p = s3dtest.run_py(f"""
        import s3dlio
        v = s3dlio.get({s3dtest.file_uri(str(f))!r})
        assert bytes(v) == {payload!r}
        s3dlio.put_bytes({s3dtest.file_uri(str(tmp_path / 'written.bin'))!r}, b"abc")
        print("OK")
        """, unset=UNSET)
    assert "OK" in p.stdout
    assert (tmp_path / "written.bin").read_bytes() == b"abc"
