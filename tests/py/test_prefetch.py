"""s3dlio.prefetch(uris): the server warms its cache for a coming epoch (PREFETCH), against
the S3 emulator; the server's /metrics count what reached the backend."""
import random

import pytest

import cloudemu
import s3dtest

BUCKET = "warm"
MET = ["--metrics", "tcp://127.0.0.1:0"]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    e = cloudemu.s3rver(str(tmp_path_factory.mktemp("s3rver-prefetch")), [BUCKET])
    yield e
    e.stop()


@pytest.fixture
def servers():
    started = []

    def start(emu, extra=()):
        s = s3dtest.start_server([f"s3://{BUCKET}/", "file:///"], threads=2,
                                 extra=cloudemu.CLOUD_FLAGS + MET + list(extra),
                                 env=cloudemu.s3_env(emu.endpoint))
        started.append(s)
        return s
    yield start
    for s in started:
        cloudemu.stop_server(s)


def _gets(srv):
    return s3dtest.metric(s3dtest.scrape(srv), "s3dliod_backend_requests_total", backend="s3",
                          op="GET")


def _put_objects(s3dlio_mod, emu, servers, prefix, n, size):
    """n objects written through a server without a cache (so nothing starts cached)."""
    plain = servers(emu)
    s3dlio_mod.connect(plain.tcp_url)
    rnd = random.Random(prefix)
    objs = {}
    for i in range(n):
        uri = f"s3://{BUCKET}/{prefix}/o{i:03d}.bin"
        objs[uri] = rnd.randbytes(size + i)
        s3dlio_mod.put_bytes(uri, objs[uri])
    return objs


def test_prefetch_then_every_get_is_a_cache_hit(s3dlio_mod, emu, servers):
    objs = _put_objects(s3dlio_mod, emu, servers, "epoch", 40, 20_000)
    srv = servers(emu, ["--cache-mem", "64m", "--cache-validate", "3600"])
    s3dlio_mod.connect(srv.tcp_url)
    uris = list(objs)
    cached = s3dlio_mod.prefetch(uris, max_in_flight=8)
    assert cached == sum(len(v) for v in objs.values())
    assert _gets(srv) == 40
    # the epoch: every object from the cache, none from the backend
    for _ in range(2):
        got = s3dlio_mod.get_many(uris)
        assert all(bytes(v) == objs[u] for u, v in got)
    m = s3dtest.scrape(srv)
    assert s3dtest.metric(m, "s3dliod_backend_requests_total", backend="s3", op="GET") == 40
    assert s3dtest.metric(m, "s3dliod_cache_hits_total") >= 80
    # prefetching what is cached costs nothing more
    assert s3dlio_mod.prefetch(uris) == cached
    assert _gets(srv) == 40


def test_prefetch_shares_reads_with_gets_running(s3dlio_mod, emu, servers):
    """A prefetch and a get_many of the same cold objects at once: one read each."""
    import threading
    objs = _put_objects(s3dlio_mod, emu, servers, "share", 30, 50_000)
    srv = servers(emu, ["--cache-mem", "64m", "--cache-validate", "3600"])
    s3dlio_mod.connect(srv.tcp_url)
    uris = list(objs)
    out = {}

    def fetch():
        out["got"] = s3dlio_mod.get_many(uris)

    t = threading.Thread(target=fetch)
    t.start()
    s3dlio_mod.prefetch(uris)
    t.join(timeout=120)
    assert all(bytes(v) == objs[u] for u, v in out["got"])
    assert _gets(srv) == 30


def test_prefetch_without_a_cache_or_of_local_files_is_a_no_op(s3dlio_mod, emu, servers, data):
    objs = _put_objects(s3dlio_mod, emu, servers, "nocache", 3, 1000)
    srv = servers(emu)  # no --cache-mem
    s3dlio_mod.connect(srv.tcp_url)
    assert s3dlio_mod.prefetch(list(objs)) == 0
    assert _gets(srv) == 0
    assert s3dlio_mod.prefetch([data.uri(data.small_rel(1))]) == 0
    assert s3dlio_mod.prefetch([]) == 0


def test_prefetch_errors_name_the_uri(s3dlio_mod, emu, servers):
    srv = servers(emu, ["--cache-mem", "16m"])
    s3dlio_mod.connect(srv.tcp_url)
    missing = f"s3://{BUCKET}/nope/missing.bin"
    with pytest.raises(FileNotFoundError) as ei:
        s3dlio_mod.prefetch([missing])
    assert missing in str(ei.value)
    with pytest.raises(PermissionError):
        s3dlio_mod.prefetch(["s3://otherbucket/x.bin"])
    with pytest.raises(TypeError):
        s3dlio_mod.prefetch("s3://warm/a-single-string")
    with pytest.raises(ValueError):
        s3dlio_mod.prefetch([missing], max_in_flight=0)


def test_prefetch_warms_the_server_each_uri_will_use(s3dlio_mod, emu, servers):
    objs = _put_objects(s3dlio_mod, emu, servers, "multi", 60, 5000)
    pool = [servers(emu, ["--cache-mem", "64m", "--cache-validate", "3600"]) for _ in range(3)]
    s3dlio_mod.connect(",".join(s.tcp_url for s in pool))
    uris = list(objs)
    assert s3dlio_mod.prefetch(uris) == sum(len(v) for v in objs.values())
    reads = [_gets(s) for s in pool]
    assert sum(reads) == 60 and all(reads), reads
    got = s3dlio_mod.get_many(uris)
    assert all(bytes(v) == objs[u] for u, v in got)
    assert [_gets(s) for s in pool] == reads  # every GET was a hit on the server it went to
