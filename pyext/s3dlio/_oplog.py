"""The operation log (the original's ``init_op_log`` / ``finalize_op_log`` /
``is_op_log_active``) and ``init_logging``.

The op-log is the original's format: a zstd-compressed, tab-separated file (warp-replay's
columns) with one line per storage operation this process makes through the package:

    idx thread op client_id n_objects bytes endpoint file error start first_byte end duration_ns

``op`` is GET, GET_RANGE, PUT, LIST, HEAD, DELETE, CREATE_CONTAINER or DELETE_CONTAINER;
times are RFC 3339 with nanoseconds (UTC); ``endpoint`` is the s3dliod server the operation
went to. While a log is active, ``_server.client()`` hands out a LoggingClient that records
every call of every module (checkpoints, datasets, writers) in one place.

Differences from the original, on purpose: entries are never dropped (the original drops
them when its queue is full unless S3DLIO_OPLOG_LOSSLESS=1; here a full queue makes the
caller wait for the writer thread), and the log is finished at interpreter exit if
``finalize_op_log()`` was not called, so it is always a complete zstd stream. A forked child
does not write to its parent's log (the writer thread does not exist there).
"""

import atexit
import datetime
import logging
import os
import queue
import sys
import threading
import time

from . import _core

__all__ = ["init_op_log", "finalize_op_log", "is_op_log_active", "init_logging"]

HEADER = ("idx\tthread\top\tclient_id\tn_objects\tbytes\tendpoint\tfile\terror\tstart\t"
          "first_byte\tend\tduration_ns\n")
_STOP = object()

log = logging.getLogger("s3dlio")


def _rfc3339(ns):
    sec, frac = divmod(ns, 1_000_000_000)
    t = datetime.datetime.fromtimestamp(sec, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%09dZ" % frac


class _OpLog:
    """One log file: a bounded queue drained by a writer thread into a zstd stream."""

    def __init__(self, path):
        cap = int(os.environ.get("S3DLIO_OPLOG_BUF", "65536") or 65536)
        level = int(os.environ.get("S3DLIO_OPLOG_LEVEL", "1") or 1)
        self.path = path
        self.pid = os.getpid()
        self.q = queue.Queue(maxsize=max(16, cap))
        self.z = _core.ZstdCompressor(level)
        self.f = open(path, "wb")
        try:
            self.f.write(self.z.compress(HEADER.encode()))
        except BaseException:
            self.f.close()
            raise
        self.error = None
        self.t = threading.Thread(target=self._run, name="s3dlio-oplog", daemon=True)
        self.t.start()

    def _run(self):
        idx = 0
        try:
            while True:
                e = self.q.get()
                if e is _STOP:
                    break
                op, uri, nobj, nbytes, endpoint, err, start, first, end, tid = e
                line = "%d\t%d\t%s\t\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n" % (
                    idx, tid, op, nobj, nbytes, endpoint, uri,
                    (err or "").replace("\t", " ").replace("\n", " "),
                    _rfc3339(start), _rfc3339(first) if first else "", _rfc3339(end),
                    end - start)
                out = self.z.compress(line.encode("utf-8", "replace"))
                if out:
                    self.f.write(out)
                idx += 1
        except Exception as exc:  # a full disk: say so once, keep the process running
            self.error = exc
            print("s3dlio: op-log %s: write failed: %s" % (self.path, exc), file=sys.stderr)
            while self.q.get() is not _STOP:  # drain so callers never block
                pass
        finally:
            try:
                self.f.write(self.z.flush())
                self.f.close()
            except Exception as exc:
                if self.error is None:
                    self.error = exc
                    print("s3dlio: op-log %s: close failed: %s" % (self.path, exc),
                          file=sys.stderr)

    def record(self, op, uri, nobj, nbytes, endpoint, err, start, end, first=None):
        if os.getpid() != self.pid:
            return  # a forked child: the writer thread is the parent's
        self.q.put((op, uri, nobj, nbytes, endpoint, err, start, first, end,
                    threading.get_native_id()))

    def close(self):
        if os.getpid() != self.pid:
            return
        self.q.put(_STOP)
        self.t.join()


_lock = threading.Lock()
_active = None


def current():
    """The active _OpLog of this process, or None."""
    lg = _active
    if lg is not None and lg.pid == os.getpid():
        return lg
    return None


def init_op_log(path):
    """Starts logging every storage operation of this process to path (zstd-compressed TSV,
    the original's format). Once per process: later calls are ignored while a log is
    active, as in the original."""
    global _active
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError("path must be a str or os.PathLike, not %s" % type(path).__name__)
    with _lock:
        if current() is not None:
            return None
        try:
            _active = _OpLog(os.fspath(path))
        except OSError as e:
            raise _core.InvalidArgumentError("init_op_log: cannot create %s: %s"
                                             % (path, e.strerror or e)) from None
    return None


def finalize_op_log():
    """Flushes and closes the op-log (a complete zstd stream); a no-op when none is
    active."""
    global _active
    with _lock:
        lg = current()
        _active = None
    if lg is not None:
        lg.close()
    return None


def is_op_log_active():
    return current() is not None


atexit.register(finalize_op_log)


class LoggingClient:
    """A _core.Client whose calls are recorded in the op-log (only while one is active)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    @property
    def raw(self):
        return self._inner

    def _call(self, op, uri, fn, *args, size_of=None, count_of=None, **kw):
        """fn(*args) recorded as one line: bytes from size_of(result), objects from
        count_of(result) (default 1)."""
        start = time.time_ns()
        err = None
        res = None
        try:
            res = fn(*args, **kw)
            return res
        except BaseException as e:
            err = "%s: %s" % (type(e).__name__, e)
            raise
        finally:
            lg = current()
            if lg is not None:
                nbytes, nobj = 0, (1 if count_of is None else 0)
                if err is None:
                    try:
                        nbytes = size_of(res) if size_of is not None else 0
                        nobj = count_of(res) if count_of is not None else 1
                    except Exception:
                        pass
                lg.record(op, uri, nobj, nbytes, self._inner.url, err, start, time.time_ns())

    def get(self, uri, offset=None, length=None):
        if offset is None and length is None:
            return self._call("GET", uri, self._inner.get, uri, size_of=len)
        return self._call("GET_RANGE", uri, self._inner.get, uri, offset, length, size_of=len)

    def get_into(self, uri, buffer, offset=0, length=None):
        op = "GET" if not offset and length is None else "GET_RANGE"
        return self._call(op, uri, self._inner.get_into, uri, buffer, offset, length,
                          size_of=int)

    def get_many(self, uris, max_in_flight=64):
        start = time.time_ns()
        uris = list(uris) if not isinstance(uris, (list, tuple)) else uris
        err = None
        try:
            res = self._inner.get_many(uris, max_in_flight)
            return res
        except BaseException as e:
            err = "%s: %s" % (type(e).__name__, e)
            res = None
            raise
        finally:
            lg = current()
            if lg is not None:
                end = time.time_ns()
                sizes = {u: len(v) for u, v in res} if res is not None else {}
                for u in uris:  # one line per object, as the original's per-object GETs
                    lg.record("GET", u, 1, sizes.get(u, 0), self._inner.url,
                              err if u not in sizes else None, start, end)

    def put_bytes(self, uri, data):
        n = memoryview(data).nbytes
        return self._call("PUT", uri, self._inner.put_bytes, uri, data, size_of=lambda _: n)

    def stat(self, uri):
        return self._call("HEAD", uri, self._inner.stat, uri, size_of=lambda d: d["size"])

    def list(self, uri, recursive=False):
        return self._call("LIST", uri, self._inner.list, uri, recursive, count_of=len)

    def delete(self, uri):
        return self._call("DELETE", uri, self._inner.delete, uri)

    def mkdir(self, uri):
        return self._call("CREATE_CONTAINER", uri, self._inner.mkdir, uri)

    def rmdir(self, uri):
        return self._call("DELETE_CONTAINER", uri, self._inner.rmdir, uri)


def wrap(client):
    """client, or a LoggingClient over it while an op-log is active."""
    return LoggingClient(client) if current() is not None else client


# ---- init_logging ----

_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
           "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}


def init_logging(level="info"):
    """Sends the package's log records (logger "s3dlio") to stderr at level ("trace",
    "debug", "info", "warn", "error"; anything else means "info", as in the original).
    Calling it again changes the level. The package logs its choice of server and its
    embedded server's start and stop (info), and the failures of the module-level calls
    (debug)."""
    if not isinstance(level, str):
        raise TypeError("level must be a str, not %s" % type(level).__name__)
    lvl = _LEVELS.get(level.lower(), logging.INFO)
    log.setLevel(lvl)
    if not any(getattr(h, "_s3dlio", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        h._s3dlio = True
        log.addHandler(h)
    return None
