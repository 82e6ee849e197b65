#!/usr/bin/env bash
# bench/append_lab.sh — the lab for rope.cu (RoPE in place, RoPE + append
# into the fp16 cache, RoPE + quantise + append into the int8 cache).
# Rebuilds only rope.cu once per variant (macros overridden, e.g.
# AQ_MIN_BLOCKS, RP_BATCH) and links it with the CMake build's
# other objects of the plugin, then times tests/gpu/bench_sdpa.py's rope part
# (16K tokens x 32 heads x 128, each result checked first) with every plugin,
# the variants taking turns for KR_LAB_ROUNDS rounds (default 2) so that a
# drift of the card shows as a drift, not as a difference.
#
# Usage: bench/append_lab.sh [BUILD_DIR] [NAME:FLAGS ...]
#   BUILD_DIR (default build): a CMake build of the plugin (its objects are
#   reused). NAME:FLAGS e.g. "mb3:-DAQ_MIN_BLOCKS=3"; "base:" is rope.cu
#   as it is. A variant named old:PATH takes a plugin already built (a
#   directory holding libkrserve-cuda.so), e.g. an earlier commit's.
#   KR_LAB_ROUNDS=0 only builds; KR_LAB_REUSE=1 times the plugins already in
#   $OUT without rebuilding them (build here, time on the GPU machine).
# Writes $OUT/<name>/{build.log,round<k>.log} (OUT default /tmp/krserve-lab)
# and prints one table: microseconds per op and variant, every round.
set -euo pipefail
B=build
if [ $# -gt 0 ] && [[ "$1" != *:* ]]; then B=$1; shift; fi
OUT=${OUT:-/tmp/krserve-lab}
ROUNDS=${KR_LAB_ROUNDS:-2}
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=("base:")
here=$(cd "$(dirname "$0")/.." && pwd)
obj="$here/$B/CMakeFiles/krserve-cuda.dir/src/backends/cuda"
hop="$here/$B/CMakeFiles/krserve-cuda-sm90a.dir/src/backends/cuda/attention_hopper.cu.o"
mkdir -p "$OUT"
for v in "${variants[@]}"; do
  name=${v%%:*} flags=${v#*:}
  mkdir -p "$OUT/$name"
  if [ "$name" = old ]; then
    cp "$flags/libkrserve-cuda.so" "$OUT/$name/"
    continue
  fi
  # KR_LAB_REUSE=1: plugins built earlier (e.g. on a machine without a GPU) are kept
  if [ "${KR_LAB_REUSE:-0}" = 1 ] && [ -f "$OUT/$name/libkrserve-cuda.so" ]; then continue; fi
  # shellcheck disable=SC2086
  nvcc -O3 -std=c++17 -Xcompiler -fPIC -gencode arch=compute_90,code=sm_90 \
    -gencode arch=compute_80,code=sm_80 $flags -I"$here/include" -I"$here/$B/include" \
    -c "$here/src/backends/cuda/rope.cu" -o "$OUT/$name/rope.o" >"$OUT/$name/build.log" 2>&1 &&
  g++ -shared -o "$OUT/$name/libkrserve-cuda.so" "$obj/cuda_backend.c.o" \
    "$obj/attention_decode.cu.o" "$obj/attention_prefill.cu.o" "$obj/attention_unfused.cu.o" \
    "$hop" "$OUT/$name/rope.o" -L"$here/$B" -lkrserve -L/usr/local/cuda/lib64 \
    -L/usr/local/cuda/targets/x86_64-linux/lib -lcudart_static -ldl -lrt -lpthread \
    >>"$OUT/$name/build.log" 2>&1 || echo "build failed: $name (see $OUT/$name/build.log)"
done
export LD_LIBRARY_PATH="$here/$B:$here/$B/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for ((k = 1; k <= ROUNDS; k++)); do
  for v in "${variants[@]}"; do
    name=${v%%:*}
    [ -f "$OUT/$name/libkrserve-cuda.so" ] || continue
    KRSERVE_PLUGIN_PATH="$OUT/$name" python3 -u "$here/tests/gpu/bench_sdpa.py" \
      --lib "$here/$B/libkrserve.so" --out "$OUT/$name/r$k" --only rope \
      >"$OUT/$name/round$k.log" 2>&1 || echo "bench failed: $name round $k"
  done
done
python3 - "$OUT" "$ROUNDS" "${variants[@]}" <<'PY'
import re, sys
out, rounds, names = sys.argv[1], int(sys.argv[2]), [v.split(":")[0] for v in sys.argv[3:]]
rows = {}
for n in names:
    for k in range(1, rounds + 1):
        try:
            text = open("%s/%s/round%d.log" % (out, n, k)).read()
        except OSError:
            continue
        for m in re.finditer(r"^(rope.*?) torch\.(\w+): ([\d.]+) us = ([\d.]+) TB/s", text, re.M):
            rows.setdefault("%s %s" % (m.group(1), m.group(2)), {}).setdefault(n, []).append(
                "%s (%s)" % (m.group(3), m.group(4)))
print("| op | " + " | ".join(names) + " |")
print("|---|" + "---|" * len(names))
for op, by in rows.items():
    print("| %s | %s |" % (op, " | ".join(", ".join(by.get(n, ["-"])) for n in names)))
PY
