#!/usr/bin/env bash
# tests/gpu/pack.sh BUILD_DIR — copies the shared libraries the build links
# from the system (libcjson, libyaml, libcpuid, libcmocka, libgomp) into
# BUILD_DIR/deps, so the build can run on a GPU machine that lacks them
# (tests/gpu/run.sh adds BUILD_DIR/deps to LD_LIBRARY_PATH).
set -euo pipefail
B=${1:-build}
mkdir -p "$B/deps"
for bin in "$B/krserve" "$B/tests/test_cuda"; do
  ldd "$bin" | awk '/(cjson|yaml|cpuid|cmocka|gomp)/ {print $3}'
done | sort -u | while read -r lib; do cp -L "$lib" "$B/deps/"; done
ls "$B/deps"
