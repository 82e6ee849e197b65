#!/usr/bin/env bash
# tests/gpu/profile_source.sh — where the warps of one prefill shape stall,
# by SASS instruction: Nsight Compute's warp-state sampling of krserve's
# kernel and torch's cuDNN kernel on the same tensors (profile_decode.py,
# NVTX range "prof"), then a summary of the stall reasons per kernel and of
# krserve's costliest instructions.
#
# Usage: tests/gpu/profile_source.sh [BUILD_DIR] [profile_decode.py args]
#   default args: --op prefill --batch 32 --seq 512 --head-dim 128
#   KRSERVE_PLUGIN_PATH picks the plugin (build it with -lineinfo, e.g.
#   OUT=build/lab bench/prefill_lab.sh build "li:-lineinfo", so that the
#   instructions carry their source lines). KR_PROF_KERNEL: the prefix of
#   krserve's kernel names (default hp_; dq_ for the int8 decode with --op
#   int8 --batch 8 --kv-len 32768; dm_ for the fp16 decode, e.g. with
#   --batch 1 --kv-len 4096).
# Writes $OUT (default /tmp/krserve-prof): prof.ncu-rep, raw.csv,
# source-*.csv, summary.txt; prints the summary.
set -uo pipefail
B=build
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then B=$1; shift; fi
args=("$@")
[ ${#args[@]} = 0 ] && args=(--op prefill --batch 32 --seq 512 --head-dim 128)
OUT=${OUT:-/tmp/krserve-prof}
here=$(cd "$(dirname "$0")/../.." && pwd)
K=${KR_PROF_KERNEL:-hp_}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$here/$B:$here/$B/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ncu --nvtx --nvtx-include "prof/" -k "regex:^$K|cudnn|lean_reduction" --section SpeedOfLight \
  --section WarpStateStats --section SourceCounters --import-source yes -f -o "$OUT/prof" \
  python3 "$here/tests/gpu/profile_decode.py" --lib "$here/$B/libkrserve.so" "${args[@]}" \
  >"$OUT/ncu.log" 2>&1 || { echo "ncu failed (see $OUT/ncu.log)"; tail -20 "$OUT/ncu.log"; exit 1; }
ncu -i "$OUT/prof.ncu-rep" --page raw --csv >"$OUT/raw.csv" 2>"$OUT/raw.err"
for k in "$K" cudnn; do
  ncu -i "$OUT/prof.ncu-rep" -k "regex:$k" --page source --csv --print-source sass \
    >"$OUT/source-$k.csv" 2>"$OUT/source-$k.err" ||
    ncu -i "$OUT/prof.ncu-rep" -k "regex:$k" --page source --csv >"$OUT/source-$k.csv" \
      2>>"$OUT/source-$k.err"
done
python3 - "$OUT" "$K" <<'PY' | tee "$OUT/summary.txt"
import csv, io, os, sys
out, ours = sys.argv[1], sys.argv[2]

def table(path):
    text = open(path, errors="replace").read()
    lines = [l for l in text.splitlines() if l.startswith('"')]
    return list(csv.reader(io.StringIO("\n".join(lines))))

# Stall reasons per kernel (raw page: one row per kernel, units in row 2).
rows = table(os.path.join(out, "raw.csv"))
if rows:
    head = rows[0]
    for r in rows[1:]:
        if len(r) != len(head) or not any(c.startswith(ours) or "cudnn" in c for c in r):
            continue
        name = next(c for c in r if c.startswith(ours) or "cudnn" in c)[:70]
        d = dict(zip(head, r))
        stalls = {}
        for k, v in d.items():
            if k.startswith("smsp__pcsamp_warps_issue_stalled_") and not k.endswith("_not_issued"):
                try:
                    stalls[k[len("smsp__pcsamp_warps_issue_stalled_"):]] = float(v.replace(",", ""))
                except ValueError:
                    pass
        tot = sum(stalls.values()) or 1.0
        print("==", name, "duration", d.get("gpu__time_duration.sum", "?"))
        for k, v in sorted(stalls.items(), key=lambda x: -x[1])[:12]:
            print("   %-28s %6.1f %%" % (k, 100.0 * v / tot))

# krserve's instructions with the most stall samples, and the totals by source line.
for k in (ours,):
    rows = table(os.path.join(out, "source-%s.csv" % k))
    # a "Kernel Name" line comes first, then the header row (Address, Source, ...)
    at = next((i for i, r in enumerate(rows) if r and r[0] == "Address"), None)
    if at is None:
        print("no source table for", k)
        continue
    head, rows = rows[at], rows[at:]
    def col(*names):
        for n in names:
            for i, h in enumerate(head):
                if h.startswith(n):
                    return i
        return None
    i_s = col("Warp Stall Sampling (All Samples)", "Warp Stall Sampling (All")
    i_src = col("Source")
    i_ex = col("Instructions Executed")
    if i_s is None:
        continue
    body = [r for r in rows[1:] if len(r) == len(head)]
    num = lambda r, i: float(r[i].replace(",", "") or 0) if i is not None and r[i] else 0.0
    tot = sum(num(r, i_s) for r in body) or 1.0
    print("== top instructions by stall samples (%d samples in all)" % tot)
    reasons = [i for i, h in enumerate(head) if h.startswith("stall_") and "Not Issued" not in h]
    for r in sorted(body, key=lambda r: -num(r, i_s))[:45]:
        why = sorted(((num(r, i), head[i]) for i in reasons if num(r, i) > 0), reverse=True)[:3]
        print("%5.2f%%  %-60s %s" % (100 * num(r, i_s) / tot, r[i_src][:60] if i_src is not None else "",
                                     "; ".join("%s %.0f" % (h, v) for v, h in why)))
PY
