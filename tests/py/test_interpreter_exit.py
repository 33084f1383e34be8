"""No abort at interpreter exit (issue 10, item 7): a process that uses the package and exits
while work is in flight — the embedded default server, a loader's fetch thread mid-epoch, a
get_many running in another thread, sys.exit from a thread or from the main thread — exits
with its own status, prints no "Fatal Python error" or abort, dumps no core, and leaves no
private server behind."""
import json
import os
import signal

import pytest

import s3dtest

HERE = os.path.dirname(os.path.abspath(__file__))
UNSET = ("S3DLIO_SERVER",)  # the embedded default server
BAD = ("Fatal Python error", "Aborted", "core dumped", "AddressSanitizer", "runtime error:",
       "Segmentation fault", "terminate called")

PRELUDE = """
    import json, os, sys, threading, time
    sys.path.insert(0, {here!r})
    import s3dlio
    from s3dtest import servers_with_parent_pid
    def announce(**kw):
        kw.update(pid=os.getpid(), servers=servers_with_parent_pid(os.getpid()))
        print(json.dumps(kw), flush=True)
"""


def _run(code, status=0, **fmt):
    p = s3dtest.run_py(PRELUDE.format(here=HERE) + code.format(here=HERE, **fmt),
                       unset=UNSET, check=False, timeout=240)
    assert p.returncode == status, f"exit {p.returncode}, want {status}\n--- stdout\n" \
        f"{p.stdout}\n--- stderr\n{p.stderr}"
    assert p.returncode >= 0, f"killed by signal {-p.returncode}"
    for bad in BAD:
        assert bad not in p.stderr, f"{bad!r} in the child's stderr:\n{p.stderr}"
    info = None
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            info = json.loads(line)
    assert info is not None, p.stdout + p.stderr
    # the private server goes with its process
    for pid in info["servers"]:
        assert s3dtest.wait_pid_gone(pid, timeout=30), f"s3dliod {pid} outlived its process"
    return info, p


def _uris(data, n=200):
    return [data.uri(data.small_rel(i)) for i in range(n)]


def test_plain_exit_with_embedded_server(data):
    rel = data.size_rel(65537)
    info, _ = _run("""
    v = s3dlio.get({uri!r})
    assert len(v) == 65537
    s3dlio.mkdir({tmp!r})
    announce(ok=True)
    """, uri=data.uri(rel), tmp=data.uri("scratch/exit-mkdir"))
    assert info["ok"] and len(info["servers"]) == 1


def test_exit_with_loader_thread_mid_epoch(data):
    """A loader that fetched a few batches and still has its fetch thread running."""
    info, _ = _run("""
    loader = s3dlio.create_async_loader({prefix!r}, batch_size=4, prefetch=8)
    it = iter(loader.batches())
    first = next(it)
    assert len(first) == 4
    announce(ok=True)
    # exit now: the generator, its Prefetcher and the fetch thread are still alive
    """, prefix=data.uri("small") + "/")
    assert info["ok"]


def test_exit_with_get_many_in_flight_in_a_thread(data):
    info, _ = _run("""
    uris = {uris!r}
    started = threading.Event()
    def reader():
        started.set()
        while True:
            s3dlio.get_many(uris, max_in_flight=32)
    threading.Thread(target=reader, daemon=True).start()
    started.wait()
    time.sleep(0.2)
    announce(ok=True)
    """, uris=_uris(data))
    assert info["ok"]


def test_sys_exit_in_main_with_loader_and_reader_threads(data):
    info, _ = _run("""
    uris = {uris!r}
    def reader():
        while True:
            s3dlio.get_many(uris, max_in_flight=16)
    for _ in range(3):
        threading.Thread(target=reader, daemon=True).start()
    loader = s3dlio.create_async_loader({prefix!r}, batch_size=8, prefetch=4)
    it = iter(loader.batches())
    next(it)
    time.sleep(0.1)
    announce(ok=True)
    sys.exit(7)
    """, status=7, uris=_uris(data), prefix=data.uri("small") + "/")
    assert info["ok"]


def test_sys_exit_inside_a_thread(data):
    """SystemExit in a thread ends only that thread; the process then exits normally."""
    info, _ = _run("""
    uris = {uris!r}
    def worker():
        s3dlio.get_many(uris[:50])
        sys.exit(3)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    announce(ok=not t.is_alive())
    """, uris=_uris(data))
    assert info["ok"]


def test_exit_from_a_thread_while_others_read(data):
    """A worker thread decides the run is over: it sets an event and calls sys.exit; the
    main thread returns while another thread is still inside get_many."""
    info, _ = _run("""
    uris = {uris!r}
    done = threading.Event()
    def reader():
        while True:
            s3dlio.get_many(uris, max_in_flight=8)
    def quitter():
        s3dlio.get_many(uris[:20])
        done.set()
        sys.exit(0)
    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=quitter).start()
    done.wait()
    announce(ok=True)
    """, uris=_uris(data))
    assert info["ok"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_reading_exits_by_that_signal(data, sig):
    """A process ended by SIGTERM/SIGINT while reading dies of that signal (or
    KeyboardInterrupt), not of an abort, and takes its server along."""
    code = PRELUDE.format(here=HERE) + f"""
    uris = {_uris(data)!r}
    announce(ok=True)
    while True:
        s3dlio.get_many(uris, max_in_flight=32)
    """
    proc = s3dtest.popen_py(code, unset=UNSET)
    try:
        line = s3dtest.read_line_until(proc, lambda ln: ln.startswith("{"), timeout=90)
        info = json.loads(line)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM, (proc.returncode, err)
    else:
        assert proc.returncode in (1, -signal.SIGINT), (proc.returncode, err)
        assert "KeyboardInterrupt" in err or proc.returncode == -signal.SIGINT
    for bad in BAD:
        assert bad not in err, err
    for pid in info["servers"]:
        assert s3dtest.wait_pid_gone(pid, timeout=30)
