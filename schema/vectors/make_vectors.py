#!/usr/bin/python3
"""Writes frames.vec: wire test vectors made with Python's msgpack, an encoder independent of
the C codec. The C tests (tests/unit/test_wire.c) and the Python tests read the same file.

Each section is `[name]`, then `key=value` lines: the frame's fields (names as in
struct wire_frame), `hex=` the exact bytes, or for hostile inputs `expect=` the decoder's
result (NEED_MORE, MALFORMED, TOO_BIG) instead of fields."""
import msgpack
import os

T = dict(HELLO=1, GET=2, STAT=3, LIST=4, PUT=5, DELETE=6, CANCEL=7, PREFETCH=8, MKDIR=9,
         RMDIR=10, WELCOME=16, HEADER=17, ENTRY=18, ERROR=19, DATA=32, END=33)

# (name, fields in wire order after [type, id], field names for the .vec file)
FRAMES = [
    ("hello", T["HELLO"], 0, [1, None, "libs3dlio/0.1.0"], ["version", "token", "agent"]),
    ("hello_token", T["HELLO"], 0, [1, "s3cr3t", "py"], ["version", "token", "agent"]),
    ("get_whole", T["GET"], 1, ["file:///data/x.bin", 0, None], ["uri", "offset", "length"]),
    ("get_range", T["GET"], 7, ["file:///data/x.bin", 100, 4096], ["uri", "offset", "length"]),
    ("get_big_id", T["GET"], 2**40 + 5, ["s3://bucket/key with space", 2**33, 65536],
     ["uri", "offset", "length"]),
    ("stat", T["STAT"], 3, ["file:///data/dir/a"], ["uri"]),
    ("stat_utf8", T["STAT"], 3, ["file:///data/données/\u00e9\U0001f600.bin"], ["uri"]),
    ("list_recursive", T["LIST"], 4, ["file:///data/" + "d" * 40 + "/", 1], ["uri", "flags"]),
    ("put", T["PUT"], 5, ["file:///data/out.bin", 20 * 2**20], ["uri", "size"]),
    ("delete", T["DELETE"], 6, ["file:///data/out.bin"], ["uri"]),
    ("cancel", T["CANCEL"], 9, [], []),
    ("prefetch", T["PREFETCH"], 10, ["s3://bucket/train/shard-0001.tar"], ["uri"]),
    ("mkdir", T["MKDIR"], 11, ["file:///data/new/a/b/"], ["uri"]),
    ("mkdir_bucket", T["MKDIR"], 2**32 + 1, ["s3://new-bucket"], ["uri"]),
    ("rmdir", T["RMDIR"], 12, ["file:///data/new/a/b"], ["uri"]),
    ("rmdir_container", T["RMDIR"], 300, ["az://devstoreaccount1/old-container/"], ["uri"]),
    ("welcome", T["WELCOME"], 0, [1, 4 * 2**20, 256, "s3dliod/0.1.0"],
     ["version", "max_frame", "max_in_flight", "agent"]),
    ("header", T["HEADER"], 7, [4096, 1 << 20, 1764071624123456789, "5f3a-100000"],
     ["size", "object_size", "mtime", "etag"]),
    ("header_no_etag", T["HEADER"], 8, [0, 0, -5, None], ["size", "object_size", "mtime", "etag"]),
    ("entry", T["ENTRY"], 4, ["file:///data/sub/", 0, 0, True], ["uri", "size", "mtime", "is_prefix"]),
    ("error", T["ERROR"], 7, [1, "file:///data/missing: No such file or directory", 0],
     ["code", "message", "retry_ms"]),
    ("error_busy", T["ERROR"], 300, [4, "busy: 256 requests in flight", 5],
     ["code", "message", "retry_ms"]),
    ("end", T["END"], 7, [4096, 0xE3069283], ["size", "crc32c"]),
]


def hexs(b):
    return b.hex()


def main():
    out = []
    for name, typ, rid, vals, names in FRAMES:
        b = msgpack.packb([typ, rid] + vals, use_bin_type=True)
        out.append(f"[{name}]")
        out.append(f"type={typ}")
        out.append(f"id={rid}")
        for k, v in zip(names, vals):
            if v is None:
                continue  # absent: NULL string or WIRE_TO_END
            if isinstance(v, bool):
                v = int(v)
            out.append(f"{k}={v}")
        out.append(f"hex={hexs(b)}")
        out.append("")
    # DATA: header + bin marker; the payload follows and is not part of the header
    for name, rid, off, plen in [("data_small", 7, 0, 5), ("data_frame", 7, 4 * 2**20, 4 * 2**20),
                                 ("data_300", 9, 12, 300)]:
        hdr = msgpack.packb([T["DATA"], rid, off], use_bin_type=True)
        marker = msgpack.packb(b"\0" * plen, use_bin_type=True)[: -plen]
        out += [f"[{name}]", f"type={T['DATA']}", f"id={rid}", f"offset={off}",
                f"payload_len={plen}", f"hex={hexs(hdr + marker)}", ""]
    hostile = [
        ("empty", b"", "NEED_MORE"),
        ("partial_get", msgpack.packb([2, 1, "file:///x", 0, None])[:6], "NEED_MORE"),
        ("not_array", msgpack.packb({"type": 2}), "MALFORMED"),
        ("garbage", b"\xc1\xc1\xc1\xc1", "MALFORMED"),
        ("array32_huge", b"\xdd\xff\xff\xff\xff", "TOO_BIG"),
        ("unknown_type", msgpack.packb([99, 1, "x"]), "MALFORMED"),
        ("too_few_fields", msgpack.packb([2, 1, "file:///x"]), "MALFORMED"),
        ("uri_wrong_type", msgpack.packb([2, 1, 5, 0, None]), "MALFORMED"),
        ("negative_offset", msgpack.packb([2, 1, "file:///x", -1, None]), "MALFORMED"),
        ("uri_too_long", msgpack.packb([2, 1, "file:///" + "a" * 5000, 0, None]), "TOO_BIG"),
        ("str32_huge", b"\x95\x02\x01\xdb\xff\xff\xff\xf0", "TOO_BIG"),
        ("data_over_cap", msgpack.packb([32, 1, 0]) + b"\xc6\x10\x00\x00\x01", "TOO_BIG"),
        ("data_not_bin", msgpack.packb([32, 1, 0]) + b"\xa3abc", "MALFORMED"),
        ("empty_array", b"\x90", "MALFORMED"),
        ("one_element", b"\x91\x02", "MALFORMED"),
        ("uri_not_utf8", b"\x95\x02\x01\xa4\xff\xfe\xfd\xfc\x00\xc0", "MALFORMED"),
        ("uri_surrogate", b"\x95\x02\x01\xa3\xed\xa0\x80\x00\xc0", "MALFORMED"),
        ("nested_extra", msgpack.packb([3, 1, "file:///x", [1, 2]]), "MALFORMED"),
        ("mkdir_no_uri", msgpack.packb([9, 1]), "MALFORMED"),
        ("mkdir_uri_nil", msgpack.packb([9, 1, None]), "MALFORMED"),
        ("rmdir_uri_wrong_type", msgpack.packb([10, 1, 42]), "MALFORMED"),
        ("rmdir_uri_too_long", msgpack.packb([10, 1, "s3://b/" + "k" * 4100]), "TOO_BIG"),
        ("type_after_rmdir", msgpack.packb([11, 1, "file:///x"]), "MALFORMED"),
    ]
    for name, b, expect in hostile:
        out += [f"[hostile_{name}]", f"expect={expect}", f"hex={hexs(b)}", ""]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frames.vec")
    with open(path, "w") as f:
        f.write("# Generated by make_vectors.py (Python msgpack); do not edit by hand.\n")
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
