#!/usr/bin/env python3
"""quickstart: the s3dlio calls a training job makes, against a folder served by s3dliod.

    PYTHONPATH=build/python /usr/bin/python3 pyext/examples/quickstart.py --data DIR \\
        [--server unix:///path/s3dliod.sock | tcp://HOST:PORT]

Without --server (and without S3DLIO_SERVER) the package starts its own private s3dliod, which
serves file:/// (so DIR may be anywhere). Every read lands in memory once: BytesView objects
own the bytes and numpy reads them in place; get_into fills an array we allocated.
"""
import argparse
import os
import sys
import time

import numpy as np

import s3dlio


def file_uri(path):
    return "file://" + os.path.abspath(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder of objects to read")
    ap.add_argument("--server", default=None,
                    help="tcp://HOST:PORT or unix:///PATH (default: S3DLIO_SERVER, else embedded)")
    ap.add_argument("--max-in-flight", type=int, default=64)
    args = ap.parse_args()

    root = os.path.realpath(args.data)
    if not os.path.isdir(root):
        sys.exit(f"quickstart: {root} is not a directory")
    if args.server:
        s3dlio.connect(args.server)
    prefix = file_uri(root) + "/"
    print(f"quickstart: s3dlio {s3dlio.__version__}, data {prefix}")

    # list: full URIs, sorted; recursive walks the whole tree
    uris = [u for u in s3dlio.list(prefix, recursive=True) if not u.endswith("/")]
    if not uris:
        sys.exit(f"quickstart: no objects under {prefix}")
    top = s3dlio.list(prefix)
    print(f"list: {len(uris)} objects; top level: {', '.join(u[len(prefix):] for u in top[:6])}"
          f"{' ...' if len(top) > 6 else ''}")

    # get: one object as a BytesView, viewed by numpy without a copy
    first = uris[0]
    view = s3dlio.get(first)
    arr = np.frombuffer(view.memoryview(), dtype=np.uint8)
    st = s3dlio.stat(first)
    assert len(view) == st["size"] == arr.size
    print(f"get: {first[len(prefix):]} {view!r}, numpy {arr.dtype}[{arr.size}] "
          f"(read-only: {not arr.flags.writeable}), stat size {st['size']}, "
          f"modified {st['last_modified']}")

    # get_range: a slice of the biggest object
    sizes = {u: s3dlio.stat(u)["size"] for u in uris}
    biggest = max(uris, key=sizes.get)
    off = sizes[biggest] // 3
    part = s3dlio.get_range(biggest, off, 4096)
    tail = s3dlio.get_range(biggest, max(0, sizes[biggest] - 100))  # length None: to the end
    assert len(part) == min(4096, sizes[biggest] - off) and len(tail) == min(100, sizes[biggest])
    print(f"get_range: {len(part)} bytes at {off} and the last {len(tail)} bytes of "
          f"{biggest[len(prefix):]}")

    # get_many: everything, pipelined; each result is viewed in place by numpy. The first pass
    # also pays for connecting and for faulting in fresh memory: report it and the best pass.
    passes = []
    for _ in range(3):
        t0 = time.perf_counter()
        results = s3dlio.get_many(uris, max_in_flight=args.max_in_flight)
        passes.append(time.perf_counter() - t0)
        total = 0
        for uri, v in results:
            a = np.frombuffer(v.memoryview(), dtype=np.uint8)  # no copy
            assert a.size == sizes[uri]
            total += a.size
        assert [u for u, _ in results] == uris
        del results, a
    print(f"get_many: {len(uris)} objects, {total / 2**20:.1f} MiB: first pass "
          f"{total / passes[0] / 1e9:.2f} GB/s, best of {len(passes)} "
          f"{total / min(passes) / 1e9:.2f} GB/s (max_in_flight={args.max_in_flight})")

    # get_into: straight into an array we allocated (e.g. a pinned or pre-shaped batch)
    # (reused across steps, as a training loop would: time the best of a few)
    dest = np.empty(sizes[biggest], dtype=np.uint8)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        n = s3dlio.get_into(biggest, dest)
        times.append(time.perf_counter() - t0)
    assert n == sizes[biggest]
    assert bytes(dest[off:off + len(part)]) == part
    print(f"get_into: {n / 2**20:.1f} MiB into a preallocated numpy array in "
          f"{min(times) * 1e3:.1f} ms = {n / min(times) / 1e9:.2f} GB/s")

    # put_bytes: write from a numpy array (no copy), read back, clean up
    out = prefix + "quickstart-output/put-demo.bin"
    payload = np.arange(1 << 18, dtype=np.uint32)
    try:
        s3dlio.put_bytes(out, payload)
        back = s3dlio.get(out)
        assert back == payload.tobytes()
        print(f"put_bytes: {payload.nbytes} bytes to {out[len(prefix):]}, read back equal")
        s3dlio.delete(prefix + "quickstart-output/", recursive=True)
        try:
            os.rmdir(os.path.join(root, "quickstart-output"))  # delete() removes objects only
        except OSError:
            pass
    except PermissionError as e:
        print(f"put_bytes: refused by the server ({e})")

    s = s3dlio.stats()
    ratio = s["bytes_copied"] / s["bytes_received"] if s["bytes_received"] else 0.0
    print(f"stats: {s['requests']} requests, {s['bytes_received'] / 2**20:.1f} MiB received, "
          f"{s['bytes_copied'] / 2**20:.3f} MiB copied (copied/received {ratio:.4f}), "
          f"{s['connects']} connections, {s['errors']} errors")
    print(f"quickstart: done: {len(uris)} objects, {sum(sizes.values()) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
