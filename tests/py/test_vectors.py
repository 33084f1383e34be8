"""The wire test vectors (schema/vectors/frames.vec) from the Python side: Python's msgpack
agrees with every vector's fields, and the real server answers the vectors' own bytes: the
HELLO vector gets WELCOME, every hostile vector gets ERROR(0, PROTOCOL) or a close."""
import os

import msgpack
import pytest

import s3dtest
from s3dtest import WireConn

VEC = os.path.join(os.path.dirname(__file__), "..", "..", "schema", "vectors", "frames.vec")

# positional field names after [type, id], as in wire.h
FIELDS = {
    1: ["version", "token", "agent"], 2: ["uri", "offset", "length"], 3: ["uri"],
    4: ["uri", "flags"], 5: ["uri", "size"], 6: ["uri"], 7: [], 8: ["uri"], 9: ["uri"],
    10: ["uri"],
    16: ["version", "max_frame", "max_in_flight", "agent"],
    17: ["size", "object_size", "mtime", "etag"], 18: ["uri", "size", "mtime", "is_prefix"],
    19: ["code", "message", "retry_ms"], 32: ["offset"], 33: ["size", "crc32c"],
}


def load_vectors():
    vecs, cur = [], None
    with open(VEC, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                cur = {"name": line[1:-1]}
                vecs.append(cur)
            else:
                k, v = line.split("=", 1)
                cur[k] = v
    return vecs


VECTORS = load_vectors()
FRAMES = [v for v in VECTORS if "expect" not in v]
HOSTILE = [v for v in VECTORS if "expect" in v and v["expect"] != "NEED_MORE"]


def test_vector_file_has_frames_and_hostile_inputs():
    assert len(FRAMES) >= 15
    assert len(HOSTILE) >= 10


@pytest.mark.parametrize("vec", FRAMES, ids=[v["name"] for v in FRAMES])
def test_python_msgpack_reads_vector_fields(vec):
    raw = bytes.fromhex(vec["hex"])
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    header = next(unpacker)
    assert header[0] == int(vec["type"])
    assert header[1] == int(vec["id"])
    for name, value in zip(FIELDS[header[0]], header[2:]):
        if name not in vec:
            assert value is None, f"{name} absent in the vector but {value!r} on the wire"
        elif isinstance(value, bool):
            assert int(value) == int(vec[name])
        elif isinstance(value, int):
            assert value == int(vec[name]), name
        else:
            assert value == vec[name], name
    if header[0] == 32:  # DATA: the bin marker follows, announcing payload_len
        rest = raw[unpacker.tell():]
        width = {0xc4: 1, 0xc5: 2, 0xc6: 4}[rest[0]]
        assert int.from_bytes(rest[1:1 + width], "big") == int(vec["payload_len"])


def test_server_answers_hello_vector(server):
    hello = next(v for v in FRAMES if v["name"] == "hello")
    with WireConn(server.address("tcp")) as c:
        c.send_raw(bytes.fromhex(hello["hex"]))
        welcome = c.frame()
    assert welcome[0] == 16 and welcome[2] == 1, welcome


@pytest.mark.parametrize("vec", HOSTILE, ids=[v["name"] for v in HOSTILE])
def test_server_refuses_hostile_vector(server, data, vec):
    hello = next(v for v in FRAMES if v["name"] == "hello")
    with WireConn(server.address("unix")) as c:
        c.send_raw(bytes.fromhex(hello["hex"]) + bytes.fromhex(vec["hex"]))
        assert c.frame()[0] == 16
        err = c.expect_error_or_close()
    if err is not None:
        assert err[2] == 9, f"{vec['name']}: want PROTOCOL, got {err}"
    # and the server goes on serving others
    rel = data.size_rel(4096)
    with WireConn(server.address("tcp")) as c2:
        c2.hello()
        reply = c2.get(data.uri(rel))
    assert reply.ok and reply.data == data.files[rel]
