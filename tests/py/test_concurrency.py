"""Many Python threads on one client: byte-exact results, get_many in parallel, and the GIL
released while the server is waited for."""
import random
import sys
import threading
import time

import numpy as np
import pytest

from conftest import N_SMALL, SIZES

JOIN_TIMEOUT = 90


def _run_threads(n, target):
    errors = []
    barrier = threading.Barrier(n)

    def wrap(k):
        try:
            barrier.wait(timeout=30)
            target(k)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=wrap, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {JOIN_TIMEOUT}s: {stuck}"
    assert not errors, errors[:5]


def test_16_threads_many_gets_byte_exact(transport, data):
    rels = [data.size_rel(s) for s in SIZES if s <= (1 << 20)] + \
        [data.small_rel(i) for i in range(0, N_SMALL, 7)]
    counts = [0] * 16

    def work(k):
        rnd = random.Random(k)
        for _ in range(60):
            rel = rnd.choice(rels)
            v = transport.get(data.uri(rel))
            if bytes(v) != data.bytes(rel):
                raise AssertionError(f"thread {k}: wrong bytes for {rel}")
            counts[k] += 1

    _run_threads(16, work)
    assert counts == [60] * 16


def test_threads_mixing_calls(s3, data, scratch):
    path, base = scratch
    big = data.size_rel((9 << 20) + 3)

    def work(k):
        rnd = random.Random(100 + k)
        for i in range(20):
            op = (k + i) % 5
            if op == 0:
                off = rnd.randrange(0, 9 << 20)
                n = rnd.randrange(0, 1 << 20)
                v = s3.get_range(data.uri(big), off, n)
                assert bytes(v) == data.bytes(big)[off:off + n]
            elif op == 1:
                buf = np.empty(1 << 20, dtype=np.uint8)
                assert s3.get_into(data.uri(data.size_rel(1 << 20)), buf) == 1 << 20
                assert buf.tobytes() == data.bytes(data.size_rel(1 << 20))
            elif op == 2:
                payload = bytes([k, i]) * 5000
                s3.put_bytes(base + f"t{k}-{i}.bin", payload)
                assert bytes(s3.get(base + f"t{k}-{i}.bin")) == payload
            elif op == 3:
                st = s3.stat(data.uri(big))
                assert st["size"] == (9 << 20) + 3
            else:
                assert len(s3.list(data.uri("tree") + "/", recursive=True)) == len(data.TREE)

    _run_threads(16, work)


def test_get_many_from_several_threads(transport, data):
    def work(k):
        idx = list(range(N_SMALL))
        random.Random(k).shuffle(idx)
        idx = idx[:200] + idx[:20]  # with duplicates
        uris = [data.uri(data.small_rel(i)) for i in idx]
        res = transport.get_many(uris, max_in_flight=(8, 64, 1, 32)[k % 4])
        assert [u for u, _ in res] == uris
        for (u, v), i in zip(res, idx):
            if bytes(v) != data.bytes(data.small_rel(i)):
                raise AssertionError(f"thread {k}: wrong bytes for {u}")

    _run_threads(6, work)


def test_errors_in_some_threads_do_not_disturb_others(s3, data):
    rel = data.size_rel(65537)

    def work(k):
        for i in range(40):
            if k % 2:
                try:
                    s3.get(data.uri(f"sizes/missing-{k}-{i}.bin"))
                except FileNotFoundError:
                    continue
                raise AssertionError("missing object returned data")
            assert bytes(s3.get(data.uri(rel))) == data.bytes(rel)

    _run_threads(8, work)


class _Counter:
    """A pure-Python thread that counts while it holds the GIL. With a long switch interval
    the interpreter never forces it in during a short call: it can only run while the caller
    releases the GIL of its own accord (a blocking call)."""

    INTERVAL = 5.0

    def __init__(self):
        self.n = 0
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop:
            self.n += 1
            time.sleep(0.0001)  # a real sleep: the caller can take the GIL back at once

    def __enter__(self):
        self.old = sys.getswitchinterval()
        sys.setswitchinterval(self.INTERVAL)
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        sys.setswitchinterval(self.old)
        self.t.join(10)


def _progress_during(fn, attempts=20):
    """Call fn up to `attempts` times (and for well under the switch interval in total, so a
    held GIL is never taken away by force); the most progress the counter made during one
    call."""
    best = 0
    with _Counter() as c:
        start = time.monotonic()
        for _ in range(attempts):
            before = c.n
            fn()
            best = max(best, c.n - before)
            if best > 0 or time.monotonic() - start > _Counter.INTERVAL / 4:
                break
    return best


def test_gil_released_during_get(s3, data):
    rel = data.size_rel((9 << 20) + 3)
    out = []
    progress = _progress_during(lambda: out.append(len(s3.get(data.uri(rel)))))
    assert all(n == (9 << 20) + 3 for n in out)
    assert progress > 0, "a pure-Python thread made no progress during get(): GIL held"


def test_gil_released_during_get_many(s3, data):
    uris = [data.uri(data.size_rel((9 << 20) + 3))] * 2 + \
        [data.uri(data.small_rel(i)) for i in range(50)]
    progress = _progress_during(lambda: s3.get_many(uris, max_in_flight=8))
    assert progress > 0, "no progress during get_many(): GIL held"


def test_gil_released_during_get_into(s3, data):
    rel = data.size_rel((9 << 20) + 3)
    buf = bytearray((9 << 20) + 3)
    progress = _progress_during(lambda: s3.get_into(data.uri(rel), buf))
    assert bytes(buf) == data.bytes(rel)
    assert progress > 0, "no progress during get_into(): GIL held"


def test_gil_released_during_put(s3, scratch):
    _, base = scratch
    payload = np.random.default_rng(3).integers(0, 256, 16 << 20, dtype=np.uint8)
    progress = _progress_during(lambda: s3.put_bytes(base + "gil.bin", payload))
    assert progress > 0, "no progress during put_bytes(): GIL held"


@pytest.mark.parametrize("n_threads", [32])
def test_more_threads_than_pool_connections(s3, data, n_threads):
    rel = data.size_rel(65537)

    def work(k):
        for _ in range(10):
            assert bytes(s3.get(data.uri(rel))) == data.bytes(rel)

    _run_threads(n_threads, work)
