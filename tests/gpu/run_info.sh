#!/usr/bin/env bash
# On the GPU machine: show that the CUDA package loads and sees the card.
# Usage: tests/gpu/run_info.sh [BUILD_DIR]   (writes logs under $OUT when set)
# BUILD_DIR defaults to ./build; where the build machine's shared libraries
# (libcjson, libyaml, libcpuid) are not installed, put copies in
# BUILD_DIR/deps and they are picked up.
set -euo pipefail
B=${1:-build}
OUT=${OUT:-/tmp/krserve-gpu}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$B:$PWD/$B/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/nvidia-smi.txt"
"$B/krserve" info | tee "$OUT/info.txt"
"$B/krserve" info --json > "$OUT/info.json"
grep -q '"available":[[:space:]]*true' "$OUT/info.json" && echo "plugin loaded: yes" || echo "plugin loaded: NO"
