"""Fixtures for the pytest suites: they run the real s3dliod (env S3DLIOD) and the real s3dlio
package (PYTHONPATH=build/python). Nothing is mocked.

Run:
  PYTHONPATH=build/python S3DLIOD=build/bin/s3dliod /usr/bin/python3 -m pytest tests/py -q

Fixtures
  data         session: a directory of generated files (Dataset), served by `server`
  server       session: s3dliod on tcp://127.0.0.1:0 and a unix socket, --allow data/
  s3           s3dlio, connected to `server` over TCP (connect() again in every test)
  transport    parametrised "tcp" / "unix": s3dlio connected to `server` over that transport
  new_server   function: start(...) a private s3dliod for a test that kills or stalls it
  scratch      function: a fresh directory under data/ (+ its file:// URI) for writes

Env
  S3DLIOD          the s3dliod binary (required)
  S3DLIO_SKIP_BIG  1: skip the tests marked `big` (512 MiB RSS measurements)
  S3DLIO_ASAN      1: the build is instrumented; RSS-measuring tests skip themselves
"""
import itertools
import os
import random
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import s3dtest  # noqa: E402

DEFAULT_TIMEOUT = 120

SIZES = [0, 1, 4095, 4096, 65537, 1 << 20, (9 << 20) + 3]
N_SMALL = 500


# ---- pytest configuration ----
def pytest_configure(config):
    # also registered in pytest.ini; repeated here for runs that use another config file
    config.addinivalue_line("markers", "big: needs about 1.5 GiB of RAM and 512 MiB of disk")
    config.addinivalue_line("markers", "timeout(seconds): per-test timeout (pytest-timeout)")


def pytest_collection_modifyitems(config, items):
    have_timeout = config.pluginmanager.hasplugin("timeout")
    skip_big = os.environ.get("S3DLIO_SKIP_BIG") == "1"
    for item in items:
        if have_timeout and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))
        if skip_big and item.get_closest_marker("big") is not None:
            item.add_marker(pytest.mark.skip(reason="S3DLIO_SKIP_BIG=1"))


# ---- the package under test ----
@pytest.fixture(scope="session")
def s3dlio_mod():
    try:
        import s3dlio
    except Exception as e:  # make a missing build obvious, not a pile of skips
        pytest.fail(f"cannot import s3dlio ({e!r}); set PYTHONPATH to the build's python/ "
                    f"directory (PYTHONPATH=build/python)", pytrace=False)
    return s3dlio


# ---- data ----
class Dataset:
    """The generated tree. Paths are real (no symlinks in root's own path)."""

    def __init__(self, root):
        self.root = root
        self.files = {}  # relpath -> bytes

    def path(self, rel):
        return os.path.join(self.root, rel)

    def uri(self, rel=""):
        return s3dtest.file_uri(os.path.join(self.root, rel)) if rel else \
            s3dtest.file_uri(self.root) + "/"

    def add(self, rel, data):
        p = self.path(rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        self.files[rel] = data
        return p

    def bytes(self, rel):
        return self.files[rel]

    @property
    def allow(self):
        return self.uri()

    def size_rel(self, size):
        return f"sizes/size_{size}.bin"

    def small_rel(self, i):
        return f"small/obj_{i:04d}.bin"

    # The list tree: objects only (no empty directories), names chosen so that prefix
    # semantics differ from directory semantics ("pre" matches prefix_x.bin and prefixed/).
    TREE = ["a.bin", "b.txt", "prefix_x.bin", "prefixed/f.bin", "sub1/c.bin",
            "sub1/deep/d.bin", "sub1/deep/e.txt", "sub1x.bin", "sub2/g.bin"]


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = os.path.realpath(str(tmp_path_factory.mktemp("data")))
    ds = Dataset(root)
    rnd = random.Random(1234)
    for size in SIZES:
        ds.add(ds.size_rel(size), os.urandom(size))
    for i in range(N_SMALL):
        ds.add(ds.small_rel(i), os.urandom(rnd.randrange(0, 3000)))
    for rel in Dataset.TREE:
        ds.add("tree/" + rel, os.urandom(rnd.randrange(1, 5000)))
    # outside the allowed root: a sibling directory, and one whose name extends root's
    outside = os.path.realpath(str(tmp_path_factory.mktemp("outside")))
    ds.outside = outside
    ds.secret = b"SECRET-" + os.urandom(64)
    with open(os.path.join(outside, "secret.bin"), "wb") as f:
        f.write(ds.secret)
    ds.sibling = root + "_evil"
    os.makedirs(ds.sibling, exist_ok=True)
    with open(os.path.join(ds.sibling, "secret.bin"), "wb") as f:
        f.write(ds.secret)
    # symlinks inside the root that lead outside it
    links = os.path.join(root, "links")
    os.makedirs(links)
    os.symlink("/etc", os.path.join(links, "etc"))
    os.symlink(outside, os.path.join(links, "outdir"))
    os.symlink(os.path.join(outside, "secret.bin"), os.path.join(links, "secret.bin"))
    os.symlink("../../" + os.path.basename(outside) + "/secret.bin",
               os.path.join(links, "relsecret.bin"))
    yield ds
    shutil.rmtree(ds.sibling, ignore_errors=True)


@pytest.fixture(scope="session")
def big_file(data):
    """A 128 MiB object for mid-transfer kill tests: (relpath, size, sha256 hex, tail)."""
    size = 128 << 20
    rel = "big/128m.bin"
    h = s3dtest.write_random(data.path(rel), size)
    with open(data.path(rel), "rb") as f:
        f.seek(size - 4096)
        tail = f.read()
    return rel, size, h.hexdigest(), tail


# ---- servers ----
@pytest.fixture(scope="session")
def sock_dir():
    # unix socket paths must stay under 108 bytes: a short private directory in /tmp
    d = tempfile.mkdtemp(prefix="s3dt-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _start(data, unix_path, **kw):
    try:
        return s3dtest.start_server([data.allow], unix_path=unix_path, **kw)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def server(data, sock_dir):
    try:
        s3dtest.server_binary()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    srv = _start(data, os.path.join(sock_dir, "session.sock"), extra=["--drain-timeout", "10"])
    yield srv
    alive = srv.alive()
    rc = srv.stop()
    assert alive, f"the session server died during the run: rc={srv.proc.returncode}\n" + \
        srv.describe()
    assert rc == 0, f"session s3dliod exited {rc} after SIGTERM\n" + srv.describe()


@pytest.fixture
def s3(s3dlio_mod, server):
    s3dlio_mod.connect(server.tcp_url)
    return s3dlio_mod


@pytest.fixture(params=["tcp", "unix"])
def transport(request, s3dlio_mod, server):
    s3dlio_mod.connect(server.tcp_url if request.param == "tcp" else server.unix_url)
    return s3dlio_mod


_SOCK_SEQ = itertools.count()


class ServerFactory:
    """Starts private servers for one test; stops them after it (SIGTERM, rc 0 expected
    unless the test killed it or called expect_unclean())."""

    def __init__(self, data, sock_dir, name):
        self.data = data
        self.sock_dir = sock_dir
        self.name = name
        self.servers = []
        self.unclean = set()

    def sock_path(self, tag=None):
        """A fresh unix socket path (unique in this run)."""
        return os.path.join(self.sock_dir, f"t{next(_SOCK_SEQ)}-{tag or 's'}.sock")

    def start(self, *, allow=None, unix_path=None, unix=True, extra=(), threads=None,
              drain_timeout=10, tcp_port=0):
        if unix and unix_path is None:
            unix_path = self.sock_path()
        ex = list(extra)
        if drain_timeout is not None and "--drain-timeout" not in ex:
            ex += ["--drain-timeout", str(drain_timeout)]
        try:
            srv = s3dtest.start_server(allow or [self.data.allow], unix_path=unix_path,
                                       threads=threads, extra=ex, tcp_port=tcp_port)
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)
        self.servers.append(srv)
        return srv

    def expect_unclean(self, srv):
        self.unclean.add(id(srv))

    def finish(self):
        problems = []
        for srv in self.servers:
            if srv.killed or id(srv) in self.unclean:
                if srv.alive():
                    srv.proc.kill()
                    srv.proc.wait(timeout=30)
                continue
            if srv.stopped_rc is not None:
                continue
            if not srv.alive():
                problems.append(f"s3dliod pid {srv.pid} died during the test "
                                f"(rc={srv.proc.returncode})\n{srv.describe()}")
                continue
            rc = srv.stop()
            if rc != 0:
                problems.append(f"s3dliod pid {srv.pid} exited {rc} after SIGTERM\n"
                                f"{srv.describe()}")
        return problems


@pytest.fixture
def new_server(request, data, sock_dir):
    f = ServerFactory(data, sock_dir, request.node.nodeid)
    yield f
    problems = f.finish()
    assert not problems, "\n".join(problems)


@pytest.fixture
def scratch(request, data):
    """A fresh, empty directory under the served root for one test: (path, uri ending '/')."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:80]
    path = data.path(os.path.join("scratch", name))
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    yield path, s3dtest.file_uri(path) + "/"
    shutil.rmtree(path, ignore_errors=True)
