#!/usr/bin/env python3
"""bench_sdpa.py - krserve's CUDA kernels against torch SDPA on the same card, in one run.

Calls libkrserve through ctypes on torch-owned device memory (the same tensors
torch reads), on torch's current stream, and times every implementation the
same way: CUDA events around one call, after warm-up, median of many repeats,
the L2 cache flushed (a 256 MiB write) before each repeat. Each krserve result
is checked against torch's math backend (or flash, where math cannot fit)
before it is timed.

Sections:
  ceiling  HBM read bandwidth (best of torch sum / amax over 4 GiB), device copy
  decode   fp16 K/V, 32 q heads / 8 kv heads, head_dim 128, batch {1,8,32,64} x
           kv_len {1K,4K,16K,32K,128K}: krserve vs SDPA flash / cuDNN / math
  int8     krserve decode over its INT8 cache vs cuDNN (and krserve) over fp16,
           and the INT8 output's normwise error against the fp16 cache's
  rope     16K tokens x 32 heads x 128: krserve RoPE in place, RoPE + append
           into an fp16 cache, RoPE + quantise + append into an INT8 cache, and
           torch's eager rotate-half
  prefill  FA3-paper shapes (batch x seq = 16K, heads x head_dim = 2048), seq
           512 .. 32K, head_dim 64/128, causal or not, fp16/bf16: TFLOP/s of
           krserve vs SDPA flash / cuDNN / efficient
  accuracy prefill error against a float64 oracle: krserve and torch's backends
  chunked  512 new tokens over 16K cached (fp16 and INT8 caches, plain tensors)
           vs torch with a lower-right causal mask

Usage: bench_sdpa.py --lib build/libkrserve.so [--out DIR] [--quick]
Writes DIR/bench_gpu.json and DIR/bench_gpu.md; prints the tables last.
"""
import argparse
import ctypes as C
import datetime
import json
import math
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# ---- the C API through ctypes ---------------------------------------------------
KR_F32, KR_F16, KR_BF16, KR_I8 = 0, 1, 2, 3
KR_CPU, KR_CUDA = 0, 1


class Device(C.Structure):
    _fields_ = [("type", C.c_int), ("index", C.c_int32)]


class Tensor(C.Structure):
    _fields_ = [("data", C.c_void_p), ("dtype", C.c_int), ("device", Device),
                ("shape", C.c_int64 * 4), ("stride", C.c_int64 * 4)]


class KvOptions(C.Structure):
    _fields_ = [("n_layers", C.c_int64), ("batch", C.c_int64), ("capacity", C.c_int64),
                ("n_kv_heads", C.c_int64), ("head_dim", C.c_int64), ("dtype", C.c_int),
                ("device", Device)]


class RopeParams(C.Structure):
    _fields_ = [("theta", C.c_double), ("rotary_dim", C.c_int64), ("layout", C.c_int),
                ("scaling", C.c_int), ("factor", C.c_double), ("low_freq_factor", C.c_double),
                ("high_freq_factor", C.c_double), ("original_max_position_embeddings", C.c_int64),
                ("beta_fast", C.c_double), ("beta_slow", C.c_double), ("mscale", C.c_double),
                ("mscale_all_dim", C.c_double), ("attention_factor", C.c_double),
                ("yarn_no_truncate", C.c_int32)]


class AttnParams(C.Structure):
    _fields_ = [("scale", C.c_float), ("causal", C.c_int32), ("window_left", C.c_int64),
                ("window_right", C.c_int64), ("mask", C.c_void_p), ("lse", C.c_void_p),
                ("kv_lens", C.c_void_p)]


class Counters(C.Structure):
    _fields_ = [("calls", C.c_int64), ("accelerated", C.c_int64), ("fallbacks", C.c_int64),
                ("last_reason", C.c_char * 256)]


class FeatureInfo(C.Structure):
    _fields_ = [("enabled", C.c_int32), ("available", C.c_int32), ("backend", C.c_char * 32),
                ("reason", C.c_char * 256), ("counters", Counters)]


TORCH_TO_KR = {torch.float32: KR_F32, torch.float16: KR_F16, torch.bfloat16: KR_BF16,
               torch.int8: KR_I8}
FEATURES = ["flash_attention", "fused_rope", "kv_quantization"]


class Krserve:
    def __init__(self, path):
        self.lib = L = C.CDLL(path)
        L.kr_context_create.argtypes = [C.c_void_p, C.POINTER(C.c_void_p), C.c_char_p, C.c_size_t]
        L.kr_context_last_error.restype = C.c_char_p
        L.kr_context_last_error.argtypes = [C.c_void_p]
        L.kr_context_set_stream.argtypes = [C.c_void_p, Device, C.c_void_p]
        L.kr_attention.argtypes = [C.c_void_p] + [C.POINTER(Tensor)] * 4 + [C.c_void_p]
        L.kr_rope.argtypes = [C.c_void_p, C.POINTER(Tensor), C.c_void_p, C.POINTER(RopeParams)]
        L.kr_rope_params_default.restype = RopeParams
        L.kr_kv_cache_create.argtypes = [C.c_void_p, C.POINTER(KvOptions), C.POINTER(C.c_void_p)]
        L.kr_kv_cache_free.argtypes = [C.c_void_p]
        L.kr_kv_cache_append.argtypes = [C.c_void_p, C.c_void_p, C.c_int64, C.POINTER(Tensor),
                                         C.POINTER(Tensor), C.c_void_p, C.c_void_p,
                                         C.POINTER(RopeParams)]
        L.kr_kv_cache_attention.argtypes = [C.c_void_p, C.c_void_p, C.c_int64, C.POINTER(Tensor),
                                            C.POINTER(Tensor), C.c_void_p]
        L.kr_kv_cache_reset.argtypes = [C.c_void_p, C.c_void_p]
        L.kr_accel_feature_info.argtypes = [C.c_void_p, C.c_int, C.POINTER(FeatureInfo)]
        L.kr_context_free.argtypes = [C.c_void_p]
        self.ctx = C.c_void_p()
        err = C.create_string_buffer(512)
        if L.kr_context_create(None, C.byref(self.ctx), err, 512) != 0:
            raise RuntimeError("kr_context_create: " + err.value.decode())
        self.dev = Device(KR_CUDA, torch.cuda.current_device())
        self.check(L.kr_context_set_stream(self.ctx, self.dev,
                                           C.c_void_p(torch.cuda.current_stream().cuda_stream)))

    def check(self, status):
        if status != 0:
            raise RuntimeError("krserve status %d: %s" % (
                status, self.lib.kr_context_last_error(self.ctx).decode()))

    def view(self, t, logical, strides):
        """A kr_tensor over torch tensor t: logical [b, s, h, d] shape and element strides."""
        return Tensor(t.data_ptr(), TORCH_TO_KR[t.dtype], self.dev, (C.c_int64 * 4)(*logical),
                      (C.c_int64 * 4)(*strides))

    def bshd(self, t):  # torch [B, S, H, D] contiguous
        return self.view(t, t.shape, t.stride())

    def bhsd(self, t):  # torch [B, H, S, D] contiguous, seen as [B, S, H, D]
        B, H, S, D = t.shape
        s = t.stride()
        return self.view(t, (B, S, H, D), (s[0], s[2], s[1], s[3]))

    def counters(self):
        out = {}
        for i, name in enumerate(FEATURES):
            fi = FeatureInfo()
            self.check(self.lib.kr_accel_feature_info(self.ctx, i, C.byref(fi)))
            out[name] = {"backend": fi.backend.decode(), "calls": fi.counters.calls,
                         "accelerated": fi.counters.accelerated,
                         "fallbacks": fi.counters.fallbacks,
                         "last_reason": fi.counters.last_reason.decode()}
        return out


KR_ONLY = False  # --kr-only: time krserve alone (the kernel lab compares its variants)

# ---- timing ------------------------------------------------------------------------------
FLUSH = None
# ~1 ms at H100/H200 clocks: longer than any implementation's host time per call. Until
# 2026-11-28 it was ~200 us, and torch's flash path takes 110-280 us of host time a decode
# call (tests/gpu/kernel_times.py), so some of its small-cell repeats timed host work.
SLEEP_CYCLES = 2000000


def time_once(fn):
    """Milliseconds of one fn(): L2 flushed before it, and the call queued
    behind a GPU sleep, so CUDA events measure device time."""
    FLUSH.zero_()
    # Keep the GPU busy while the host queues the call, so the events
    # time the device work and not any implementation's host overhead.
    torch.cuda._sleep(SLEEP_CYCLES)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b)


def timed(fn, reps, warmup=3):
    """Median / min milliseconds of fn() over reps (time_once each)."""
    for _ in range(warmup):
        fn()
    times = [time_once(fn) for _ in range(reps)]
    return statistics.median(times), min(times)


def timed_interleaved(fns, reps, warmup=3):
    """Medians (ms) of several implementations of one call, by time_once, but
    taking turns rep by rep, so that clock and thermal drift over the
    run falls on all of them alike (the prefill A/B of plugin variants)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            times[i].append(time_once(fn))
    return [statistics.median(t) for t in times]


def reps_for(bytes_moved, quick):
    base = 10 if quick else 40
    return max(5, min(base, int(base * 2e9 / max(bytes_moved, 1))))


def rel_err(got, want):
    got, want = got.double(), want.double()
    d = torch.linalg.vector_norm(got - want).item()
    n = torch.linalg.vector_norm(want).item()
    return d / n if n else d


# ---- sections --------------------------------------------------------------------------------
def ceiling(quick):
    n = (1 if quick else 4) << 30
    x = torch.empty(n // 2, dtype=torch.float16, device="cuda").normal_()
    best = 0.0
    for name, fn in (("sum", lambda: x.sum()), ("amax", lambda: x.amax())):
        med, _ = timed(fn, 10)
        best = max(best, n / (med * 1e-3))
    y = torch.empty_like(x)
    med, _ = timed(lambda: y.copy_(x), 10)
    copy = 2 * n / (med * 1e-3)
    del x, y
    torch.cuda.empty_cache()
    return {"read_bw": best, "copy_bw_rw": copy}


def sdpa(backend, q, k, v, causal=False, mask=None):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              enable_gqa=mask is None)


SDPA_BACKENDS = (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                 ("efficient", SDPBackend.EFFICIENT_ATTENTION))


KR80 = None  # a context whose prefill runs on the sm_80 kernel (cc 9.0 cards only)
AB = []  # --ab NAME=PLUGIN: (name, context) pairs whose prefill is timed turn about with ours


def prefill_kernel_counts():
    """Prefill calls served by each kernel, from the plugin itself."""
    path = os.environ.get("KRSERVE_PLUGIN_PATH")
    try:
        lib = C.CDLL(path)  # the copy libkrserve loaded (same path, same handle)
        counts = (C.c_int64 * 2)()
        lib.kr_cu_prefill_counts(counts)
        return {"sm80_mma_sync": counts[0], "sm90a_wgmma": counts[1]}
    except (OSError, AttributeError, TypeError):
        return None


def prefill(kr, quick):
    """FA3-paper shapes: batch x seq = 16K tokens (one sequence at 32K), heads x
    head_dim = 2048; TFLOP/s = 4 B H S^2 D (halved when causal) / time."""
    seqs = [512, 2048, 8192, 16384] if quick else [512, 1024, 2048, 4096, 8192, 16384, 32768]
    # KR_BENCH_SEQS / KR_BENCH_HEAD_DIMS (comma lists) narrow the grid for a lab round
    seqs = [int(x) for x in os.environ.get("KR_BENCH_SEQS", "").split(",") if x] or seqs
    dims = [int(x) for x in os.environ.get("KR_BENCH_HEAD_DIMS", "").split(",") if x] or [64, 128]
    rows = []
    for D in dims:
        H = 2048 // D
        for causal in (False, True):
            for dt in (torch.float16, torch.bfloat16):
                for S in seqs:
                    B = max(1, 16384 // S)
                    torch.manual_seed(S * 7 + D)
                    q, k, v = (torch.randn(B, S, H, D, dtype=dt, device="cuda") for _ in range(3))
                    out = torch.empty_like(q)
                    tq, tk, tv, to = kr.bshd(q), kr.bshd(k), kr.bshd(v), kr.bshd(out)
                    prm = AttnParams(0.0, int(causal), -1, -1, None, None, None)
                    run_kr = lambda: kr.check(kr.lib.kr_attention(
                        kr.ctx, C.byref(tq), C.byref(tk), C.byref(tv), C.byref(to),
                        C.byref(prm)))
                    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                    flops = 4.0 * B * H * S * S * D * (0.5 if causal else 1.0)
                    row = {"head_dim": D, "heads": H, "causal": causal,
                           "dtype": str(dt).split(".")[-1], "batch": B, "seq": S, "flops": flops}
                    want = sdpa(SDPBackend.FLASH_ATTENTION, qt, kt, vt, causal)
                    out.fill_(float("nan"))
                    run_kr()
                    torch.cuda.synchronize()
                    row["err_vs_flash"] = rel_err(out.transpose(1, 2), want)
                    reps = 5 if quick else 15
                    tol = 2e-3 if dt == torch.float16 else 1.5e-2
                    if not row["err_vs_flash"] <= tol:
                        row["wrong"] = True
                    elif AB:
                        # every variant checked against flash, then all timed turn about
                        # (torch's backends too unless --kr-only)
                        names, fns = ["krserve"], [run_kr]
                        for name, ctx in AB:
                            run_v = (lambda c: lambda: c.check(c.lib.kr_attention(
                                c.ctx, C.byref(tq), C.byref(tk), C.byref(tv), C.byref(to),
                                C.byref(prm))))(ctx)
                            out.fill_(float("nan"))
                            run_v()
                            torch.cuda.synchronize()
                            if rel_err(out.transpose(1, 2), want) <= tol:
                                names.append("ab_" + name)
                                fns.append(run_v)
                            else:
                                row["ab_" + name + "_wrong"] = True
                        for name, be in SDPA_BACKENDS if not KR_ONLY else ():
                            names.append(name)
                            fns.append((lambda b: lambda: sdpa(b, qt, kt, vt, causal))(be))
                        for name, ms in zip(names, timed_interleaved(fns, reps)):
                            row[name + "_ms"] = ms
                    else:
                        row["krserve_ms"] = timed(run_kr, reps)[0]
                    if KR80 is not None:  # the sm_80 kernel on the same card, same run
                        run80 = lambda: KR80.check(KR80.lib.kr_attention(
                            KR80.ctx, C.byref(tq), C.byref(tk), C.byref(tv), C.byref(to),
                            C.byref(prm)))
                        out.fill_(float("nan"))
                        run80()
                        torch.cuda.synchronize()
                        row["err_sm80_vs_flash"] = rel_err(out.transpose(1, 2), want)
                        if row["err_sm80_vs_flash"] <= tol:
                            row["krserve_sm80_ms"] = timed(run80, reps)[0]
                    for name, be in SDPA_BACKENDS if not (KR_ONLY or AB) else ():
                        try:
                            row[name + "_ms"] = timed(lambda: sdpa(be, qt, kt, vt, causal), reps)[0]
                        except Exception as e:
                            row[name + "_ms"] = None
                            row[name + "_note"] = str(e).splitlines()[0][:160]
                    rows.append(row)
                    del q, k, v, out, want
                    torch.cuda.empty_cache()
                    tf = lambda ms: "-" if not ms else "%.0f" % (flops / (ms * 1e-3) / 1e12)
                    print("prefill D=%d %s %s S=%d: krserve %s TFLOP/s (sm80 kernel %s), flash %s, "
                          "cudnn %s" % (D, "causal" if causal else "full", row["dtype"], S,
                                        tf(row.get("krserve_ms")), tf(row.get("krserve_sm80_ms")),
                                        tf(row.get("flash_ms")), tf(row.get("cudnn_ms"))),
                          flush=True)
    return rows


def prefill_accuracy(kr, quick):
    """Normwise error against a float64 oracle (torch math in double) of
    krserve and of torch's flash and cuDNN backends, on the same inputs."""
    rows = []
    B, S, H = 1, 2048, 4
    for D in (64, 128):
        for causal in (False, True):
            for dt in (torch.float16, torch.bfloat16):
                torch.manual_seed(D + causal)
                q, k, v = (torch.randn(B, S, H, D, dtype=dt, device="cuda") for _ in range(3))
                out = torch.empty_like(q)
                tq, tk, tv, to = kr.bshd(q), kr.bshd(k), kr.bshd(v), kr.bshd(out)
                prm = AttnParams(0.0, int(causal), -1, -1, None, None, None)
                kr.check(kr.lib.kr_attention(kr.ctx, C.byref(tq), C.byref(tk), C.byref(tv),
                                             C.byref(to), C.byref(prm)))
                qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                with sdpa_kernel(SDPBackend.MATH):
                    oracle = F.scaled_dot_product_attention(qt.double(), kt.double(), vt.double(),
                                                            is_causal=causal)
                row = {"head_dim": D, "causal": causal, "dtype": str(dt).split(".")[-1],
                       "krserve": rel_err(out.transpose(1, 2), oracle)}
                for name, be in SDPA_BACKENDS:
                    try:
                        row[name] = rel_err(sdpa(be, qt, kt, vt, causal), oracle)
                    except Exception:
                        row[name] = None
                rows.append(row)
                print("accuracy D=%d causal=%d %s: krserve %.3g flash %s" % (
                    D, causal, row["dtype"], row["krserve"], row["flash"]), flush=True)
    return rows


def chunked_prefill(kr, quick):
    """512 new tokens over 16K cached, causal (bottom-right), 32 heads x 128:
    krserve over its fp16 and INT8 caches and over plain tensors vs torch with
    a lower-right causal mask (flash, efficient)."""
    from torch.nn.attention.bias import causal_lower_right
    H, D, ctx_len, new = 32, 128, 16384, 512
    rows = []
    for Hkv in (32, 8):
        L = ctx_len + new
        torch.manual_seed(Hkv)
        k = torch.randn(1, L, Hkv, D, dtype=torch.float16, device="cuda")
        v = torch.randn(1, L, Hkv, D, dtype=torch.float16, device="cuda")
        q = torch.randn(1, new, H, D, dtype=torch.float16, device="cuda")
        flops = 4.0 * H * D * (new * ctx_len + new * (new + 1) / 2)
        row = {"heads": H, "kv_heads": Hkv, "new": new, "cached": ctx_len, "flops": flops}
        prm = AttnParams(0.0, 1, -1, -1, None, None, None)
        tq, tk, tv = kr.bshd(q), kr.bshd(k), kr.bshd(v)
        outs = {}
        for name, dtype in (("fp16_cache", KR_F16), ("int8_cache", KR_I8)):
            c = make_cache(kr, 1, L, Hkv, D, dtype)
            kr.check(kr.lib.kr_kv_cache_append(kr.ctx, c, 0, C.byref(tk), C.byref(tv), None, None,
                                               None))
            o = torch.empty_like(q)
            to = kr.bshd(o)
            run = lambda: kr.check(kr.lib.kr_kv_cache_attention(kr.ctx, c, 0, C.byref(tq),
                                                                C.byref(to), C.byref(prm)))
            run()
            torch.cuda.synchronize()
            outs[name] = o
            row["krserve_" + name + "_ms"] = timed(run, 10)[0]
            kr.lib.kr_kv_cache_free(c)
        o = torch.empty_like(q)
        to = kr.bshd(o)
        run = lambda: kr.check(kr.lib.kr_attention(kr.ctx, C.byref(tq), C.byref(tk), C.byref(tv),
                                                   C.byref(to), C.byref(prm)))
        row["krserve_tensors_ms"] = timed(run, 10)[0]
        qt = q.transpose(1, 2)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        if Hkv != H:  # torch's masked path has no GQA: K/V expanded first (untimed)
            kt = kt.repeat_interleave(H // Hkv, 1)
            vt = vt.repeat_interleave(H // Hkv, 1)
        mask = causal_lower_right(new, L)
        want = sdpa(SDPBackend.FLASH_ATTENTION, qt, kt, vt, mask=mask)
        row["err_fp16_cache_vs_flash"] = rel_err(outs["fp16_cache"].transpose(1, 2), want)
        row["err_int8_cache_vs_flash"] = rel_err(outs["int8_cache"].transpose(1, 2), want)
        for name, be in SDPA_BACKENDS:
            try:
                row[name + "_ms"] = timed(lambda: sdpa(be, qt, kt, vt, mask=mask), 10)[0]
            except Exception as e:
                row[name + "_ms"] = None
                row[name + "_note"] = str(e).splitlines()[0][:160]
        rows.append(row)
        print("chunked prefill %d:%d: fp16 cache %.3f ms, int8 cache %.3f ms, tensors %.3f ms, "
              "flash %s ms, err %.2g / %.2g" % (
                  H, Hkv, row["krserve_fp16_cache_ms"], row["krserve_int8_cache_ms"],
                  row["krserve_tensors_ms"], fmt(row.get("flash_ms"), 3),
                  row["err_fp16_cache_vs_flash"], row["err_int8_cache_vs_flash"]), flush=True)
        del k, v, q, kt, vt, want
        torch.cuda.empty_cache()
    return rows


def decode(kr, quick):
    H, Hkv, D = 32, 8, 128
    batches = [1, 8] if quick else [1, 8, 32, 64]
    lens = [1024, 4096, 32768] if quick else [1024, 4096, 16384, 32768, 131072]
    rows = []
    for B in batches:
        for Lk in lens:
            torch.manual_seed(B * 1000003 + Lk)
            q = torch.randn(B, H, 1, D, dtype=torch.float16, device="cuda")
            k = torch.randn(B, Hkv, Lk, D, dtype=torch.float16, device="cuda")
            v = torch.randn(B, Hkv, Lk, D, dtype=torch.float16, device="cuda")
            out = torch.empty(B, 1, H, D, dtype=torch.float16, device="cuda")
            kv_bytes = 2 * k.numel() * 2
            tq, tk, tv = kr.bhsd(q), kr.bhsd(k), kr.bhsd(v)
            to = kr.bshd(out)
            run_kr = lambda: kr.check(kr.lib.kr_attention(kr.ctx, C.byref(tq), C.byref(tk),
                                                          C.byref(tv), C.byref(to), None))
            row = {"batch": B, "kv_len": Lk, "kv_bytes": kv_bytes}
            # check before timing: against flash (math cannot hold the big cells)
            want = sdpa(SDPBackend.FLASH_ATTENTION, q, k, v)
            out.fill_(float("nan"))
            run_kr()
            torch.cuda.synchronize()
            row["err_vs_flash"] = rel_err(out.transpose(1, 2), want)
            if not row["err_vs_flash"] <= 2e-3:
                row["krserve_us"] = None
                row["wrong"] = True
            else:
                reps = reps_for(kv_bytes, quick)
                med, mn = timed(run_kr, reps)
                row["krserve_us"], row["krserve_min_us"] = med * 1e3, mn * 1e3
            for name, be in (("flash", SDPBackend.FLASH_ATTENTION),
                             ("cudnn", SDPBackend.CUDNN_ATTENTION),
                             ("math", SDPBackend.MATH)):
                if KR_ONLY:
                    row[name + "_us"] = None
                    continue
                if name == "math" and kv_bytes * (H // Hkv) > 8 << 30:
                    row[name + "_us"] = None
                    row[name + "_note"] = "skipped: the math backend expands K/V 4x for GQA"
                    continue
                try:
                    med, _ = timed(lambda: sdpa(be, q, k, v), reps_for(kv_bytes, quick))
                    row[name + "_us"] = med * 1e3
                except Exception as e:  # a backend that refuses the case
                    row[name + "_us"] = None
                    row[name + "_note"] = str(e).splitlines()[0][:160]
            rows.append(row)
            del q, k, v, out, want
            torch.cuda.empty_cache()
            print("decode B=%d L=%d: krserve %s us, flash %s, cudnn %s" % (
                B, Lk, fmt(row.get("krserve_us")), fmt(row.get("flash_us")),
                fmt(row.get("cudnn_us"))), flush=True)
    return rows


def make_cache(kr, B, cap, Hkv, D, dtype):
    o = KvOptions(1, B, cap, Hkv, D, dtype, kr.dev)
    c = C.c_void_p()
    kr.check(kr.lib.kr_kv_cache_create(kr.ctx, C.byref(o), C.byref(c)))
    return c


def int8_decode(kr, quick):
    H, Hkv, D = 32, 8, 128
    cells = [(8, 32768)] if quick else [(8, 32768), (16, 32768), (8, 131072), (32, 32768),
                                        (64, 32768)]
    rows = []
    for B, Lk in cells:
        torch.manual_seed(B + Lk)
        k = torch.randn(B, Lk, Hkv, D, dtype=torch.float16, device="cuda")
        v = torch.randn(B, Lk, Hkv, D, dtype=torch.float16, device="cuda")
        q = torch.randn(B, 1, H, D, dtype=torch.float16, device="cuda")
        o8 = torch.empty_like(q)
        o16 = torch.empty_like(q)
        c8 = make_cache(kr, B, Lk, Hkv, D, KR_I8)
        c16 = make_cache(kr, B, Lk, Hkv, D, KR_F16)
        tk, tv = kr.bshd(k), kr.bshd(v)
        for c in (c8, c16):
            kr.check(kr.lib.kr_kv_cache_append(kr.ctx, c, 0, C.byref(tk), C.byref(tv), None, None,
                                               None))
        tq, t8, t16 = kr.bshd(q), kr.bshd(o8), kr.bshd(o16)
        run8 = lambda: kr.check(kr.lib.kr_kv_cache_attention(kr.ctx, c8, 0, C.byref(tq),
                                                             C.byref(t8), None))
        run16 = lambda: kr.check(kr.lib.kr_kv_cache_attention(kr.ctx, c16, 0, C.byref(tq),
                                                              C.byref(t16), None))
        run8()
        run16()
        torch.cuda.synchronize()
        err = rel_err(o8, o16)
        fp16_bytes = 2 * k.numel() * 2
        int8_bytes = 2 * B * Lk * Hkv * (D + 2 + (D + 31) // 32)
        reps = reps_for(fp16_bytes, quick)
        m8, _ = timed(run8, reps)
        m16, _ = timed(run16, reps)
        kq, kk, kv_ = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        try:
            mc, _ = timed(lambda: sdpa(SDPBackend.CUDNN_ATTENTION, kq, kk, kv_), reps)
        except Exception:
            mc = None
        row = {"batch": B, "kv_len": Lk, "int8_us": m8 * 1e3, "fp16_cache_us": m16 * 1e3,
               "cudnn_fp16_us": mc * 1e3 if mc else None, "int8_bytes": int8_bytes,
               "fp16_bytes": fp16_bytes, "err_int8_vs_fp16": err}
        rows.append(row)
        kr.lib.kr_kv_cache_free(c8)
        kr.lib.kr_kv_cache_free(c16)
        del k, v, q, o8, o16
        torch.cuda.empty_cache()
        print("int8 B=%d L=%d: int8 %s us, fp16 cache %s, cudnn %s, err %.3g%%" % (
            B, Lk, fmt(row["int8_us"]), fmt(row["fp16_cache_us"]), fmt(row["cudnn_fp16_us"]),
            100 * err), flush=True)
    return rows


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope(kr, quick):
    T, H, D = 16384, 32, 128
    rows = []
    for dt, kdt in ((torch.bfloat16, KR_BF16), (torch.float16, KR_F16)):
        x = torch.randn(1, T, H, D, dtype=dt, device="cuda")
        pos = torch.arange(T, dtype=torch.int64, device="cuda")
        p = kr.lib.kr_rope_params_default()
        tx = kr.bshd(x)
        run = lambda: kr.check(kr.lib.kr_rope(kr.ctx, C.byref(tx), C.c_void_p(pos.data_ptr()),
                                              C.byref(p)))
        # correctness against torch's rotate-half in float32 (positions 0..T-1)
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2, device="cuda", dtype=torch.float64) / D))
        ang = pos.double()[:, None] * inv[None, :]
        cos = torch.cat((ang.cos(), ang.cos()), -1).float()[None, :, None, :]
        sin = torch.cat((ang.sin(), ang.sin()), -1).float()[None, :, None, :]
        want = (x.float() * cos + rotate_half(x.float()) * sin)
        y = x.clone()
        ty = kr.bshd(y)
        kr.check(kr.lib.kr_rope(kr.ctx, C.byref(ty), C.c_void_p(pos.data_ptr()), C.byref(p)))
        torch.cuda.synchronize()
        err = rel_err(y.float(), want)
        nbytes = 2 * x.numel() * x.element_size()
        med, _ = timed(run, 40)
        cos_t, sin_t = cos.to(dt), sin.to(dt)
        med_t, _ = timed(lambda: x * cos_t + rotate_half(x) * sin_t, 40)
        rows.append({"op": "rope in place", "dtype": str(dt).split(".")[-1], "us": med * 1e3,
                     "bytes": nbytes, "tbps": nbytes / (med * 1e-3) / 1e12, "err": err,
                     "torch_eager_us": med_t * 1e3})
        print("rope %s: %.1f us = %.2f TB/s (eager torch %.1f us), err %.2g" % (
            dt, med * 1e3, nbytes / (med * 1e-3) / 1e12, med_t * 1e3, err), flush=True)
        # RoPE (+ quantise) + append: K and V of T tokens x H kv heads, steady state
        reps = 8 if quick else 20
        for cache_dt, name in ((KR_F16, "rope + append -> fp16 cache"),
                               (KR_I8, "rope + quantise + append -> int8 cache")):
            k = torch.randn(1, T, H, D, dtype=dt, device="cuda")
            v = torch.randn(1, T, H, D, dtype=dt, device="cuda")
            one = 1
            cap = (reps + 4 + 1) * T + one
            c = make_cache(kr, 1, cap, H, D, cache_dt)
            tk, tv = kr.bshd(k), kr.bshd(v)
            k1 = kr.view(k, (1, 1, H, D), k.stride())
            v1 = kr.view(v, (1, 1, H, D), v.stride())
            kr.check(kr.lib.kr_kv_cache_append(kr.ctx, c, 0, C.byref(k1), C.byref(v1), None, None,
                                               C.byref(p)))  # fixes the int8 factors, untimed
            run_a = lambda: kr.check(kr.lib.kr_kv_cache_append(
                kr.ctx, c, 0, C.byref(tk), C.byref(tv), None, None, C.byref(p)))
            med, _ = timed(run_a, reps, warmup=3)
            row_bytes = D * 2 if cache_dt == KR_F16 else D + 2 + (D + 31) // 32
            nbytes = 2 * T * H * (D * x.element_size() + row_bytes)
            rows.append({"op": name, "dtype": str(dt).split(".")[-1], "us": med * 1e3,
                         "bytes": nbytes, "tbps": nbytes / (med * 1e-3) / 1e12})
            print("%s %s: %.1f us = %.2f TB/s" % (name, dt, med * 1e3,
                                                  nbytes / (med * 1e-3) / 1e12), flush=True)
            kr.lib.kr_kv_cache_free(c)
            del k, v
        del x, y, want
        torch.cuda.empty_cache()
    return rows


def fmt(x, nd=1):
    return "-" if x is None else ("%.*f" % (nd, x))


def report(res):
    ce = res["ceiling"]
    lines = ["# krserve CUDA vs torch SDPA — %s, %s, torch %s" % (
        res["date"], res["card"], res["torch"]), "",
        "Ceilings: HBM read %.2f TB/s (best of torch sum/amax over 4 GiB); device copy %.2f TB/s "
        "(read+write)." % (ce["read_bw"] / 1e12, ce["copy_bw_rw"] / 1e12), "",
        "## Decode, fp16 K/V, 32 q / 8 kv heads, head_dim 128 (µs, median; TB/s = KV bytes / time)",
        "", "| batch × kv_len | KV MB | krserve µs | TB/s | % of read | flash µs | cuDNN µs | math µs "
        "| vs best of flash/cuDNN |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["decode"]:
        ours = r.get("krserve_us")
        best = min([x for x in (r.get("flash_us"), r.get("cudnn_us")) if x] or [float("nan")])
        tb = r["kv_bytes"] / (ours * 1e-6) / 1e12 if ours else None
        lines.append("| %d × %dK | %.0f | %s | %s | %s | %s | %s | %s | %s |" % (
            r["batch"], r["kv_len"] // 1024, r["kv_bytes"] / 1e6,
            "WRONG" if r.get("wrong") else fmt(ours), fmt(tb, 2),
            fmt(100 * tb * 1e12 / ce["read_bw"], 0) if tb else "-", fmt(r.get("flash_us")),
            fmt(r.get("cudnn_us")), fmt(r.get("math_us")),
            ("%.2f×" % (best / ours)) if ours and best == best else "-"))
    lines += ["", "## Decode over the INT8 cache (µs, median)", "",
              "| batch × kv_len | krserve int8 | krserve fp16 cache | cuDNN fp16 | int8 vs cuDNN "
              "| int8 TB/s (its bytes) | error vs fp16 cache |", "|---|---|---|---|---|---|---|"]
    for r in res["int8"]:
        c = r["cudnn_fp16_us"]
        lines.append("| %d × %dK | %s | %s | %s | %s | %.2f | %.3f%% |" % (
            r["batch"], r["kv_len"] // 1024, fmt(r["int8_us"]), fmt(r["fp16_cache_us"]), fmt(c),
            ("%.2f×" % (c / r["int8_us"])) if c else "-",
            r["int8_bytes"] / (r["int8_us"] * 1e-6) / 1e12, 100 * r["err_int8_vs_fp16"]))
    lines += ["", "## RoPE, 16K tokens × 32 heads × 128 (effective TB/s = bytes read + written / time)",
              "", "| op | dtype | µs | TB/s | eager torch µs |", "|---|---|---|---|---|"]
    for r in res["rope"]:
        lines.append("| %s | %s | %.1f | %.2f | %s |" % (r["op"], r["dtype"], r["us"], r["tbps"],
                                                         fmt(r.get("torch_eager_us"))))
    if res.get("prefill"):
        tf = lambda r, k: (r["flops"] / (r[k] * 1e-3) / 1e12) if r.get(k) else None
        lines += ["", "## Prefill, FA3-paper shapes (batch × seq = 16K, heads × head_dim = 2048), "
                  "TFLOP/s (krserve: the kernel the card gets; sm_80 kernel: KRSERVE_CUDA_PREFILL=sm80 "
                  "on the same card)", "", "| head_dim | mask | dtype | seq | krserve | sm_80 kernel "
                  "| flash | cuDNN | efficient | vs flash | vs cuDNN |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["prefill"]:
            ours, fl, cu = tf(r, "krserve_ms"), tf(r, "flash_ms"), tf(r, "cudnn_ms")
            lines.append("| %d | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
                r["head_dim"], "causal" if r["causal"] else "none", r["dtype"], r["seq"],
                "WRONG" if r.get("wrong") else fmt(ours, 0), fmt(tf(r, "krserve_sm80_ms"), 0),
                fmt(fl, 0), fmt(cu, 0),
                fmt(tf(r, "efficient_ms"), 0), ("%.2f×" % (ours / fl)) if ours and fl else "-",
                ("%.2f×" % (ours / cu)) if ours and cu else "-"))
    if res.get("prefill_accuracy"):
        lines += ["", "## Prefill accuracy: normwise error vs float64 oracle (B 1, seq 2048, 4 heads)",
                  "", "| head_dim | causal | dtype | krserve | flash | cuDNN | efficient |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["prefill_accuracy"]:
            e = lambda x: "-" if x is None else "%.2e" % x
            lines.append("| %d | %s | %s | %s | %s | %s | %s |" % (
                r["head_dim"], r["causal"], r["dtype"], e(r["krserve"]), e(r["flash"]),
                e(r["cudnn"]), e(r["efficient"])))
    if res.get("chunked"):
        lines += ["", "## Chunked prefill: 512 new tokens over 16K cached, causal, head_dim 128 (ms)",
                  "", "| heads | krserve fp16 cache | krserve int8 cache | krserve tensors | flash "
                  "| efficient | cuDNN | fp16 cache vs flash | error fp16 / int8 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["chunked"]:
            fl = r.get("flash_ms")
            lines.append("| %d:%d | %.3f | %.3f | %.3f | %s | %s | %s | %s | %.2g / %.2g |" % (
                r["heads"], r["kv_heads"], r["krserve_fp16_cache_ms"], r["krserve_int8_cache_ms"],
                r["krserve_tensors_ms"], fmt(fl, 3), fmt(r.get("efficient_ms"), 3),
                fmt(r.get("cudnn_ms"), 3),
                ("%.2f×" % (fl / r["krserve_fp16_cache_ms"])) if fl else "-",
                r["err_fp16_cache_vs_flash"], r["err_int8_cache_vs_flash"]))
    lines += ["", "Counters (krserve context of this run): " + json.dumps(res["counters"])]
    if res.get("prefill_kernels"):
        lines += ["", "Prefill calls per kernel (plugin, whole run incl. the sm_80 context): "
                  + json.dumps(res["prefill_kernels"])]
    return "\n".join(lines) + "\n"


def open_krserve(lib):
    """A krserve context on a torch stream of our own (torch's default is the legacy
    NULL stream, which a NULL handle cannot name through kr_context_set_stream: NULL
    means the context's own stream), the L2-flush buffer allocated; None, after a
    SKIP line, where torch sees no CUDA device."""
    global FLUSH
    if not torch.cuda.is_available():
        print("SKIP: torch sees no CUDA device")
        return None
    FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    torch.cuda.set_stream(torch.cuda.Stream())
    return Krserve(lib)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="ceiling,decode,int8,rope,prefill,accuracy,chunked")
    ap.add_argument("--ab", action="append", default=[], metavar="NAME=PLUGIN",
                    help="prefill: also time this plugin (a context of its own), turn about "
                    "with ours and torch's backends in each cell (the kernel lab's A/B)")
    ap.add_argument("--kr-only", action="store_true",
                    help="prefill: time krserve only (results still checked against flash)")
    a = ap.parse_args()
    global KR_ONLY
    KR_ONLY = a.kr_only
    kr = open_krserve(a.lib)
    if kr is None:
        return 0
    only = a.only.split(",")
    global KR80
    if torch.cuda.get_device_capability() == (9, 0) and "prefill" in only and not a.ab:
        # a second context on the sm_80 prefill kernel (read when it opens the device)
        os.environ["KRSERVE_CUDA_PREFILL"] = "sm80"
        KR80 = Krserve(a.lib)
        del os.environ["KRSERVE_CUDA_PREFILL"]
    ours = os.environ.get("KRSERVE_PLUGIN_PATH")
    for spec in a.ab:
        name, path = spec.split("=", 1)
        os.environ["KRSERVE_PLUGIN_PATH"] = path  # read when the context opens
        AB.append((name, Krserve(a.lib)))
    if a.ab:
        if ours is None:
            del os.environ["KRSERVE_PLUGIN_PATH"]
        else:
            os.environ["KRSERVE_PLUGIN_PATH"] = ours
    res = {"date": datetime.date.today().isoformat(), "card": torch.cuda.get_device_name(),
           "torch": torch.__version__, "quick": a.quick}
    res["ceiling"] = ceiling(a.quick)
    res["decode"] = decode(kr, a.quick) if "decode" in only else []
    res["int8"] = int8_decode(kr, a.quick) if "int8" in only else []
    res["rope"] = rope(kr, a.quick) if "rope" in only else []
    res["prefill"] = prefill(kr, a.quick) if "prefill" in only else []
    res["prefill_accuracy"] = prefill_accuracy(kr, a.quick) if "accuracy" in only else []
    res["chunked"] = chunked_prefill(kr, a.quick) if "chunked" in only else []
    res["counters"] = kr.counters()
    res["prefill_kernels"] = prefill_kernel_counts()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench_gpu.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = report(res)
    with open(os.path.join(a.out, "bench_gpu.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
