/*
 * rope.cu — RoPE in place, and RoPE + conversion / int8 quantisation +
 * append into a cache layer in one pass over the data.
 *
 * RoPE and the staged append work one block per token: while the token's
 * loads are in flight, threads < half turn its position into cos/sin for
 * every rotated pair (in double, rounded to fp32 times the attention
 * factor, exactly as ref_rope.c) in shared memory; then every head of the
 * token reuses them. The int8 append at head_dim 128 from 16-bit K/V
 * (aq_kernel) works a warp per token instead, its table in the warp's own
 * slice of shared memory.
 * Pairs, for rotary_dim 8:
 *
 *   interleaved  [x0 y0 x1 y1 x2 y2 x3 y3]   pair i = (2i, 2i+1)
 *   half-split   [x0 x1 x2 x3 y0 y1 y2 y3]   pair i = (i, i + half)
 *
 * The rotation x' = x c - y s, y' = x s + y c is written with _rn
 * intrinsics so nvcc cannot contract it into FMAs: results match the
 * reference bit for bit. The hot loops are instantiated per dtype (and
 * layout) from one inlined body with compile-time arguments; vector paths
 * move 4 channels per load (8 or 16 bytes), scalar paths take any strides.
 */
#include "common.cuh"
#include "tc.cuh"

__device__ __forceinline__ void rp_rotate(float x, float y, float c, float s, float *xo,
                                          float *yo) {
    *xo = __fsub_rn(__fmul_rn(x, c), __fmul_rn(y, s));
    *yo = __fadd_rn(__fmul_rn(x, s), __fmul_rn(y, c));
}

/* One side of a rotated pair, x the channel's value and y its partner's:
 * x' = x c - y s = x c + (-y) s on the first side, y' = x s + y c = y c + x s
 * on the second, each rounding as rp_rotate's. One form for both sides, the
 * partner negated on the first, so lanes on either side do not diverge. */
__device__ __forceinline__ float rp_rotate_side(float x, float y, float c, float s, bool first) {
    return __fadd_rn(__fmul_rn(x, c), __fmul_rn(first ? -y : y, s));
}

/* cos/sin of every pair of one position into cs[half] (float2: c, s). */
__device__ __forceinline__ void rp_table(float2 *cs, double pos, const double *inv_freq,
                                         int64_t half, double af) {
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        double sn, c;
        sincos(pos * inv_freq[i], &sn, &c);
        cs[i] = make_float2((float)(c * af), (float)(sn * af));
    }
}

/* 4 consecutive elements of one row (aligned to 4 elements). */
__device__ __forceinline__ void rp_load4(const void *p, int dt, int64_t off, float *f) {
    if (dt == KR_F32) {
        const float4 v = *(const float4 *)((const float *)p + off);
        f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
    } else {
        const uint2 raw = *(const uint2 *)((const uint16_t *)p + off);
        if (dt == KR_F16) {
            const float2 a = __half22float2(*(const __half2 *)&raw.x);
            const float2 b = __half22float2(*(const __half2 *)&raw.y);
            f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
        } else {
            const float2 a = __bfloat1622float2(*(const __nv_bfloat162 *)&raw.x);
            const float2 b = __bfloat1622float2(*(const __nv_bfloat162 *)&raw.y);
            f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
        }
    }
}

__device__ __forceinline__ void rp_store4(void *p, int dt, int64_t off, const float *f) {
    if (dt == KR_F32) {
        *(float4 *)((float *)p + off) = make_float4(f[0], f[1], f[2], f[3]);
    } else if (dt == KR_F16) {
        __half2 a = __floats2half2_rn(f[0], f[1]), b = __floats2half2_rn(f[2], f[3]);
        uint2 raw;
        raw.x = *(const unsigned *)&a;
        raw.y = *(const unsigned *)&b;
        *(uint2 *)((uint16_t *)p + off) = raw;
    } else {
        __nv_bfloat162 a = __floats2bfloat162_rn(f[0], f[1]), b = __floats2bfloat162_rn(f[2], f[3]);
        uint2 raw;
        raw.x = *(const unsigned *)&a;
        raw.y = *(const unsigned *)&b;
        *(uint2 *)((uint16_t *)p + off) = raw;
    }
}

/* 4 channels [c0, c0 + 4) of a row at `row` (element offset of channel 0,
 * unit stride, 4-aligned; half % 4 == 0), rotated with the token's table cs
 * when rot. The 4 channels sit on one side of their pairs: interleaved,
 * both pairs are inside the 4; half-split, the partners are 4 channels
 * half away. */
__device__ __forceinline__ void rp_chunk4(const void *p, int dt, int64_t row, int64_t c0, bool rot,
                                          int64_t half, int layout, const float2 *cs, float *o) {
    float x[4];
    rp_load4(p, dt, row + c0, x);
    if (!rot || c0 >= 2 * half) {
        o[0] = x[0], o[1] = x[1], o[2] = x[2], o[3] = x[3];
        return;
    }
    if (layout == KR_ROPE_INTERLEAVED) {
        const float4 t = *(const float4 *)(cs + c0 / 2); /* pairs c0/2, c0/2 + 1 */
        rp_rotate(x[0], x[1], t.x, t.y, &o[0], &o[1]);
        rp_rotate(x[2], x[3], t.z, t.w, &o[2], &o[3]);
        return;
    }
    const bool first = c0 < half;
    const int64_t i0 = first ? c0 : c0 - half;
    float y[4];
    rp_load4(p, dt, row + (first ? c0 + half : c0 - half), y);
    const float4 t0 = *(const float4 *)(cs + i0), t1 = *(const float4 *)(cs + i0 + 2);
    const float cc[4] = {t0.x, t0.z, t1.x, t1.z}, ss[4] = {t0.y, t0.w, t1.y, t1.w};
#pragma unroll
    for (int j = 0; j < 4; j++) o[j] = rp_rotate_side(x[j], y[j], cc[j], ss[j], first);
}

/* Channel c of a contiguous row (any D, any half), rotated when rot. */
__device__ __forceinline__ float rp_elem(const void *row, int dt, int64_t c, bool rot, int64_t half,
                                         int layout, const float2 *cs) {
    const float v = cu_load(row, dt, c);
    if (!rot || c >= 2 * half) return v;
    int64_t i, partner;
    bool first;
    if (layout == KR_ROPE_INTERLEAVED)
        i = c / 2, first = c % 2 == 0, partner = first ? c + 1 : c - 1;
    else
        first = c < half, i = first ? c : c - half, partner = first ? c + half : c - half;
    const float w = cu_load(row, dt, partner);
    float o, dummy;
    if (first)
        rp_rotate(v, w, cs[i].x, cs[i].y, &o, &dummy);
    else
        rp_rotate(w, v, cs[i].x, cs[i].y, &dummy, &o);
    return o;
}

/* RoPE in place over one token, vector path (unit inner stride, 16-byte
 * aligned, half % 4 == 0): an item is 4 pairs (8 channels) of one head,
 * RP_BATCH items a thread loaded before any is stored, the table built while
 * the first ones fly. DT, SPLIT: compile-time at every call. */
#define RP_BLOCK 128
#ifndef RP_BATCH /* lab knob (bench/append_lab.sh) */
#define RP_BATCH 2
#endif
__device__ __forceinline__ void rp_token(const kr_cu_rope &r, unsigned b, unsigned t, double pos,
                                         float2 *cs, const int DT, const bool SPLIT) {
    const kr_tensor &x = r.x;
    const unsigned half = (unsigned)r.half, groups = half / 4,
                   items = (unsigned)x.shape[2] * groups;
    const int64_t step = SPLIT ? 4 : 8, second = SPLIT ? half : 4;
    /* item it = h groups + g, walked without divisions */
    unsigned g = threadIdx.x % groups, h = threadIdx.x / groups;
    const unsigned hstep = RP_BLOCK / groups, gstep = RP_BLOCK % groups;
    /* every thread takes the first round (its loads may be none), which builds
     * the table once the first loads are in flight */
    bool first = true;
    for (unsigned i0 = threadIdx.x; first || i0 < items; i0 += RP_BLOCK * RP_BATCH) {
        float f[RP_BATCH][8];
        int64_t at[RP_BATCH];
        unsigned gg[RP_BATCH];
#pragma unroll
        for (int u = 0; u < RP_BATCH; u++) {
            gg[u] = g;
            if (i0 + u * RP_BLOCK < items) {
                at[u] = cu_off(x, b, t, h, 0) + step * g;
                rp_load4(x.data, DT, at[u], f[u]);
                rp_load4(x.data, DT, at[u] + second, f[u] + 4);
            }
            g += gstep, h += hstep;
            if (g >= groups) g -= groups, h++;
        }
        if (first) {
            rp_table(cs, pos, r.inv_freq, r.half, r.attention_factor);
            __syncthreads();
            first = false;
        }
#pragma unroll
        for (int u = 0; u < RP_BATCH; u++) {
            if (i0 + u * RP_BLOCK >= items) continue;
            float o[8];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float2 c = cs[4 * gg[u] + k];
                if (SPLIT)
                    rp_rotate(f[u][k], f[u][4 + k], c.x, c.y, &o[k], &o[4 + k]);
                else
                    rp_rotate(f[u][2 * k], f[u][2 * k + 1], c.x, c.y, &o[2 * k], &o[2 * k + 1]);
            }
            rp_store4(x.data, DT, at[u], o);
            rp_store4(x.data, DT, at[u] + second, o + 4);
        }
    }
}

/* RoPE in place: a block per token (grid x); scalar path: a pair per item,
 * any strides. */
__global__ void __launch_bounds__(RP_BLOCK) rp_kernel(kr_cu_rope r, int vector_path) {
    extern __shared__ float2 rp_cs[];
    const kr_tensor &x = r.x;
    const unsigned S = (unsigned)x.shape[1], tok = blockIdx.x, b = tok / S, t = tok - b * S;
    const double pos = (double)r.positions[tok];
    const int dt = x.dtype;
    const bool split = r.layout == KR_ROPE_HALF_SPLIT;
    if (vector_path) {
        if (dt == KR_F16)
            split ? rp_token(r, b, t, pos, rp_cs, KR_F16, true)
                  : rp_token(r, b, t, pos, rp_cs, KR_F16, false);
        else if (dt == KR_BF16)
            split ? rp_token(r, b, t, pos, rp_cs, KR_BF16, true)
                  : rp_token(r, b, t, pos, rp_cs, KR_BF16, false);
        else
            split ? rp_token(r, b, t, pos, rp_cs, KR_F32, true)
                  : rp_token(r, b, t, pos, rp_cs, KR_F32, false);
        return;
    }
    rp_table(rp_cs, pos, r.inv_freq, r.half, r.attention_factor);
    __syncthreads();
    const unsigned half = (unsigned)r.half, H = (unsigned)x.shape[2];
    for (unsigned it = threadIdx.x; it < H * half; it += RP_BLOCK) {
        const unsigned h = it / half, i = it - h * half;
        const int64_t ix = r.layout == KR_ROPE_INTERLEAVED ? 2 * i : i;
        const int64_t iy = r.layout == KR_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
        const int64_t ox = cu_off(x, b, t, h, ix), oy = cu_off(x, b, t, h, iy);
        float xo, yo;
        rp_rotate(cu_load(x.data, dt, ox), cu_load(x.data, dt, oy), rp_cs[i].x, rp_cs[i].y, &xo,
                  &yo);
        cu_store(x.data, dt, ox, xo);
        cu_store(x.data, dt, oy, yo);
    }
}

extern "C" kr_status kr_cu_rope_run(const kr_cu_rope *r, bool vector_path, void *stream, char *err,
                                    size_t n) {
    const int64_t tokens = r->x.shape[0] * r->x.shape[1];
    if (tokens > 0x7fffffff || r->x.shape[2] * r->half > 0x7fffffff) {
        snprintf(err, n, "rope: %lld tokens x %lld heads too many for one launch",
                 (long long)tokens, (long long)r->x.shape[2]);
        return KR_ERR_UNSUPPORTED;
    }
    if (tokens == 0) return KR_OK;
    const size_t smem = sizeof(float2) * (size_t)(r->half > 0 ? r->half : 1);
    rp_kernel<<<(unsigned)tokens, RP_BLOCK, smem, (cudaStream_t)stream>>>(*r, vector_path);
    return cu_launched("rope", err, n);
}

/* ---- append --------------------------------------------------------------- */

/* A block per token of a sequence (grid x = token x row chunk, y =
 * sequence). The token's 2 Hkv rows (K rows first, then V) are staged raw
 * in shared memory — by 16-byte cp.async copies when the rows allow, so all
 * the block's bytes are in flight at once — while the table is built; then
 * a warp per row: rotate (K), convert, store, a lane holding channels
 * 4 lane + 128 k + j (j < 4) so its stores are 4-wide and coalesced; the
 * int8 cache takes two rows a warp (ap_quantize). A token whose rows do not
 * fit AP_STAGE bytes is split into row chunks. The int8 cache's common case
 * (aq_fits) takes aq_kernel below instead. */
#define AP_THREADS 256
#define AP_WARPS (AP_THREADS / 32)
#define AP_STAGE 16384
#define AP_MAX_PITCH (40 * 1024)

/* Channels [c0, c0 + 4) of a staged row (raw, dtype dt), rotated when rot;
 * 0 past D. vec: D % 4 == 0 and half % 4 == 0 (4-wide shared loads). */
__device__ __forceinline__ void ap_chunk(const kr_cu_append &a, const unsigned char *row, int dt,
                                         int64_t c0, bool rot, const float2 *cs, float *o) {
    if (a.vec && c0 < a.D) {
        rp_chunk4(row, dt, 0, c0, rot, a.half, a.layout, cs, o);
        return;
    }
#pragma unroll
    for (int j = 0; j < 4; j++)
        o[j] = c0 + j < a.D ? rp_elem(row, dt, c0 + j, rot, a.half, a.layout, cs) : 0.0f;
}

/* max(a, b) that keeps a NaN (PTX max.NaN, sm_80+): fmaxf drops one. */
__device__ __forceinline__ float ap_max_nan(float a, float b) {
    float d;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
    return d;
}

/* x / 127 correctly rounded for every finite x >= 0 without the division
 * routine: the product by the rounded reciprocal, then one residual step
 * (checked against x / 127.0f for all 2^31 such floats on the host). */
__device__ __forceinline__ float ap_div127(float x) {
    const float r = 1.0f / 127.0f;
    const float q = __fmul_rn(x, r);
    return __fmaf_rn(__fmaf_rn(-q, 127.0f, x), r, q);
}

/* rint(v) clamped to +-127, 0 for a NaN (cvt.rni.sat.s8: round to nearest
 * even, saturate to [-128, 127], NaN to 0; then the lower clamp). With the
 * reciprocal 0 (a zero group, or a row whose scale is NaN), v is 0 or NaN:
 * code 0, as ref's test of the reciprocal gives. */
__device__ __forceinline__ int ap_code(float v) {
    int r;
    asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r) : "f"(v));
    return max(r, -127);
}

/* The f16 row scale of a row whose largest |y| is amax (NaN when amax is
 * not finite), kr_ref_quantize_row's: amax / 127 rounded to nearest, one
 * step up if it falls short. Its bits go to *rh. */
__device__ __forceinline__ float ap_row_scale(float amax, unsigned short *rh) {
    const bool fin = isfinite(amax);
    unsigned short h =
        __half_as_ushort(__float2half_rn(fin ? ap_div127(amax) : __int_as_float(0x7fc00000)));
    if (fin && __fmul_rn(__half2float(__ushort_as_half(h)), 127.0f) < amax) h++;
    *rh = h;
    return __half2float(__ushort_as_half(h));
}

/* A group's u8 share of the row scale: ceil(255 gmax / (127 row_scale)),
 * at most 255, 0 without a positive row scale. */
__device__ __forceinline__ uint8_t ap_group_share(float gmax, float row_scale) {
    float u = row_scale > 0.0f
                  ? ceilf(__fdiv_rn(__fmul_rn(255.0f, gmax), __fmul_rn(127.0f, row_scale)))
                  : 0.0f;
    if (!(u <= 255.0f)) u = 255.0f;
    return (uint8_t)u;
}

/* The reciprocal of a group's step row_scale * ub / 255 (0 where the step
 * is 0 or not finite). */
__device__ __forceinline__ float ap_group_inv(float row_scale, uint8_t ub) {
    const float s = __fmul_rn(row_scale, __fmul_rn((float)ub, 1.0f / 255.0f));
    return s > 0.0f && isfinite(s) ? 1.0f / s : 0.0f;
}

/* Quantises a row, given as a lane's values y[k][j] of channels
 * 8 hl + 128 k + j (hl = lane % 16, j < 8, k < KB: D <= 128 KB, KB
 * compile-time; 0 past D), into q[D] and meta with kr_ref_quantize_row's
 * arithmetic: y = x / chan, the row's amax (a NaN sticks) and each group's,
 * the f16 row scale rounded up, the u8 group shares, codes rint(y / step)
 * clamped to +-127. Two rows a warp: lanes 0-15 take one, 16-31 the other
 * (the per-row scale chain is paid once for both), so a 32-channel group is
 * 4 lanes. live: this half's row exists (else it computes on a copy and
 * stores nothing).
 *
 * Where ref differs in form, the result is the same: ref's group maxima
 * drop a NaN while its row amax keeps it; here one NaN-keeping chain serves
 * both, because a row with a NaN has a NaN row scale, and then every group
 * share is 0 whatever its maximum. A code is ap_code of y times the step's
 * reciprocal (ref's rintf and clamp), 0 where the reciprocal is 0. */
__device__ __forceinline__ void ap_quantize_y(int D, float (*y)[8], const float *chan, int8_t *q,
                                              uint8_t *meta, bool live, const int KB, bool ones) {
    const int lane = threadIdx.x % 32, hl = lane % 16;
    const int groups = (D + KR_KV_INT8_GROUP - 1) / KR_KV_INT8_GROUP;
    float gmax[2] = {0.0f, 0.0f};
#pragma unroll
    for (int k = 0; k < KB; k++) {
        const int c0 = 8 * hl + 128 * k;
        if (128 * k >= D) continue; /* warp-uniform */
        if (!ones) {
            float f[8];
            if (D % 8 == 0 && c0 < D) {
                const float4 v0 = __ldg((const float4 *)(chan + c0)),
                             v1 = __ldg((const float4 *)(chan + c0 + 4));
                f[0] = v0.x, f[1] = v0.y, f[2] = v0.z, f[3] = v0.w;
                f[4] = v1.x, f[5] = v1.y, f[6] = v1.z, f[7] = v1.w;
            } else {
#pragma unroll
                for (int j = 0; j < 8; j++) f[j] = c0 + j < D ? chan[c0 + j] : 1.0f;
            }
            /* most factors are 1 (kv_cache.h: only outlier channels get one), and
             * dividing by 1 is exact: the divisions run only where a warp needs one */
            bool scaled = false;
#pragma unroll
            for (int j = 0; j < 8; j++) scaled |= f[j] != 1.0f;
            if (__any_sync(0xffffffffu, scaled)) {
#pragma unroll
                for (int j = 0; j < 8; j++)
                    if (f[j] != 1.0f) y[k][j] = y[k][j] / f[j];
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++) gmax[k] = ap_max_nan(gmax[k], fabsf(y[k][j]));
        gmax[k] = ap_max_nan(gmax[k], __shfl_xor_sync(0xffffffffu, gmax[k], 1));
        gmax[k] = ap_max_nan(gmax[k], __shfl_xor_sync(0xffffffffu, gmax[k], 2));
    }
    float amax = KB > 1 ? ap_max_nan(gmax[0], gmax[1]) : gmax[0];
    amax = ap_max_nan(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
    amax = ap_max_nan(amax, __shfl_xor_sync(0xffffffffu, amax, 8));
    unsigned short rh;
    const float row_scale = ap_row_scale(amax, &rh);
    if (live && hl == 0) {
        meta[0] = (uint8_t)(rh & 0xff);
        meta[1] = (uint8_t)(rh >> 8);
    }
#pragma unroll
    for (int k = 0; k < KB; k++) {
        const int c0 = 8 * hl + 128 * k, g = c0 / KR_KV_INT8_GROUP;
        if (g >= groups) continue;
        const uint8_t ub = ap_group_share(gmax[k], row_scale);
        if (live && hl % 4 == 0) meta[2 + g] = ub;
        const float inv = ap_group_inv(row_scale, ub);
        int code[8];
#pragma unroll
        for (int j = 0; j < 8; j++) code[j] = ap_code(__fmul_rn(y[k][j], inv));
        if (!live || c0 >= D) continue;
        if (D % 8 == 0) {
            const unsigned lo = __byte_perm(__byte_perm(code[0], code[1], 0x0040),
                                            __byte_perm(code[2], code[3], 0x0040), 0x5410);
            const unsigned hi = __byte_perm(__byte_perm(code[4], code[5], 0x0040),
                                            __byte_perm(code[6], code[7], 0x0040), 0x5410);
            *(uint2 *)(q + c0) = make_uint2(lo, hi);
        } else {
            for (int j = 0; j < 8 && c0 + j < D; j++) q[c0 + j] = (int8_t)code[j];
        }
    }
}

/* ap_quantize_y over a staged row (raw, dtype dt), rotated when rot. */
__device__ __forceinline__ void ap_quantize(const kr_cu_append &a, const unsigned char *row, int dt,
                                            bool rot, const float2 *cs, const float *chan,
                                            int8_t *q, uint8_t *meta, bool live, const int KB) {
    const int hl = threadIdx.x % 16, D = (int)a.D;
    float y[2][8];
#pragma unroll
    for (int k = 0; k < KB; k++) {
        const int c0 = 8 * hl + 128 * k;
        if (128 * k >= D) { /* warp-uniform */
#pragma unroll
            for (int j = 0; j < 8; j++) y[k][j] = 0.0f;
            continue;
        }
        ap_chunk(a, row, dt, c0, rot, cs, y[k]);
        ap_chunk(a, row, dt, c0 + 4, rot, cs, y[k] + 4);
    }
    ap_quantize_y(D, y, chan, q, meta, live, KB, false);
}

/* The rows of one staged token chunk, a warp per row; DT (the K/V dtype)
 * and I8 (an int8 cache) compile-time at every call. With amax_k set (a
 * layer's first int8 append), the per-channel amax of the rows (K after
 * RoPE) instead of the store. */
__device__ __forceinline__ void ap_rows(const kr_cu_append &a, const unsigned char *stage,
                                        unsigned pitch, unsigned r0, unsigned nr, unsigned b,
                                        int64_t slot, const float2 *cs, float *amax_k,
                                        float *amax_v, const int DT, const bool I8, const int KB) {
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (I8 && !amax_k) { /* rows 2p and 2p + 1 to a warp */
        for (unsigned p = warp; 2 * p < nr; p += AP_WARPS) {
            const bool live = 2 * p + lane / 16 < nr;
            const unsigned r = live ? 2 * p + lane / 16 : 2 * p;
            const bool is_k = r0 + r < a.Hkv, rot = is_k && a.inv_freq;
            const unsigned h = is_k ? r0 + r : r0 + r - (unsigned)a.Hkv;
            const int64_t dr = (b * a.capacity + slot) * a.Hkv + h; /* the cache row */
            ap_quantize(a, stage + (size_t)r * pitch, DT, rot, cs,
                        (is_k ? a.k_chan : a.v_chan) + h * a.D,
                        (int8_t *)(is_k ? a.k_dst : a.v_dst) + dr * a.D,
                        (is_k ? a.k_meta : a.v_meta) + dr * KR_KV_INT8_META_BYTES(a.D), live, KB);
        }
        return;
    }
    for (unsigned r = warp; r < nr; r += AP_WARPS) {
        const bool is_k = r0 + r < a.Hkv, rot = is_k && a.inv_freq;
        const unsigned h = is_k ? r0 + r : r0 + r - (unsigned)a.Hkv;
        const unsigned char *row = stage + (size_t)r * pitch;
        if (I8 && amax_k) {
            float *am = (is_k ? amax_k : amax_v) + h * a.D;
            for (int c0 = 4 * (int)lane; c0 < (int)a.D; c0 += 128) {
                float o[4];
                ap_chunk(a, row, DT, c0, rot, cs, o);
                for (int j = 0; j < 4 && c0 + j < a.D; j++) {
                    const float v = fabsf(o[j]);
                    if (v == v) atomicMax((unsigned *)&am[c0 + j], __float_as_uint(v));
                }
            }
            continue;
        }
        const int64_t dr = (b * a.capacity + slot) * a.Hkv + h; /* the cache row */
        void *dst = is_k ? a.k_dst : a.v_dst;
        for (int c0 = 4 * (int)lane; c0 < (int)a.D; c0 += 128) {
            float o[4];
            ap_chunk(a, row, DT, c0, rot, cs, o);
            if (a.D % 4 == 0) /* cache rows are contiguous and 4-element aligned */
                rp_store4(dst, a.dtype, dr * a.D + c0, o);
            else
                for (int j = 0; j < 4 && c0 + j < a.D; j++)
                    cu_store(dst, a.dtype, dr * a.D + c0 + j, o[j]);
        }
    }
}

/* One token chunk: stage, table, rows. I8 compile-time (the int8 cache's
 * quantisation and amax take registers the conversions do not need). */
__device__ __forceinline__ void ap_body(const kr_cu_append &a, unsigned rows, unsigned pitch,
                                        bool cp16, float *amax_k, float *amax_v, const bool I8,
                                        const int KB) {
    extern __shared__ __align__(16) unsigned char ap_sh[];
    const unsigned R2 = (unsigned)(2 * a.Hkv), b = blockIdx.y;
    unsigned t = blockIdx.x, r0 = 0;
    if (rows < R2) { /* row chunks (a token's rows larger than the stage) */
        const unsigned chunks = (R2 + rows - 1) / rows;
        t = blockIdx.x / chunks, r0 = (blockIdx.x - t * chunks) * rows;
    }
    if (t >= cu_len(a.n_new, b)) return;
    const int64_t slot = cu_len(a.len, b) + t;
    const unsigned nr = R2 - r0 < rows ? R2 - r0 : rows;
    float2 *cs = (float2 *)(ap_sh + (size_t)rows * pitch);

    /* 1: the rows, raw, into shared memory */
    if (cp16) {
        /* a thread keeps its 16-byte column; rows advance by AP_THREADS / per
         * where per divides AP_THREADS (head_dim 128 and 64 in 16 bits: 16
         * and 8), else by the general walk; addresses from each tensor's
         * token row, no 64-bit index products in the loop */
        const unsigned per = pitch / 16, Hkv = (unsigned)a.Hkv;
        const int es = a.k.dtype == KR_F32 ? 4 : 2; /* K and V share a dtype */
        const char *kt = (const char *)a.k.data + cu_off(a.k, b, t, 0, 0) * es,
                   *vt = (const char *)a.v.data + cu_off(a.v, b, t, 0, 0) * es;
        const int64_t ks = a.k.stride[2] * es, vs = a.v.stride[2] * es;
        if (AP_THREADS % per == 0) {
            const unsigned c = threadIdx.x % per, rstep = AP_THREADS / per;
            for (unsigned r = threadIdx.x / per; r < nr; r += rstep) {
                const unsigned h = r0 + r;
                const char *src = h < Hkv ? kt + (int64_t)h * ks : vt + (int64_t)(h - Hkv) * vs;
                tc_cp16(ap_sh + (size_t)r * pitch + 16 * c, src + 16 * c, true);
            }
        } else {
            for (unsigned x = threadIdx.x; x < nr * per; x += AP_THREADS) {
                const unsigned r = x / per, c = x - r * per, h = r0 + r;
                const char *src = h < Hkv ? kt + (int64_t)h * ks : vt + (int64_t)(h - Hkv) * vs;
                tc_cp16(ap_sh + (size_t)r * pitch + 16 * c, src + 16 * c, true);
            }
        }
        tc_commit();
    } else {
        for (unsigned x = threadIdx.x; x < nr * a.D; x += AP_THREADS) {
            const unsigned r = x / (unsigned)a.D, c = x - r * (unsigned)a.D;
            const bool is_k = r0 + r < a.Hkv;
            const kr_tensor &src = is_k ? a.k : a.v;
            const unsigned h = is_k ? r0 + r : r0 + r - (unsigned)a.Hkv;
            const int64_t off = cu_off(src, b, t, h, c);
            unsigned char *d = ap_sh + (size_t)r * pitch;
            if (src.dtype == KR_F32)
                ((float *)d)[c] = ((const float *)src.data)[off];
            else
                ((uint16_t *)d)[c] = ((const uint16_t *)src.data)[off];
        }
    }
    /* 2: cos/sin of the token's position, while the copies fly */
    if (a.inv_freq && r0 < a.Hkv) {
        const double pos = a.positions ? (double)a.positions[b * a.S + t] : (double)slot;
        rp_table(cs, pos, a.inv_freq, a.half, a.attention_factor);
    }
    if (cp16) tc_wait(0);
    __syncthreads();

    /* 3: a warp per row */
    if (a.k.dtype == KR_F16)
        ap_rows(a, ap_sh, pitch, r0, nr, b, slot, cs, amax_k, amax_v, KR_F16, I8, KB);
    else if (a.k.dtype == KR_BF16)
        ap_rows(a, ap_sh, pitch, r0, nr, b, slot, cs, amax_k, amax_v, KR_BF16, I8, KB);
    else
        ap_rows(a, ap_sh, pitch, r0, nr, b, slot, cs, amax_k, amax_v, KR_F32, I8, KB);
}

__global__ void __launch_bounds__(AP_THREADS, 6)
    ap_kernel(kr_cu_append a, unsigned rows, unsigned pitch, bool cp16) {
    ap_body(a, rows, pitch, cp16, NULL, NULL, false, 1);
}

/* The int8 cache: head_dim <= 128 (one 128-channel block a lane) and up to 256. */
__global__ void __launch_bounds__(AP_THREADS, 4)
    ap_kernel_i8(kr_cu_append a, unsigned rows, unsigned pitch, bool cp16, float *amax_k,
                 float *amax_v) {
    ap_body(a, rows, pitch, cp16, amax_k, amax_v, true, 1);
}

__global__ void __launch_bounds__(AP_THREADS, 2)
    ap_kernel_i8_wide(kr_cu_append a, unsigned rows, unsigned pitch, bool cp16, float *amax_k,
                      float *amax_v) {
    ap_body(a, rows, pitch, cp16, amax_k, amax_v, true, 2);
}

/* ---- the int8 cache at head_dim 128 from f16/bf16 K and V: a warp a token
 *
 * The common case of the int8 append without shared staging or block
 * barriers: a warp takes one token, four rows an iteration (K rows first,
 * then V): lanes 8 q .. 8 q + 7 row 4 p + q, lane l8 = lane % 8 channels
 * [16 l8, 16 l8 + 16) read from global memory by two 16-byte loads, the
 * next iteration's rows in flight while one is quantised. The per-row and
 * per-group scale chains (row amax, f16 row scale, u8 share, reciprocal)
 * are paid once per 16 channels; a 32-channel group is two lanes. The
 * token's cos/sin are built by the warp into its own slice of shared
 * memory. Half-split partners (channel c +- half) are the lane half / 16
 * away: a shuffle. Codes are rounded by adding 1.5 * 2^23 (round to
 * nearest even, as rintf) and packed from the sums' low bytes, without a
 * clamp: a finite row's step is at least its group's amax / 127 up to a
 * few roundings, so |y / step| < 127.5 and every code is in [-127, 127]; a
 * row that is not finite has the reciprocal 0, and its codes are set to 0
 * (NaN * 0 would not round to 0); tests/test_int8_codes.c checks both
 * against the reference quantiser on the CPU. Needs D == 128, 16-byte aligned
 * unit-stride rows, half % 16 == 0 (RoPE; a lane's 16 channels on one side
 * of their pairs) — aq_fits; everything else takes ap_kernel_i8. */
#define AQ_WARPS 8
#ifndef AQ_MIN_BLOCKS /* lab knob (bench/append_lab.sh): 4 caps it at 64 registers */
#define AQ_MIN_BLOCKS 4
#endif

__device__ __forceinline__ void aq_unpack(uint4 raw, const int DT, float *f) {
    const unsigned w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 p = DT == KR_F16 ? __half22float2(*(const __half2 *)&w[i])
                                      : __bfloat1622float2(*(const __nv_bfloat162 *)&w[i]);
        f[2 * i] = p.x, f[2 * i + 1] = p.y;
    }
}

/* Whether row r of a token (K heads, then V heads) belongs to a head whose
 * channel factors are all 1, as the host recorded when it fixed them. */
__device__ __forceinline__ bool aq_ones(const kr_cu_append &a, unsigned r) {
    const bool is_k = r < (unsigned)a.Hkv;
    const unsigned h = is_k ? r : r - (unsigned)a.Hkv;
    return h < 64 && ((is_k ? a.k_ones : a.v_ones) >> h & 1u);
}

__device__ __forceinline__ void aq_load(const char *kt, const char *vt, int64_t ks, int64_t vs,
                                        unsigned Hkv, unsigned r, uint4 *raw) {
    const char *row = r < Hkv ? kt + (int64_t)r * ks : vt + (int64_t)(r - Hkv) * vs;
    const uint4 *p = (const uint4 *)(row + 32 * (threadIdx.x % 8));
    raw[0] = __ldg(p);
    raw[1] = __ldg(p + 1);
}

/* The 4 low bytes of the words a..d (codes in the low byte of each). */
__device__ __forceinline__ unsigned aq_pack(float a, float b, float c, float d) {
    return __byte_perm(__byte_perm(__float_as_uint(a), __float_as_uint(b), 0x0040),
                       __byte_perm(__float_as_uint(c), __float_as_uint(d), 0x0040), 0x5410);
}

/* kr_ref_quantize_row's arithmetic (see ap_quantize_y) over a row held as
 * 16 channels a lane, 8 lanes a row: y[j] is channel 16 l8 + j; live: this
 * lane's row exists (else it computes on a copy and stores nothing). */
__device__ __forceinline__ void aq_quantize(float *y, const float *chan, int8_t *q, uint8_t *meta,
                                            bool live, bool ones) {
    const unsigned l8 = threadIdx.x % 8;
    if (!ones) { /* warp-uniform; most factors are 1, dividing by 1 is exact */
#pragma unroll
        for (int j = 0; j < 16; j += 4) {
            const float4 v = __ldg((const float4 *)(chan + 16 * l8 + j));
            const float f[4] = {v.x, v.y, v.z, v.w};
            if (__any_sync(0xffffffffu,
                           f[0] != 1.0f || f[1] != 1.0f || f[2] != 1.0f || f[3] != 1.0f)) {
#pragma unroll
                for (int i = 0; i < 4; i++)
                    if (f[i] != 1.0f) y[j + i] = y[j + i] / f[i];
            }
        }
    }
    float gmax = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; j++) gmax = ap_max_nan(gmax, fabsf(y[j]));
    gmax = ap_max_nan(gmax, __shfl_xor_sync(0xffffffffu, gmax, 1));
    float amax = ap_max_nan(gmax, __shfl_xor_sync(0xffffffffu, gmax, 2));
    amax = ap_max_nan(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
    const bool fin = isfinite(amax);
    unsigned short rh;
    const float row_scale = ap_row_scale(amax, &rh);
    const uint8_t ub = ap_group_share(gmax, row_scale);
    const float inv = ap_group_inv(row_scale, ub);
    const float magic = 12582912.0f; /* 1.5 * 2^23: v + magic rounds v to an integer */
    float r[16];
#pragma unroll
    for (int j = 0; j < 16; j++) r[j] = __fadd_rn(__fmul_rn(y[j], inv), magic);
    uint4 w = make_uint4(aq_pack(r[0], r[1], r[2], r[3]), aq_pack(r[4], r[5], r[6], r[7]),
                         aq_pack(r[8], r[9], r[10], r[11]), aq_pack(r[12], r[13], r[14], r[15]));
    if (!fin) w = make_uint4(0, 0, 0, 0); /* NaN * 0: the row's codes are 0 */
    if (!live) return;
    *(uint4 *)(q + 16 * l8) = w;
    if (l8 % 2 == 0) meta[2 + l8 / 2] = ub;
    if (l8 == 0) *(unsigned short *)meta = rh; /* little-endian: meta[0] low byte */
}

__device__ __forceinline__ void aq_body(const kr_cu_append &a, const int DT, const bool SPLIT) {
    __shared__ __align__(16) float2 aq_cs[AQ_WARPS][64];
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32, l8 = lane % 8, b = blockIdx.y,
                   t = blockIdx.x * AQ_WARPS + warp;
    if (t >= cu_len(a.n_new, b)) return; /* warp-uniform; no block barrier below */
    const unsigned Hkv = (unsigned)a.Hkv, half = (unsigned)a.half, R2 = 2 * Hkv;
    const unsigned iters = (R2 + 3) / 4, side = lane / 8; /* the iteration's row */
    const int64_t slot = cu_len(a.len, b) + t;
    const char *kt = (const char *)a.k.data + cu_off(a.k, b, t, 0, 0) * 2,
               *vt = (const char *)a.v.data + cu_off(a.v, b, t, 0, 0) * 2;
    const int64_t ks = a.k.stride[2] * 2, vs = a.v.stride[2] * 2;
    uint4 next[2];
    aq_load(kt, vt, ks, vs, Hkv, min(side, R2 - 1), next);
    float2 *cs = aq_cs[warp];
    if (a.inv_freq) {
        const double pos = a.positions ? (double)a.positions[b * a.S + t] : (double)slot;
        for (unsigned i = lane; i < half; i += 32) {
            double sn, c;
            sincos(pos * a.inv_freq[i], &sn, &c);
            cs[i] = make_float2((float)(c * a.attention_factor), (float)(sn * a.attention_factor));
        }
        __syncwarp();
    }
    /* this lane's channels [16 l8, 16 l8 + 16): rotated when below 2 half;
     * the half-split side and the lane holding the partners */
    const unsigned c16 = 16 * l8;
    const bool in_rot = c16 < 2 * half, first = c16 < half;
    const unsigned i0 = SPLIT ? (first ? c16 : c16 - half) : c16 / 2;
    const int partner =
        (int)(lane & 24) + (int)(in_rot ? (first ? l8 + half / 16 : l8 - half / 16) : l8);
    const int64_t row0 = ((int64_t)b * a.capacity + slot) * Hkv; /* the token's cache rows */
    for (unsigned p = 0; p < iters; p++) {
        const uint4 raw[2] = {next[0], next[1]};
        if (p + 1 < iters) aq_load(kt, vt, ks, vs, Hkv, min(4 * (p + 1) + side, R2 - 1), next);
        const bool live = 4 * p + side < R2;
        const unsigned r = live ? 4 * p + side : R2 - 1;
        const bool is_k = r < Hkv;
        const unsigned h = is_k ? r : r - Hkv;
        float y[16];
        if (SPLIT && a.inv_freq) { /* the shuffles by every lane, before any branch */
#pragma unroll
            for (int k = 0; k < 2; k++) {
                uint4 pr;
                pr.x = __shfl_sync(0xffffffffu, raw[k].x, partner);
                pr.y = __shfl_sync(0xffffffffu, raw[k].y, partner);
                pr.z = __shfl_sync(0xffffffffu, raw[k].z, partner);
                pr.w = __shfl_sync(0xffffffffu, raw[k].w, partner);
                aq_unpack(raw[k], DT, y + 8 * k);
                if (is_k && in_rot) {
                    float w[8];
                    aq_unpack(pr, DT, w);
#pragma unroll
                    for (int j = 0; j < 8; j += 2) {
                        const float4 cc = *(const float4 *)(cs + i0 + 8 * k + j);
                        y[8 * k + j] = rp_rotate_side(y[8 * k + j], w[j], cc.x, cc.y, first);
                        y[8 * k + j + 1] =
                            rp_rotate_side(y[8 * k + j + 1], w[j + 1], cc.z, cc.w, first);
                    }
                }
            }
        } else {
            aq_unpack(raw[0], DT, y);
            aq_unpack(raw[1], DT, y + 8);
        }
        if (!SPLIT && a.inv_freq && is_k && in_rot) {
#pragma unroll
            for (int j = 0; j < 16; j += 4) {
                const float4 cc = *(const float4 *)(cs + i0 + j / 2); /* pairs of j, j + 2 */
                rp_rotate(y[j], y[j + 1], cc.x, cc.y, &y[j], &y[j + 1]);
                rp_rotate(y[j + 2], y[j + 3], cc.z, cc.w, &y[j + 2], &y[j + 3]);
            }
        }
        const int64_t dr = row0 + h;
        /* the division by channel factors is skipped when the iteration's rows'
         * heads all have every factor 1 (the host recorded it when it fixed them) */
        const bool ones = __all_sync(0xffffffffu, aq_ones(a, r));
        aq_quantize(y, (is_k ? a.k_chan : a.v_chan) + h * 128,
                    (int8_t *)(is_k ? a.k_dst : a.v_dst) + dr * 128,
                    (is_k ? a.k_meta : a.v_meta) + dr * KR_KV_INT8_META_BYTES(128), live, ones);
    }
}

__global__ void __launch_bounds__(AQ_WARPS * 32, AQ_MIN_BLOCKS) aq_kernel(kr_cu_append a) {
    const bool split = a.layout == KR_ROPE_HALF_SPLIT;
    if (a.k.dtype == KR_F16)
        split ? aq_body(a, KR_F16, true) : aq_body(a, KR_F16, false);
    else
        split ? aq_body(a, KR_BF16, true) : aq_body(a, KR_BF16, false);
}

/* Rows of a K or V tensor (f32, f16 or bf16; K and V alike) 16-byte
 * aligned and contiguous: 16-byte cp.async copies. */
static int64_t ap_esize(const kr_tensor *t) { return t->dtype == KR_F32 ? 4 : 2; }
static bool ap_rows16(const kr_tensor *t, int64_t D) {
    const int64_t es = ap_esize(t);
    if ((uintptr_t)t->data % 16 || t->stride[3] != 1 || D * es % 16) return false;
    for (int i = 0; i < 3; i++)
        if (t->stride[i] * es % 16) return false;
    return true;
}

/* aq_kernel's case: the int8 cache, head_dim 128, 16-bit K and V in
 * 16-byte aligned unit-stride rows, RoPE pairs in whole 8-channel chunks. */
static bool aq_fits(const kr_cu_append *a, bool rows16) {
    return a->dtype == KR_I8 && a->D == 128 && rows16 && a->k.dtype == a->v.dtype &&
           (a->k.dtype == KR_F16 || a->k.dtype == KR_BF16) &&
           (!a->inv_freq || (a->half % 16 == 0 && a->half <= 64));
}

static kr_status ap_launch(const kr_cu_append *a, float *amax_k, float *amax_v, void *stream,
                           char *err, size_t n) {
    if (a->B > 65535) {
        snprintf(err, n, "kv append: batch %lld too large for one launch", (long long)a->B);
        return KR_ERR_UNSUPPORTED;
    }
    if (a->dtype == KR_I8 && a->D > 256) {
        snprintf(err, n, "kv append: head_dim %lld too large for the int8 cache", (long long)a->D);
        return KR_ERR_UNSUPPORTED;
    }
    const int64_t pitch = (a->D * ap_esize(&a->k) + 15) / 16 * 16; /* K and V share a dtype */
    if (pitch > AP_MAX_PITCH || a->half > 1024) {
        snprintf(err, n, "kv append: head_dim %lld rows too large to stage", (long long)a->D);
        return KR_ERR_UNSUPPORTED;
    }
    int64_t rows = AP_STAGE / pitch;
    if (rows < 1) rows = 1;
    if (rows > 2 * a->Hkv) rows = 2 * a->Hkv;
    const int64_t chunks = (2 * a->Hkv + rows - 1) / rows;
    if (a->S * chunks > 0x7fffffff || 2 * a->Hkv * a->D > 0x7fffffff) {
        snprintf(err, n, "kv append: S %lld x Hkv %lld too large for one launch", (long long)a->S,
                 (long long)a->Hkv);
        return KR_ERR_UNSUPPORTED;
    }
    if (a->S * chunks == 0 || a->B == 0) return KR_OK;
    const bool cp16 = ap_rows16(&a->k, a->D) && ap_rows16(&a->v, a->D);
    if (!amax_k && aq_fits(a, cp16)) {
        dim3 g((unsigned)((a->S + AQ_WARPS - 1) / AQ_WARPS), (unsigned)a->B);
        aq_kernel<<<g, AQ_WARPS * 32, 0, (cudaStream_t)stream>>>(*a);
        return cu_launched("kv append", err, n);
    }
    const size_t smem =
        (size_t)(rows * pitch) + sizeof(float2) * (size_t)(a->half > 0 ? a->half : 1);
    dim3 grid((unsigned)(a->S * chunks), (unsigned)a->B);
    if (a->dtype == KR_I8)
        (a->D <= 128 ? ap_kernel_i8
                     : ap_kernel_i8_wide)<<<grid, AP_THREADS, smem, (cudaStream_t)stream>>>(
            *a, (unsigned)rows, (unsigned)pitch, cp16, amax_k, amax_v);
    else
        ap_kernel<<<grid, AP_THREADS, smem, (cudaStream_t)stream>>>(*a, (unsigned)rows,
                                                                    (unsigned)pitch, cp16);
    return cu_launched(amax_k ? "kv append (channel amax)" : "kv append", err, n);
}

extern "C" kr_status kr_cu_append_amax(const kr_cu_append *a, float *amax_k, float *amax_v,
                                       void *stream, char *err, size_t n) {
    const size_t bytes = sizeof(float) * (size_t)(a->Hkv * a->D);
    cudaError_t e = cudaMemsetAsync(amax_k, 0, bytes, (cudaStream_t)stream);
    if (e == cudaSuccess) e = cudaMemsetAsync(amax_v, 0, bytes, (cudaStream_t)stream);
    if (e != cudaSuccess) {
        snprintf(err, n, "kv append: %s", cudaGetErrorString(e));
        return KR_ERR_BACKEND;
    }
    return ap_launch(a, amax_k, amax_v, stream, err, n);
}

extern "C" kr_status kr_cu_append_run(const kr_cu_append *a, void *stream, char *err, size_t n) {
    return ap_launch(a, NULL, NULL, stream, err, n);
}
