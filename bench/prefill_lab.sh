#!/usr/bin/env bash
# bench/prefill_lab.sh — the kernel lab (prefill; decode with KR_LAB_PART=decode).
# Builds the CUDA plugin once per variant (macros overridden: the prefill
# kernels' PF_* / HP_* — warps per block, 16-row tiles per warp, keys per tile,
# stages — or the decode kernels' DP_STAGES / DP_TILE_KEYS, the int8 decode's
# DQ_STAGES), then runs that
# part of tests/gpu/bench_sdpa.py with each plugin in turn: every result is
# checked against torch's flash backend before it is timed (a wrong variant
# prints WRONG, never a speed). The history of the variants is in
# docs/PERFORMANCE.md.
#
# Usage: bench/prefill_lab.sh [BUILD_DIR] [NAME:FLAGS ...]
#   BUILD_DIR (default build): a CMake build with libkrserve.so (the plugin is
#   rebuilt here; nvcc and the CUDA headers are all the build needs).
#   NAME:FLAGS e.g. "mt2-nw4:-DPF_MT=2 -DPF_NW=4"; default: the list below.
#   KR_LAB_FULL=1: the full grid (else the quick one); KR_LAB_TORCH=1:
#   time torch's backends as well (=first: with the first variant only);
#   KR_LAB_PART=decode: the decode kernels (table in microseconds); =int8: the
#   decode over the int8 cache (its error against the fp16 cache is in each
#   variant's bench.log; cuDNN over fp16 is timed with every variant).
#   KR_LAB_AB=1 (prefill): all variants and torch's backends in one process,
#   timed turn about rep by rep in every cell (clock drift falls on all alike;
#   KR_LAB_TORCH=0 leaves torch out); results in $OUT/ab.
#   KR_LAB_REUSE=1: time the plugins already in $OUT without rebuilding them
#   (build on a machine without a GPU with the bench failing, time on the GPU).
# Writes $OUT/<name>/{build.log,bench.log,bench_gpu.json} (OUT default
# /tmp/krserve-lab) and prints one TFLOP/s table, a column per variant.
set -euo pipefail
B=build
if [ $# -gt 0 ] && [[ "$1" != *:* ]]; then B=$1; shift; fi
OUT=${OUT:-/tmp/krserve-lab}
ARCH=${KR_LAB_ARCH:-90a}
PART=${KR_LAB_PART:-prefill}
variants=("$@")
if [ ${#variants[@]} = 0 ]; then
  variants=("v1-mt1:-DPF_MT=1" "v2-mt2:-DPF_MT=2" "mt2-st3:-DPF_MT=2 -DPF_STAGES=3"
            "mt1-nw8:-DPF_MT=1 -DPF_NW=8")
fi
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
# Build the variants side by side.
pids=()
for v in "${variants[@]}"; do
  name=${v%%:*} flags=${v#*:}
  mkdir -p "$OUT/$name"
  # KR_LAB_REUSE=1: plugins built earlier (e.g. on a machine without a GPU) are kept
  if [ "${KR_LAB_REUSE:-0}" = 1 ] && [ -f "$OUT/$name/libkrserve-cuda.so" ]; then continue; fi
  # shellcheck disable=SC2086
  ( nvcc -shared -Xcompiler -fPIC -O3 -std=c++17 -gencode "arch=compute_$ARCH,code=sm_$ARCH" \
      $flags -I"$here/include" -I"$here/$B/include" \
      "$here"/src/backends/cuda/*.cu "$here/src/backends/cuda/cuda_backend.c" \
      -L"$here/$B" -lkrserve -o "$OUT/$name/libkrserve-cuda.so" >"$OUT/$name/build.log" 2>&1 \
    || echo "build failed: $name (see $OUT/$name/build.log)" ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
export LD_LIBRARY_PATH="$here/$B:$here/$B/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ "${KR_LAB_AB:-0}" = 1 ] && [ "$PART" = prefill ]; then
  # One process: the first variant's context, one more per other variant, and
  # torch's backends (unless KR_LAB_TORCH=0), timed turn about in every cell.
  first=${variants[0]%%:*} ab=()
  for v in "${variants[@]:1}"; do ab+=(--ab "${v%%:*}=$OUT/${v%%:*}/libkrserve-cuda.so"); done
  mkdir -p "$OUT/ab"
  KRSERVE_PLUGIN_PATH="$OUT/$first/libkrserve-cuda.so" python3 -u "$here/tests/gpu/bench_sdpa.py" \
    --lib "$here/$B/libkrserve.so" --out "$OUT/ab" --only prefill \
    $([ "${KR_LAB_FULL:-0}" = 1 ] || echo --quick) \
    $([ "${KR_LAB_TORCH:-1}" = 0 ] && echo --kr-only) "${ab[@]}" >"$OUT/ab/bench.log" 2>&1 ||
    echo "bench failed: ab (see $OUT/ab/bench.log)"
  python3 - "$OUT/ab/bench_gpu.json" "$first" "${variants[@]:1}" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["prefill"]
names = [sys.argv[2]] + [v.split(":")[0] for v in sys.argv[3:]]
keys = ["krserve_ms"] + ["ab_%s_ms" % n for n in names[1:]]
torch_cols = [c for c in ("flash", "cudnn") if any(r.get(c + "_ms") for r in rows)]
print("turn about in one process (median of each)")
print("| head_dim | mask | dtype | seq | " + " | ".join(names + torch_cols) + " |")
print("|---" * (4 + len(names) + len(torch_cols)) + "|")
tf = lambda r, k: "%.0f" % (r["flops"] / (r[k] * 1e-3) / 1e12) if r.get(k) else "-"
for r in rows:
    cells = ["WRONG" if r.get("wrong") or r.get(k.replace("_ms", "_wrong")) else tf(r, k)
             for k in keys] + [tf(r, c + "_ms") for c in torch_cols]
    print("| %d | %s | %s | %d | %s |" % (r["head_dim"], "causal" if r["causal"] else "none",
                                          r["dtype"], r["seq"], " | ".join(cells)))
PY
  exit 0
fi
first=1
for v in "${variants[@]}"; do
  name=${v%%:*}
  [ -f "$OUT/$name/libkrserve-cuda.so" ] || continue
  torch=--kr-only
  if [ "${KR_LAB_TORCH:-0}" = 1 ] || { [ "${KR_LAB_TORCH:-0}" = first ] && [ $first = 1 ]; }; then
    torch=""
  fi
  first=0
  KRSERVE_PLUGIN_PATH="$OUT/$name/libkrserve-cuda.so" python3 -u "$here/tests/gpu/bench_sdpa.py" \
    --lib "$here/$B/libkrserve.so" --out "$OUT/$name" --only "$PART" \
    $([ "${KR_LAB_FULL:-0}" = 1 ] || echo --quick) $torch \
    >"$OUT/$name/bench.log" 2>&1 || echo "bench failed: $name (see $OUT/$name/bench.log)"
done
python3 - "$OUT" "$PART" "${variants[@]}" <<'PY'
import json, os, sys
out, part, names = sys.argv[1], sys.argv[2], [v.split(":")[0] for v in sys.argv[3:]]
res = {}
for n in names:
    f = os.path.join(out, n, "bench_gpu.json")
    if os.path.exists(f):
        rows = json.load(open(f))[part]
        res[n] = {((r["batch"], r["kv_len"]) if part in ("decode", "int8") else
                   (r["head_dim"], r["causal"], r["dtype"], r["seq"])): r for r in rows}
if not res:
    sys.exit("no variant ran")
if part == "decode":
    first = next(iter(res.values()))
    us = lambda r, k: "%.1f" % r[k] if r and r.get(k) else ("WRONG" if r and r.get("wrong") else "-")
    print("| batch x kv_len | " + " | ".join(list(res) + ["flash", "cudnn"]) + " |")
    print("|---" * (3 + len(res)) + "|")
    for key, r0 in first.items():
        cells = [us(res[n].get(key), "krserve_us") for n in res]
        print("| %d x %d | %s | %s | %s |" % (key[0], key[1], " | ".join(cells), us(r0, "flash_us"),
                                             us(r0, "cudnn_us")))
    sys.exit(0)
if part == "int8":
    first = next(iter(res.values()))
    us = lambda r, k: "%.1f" % r[k] if r and r.get(k) else "-"
    print("| batch x kv_len | " + " | ".join(list(res) + ["cudnn fp16"]) + " |")
    print("|---" * (2 + len(res)) + "|")
    for key, r0 in first.items():
        cells = [us(res[n].get(key), "int8_us") for n in res]
        print("| %d x %d | %s | %s |" % (key[0], key[1], " | ".join(cells), us(r0, "cudnn_fp16_us")))
    sys.exit(0)
first = next(iter(res.values()))
torch_cols = [c for c in ("flash", "cudnn") if any(r.get(c + "_ms") for r in first.values())]
print("| head_dim | mask | dtype | seq | " + " | ".join(list(res) + torch_cols) + " |")
print("|---" * (4 + len(res) + len(torch_cols)) + "|")
tf = lambda r, k: "%.0f" % (r["flops"] / (r[k] * 1e-3) / 1e12) if r and r.get(k) else (
    "WRONG" if r and r.get("wrong") else "-")
for key, r0 in first.items():
    cells = [tf(res[n].get(key), "krserve_ms") for n in res]
    cells += [tf(r0, c + "_ms") for c in torch_cols]
    print("| %d | %s | %s | %d | %s |" % (key[0], "causal" if key[1] else "none", key[2], key[3],
                                          " | ".join(cells)))
PY
