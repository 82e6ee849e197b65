/*
 * attention_decode.cu — split-K decode attention (Sq <= 16) over f16 / bf16
 * K/V or an int8 cache, on CUDA cores (decode is bound by reading K/V).
 *
 * Grid: (split, kv head x row chunk, sequence). A block carries the ROWS
 * (4 or 8) query rows of one GQA group (its heads x Sq) that share each
 * K/V row it loads, so K/V is read once per group, not once per head.
 *
 * Inside a block, a key row is spread over D/8 lanes, 8 channels each (one
 * 16-byte load of f16/bf16, 8 bytes of int8), so a warp takes 256/D keys at
 * a time; every (warp, key slot) is its own stream with its own online
 * softmax in the log2 domain (scores pre-scaled by scale * log2 e), two keys
 * loaded ahead. Int8 rows are dequantised in registers: the channel factors
 * of K are folded into q, those of V applied once to the output, and each
 * lane's 8 channels share one group scale.
 *
 *   streams --(shared memory, LSE merge)--> one partial per block
 *   partials of all splits --(last block to arrive merges)--> out, lse
 *
 * The last block of a (sequence, group, row chunk) is found with an atomic
 * counter in the scratch, which it resets to zero, so one launch does it all.
 */
#include "common.cuh"

#define DC_THREADS (KR_CU_DECODE_WARPS * 32)
#define DC_LOG2E 1.4426950408889634f
#define DC_LN2 0.6931471805599453f

/* n (2, 4 or 8) consecutive f16/bf16 channels at p (aligned to n * 2 bytes). */
__device__ __forceinline__ void dc_load_f16(const void *p, int dt, int n, float *f) {
    unsigned w[4];
    if (n == 8) {
        const uint4 x = __ldg((const uint4 *)p);
        w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
    } else if (n == 4) {
        const uint2 x = __ldg((const uint2 *)p);
        w[0] = x.x, w[1] = x.y;
    } else {
        w[0] = __ldg((const unsigned *)p);
    }
    for (int i = 0; i < n / 2; i++) {
        float2 x;
        if (dt == KR_F16)
            x = __half22float2(*(const __half2 *)&w[i]);
        else
            x = __bfloat1622float2(*(const __nv_bfloat162 *)&w[i]);
        f[2 * i] = x.x;
        f[2 * i + 1] = x.y;
    }
}

/* The row scale of an int8 row, from the first two bytes of its metadata. */
__device__ __forceinline__ float dc_row_scale(const uint8_t *meta) {
    const unsigned short h = (unsigned short)(__ldg(meta) | (__ldg(meta + 1) << 8));
    return __half2float(__ushort_as_half(h));
}

/* Scores of key row j against the block's ROWS query rows, one lane per
 * key: s[r] = sum over D of q[r][c] k[c] (log2-domain q from shared memory,
 * every lane reading the same address: a broadcast). */
__device__ __forceinline__ void dc_scores(const kr_cu_attention &a, const float *qs, int64_t b,
                                          int64_t j, int64_t hk, float *s, const int ROWS,
                                          const int DT, const int D) {
    for (int r = 0; r < ROWS; r++) s[r] = 0.0f;
    if (DT == KR_I8) {
        const int64_t row = (b * a.k8.capacity + j) * a.Hkv + hk;
        const int8_t *kp = a.k8.data + row * D;
        const uint8_t *meta = a.k8.meta + row * KR_KV_INT8_META_BYTES(D);
        const float rs = dc_row_scale(meta);
        for (int g = 0; g < D / 32; g++) {
            float part[8];
            for (int r = 0; r < ROWS; r++) part[r] = 0.0f;
            for (int c16 = 0; c16 < 2; c16++) {
                const uint4 x = __ldg((const uint4 *)(kp + g * 32 + c16 * 16));
                const unsigned w[4] = {x.x, x.y, x.z, x.w};
                for (int i = 0; i < 16; i++) {
                    const float kv = (float)(int8_t)(w[i / 4] >> (8 * (i % 4)));
                    for (int r = 0; r < ROWS; r++)
                        part[r] = fmaf(qs[r * D + g * 32 + c16 * 16 + i], kv, part[r]);
                }
            }
            const float gs = __fmul_rn(rs, __fmul_rn((float)__ldg(meta + 2 + g), 1.0f / 255.0f));
            for (int r = 0; r < ROWS; r++) s[r] = fmaf(gs, part[r], s[r]);
        }
    } else {
        const char *kp = (const char *)a.k.data + 2 * cu_off(a.k, b, j, hk, 0);
        for (int c8 = 0; c8 < D / 8; c8++) {
            float kf[8];
            dc_load_f16(kp + 16 * c8, DT, 8, kf);
            for (int r = 0; r < ROWS; r++) {
                const float4 q0 = *(const float4 *)(qs + r * D + c8 * 8);
                const float4 q1 = *(const float4 *)(qs + r * D + c8 * 8 + 4);
                float d = s[r];
                d = fmaf(q0.x, kf[0], d), d = fmaf(q0.y, kf[1], d);
                d = fmaf(q0.z, kf[2], d), d = fmaf(q0.w, kf[3], d);
                d = fmaf(q1.x, kf[4], d), d = fmaf(q1.y, kf[5], d);
                d = fmaf(q1.z, kf[6], d), d = fmaf(q1.w, kf[7], d);
                s[r] = d;
            }
        }
    }
}

/* This lane's D/32 channels of V row j (int8: with its group scale in *vs). */
__device__ __forceinline__ void dc_vrow(const kr_cu_attention &a, int64_t b, int64_t j, int64_t hk,
                                        int lane, float *vf, float *vs, const int DT, const int D) {
    const int CPL = D / 32;
    if (DT == KR_I8) {
        const int64_t row = (b * a.v8.capacity + j) * a.Hkv + hk;
        const int8_t *p = a.v8.data + row * D + lane * CPL;
        unsigned w[2];
        if (CPL == 8) {
            const uint2 x = __ldg((const uint2 *)p);
            w[0] = x.x, w[1] = x.y;
        } else if (CPL == 4) {
            w[0] = __ldg((const unsigned *)p);
        } else {
            w[0] = __ldg((const unsigned short *)p);
        }
        for (int i = 0; i < CPL; i++) vf[i] = (float)(int8_t)(w[i / 4] >> (8 * (i % 4)));
        const uint8_t *meta = a.v8.meta + row * KR_KV_INT8_META_BYTES(D);
        *vs = __fmul_rn(dc_row_scale(meta),
                        __fmul_rn((float)__ldg(meta + 2 + lane * CPL / 32), 1.0f / 255.0f));
    } else {
        dc_load_f16((const char *)a.v.data + 2 * (cu_off(a.v, b, j, hk, 0) + lane * CPL), DT, CPL,
                    vf);
        *vs = 1.0f;
    }
}

__device__ __forceinline__ float dc_warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = cu_nanmax(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

__device__ __forceinline__ float dc_warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ void dc_body(const kr_cu_attention &a, int64_t splits,
                                        const kr_cu_decode_ws &ws, const int ROWS, const int DT,
                                        const int D) {
    extern __shared__ float sh[];
    const int NW = KR_CU_DECODE_WARPS, CPL = D / 32;
    float *qs = sh;                   /* [ROWS][D] */
    float *ps = qs + ROWS * D;        /* [NW][ROWS][32] probabilities of a tile */
    float *ml = ps + NW * ROWS * 32;  /* [NW][ROWS][2] */
    float *accs = ml + NW * ROWS * 2; /* [NW][ROWS][D] */
    __shared__ int is_last;

    const int64_t G = a.H / a.Hkv, R = G * a.Sq;
    const int64_t n_chunks = (R + ROWS - 1) / ROWS;
    const int64_t split = blockIdx.x, hk = blockIdx.y / n_chunks, chunk = blockIdx.y % n_chunks;
    const int64_t b = blockIdx.z;
    const int64_t unit = (b * a.Hkv + hk) * n_chunks + chunk;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int64_t L = a.has_lens ? cu_len(a.lens, b) : a.Skv;

    /* q rows, pre-scaled; each row's visible range and their union. */
    int64_t lo[8], hi[8], kmin = L, kmax = 0;
    for (int r = 0; r < ROWS; r++) {
        const int64_t row = chunk * ROWS + r;
        lo[r] = hi[r] = 0;
        if (row < R) {
            cu_row_range(a, L, row % a.Sq, &lo[r], &hi[r]);
            if (hi[r] > lo[r]) {
                kmin = min(kmin, lo[r]);
                kmax = max(kmax, hi[r]);
            }
        }
        const int64_t h = hk * G + row / a.Sq, i = row % a.Sq;
        for (int c = tid; c < D; c += DC_THREADS) {
            float x = 0.0f;
            if (row < R) {
                x = cu_load(a.q.data, a.q.dtype, cu_off(a.q, b, i, h, c)) * a.scale * DC_LOG2E;
                if (DT == KR_I8) x *= a.k8.chan[hk * a.D + c];
            }
            qs[r * D + c] = x;
        }
    }
    if (kmax < kmin) kmax = kmin;
    /* Every row sees the whole union (decode without a window): no per-key test. */
    bool uniform = true;
    for (int r = 0; r < ROWS; r++)
        if (chunk * ROWS + r < R && (lo[r] != kmin || hi[r] != kmax)) uniform = false;
    __syncthreads();
    const int64_t per = (kmax - kmin + splits - 1) / splits;
    const int64_t ks = min(kmax, kmin + split * per), ke = min(kmax, ks + per);

    /* Each warp walks its 32-key tiles: scores (a lane per key), one
     * online-softmax step per tile, then p * V (a lane per D/32 channels).
     * l is kept per lane and summed at the end. */
    float m[8], l[8], acc[8][8];
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int c = 0; c < CPL; c++) acc[r][c] = 0.0f;
    }
    float *wps = ps + warp * ROWS * 32;
    for (int64_t jt = ks + (int64_t)warp * 32; jt < ke; jt += (int64_t)NW * 32) {
        const int64_t j = jt + lane;
        float s[8];
        if (j < ke) dc_scores(a, qs, b, j, hk, s, ROWS, DT, D);
        for (int r = 0; r < ROWS; r++) {
            const bool hidden = j >= ke || (!uniform && (j < lo[r] || j >= hi[r]));
            const float sr = hidden ? -INFINITY : s[r];
            const float mn = cu_nanmax(m[r], dc_warp_max(sr));
            const float alpha = mn == -INFINITY ? 1.0f : exp2f(m[r] - mn);
            const float p = mn == -INFINITY ? 0.0f : exp2f(sr - mn);
            l[r] = l[r] * alpha + p;
            m[r] = mn;
            for (int c = 0; c < CPL; c++) acc[r][c] *= alpha;
            wps[r * 32 + lane] = p;
        }
        __syncwarp();
        const int nk = (int)min((int64_t)32, ke - jt);
#pragma unroll 8
        for (int jj = 0; jj < nk; jj++) {
            float vf[8], vs;
            dc_vrow(a, b, jt + jj, hk, lane, vf, &vs, DT, D);
            for (int r = 0; r < ROWS; r++) {
                const float p = wps[r * 32 + jj] * vs;
                for (int c = 0; c < CPL; c++) acc[r][c] = fmaf(p, vf[c], acc[r][c]);
            }
        }
        __syncwarp();
    }

    /* Merge the block's warps through shared memory. */
    for (int r = 0; r < ROWS; r++) {
        const float lsum = dc_warp_sum(l[r]);
        if (lane == 0) {
            ml[(warp * ROWS + r) * 2] = m[r];
            ml[(warp * ROWS + r) * 2 + 1] = lsum;
        }
        for (int c = 0; c < CPL; c++) accs[(warp * ROWS + r) * D + lane * CPL + c] = acc[r][c];
    }
    __syncthreads();
    const int NS = NW;
    const int64_t n_part = splits > 1 ? 1 : 0;
    for (int e = tid; e < ROWS * D; e += DC_THREADS) {
        const int r = e / D, c = e % D;
        float M = -INFINITY;
        for (int st = 0; st < NS; st++) M = cu_nanmax(M, ml[(st * ROWS + r) * 2]);
        float Lsum = 0.0f, O = 0.0f;
        for (int st = 0; st < NS; st++) {
            const float ms = ml[(st * ROWS + r) * 2];
            const float w = ms == -INFINITY ? 0.0f : exp2f(ms - M);
            Lsum += w * ml[(st * ROWS + r) * 2 + 1];
            O += w * accs[(st * ROWS + r) * D + c];
        }
        const bool empty = M == -INFINITY;
        const float o = empty ? 0.0f : O / Lsum;
        const float lse2 = empty ? -INFINITY : M + log2f(Lsum);
        const int64_t row = chunk * ROWS + r;
        if (n_part) {
            float *po = ws.part_o + ((unit * splits + split) * ROWS + r) * D;
            po[c] = o;
            if (c == 0) ws.part_lse[(unit * splits + split) * ROWS + r] = lse2;
        } else if (row < R) {
            const int64_t h = hk * G + row / a.Sq, i = row % a.Sq;
            const float f = DT == KR_I8 ? a.v8.chan[hk * a.D + c] : 1.0f;
            cu_store(a.out.data, a.out.dtype, cu_off(a.out, b, i, h, c), o * f);
            if (a.has_lse && c == 0)
                ((float *)a.lse.data)[cu_off(a.lse, b, h, i, 0)] = lse2 * DC_LN2;
        }
    }
    if (!n_part) return;

    /* The last split to arrive merges every split's partial. */
    __threadfence();
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(&ws.counters[unit], 1u) == (uint32_t)(splits - 1);
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    for (int e = tid; e < ROWS * D; e += DC_THREADS) {
        const int r = e / D, c = e % D;
        const int64_t row = chunk * ROWS + r;
        if (row >= R) continue;
        /* One pass, rescaling when the running maximum grows; the loads of
         * several splits are independent, so they overlap. */
        float M = -INFINITY, W = 0.0f, O = 0.0f;
#pragma unroll 8
        for (int64_t sp = 0; sp < splits; sp++) {
            const float ls = __ldcg(ws.part_lse + (unit * splits + sp) * ROWS + r);
            const float os = __ldcg(ws.part_o + ((unit * splits + sp) * ROWS + r) * D + c);
            if (ls > M) {
                const float k = M == -INFINITY ? 0.0f : exp2f(M - ls);
                W *= k;
                O *= k;
                M = ls;
            }
            const float w = ls == -INFINITY ? 0.0f : exp2f(ls - M);
            W += w;
            O = fmaf(w, os, O);
        }
        const bool empty = M == -INFINITY;
        const int64_t h = hk * G + row / a.Sq, i = row % a.Sq;
        const float f = DT == KR_I8 ? a.v8.chan[hk * a.D + c] : 1.0f;
        cu_store(a.out.data, a.out.dtype, cu_off(a.out, b, i, h, c), empty ? 0.0f : O / W * f);
        if (a.has_lse && c == 0)
            ((float *)a.lse.data)[cu_off(a.lse, b, h, i, 0)] =
                empty ? -INFINITY : (M + log2f(W)) * DC_LN2;
    }
    if (tid == 0) ws.counters[unit] = 0;
}

/* One kernel per (storage dtype, rows per block, head_dim): the body is
 * inlined with all three as constants, so unused rows, dtype branches and
 * channel loops compile away. */
#define DC_KERNEL(name, ROWS, DT, D)                                                               \
    __global__ void __launch_bounds__(DC_THREADS)                                                  \
        name(kr_cu_attention a, int64_t splits, kr_cu_decode_ws ws) {                              \
        dc_body(a, splits, ws, ROWS, DT, D);                                                       \
    }
#define DC_KERNELS(D)                                                                              \
    DC_KERNEL(dc_f16_r4_d##D, 4, KR_F16, D)                                                        \
    DC_KERNEL(dc_f16_r8_d##D, 8, KR_F16, D)                                                        \
    DC_KERNEL(dc_bf16_r4_d##D, 4, KR_BF16, D)                                                      \
    DC_KERNEL(dc_bf16_r8_d##D, 8, KR_BF16, D)                                                      \
    DC_KERNEL(dc_i8_r4_d##D, 4, KR_I8, D)                                                          \
    DC_KERNEL(dc_i8_r8_d##D, 8, KR_I8, D)
DC_KERNELS(64)
DC_KERNELS(128)
DC_KERNELS(256)

typedef void (*dc_kernel_fn)(kr_cu_attention, int64_t, kr_cu_decode_ws);
/* [head_dim 64/128/256][f16, bf16, int8][4 rows, 8 rows] */
static const dc_kernel_fn dc_kernels[3][3][2] = {
    {{dc_f16_r4_d64, dc_f16_r8_d64},
     {dc_bf16_r4_d64, dc_bf16_r8_d64},
     {dc_i8_r4_d64, dc_i8_r8_d64}},
    {{dc_f16_r4_d128, dc_f16_r8_d128},
     {dc_bf16_r4_d128, dc_bf16_r8_d128},
     {dc_i8_r4_d128, dc_i8_r8_d128}},
    {{dc_f16_r4_d256, dc_f16_r8_d256},
     {dc_bf16_r4_d256, dc_bf16_r8_d256},
     {dc_i8_r4_d256, dc_i8_r8_d256}},
};

static int dc_rows(const kr_cu_attention *a) { return (a->H / a->Hkv) * a->Sq <= 4 ? 4 : 8; }

static bool aligned16(const kr_tensor *t) {
    if ((uintptr_t)t->data % 16) return false;
    for (int i = 0; i < 3; i++)
        if (t->stride[i] % 8) return false;
    return t->stride[3] == 1;
}

extern "C" int kr_cu_decode_supported(const kr_cu_attention *a, char *why, size_t n) {
    if (a->Sq > 16) {
        snprintf(why, n, "decode kernel takes Sq <= 16, got %lld", (long long)a->Sq);
        return 0;
    }
    if (a->D != 64 && a->D != 128 && a->D != 256) {
        snprintf(why, n, "decode kernel takes head_dim 64, 128 or 256, got %lld", (long long)a->D);
        return 0;
    }
    if (a->has_mask) {
        snprintf(why, n, "decode kernel takes no additive mask");
        return 0;
    }
    if (a->Hkv > 65535 / 16 || a->B > 65535) {
        snprintf(why, n, "decode kernel grid: Hkv %lld or batch %lld too large", (long long)a->Hkv,
                 (long long)a->B);
        return 0;
    }
    if (!a->int8) {
        if (a->k.dtype != KR_F16 && a->k.dtype != KR_BF16) {
            snprintf(why, n, "decode kernel takes f16/bf16 K/V or an int8 cache, got %s",
                     kr_dtype_name(a->k.dtype));
            return 0;
        }
        if (!aligned16(&a->k) || !aligned16(&a->v)) {
            snprintf(why, n, "decode kernel needs K/V rows 16-byte aligned with unit inner stride");
            return 0;
        }
    }
    return 1;
}

extern "C" int64_t kr_cu_decode_splits(const kr_cu_attention *a, int n_sm) {
    const int64_t rows = dc_rows(a);
    const int64_t units = a->B * a->Hkv * (((a->H / a->Hkv) * a->Sq + rows - 1) / rows);
    int64_t lmax = a->Skv;
    if (a->has_lens && !a->lens.dev) {
        lmax = 0;
        for (int64_t b = 0; b < a->B; b++) lmax = a->lens.v[b] > lmax ? a->lens.v[b] : lmax;
    }
    /* Enough blocks for ~8 waves at 3 blocks per SM, but no split under 128 keys. */
    int64_t s = (8 * 3 * (int64_t)n_sm + units - 1) / units;
    const int64_t by_len = (lmax + 127) / 128;
    if (s > by_len) s = by_len;
    if (s > 1024) s = 1024;
    return s < 1 ? 1 : s;
}

extern "C" size_t kr_cu_decode_ws_bytes(const kr_cu_attention *a, int64_t splits,
                                        size_t *counter_bytes) {
    const int64_t rows = dc_rows(a);
    const int64_t units = a->B * a->Hkv * (((a->H / a->Hkv) * a->Sq + rows - 1) / rows);
    *counter_bytes = sizeof(uint32_t) * (size_t)units;
    return sizeof(float) * (size_t)(units * splits * rows * (a->D + 1));
}

extern "C" kr_status kr_cu_decode(const kr_cu_attention *a, int64_t splits,
                                  const kr_cu_decode_ws *ws, void *stream, char *err, size_t n) {
    const int rows = dc_rows(a), nw = KR_CU_DECODE_WARPS;
    const int64_t chunks = ((a->H / a->Hkv) * a->Sq + rows - 1) / rows;
    const size_t smem =
        sizeof(float) * (size_t)(rows * a->D + nw * rows * 32 + nw * rows * 2 + nw * rows * a->D);
    dim3 grid((unsigned)splits, (unsigned)(a->Hkv * chunks), (unsigned)a->B);
    const int dt = a->int8 ? 2 : a->k.dtype == KR_F16 ? 0 : 1;
    const int di = a->D == 64 ? 0 : a->D == 128 ? 1 : 2;
    dc_kernels[di][dt][rows == 8]<<<grid, DC_THREADS, smem, (cudaStream_t)stream>>>(*a, splits,
                                                                                    *ws);
    return cu_launched("decode attention", err, n);
}
