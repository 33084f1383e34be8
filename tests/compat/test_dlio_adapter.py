"""The original s3dlio's DLIO benchmark storage adapter, unchanged, on the package under test.

tests/compat/run copies this file into the work dir beside integrations/dlio/s3dlio_storage.py,
which it extracted from the original's sdist (0.9.90) and does not modify. The adapter imports
dlio_benchmark.*; the stand-in in dlio_standin/ provides those modules (see its __init__ for why
not the real package). Every entry point of the adapter is exercised, on file:// and on the S3
emulator the runner starts (bucket compat-dlio): create_node (mkdir), get_node / isfile (exists,
list), walk_node (list), put_data small (put_bytes) and >= 32 MiB (MultipartUploadWriter.from_uri),
get_data whole and ranged (get, get_range), delete_node (delete). The expected values are what the
original returns (tests/compat/run --original runs this same file against it).
"""
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import uuid

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ADAPTER = os.path.join(HERE, "integrations", "dlio", "s3dlio_storage.py")
sys.path.insert(0, os.path.join(HERE, "dlio_standin"))

from dlio_benchmark.common.enumerations import MetadataType  # noqa: E402
from dlio_benchmark.utils.utility import Profile  # noqa: E402

MIB = 1 << 20
BIG = 33 * MIB + 12345  # above the adapter's 32 MiB multipart threshold, not a part multiple


def _load_adapter():
    spec = importlib.util.spec_from_file_location("s3dlio_storage", ADAPTER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def adapter_mod():
    if not os.path.isfile(ADAPTER):
        pytest.fail(f"{ADAPTER} missing: run this file through tests/compat/run")
    return _load_adapter()


@pytest.fixture(params=["file", "s3"])
def storage(request, adapter_mod):
    """An S3dlioStorage on a fresh namespace: a temp dir, or a prefix in the emulator's bucket."""
    tmp = None
    if request.param == "file":
        tmp = tempfile.mkdtemp(prefix="compat-dlio-")
        namespace = f"file://{tmp}/ns"
        os.makedirs(f"{tmp}/ns")
    else:
        if not os.environ.get("COMPAT_S3_ENDPOINT"):
            pytest.fail("no S3 emulator: run this file through tests/compat/run")
        namespace = f"s3://compat-dlio/run-{uuid.uuid4().hex[:12]}"
    st = adapter_mod.S3dlioStorage(namespace)
    st.kind = request.param
    st.root_dir = f"{tmp}/ns" if tmp else None
    yield st
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def _payload(n, seed):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_uri_and_namespace(storage):
    assert storage.get_uri("train/a.npz") == storage.prefix.rstrip("/") + "/train/a.npz"
    assert storage.get_uri("s3://other/x") == "s3://other/x"  # full URIs pass through
    assert storage.create_namespace(exist_ok=True) is True
    assert Profile.calls.get("storage.S3dlioStorage.__init__", 0) >= 1  # log_init wrapped


def test_create_node(storage):
    assert storage.create_node("train/sub", exist_ok=True) is True
    assert storage.create_node("train/sub", exist_ok=True) is True  # again: still fine
    if storage.kind == "file":  # a real directory, parents included (mkdir -p)
        assert os.path.isdir(os.path.join(storage.root_dir, "train", "sub"))


def test_put_get_small(storage):
    data = _payload(100_000, 1)
    assert storage.put_data("train/img_0.bin", data) is None
    got = storage.get_data("train/img_0.bin")
    assert bytes(got) == data
    assert np.array_equal(np.frombuffer(memoryview(got), dtype=np.uint8),
                          np.frombuffer(data, dtype=np.uint8))
    part = storage.get_data("train/img_0.bin", offset=1000, length=2345)
    assert bytes(part) == data[1000:3345]
    empty = b""
    storage.put_data("train/empty.bin", empty)
    assert bytes(storage.get_data("train/empty.bin")) == empty


def test_put_bytesio(storage):
    # DLIO's generators hand over io.BytesIO objects (np.save into a buffer)
    arr = np.arange(1000, dtype=np.float32).reshape(10, 100)
    buf = io.BytesIO()
    np.save(buf, arr)
    storage.put_data("train/arr.npy", buf)
    back = np.load(io.BytesIO(bytes(storage.get_data("train/arr.npy"))))
    assert np.array_equal(back, arr)


def test_put_get_multipart(storage):
    data = _payload(BIG, 2)
    storage.put_data("ckpt/model.bin", data)  # >= 32 MiB: MultipartUploadWriter.from_uri
    got = storage.get_data("ckpt/model.bin")
    assert len(got) == BIG
    assert bytes(got) == data
    boundary = 32 * MIB  # a range across the adapter's part boundary, and the tail
    assert bytes(storage.get_data("ckpt/model.bin", offset=boundary - 100, length=300)) == \
        data[boundary - 100:boundary + 200]
    assert bytes(storage.get_data("ckpt/model.bin", offset=BIG - 10, length=10)) == data[-10:]


def test_get_node_isfile(storage):
    storage.put_data("train/a.bin", b"a" * 10)
    assert storage.get_node("train/a.bin") == MetadataType.FILE
    assert storage.isfile("train/a.bin") is True
    assert storage.get_node("train") == MetadataType.DIRECTORY
    assert storage.get_node("train/") == MetadataType.DIRECTORY
    assert storage.get_node("nothing-here") is None
    assert storage.isfile("train/missing.bin") is False
    assert storage.isfile("train") is False  # a directory is not a file
    # The namespace holds only the directory train/. list() gives objects only (as the
    # original's does), so the adapter finds no node there until an object sits at its top.
    assert storage.get_namespace() is None
    storage.put_data("top.bin", b"t")
    assert storage.get_namespace() == MetadataType.DIRECTORY


def test_walk_node(storage):
    names = [f"img_{i:03d}.bin" for i in range(7)]
    for i, n in enumerate(names):
        storage.put_data(f"walk/{n}", _payload(100 + i, i))
    storage.put_data("walk_extra/not_this.bin", b"x")  # a sibling whose name extends walk
    assert sorted(storage.walk_node("walk")) == names
    assert sorted(storage.walk_node("walk/")) == names
    assert storage.walk_node("no-such-dir") == []


def test_delete_node(storage):
    storage.put_data("train/gone.bin", b"bye")
    assert storage.isfile("train/gone.bin") is True
    assert storage.delete_node("train/gone.bin") is True
    assert storage.isfile("train/gone.bin") is False
    assert storage.get_node("train/gone.bin") is None
    with pytest.raises(Exception):
        storage.get_data("train/gone.bin")
    # deleting what is not there: the original answers True (no error) on file:// and S3
    assert storage.delete_node("train/gone.bin") is True
