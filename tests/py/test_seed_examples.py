"""The seed document's examples run as written, with file:// URIs for s3:// (and file:///X
rebased under a test root). Those that need only get / get_range / get_many / get_object and
BytesView live here; checkpoint and dataset examples are in test_seed_later.py."""
import os
import pathlib

import numpy as np
import pytest

from seed_snippets import SNIPPETS, normalize, substitute

SEED = pathlib.Path(__file__).resolve().parents[3] / "shared" / "seeds" / \
    "000_1ff1c6f1c787a82e.txt"

# Files each example reads (relative to its own root) and their sizes.
FILES = {
    0: {"bucket/data.bin": 4_000_000},
    1: {"bucket/large.bin": 2 << 20, "path/data": 6000},
    2: {f"bucket/file{i}.bin": 64 for i in range(100)},
    7: {"bucket/data/file_0.bin": 4096},
    11: {"bucket/data": 4096},
    12: {"bucket/data": 4096},
    13: {"bucket/data": 4096},
    14: {"bucket/data": 4096},
    15: {"bucket/data.bin": 4_000_000},
    16: {"bucket/data.bin": 4_000_000},
    17: {"bucket/tensor.bin": 4096},
    18: {"bucket/data.bin": 4_000_000},
    19: {"bucket/data.bin": 4_000_000},
    20: {"bucket/1gb.bin": 4 << 20},
    21: {f"bucket/file{i}.bin": 64 for i in range(1000)},
    22: {"bucket/file": 4096},
    23: {"bucket/file": 4096},
    24: {"bucket/file": 4096},
    28: {f"bucket/obj{i}.bin": 256 for i in range(10)},
    29: {"bucket/obj.bin": 4096},
    30: {"bucket/obj.bin": 4096},
    31: {"bucket/huge.bin": 3 << 20},
}
NOW = sorted(FILES) + [3]
LATER = [4, 5, 6, 8, 9, 10, 25, 26, 27]


class Example:
    def __init__(self, n, root, files):
        self.n = n
        self.root = root
        self.files = files  # rel -> bytes

    def uri(self, rel):
        return "file://" + os.path.join(self.root, rel)


@pytest.fixture
def example(request, s3, data):
    n = request.param
    root = data.path(f"seed/{n:02d}")
    files = {}
    for rel, size in FILES.get(n, {}).items():
        p = os.path.join(root, rel)
        if not os.path.exists(p):
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(os.urandom(size))
        with open(p, "rb") as f:
            files[rel] = f.read()
    return Example(n, root, files)


def _namespace(s3, ex, processed):
    def process(x):
        processed.append(x)

    ns = {"s3dlio": s3, "np": np, "process": process}
    if ex.n == 7:
        ns["index"] = 0
    if ex.n == 16:
        ns["view"] = s3.get(ex.uri("bucket/data.bin"))
    if ex.n == 28:
        ns["uris"] = [ex.uri(f"bucket/obj{i}.bin") for i in range(10)]
    if ex.n == 29:
        ns["uri"] = ex.uri("bucket/obj.bin")
    if ex.n == 30:
        ns["view"] = s3.get(ex.uri("bucket/obj.bin"))
    return ns


def _f32(b):
    return np.frombuffer(b, dtype=np.float32)


def _check(ex, ns, processed):
    """What each example must have produced (beyond running)."""
    f = ex.files
    n = ex.n
    if n == 0:
        assert ns["data_bytes"] == f["bucket/data.bin"]
        assert np.array_equal(ns["arr"], _f32(f["bucket/data.bin"]), equal_nan=True)
        assert ns["arr"].ctypes.data == np.frombuffer(ns["mv"], np.uint8).ctypes.data
    elif n == 1:
        assert bytes(ns["view"]) == f["path/data"][5000:]
        assert ns["arr"].tobytes() == f["bucket/large.bin"][1000:1000 + (1 << 20)]
    elif n == 2:
        assert [u for u, _ in ns["results"]] == ns["uris"]
        assert len(processed) == 100
        for i, a in enumerate(processed):
            assert a.tobytes() == f[f"bucket/file{i}.bin"]
    elif n == 7:
        assert ns["arr"].tobytes() == f["bucket/data/file_0.bin"]
    elif n == 11:
        assert ns["arr"].tobytes() == f["bucket/data"]
    elif n == 12:
        assert ns["data"] == f["bucket/data"] and type(ns["data"]) is bytes
    elif n == 13:
        assert ns["size"] == 4096
    elif n == 14:
        assert ns["data"] == f["bucket/data"] and type(ns["data"]) is bytes
    elif n == 15:
        assert ns["arr"].shape == (1000, 1000)
        assert ns["arr"].tobytes() == f["bucket/data.bin"]
    elif n == 16:
        assert ns["arr"].flags.writeable
        assert ns["arr"].tobytes() == f["bucket/data.bin"]
    elif n == 17:
        assert ns["tensor"].numel() == 1024
    elif n == 20:
        assert ns["arr"].tobytes() == f["bucket/1gb.bin"]
        assert len(ns["data"]) == 4 << 20
    elif n == 21:
        assert len(processed) == 1000
        assert processed[999].tobytes() == f["bucket/file999.bin"]
    elif n in (22, 23):
        assert ns["arr"].tobytes() == f["bucket/file"]
    elif n == 24:
        assert ns["data"] == f["bucket/file"]
    elif n == 28:
        assert [bytes(v) for _, v in ns["results"]] == \
            [f[f"bucket/obj{i}.bin"] for i in range(10)]
    elif n == 29:
        assert ns["arr"].tobytes() == f["bucket/obj.bin"]
    elif n == 30:
        assert ns["data"] == f["bucket/obj.bin"]
    elif n == 31:
        assert bytes(ns["view"]) == f["bucket/huge.bin"][1000000:1000000 + (1 << 20)]


@pytest.mark.parametrize("example", sorted(FILES), indirect=True,
                         ids=[f"example{n:02d}" for n in sorted(FILES)])
def test_seed_example_runs_as_written(s3, example, capsys):
    code = SNIPPETS[example.n]
    if "import torch" in code:
        pytest.importorskip("torch")
    if "import tensorflow" in code:
        pytest.importorskip("tensorflow")
    if "import jax" in code:
        pytest.importorskip("jax")
    processed = []
    ns = _namespace(s3, example, processed)
    exec(compile(substitute(code, example.root), f"<seed example {example.n}>", "exec"), ns)
    _check(example, ns, processed)


def test_seed_example03_get_object_is_s3_only(s3):
    """get_object(bucket, key) reads s3://bucket/key; the test server serves file:// only, so
    the example fails with an error that names that URI (not a crash, not a hang)."""
    code = SNIPPETS[3]
    ns = {"s3dlio": s3, "np": np}
    with pytest.raises((s3.Error, PermissionError, ValueError)) as ei:
        exec(compile(code, "<seed example 3>", "exec"), ns)
    assert "s3://my-bucket/path/to/file" in str(ei.value)
    assert not isinstance(ei.value, ConnectionError)


def test_every_seed_example_is_accounted_for():
    assert sorted(NOW + LATER) == sorted(SNIPPETS)


@pytest.mark.skipif(not SEED.exists(), reason=f"{SEED} not present")
def test_snippets_match_the_seed_document():
    import re

    text = SEED.read_text()
    blocks = [normalize(b) for b in re.findall(r"```python\n(.*?)```", text, re.S)]
    assert blocks == [normalize(SNIPPETS[i]) for i in range(len(SNIPPETS))]
