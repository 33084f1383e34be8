#!/usr/bin/env bash
# Validates deploy/ on a machine with no container engine and no cluster (see
# check_deploy.py for the list): YAML, the Kubernetes objects and kustomizations, the real
# server started with each deployment's command line and config, the Dockerfile against
# the libraries s3dliod links, the systemd unit. Then, where the tools exist: hadolint on
# the Dockerfile, and an image build when a container engine answers.
#   tests/deploy/check.sh            uses build/bin/s3dliod (S3DLIOD=... for another)
# Exits non-zero when a check fails; a check that cannot run here says SKIP and why.
set -euo pipefail
# a relative S3DLIOD means relative to where we were called from
if [ -n "${S3DLIOD:-}" ]; then S3DLIOD=$(realpath "$S3DLIOD"); export S3DLIOD; fi
cd "$(dirname "$0")/../.."
ROOT=$PWD

PY=/usr/bin/python3 # Debian's, whose python3-yaml this needs
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  echo "FAIL python3-yaml is not installed (apt-get install python3-yaml)"
  exit 1
fi
if [ ! -x "${S3DLIOD:-$ROOT/build/bin/s3dliod}" ]; then
  echo "note: ${S3DLIOD:-build/bin/s3dliod} is not built; the server checks will SKIP" \
    "(cmake -S . -B build -G Ninja && cmake --build build)"
fi

status=0
"$PY" "$ROOT/tests/deploy/check_deploy.py" || status=1

# hadolint: a Dockerfile linter, if installed
if command -v hadolint >/dev/null; then
  if out=$(hadolint "$ROOT/deploy/Dockerfile" 2>&1); then
    echo "PASS hadolint deploy/Dockerfile"
  else
    echo "FAIL hadolint deploy/Dockerfile:"
    echo "$out"
    status=1
  fi
else
  echo "SKIP hadolint deploy/Dockerfile: hadolint is not installed"
fi

# An image build needs an engine that answers (a docker client alone is not one) and,
# for apt-get and the base images, a registry it can reach: try only when one answers.
engine=""
for e in docker podman; do
  if command -v "$e" >/dev/null && "$e" info >/dev/null 2>&1; then
    engine=$e
    break
  fi
done
if [ -n "$engine" ] && [ "${S3DLIO_DEPLOY_BUILD:-0}" = 1 ]; then
  if "$engine" build -f "$ROOT/deploy/Dockerfile" -t s3dliod:check "$ROOT" &&
    "$engine" run --rm s3dliod:check --version; then
    echo "PASS $engine build -f deploy/Dockerfile"
  else
    echo "FAIL $engine build -f deploy/Dockerfile"
    status=1
  fi
elif [ -n "$engine" ]; then
  echo "SKIP image build: $engine answers; set S3DLIO_DEPLOY_BUILD=1 to build (needs the" \
    "base images and Debian's mirrors)"
else
  why="no docker, podman or buildah"
  for e in docker podman buildah; do
    if command -v "$e" >/dev/null; then
      why="$e is installed but no engine answers ($e info fails)"
      break
    fi
  done
  echo "SKIP image build: $why"
fi

if [ "$status" = 0 ]; then
  echo "deploy checks: OK"
else
  echo "deploy checks: FAILED"
fi
exit "$status"
