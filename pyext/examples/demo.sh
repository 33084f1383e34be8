#!/usr/bin/env bash
# The demo: builds s3dlio-c, generates a small dataset in ./demo-data, starts s3dliod over it on
# a Unix socket, runs quickstart.py against it, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DATA=$ROOT/demo-data
RUN=$(mktemp -d)
trap 'kill "$SERVER_PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$RUN"' EXIT

echo "demo: building (build/)"
cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DPython3_EXECUTABLE=/usr/bin/python3 >/dev/null
ninja -C "$ROOT/build" >/dev/null

echo "demo: generating a dataset in $DATA"
/usr/bin/python3 - "$DATA" <<'PY'
import os, sys
root = sys.argv[1]
os.makedirs(os.path.join(root, "train"), exist_ok=True)
os.makedirs(os.path.join(root, "big"), exist_ok=True)
for i in range(64):
    p = os.path.join(root, "train", f"sample_{i:04d}.bin")
    if not os.path.exists(p) or os.path.getsize(p) != 1 << 20:
        with open(p, "wb") as f:
            f.write(os.urandom(1 << 20))
for i in range(4):
    p = os.path.join(root, "big", f"shard_{i}.bin")
    if not os.path.exists(p) or os.path.getsize(p) != 16 << 20:
        with open(p, "wb") as f:
            f.write(os.urandom(16 << 20))
PY

SOCK=$RUN/s3dliod.sock
"$ROOT/build/bin/s3dliod" --listen "unix://$SOCK" --allow "file://$DATA/" 2>"$RUN/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do
  grep -q "listening on unix://" "$RUN/server.log" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$RUN/server.log"; exit 1; }
  sleep 0.1
done
echo "demo: s3dliod (pid $SERVER_PID) serving file://$DATA/ on unix://$SOCK"

PYTHONPATH="$ROOT/build/python" /usr/bin/python3 "$ROOT/pyext/examples/quickstart.py" \
  --data "$DATA" --server "unix://$SOCK"

kill -TERM "$SERVER_PID"
wait "$SERVER_PID" && echo "demo: server stopped cleanly"
