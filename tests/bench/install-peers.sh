#!/usr/bin/env bash
# Installs the peers that tests/bench/run measures s3dlio-c against. Idempotent; quiet when
# everything is present; sudo only when not root. A peer that cannot be installed is reported
# and skipped (the benchmark then prints it as "unavailable: why"); this script fails only
# when nothing at all could be done.
#
#   Debian:            nginx-light (or nginx), iperf3, python3-matplotlib, python3-requests,
#                      libcurl4-openssl-dev + pkg-config (for bench_curl.c)
#   pip into .venv:    grpcio, pyarrow<21 (Arrow Flight)   -- never numpy or torch
#   own venv:          tests/bench/.peers/s3dlio-rs: the original s3dlio (Rust, PyPI),
#                      kept apart because it is also imported as `s3dlio`
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV=$ROOT/.venv
PEERS=$ROOT/tests/bench/.peers
# The Rust original: 0.10.0 ships cp311 manylinux x86_64 wheels. Its metadata asks for
# numpy>=2, but it imports and runs with Debian's numpy 1.24 (we only move bytes), so it is
# installed with --no-deps into a venv that sees Debian's site-packages.
S3DLIO_RS_VERSION=${S3DLIO_RS_VERSION:-0.10.0}
PIP_QUIET=(-q --disable-pip-version-check --no-input)

say() { echo "install-peers: $*"; }
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# ---- Debian packages ----
want=(iperf3 python3-matplotlib python3-requests libcurl4-openssl-dev pkg-config python3-venv)
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${want[@]}"; do have "$p" || missing+=("$p"); done
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  missing+=(nginx-light)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts must not start a system nginx on port 80 (or an iperf3 daemon): a
  # temporary policy-rc.d refuses service starts while installing, as in Docker images.
  POLICY=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null && $SUDO chmod +x "$POLICY" \
      && made_policy=1
  fi
  $SUDO apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed (continuing)"
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    # one at a time, so one unavailable package does not block the others
    for p in "${missing[@]}"; do
      if [ "$p" = nginx-light ]; then
        $SUDO apt-get install -y -qq --no-install-recommends nginx-light >/dev/null 2>&1 \
          || $SUDO apt-get install -y -qq --no-install-recommends nginx >/dev/null 2>&1 \
          || say "apt: nginx unavailable"
      else
        $SUDO apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 \
          || say "apt: $p unavailable"
      fi
    done
  fi
  [ "$made_policy" = 1 ] && $SUDO rm -f "$POLICY"
fi

# ---- the test venv (deploy/install-deps.sh makes it; make it here too if missing) ----
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV" || say "cannot create $VENV"
fi

# ---- pip into .venv: grpcio, pyarrow; requests only when Debian's is missing ----
if [ -x "$VENV/bin/python" ]; then
  pip_want=()
  "$VENV/bin/python" -c 'import grpc' 2>/dev/null || pip_want+=(grpcio)
  # pyarrow 21 and later refuse numpy 1.x at import; Debian 12 has numpy 1.24
  "$VENV/bin/python" -c 'import pyarrow.flight' 2>/dev/null || pip_want+=('pyarrow>=14,<21')
  "$VENV/bin/python" -c 'import requests' 2>/dev/null || pip_want+=(requests)
  for p in "${pip_want[@]}"; do
    say "pip: installing $p into .venv"
    # --no-deps for pyarrow: nothing it needs for Flight, and it must never pull numpy
    extra=()
    case $p in pyarrow*) extra=(--no-deps) ;; esac
    "$VENV/bin/python" -m pip install "${PIP_QUIET[@]}" --only-binary=:all: "${extra[@]}" "$p" \
      || say "pip: $p unavailable"
  done
fi

# ---- the original s3dlio (Rust, PyPI) in its own venv ----
RSV=$PEERS/s3dlio-rs
rs_ok() {
  [ -x "$RSV/bin/python" ] && (cd / && env -u PYTHONPATH "$RSV/bin/python" -c \
    "import s3dlio, importlib.metadata as m; assert m.version('s3dlio') == '$S3DLIO_RS_VERSION'" \
    ) 2>/dev/null
}
if ! rs_ok; then
  say "pip: installing s3dlio==$S3DLIO_RS_VERSION (Rust original) into ${RSV#"$ROOT"/}"
  mkdir -p "$PEERS"
  rm -rf "$RSV"
  if /usr/bin/python3 -m venv --system-site-packages "$RSV"; then
    env -u PYTHONPATH "$RSV/bin/python" -m pip install "${PIP_QUIET[@]}" --only-binary=:all: \
      --no-deps "s3dlio==$S3DLIO_RS_VERSION" || say "pip: s3dlio (Rust) unavailable"
  fi
  rs_ok || say "s3dlio (Rust) does not import; the benchmark will report it unavailable"
fi
exit 0
