"""GET paths of the s3dlio API against the real s3dliod: get, get_range, get_many, get_object,
get_into; byte-exact against the files on disk, over TCP and over the unix socket."""
import random

import numpy as np
import pytest

from conftest import N_SMALL, SIZES


# ---- get ----
@pytest.mark.parametrize("size", SIZES)
def test_get_whole_object_byte_exact(transport, data, size):
    rel = data.size_rel(size)
    view = transport.get(data.uri(rel))
    assert len(view) == size
    assert bytes(view) == data.bytes(rel)


def test_get_returns_bytesview(s3, data):
    view = s3.get(data.uri(data.size_rel(4096)))
    assert type(view).__name__ == "BytesView"
    assert not isinstance(view, (bytes, bytearray))


def test_get_same_object_twice_gives_independent_views(s3, data):
    rel = data.size_rel(65537)
    a = s3.get(data.uri(rel))
    b = s3.get(data.uri(rel))
    assert a is not b
    assert bytes(a) == bytes(b) == data.bytes(rel)
    del a
    assert bytes(b) == data.bytes(rel)


# ---- get_range ----
RANGES = [(0, 1), (0, 4096), (1, 4094), (4095, 1), (100, 0), (65536, 1), (12345, 500000)]


@pytest.mark.parametrize("offset,length", RANGES)
def test_get_range_offset_length(transport, data, offset, length):
    rel = data.size_rel(1 << 20)
    view = transport.get_range(data.uri(rel), offset, length)
    assert bytes(view) == data.bytes(rel)[offset:offset + length]
    assert len(view) == length


@pytest.mark.parametrize("offset", [0, 1, 4000, (9 << 20)])
def test_get_range_length_none_reads_to_end(transport, data, offset):
    rel = data.size_rel((9 << 20) + 3)
    view = transport.get_range(data.uri(rel), offset, None)
    assert bytes(view) == data.bytes(rel)[offset:]


def test_get_range_length_defaults_to_end(s3, data):
    rel = data.size_rel(4095)
    assert bytes(s3.get_range(data.uri(rel), 10)) == data.bytes(rel)[10:]


def test_get_range_keyword_arguments(s3, data):
    rel = data.size_rel(65537)
    view = s3.get_range(data.uri(rel), offset=1000, length=2000)
    assert bytes(view) == data.bytes(rel)[1000:3000]


@pytest.mark.parametrize("size", [1, 4096, 65537])
def test_get_range_offset_at_end_is_empty(s3, data, size):
    rel = data.size_rel(size)
    assert len(s3.get_range(data.uri(rel), size, None)) == 0
    assert bytes(s3.get_range(data.uri(rel), size, 10)) == b""


def test_get_range_on_empty_object(s3, data):
    rel = data.size_rel(0)
    assert bytes(s3.get_range(data.uri(rel), 0, None)) == b""
    with pytest.raises(ValueError) as ei:
        s3.get_range(data.uri(rel), 1, None)
    assert data.uri(rel) in str(ei.value)


@pytest.mark.parametrize("delta", [1, 2, 1 << 20, 1 << 40])
def test_get_range_offset_past_end_raises_value_error(s3, data, delta):
    rel = data.size_rel(4096)
    uri = data.uri(rel)
    with pytest.raises(ValueError) as ei:
        s3.get_range(uri, 4096 + delta, None)
    assert uri in str(ei.value)
    with pytest.raises(ValueError):
        s3.get_range(uri, 4096 + delta, 1)
    # the connection is still good
    assert bytes(s3.get(uri)) == data.bytes(rel)


@pytest.mark.parametrize("offset,length", [(4000, 1000), (0, 1 << 40), (4095, 2)])
def test_get_range_length_past_end_is_clipped(s3, data, offset, length):
    """PROTOCOL.md: a length past the end is clipped (as HTTP/S3 ranges are)."""
    rel = data.size_rel(4096)
    view = s3.get_range(data.uri(rel), offset, length)
    assert bytes(view) == data.bytes(rel)[offset:]


@pytest.mark.parametrize("offset,length", [(-1, None), (0, -1), (-5, 10)])
def test_get_range_negative_arguments_rejected(s3, data, offset, length):
    with pytest.raises((ValueError, OverflowError)):
        s3.get_range(data.uri(data.size_rel(4096)), offset, length)


# ---- get_many ----
def _small_uris(data, idx):
    return [data.uri(data.small_rel(i)) for i in idx]


@pytest.mark.parametrize("max_in_flight", [1, 64])
def test_get_many_500_small_objects_in_input_order(transport, data, max_in_flight):
    idx = list(range(N_SMALL))
    random.Random(max_in_flight).shuffle(idx)
    uris = _small_uris(data, idx)
    results = transport.get_many(uris, max_in_flight=max_in_flight)
    assert isinstance(results, list)
    assert len(results) == len(uris)
    for (u, view), want_uri, i in zip(results, uris, idx):
        assert u == want_uri
        assert bytes(view) == data.bytes(data.small_rel(i)), u


def test_get_many_default_max_in_flight(s3, data):
    uris = _small_uris(data, range(50))
    results = s3.get_many(uris)
    assert [u for u, _ in results] == uris
    assert all(bytes(v) == data.bytes(data.small_rel(i)) for i, (_, v) in enumerate(results))


def test_get_many_duplicates(s3, data):
    rels = [data.size_rel(4096), data.size_rel(1), data.size_rel(4096), data.size_rel(0),
            data.size_rel(4096), data.size_rel(1 << 20), data.size_rel(1)]
    uris = [data.uri(r) for r in rels]
    results = s3.get_many(uris, max_in_flight=8)
    assert [u for u, _ in results] == uris
    for (u, v), r in zip(results, rels):
        assert bytes(v) == data.bytes(r)
    # duplicates are distinct results (each a full object)
    assert len(results[0][1]) == len(results[2][1]) == 4096


def test_get_many_mixed_sizes_including_large(transport, data):
    rels = [data.size_rel(s) for s in SIZES] * 2
    results = transport.get_many([data.uri(r) for r in rels], max_in_flight=4)
    for (u, v), r in zip(results, rels):
        assert u == data.uri(r)
        assert bytes(v) == data.bytes(r)


def test_get_many_empty_list(s3):
    assert s3.get_many([], max_in_flight=4) == []


@pytest.mark.parametrize("position", [0, 17, 499])
def test_get_many_one_missing_raises_file_not_found_naming_it(s3, data, position):
    uris = _small_uris(data, range(N_SMALL))
    missing = data.uri(f"small/missing_{position}.bin")
    uris[position] = missing
    with pytest.raises(FileNotFoundError) as ei:
        s3.get_many(uris, max_in_flight=32)
    assert missing in str(ei.value)
    # the pool is healthy afterwards
    ok = s3.get_many(uris[:5] if position >= 5 else uris[6:11], max_in_flight=4)
    assert len(ok) == 5


def test_get_many_first_failure_in_input_order_is_reported(s3, data):
    m1 = data.uri("small/missing_first.bin")
    m2 = data.uri("small/missing_second.bin")
    uris = _small_uris(data, range(100))
    uris[10] = m1
    uris[90] = m2
    with pytest.raises(FileNotFoundError) as ei:
        s3.get_many(uris, max_in_flight=64)
    assert m1 in str(ei.value)


@pytest.mark.parametrize("bad", [0, -1])
def test_get_many_bad_max_in_flight(s3, data, bad):
    with pytest.raises((ValueError, OverflowError)):
        s3.get_many(_small_uris(data, range(3)), max_in_flight=bad)


def test_get_many_rejects_non_string_items(s3, data):
    with pytest.raises(TypeError):
        s3.get_many([data.uri(data.small_rel(0)), 42], max_in_flight=2)


def test_get_many_accepts_any_iterable_of_uris(s3, data):
    uris = _small_uris(data, range(5))
    results = s3.get_many(tuple(uris), max_in_flight=2)
    assert [u for u, _ in results] == uris


# ---- get_object ----
def test_get_object_means_s3_uri(s3):
    """get_object(bucket, key) is get("s3://bucket/key"). The test server serves only
    file:// (s3 comes later), so the call must fail with a clear error naming that URI."""
    with pytest.raises((s3.Error, PermissionError, ValueError)) as ei:
        s3.get_object("my-bucket", "path/to/file")
    assert "s3://my-bucket/path/to/file" in str(ei.value)
    assert not isinstance(ei.value, ConnectionError)


def test_get_object_argument_types(s3):
    with pytest.raises(TypeError):
        s3.get_object("bucket")
    with pytest.raises(TypeError):
        s3.get_object(1, 2)


# ---- get_into ----
@pytest.mark.parametrize("size", SIZES)
def test_get_into_bytearray(transport, data, size):
    rel = data.size_rel(size)
    buf = bytearray(size)
    n = transport.get_into(data.uri(rel), buf)
    assert n == size
    assert bytes(buf) == data.bytes(rel)


def test_get_into_larger_buffer_leaves_rest_untouched(s3, data):
    rel = data.size_rel(4095)
    buf = bytearray(b"\xaa" * 10000)
    n = s3.get_into(data.uri(rel), buf)
    assert n == 4095
    assert bytes(buf[:4095]) == data.bytes(rel)
    assert bytes(buf[4095:]) == b"\xaa" * (10000 - 4095)


def test_get_into_numpy_uint8(s3, data):
    rel = data.size_rel(1 << 20)
    arr = np.zeros(1 << 20, dtype=np.uint8)
    assert s3.get_into(data.uri(rel), arr) == 1 << 20
    assert arr.tobytes() == data.bytes(rel)


def test_get_into_numpy_float32_2d(s3, data):
    rel = data.size_rel(1 << 20)
    arr = np.zeros((256, 1024), dtype=np.float32)  # exactly 1 MiB
    assert s3.get_into(data.uri(rel), arr) == 1 << 20
    assert arr.tobytes() == data.bytes(rel)


def test_get_into_memoryview_slice(s3, data):
    rel = data.size_rel(65537)
    backing = bytearray(b"\x55" * (65537 + 300))
    mv = memoryview(backing)[100:100 + 65537]
    assert s3.get_into(data.uri(rel), mv) == 65537
    assert bytes(backing[100:100 + 65537]) == data.bytes(rel)
    assert bytes(backing[:100]) == b"\x55" * 100
    assert bytes(backing[100 + 65537:]) == b"\x55" * 200


def test_get_into_numpy_slice_view(s3, data):
    rel = data.size_rel(4096)
    big = np.full(3 * 4096, 7, dtype=np.uint8)
    assert s3.get_into(data.uri(rel), big[4096:8192]) == 4096
    assert big[4096:8192].tobytes() == data.bytes(rel)
    assert (big[:4096] == 7).all() and (big[8192:] == 7).all()


@pytest.mark.parametrize("offset,length", [(0, 10), (10, 100), (65536, 1), (1000, None),
                                           (65537, 0), (65537, None)])
def test_get_into_range(s3, data, offset, length):
    rel = data.size_rel(65537)
    want = data.bytes(rel)[offset:] if length is None else data.bytes(rel)[offset:offset + length]
    buf = bytearray(70000)
    n = s3.get_into(data.uri(rel), buf, offset=offset, length=length)
    assert n == len(want)
    assert bytes(buf[:n]) == want


def test_get_into_range_offset_past_end(s3, data):
    uri = data.uri(data.size_rel(4096))
    with pytest.raises(ValueError) as ei:
        s3.get_into(uri, bytearray(10), offset=5000)
    assert uri in str(ei.value)


@pytest.mark.parametrize("short", [1, 4095])
def test_get_into_buffer_too_small_raises_value_error(s3, data, short):
    rel = data.size_rel(4096)
    uri = data.uri(rel)
    with pytest.raises(ValueError) as ei:
        s3.get_into(uri, bytearray(4096 - short))
    assert uri in str(ei.value)
    # and for a range that does not fit
    with pytest.raises(ValueError):
        s3.get_into(uri, bytearray(10), offset=0, length=11)
    # the connection stays usable (the server's bytes for that request were discarded)
    buf = bytearray(4096)
    assert s3.get_into(uri, buf) == 4096 and bytes(buf) == data.bytes(rel)


def test_get_into_too_small_for_large_object_keeps_pool_usable(s3, data):
    rel = data.size_rel((9 << 20) + 3)
    with pytest.raises(ValueError):
        s3.get_into(data.uri(rel), bytearray(1 << 20))
    for _ in range(3):
        assert bytes(s3.get(data.uri(rel))) == data.bytes(rel)


@pytest.mark.parametrize("make", [lambda n: bytes(n),
                                  lambda n: memoryview(bytearray(n)).toreadonly(),
                                  lambda n: np.frombuffer(bytes(n), dtype=np.uint8)],
                         ids=["bytes", "readonly-memoryview", "readonly-numpy"])
def test_get_into_read_only_buffer_rejected(s3, data, make):
    with pytest.raises((TypeError, ValueError, BufferError)):
        s3.get_into(data.uri(data.size_rel(4096)), make(4096))


def test_get_into_bytesview_is_read_only(s3, data):
    view = s3.get(data.uri(data.size_rel(4096)))
    before = bytes(view)
    with pytest.raises((TypeError, ValueError, BufferError)):
        s3.get_into(data.uri(data.size_rel(4096)), view)
    assert bytes(view) == before


def test_get_into_non_contiguous_buffer_rejected(s3, data):
    arr = np.zeros(8192, dtype=np.uint8)[::2]
    with pytest.raises((TypeError, ValueError, BufferError)):
        s3.get_into(data.uri(data.size_rel(4096)), arr)


def test_get_into_non_buffer_rejected(s3, data):
    with pytest.raises(TypeError):
        s3.get_into(data.uri(data.size_rel(1)), "not a buffer")


def test_get_into_missing_object_leaves_buffer_and_raises(s3, data):
    buf = bytearray(b"\x11" * 100)
    with pytest.raises(FileNotFoundError):
        s3.get_into(data.uri("sizes/nope.bin"), buf)
    assert bytes(buf) == b"\x11" * 100
