"""BytesView: read-only buffer protocol, memoryview(), to_bytes(), len, bytes(), repr, ==,
zero-copy numpy views, and memory that outlives the BytesView object."""
import gc

import numpy as np
import pytest

from s3dtest import buffer_info


@pytest.fixture
def view_and_bytes(s3, data):
    rel = data.size_rel(65537)
    return s3.get(data.uri(rel)), data.bytes(rel)


def test_memoryview_method_is_read_only(view_and_bytes):
    view, want = view_and_bytes
    mv = view.memoryview()
    assert isinstance(mv, memoryview)
    assert mv.readonly
    with pytest.raises(TypeError):
        mv[0] = 1
    with pytest.raises(TypeError):
        mv[0:2] = b"ab"
    assert bytes(mv) == want


def test_buffer_protocol_is_read_only(view_and_bytes):
    view, want = view_and_bytes
    mv = memoryview(view)
    assert mv.readonly
    with pytest.raises(TypeError):
        mv[10] = 0
    with pytest.raises(BufferError):
        buffer_info(view, flags=1)  # PyBUF_WRITABLE
    assert bytes(mv) == want


def test_memoryview_shape(view_and_bytes):
    view, want = view_and_bytes
    for mv in (view.memoryview(), memoryview(view)):
        assert mv.format == "B"
        assert mv.itemsize == 1
        assert mv.ndim == 1
        assert mv.nbytes == len(want)
        assert mv.contiguous and mv.c_contiguous


def test_len_bytes_to_bytes(view_and_bytes):
    view, want = view_and_bytes
    assert len(view) == len(want)
    b1 = bytes(view)
    b2 = view.to_bytes()
    assert type(b1) is bytes and type(b2) is bytes
    assert b1 == want and b2 == want


def test_to_bytes_is_a_copy(view_and_bytes):
    view, _ = view_and_bytes
    b = view.to_bytes()
    assert buffer_info(b)[0] != buffer_info(view)[0]


def test_repr(view_and_bytes):
    view, want = view_and_bytes
    assert repr(view) == f"<BytesView len={len(want)}>"


def test_equality(s3, data, view_and_bytes):
    view, want = view_and_bytes
    assert view == want
    assert view == bytearray(want)
    assert view == memoryview(want)
    assert view == np.frombuffer(want, dtype=np.uint8).data  # a memoryview from numpy
    other = s3.get(data.uri(data.size_rel(65537)))
    assert view == other
    changed = bytearray(want)
    changed[-1] ^= 0xFF
    assert not (view == bytes(changed))
    assert view != bytes(changed)
    assert view != want[:-1]
    assert view != s3.get(data.uri(data.size_rel(4096)))
    # comparing with a non-buffer is simply unequal, not an error
    assert not (view == 5)
    assert view != "a string"
    assert view != None  # noqa: E711


def test_address_is_stable_and_shared(view_and_bytes):
    view, _ = view_and_bytes
    a_view = buffer_info(view)[0]
    mv1 = view.memoryview()
    mv2 = view.memoryview()
    assert a_view != 0
    assert buffer_info(mv1)[0] == a_view
    assert buffer_info(mv2)[0] == a_view
    assert buffer_info(memoryview(view))[0] == a_view


def test_buffer_is_aligned(s3, data):
    for size in (1, 4095, 65537, 1 << 20):
        view = s3.get(data.uri(data.size_rel(size)))
        assert buffer_info(view)[0] % 16 == 0, f"object of {size} bytes at a misaligned address"


def test_numpy_frombuffer_memoryview_shares_memory(view_and_bytes):
    view, want = view_and_bytes
    mv = view.memoryview()
    arr = np.frombuffer(mv, dtype=np.uint8)
    assert arr.ctypes.data == buffer_info(mv)[0]
    assert not arr.flags.writeable
    assert not arr.flags.owndata
    with pytest.raises(ValueError):
        arr[0] = 1
    assert arr.tobytes() == want


def test_numpy_frombuffer_view_shares_memory(view_and_bytes):
    view, want = view_and_bytes
    a1 = np.frombuffer(view, dtype=np.uint8)
    a2 = np.frombuffer(view.memoryview(), dtype=np.uint8)
    assert a1.ctypes.data == buffer_info(view)[0]
    assert np.shares_memory(a1, a2)
    assert not a1.flags.writeable
    assert a1.tobytes() == want


def test_numpy_float32_view(s3, data):
    rel = data.size_rel(1 << 20)
    view = s3.get(data.uri(rel))
    arr = np.frombuffer(view.memoryview(), dtype=np.float32)
    assert arr.size == (1 << 20) // 4
    assert arr.ctypes.data == buffer_info(view)[0]
    assert np.array_equal(arr, np.frombuffer(data.bytes(rel), dtype=np.float32), equal_nan=True)
    copy = np.array(arr)
    assert copy.flags.writeable and not np.shares_memory(copy, arr)


def test_array_outlives_view(s3, data):
    rel = data.size_rel((9 << 20) + 3)
    want = data.bytes(rel)
    view = s3.get(data.uri(rel))
    arr = np.frombuffer(view.memoryview(), dtype=np.uint8)
    addr = arr.ctypes.data
    del view
    gc.collect()
    # churn the allocator so freed memory would be reused and scribbled on
    churn = [s3.get(data.uri(rel)) for _ in range(3)]
    junk = [bytearray(b"\xee" * (1 << 20)) for _ in range(16)]
    assert arr.ctypes.data == addr
    assert arr.tobytes() == want
    del churn, junk


def test_memoryview_outlives_view(s3, data):
    rel = data.size_rel(1 << 20)
    want = data.bytes(rel)
    view = s3.get(data.uri(rel))
    mv = view.memoryview()
    mv2 = memoryview(view)[100:200]
    del view
    gc.collect()
    junk = [bytearray(b"\xdd" * (1 << 20)) for _ in range(8)]
    assert bytes(mv) == want
    assert bytes(mv2) == want[100:200]
    mv.release()
    assert bytes(mv2) == want[100:200]
    del junk


def test_array_from_view_directly_outlives_view(s3, data):
    rel = data.size_rel(65537)
    want = data.bytes(rel)
    view = s3.get(data.uri(rel))
    arr = np.frombuffer(view, dtype=np.uint8)[10:]
    del view
    gc.collect()
    assert arr.tobytes() == want[10:]


def test_many_views_released_in_any_order(s3, data):
    rels = [data.size_rel(s) for s in (1, 4095, 65537, 1 << 20)]
    views = [s3.get(data.uri(r)) for r in rels]
    mvs = [v.memoryview() for v in views]
    arrs = [np.frombuffer(v, dtype=np.uint8) for v in views]
    del views
    gc.collect()
    for r, mv, arr in zip(rels, mvs, arrs):
        assert bytes(mv) == data.bytes(r)
        del mv
        gc.collect()
        assert arr.tobytes() == data.bytes(r)


def test_empty_view(s3, data):
    view = s3.get(data.uri(data.size_rel(0)))
    assert len(view) == 0
    assert bytes(view) == b""
    assert view.to_bytes() == b""
    assert repr(view) == "<BytesView len=0>"
    assert view == b""
    mv = view.memoryview()
    assert mv.nbytes == 0 and mv.readonly
    assert np.frombuffer(mv, dtype=np.uint8).size == 0


def test_bytesview_cannot_be_constructed_or_resized(s3, data):
    view = s3.get(data.uri(data.size_rel(4096)))
    cls = type(view)
    with pytest.raises(TypeError):
        cls()
    with pytest.raises((TypeError, AttributeError)):
        view.extend(b"x")


def test_bytesview_usable_by_buffer_consumers(s3, data):
    import hashlib
    import zlib

    rel = data.size_rel(65537)
    view = s3.get(data.uri(rel))
    assert hashlib.sha256(view).digest() == hashlib.sha256(data.bytes(rel)).digest()
    assert zlib.crc32(view) == zlib.crc32(data.bytes(rel))
    assert bytearray(view) == data.bytes(rel)
    assert view.memoryview()[5] == data.bytes(rel)[5]
