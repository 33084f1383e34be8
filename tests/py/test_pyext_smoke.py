"""The extension's own corners, against the real server: the Client class used directly
(threads, close during calls, context manager, fork), BytesView pickling, buffers of a failed
get_many, and the embedded server's start-up errors and directory hygiene."""
import gc
import os
import pickle
import threading
import time

import numpy as np
import pytest

import s3dtest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def client(s3dlio_mod, server):
    c = s3dlio_mod.Client(server.tcp_url, max_connections=4)
    yield c
    c.close()


def test_client_basic_calls(client, data, scratch):
    rel = data.size_rel(65537)
    assert client.get(data.uri(rel)) == data.bytes(rel)
    assert client.get(data.uri(rel), 100, 50) == data.bytes(rel)[100:150]
    assert client.get(data.uri(rel), offset=65000) == data.bytes(rel)[65000:]
    buf = bytearray(70000)
    assert client.get_into(data.uri(rel), buf) == 65537
    assert buf[:65537] == data.bytes(rel)
    _, base = scratch
    client.put_bytes(base + "c.bin", b"client")
    assert client.stat(base + "c.bin")["size"] == 6
    assert client.list(base) == [base + "c.bin"]
    client.delete(base + "c.bin")
    assert client.list(base) == []
    st = client.stats()
    assert st["requests"] >= 7 and st["bytes_sent"] >= 6
    assert client.url.startswith("tcp://")


def test_client_argument_errors(s3dlio_mod, server, client, data):
    with pytest.raises(ValueError):
        s3dlio_mod.Client(server.tcp_url, max_connections=0)
    with pytest.raises(TypeError):
        s3dlio_mod.Client(server.tcp_url, token=5)
    with pytest.raises(TypeError):
        s3dlio_mod.Client(None)
    with pytest.raises(ValueError):
        client.get("")
    with pytest.raises(ValueError):
        client.get(data.uri(data.size_rel(1)), -1)
    with pytest.raises(TypeError):
        client.get(data.uri(data.size_rel(1)), 1.5)
    with pytest.raises(TypeError):
        client.get_many("file:///not/a/list")


def test_closed_client_refuses_calls(s3dlio_mod, server, data):
    with s3dlio_mod.Client(server.tcp_url) as c:
        assert len(c.get(data.uri(data.size_rel(1)))) == 1
    assert c.closed
    with pytest.raises(ValueError):
        c.get(data.uri(data.size_rel(1)))
    c.close()  # twice is fine


def test_close_while_other_threads_are_in_calls(s3dlio_mod, server, data):
    """close() during calls: the calls in progress finish (or fail cleanly), later calls
    raise ValueError, and nothing crashes."""
    c = s3dlio_mod.Client(server.tcp_url, max_connections=4)
    rel = data.size_rel((9 << 20) + 3)
    want = data.bytes(rel)
    stop = threading.Event()
    outcomes = []

    def reader():
        while not stop.is_set():
            try:
                v = c.get(data.uri(rel))
                outcomes.append(v == want)
            except ValueError:
                outcomes.append("closed")
                return
            except Exception as e:  # noqa: BLE001 - reported below
                outcomes.append(repr(e))
                return

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    c.close()
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert all(o is True or o == "closed" for o in outcomes), outcomes[:5]


def test_one_client_many_threads_get_many(client, data):
    uris = [data.uri(data.small_rel(i)) for i in range(60)]
    errors = []

    def work():
        try:
            for _ in range(5):
                res = client.get_many(uris, max_in_flight=16)
                assert [u for u, _ in res] == uris
                for u, v in res:
                    assert v == data.bytes(u[len(data.uri("")):])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors[:3]


def test_failed_get_many_frees_the_other_buffers(s3, data):
    """A failing get_many of large objects must not keep their buffers: RSS stays flat."""
    if os.environ.get("S3DLIO_ASAN") == "1":
        pytest.skip("RSS is meaningless under ASan")
    rel = data.size_rel((9 << 20) + 3)
    uris = [data.uri(rel)] * 6 + [data.uri("sizes/missing.bin")]
    with pytest.raises(FileNotFoundError):
        s3.get_many(uris, max_in_flight=8)
    gc.collect()
    before = s3dtest.vm_kib("VmRSS")
    for _ in range(10):
        with pytest.raises(FileNotFoundError):
            s3.get_many(uris, max_in_flight=8)
    gc.collect()
    grown = s3dtest.vm_kib("VmRSS") - before
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB over 10 failed get_many calls"


def test_bytesview_pickles_as_a_copy(s3, data):
    rel = data.size_rel(4096)
    view = s3.get(data.uri(rel))
    back = pickle.loads(pickle.dumps(view, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(back) is type(view)
    assert back == data.bytes(rel)
    assert np.frombuffer(back, dtype=np.uint8).ctypes.data != \
        np.frombuffer(view, dtype=np.uint8).ctypes.data


def test_bytesview_large_buffers_are_page_aligned(s3, data):
    for size in ((1 << 20), (9 << 20) + 3):
        view = s3.get(data.uri(data.size_rel(size)))
        assert np.frombuffer(view, dtype=np.uint8).ctypes.data % 4096 == 0


def test_user_client_reopens_after_fork(data, server):
    rel = data.size_rel(65537)
    p = s3dtest.run_py(f"""
        import os, s3dlio
        c = s3dlio.Client({server.tcp_url!r})
        want = open({data.path(rel)!r}, "rb").read()
        assert c.get({data.uri(rel)!r}) == want
        pid = os.fork()
        if pid == 0:
            ok = c.get({data.uri(rel)!r}) == want and c.stats()["connects"] >= 1
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        # the parent's client is untouched by the child's use and exit
        assert c.get({data.uri(rel)!r}) == want
        print("CHILD", os.waitstatus_to_exitcode(status))
        """, unset=("S3DLIO_SERVER",))
    assert "CHILD 0" in p.stdout, p.stdout + p.stderr


def test_embedded_start_failure_is_connection_error_with_log(tmp_path):
    fake = tmp_path / "fake-s3dliod"
    fake.write_text("#!/bin/sh\necho 'fake-s3dliod: cannot start: no luck' >&2\nexit 7\n")
    fake.chmod(0o755)
    p = s3dtest.run_py("""
        import s3dlio
        try:
            s3dlio.get("file:///etc/hostname")
        except ConnectionError as e:
            print("CE", repr(str(e)))
        """, env={"S3DLIOD": str(fake)}, unset=("S3DLIO_SERVER",))
    assert "CE" in p.stdout, p.stdout + p.stderr
    assert "no luck" in p.stdout and "7" in p.stdout


def test_embedded_dirs_of_killed_processes_are_swept(data):
    """A process killed with SIGKILL cannot clean its private directory; the next process
    that starts an embedded server removes it (its s3dliod left with --parent-pid)."""
    import signal
    import tempfile

    rel = data.size_rel(1)
    p = s3dtest.popen_py(f"""
        import os, s3dlio, sys
        from s3dlio import _server
        s3dlio.get({data.uri(rel)!r})
        print(_server.embedded_url(), flush=True)
        sys.stdin.readline()
        """, unset=("S3DLIO_SERVER",))
    line = s3dtest.read_line_until(p, lambda ln: ln.startswith("unix://"), timeout=60)
    d = os.path.dirname(line.strip()[len("unix://"):])
    assert os.path.isdir(d) and os.path.dirname(d) == tempfile.gettempdir()
    assert os.stat(d).st_mode & 0o777 == 0o700
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    s3dtest.run_py(f"""
        import s3dlio
        assert len(s3dlio.get({data.uri(rel)!r})) == 1
        """, unset=("S3DLIO_SERVER",))
    assert not os.path.exists(d), f"{d} left behind"
