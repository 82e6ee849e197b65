/*
 * rope.cu — RoPE in place, and RoPE + conversion / int8 quantisation +
 * append into a cache layer in one pass.
 *
 * Both work one block per token: the block first turns the token's
 * position into cos/sin for every rotated pair (in double, rounded to fp32
 * times the attention factor, exactly as ref_rope.c), then every head of
 * the token reuses them. Pairs, for rotary_dim 8:
 *
 *   interleaved  [x0 y0 x1 y1 x2 y2 x3 y3]   pair i = (2i, 2i+1)
 *   half-split   [x0 x1 x2 x3 y0 y1 y2 y3]   pair i = (i, i + half)
 *
 * The rotation x' = x c - y s, y' = x s + y c is written with _rn
 * intrinsics so nvcc cannot contract it into FMAs: results match the
 * reference bit for bit. The vector path moves 4 pairs per thread (8 or 16
 * bytes of f16/bf16 per load); the scalar path takes any strides.
 */
#include "common.cuh"

#define RP_THREADS 128

__device__ __forceinline__ void rp_rotate(float x, float y, float c, float s, float *xo,
                                          float *yo) {
    *xo = __fsub_rn(__fmul_rn(x, c), __fmul_rn(y, s));
    *yo = __fadd_rn(__fmul_rn(x, s), __fmul_rn(y, c));
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

__global__ void __launch_bounds__(RP_THREADS) rp_kernel(kr_cu_rope r, int vector_path) {
    extern __shared__ float2 cs[];
    const kr_tensor &x = r.x;
    const int64_t S = x.shape[1], H = x.shape[2];
    const int64_t tok = blockIdx.x, b = tok / S, t = tok % S;
    rp_table(cs, (double)r.positions[tok], r.inv_freq, r.half, r.attention_factor);
    __syncthreads();
    const int dt = x.dtype;
    if (vector_path) { /* 4 pairs per item */
        const int64_t groups = r.half / 4;
        for (int64_t it = threadIdx.x; it < H * groups; it += RP_THREADS) {
            const int64_t h = it / groups, g = it % groups;
            const int64_t base = cu_off(x, b, t, h, 0);
            float f[8], o[8];
            if (r.layout == KR_ROPE_HALF_SPLIT) {
                rp_load4(x.data, dt, base + 4 * g, f);
                rp_load4(x.data, dt, base + r.half + 4 * g, f + 4);
                for (int k = 0; k < 4; k++) {
                    const float2 c = cs[4 * g + k];
                    rp_rotate(f[k], f[4 + k], c.x, c.y, &o[k], &o[4 + k]);
                }
                rp_store4(x.data, dt, base + 4 * g, o);
                rp_store4(x.data, dt, base + r.half + 4 * g, o + 4);
            } else {
                rp_load4(x.data, dt, base + 8 * g, f);
                rp_load4(x.data, dt, base + 8 * g + 4, f + 4);
                for (int k = 0; k < 4; k++) {
                    const float2 c = cs[4 * g + k];
                    rp_rotate(f[2 * k], f[2 * k + 1], c.x, c.y, &o[2 * k], &o[2 * k + 1]);
                }
                rp_store4(x.data, dt, base + 8 * g, o);
                rp_store4(x.data, dt, base + 8 * g + 4, o + 4);
            }
        }
        return;
    }
    for (int64_t it = threadIdx.x; it < H * r.half; it += RP_THREADS) {
        const int64_t h = it / r.half, i = it % r.half;
        const int64_t ix = r.layout == KR_ROPE_INTERLEAVED ? 2 * i : i;
        const int64_t iy = r.layout == KR_ROPE_INTERLEAVED ? 2 * i + 1 : i + r.half;
        const int64_t ox = cu_off(x, b, t, h, ix), oy = cu_off(x, b, t, h, iy);
        float xo, yo;
        rp_rotate(cu_load(x.data, dt, ox), cu_load(x.data, dt, oy), cs[i].x, cs[i].y, &xo, &yo);
        cu_store(x.data, dt, ox, xo);
        cu_store(x.data, dt, oy, yo);
    }
}

extern "C" kr_status kr_cu_rope_run(const kr_cu_rope *r, bool vector_path, void *stream, char *err,
                                    size_t n) {
    const int64_t tokens = r->x.shape[0] * r->x.shape[1];
    if (tokens > 0x7fffffff) {
        snprintf(err, n, "rope: %lld tokens is more than one launch takes", (long long)tokens);
        return KR_ERR_UNSUPPORTED;
    }
    const size_t smem = sizeof(float2) * (size_t)(r->half > 0 ? r->half : 1);
    rp_kernel<<<(unsigned)tokens, RP_THREADS, smem, (cudaStream_t)stream>>>(*r, vector_path);
    return cu_launched("rope", err, n);
}

/* ---- append --------------------------------------------------------------- */

/* The grid of the append kernels: x = token t * AP_BLOCKS_PER_TOKEN(Hkv) + row
 * block, y = sequence b; each warp takes one of the token's 2 * Hkv rows
 * (K rows first, then V), so all rows of all tokens are in flight at once. */
#define AP_WARPS (RP_THREADS / 32)
#define AP_ROW_BLOCKS(hkv) ((2 * (hkv) + AP_WARPS - 1) / AP_WARPS)

/* Token t of sequence b, or false when it is past n_new[b]. */
__device__ __forceinline__ bool ap_token(const kr_cu_append &a, int64_t *slot, double *pos) {
    const int64_t t = blockIdx.x / AP_ROW_BLOCKS(a.Hkv), b = blockIdx.y;
    if (t >= cu_len(a.n_new, b)) return false;
    *slot = cu_len(a.len, b) + t;
    *pos = a.positions ? (double)a.positions[b * a.S + t] : (double)*slot;
    return true;
}

/* Loads row (b, t, h) of src into this warp's row buffer, rotated when
 * asked (K with RoPE). Ends with the row visible to the whole warp. */
__device__ __forceinline__ void ap_load_row(const kr_cu_append &a, const kr_tensor &src,
                                            bool rotate, int64_t h, const float2 *cs, float *row) {
    const int64_t t = blockIdx.x / AP_ROW_BLOCKS(a.Hkv), b = blockIdx.y;
    const int lane = threadIdx.x % 32;
    if (a.vec) { /* 4 channels per load */
        const int64_t base = cu_off(src, b, t, h, 0);
        for (int64_t c4 = lane; c4 < a.D / 4; c4 += 32)
            rp_load4(src.data, src.dtype, base + 4 * c4, row + 4 * c4);
    } else {
        for (int64_t c = lane; c < a.D; c += 32)
            row[c] = cu_load(src.data, src.dtype, cu_off(src, b, t, h, c));
    }
    __syncwarp();
    if (!rotate) return;
    float xo[8], yo[8]; /* half <= 256 pairs: 8 per lane */
    int k = 0;
    for (int64_t i = lane; i < a.half; i += 32, k++) {
        const int64_t ix = a.layout == KR_ROPE_INTERLEAVED ? 2 * i : i;
        const int64_t iy = a.layout == KR_ROPE_INTERLEAVED ? 2 * i + 1 : i + a.half;
        rp_rotate(row[ix], row[iy], cs[i].x, cs[i].y, &xo[k], &yo[k]);
    }
    __syncwarp();
    k = 0;
    for (int64_t i = lane; i < a.half; i += 32, k++) {
        const int64_t ix = a.layout == KR_ROPE_INTERLEAVED ? 2 * i : i;
        const int64_t iy = a.layout == KR_ROPE_INTERLEAVED ? 2 * i + 1 : i + a.half;
        row[ix] = xo[k];
        row[iy] = yo[k];
    }
    __syncwarp();
}

__global__ void __launch_bounds__(RP_THREADS)
    ap_amax_kernel(kr_cu_append a, float *amax_k, float *amax_v) {
    extern __shared__ float sh[];
    float2 *cs = (float2 *)sh;
    float *row = sh + 2 * (a.half > 0 ? a.half : 1) + (threadIdx.x / 32) * a.D;
    int64_t slot;
    double pos;
    if (!ap_token(a, &slot, &pos)) return;
    if (a.inv_freq) rp_table(cs, pos, a.inv_freq, a.half, a.attention_factor);
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t w = (blockIdx.x % AP_ROW_BLOCKS(a.Hkv)) * AP_WARPS + warp;
    if (w >= 2 * a.Hkv) return;
    const bool is_k = w < a.Hkv;
    const int64_t h = is_k ? w : w - a.Hkv;
    ap_load_row(a, is_k ? a.k : a.v, is_k && a.inv_freq, h, cs, row);
    float *amax = (is_k ? amax_k : amax_v) + h * a.D;
    for (int64_t c = lane; c < a.D; c += 32) {
        const float v = fabsf(row[c]);
        if (v == v) atomicMax((unsigned *)&amax[c], __float_as_uint(v));
    }
}

/* Quantises this warp's row (kv_cache.h's layout, kr_ref_quantize_row's
 * arithmetic) into q[D] and meta. Channel c sits in lane c % 32, so group g
 * (channels 32g..32g+31) is one pass of the warp. */
__device__ __forceinline__ void ap_quantize(const kr_cu_append &a, const float *row,
                                            const float *chan, int8_t *q, uint8_t *meta) {
    const int lane = threadIdx.x % 32;
    const int64_t groups = (a.D + KR_KV_INT8_GROUP - 1) / KR_KV_INT8_GROUP;
    float y[8], gmax[8], amax = 0.0f;
    for (int g = 0; g < 8; g++) {
        const int64_t c = lane + 32 * g;
        y[g] = c < a.D ? row[c] / chan[c] : 0.0f;
        float m = g < groups ? fabsf(y[g]) : 0.0f;
        amax = cu_nanmax(amax, m);
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        gmax[g] = m;
    }
    for (int o = 16; o > 0; o >>= 1) amax = cu_nanmax(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const bool fin = isfinite(amax);
    unsigned short rh =
        __half_as_ushort(__float2half_rn(fin ? amax / 127.0f : __int_as_float(0x7fc00000)));
    if (fin && __fmul_rn(__half2float(__ushort_as_half(rh)), 127.0f) < amax) rh++;
    const float row_scale = __half2float(__ushort_as_half(rh));
    if (lane == 0) {
        meta[0] = (uint8_t)(rh & 0xff);
        meta[1] = (uint8_t)(rh >> 8);
    }
    for (int g = 0; g < groups; g++) {
        float u = row_scale > 0.0f
                      ? ceilf(__fdiv_rn(__fmul_rn(255.0f, gmax[g]), __fmul_rn(127.0f, row_scale)))
                      : 0.0f;
        if (!(u <= 255.0f)) u = 255.0f;
        const uint8_t ub = (uint8_t)u;
        if (lane == 0) meta[2 + g] = ub;
        const float s = __fmul_rn(row_scale, __fmul_rn((float)ub, 1.0f / 255.0f));
        const float inv = s > 0.0f && isfinite(s) ? 1.0f / s : 0.0f;
        const int64_t c = lane + 32 * g;
        if (c >= a.D) continue;
        float r = inv > 0.0f ? rintf(__fmul_rn(y[g], inv)) : 0.0f;
        if (r > 127.0f) r = 127.0f;
        if (r < -127.0f) r = -127.0f;
        q[c] = r == r ? (int8_t)r : 0;
    }
}

__global__ void __launch_bounds__(RP_THREADS) ap_kernel(kr_cu_append a) {
    extern __shared__ float sh[];
    float2 *cs = (float2 *)sh;
    float *row = sh + 2 * (a.half > 0 ? a.half : 1) + (threadIdx.x / 32) * a.D;
    int64_t slot;
    double pos;
    if (!ap_token(a, &slot, &pos)) return;
    if (a.inv_freq) rp_table(cs, pos, a.inv_freq, a.half, a.attention_factor);
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t b = blockIdx.y;
    const int64_t M = KR_KV_INT8_META_BYTES(a.D);
    const int64_t w = (blockIdx.x % AP_ROW_BLOCKS(a.Hkv)) * AP_WARPS + warp;
    if (w >= 2 * a.Hkv) return;
    const bool is_k = w < a.Hkv;
    const int64_t h = is_k ? w : w - a.Hkv;
    ap_load_row(a, is_k ? a.k : a.v, is_k && a.inv_freq, h, cs, row);
    const int64_t r = (b * a.capacity + slot) * a.Hkv + h;
    void *dst = is_k ? a.k_dst : a.v_dst;
    if (a.dtype == KR_I8)
        ap_quantize(a, row, (is_k ? a.k_chan : a.v_chan) + h * a.D, (int8_t *)dst + r * a.D,
                    (is_k ? a.k_meta : a.v_meta) + r * M);
    else if (a.D % 4 == 0) /* cache rows are contiguous and aligned */
        for (int64_t c4 = lane; c4 < a.D / 4; c4 += 32)
            rp_store4(dst, a.dtype, r * a.D + 4 * c4, row + 4 * c4);
    else
        for (int64_t c = lane; c < a.D; c += 32) cu_store(dst, a.dtype, r * a.D + c, row[c]);
}

static kr_status ap_launch(const kr_cu_append *a, bool amax, float *amax_k, float *amax_v,
                           void *stream, char *err, size_t n) {
    if (a->S > 0x7fffffff || a->B > 65535) {
        snprintf(err, n, "kv append: S %lld or batch %lld too large for one launch",
                 (long long)a->S, (long long)a->B);
        return KR_ERR_UNSUPPORTED;
    }
    if (a->half > 256 || (a->dtype == KR_I8 && a->D > 256)) {
        snprintf(err, n, "kv append: head_dim %lld too large", (long long)a->D);
        return KR_ERR_UNSUPPORTED;
    }
    const size_t smem =
        sizeof(float) * (size_t)(2 * (a->half > 0 ? a->half : 1) + (RP_THREADS / 32) * a->D);
    if (a->S * AP_ROW_BLOCKS(a->Hkv) > 0x7fffffff) {
        snprintf(err, n, "kv append: S %lld x Hkv %lld too large for one launch", (long long)a->S,
                 (long long)a->Hkv);
        return KR_ERR_UNSUPPORTED;
    }
    dim3 grid((unsigned)(a->S * AP_ROW_BLOCKS(a->Hkv)), (unsigned)a->B);
    if (amax)
        ap_amax_kernel<<<grid, RP_THREADS, smem, (cudaStream_t)stream>>>(*a, amax_k, amax_v);
    else
        ap_kernel<<<grid, RP_THREADS, smem, (cudaStream_t)stream>>>(*a);
    return cu_launched(amax ? "kv append (channel amax)" : "kv append", err, n);
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
    return ap_launch(a, true, amax_k, amax_v, stream, err, n);
}

extern "C" kr_status kr_cu_append_run(const kr_cu_append *a, void *stream, char *err, size_t n) {
    return ap_launch(a, false, NULL, NULL, stream, err, n);
}
