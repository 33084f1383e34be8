"""bench_ckpt_loader.py: loader items/s and checkpoint save/load GB/s, each against plain
put/get of the same bytes (standalone; prints a table).

    PYTHONPATH=build/python S3DLIOD=build/bin/s3dliod /usr/bin/python3 \
        tests/bench/bench_ckpt_loader.py [--items 4000] [--item-kib 16] [--ckpt-mib 256]
        [--world 2] [--runs 3] [--dir DIR]

Uses the embedded default server (a private s3dliod on a Unix socket, file:// under --dir)
unless S3DLIO_SERVER is set. Each case runs --runs times interleaved; medians are printed.
Files are read once before timing (page cache warm), so this measures the data path, not
the disk.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import s3dlio


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=4000)
    ap.add_argument("--item-kib", type=int, default=16)
    ap.add_argument("--ckpt-mib", type=int, default=256)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()

    root = os.path.realpath(a.dir or tempfile.mkdtemp(prefix="s3dlio-bench-"))
    base = "file://" + root
    try:
        # ---- data: items ----
        items_dir = os.path.join(root, "items")
        os.makedirs(items_dir, exist_ok=True)
        blob = os.urandom(a.item_kib << 10)
        for i in range(a.items):
            with open(os.path.join(items_dir, "item%06d.bin" % i), "wb") as f:
                f.write(blob)
        prefix = base + "/items/"
        uris = s3dlio.create_dataset(prefix).get_uris()
        s3dlio.get_many(uris, 64)  # warm

        cases = {
            "loader zero_copy (items/s)": lambda: sum(
                1 for _ in s3dlio.create_async_loader(prefix, batch_size=32, zero_copy=True)),
            "loader bytes (items/s)": lambda: sum(
                1 for _ in s3dlio.create_async_loader(prefix, batch_size=32)),
            "loader batches() (items/s)": lambda: sum(
                len(b) for b in s3dlio.create_async_loader(prefix, batch_size=32).batches()),
            "plain get loop (items/s)": lambda: [s3dlio.get(u) for u in uris],
            "plain get_many 64 (items/s)": lambda: s3dlio.get_many(uris, 64),
        }
        res = {k: [] for k in cases}
        for _ in range(a.runs):
            for k, fn in cases.items():
                res[k].append(a.items / timed(fn))

        # ---- checkpoints ----
        size = a.ckpt_mib << 20
        shard = size // a.world
        data = [os.urandom(shard) for _ in range(a.world)]
        ck = {k: [] for k in ("ckpt save (GB/s)", "plain put (GB/s)",
                              "ckpt load read_shard_by_rank (GB/s)", "plain get (GB/s)",
                              "ckpt read_shard_into (GB/s)", "plain get_into (GB/s)")}
        buf = bytearray(shard)
        for run in range(a.runs):
            store = s3dlio.CheckpointStore(base + "/ckpt/")
            step = run + 1

            def save():
                recs = [store.writer(a.world, r).save_distributed_shard(step, 0, "bytes", d)
                        for r, d in enumerate(data)]
                store.writer(a.world, 0).finalize_distributed_checkpoint(step, 0, "bytes",
                                                                         recs)

            def put():
                for r, d in enumerate(data):
                    s3dlio.put_bytes(base + "/plain/rank-%d.bin" % r, d)

            ck["ckpt save (GB/s)"].append(size / timed(save) / 1e9)
            ck["plain put (GB/s)"].append(size / timed(put) / 1e9)
            reader = store.reader()
            m = reader.load_latest_manifest()
            for r in range(a.world):  # warm the page cache for both (untimed)
                reader.read_shard_into(m, r, buf)
                s3dlio.get_into(base + "/plain/rank-%d.bin" % r, buf)
            ck["ckpt load read_shard_by_rank (GB/s)"].append(size / timed(
                lambda: [reader.read_shard_by_rank(m, r) for r in range(a.world)]) / 1e9)
            ck["plain get (GB/s)"].append(size / timed(
                lambda: [s3dlio.get(base + "/plain/rank-%d.bin" % r)
                         for r in range(a.world)]) / 1e9)
            ck["ckpt read_shard_into (GB/s)"].append(size / timed(
                lambda: [reader.read_shard_into(m, r, buf) for r in range(a.world)]) / 1e9)
            ck["plain get_into (GB/s)"].append(size / timed(
                lambda: [s3dlio.get_into(base + "/plain/rank-%d.bin" % r, buf)
                         for r in range(a.world)]) / 1e9)
            store.delete_checkpoint(step)

        print("s3dlio loader/checkpoint bench: %d items x %d KiB; checkpoint %d MiB in %d "
              "shards; %d runs (median, min-max)" % (a.items, a.item_kib, a.ckpt_mib,
                                                     a.world, a.runs))
        for k, v in list(res.items()) + list(ck.items()):
            fmt = "%10.0f" if "items" in k else "%10.2f"
            print("  %-40s " % k + fmt % statistics.median(v) +
                  ("   (" + fmt.strip() + " - " + fmt.strip() + ")") % (min(v), max(v)))
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
