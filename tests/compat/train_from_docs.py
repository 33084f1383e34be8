"""A small training script written only from the original s3dlio's documentation, run unchanged
on the package under test (tests/compat/run runs it on file:// and on the S3 emulator, and against
the original with --original).

    python train_from_docs.py BASE_URI      (file:///some/dir or s3://bucket/prefix/)

Every call cites the document it was taken from; "docs/..." paths are in the original's 0.9.1
source (github russfellows/s3dlio, tag of 0.9.1) and its 0.9.90 sdist, "help()" is the text the
original's own classes print for help(...). Nothing here looks at this project's docs or code.
Each step prints "STEP n name: ok" or "STEP n name: FAIL reason" (a step gets STEP_TIMEOUT
seconds); the exit status is 1 if any failed.
"""
import asyncio
import io
import os
import signal
import sys
import tempfile
import traceback

import numpy as np
import torch
from torch.utils.data import DataLoader

import s3dlio
# docs/api/python-api-v0.8.12-current.md, "PyTorch Integration": from s3dlio.torch import ...
from s3dlio.torch import S3IterableDataset

N_FILES = 12
SHAPE = (8, 16)
STEP_TIMEOUT = 30  # seconds; a hung step fails and the next one runs


def expected_arrays():
    return {f"sample_{i:03d}.npz": np.full(SHAPE, i, dtype=np.float32) for i in range(N_FILES)}


def sample_id(npz_bytes):
    with np.load(io.BytesIO(npz_bytes)) as npz:
        return int(npz["data"][0, 0])


class Steps:
    def __init__(self):
        self.results = []

    def run(self, name, fn):
        n = len(self.results) + 1

        def on_alarm(signum, frame):
            raise TimeoutError(f"no result within {STEP_TIMEOUT} s")
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(STEP_TIMEOUT)
        try:
            fn()
        except Exception as e:  # one step's failure must not hide the others
            signal.alarm(0)
            self.results.append(False)
            reason = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
            print(f"STEP {n} {name}: FAIL {reason}", flush=True)
            traceback.print_exc(file=sys.stderr)
            return
        signal.alarm(0)
        self.results.append(True)
        print(f"STEP {n} {name}: ok", flush=True)


def main():
    base = sys.argv[1].rstrip("/")
    data_uri = base + "/data/"
    ckpt_uri = base + "/ckpt/"
    files = expected_arrays()
    steps = Steps()

    def make_data():
        if base.startswith("file://"):
            # docs/api/python-api-v0.9.0.md, "Local File Testing": for local file generation
            # use Python directly: np.savez(f"/tmp/data/file_{i:03d}.npz", **data)
            root = base[len("file://"):] + "/data"
            os.makedirs(root, exist_ok=True)
            for name, arr in files.items():
                np.savez(os.path.join(root, name), data=arr)
            return
        # README.md (0.9.90 sdist), "Universal upload/download across all backends":
        #   s3dlio.upload(['/local/data.csv'], 's3://bucket/data/')
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for name, arr in files.items():
                np.savez(os.path.join(tmp, name), data=arr)
                paths.append(os.path.join(tmp, name))
            s3dlio.upload(paths, data_uri)

    def async_loader():
        # docs/api/python-api-v0.9.0.md, "Data Loading with Async": create_async_loader(uri=...,
        # opts={...}); "async for batch in loader: # batch is a list of bytes objects";
        # "Step 3: Test Data Loaders": assert isinstance(batch[0], bytes)
        async def load():
            seen = []
            loader = s3dlio.create_async_loader(uri=data_uri, opts={"batch_size": 4})
            async for batch in loader:
                assert isinstance(batch, list), f"batch is {type(batch).__name__}"
                assert isinstance(batch[0], bytes), f"item is {type(batch[0]).__name__}"
                seen += [sample_id(item) for item in batch]
            return seen
        seen = asyncio.run(load())
        assert sorted(seen) == list(range(N_FILES)), f"items seen: {sorted(seen)}"

    def torch_batches():
        # docs/api/python-api-v0.9.0.md, "PyTorch Integration": np.load(io.BytesIO(item_bytes)),
        # npz['data'], torch.from_numpy, torch.stack; options 'shuffle' and 'seed' ("Loader
        # Options": batch_size, prefetch, shuffle, seed)
        async def load():
            total, ids = 0, []
            loader = s3dlio.create_async_loader(
                uri=data_uri, opts={"batch_size": 4, "shuffle": True, "seed": 42})
            async for batch in loader:
                tensors = [torch.from_numpy(np.load(io.BytesIO(b))["data"]) for b in batch]
                stacked = torch.stack(tensors)
                assert stacked.shape[1:] == SHAPE
                total += stacked.shape[0]
                ids += [int(t[0, 0]) for t in tensors]
            return total, ids
        total, ids = asyncio.run(load())
        assert total == N_FILES, f"{total} samples"
        assert sorted(ids) == list(range(N_FILES)), f"ids {ids}"

    def iterable_dataset_bytes():
        # docs/NeedReview/DataLoader_README.md, section 6: S3IterableDataset.from_prefix(prefix,
        # return_type="bytes") yields bytes, "Use DataLoader(..., collate_fn=lambda b: b)";
        # docs/S3TORCHCONNECTOR_MIGRATION.md (0.9.90): DataLoader(dataset, batch_size=32,
        # num_workers=4) -- a drop-in for s3torchconnector: each object once per epoch
        ds = S3IterableDataset.from_prefix(data_uri, return_type="bytes")
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=lambda b: b)
        ids = [sample_id(bytes(item)) for batch in loader for item in batch]
        assert sorted(ids) == list(range(N_FILES)), f"ids over 2 workers: {sorted(ids)}"

    def iterable_dataset_tensor():
        # docs/NeedReview/DataLoader_README.md, section 6: return_type="tensor" (default) yields
        # torch.Tensor([L], dtype=uint8), "Works with default PyTorch collate"
        ds = S3IterableDataset.from_prefix(data_uri)
        loader = DataLoader(ds, batch_size=4, num_workers=2)
        rows = 0
        for batch in loader:
            assert isinstance(batch, torch.Tensor) and batch.dtype == torch.uint8, batch
            rows += batch.shape[0]
        assert rows == N_FILES, f"{rows} samples over 2 workers"

    model = torch.nn.Linear(4, 2)
    states = {}

    def save_checkpoints():
        # docs/api/python-api-legacy-v0.7.md, "PyCheckpointStore":
        #   store = s3dlio.PyCheckpointStore('file:///tmp/checkpoints')
        # help(s3dlio.PyCheckpointStore.save): save(self, step, epoch, framework, data,
        #   user_meta=None)
        store = s3dlio.PyCheckpointStore(ckpt_uri)
        for step, epoch in ((100, 1), (200, 2)):
            with torch.no_grad():
                model.weight.fill_(float(step))
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            states[step] = buf.getvalue()
            store.save(step, epoch, "torch", buf.getvalue(), None)

    def list_checkpoints():
        # help(s3dlio.PyCheckpointStore.list_checkpoints) / help(s3dlio.PyCheckpointInfo):
        # list_checkpoints(self) -> PyCheckpointInfo objects, getters step, epoch, framework
        store = s3dlio.PyCheckpointStore(ckpt_uri)
        infos = store.list_checkpoints()
        got = sorted((i.step, i.epoch, i.framework) for i in infos)
        assert got == [(100, 1, "torch"), (200, 2, "torch")], got

    def load_latest():
        # docs/ZERO-COPY-API-REFERENCE.md: CheckpointStore.load_latest() -> Optional[BytesView];
        # BytesView.to_bytes() copies, .memoryview() does not
        store = s3dlio.PyCheckpointStore(ckpt_uri)
        view = store.load_latest()
        assert view is not None, "no checkpoint"
        assert bytes(view.memoryview()) == states[200]
        state = torch.load(io.BytesIO(view.to_bytes()))
        assert float(state["weight"][0, 0]) == 200.0

    steps.run("write the dataset", make_data)
    steps.run("async for over create_async_loader", async_loader)
    steps.run("torch tensors from shuffled async batches", torch_batches)
    steps.run("S3IterableDataset bytes in a DataLoader, 2 workers", iterable_dataset_bytes)
    steps.run("S3IterableDataset tensors in a DataLoader, 2 workers", iterable_dataset_tensor)
    steps.run("PyCheckpointStore.save(step, epoch, 'torch', data, None)", save_checkpoints)
    steps.run("list_checkpoints() attribute access", list_checkpoints)
    steps.run("load_latest()", load_latest)
    ok = sum(steps.results)
    print(f"STEPS {ok}/{len(steps.results)} ok", flush=True)
    return 0 if ok == len(steps.results) else 1


if __name__ == "__main__":
    sys.exit(main())
