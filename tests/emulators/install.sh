#!/bin/sh
# install.sh: the object-store emulators the cloud tests start (tests/py/test_cloud_*.py).
#
# npm packages go into tests/emulators/node_modules (gitignored); Debian packages the
# tests use as independent clients (boto3) come from apt. Idempotent and quiet when
# everything is present already. Needs node >= 18 and npm.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

sudo_if_needed() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=""
/usr/bin/python3 -c 'import boto3' 2>/dev/null || missing="$missing python3-boto3"
/usr/bin/python3 -c 'import requests' 2>/dev/null || missing="$missing python3-requests"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
	echo "install.sh: apt-get install$missing"
	sudo_if_needed apt-get install -y -q $missing >/dev/null
fi

need_npm=0
for p in @20minutes/s3rver azurite firebase-tools; do
	[ -f "$here/node_modules/$p/package.json" ] || need_npm=1
done
if [ "$need_npm" -eq 1 ]; then
	echo "install.sh: npm install (s3rver, azurite, firebase-tools) into $here/node_modules"
	(cd "$here" && npm install --no-audit --no-fund --loglevel=error --omit=dev >/dev/null)
fi
