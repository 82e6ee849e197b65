#!/usr/bin/env python3
"""kernel_times.py - where a decode call's time goes: each implementation's kernels, their
device durations (CUPTI, through torch.profiler, at the card's normal clocks, unlike Nsight
Compute's base clocks), the gap between the event that starts the timed region and the first
kernel, and the host time of the call.

Each call is timed as bench_sdpa.py times it (L2 flushed by a 256 MiB write, the call queued
behind a ~200 us GPU sleep, CUDA events around it), --reps times, under the profiler. The
harness's own kernels (the flush, the sleep) are told apart by profiling the harness around an
empty call first. Decode shape: 32 q heads / 8 kv heads, head_dim 128, fp16, BHSD (what
bench_sdpa.py times).

  python3 tests/gpu/kernel_times.py --lib build/libkrserve.so --shapes 1x1024,1x4096,8x32768
"""
import argparse
import ctypes as C
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sdpa as bs  # noqa: E402


def trace_kernels(fn, reps):
    """[(name, ts_us, dur_us)] of the device kernels fn's timed calls ran, plus the event
    times (ms) and the host microseconds of each call."""
    ev_ms, host_us = [], []

    def timed_call():
        host = []

        def wrapped():
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e6)

        ev_ms.append(bs.time_once(wrapped))
        host_us.extend(host)

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts, acc_events=True) as prof:
        for _ in range(reps):
            timed_call()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    prof.export_chrome_trace(path)
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    os.unlink(path)
    kernels = sorted((e["ts"], e["dur"], e["name"]) for e in events
                     if e.get("cat") == "kernel" and "dur" in e)
    return [(n, ts, d) for ts, d, n in kernels], ev_ms, host_us


def summarise(label, kernels, harness, ev_ms, host_us, reps):
    """One line per kernel the implementation ran (mean device us per call), then the
    event-timed median, the sum of the kernels, and the gaps."""
    own = [(n, ts, d) for n, ts, d in kernels if n not in harness]
    by = {}
    for n, _, d in own:
        by.setdefault(n, []).append(d)
    lines = []
    total = 0.0
    for n, ds in by.items():
        per_call = sum(ds) / reps
        total += per_call
        lines.append("  %-60s %6.1f us/call (%d launches, median %.1f)" %
                     (n[:60], per_call, len(ds), statistics.median(ds)))
    # first kernel after each sleep kernel: start gap after the sleep, end of the last
    # own kernel before the next flush: span of the implementation's kernels
    spans, gaps = [], []
    sleep_end, first, last = None, None, None
    for n, ts, d in kernels:
        if n in harness and ("sleep" in n.lower() or "spin_kernel" in n):
            if first is not None and sleep_end is not None:
                gaps.append(first - sleep_end)
                spans.append(last - first)
            sleep_end, first, last = ts + d, None, None
        elif n not in harness and sleep_end is not None:
            first = ts if first is None else first
            last = ts + d
    if first is not None and sleep_end is not None:
        gaps.append(first - sleep_end)
        spans.append(last - first)
    ev = statistics.median(ev_ms) * 1e3
    out = {"impl": label, "event_us": ev, "kernels_us": total,
           "span_us": statistics.median(spans) if spans else None,
           "gap_after_sleep_us": statistics.median(gaps) if gaps else None,
           "host_us": statistics.median(host_us) if host_us else None,
           "kernels": {n: sum(ds) / reps for n, ds in by.items()}}
    print("%s: events %.1f us, kernels %.1f us/call, first kernel to last end %s us, "
          "sleep end to first kernel %s us, host %.1f us/call" % (
              label, ev, total, "%.1f" % out["span_us"] if spans else "-",
              "%.1f" % out["gap_after_sleep_us"] if gaps else "-", out["host_us"] or 0))
    for line in lines:
        print(line)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", required=True)
    ap.add_argument("--shapes", default="1x1024,1x4096,8x32768")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=None, help="write the summary as JSON here")
    a = ap.parse_args()
    kr = bs.open_krserve(a.lib)
    if kr is None:
        return 0
    harness = {n for n, _, _ in trace_kernels(lambda: None, 5)[0]}
    print("harness kernels: %s" % ", ".join(sorted(harness)))
    print("card: %s" % torch.cuda.get_device_name())
    res = []
    for shape in a.shapes.split(","):
        B, L = (int(x) for x in shape.split("x"))
        H, Hkv, D = 32, 8, 128
        torch.manual_seed(B * 1000003 + L)
        q = torch.randn(B, H, 1, D, dtype=torch.float16, device="cuda")
        k = torch.randn(B, Hkv, L, D, dtype=torch.float16, device="cuda")
        v = torch.randn(B, Hkv, L, D, dtype=torch.float16, device="cuda")
        out = torch.empty(B, 1, H, D, dtype=torch.float16, device="cuda")
        tq, tk, tv, to = kr.bhsd(q), kr.bhsd(k), kr.bhsd(v), kr.bshd(out)
        run_kr = lambda: kr.check(kr.lib.kr_attention(kr.ctx, C.byref(tq), C.byref(tk),
                                                      C.byref(tv), C.byref(to), None))
        print("\n== decode %d x %d (%.1f MB of KV)" % (B, L, 4 * k.numel() / 1e6))
        for label, fn in (("krserve", run_kr),
                          ("cudnn", lambda: bs.sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v)),
                          ("flash", lambda: bs.sdpa(SDPBackend.FLASH_ATTENTION, q, k, v))):
            try:
                kernels, ev_ms, host_us = trace_kernels(fn, a.reps)
            except Exception as e:  # a backend that refuses the shape
                print("%s: %s" % (label, str(e).splitlines()[0][:120]))
                continue
            r = summarise(label, kernels, harness, ev_ms, host_us, a.reps)
            r.update({"batch": B, "kv_len": L})
            res.append(r)
        del q, k, v, out
        torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
