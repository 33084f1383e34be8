"""s3dtest: helpers the pytest suites share (no pytest fixtures here; conftest.py has those).

- ServerProcess / start_server: run the real s3dliod, parse its "listening on" lines, stop it.
- WireConn: a raw client of the wire protocol (schema/wire.h) written with msgpack, for the
  handshake / frame-shape tests and the hostile-frame tests.
- crc32c: table-driven CRC32C (Castagnoli, reflected polynomial 0x82F63B78).
- run_py: run a snippet in a fresh /usr/bin/python3 process (embedded server, RSS, kills).
- buffer_address: the address a buffer exporter hands out (ctypes PyObject_GetBuffer).
- small /proc helpers (process state, finding the embedded server by its --parent-pid).
"""
import ctypes
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import msgpack

# ---- wire constants (schema/wire.h) ----
WIRE_VERSION = 1
WIRE_MAX_HEADER = 8192
WIRE_MAX_URI = 4096
WIRE_MAX_FRAME_CAP = 64 << 20

HELLO, GET, STAT, LIST, PUT, DELETE, CANCEL = 1, 2, 3, 4, 5, 6, 7
WELCOME, HEADER, ENTRY, ERROR = 16, 17, 18, 19
DATA, END = 32, 33

E_NOT_FOUND = 1
E_PERMISSION = 2
E_INVALID = 3
E_BUSY = 4
E_BACKEND = 5
E_IO = 6
E_TOO_LARGE = 7
E_CANCELLED = 8
E_PROTOCOL = 9
E_RANGE = 10
E_UNSUPPORTED = 11
E_CHECKSUM = 12
E_SHUTDOWN = 13
E_TIMEOUT = 14
E_INTERNAL = 15

LIST_RECURSIVE = 1

# Bounds on every wait in these helpers (seconds). Generous: machines are noisy.
IO_TIMEOUT = 60.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


# ---- CRC32C ----
def _make_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _make_table()


def crc32c_py(data, crc=0):
    """Reference CRC32C in pure Python (slow: use for up to a few MiB)."""
    t = _CRC_TABLE
    c = crc ^ 0xFFFFFFFF
    for b in memoryview(data).cast("B"):
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _load_isal():
    """ISA-L's crc32_iscsi, if present and if it agrees with the Python reference."""
    for name in ("libisal.so.2", "libisal.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        fn = lib.crc32_iscsi
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]

        def fast(data, crc=0, _fn=fn):
            mv = memoryview(data).cast("B")
            c = crc ^ 0xFFFFFFFF
            step = 1 << 30
            for i in range(0, len(mv), step):
                chunk = mv[i:i + step]
                buf = (ctypes.c_char * len(chunk)).from_buffer_copy(chunk) if chunk.readonly \
                    else (ctypes.c_char * len(chunk)).from_buffer(chunk)
                c = _fn(buf, len(chunk), c)
            return c ^ 0xFFFFFFFF

        sample = os.urandom(1000) + b"123456789"
        try:
            if fast(b"123456789") == 0xE3069283 and fast(sample) == crc32c_py(sample):
                return fast
        except Exception:  # pragma: no cover - a differing ISA-L variant
            pass
    return None


_crc_fast = _load_isal()


def crc32c(data, crc=0):
    """CRC32C of data (ISA-L when it matches the Python reference, else the reference)."""
    if _crc_fast is not None and len(data) > 4096:
        return _crc_fast(data, crc)
    return crc32c_py(data, crc)


# ---- URIs and files ----
def file_uri(path):
    path = os.fspath(path)
    assert path.startswith("/"), path
    return "file://" + path


def write_random(path, size, chunk=8 << 20):
    """Write size random bytes to path (parents created); return a hashlib.sha256."""
    import hashlib

    os.makedirs(os.path.dirname(path), exist_ok=True)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            b = os.urandom(n)
            h.update(b)
            f.write(b)
            left -= n
    return h


def free_tcp_port():
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- the server ----
_LISTEN_RE = re.compile(r"s3dliod: listening on ((?:tcp|unix)://\S+)")


def server_binary():
    path = os.environ.get("S3DLIOD")
    if not path:
        raise RuntimeError("set S3DLIOD to the s3dliod binary under test "
                           "(e.g. S3DLIOD=build/bin/s3dliod)")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise RuntimeError(f"S3DLIOD={path!r} is not an executable file")
    return path


class ServerProcess:
    """One running s3dliod. stderr is drained by a thread into self.log (for messages)."""

    def __init__(self, argv, proc, listens):
        self.argv = argv
        self.proc = proc
        self.log = []
        self.tcp_url = None
        self.unix_url = None
        self.unix_path = None
        self.port = None
        self.killed = False
        self.stopped_rc = None
        for url in listens:
            if url.startswith("tcp://"):
                self.tcp_url = url
                self.port = int(url.rsplit(":", 1)[1])
            else:
                self.unix_url = url
                self.unix_path = url[len("unix://"):]

    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return self.tcp_url or self.unix_url

    def alive(self):
        return self.proc.poll() is None

    def stderr_tail(self, n=40):
        return "\n".join(self.log[-n:])

    def describe(self):
        return f"s3dliod pid {self.pid} ({' '.join(self.argv)}); stderr tail:\n{self.stderr_tail()}"

    def address(self, kind="tcp"):
        """A socket address for WireConn: ("127.0.0.1", port) or a unix path."""
        if kind == "tcp":
            return ("127.0.0.1", self.port)
        return self.unix_path

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self):
        """SIGKILL (the test means it); wait for the process."""
        self.killed = True
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def wait(self, timeout=STOP_TIMEOUT):
        """Wait for exit; returns the exit code or None if still running after timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM and wait. Returns the exit code (SIGKILLs and returns None on a hang)."""
        if self.stopped_rc is not None or not self.alive():
            self.stopped_rc = self.proc.poll()
            return self.stopped_rc
        self.signal(signal.SIGTERM)
        rc = self.wait(timeout)
        if rc is None:
            self.killed = True
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            return None
        self.stopped_rc = rc
        return rc


def start_server(allow, *, tcp=True, unix_path=None, threads=None, extra=(), env=None,
                 expect=None, tcp_port=0):
    """Start s3dliod listening on 127.0.0.1:0 (tcp) and/or unix_path, serving the --allow
    prefixes in allow (list of URIs). Returns a ServerProcess once every listener printed its
    line. Fails (RuntimeError with its stderr) if the process exits or stays silent."""
    argv = [server_binary()]
    if tcp:
        argv += ["--listen", f"tcp://127.0.0.1:{tcp_port}"]
    if unix_path:
        argv += ["--listen", "unix://" + unix_path]
    for a in allow:
        argv += ["--allow", a]
    if threads:
        argv += ["--threads", str(threads)]
    argv += list(extra)
    want = expect if expect is not None else (1 if tcp else 0) + (1 if unix_path else 0)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    listens = []
    lines = []
    buf = b""
    deadline = time.monotonic() + START_TIMEOUT
    fd = proc.stderr.fileno()
    while len(listens) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"s3dliod printed {len(listens)} of {want} 'listening on' lines "
                               f"in {START_TIMEOUT}s: {argv}\n" + "\n".join(lines))
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not r:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            m = _LISTEN_RE.search(text)
            if m:
                listens.append(m.group(1))
    if len(listens) < want:
        rest = b""
        try:
            proc.wait(timeout=5)
            rest = proc.stderr.read() or b""
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise RuntimeError(f"s3dliod exited (rc={proc.returncode}) before listening: {argv}\n"
                           + "\n".join(lines) + (buf + rest).decode("utf-8", "replace"))
    srv = ServerProcess(argv, proc, listens)
    srv.log.extend(lines)

    def drain():
        tail = buf
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            tail += chunk
            while b"\n" in tail:
                line, tail = tail.split(b"\n", 1)
                srv.log.append(line.decode("utf-8", "replace"))
                if len(srv.log) > 5000:
                    del srv.log[:1000]

    threading.Thread(target=drain, name=f"s3dliod-{proc.pid}-stderr", daemon=True).start()
    return srv


# ---- raw wire client ----
class WireError(Exception):
    pass


class WireConn:
    """A raw connection to s3dliod speaking msgpack frames by hand."""

    def __init__(self, address, timeout=IO_TIMEOUT):
        fam = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        # surrogateescape: a str that is not UTF-8 decodes (and is caught by the checks of
        # the frames) instead of breaking the reader
        self.unp = msgpack.Unpacker(raw=False, max_buffer_size=256 << 20,
                                    unicode_errors="surrogateescape")
        self.welcome = None
        self.eof = False

    # sending
    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, *frames):
        self.sock.sendall(b"".join(msgpack.packb(f) for f in frames))

    def send_data(self, rid, offset, payload):
        self.sock.sendall(msgpack.packb([DATA, rid, offset]) + msgpack.packb(bytes(payload)))

    def hello(self, token=None, agent="s3dlio-pytest", version=WIRE_VERSION):
        self.send([HELLO, 0, version, token, agent])
        f = self.frame()
        if f[0] != WELCOME:
            raise WireError(f"expected WELCOME, got {f!r}")
        self.welcome = f
        return f

    @property
    def max_frame(self):
        return self.welcome[3]

    @property
    def max_in_flight(self):
        return self.welcome[4]

    # receiving
    def _obj(self):
        while True:
            try:
                return self.unp.unpack()
            except msgpack.OutOfData:
                pass
            if self.eof:
                raise EOFError("server closed the connection")
            data = self.sock.recv(4 << 20)
            if not data:
                self.eof = True
                raise EOFError("server closed the connection")
            self.unp.feed(data)

    def frame(self):
        """The next frame: a header list; for DATA, the payload bytes appended as last item."""
        h = self._obj()
        if not isinstance(h, list) or not h:
            raise WireError(f"server sent a non-array frame: {h!r:.200}")
        if h[0] == DATA:
            payload = self._obj()
            if not isinstance(payload, (bytes, bytearray)):
                raise WireError(f"DATA header {h!r} not followed by bin: {type(payload)}")
            h = h + [payload]
        return h

    def recv_raw(self, n):
        """Up to n raw bytes from the socket (bypassing the unpacker): b'' at EOF."""
        return self.sock.recv(n)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # whole requests
    def read_reply(self, rid, max_frames=1_000_000):
        """Frames of one request (others must not interleave here) up to its terminal frame.
        Returns a Reply."""
        r = Reply(rid)
        for _ in range(max_frames):
            f = self.frame()
            if f[1] != rid:
                raise WireError(f"frame for id {f[1]} while reading id {rid}: {f[:4]!r}")
            if r.add(f):
                return r
        raise WireError("reply never ended")

    def get(self, uri, offset=0, length=None, rid=1):
        self.send([GET, rid, uri, offset, length])
        return self.read_reply(rid)

    def read_replies(self, ids, max_frames=1_000_000):
        """Frames of several pipelined requests, demultiplexed by id."""
        replies = {i: Reply(i) for i in ids}
        open_ids = set(ids)
        for _ in range(max_frames):
            if not open_ids:
                return replies
            f = self.frame()
            rid = f[1]
            if rid not in replies:
                raise WireError(f"frame for unknown id {rid}: {f[:4]!r}")
            if rid not in open_ids:
                raise WireError(f"frame for id {rid} after its terminal frame: {f[:4]!r}")
            if replies[rid].add(f):
                open_ids.discard(rid)
        raise WireError("replies never ended")

    def expect_error_or_close(self, max_frames=100_000):
        """Read until an ERROR frame arrives or the server closes. Returns the ERROR frame or
        None for a close. A hang shows as socket.timeout (a failure)."""
        try:
            for _ in range(max_frames):
                f = self.frame()
                if f[0] == ERROR:
                    return f
            raise WireError("server kept sending frames and neither answered ERROR nor closed")
        except (EOFError, ConnectionResetError, BrokenPipeError):
            return None
        except (msgpack.ExtraData, ValueError) as e:  # garbage back from the server
            raise WireError(f"server answered with something that is not msgpack: {e}")

    def wait_closed(self):
        """Read and drop everything until EOF; returns the frames seen (bounded by timeout)."""
        seen = []
        try:
            while True:
                seen.append(self.frame())
                if len(seen) > 1_000_000:
                    raise WireError("too many frames while waiting for close")
        except (EOFError, ConnectionResetError):
            return seen


class Reply:
    """The frames of one request, checked for shape as they arrive."""

    def __init__(self, rid):
        self.rid = rid
        self.header = None
        self.entries = []
        self.chunks = []  # (offset, payload)
        self.end = None
        self.error = None
        self.frames = 0

    def add(self, f):
        """Add a frame; True when it was the terminal frame."""
        self.frames += 1
        t = f[0]
        if t == HEADER:
            if self.header is not None:
                raise WireError(f"second HEADER for id {self.rid}")
            self.header = f
        elif t == ENTRY:
            self.entries.append(f)
        elif t == DATA:
            self.chunks.append((f[2], f[-1]))
        elif t == END:
            self.end = f
            return True
        elif t == ERROR:
            self.error = f
            return True
        else:
            raise WireError(f"unexpected frame type {t} for id {self.rid}: {f[:4]!r}")
        return False

    @property
    def data(self):
        out = bytearray()
        for off, payload in self.chunks:
            if off != len(out):
                raise WireError(f"DATA offset {off} where {len(out)} was expected")
            out += payload
        return bytes(out)

    @property
    def ok(self):
        return self.end is not None and self.error is None


# ---- subprocesses ----
def run_py(code, *, env=None, timeout=300, check=True, unset=(), cwd=None):
    """Run dedented code in a fresh interpreter (this one: /usr/bin/python3 under pytest).
    env entries are added to os.environ; names in unset are removed. Returns the
    CompletedProcess (text); with check, a non-zero exit raises AssertionError with stderr."""
    e = dict(os.environ)
    for k in unset:
        e.pop(k, None)
    if env:
        e.update(env)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=e, cwd=cwd,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"child python exited {p.returncode}\n--- stdout\n{p.stdout}"
                             f"\n--- stderr\n{p.stderr}")
    return p


def popen_py(code, *, env=None, unset=(), stdin=subprocess.PIPE):
    e = dict(os.environ)
    for k in unset:
        e.pop(k, None)
    if env:
        e.update(env)
    return subprocess.Popen([sys.executable, "-u", "-c", textwrap.dedent(code)], env=e,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def read_line_until(proc, predicate, timeout=IO_TIMEOUT):
    """Read proc.stdout lines until predicate(line) is true; returns that line. Raises
    AssertionError with the child's stderr if it exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"child printed no matching line in {timeout}s; saw {seen!r}")
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not r:
            if proc.poll() is not None:
                err = proc.stderr.read()
                raise AssertionError(f"child exited {proc.returncode} early; stdout {seen!r}; "
                                     f"stderr:\n{err}")
            continue
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=10)
            err = proc.stderr.read()
            raise AssertionError(f"child exited {proc.returncode}; stdout {seen!r}; stderr:\n{err}")
        line = line.rstrip("\n")
        seen.append(line)
        if predicate(line):
            return line


# ---- /proc ----
def proc_state(pid):
    """The state letter of pid ('R', 'S', 'Z', ...) or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return s[s.rindex(")") + 2]


def pid_running(pid):
    st = proc_state(pid)
    return st is not None and st not in ("Z", "X")


def wait_pid_gone(pid, timeout=30.0):
    """True once pid is gone or a zombie, polling up to timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_running(pid):
            return True
        time.sleep(0.05)
    return not pid_running(pid)


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def servers_with_parent_pid(parent):
    """PIDs of running processes whose command line has --parent-pid PARENT."""
    want = str(parent)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        args = cmdline(int(name))
        if not args:
            continue
        for i, a in enumerate(args):
            if (a == "--parent-pid" and i + 1 < len(args) and args[i + 1] == want) or \
                    a == "--parent-pid=" + want:
                if pid_running(int(name)):
                    found.append(int(name))
                break
    return found


def vm_kib(field, pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


# ---- buffers ----
class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def buffer_info(obj, flags=0):
    """(address, length, readonly) that obj's buffer export reports (PyBUF_SIMPLE)."""
    b = _PyBuffer()
    _get_buffer(obj, ctypes.byref(b), flags)
    try:
        return (b.buf or 0), b.len, bool(b.readonly)
    finally:
        _release_buffer(ctypes.byref(b))


def buffer_address(obj):
    return buffer_info(obj)[0]


def sha256(buf):
    import hashlib

    return hashlib.sha256(buf).hexdigest()


# ---- metrics endpoint (--metrics) ----
PREFETCH = 8
_METRICS_RE = re.compile(r"s3dliod: metrics on (http://\S+)")


def metrics_url(srv):
    """The http://HOST:PORT a server started with --metrics printed (before listening)."""
    for line in srv.log:
        m = _METRICS_RE.search(line)
        if m:
            return m.group(1)
    raise AssertionError("no 'metrics on' line in the server's stderr:\n" + srv.stderr_tail())


def http_get(url, timeout=IO_TIMEOUT):
    """(status, body text) of a plain GET (urllib; non-2xx answers too)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse_metrics(text):
    """Prometheus text to {(name, frozenset of (label, value))): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            raise AssertionError(f"not a Prometheus sample line: {line!r}")
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def scrape(srv):
    """The server's /metrics, parsed (see parse_metrics)."""
    status, body = http_get(metrics_url(srv) + "/metrics")
    assert status == 200, (status, body)
    return parse_metrics(body)


def metric(samples, name, **labels):
    """One sample's value (0 when the server did not print it)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


# ---- writers used from threads (test_compat_writers.py, test_compat_checkpoint.py) ----
def threaded_chunks(nthreads, count, size):
    """Distinct chunks of size bytes, tagged with their thread and sequence number:
    {(thread, i): chunk}."""
    return {(t, i): bytes([t + 1]) * 4 + i.to_bytes(4, "little") + os.urandom(size - 8)
            for t in range(nthreads) for i in range(count)}


def check_interleaving(data, chunks, size):
    """data is the chunks, each whole and exactly once, each thread's in its order."""
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    assert sorted(pieces) == sorted(chunks.values())
    where = {c: k for k, c in chunks.items()}
    last = {}
    for p in pieces:
        t, i = where[p]
        assert last.get(t, -1) < i
        last[t] = i


def in_threads(fn, nthreads):
    """fn(t) on nthreads threads at once; any exception fails the test."""
    errors = []

    def run(t):
        try:
            fn(t)
        except BaseException as e:  # noqa: B902 (reported below)
            errors.append(e)
    ts = [threading.Thread(target=run, args=(t,)) for t in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
