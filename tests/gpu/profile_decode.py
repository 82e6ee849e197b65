#!/usr/bin/env python3
"""profile_decode.py - one decode (or, with --op prefill, prefill) shape for Nsight Compute:
krserve's kernel and torch SDPA's cuDNN and flash kernels on the same tensors, inside an NVTX
range named "prof", so

  ncu --nvtx --nvtx-include "prof/" --section SpeedOfLight --section WarpStateStats \\
      python3 tests/gpu/profile_decode.py --lib build/libkrserve.so --batch 8 --kv-len 32768

profiles only those kernels. Decode shape: 32 q heads / 8 kv heads, head_dim 128, fp16, BHSD
layout (what bench_sdpa.py times); --op int8: the same over an int8 cache (BSHD K/V appended).
Prefill: --batch x --seq tokens, 2048 / --head-dim heads, fp16, BSHD, --causal or not
(bench_sdpa.py's FA3-paper shapes).
"""
import argparse
import ctypes as C
import os
import sys

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sdpa as bs  # noqa: E402


def profiled(runs, warm=None):
    """Each of warm (default: runs) once, then runs inside the NVTX range "prof"."""
    for f in runs if warm is None else warm:
        f()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("prof")
    for f in runs:
        f()
    torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kv-len", type=int, default=32768)
    ap.add_argument("--op", choices=("decode", "int8", "prefill", "append"), default="decode")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    a = ap.parse_args()
    kr = bs.open_krserve(a.lib)
    if kr is None:
        return 0
    if a.op == "prefill":
        return prefill(kr, a)
    if a.op == "append":
        return append(kr, a)
    if a.op == "int8":
        return int8(kr, a)
    B, H, Hkv, D, L = a.batch, 32, 8, 128, a.kv_len
    q = torch.randn(B, H, 1, D, dtype=torch.float16, device="cuda")
    k = torch.randn(B, Hkv, L, D, dtype=torch.float16, device="cuda")
    v = torch.randn(B, Hkv, L, D, dtype=torch.float16, device="cuda")
    out = torch.empty(B, 1, H, D, dtype=torch.float16, device="cuda")
    tq, tk, tv, to = kr.bhsd(q), kr.bhsd(k), kr.bhsd(v), kr.bshd(out)
    run_kr = lambda: kr.check(kr.lib.kr_attention(kr.ctx, C.byref(tq), C.byref(tk), C.byref(tv),
                                                  C.byref(to), None))
    # the warm-up call sets up the workspace and the function attributes
    profiled([run_kr, lambda: bs.sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v),
              lambda: bs.sdpa(SDPBackend.FLASH_ATTENTION, q, k, v)])
    print("profiled B=%d L=%d" % (B, L))
    return 0


def int8(kr, a):
    """Decode over an int8 cache (--batch x --kv-len, 32:8 heads, head_dim 128), and cuDNN over
    the same K/V in fp16 (bench_sdpa.py's int8 part)."""
    B, H, Hkv, D, L = a.batch, 32, 8, 128, a.kv_len
    k, v = (torch.randn(B, L, Hkv, D, dtype=torch.float16, device="cuda") for _ in range(2))
    q = torch.randn(B, 1, H, D, dtype=torch.float16, device="cuda")
    out = torch.empty_like(q)
    c8 = bs.make_cache(kr, B, L, Hkv, D, bs.KR_I8)
    tk, tv, tq, to = kr.bshd(k), kr.bshd(v), kr.bshd(q), kr.bshd(out)
    kr.check(kr.lib.kr_kv_cache_append(kr.ctx, c8, 0, C.byref(tk), C.byref(tv), None, None, None))
    run8 = lambda: kr.check(kr.lib.kr_kv_cache_attention(kr.ctx, c8, 0, C.byref(tq), C.byref(to),
                                                         None))
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    profiled([run8, lambda: bs.sdpa(SDPBackend.CUDNN_ATTENTION, qt, kt, vt)])
    kr.lib.kr_kv_cache_free(c8)
    print("profiled int8 B=%d L=%d" % (B, L))
    return 0


def prefill(kr, a):
    B, S, D = a.batch, a.seq, a.head_dim
    H = 2048 // D
    q, k, v = (torch.randn(B, S, H, D, dtype=torch.float16, device="cuda") for _ in range(3))
    out = torch.empty_like(q)
    tq, tk, tv, to = kr.bshd(q), kr.bshd(k), kr.bshd(v), kr.bshd(out)
    prm = bs.AttnParams(0.0, int(a.causal), -1, -1, None, None, None)
    run_kr = lambda: kr.check(kr.lib.kr_attention(kr.ctx, C.byref(tq), C.byref(tk), C.byref(tv),
                                                  C.byref(to), C.byref(prm)))
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    profiled([run_kr, lambda: bs.sdpa(SDPBackend.CUDNN_ATTENTION, qt, kt, vt, a.causal),
              lambda: bs.sdpa(SDPBackend.FLASH_ATTENTION, qt, kt, vt, a.causal)])
    print("profiled prefill B=%d S=%d D=%d causal=%d" % (B, S, D, a.causal))
    return 0


def append(kr, a):
    """RoPE in place, RoPE + append into an fp16 cache and RoPE + quantise + append into an
    int8 cache: --seq tokens x 32 heads x 128, fp16 (bench_sdpa.py's rope part)."""
    T, H, D = a.seq, 32, 128
    x, k, v = (torch.randn(1, T, H, D, dtype=torch.float16, device="cuda") for _ in range(3))
    pos = torch.arange(T, dtype=torch.int64, device="cuda")
    p = kr.lib.kr_rope_params_default()
    tx, tk, tv = kr.bshd(x), kr.bshd(k), kr.bshd(v)
    k1 = kr.view(k, (1, 1, H, D), k.stride())
    v1 = kr.view(v, (1, 1, H, D), v.stride())
    caches = []
    for dt in (bs.KR_F16, bs.KR_I8):
        c = bs.make_cache(kr, 1, 2 * T + 1, H, D, dt)
        kr.check(kr.lib.kr_kv_cache_append(kr.ctx, c, 0, C.byref(k1), C.byref(v1), None, None,
                                           C.byref(p)))  # the int8 factors, outside the range
        caches.append(c)
    rope = lambda: kr.check(kr.lib.kr_rope(kr.ctx, C.byref(tx), C.c_void_p(pos.data_ptr()),
                                           C.byref(p)))
    app = lambda c: kr.check(kr.lib.kr_kv_cache_append(kr.ctx, c, 0, C.byref(tk), C.byref(tv),
                                                       None, None, C.byref(p)))
    profiled([rope] + [lambda c=c: app(c) for c in caches], warm=[rope])
    for c in caches:
        kr.lib.kr_kv_cache_free(c)
    print("profiled rope / append T=%d" % T)
    return 0


if __name__ == "__main__":
    sys.exit(main())
