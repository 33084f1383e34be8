"""Checks a `pip install`ed s3dlio: the extension, the shipped s3dliod, and the embedded
default server, from outside the source tree."""
import os
import sys
import tempfile

import s3dlio

pkg = os.path.dirname(s3dlio.__file__)
assert "site-packages" in pkg, f"s3dlio imported from {pkg}, not the installed package"
daemon = os.path.join(pkg, "bin", "s3dliod")
assert os.access(daemon, os.X_OK), f"{daemon} is missing from the wheel"
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "x.bin")
    data = os.urandom(100_000)
    with open(path, "wb") as f:
        f.write(data)
    view = s3dlio.get("file://" + path)
    assert view.to_bytes() == data
    assert bytes(s3dlio.get_range("file://" + path, 10, 5)) == data[10:15]
    # the original's API is in the wheel too: its module name, checkpoints, zstd
    import s3dlio._pymod as core
    assert core is s3dlio and s3dlio.PyCheckpointStore is s3dlio.CheckpointStore
    store = s3dlio.PyCheckpointStore("file://" + d + "/ckpt", compression_level=3)
    store.save(1, 0, "torch", data, None)
    assert store.load_latest() == data
    assert [i.step for i in store.list_checkpoints()] == [1]
print(f"pip check: s3dlio installed at {pkg} works with its embedded s3dliod")
sys.exit(0)
