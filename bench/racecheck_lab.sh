#!/usr/bin/env bash
# bench/racecheck_lab.sh — compute-sanitizer racecheck of a CUDA plugin (the
# committed one or a lab build), with each hazard's source lines counted.
# Build the plugin with line information to get file:line in the report, e.g.
#   OUT=build/lab KR_LAB_PART=decode bench/prefill_lab.sh build "tmali:-DDP_TMA=1 -lineinfo"
# (the bench step fails on a machine without a GPU; the plugin is kept).
#
# Usage: bench/racecheck_lab.sh BUILD_DIR PLUGIN [TESTS]
#   BUILD_DIR: the CMake build with tests/test_cuda and libkrserve.so;
#   PLUGIN: the libkrserve-cuda.so to check; TESTS: a cmocka name filter for
#   test_cuda (default: all; e.g. test_kv_cache). The quick grid (KR_TEST_QUICK=1).
# Environment: KR_RACE_TIMEOUT (seconds, default 300).
# Writes $OUT/racecheck-<plugin folder>.log (OUT default /tmp/krserve-race) and
# prints the summary and the hazards' distinct source locations, most first.
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BUILD_DIR PLUGIN [TESTS]" >&2; exit 2; }
B=$1 PLUGIN=$2 TESTS=${3:-}
OUT=${OUT:-/tmp/krserve-race}
mkdir -p "$OUT"
name=$(basename "$(dirname "$PLUGIN")")
log="$OUT/racecheck-$name.log"
export LD_LIBRARY_PATH="$PWD/$B:$PWD/$B/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
t0=$SECONDS
KRSERVE_PLUGIN_PATH="$PLUGIN" KR_TEST_QUICK=1 ${TESTS:+KR_TEST_FILTER="$TESTS"} \
  timeout "${KR_RACE_TIMEOUT:-300}" compute-sanitizer --tool racecheck --racecheck-report all \
  --print-limit 200 "$B/tests/test_cuda" >"$log" 2>&1
rc=$?
echo "racecheck $name${TESTS:+ ($TESTS)}: rc $rc, $((SECONDS - t0)) s, log $log"
grep -E "RACECHECK SUMMARY|PASSED|FAILED" "$log" | tail -3
# each hazard is a pair of accesses, "<Write|Read> access at <function>+<offset>
# in <file>:<line>" (file:line only where the plugin carries line information)
grep -E "(Read|Write) access at" "$log" | sed -E 's/^=+ +//; s/\[[0-9]+ hazards\]//' | sort |
  uniq -c | sort -rn | head -20
