"""run_each: a call per item on a few threads, for the batch calls of the Python layer
(upload, download, stat_many_async, put, put_many). The C calls they make release the GIL,
so threads overlap the waits. Bottom of the package: imports nothing of it."""

import threading


def run_each(fn, items, workers):
    """[fn(item) for item in items], computed on up to workers threads. After a failure no
    new item starts; the failure of the earliest item (in input order) is raised once the
    calls under way have ended."""
    items = list(items)
    results = [None] * len(items)
    if not items:
        return results
    if workers <= 1 or len(items) == 1:
        for i, it in enumerate(items):
            results[i] = fn(it)
        return results
    lock = threading.Lock()
    feed = iter(enumerate(items))
    failures = []

    def work():
        while True:
            with lock:
                if failures:
                    return
                nxt = next(feed, None)
            if nxt is None:
                return
            i, it = nxt
            try:
                results[i] = fn(it)
            except BaseException as e:  # noqa: B902 (re-raised in the caller's thread)
                with lock:
                    failures.append((i, e))
                return

    threads = [threading.Thread(target=work, name="s3dlio-batch")
               for _ in range(min(workers, len(items)) - 1)]
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()
    if failures:
        raise min(failures, key=lambda f: f[0])[1]
    return results
