#!/usr/bin/env bash
# bench/lab_ab.sh — one GPU call comparing plugins built by the lab
# (bench/prefill_lab.sh, e.g. on a machine without a GPU): where the decode's
# time goes (tests/gpu/kernel_times.py, each plugin), the decode lab twice in
# opposite orders (clock drift falls on both), the prefill turn about in one
# process. Logs under $OUT (default /tmp/krserve-ab); short tables last.
#
# Usage: OUT=... LAB=build/lab bench/lab_ab.sh [BUILD_DIR] A [B ...]
#   LAB: where $LAB/A/libkrserve-cuda.so, $LAB/B/... are.
#   KR_AB_PARTS: any of check,times,decode,int8,prefill (default
#   times,decode,prefill). check: the conformance driver (BUILD_DIR/tests/test_cuda,
#   full grid) and compute-sanitizer racecheck and memcheck on its quick grid,
#   with each plugin (a variant the lab times must pass the tests, not only
#   the lab's comparison with flash).
#   KR_AB_SHAPES: kernel_times.py's decode shapes (default 1x1024,1x4096,8x32768).
set -euo pipefail
B=build
if [ $# -gt 0 ] && [ -d "$1" ] && [ -f "$1/libkrserve.so" ]; then B=$1; shift; fi
[ $# -ge 1 ] || { echo "usage: bench/lab_ab.sh [BUILD_DIR] A [B ...]" >&2; exit 2; }
names=("$@") rev=()
for ((i = $# - 1; i >= 0; i--)); do rev+=("${names[$i]}"); done
here=$(cd "$(dirname "$0")/.." && pwd)
LAB=${LAB:-$here/build/lab}
OUT=${OUT:-/tmp/krserve-ab}
PARTS=${KR_AB_PARTS:-times,decode,prefill}
mkdir -p "$OUT"
for v in "${names[@]}"; do
  [ -f "$LAB/$v/libkrserve-cuda.so" ] || { echo "no plugin $LAB/$v/libkrserve-cuda.so" >&2; exit 2; }
done
export LD_LIBRARY_PATH="$here/$B:$here/$B/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
has() { [[ ",$PARTS," == *",$1,"* ]]; }

if has check; then
  for v in "${names[@]}"; do
    p="$LAB/$v/libkrserve-cuda.so"
    q=() # KR_AB_CHECK_QUICK=1: the driver's quick grid too (the full one takes ~5 minutes)
    [ "${KR_AB_CHECK_QUICK:-0}" = 1 ] && q=(KR_TEST_QUICK=1)
    env "${q[@]}" KRSERVE_PLUGIN_PATH="$p" timeout "${KR_AB_TEST_TIMEOUT:-400}" "$B/tests/test_cuda" \
      >"$OUT/check-$v.log" 2>&1 || echo "test_cuda failed: $v (see $OUT/check-$v.log)"
    for tool in racecheck memcheck; do
      KRSERVE_PLUGIN_PATH="$p" KR_TEST_QUICK=1 timeout "${KR_AB_SAN_TIMEOUT:-200}" \
        compute-sanitizer --tool $tool --error-exitcode 9 "$B/tests/test_cuda" \
        >"$OUT/$tool-$v.log" 2>&1 || echo "$tool failed: $v (see $OUT/$tool-$v.log)"
    done
  done
fi

if has times; then
  for v in "${names[@]}"; do
    KRSERVE_PLUGIN_PATH="$LAB/$v/libkrserve-cuda.so" python3 -u "$here/tests/gpu/kernel_times.py" \
      --lib "$here/$B/libkrserve.so" --shapes "${KR_AB_SHAPES:-1x1024,1x4096,8x32768}" \
      --out "$OUT/times-$v.json" >"$OUT/times-$v.log" 2>&1 || echo "kernel_times failed: $v"
  done
fi
copy() { # DIR NAME...: the plugins into DIR/NAME/, where the lab looks for them
  local d=$1 v
  shift
  for v in "$@"; do
    mkdir -p "$d/$v"
    cp "$LAB/$v/libkrserve-cuda.so" "$d/$v/"
  done
}
lab() { # PART ROUND NAME...: the decode or int8 lab, the plugins in that order
  local part=$1 d="$OUT/$1-$2" v args=()
  shift 2
  copy "$d" "$@"
  for v in "$@"; do args+=("$v:"); done
  OUT="$d" KR_LAB_PART=$part KR_LAB_FULL=1 KR_LAB_REUSE=1 KR_LAB_TORCH=first \
    "$here/bench/prefill_lab.sh" "$B" "${args[@]}" >"$d/table.md" 2>&1 || echo "lab failed: $d"
}
for part in decode int8; do
  has $part || continue
  lab $part 1 "${names[@]}"
  lab $part 2 "${rev[@]}"
done
if has prefill; then
  d="$OUT/prefill" args=()
  copy "$d" "${names[@]}"
  for v in "${names[@]}"; do args+=("$v:"); done
  OUT="$d" KR_LAB_AB=1 KR_LAB_FULL=1 KR_LAB_REUSE=1 "$here/bench/prefill_lab.sh" "$B" "${args[@]}" \
    >"$d/table.md" 2>&1 || echo "prefill A/B failed"
fi

# short tables last
if has check; then
  for v in "${names[@]}"; do
    echo "== check, $v: $(grep -E 'PASSED|FAILED' "$OUT/check-$v.log" | tail -2 | tr '\n' ' ')"
    for tool in racecheck memcheck; do
      echo "   $tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool-$v.log" | tail -1)"
    done
  done
fi
if has times; then
  for v in "${names[@]}"; do echo "== kernel times, $v"; grep -E '^(krserve|cudnn|flash|==)' "$OUT/times-$v.log" || true; done
fi
for part in decode int8; do
  has $part || continue
  for r in 1 2; do echo "== $part lab, round $r"; cat "$OUT/$part-$r/table.md"; done
done
has prefill && { echo "== prefill turn about"; cat "$OUT/prefill/table.md"; }
exit 0
