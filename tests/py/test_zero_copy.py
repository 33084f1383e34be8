"""Zero copy, measured: in a fresh process, a 512 MiB get raises peak RSS by one object size,
to_bytes() by one more, numpy views add nothing, and the client counts (almost) no copied
bytes. Skipped with S3DLIO_SKIP_BIG=1 (and under ASan, whose shadow memory skews RSS)."""
import json
import os

import pytest

import s3dtest

HERE = os.path.dirname(os.path.abspath(__file__))
BIG = 512 << 20

pytestmark = pytest.mark.skipif(os.environ.get("S3DLIO_ASAN") == "1",
                                reason="RSS is not meaningful under AddressSanitizer")


@pytest.fixture(scope="module")
def big512(data):
    rel = "big/512m.bin"
    h = s3dtest.write_random(data.path(rel), BIG)
    yield rel, h.hexdigest()
    os.remove(data.path(rel))


CHILD_GET = """
    import hashlib, json, os, sys
    sys.path.insert(0, {here!r})
    import numpy as np
    import s3dlio
    from s3dtest import vm_kib, buffer_address

    small = s3dlio.get({small!r})           # warm up: server, connections, buffers
    assert len(small) == 65537
    del small
    base = vm_kib("VmHWM")
    view = s3dlio.get({big!r})
    after_get = vm_kib("VmHWM")
    assert len(view) == {size}
    mv = view.memoryview()
    arr = np.frombuffer(mv, dtype=np.uint8)
    arr2 = np.frombuffer(view, dtype=np.float32)
    addrs = [buffer_address(view), buffer_address(mv), arr.ctypes.data, arr2.ctypes.data]
    digest = hashlib.sha256(mv).hexdigest()
    after_views = vm_kib("VmHWM")
    b = view.to_bytes()
    after_copy = vm_kib("VmHWM")
    same_edges = b[:4096] == bytes(mv[:4096]) and b[-4096:] == bytes(mv[-4096:])
    st = s3dlio.stats()
    print(json.dumps(dict(base=base, after_get=after_get, after_views=after_views,
                          after_copy=after_copy, addrs=addrs, digest=digest,
                          writeable=bool(arr.flags.writeable), same_edges=same_edges,
                          len_b=len(b), stats=st)))
"""

CHILD_GET_INTO = """
    import hashlib, json, sys
    sys.path.insert(0, {here!r})
    import numpy as np
    import s3dlio
    from s3dtest import vm_kib

    buf = bytearray(65537)
    assert s3dlio.get_into({small!r}, buf) == 65537
    base = vm_kib("VmHWM")
    arr = np.empty({size}, dtype=np.uint8)       # untouched pages: no RSS yet
    n = s3dlio.get_into({big!r}, arr)
    after = vm_kib("VmHWM")
    digest = hashlib.sha256(arr).hexdigest()
    print(json.dumps(dict(base=base, after=after, n=n, digest=digest, stats=s3dlio.stats())))
"""


def _env_for(mode, server):
    if mode == "tcp":
        return {"S3DLIO_SERVER": server.tcp_url}, ()
    if mode == "unix":
        return {"S3DLIO_SERVER": server.unix_url}, ()
    return {}, ("S3DLIO_SERVER",)  # embedded


def _last_json(p):
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from the child\n{p.stdout}\n{p.stderr}"
    return json.loads(lines[-1])


@pytest.mark.big
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["tcp", "unix", "embedded"])
def test_get_512mib_rss_and_copies(data, server, big512, mode):
    rel, digest = big512
    env, unset = _env_for(mode, server)
    p = s3dtest.run_py(CHILD_GET.format(here=HERE, small=data.uri(data.size_rel(65537)),
                                        big=data.uri(rel), size=BIG),
                       env=env, unset=unset, timeout=500)
    r = _last_json(p)
    kib = BIG // 1024
    grow_get = r["after_get"] - r["base"]
    grow_copy = r["after_copy"] - r["after_views"]
    assert r["digest"] == digest, "wrong bytes"
    assert 0.9 * kib <= grow_get < 1.25 * kib, \
        f"get() of 512 MiB raised peak RSS by {grow_get / 1024:.0f} MiB (want about 512)"
    assert r["after_views"] - r["after_get"] < 0.05 * kib, \
        f"memoryview/np.frombuffer/sha256 raised peak RSS by " \
        f"{(r['after_views'] - r['after_get']) / 1024:.0f} MiB: a hidden copy"
    assert 0.9 * kib <= grow_copy < 1.25 * kib, \
        f"to_bytes() raised peak RSS by {grow_copy / 1024:.0f} MiB (want about 512)"
    assert len(set(r["addrs"])) == 1, f"views at different addresses: {r['addrs']}"
    assert r["addrs"][0] % 16 == 0
    assert r["writeable"] is False
    assert r["same_edges"] and r["len_b"] == BIG
    st = r["stats"]
    assert st["bytes_received"] >= BIG
    assert st["bytes_copied"] < 0.01 * st["bytes_received"], st


@pytest.mark.big
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["tcp", "embedded"])
def test_get_into_512mib_rss(data, server, big512, mode):
    rel, digest = big512
    env, unset = _env_for(mode, server)
    p = s3dtest.run_py(CHILD_GET_INTO.format(here=HERE, small=data.uri(data.size_rel(65537)),
                                             big=data.uri(rel), size=BIG),
                       env=env, unset=unset, timeout=500)
    r = _last_json(p)
    kib = BIG // 1024
    assert r["n"] == BIG
    assert r["digest"] == digest
    grow = r["after"] - r["base"]
    assert 0.9 * kib <= grow < 1.25 * kib, \
        f"get_into() of 512 MiB raised peak RSS by {grow / 1024:.0f} MiB (want about 512)"
    assert r["stats"]["bytes_copied"] < 0.01 * r["stats"]["bytes_received"], r["stats"]


def test_repeated_gets_do_not_leak(data, server):
    big = data.uri(data.size_rel((9 << 20) + 3))
    smalls = [data.uri(data.small_rel(i)) for i in range(100)]
    p = s3dtest.run_py(f"""
        import gc, json, sys
        sys.path.insert(0, {HERE!r})
        import numpy as np
        import s3dlio
        from s3dtest import vm_kib

        def round_():
            v = s3dlio.get({big!r})
            a = np.frombuffer(v.memoryview(), dtype=np.uint8)
            assert a.size == {(9 << 20) + 3}
            del a, v
            res = s3dlio.get_many({smalls!r}, max_in_flight=16)
            assert len(res) == 100
            del res
            buf = bytearray({(9 << 20) + 3})
            s3dlio.get_into({big!r}, buf)
            try:
                s3dlio.get({big + ".missing"!r})
            except FileNotFoundError:
                pass

        for _ in range(5):
            round_()
        gc.collect()
        start = vm_kib("VmRSS")
        for _ in range(40):
            round_()
        gc.collect()
        end = vm_kib("VmRSS")
        print(json.dumps(dict(start=start, end=end)))
        """, env={"S3DLIO_SERVER": server.tcp_url}, timeout=300)
    r = _last_json(p)
    growth_mib = (r["end"] - r["start"]) / 1024
    assert growth_mib < 30, f"RSS grew {growth_mib:.0f} MiB over 40 rounds: a leak"
