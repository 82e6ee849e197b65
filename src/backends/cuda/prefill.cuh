/*
 * prefill.cuh — what the two prefill kernels (attention_prefill.cu, mma.sync
 * for sm_80+, and attention_hopper.cu, wgmma for sm_90a) share: a query
 * row's visible key range in 32-bit arithmetic and the stores of a row's
 * result from the accumulator layout both kernels use (a thread holds
 * channels 8 n + 2 (lane % 4) + {0, 1} of its row, o[n][2 half + e]).
 */
#ifndef KR_CUDA_PREFILL_CUH
#define KR_CUDA_PREFILL_CUH

#include "tc.cuh"

#define PF_LOG2E 1.4426950408889634f
#define PF_LN2 0.6931471805599453f

/* The visible key range [lo, hi) of query row i: cu_row_range in 32 bits. */
__device__ __forceinline__ void pf_range(const kr_cu_attention &a, int L, int i, int *lo, int *hi) {
    const int p = L - (int)a.Sq + i;
    int l = 0, h = L;
    if (a.causal && p + 1 < h) h = p + 1;
    if (a.window_right >= 0 && p + (int)a.window_right + 1 < h) h = p + (int)a.window_right + 1;
    if (a.window_left >= 0 && p - (int)a.window_left > l) l = p - (int)a.window_left;
    *lo = l;
    *hi = h < l ? l : h;
}

/* Row r's LSE (natural log) from its log2-domain max m and sum l: -inf for a
 * row that saw no key. */
__device__ __forceinline__ void pf_store_lse(const kr_cu_attention &a, int64_t b, int64_t h,
                                             int64_t r, float m, float l) {
    ((float *)a.lse.data)[cu_off(a.lse, b, h, r, 0)] =
        m == -INFINITY ? -INFINITY : (m + log2f(l)) * PF_LN2;
}

/* One row's output and LSE: o / l, or zeros and -inf when the row saw no key
 * (m stays -inf; a NaN score makes m NaN and passes through). */
__device__ __forceinline__ void pf_store_row(const kr_cu_attention &a, int64_t b, int64_t h,
                                             int64_t r, float m, float l, float (*o)[4], int half,
                                             const float *chan, const int D) {
    const int q4 = threadIdx.x % 4;
    if (r >= a.Sq) return;
    const bool empty = m == -INFINITY;
    const float inv = empty ? 0.0f : 1.0f / l;
    const int64_t off0 = cu_off(a.out, b, r, h, 0);
    char *row = (char *)a.out.data + 2 * off0;
    if ((a.out.dtype == KR_F16 || a.out.dtype == KR_BF16) && a.out.stride[3] == 1 &&
        (uintptr_t)row % 4 == 0 && !chan) { /* the common case: 4-byte stores into one row */
#pragma unroll
        for (int n = 0; n < D / 8; n++)
            *(unsigned *)(row + 2 * (8 * n + 2 * q4)) =
                tc_pack(o[n][2 * half] * inv, o[n][2 * half + 1] * inv, a.out.dtype);
    } else {
#pragma unroll
        for (int n = 0; n < D / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int c = 8 * n + 2 * q4 + e;
                cu_store(a.out.data, a.out.dtype, off0 + c * a.out.stride[3],
                         o[n][2 * half + e] * inv * (chan ? chan[c] : 1.0f));
            }
    }
    if (a.has_lse && q4 == 0) pf_store_lse(a, b, h, r, m, l);
}

/* A split's share of one row, for pf_merge: o / l and its log2-domain LSE
 * (0 and -inf for a row that saw no key in this split). */
__device__ __forceinline__ void pf_store_part(const kr_cu_attention &a, const kr_cu_prefill_ws &ws,
                                              int64_t split, int64_t b, int64_t h, int64_t r,
                                              float m, float l, float (*o)[4], int half,
                                              const float *chan, const int D) {
    const int q4 = threadIdx.x % 4;
    if (r >= a.Sq) return;
    const bool empty = m == -INFINITY;
    const float inv = empty ? 0.0f : 1.0f / l;
    const int64_t row = ((split * a.B + b) * a.H + h) * a.Sq + r;
    float *po = ws.part_o + row * D;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        const int c = 8 * n + 2 * q4;
        *(float2 *)(po + c) = make_float2(o[n][2 * half] * inv * (chan ? chan[c] : 1.0f),
                                          o[n][2 * half + 1] * inv * (chan ? chan[c + 1] : 1.0f));
    }
    if (q4 == 0) ws.part_lse[row] = empty ? -INFINITY : m + log2f(l);
}

/* The max (NaN-propagating) or the sum of v[0 .. n), n a power of two <= 8,
 * as a tree: depth log2 n instead of a chain of n. */
__device__ __forceinline__ float pf_tree(float *v, const int n, const bool is_max) {
#pragma unroll
    for (int k = 2; k >= 0; k--) { /* widths 4, 2, 1: constants once unrolled */
        const int w = 1 << k;
        if (n > w)
#pragma unroll
            for (int i = 0; i < w; i++) v[i] = is_max ? cu_nanmax(v[i], v[i + w]) : v[i] + v[i + w];
    }
    return v[0];
}

#endif /* KR_CUDA_PREFILL_CUH */
