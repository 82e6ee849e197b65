#!/usr/bin/env bash
# tests/gpu/run.sh — the CUDA package on a GPU machine, in one call: the
# card, `krserve info`, the conformance driver (test_cuda), compute-sanitizer
# memcheck and racecheck on its small grid, and the benchmark against torch
# SDPA (bench_sdpa.py). Full logs go under $OUT; a short table is printed last.
#
# Usage: tests/gpu/run.sh [BUILD_DIR] [--quick] [--no-sanitize] [--no-bench] [--no-test] [--no-sm80]
#   BUILD_DIR (default build) holds krserve, libkrserve.so, libkrserve-cuda.so
#   and tests/test_cuda, built with nvcc present (cmake -S . -B build). Where
#   the build machine's shared libraries (libcjson, libyaml, libcpuid,
#   libcmocka) are not installed, copies in BUILD_DIR/deps are used
#   (tests/gpu/pack.sh makes such a folder). --no-sm80: on a compute
#   capability 9.0 card, skip the second test_cuda pass on the sm_80 prefill
#   kernel (it doubles the test time).
# Environment: KR_GPU_BENCH_ONLY=ceiling,decode (a subset of the benchmark's parts),
#   KR_GPU_RACECHECK=0, KR_GPU_{TEST,SAN,BENCH}_TIMEOUT (seconds).
set -uo pipefail
B=build
QUICK="" SAN=1 BENCH=1 TEST=1 SM80=1
for a in "$@"; do
  case "$a" in
    --quick) QUICK=--quick ;;
    --no-sanitize) SAN=0 ;;
    --no-bench) BENCH=0 ;;
    --no-test) TEST=0 ;;
    --no-sm80) SM80=0 ;;
    -*) echo "unknown option $a" >&2; exit 2 ;;
    *) B=$a ;;
  esac
done
OUT=${OUT:-/tmp/krserve-gpu}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$B:$PWD/$B/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KRSERVE_PLUGIN_PATH="$PWD/$B/libkrserve-cuda.so"
summary=()
step() { # name, log, command...
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  "$@" >"$OUT/$log" 2>&1
  local rc=$?
  summary+=("$(printf '%-28s %-6s %4ds  %s' "$name" "$([ $rc = 0 ] && echo ok || echo FAIL:$rc)" $((SECONDS - t0)) "$log")")
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv >"$OUT/nvidia-smi.txt" 2>&1
# The Hopper kernel's machine code must hold warpgroup MMAs (HGMMA), not HMMA.
if command -v cuobjdump >/dev/null; then
  cuobjdump -sass "$B/libkrserve-cuda.so" 2>&1 | awk '/Function :/ {f=$3} /HGMMA/ {n[f]++}
    END {for (k in n) print k, n[k], "HGMMA"}' >"$OUT/sass-hgmma.txt"
fi
step "krserve info" info.txt "$B/krserve" info
if [ $TEST = 1 ]; then
  step "test_cuda (full grid)" test_cuda.log timeout ${KR_GPU_TEST_TIMEOUT:-600} "$B/tests/test_cuda"
  # On compute capability 9.0 the prefill cases ran on the Hopper kernel: once
  # more on the sm_80 kernel, so both are checked on this card.
  if [ $SM80 = 1 ] && grep -q "9.0" "$OUT/nvidia-smi.txt"; then
    step "test_cuda (sm_80 prefill)" test_cuda_sm80.log timeout ${KR_GPU_TEST_TIMEOUT:-600} \
      env KRSERVE_CUDA_PREFILL=sm80 "$B/tests/test_cuda"
  fi
  if [ $SAN = 1 ]; then
    step "memcheck (quick grid)" memcheck.log timeout ${KR_GPU_SAN_TIMEOUT:-300} env KR_TEST_QUICK=1 compute-sanitizer --tool memcheck \
      --leak-check full --error-exitcode 9 "$B/tests/test_cuda"
    [ "${KR_GPU_RACECHECK:-1}" = 1 ] && step "racecheck (quick grid)" racecheck.log timeout ${KR_GPU_SAN_TIMEOUT:-300} env KR_TEST_QUICK=1 compute-sanitizer --tool racecheck \
      --error-exitcode 9 "$B/tests/test_cuda"
  fi
fi
if [ $BENCH = 1 ]; then
  step "bench vs torch SDPA" bench.log timeout ${KR_GPU_BENCH_TIMEOUT:-420} python3 -u "$(dirname "$0")/bench_sdpa.py" --lib "$B/libkrserve.so" \
    --out "$OUT" $QUICK ${KR_GPU_BENCH_ONLY:+--only "$KR_GPU_BENCH_ONLY"}
fi

echo "== $(head -2 "$OUT/nvidia-smi.txt" | tail -1)"
grep -E "^(cuda|cuda-unfused|  (flash_attention|fused_rope|kv_quantization))" "$OUT/info.txt" | head -8
[ -f "$OUT/test_cuda.log" ] && grep -E "^# |PASSED|FAILED|SKIPPED" "$OUT/test_cuda.log" | tail -14
[ -f "$OUT/test_cuda_sm80.log" ] && grep -E "PASSED|FAILED" "$OUT/test_cuda_sm80.log" | sed "s/^/sm80 pass: /" | tail -3
[ -f "$OUT/sass-hgmma.txt" ] && sed "s/^/sass: /" "$OUT/sass-hgmma.txt"
for f in memcheck racecheck; do
  [ -f "$OUT/$f.log" ] && grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$f.log" | tail -1 | sed "s/^/$f: /"
done
[ -f "$OUT/bench_gpu.md" ] && cat "$OUT/bench_gpu.md"
printf '%s\n' "${summary[@]}"
