"""The buffer pool behind BytesView (pyext/src/bytesview.c): a process that drops its results
and fetches again gets the same buffers back instead of faulting in fresh memory, never while
any view of a buffer is alive, and within the memory budget (peak RSS <= 1.1 x held + 64 MiB,
also when the sizes change). S3DLIO_BUFFER_POOL bounds the idle bytes (0: no pool), idle
buffers decay after S3DLIO_BUFFER_POOL_DECAY_MS, and fork leaves both processes working.

Each case runs in a fresh interpreter: the pool is process-wide. The RSS cases skip under
AddressSanitizer (its allocator and shadow skew RSS); the others run there too, where idle
pool buffers are poisoned, so a read of a recycled buffer would be reported."""
import hashlib
import json
import os
import random

import pytest

import s3dtest

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20
ASAN = os.environ.get("S3DLIO_ASAN") == "1"
rss_only = pytest.mark.skipif(ASAN, reason="RSS is not meaningful under AddressSanitizer")
POOL_ENV = ("S3DLIO_BUFFER_POOL", "S3DLIO_BUFFER_POOL_DECAY_MS")


class Files:
    """Objects of the given sizes under data/pool/, random bytes: uris, sha (uri -> sha256)."""

    def __init__(self, data, rel, sizes, seed):
        rnd = random.Random(seed)
        self.uris, self.sha, self.rels = [], {}, []
        os.makedirs(data.path("pool"), exist_ok=True)
        for i, size in enumerate(sizes):
            r = f"pool/{rel}_{i:02d}.bin"
            b = rnd.randbytes(size)
            with open(data.path(r), "wb") as f:
                f.write(b)
            u = data.uri(r)
            self.uris.append(u)
            self.rels.append(r)
            self.sha[u] = hashlib.sha256(b).hexdigest()

    def remove(self, data):
        for r in self.rels:
            os.remove(data.path(r))


@pytest.fixture(scope="module")
def mid(data):
    """8 x 1 MiB, and 40 objects of mixed sizes (1 KiB to 3 MiB: both sides of the pool's
    64 KiB threshold, many size classes)."""
    one = Files(data, "m1", [MiB] * 8, 1)
    rnd = random.Random(2)
    mixed = Files(data, "mix", [rnd.choice([rnd.randrange(1 << 10, 64 << 10),
                                            rnd.randrange(64 << 10, 3 * MiB)])
                                for _ in range(40)], 3)
    yield one, mixed
    one.remove(data)
    mixed.remove(data)


@pytest.fixture(scope="module")
def large(data):
    """8 x 32 MiB and 8 x 16 MiB (two size classes)."""
    a = Files(data, "l32", [32 * MiB] * 8, 4)
    b = Files(data, "l16", [16 * MiB] * 8, 5)
    yield a, b
    a.remove(data)
    b.remove(data)


def child(server, code, env=None, timeout=300):
    """Runs code (with s3dlio connected, vm_kib, buffer_address, sha) in a fresh interpreter
    without the parent's pool settings; returns its last JSON line."""
    p = s3dtest.run_py(f"""
        import hashlib, json, os, sys, time
        sys.path.insert(0, {HERE!r})
        import numpy as np
        import s3dlio
        from s3dtest import vm_kib, buffer_address
        def sha(b):
            return hashlib.sha256(b).hexdigest()
        s3dlio.connect({server.tcp_url!r})
    """ + code, env=env, unset=POOL_ENV, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from the child\n{p.stdout}\n{p.stderr}"
    return json.loads(lines[-1])


def body(code):
    """Indents code to the child preamble's level (textwrap.dedent needs one margin)."""
    import textwrap

    return textwrap.indent(textwrap.dedent(code), " " * 8)


@rss_only
def test_dropped_results_are_reused_within_budget(server, large):
    l32, l16 = large
    r = child(server, body(f"""
        import mmap
        u32, u16 = {l32.uris!r}, {l16.uris!r}
        want = {dict(l32.sha, **l16.sha)!r}
        s3dlio.get_range(u32[0], 0, 100)          # warm up: connections
        base = vm_kib("VmHWM")
        rounds, blockers = [], []
        for i in range(10):
            res = s3dlio.get_many(u32)
            if i in (0, 9):
                assert all(sha(v) == want[u] for u, v in res), "wrong bytes"
            rounds.append(sorted(buffer_address(v) for _, v in res))
            del res
            # untouched mappings (no RSS) where unmapped buffers were: without the pool
            # the next round cannot land at the same addresses
            blockers += [mmap.mmap(-1, 32 << 20) for _ in range(8)]
        peak32 = vm_kib("VmHWM")
        # another size class, as many bytes: each miss first unmaps idle 32 MiB buffers
        for i in range(3):
            res = s3dlio.get_many(u16 + u16)
            if i == 2:
                assert all(sha(v) == want[u] for u, v in res), "wrong bytes"
            del res
        peak16 = vm_kib("VmHWM")
        print(json.dumps(dict(base=base, peak32=peak32, peak16=peak16, rounds=rounds)))
    """), env={"S3DLIO_BUFFER_POOL": "1G"})
    held_kib = 8 * 32 * 1024
    allowed = 1.1 * held_kib + 64 * 1024
    first = r["rounds"][0]
    assert len(set(first)) == 8
    assert all(rd == first for rd in r["rounds"][1:]), \
        "a round after the first did not get the dropped round's buffers back"
    assert r["peak32"] - r["base"] <= allowed, \
        f"10 rounds of 8 x 32 MiB raised peak RSS by {(r['peak32'] - r['base']) / 1024:.0f} MiB"
    assert r["peak16"] - r["base"] <= allowed, \
        f"switching to 16 MiB objects raised peak RSS by " \
        f"{(r['peak16'] - r['base']) / 1024:.0f} MiB: idle buffers were kept beside new ones"


def test_no_reuse_while_a_view_is_alive(server, mid):
    one, _ = mid
    r = child(server, body(f"""
        u = {one.uris!r}
        v = s3dlio.get(u[0])
        arr = np.frombuffer(v, dtype=np.uint8)      # an export: holds v's buffer
        addr, want = arr.ctypes.data, sha(arr)
        mv = s3dlio.get(u[1]).memoryview()          # the memoryview alone holds its BytesView
        mv_addr, mv_want = buffer_address(mv), sha(mv)
        del v
        held = [s3dlio.get(x) for x in u[2:]]
        held += [x for _, x in s3dlio.get_many(u[2:])]
        held += [x for _, x in s3dlio.get_many(u[2:])]
        seen = [buffer_address(h) for h in held]
        same_arr, same_mv = sha(arr) == want, sha(mv) == mv_want
        del held
        del arr                                     # the last view of u[0]'s buffer
        again = s3dlio.get(u[3])
        print(json.dumps(dict(addr=addr, mv_addr=mv_addr, seen=seen, same_arr=same_arr,
                              same_mv=same_mv, again=buffer_address(again),
                              again_ok=sha(again) == {one.sha[one.uris[3]]!r})))
    """))
    assert r["addr"] not in r["seen"], "a buffer still viewed by numpy was handed out again"
    assert r["mv_addr"] not in r["seen"], "a buffer still viewed by a memoryview was reused"
    assert r["same_arr"] and r["same_mv"], "bytes under a live view changed"
    # the pool hands out the buffer released last: once the array is gone, it is reused
    assert r["again"] == r["addr"], "the buffer did not return to the pool after its last view"
    assert r["again_ok"]


@rss_only
@pytest.mark.parametrize("setting,kept_mib", [(None, 128), ("40M", 32), ("0", 0)])
def test_idle_bytes_follow_the_setting(server, large, setting, kept_mib):
    _, l16 = large
    r = child(server, body(f"""
        res = s3dlio.get_many({l16.uris!r})
        assert sum(len(v) for _, v in res) == 128 << 20
        held = vm_kib("VmRSS")
        del res
        print(json.dumps(dict(kept=vm_kib("VmRSS") - (held - (128 << 10)))))
    """), env={"S3DLIO_BUFFER_POOL": setting} if setting is not None else None)
    kept = r["kept"] / 1024
    # 8 x 16 MiB dropped: the pool keeps them all (default), the 2 released last (40M: idle
    # bytes over the cap go oldest first), or none (0: plain malloc, which unmaps them)
    assert abs(kept - kept_mib) < 12, f"{kept:.0f} MiB stayed resident, want about {kept_mib}"


@rss_only
def test_idle_buffers_decay(server, large, mid):
    _, l16 = large
    one, _ = mid
    r = child(server, body(f"""
        res = s3dlio.get_many({l16.uris[:4]!r})
        held = vm_kib("VmRSS")
        del res
        pooled = vm_kib("VmRSS")     # nothing decays without a pool call
        time.sleep(0.6)
        small = s3dlio.get_range({one.uris[0]!r}, 0, 100)  # a small allocation checks decay
        after = vm_kib("VmRSS")
        print(json.dumps(dict(held=held, pooled=pooled, after=after)))
    """), env={"S3DLIO_BUFFER_POOL_DECAY_MS": "300"})
    assert r["held"] - r["pooled"] < 12 * 1024, "dropped buffers left the pool before decaying"
    assert r["pooled"] - r["after"] > 52 * 1024, \
        f"idle buffers stayed resident after the decay: {r['pooled']} -> {r['after']} KiB"


def test_concurrent_mixed_sizes_keep_their_bytes(server, mid):
    _, mixed = mid
    # a small cap and a short decay: buffers are evicted and unmapped while others are in use
    r = child(server, body(f"""
        import threading
        uris, want = {mixed.uris!r}, {mixed.sha!r}
        bad = []
        def worker(seed):
            import random
            rnd = random.Random(seed)
            for i in range(15):
                pick = rnd.sample(uris, 12)
                if i % 3 == 0:
                    res = [(u, s3dlio.get(u)) for u in pick]
                else:
                    res = s3dlio.get_many(pick, max_in_flight=4)
                keep = [(u, np.frombuffer(v, dtype=np.uint8)) for u, v in res[:3]]
                bad.extend(u for u, v in res if sha(v) != want[u])
                del res                    # the arrays still hold three of the buffers
                bad.extend("view:" + u for u, a in keep if sha(a) != want[u])
        ts = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        print(json.dumps(dict(bad=bad)))
    """), env={"S3DLIO_BUFFER_POOL": "6M", "S3DLIO_BUFFER_POOL_DECAY_MS": "20"})
    assert r["bad"] == [], f"objects with wrong bytes: {r['bad'][:5]}"


def test_fork_child_and_parent_both_work(server, mid):
    one, mixed = mid
    r = child(server, body(f"""
        import threading
        u, want = {one.uris!r}, {dict(one.sha, **mixed.sha)!r}
        mixed = {mixed.uris!r}
        live = s3dlio.get(u[0])
        dropped = s3dlio.get_many(u[1:])
        del dropped                        # idle in the pool at fork
        stop, bad = False, []
        def hammer():                      # allocating and releasing while we fork
            while not stop:
                bad.extend(x for x, v in s3dlio.get_many(mixed) if sha(v) != want[x])
        t = threading.Thread(target=hammer)
        t.start()
        codes = []
        for i in range(5):
            time.sleep(0.05)
            pid = os.fork()
            if pid == 0:
                ok = sha(live) == want[u[0]]
                for _ in range(2):
                    for x, v in s3dlio.get_many(u + mixed[:10]):
                        ok = ok and sha(v) == want[x]
                os._exit(0 if ok else 3)
            codes.append(os.waitpid(pid, 0)[1])
        stop = True
        t.join()
        ok = sha(live) == want[u[0]] and all(sha(v) == want[x] for x, v in s3dlio.get_many(u))
        print(json.dumps(dict(codes=codes, ok=ok, bad=bad)))
    """), timeout=200)
    assert r["codes"] == [0] * 5, f"forked children failed: {r['codes']}"
    assert r["ok"] and r["bad"] == [], r["bad"][:5]


@pytest.mark.parametrize("name,value", [("S3DLIO_BUFFER_POOL", "lots"),
                                        ("S3DLIO_BUFFER_POOL", "-1G"),
                                        ("S3DLIO_BUFFER_POOL_DECAY_MS", "1.5s")])
def test_bad_setting_fails_the_import(name, value):
    p = s3dtest.run_py("import s3dlio", env={name: value}, unset=POOL_ENV, check=False)
    assert p.returncode != 0
    assert "ValueError" in p.stderr and name in p.stderr, p.stderr


@pytest.mark.parametrize("value", ["0", "512MiB", "1.5g", "2G", "1048576", "64kb"])
def test_size_settings_parse(value):
    s3dtest.run_py("import s3dlio", env={"S3DLIO_BUFFER_POOL": value}, unset=POOL_ENV)


@pytest.fixture(scope="module")
def small(data):
    """1500 objects of 1 byte to 63 KiB: carved from slabs."""
    rnd = random.Random(7)
    f = Files(data, "s", [rnd.randrange(1, 64 << 10) for _ in range(1500)], 8)
    # too many for a command line: the child reads them from a file
    f.listing = data.path("pool/small.json")
    with open(f.listing, "w") as out:
        json.dump({"uris": f.uris, "sha": f.sha}, out)
    yield f
    f.remove(data)
    os.remove(f.listing)


@rss_only
def test_small_objects_share_recycled_slabs(server, small):
    """Small objects are carved from 2 MiB slabs that go back to the pool once their last
    object is dropped: rounds of get_many reuse the same slabs, RSS does not grow, and every
    object keeps its own bytes."""
    r = child(server, body(f"""
        with open({small.listing!r}) as f:
            listing = json.load(f)
        u, want = listing["uris"], listing["sha"]
        s3dlio.get(u[0])
        base = vm_kib("VmHWM")
        slabs, ok = [], True
        for i in range(8):
            res = s3dlio.get_many(u)
            ok = ok and all(sha(v) == want[x] for x, v in res)
            addrs = [buffer_address(v) for _, v in res]
            slabs.append(sorted({{a >> 21 for a in addrs}}))
            # distinct objects never overlap
            spans = sorted((buffer_address(v), len(v)) for _, v in res)
            ok = ok and all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:]))
            del res, addrs, spans
        peak = vm_kib("VmHWM")
        held = sum(os.path.getsize(x[len("file://"):]) for x in u)
        print(json.dumps(dict(base=base, peak=peak, slabs=slabs, ok=ok, held=held)))
    """))
    assert r["ok"], "an object had wrong bytes or overlapped another"
    per_round = len(r["slabs"][0])
    assert per_round <= r["held"] // (2 << 20) + 3, "small objects are not packed into slabs"
    # later rounds land in the slabs earlier rounds released
    assert set(r["slabs"][-1]) <= set().union(*r["slabs"][:-1])
    allowed = (1.1 * r["held"] + 64 * MiB) / 1024
    assert r["peak"] - r["base"] <= allowed, \
        f"8 rounds of {r['held'] >> 20} MiB of small objects raised RSS by " \
        f"{(r['peak'] - r['base']) / 1024:.0f} MiB"


def test_a_kept_small_object_keeps_its_bytes(server, small):
    """One object kept from a batch keeps its slab: later batches, carved from other slabs,
    never write over it."""
    r = child(server, body(f"""
        with open({small.listing!r}) as f:
            listing = json.load(f)
        u, want = listing["uris"], listing["sha"]
        res = s3dlio.get_many(u)
        keep_uri, keep = res[len(res) // 2]
        arr = np.frombuffer(keep, dtype=np.uint8)
        del res, keep
        ok = True
        for i in range(5):
            res = s3dlio.get_many(u)
            ok = ok and all(sha(v) == want[x] for x, v in res)
            del res
        print(json.dumps(dict(ok=ok, kept=sha(arr) == want[keep_uri])))
    """))
    assert r["ok"]
    assert r["kept"], "a live small object's bytes changed"


def test_small_objects_from_many_threads(server, small):
    r = child(server, body(f"""
        import threading
        with open({small.listing!r}) as f:
            listing = json.load(f)
        u, want = listing["uris"], listing["sha"]
        bad = []
        def run(k):
            for i in range(4):
                part = u[k::4]
                for x, v in s3dlio.get_many(part):
                    if sha(v) != want[x]:
                        bad.append(x)
                for x in part[:20]:
                    if sha(s3dlio.get(x)) != want[x]:
                        bad.append(x)
        ts = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print(json.dumps(dict(bad=bad)))
    """))
    assert r["bad"] == []
