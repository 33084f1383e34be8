"""The code examples of the s3dlio 0.9.1 API document (the project's seed,
shared/seeds/000_1ff1c6f1c787a82e.txt), copied verbatim (dedented) in document order.
test_seed_examples.py and test_seed_later.py run them with file:// URIs substituted for s3://.
"""
import re

# (number in document order, code)
SNIPPETS = {}

SNIPPETS[0] = '''\
import s3dlio
import numpy as np

# Get data (zero-copy)
view = s3dlio.get("s3://bucket/data.bin")

# Access via memoryview (zero-copy)
mv = view.memoryview()

# Create NumPy array (zero-copy)
arr = np.frombuffer(mv, dtype=np.float32)

# Or copy if needed
data_bytes = view.to_bytes()  # This creates a copy
'''

SNIPPETS[1] = '''\
# Read 1MB starting at offset 1000 (zero-copy)
view = s3dlio.get_range("s3://bucket/large.bin", 1000, 1024*1024)

# Zero-copy to NumPy
arr = np.frombuffer(view.memoryview(), dtype=np.uint8)

# Read from offset to end (zero-copy)
view = s3dlio.get_range("file:///path/data", 5000, None)
'''

SNIPPETS[2] = '''\
uris = [f"s3://bucket/file{i}.bin" for i in range(100)]

# Download in parallel (zero-copy)
results = s3dlio.get_many(uris, max_in_flight=32)

for uri, view in results:
    # Zero-copy access
    arr = np.frombuffer(view.memoryview(), dtype=np.float32)
    process(arr)
'''

SNIPPETS[3] = '''\
view = s3dlio.get_object("my-bucket", "path/to/file")
arr = np.frombuffer(view.memoryview(), dtype=np.uint8)
'''

SNIPPETS[4] = '''\
store = s3dlio.CheckpointStore("s3://bucket/checkpoints/")
view = store.load_latest()

if view is not None:
    # Zero-copy to NumPy
    state = np.frombuffer(view.memoryview(), dtype=np.float32)
    model.load_state_dict(state)
'''

SNIPPETS[5] = '''\
reader = s3dlio.CheckpointReader("s3://bucket/ckpts/")
manifest = reader.load_latest_manifest()
view = reader.read_shard_by_rank(manifest, rank=0)

# Zero-copy access
data = np.frombuffer(view.memoryview(), dtype=np.float32)
'''

SNIPPETS[6] = '''\
dataset = s3dlio.create_dataset("s3://bucket/data/")

# This COPIES data to Python bytes
item = dataset.get_item(0)  # ⚠️ Copy happens here

# Convert to NumPy (another copy)
arr = np.frombuffer(item, dtype=np.uint8)  # ⚠️ Second copy
'''

SNIPPETS[7] = '''\
# Use get() directly instead of dataset
view = s3dlio.get(f"s3://bucket/data/file_{index}.bin")
arr = np.frombuffer(view.memoryview(), dtype=np.uint8)  # ✅ Zero-copy
'''

SNIPPETS[8] = '''\
loader = s3dlio.create_async_loader("s3://bucket/", batch_size=32)

for batch in loader:
    # batch is bytes - data was copied
    arr = np.frombuffer(batch, dtype=np.uint8)  # Another copy
'''

SNIPPETS[9] = '''\
# This copies data
data = s3dlio.load_checkpoint_with_validation("s3://bucket/ckpt")  # ⚠️ Copy
'''

SNIPPETS[10] = '''\
# Use CheckpointStore instead
store = s3dlio.CheckpointStore("s3://bucket/")
view = store.load_latest()  # ✅ Zero-copy
'''

SNIPPETS[11] = '''\
view = s3dlio.get("s3://bucket/data")
mv = view.memoryview()  # ✅ Zero-copy

# Direct access
print(mv[0])  # Access individual bytes

# NumPy integration (zero-copy)
arr = np.frombuffer(mv, dtype=np.float32)
'''

SNIPPETS[12] = '''\
view = s3dlio.get("s3://bucket/data")
data = view.to_bytes()  # ⚠️ Creates copy
'''

SNIPPETS[13] = '''\
view = s3dlio.get("s3://bucket/data")
size = len(view)  # ✅ Zero-copy
'''

SNIPPETS[14] = '''\
view = s3dlio.get("s3://bucket/data")
data = bytes(view)  # ⚠️ Calls __bytes__(), creates copy
'''

SNIPPETS[15] = '''\
view = s3dlio.get("s3://bucket/data.bin")

# Zero-copy to NumPy
arr = np.frombuffer(view.memoryview(), dtype=np.float32)

# Reshape without copying
arr = arr.reshape((1000, 1000))
'''

SNIPPETS[16] = '''\
# This makes a copy but gives you a writeable array
arr = np.array(np.frombuffer(view.memoryview(), dtype=np.float32))
'''

SNIPPETS[17] = '''\
import torch

view = s3dlio.get("s3://bucket/tensor.bin")

# Zero-copy to NumPy
arr = np.frombuffer(view.memoryview(), dtype=np.float32)

# Zero-copy to PyTorch (if dtype matches)
tensor = torch.from_numpy(arr)

# For writeable tensor (copies)
tensor = torch.tensor(arr)
'''

SNIPPETS[18] = '''\
import tensorflow as tf

view = s3dlio.get("s3://bucket/data.bin")

# Zero-copy via memoryview
mv = view.memoryview()

# TensorFlow supports buffer protocol
tensor = tf.constant(mv, dtype=tf.float32)
'''

SNIPPETS[19] = '''\
import jax.numpy as jnp

view = s3dlio.get("s3://bucket/data.bin")

# Via NumPy (zero-copy until JAX modification)
arr = np.frombuffer(view.memoryview(), dtype=np.float32)
jax_arr = jnp.array(arr)  # JAX may copy to device
'''

SNIPPETS[20] = '''\
# Test file: 1 GB

# OLD (v0.9.0) - COPIES DATA
data = s3dlio.get("s3://bucket/1gb.bin")  # Returns bytes
arr = np.frombuffer(data, dtype=np.uint8)
# Memory: 2 GB (bytes copy + NumPy array)

# NEW (v0.9.1) - ZERO COPY
view = s3dlio.get("s3://bucket/1gb.bin")  # Returns BytesView
arr = np.frombuffer(view.memoryview(), dtype=np.uint8)
# Memory: 1 GB (single Bytes buffer, shared)
'''

SNIPPETS[21] = '''\
import time

uris = [f"s3://bucket/file{i}.bin" for i in range(1000)]

# Measure with zero-copy
start = time.time()
results = s3dlio.get_many(uris, max_in_flight=64)
for uri, view in results:
    arr = np.frombuffer(view.memoryview(), dtype=np.float32)
    process(arr)
elapsed = time.time() - start

print(f"Throughput: {len(uris)/elapsed:.1f} objects/sec")
# Typical: 15-20% faster due to reduced GC pressure
'''

SNIPPETS[22] = '''\
# v0.9.0
data = s3dlio.get("s3://bucket/file")  # bytes
arr = np.frombuffer(data, dtype=np.float32)
'''

SNIPPETS[23] = '''\
# v0.9.1
view = s3dlio.get("s3://bucket/file")  # BytesView
arr = np.frombuffer(view.memoryview(), dtype=np.float32)
'''

SNIPPETS[24] = '''\
# Still works in v0.9.1 (but copies)
view = s3dlio.get("s3://bucket/file")
data = view.to_bytes()  # Convert to bytes if needed
'''

SNIPPETS[25] = '''\
dataset = s3dlio.create_dataset("s3://bucket/data/")
item = dataset.get_item(0)  # ⚠️ Copies
'''

SNIPPETS[26] = '''\
# Get URIs from dataset
dataset = s3dlio.create_dataset("s3://bucket/data/")
uris = dataset.get_uris()  # Assume this exists

# Use get_many for zero-copy
views = s3dlio.get_many(uris, max_in_flight=32)
for uri, view in views:
    arr = np.frombuffer(view.memoryview(), dtype=np.float32)
'''

SNIPPETS[27] = '''\
# Better
view = s3dlio.get("s3://bucket/file")

# Works but copies
dataset = s3dlio.create_dataset("s3://bucket/")
data = dataset.get_item(0)
'''

SNIPPETS[28] = '''\
results = s3dlio.get_many(uris, max_in_flight=64)
'''

SNIPPETS[29] = '''\
view = s3dlio.get(uri)
arr = np.frombuffer(view.memoryview(), dtype=np.float32)
'''

SNIPPETS[30] = '''\
# Only if API requires true bytes object
data = view.to_bytes()
'''

SNIPPETS[31] = '''\
# Read only what you need
view = s3dlio.get_range("s3://bucket/huge.bin", offset=1000000, length=1024*1024)
'''



def normalize(text):
    """Whitespace-insensitive form used to check the copies against the seed document."""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def substitute(code, root):
    """s3://X and file:///X -> file://ROOT/X (ROOT absolute), once per occurrence."""
    return re.sub(r"s3://|file:///", lambda m: "file://" + root.rstrip("/") + "/", code)
