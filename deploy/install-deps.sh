#!/usr/bin/env bash
# Installs what s3dlio-c needs to build and test on Debian 12: the Debian packages, and the
# test virtual environment (.venv, made from Debian's python3 with --system-site-packages so
# Debian's numpy and torch are visible). Idempotent; quiet when everything is present; uses
# sudo only when not root.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libevent-dev libcurl4-openssl-dev libssl-dev libmsgpack-dev libcmocka-dev
  libisal-dev liburing-dev libjansson-dev libexpat1-dev libzstd-dev
  python3 python3-dev python3-venv python3-pip python3-numpy python3-pytest
  python3-pytest-timeout python3-msgpack python3-psutil python3-torch
  python3-boto3 python3-requests python3-yaml python3-h5py zstd openssl
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The test venv. Debian's interpreter by full path: the python3 first on PATH may be another.
VENV=.venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import numpy' 2>/dev/null; then
  echo "install-deps: creating $VENV"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# scikit-build-core lets `pip install .` build without fetching a build environment each time
if ! "$VENV/bin/python" -c 'import scikit_build_core' 2>/dev/null; then
  echo "install-deps: installing scikit-build-core into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'scikit-build-core>=0.8'
fi

# pytest-asyncio for the compatibility suite (tests/compat runs the original's async tests);
# 0.21 is the line that works with Debian's pytest 7.2
"$VENV/bin/python" -c 'import pytest_asyncio' 2>/dev/null || "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'pytest-asyncio==0.21.2'

# The object-store emulators the cloud tests start (npm, into tests/emulators/node_modules)
bash tests/emulators/install.sh
