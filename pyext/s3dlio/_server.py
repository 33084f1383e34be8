"""Which server the module-level functions use, and the embedded default.

Order: ``s3dlio.connect(url)`` if called; else ``S3DLIO_SERVER``; else a private ``s3dliod``
this process starts on a Unix socket in a private directory (mode 0700), tied to the life of
the process (``--parent-pid``, and stopped at exit).

Fork: a child process (a DataLoader worker, a multiprocessing fork) keeps using the same server
URL but opens its own connections; it never starts or stops its parent's embedded server.
"""

import atexit
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from . import _oplog
from ._core import Client
from ._core import ServerConnectionError as _ConnErr

_log = logging.getLogger("s3dlio")

_ENV_SERVER = "S3DLIO_SERVER"
_ENV_DAEMON = "S3DLIOD"
_START_TIMEOUT = 10.0
_READY_LINE = b"s3dliod: listening on "
_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes on Linux; keep a margin


class _Embedded:
    """A private s3dliod owned by the process that started it."""

    def __init__(self, proc, workdir, url, log_path):
        self.proc = proc
        self.workdir = workdir
        self.url = url
        self.log_path = log_path
        self.owner_pid = os.getpid()

    def stop(self):
        # Only the process that started it stops it (atexit handlers survive fork).
        if os.getpid() != self.owner_pid:
            return
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    pass
            except OSError:
                pass
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _log_tail(path, lines=20):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "(no log: %s)" % e
    text = data.decode("utf-8", "replace").rstrip("\n").splitlines()
    return "\n".join(text[-lines:]) if text else "(empty log)"


def find_daemon():
    """The s3dliod binary for the embedded default: $S3DLIOD, else the package's own
    bin/s3dliod, else s3dliod on PATH."""
    env = os.environ.get(_ENV_DAEMON)
    if env:
        return env
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "s3dliod")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    found = shutil.which("s3dliod")
    if found:
        return found
    raise _ConnErr(
        "s3dlio: no server configured and no s3dliod to start: set S3DLIO_SERVER "
        "(tcp://HOST:PORT or unix:///PATH), call s3dlio.connect(url), or set S3DLIOD to the "
        "s3dliod binary (looked in %s and on PATH)" % here)


_DIR_PREFIX = "s3dlio-emb-"
_OWNER_FILE = "owner.pid"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _sweep_stale(parent):
    """Removes the directories of embedded servers whose owner process died without running
    its atexit handler (killed): their s3dliod exited too (--parent-pid)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    uid = os.getuid()
    for name in names:
        if not name.startswith(_DIR_PREFIX):
            continue
        d = os.path.join(parent, name)
        try:
            if os.lstat(d).st_uid != uid:
                continue
            with open(os.path.join(d, _OWNER_FILE)) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if not _pid_alive(owner):
            shutil.rmtree(d, ignore_errors=True)


def _private_dir():
    parent = tempfile.gettempdir()
    if len(os.path.join(parent, _DIR_PREFIX + "xxxxxxxx", "s3dliod.sock")) > _SUN_PATH_MAX:
        parent = "/tmp"
    _sweep_stale(parent)
    d = tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=parent)  # mode 0700
    with open(os.path.join(d, _OWNER_FILE), "w") as f:
        f.write("%d\n" % os.getpid())
    return d


def start_embedded():
    """Starts a private s3dliod; returns (_Embedded, Client) once it accepts connections."""
    daemon = find_daemon()
    workdir = _private_dir()
    sock = os.path.join(workdir, "s3dliod.sock")
    log_path = os.path.join(workdir, "s3dliod.log")
    url = "unix://" + sock
    args = [daemon, "--listen", url, "--allow", "file:///", "--allow", "direct:///",
            "--threads", "2", "--parent-pid", str(os.getpid())]
    try:
        with open(log_path, "wb") as log:
            # Its own session: a Ctrl-C meant for Python must not kill the server first.
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    close_fds=True, start_new_session=True)
    except OSError as e:
        shutil.rmtree(workdir, ignore_errors=True)
        raise _ConnErr("s3dlio: cannot start the embedded server %s: %s" % (daemon, e))
    emb = _Embedded(proc, workdir, url, log_path)
    deadline = time.monotonic() + _START_TIMEOUT
    delay = 0.002
    last_err = None
    while True:
        rc = proc.poll()
        if rc is not None:
            tail = _log_tail(log_path)
            emb.stop()
            raise _ConnErr("s3dlio: the embedded server %s exited with status %s "
                                  "before listening; its log ends:\n%s" % (daemon, rc, tail))
        ready = False
        try:
            with open(log_path, "rb") as f:
                ready = _READY_LINE in f.read()
        except OSError:
            pass
        if ready or os.path.exists(sock):
            try:
                return emb, Client(url)
            except ConnectionError as e:  # socket bound but not listening yet
                last_err = e
        if time.monotonic() > deadline:
            tail = _log_tail(log_path)
            emb.stop()
            raise _ConnErr("s3dlio: the embedded server %s did not start within %.0f s "
                                  "(%s); its log ends:\n%s"
                                  % (daemon, _START_TIMEOUT, last_err or "no socket", tail))
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.client = None     # the Client of the module-level functions
        self.url = None        # its server: kept across fork
        self.pid = os.getpid()
        self.embedded = None   # _Embedded this process started


_state = _State()


def _new_client(url):
    return Client(url)  # the C client reads S3DLIO_TOKEN itself


def _stop_embedded():
    emb = _state.embedded
    if emb is not None and emb.owner_pid == os.getpid():
        _state.embedded = None
        # Close our connections first so the server sees clean EOFs.
        c = _state.client
        if c is not None and c.url == emb.url:
            _state.client = None
            try:
                c.close()
            except Exception:
                pass
        emb.stop()


atexit.register(_stop_embedded)


def _after_fork_in_child():
    # The lock may have been held by a thread that does not exist here; the inherited Client
    # speaks on the parent's connections: forget both (the C side leaks, never closes, them).
    _state.lock = threading.Lock()
    _state.client = None
    _state.pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def client():
    """The Client of the module-level functions, created on first use (while an op-log is
    active, a wrapper of it that records every call: see _oplog)."""
    return _oplog.wrap(raw_client())


def raw_client():
    """The _core.Client itself (for C code that needs the real object, e.g. Prefetcher)."""
    c = _state.client
    if c is not None and _state.pid == os.getpid():
        return c
    with _state.lock:
        if _state.pid != os.getpid():  # forked without the hook (should not happen)
            _state.client = None
            _state.pid = os.getpid()
        if _state.client is not None:
            return _state.client
        if _state.url is not None:
            # connect() was called, or a forked child: same server, new connections
            _state.client = _new_client(_state.url)
            return _state.client
        env = os.environ.get(_ENV_SERVER)
        if env:
            _state.client = _new_client(env)
            _state.url = env
            _log.info("using the server(s) of %s: %s", _ENV_SERVER, env)
            return _state.client
        emb, c = start_embedded()
        _log.info("started the embedded server %s (pid %d, log %s)", emb.url, emb.proc.pid,
                  emb.log_path)
        _state.embedded = emb
        _state.url = emb.url
        _state.client = c
        return c


def connect(url=None):
    """Use the server at url (tcp://HOST:PORT or unix:///PATH) from now on; None goes back to
    the default (S3DLIO_SERVER, else the embedded server). Connects now, so an unreachable
    server raises ConnectionError here."""
    if url is not None and not isinstance(url, str):
        raise TypeError("url must be a str or None, not %s" % type(url).__name__)
    if url is not None and not url:
        raise ValueError("url must not be empty")
    with _state.lock:
        if url is None:
            _state.client = None
            _state.url = None
            if _state.embedded is not None and _state.embedded.owner_pid == os.getpid() \
                    and not os.environ.get(_ENV_SERVER):
                # keep using the server we already started
                _state.url = _state.embedded.url
        else:
            c = _new_client(url)
            _state.client = c  # the old Client is freed when its last call ends
            _state.url = url
            _state.pid = os.getpid()
    if url is None:
        client()


def embedded_url():
    """The URL of the embedded server this process started, or None."""
    emb = _state.embedded
    return emb.url if emb is not None else None
