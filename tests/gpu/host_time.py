#!/usr/bin/env python3
"""host_time.py - the host time of one krserve decode call, without a profiler: N calls
queued back to back behind a long GPU sleep (so the host never waits on the device), timed
by the wall clock, per call; the median of --rounds such batches. Decode shape as
bench_sdpa.py: 32 q heads / 8 kv heads, head_dim 128, fp16, BHSD. The time includes the
Python ctypes call (about the same for every plugin); compare plugins in one call to the
GPU machine, e.g. alternating KRSERVE_PLUGIN_PATH between two runs.

  python3 tests/gpu/host_time.py --lib build/libkrserve.so --shapes 1x1024,1x4096,64x1024
"""
import argparse
import ctypes as C
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sdpa as bs  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", required=True)
    ap.add_argument("--shapes", default="1x1024,1x4096,64x1024")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    kr = bs.Krserve(a.lib)
    H, Hkv, D = 32, 8, 128
    for shape in a.shapes.split(","):
        B, Lk = (int(x) for x in shape.split("x"))
        q = torch.randn(B, H, 1, D, dtype=torch.float16, device="cuda")
        k = torch.randn(B, Hkv, Lk, D, dtype=torch.float16, device="cuda")
        v = torch.randn(B, Hkv, Lk, D, dtype=torch.float16, device="cuda")
        out = torch.empty(B, 1, H, D, dtype=torch.float16, device="cuda")
        tq, tk, tv, to = kr.bhsd(q), kr.bhsd(k), kr.bhsd(v), kr.bshd(out)
        call = kr.lib.kr_attention
        args = (kr.ctx, C.byref(tq), C.byref(tk), C.byref(tv), C.byref(to), None)
        for _ in range(5):
            kr.check(call(*args))
        torch.cuda.synchronize()
        per_call = []
        for _ in range(a.rounds):
            torch.cuda._sleep(200000000)  # ~100 ms of GPU time: the calls only queue
            status = 0
            t0 = time.perf_counter()
            for _ in range(a.calls):
                status |= call(*args)
            per_call.append((time.perf_counter() - t0) * 1e6 / a.calls)
            torch.cuda.synchronize()
            kr.check(status)  # a failing call would be timed as a fast one
        print("host %d x %d: %.2f us/call (median of %d x %d calls; min %.2f, max %.2f)" % (
            B, Lk, statistics.median(per_call), a.rounds, a.calls, min(per_call),
            max(per_call)), flush=True)


if __name__ == "__main__":
    main()
