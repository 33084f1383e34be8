"""The async twins of the storage calls (the original's ``get_many_async``, ``stat_async``,
``stat_many_async``, ``get_many_stats_async`` and the later ``get_async``,
``get_range_async``, ``put_bytes_async``, ``exists_async``, ``mkdir_async``).

As in the original, each call returns an asyncio future at once (the work has started) and
must be called with an event loop running; ``await`` gives the result or raises the error the
blocking call would raise. The work runs on this module's thread pool: the C calls release
the GIL, so many run at once, and the event loop's default executor is left to the
application.
"""

import asyncio
import concurrent.futures
import os
import threading

from . import _ops
from ._threads import run_each

__all__ = ["get_async", "get_range_async", "get_many_async", "get_many_stats_async",
           "stat_async", "stat_many_async", "put_bytes_async", "exists_async", "mkdir_async"]

_lock = threading.Lock()
_pool = None
_pool_pid = None


def _executor():
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked child has no threads
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(64, 8 * (os.cpu_count() or 2)),
                thread_name_prefix="s3dlio-async")
            _pool_pid = os.getpid()
        return _pool


def _submit(fn, *args):
    loop = asyncio.get_running_loop()  # RuntimeError without one, as the original
    return loop.run_in_executor(_executor(), fn, *args)


def get_async(uri):
    """Future of get(uri): a BytesView."""
    return _submit(_ops.get, uri)


def get_range_async(uri, offset, length=None):
    """Future of get_range(uri, offset, length)."""
    return _submit(_ops.get_range, uri, offset, length)


def get_many_async(uris, max_in_flight=64):
    """Future of get_many(uris, max_in_flight): [(uri, BytesView)] in input order."""
    return _submit(_ops.get_many, uris, max_in_flight)


def get_many_stats_async(uris, max_in_flight=64):
    """Future of get_many_stats(uris, max_in_flight): (count, total_bytes)."""
    return _submit(_ops.get_many_stats, uris, max_in_flight)


def stat_async(uri):
    """Future of stat(uri)."""
    return _submit(_ops.stat, uri)


def _stat_many(uris):
    if isinstance(uris, (str, bytes)):
        raise TypeError("uris must be a list of str, not a single string")
    return run_each(_ops.stat, uris, 64)


def stat_many_async(uris):
    """Future of [stat(u) for u in uris] (fetched concurrently), in input order; the first
    failure in input order raises."""
    return _submit(_stat_many, uris)


def put_bytes_async(uri, data):
    """Future of put_bytes(uri, data): None once stored and verified. data must not change
    until the future is done (it is sent from the caller's buffer)."""
    return _submit(_ops.put_bytes, uri, data)


def exists_async(uri):
    return _submit(_ops.exists, uri)


def mkdir_async(uri):
    return _submit(_ops.mkdir, uri)
