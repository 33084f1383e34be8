"""The Python peers' servers, started by bench.py: a gRPC server and an Arrow Flight server
that serve the files under ROOT. Each binds 127.0.0.1 on a port the OS picks, prints
"LISTENING <port>" and serves until stdin closes (or SIGTERM).

    python peer_servers.py grpc|flight ROOT

gRPC: generic handlers with bytes (de)serializers, no protoc. Two unary-stream methods:
  /bench.Blob/Get      request: a path (relative to ROOT); replies: the object in chunks
  /bench.Blob/GetMany  request: paths joined by "\\n"; replies: chunks, each prefixed by the
                       4-byte little-endian index of its object (objects in request order)
Flight: do_get(ticket = paths joined by "\\n") streams record batches (index: int32,
data: binary), one row per chunk of at most CHUNK bytes, a batch up to BATCH bytes; large
objects are sent from memory-mapped files without a copy on the server.
"""

import os
import signal
import struct
import sys
import threading

CHUNK = 1 << 20  # gRPC message and Flight row: 1 MiB (gRPC's default limit is 4 MiB)
BATCH = 4 << 20


def safe_path(root, rel):
    p = os.path.realpath(os.path.join(root, rel))
    if not p.startswith(root + os.sep):
        raise PermissionError(rel)
    return p


def serve_grpc(root):
    from concurrent import futures

    import grpc

    def read_chunks(path, prefix=b""):
        with open(path, "rb", buffering=0) as f:
            while True:
                b = f.read(CHUNK)
                if not b:
                    break
                yield prefix + b if prefix else b

    def get(request, context):
        yield from read_chunks(safe_path(root, request.decode()))

    def get_many(request, context):
        for i, rel in enumerate(request.decode().split("\n")):
            yield from read_chunks(safe_path(root, rel), struct.pack("<I", i))

    ident = lambda b: b  # noqa: E731 (bytes in, bytes out)
    handlers = {
        "Get": grpc.unary_stream_rpc_method_handler(get, ident, ident),
        "GetMany": grpc.unary_stream_rpc_method_handler(get_many, ident, ident),
    }
    opts = [("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=opts)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Blob", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return port, lambda: server.stop(0)


def serve_flight(root):
    import pyarrow as pa
    import pyarrow.flight as fl

    schema = pa.schema([("index", pa.int32()), ("data", pa.binary())])

    def make(idx, offsets, values):
        arr = pa.Array.from_buffers(pa.binary(), len(idx),
                                    [None, pa.py_buffer(struct.pack("<%di" % len(offsets), *offsets)),
                                     values])
        return pa.record_batch([pa.array(idx, pa.int32()), arr], schema=schema)

    def batches(rels):
        # large objects: rows are CHUNK slices of the mapped file, a batch's values one
        # contiguous slice of it (no copy); small objects: gathered into one values buffer
        # per batch (one copy of a few KiB each, as any Flight server building batches)
        pend_idx, pend_off, pend = [], [0], bytearray()
        for i, rel in enumerate(rels):
            buf = pa.memory_map(safe_path(root, rel), "r").read_buffer()
            n = buf.size
            if n >= BATCH:
                if pend_idx:
                    yield make(pend_idx, pend_off, pa.py_buffer(bytes(pend)))
                    pend_idx, pend_off, pend = [], [0], bytearray()
                for start in range(0, n, BATCH):
                    take = min(BATCH, n - start)
                    offs = list(range(0, take, CHUNK)) + [take]
                    yield make([i] * (len(offs) - 1), offs, buf.slice(start, take))
                continue
            pend_idx.append(i)
            pend += memoryview(buf)
            pend_off.append(len(pend))
            if len(pend) >= BATCH:
                yield make(pend_idx, pend_off, pa.py_buffer(bytes(pend)))
                pend_idx, pend_off, pend = [], [0], bytearray()
        if pend_idx:
            yield make(pend_idx, pend_off, pa.py_buffer(bytes(pend)))

    class Server(fl.FlightServerBase):
        def do_get(self, context, ticket):
            rels = ticket.ticket.decode().split("\n")
            return fl.GeneratorStream(schema, batches(rels))

    server = Server("grpc://127.0.0.1:0")
    return server.port, server.shutdown


def main():
    kind, root = sys.argv[1], os.path.realpath(sys.argv[2])
    port, stop = (serve_grpc if kind == "grpc" else serve_flight)(root)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    print("LISTENING %d" % port, flush=True)

    def watch_stdin():
        sys.stdin.read()  # returns at EOF: the parent went away
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    stop()


if __name__ == "__main__":
    main()
