#!/usr/bin/env bash
# tests/gpu/check_hopper.sh [BUILD_DIR] — the Hopper prefill kernel's checks
# in one call on a compute-capability-9.0 card: memcheck and racecheck on the
# prefill cases with more row blocks than SMs, where the persistent blocks
# take items from the work counter (KR_TEST_SQ=400: two consumers; 1100:
# three at head_dim 64), then test_cuda (the full grid, those cases
# included), and the HGMMA count of each Hopper kernel.
# Logs under $OUT (default /tmp/krserve-hopper); a summary is printed last.
set -uo pipefail
B=${1:-build}
OUT=${OUT:-/tmp/krserve-hopper}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$B:$PWD/$B/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KRSERVE_PLUGIN_PATH="$PWD/$B/libkrserve-cuda.so"
nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader >"$OUT/nvidia-smi.txt" 2>&1
: >"$OUT/summary.txt"
for tool in memcheck racecheck; do
  for sq in 400 1100; do
    KR_TEST_QUICK=1 KR_TEST_SQ=$sq KR_TEST_FILTER=test_attention_grid \
      timeout "${KR_GPU_SAN_TIMEOUT:-240}" compute-sanitizer --tool $tool --error-exitcode 9 \
      "$B/tests/test_cuda" >"$OUT/$tool-$sq.log" 2>&1
    echo "$tool Sq=$sq rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool-$sq.log" |
      tail -1)" >>"$OUT/summary.txt"
  done
done
timeout "${KR_GPU_TEST_TIMEOUT:-500}" "$B/tests/test_cuda" >"$OUT/test_cuda.log" 2>&1
echo "test_cuda rc=$?" >>"$OUT/summary.txt"
if command -v cuobjdump >/dev/null; then
  cuobjdump -sass "$B/libkrserve-cuda.so" 2>&1 | awk '/Function :/ {f=$3} /HGMMA/ {n[f]++}
    END {for (k in n) print k, n[k], "HGMMA"}' >"$OUT/sass-hgmma.txt"
fi
cat "$OUT/nvidia-smi.txt"
grep -E "^# |PASSED|FAILED|SKIPPED" "$OUT/test_cuda.log" | tail -14
cat "$OUT/sass-hgmma.txt" 2>/dev/null
cat "$OUT/summary.txt"
