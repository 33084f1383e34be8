"""One Python client of the benchmark, started by bench.py in its own process.

    python bench_worker.py KIND OP TARGET LISTFILE [--mif N] [--mem]

KIND    s3dlio-c   this project's package (PYTHONPATH=build/python), TARGET its server URL
        s3dlio-rs  the Rust original from PyPI, in-process on file:// URIs (TARGET unused)
        requests   HTTP from nginx, TARGET the base URL
        grpc       the gRPC peer (peer_servers.py), TARGET host:port
        flight     the Arrow Flight peer (peer_servers.py), TARGET grpc://host:port
OP      get_many   one call for every object (max_in_flight N where it applies)
        get        one call per object, in a loop
        get_into   s3dlio-c only: get_into() per object, into one preallocated buffer
LISTFILE           "SIZE REF" lines: REF is a URI (s3dlio) or a path under the server root

Protocol (like bench_client/bench_curl): prints READY once set up, then per stdin line "run"
fetches every object once and prints one JSON line (seconds, bytes, objects, cpu, t0, t1 on
CLOCK_MONOTONIC); "quit" exits. Every run checks that each object arrived whole.

--mem: no protocol. Measures peak RSS over the bytes held: ru_maxrss after one call holding
its results, minus ru_maxrss before it (after imports, connecting and a warm-up call on the
list's first item when that is a small object).
"""

import gc
import json
import resource
import struct
import sys
import time


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load(listfile):
    items = []
    with open(listfile) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                items.append((int(parts[0]), parts[1]))
    if not items:
        raise SystemExit("bench_worker: %s: no items" % listfile)
    return items


class Check(Exception):
    pass


def expect(got, size, ref):
    if got != size:
        raise Check("%s: %d of %d bytes" % (ref, got, size))


# ---- clients: each returns fetch(items) -> (bytes, held results) ----

def client_s3dlio(kind, op, target, mif, items):
    import s3dlio
    if kind == "s3dlio-c":
        s3dlio.connect(target)

    if op == "get_many":
        def fetch(items):
            res = s3dlio.get_many([r for _, r in items], max_in_flight=mif)
            total = 0
            for (size, ref), (u, v) in zip(items, res):
                expect(len(v), size, ref)
                total += size
            return total, res
    elif op == "get":
        def fetch(items):
            total = 0
            held = None
            for size, ref in items:
                held = s3dlio.get(ref)
                expect(len(held), size, ref)
                total += size
            return total, held
    elif op == "get_into":
        import numpy as np
        state = {"buf": None}

        def fetch(items):
            cap = max(s for s, _ in items)
            buf = state["buf"]
            if buf is None or len(buf) < cap:
                state["buf"] = None
                buf = state["buf"] = np.ones(cap, dtype=np.uint8)  # preallocated, touched
            total = 0
            for size, ref in items:
                n = s3dlio.get_into(ref, buf)
                expect(n, size, ref)
                total += n
            return total, buf
    else:
        raise SystemExit("bench_worker: %s has no op %s" % (kind, op))
    return fetch


def client_requests(op, target, items):
    import requests
    s = requests.Session()

    def fetch(items):
        total = 0
        held = None
        for size, ref in items:
            r = s.get(target + "/" + ref)
            if r.status_code != 200:
                raise Check("%s: HTTP %d" % (ref, r.status_code))
            held = r.content
            expect(len(held), size, ref)
            total += size
        return total, held
    return fetch


def client_grpc(op, target, items):
    import grpc
    ident = lambda b: b  # noqa: E731
    ch = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    grpc.channel_ready_future(ch).result(timeout=10)
    get = ch.unary_stream("/bench.Blob/Get", request_serializer=ident,
                          response_deserializer=ident)
    get_many = ch.unary_stream("/bench.Blob/GetMany", request_serializer=ident,
                               response_deserializer=ident)
    if op == "get":
        def fetch(items):
            total = 0
            held = None
            for size, ref in items:
                held = b"".join(get(ref.encode()))
                expect(len(held), size, ref)
                total += size
            return total, held
    else:
        def fetch(items):
            parts = [[] for _ in items]
            for msg in get_many("\n".join(r for _, r in items).encode()):
                (i,) = struct.unpack_from("<I", msg)
                parts[i].append(memoryview(msg)[4:])
            objs = []
            total = 0
            for (size, ref), p in zip(items, parts):
                b = p[0].tobytes() if len(p) == 1 else b"".join(p)
                expect(len(b), size, ref)
                total += size
                objs.append(b)
            return total, objs
    return fetch


def client_flight(op, target, items):
    import pyarrow.compute as pc
    import pyarrow.flight as fl
    cl = fl.connect(target)
    cl.wait_for_available(timeout=10)

    def table_bytes(t):
        s = pc.sum(pc.binary_length(t.column("data"))).as_py()
        return s or 0

    if op == "get":
        def fetch(items):
            total = 0
            held = None
            for size, ref in items:
                held = cl.do_get(fl.Ticket(ref.encode())).read_all()
                expect(table_bytes(held), size, ref)
                total += size
            return total, held
    else:
        def fetch(items):
            want = sum(s for s, _ in items)
            t = cl.do_get(fl.Ticket("\n".join(r for _, r in items).encode())).read_all()
            expect(table_bytes(t), want, "do_get")
            return want, t
    return fetch


def make_fetch(kind, op, target, mif, items):
    if kind in ("s3dlio-c", "s3dlio-rs"):
        return client_s3dlio(kind, op, target, mif, items)
    if kind == "requests":
        return client_requests(op, target, items)
    if kind == "grpc":
        return client_grpc(op, target, items)
    if kind == "flight":
        return client_flight(op, target, items)
    raise SystemExit("bench_worker: unknown kind %s" % kind)


def main():
    args = sys.argv[1:]
    mem = "--mem" in args
    if mem:
        args.remove("--mem")
    mif = 64
    if "--mif" in args:
        i = args.index("--mif")
        mif = int(args[i + 1])
        del args[i:i + 2]
    kind, op, target, listfile = args[:4]
    items = load(listfile)
    if mem:
        return measure_memory(kind, op, target, mif, items)
    fetch = make_fetch(kind, op, target, mif, items)
    print("READY", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "run":
            continue
        try:
            c0, t0 = cpu(), time.monotonic()
            total, held = fetch(items)
            t1, c1 = time.monotonic(), cpu()
            del held
        except Exception as e:  # reported, not raised: the orchestrator marks the row failed
            print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}), flush=True)
            return 1
        print(json.dumps({"seconds": t1 - t0, "bytes": total, "objects": len(items),
                          "cpu": c1 - c0, "t0": t0, "t1": t1}), flush=True)
    return 0


def measure_memory(kind, op, target, mif, items):
    # a small first item, when given, is the warm-up: connections, pools, first-call allocations
    if len(items) > 1 and items[0][0] <= (1 << 20):
        warm, items = items[:1], items[1:]
    else:
        warm = []
    fetch = make_fetch(kind, op, target, mif, items)
    if warm:
        fetch(warm)
    gc.collect()
    base = maxrss_bytes()
    total, held = fetch(items)  # get_into: the caller's buffer is allocated here, and counted
    peak = maxrss_bytes()
    held_bytes = items[-1][0] if op == "get" else total
    print(json.dumps({"baseline": base, "peak": peak, "delta": peak - base,
                      "held": held_bytes, "objects": len(items)}), flush=True)
    del held
    return 0


if __name__ == "__main__":
    sys.exit(main())
