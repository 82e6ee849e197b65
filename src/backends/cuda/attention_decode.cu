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
#define DC_U 2 /* keys each stream loads ahead */
#define DC_LOG2E 1.4426950408889634f
#define DC_LN2 0.6931471805599453f

/* 8 channels of one K or V row as floats. */
__device__ __forceinline__ void dc_unpack(uint4 raw, int dt, float *f) {
    if (dt == KR_F16) {
        const __half2 *h = (const __half2 *)&raw;
        for (int i = 0; i < 4; i++) {
            const float2 x = __half22float2(h[i]);
            f[2 * i] = x.x;
            f[2 * i + 1] = x.y;
        }
    } else if (dt == KR_BF16) {
        const __nv_bfloat162 *h = (const __nv_bfloat162 *)&raw;
        for (int i = 0; i < 4; i++) {
            const float2 x = __bfloat1622float2(h[i]);
            f[2 * i] = x.x;
            f[2 * i + 1] = x.y;
        }
    } else { /* int8: the first 8 bytes */
        const int8_t *q = (const int8_t *)&raw;
        for (int i = 0; i < 8; i++) f[i] = (float)q[i];
    }
}

/* Loads this lane's 8 channels of row j (and, for int8, the group scale). */
__device__ __forceinline__ uint4 dc_load(const kr_cu_attention &a, int which, int dt, int64_t b,
                                         int64_t j, int64_t hk, int cidx, float *gscale) {
    uint4 raw;
    if (dt == KR_I8) {
        const kr_cu_int8 &s = which ? a.v8 : a.k8;
        const int64_t r = (b * s.capacity + j) * a.Hkv + hk;
        const uint2 x = __ldg((const uint2 *)(s.data + r * a.D + cidx * 8));
        raw.x = x.x;
        raw.y = x.y;
        raw.z = raw.w = 0;
        *gscale = cu_int8_group_scale(s.meta + r * KR_KV_INT8_META_BYTES(a.D),
                                      (cidx * 8) / KR_KV_INT8_GROUP);
    } else {
        const kr_tensor &t = which ? a.v : a.k;
        const char *p = (const char *)t.data + 2 * (cu_off(t, b, j, hk, 0) + cidx * 8);
        raw = __ldg((const uint4 *)p);
        *gscale = 1.0f;
    }
    return raw;
}

__device__ __forceinline__ void dc_body(const kr_cu_attention &a, int64_t splits,
                                        const kr_cu_decode_ws &ws, const int ROWS, const int DT) {
    extern __shared__ float sh[];
    const int D = (int)a.D, LPK = D / 8, KPW = 32 / LPK, NS = KR_CU_DECODE_WARPS * KPW;
    float *qs = sh;                 /* [ROWS][D] */
    float *ml = qs + ROWS * D;      /* [NS][ROWS][2] */
    float *accs = ml + NS * ROWS * 2; /* [NS][ROWS][D] */
    __shared__ int is_last;

    const int64_t G = a.H / a.Hkv, R = G * a.Sq;
    const int64_t n_chunks = (R + ROWS - 1) / ROWS;
    const int64_t split = blockIdx.x, hk = blockIdx.y / n_chunks, chunk = blockIdx.y % n_chunks;
    const int64_t b = blockIdx.z;
    const int64_t unit = (b * a.Hkv + hk) * n_chunks + chunk;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int cidx = lane % LPK, slot = lane / LPK, stream = warp * KPW + slot;
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
    __syncthreads();
    if (kmax < kmin) kmax = kmin;
    const int64_t per = (kmax - kmin + splits - 1) / splits;
    const int64_t ks = min(kmax, kmin + split * per), ke = min(kmax, ks + per);

    float m[8], l[8], acc[8][8];
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int c = 0; c < 8; c++) acc[r][c] = 0.0f;
    }
    /* The trip count is the warp's (its first key slot), so every lane
     * reaches the shuffles below; lanes past ke load nothing. */
    for (int64_t jw = ks + (int64_t)warp * KPW; jw < ke; jw += (int64_t)NS * DC_U) {
        const int64_t j0 = jw + slot;
        uint4 kr[DC_U], vr[DC_U];
        float kg[DC_U], vg[DC_U];
        for (int u = 0; u < DC_U; u++) {
            const int64_t j = j0 + (int64_t)u * NS;
            if (j < ke) {
                kr[u] = dc_load(a, 0, DT, b, j, hk, cidx, &kg[u]);
                vr[u] = dc_load(a, 1, DT, b, j, hk, cidx, &vg[u]);
            } else {
                kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
                kg[u] = vg[u] = 0.0f;
            }
        }
        float s[DC_U][8];
        for (int u = 0; u < DC_U; u++) {
            float kf[8];
            dc_unpack(kr[u], DT, kf);
            for (int r = 0; r < ROWS; r++) {
                const float *q = qs + r * D + cidx * 8;
                float d = 0.0f;
                for (int c = 0; c < 8; c++) d = fmaf(q[c], kf[c], d);
                s[u][r] = d * kg[u];
            }
        }
        for (int u = 0; u < DC_U; u++)
            for (int r = 0; r < ROWS; r++) {
                float x = s[u][r];
                for (int o = LPK / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
                const int64_t j = j0 + (int64_t)u * NS;
                s[u][r] = (j < lo[r] || j >= hi[r] || j >= ke) ? -INFINITY : x;
            }
        for (int r = 0; r < ROWS; r++) {
            float mn = m[r];
            for (int u = 0; u < DC_U; u++) mn = cu_nanmax(mn, s[u][r]);
            const float alpha = mn == -INFINITY ? 1.0f : exp2f(m[r] - mn);
            float p[DC_U], psum = 0.0f;
            for (int u = 0; u < DC_U; u++) {
                p[u] = mn == -INFINITY ? 0.0f : exp2f(s[u][r] - mn) * vg[u];
                psum += mn == -INFINITY ? 0.0f : exp2f(s[u][r] - mn);
            }
            l[r] = l[r] * alpha + psum;
            m[r] = mn;
            for (int c = 0; c < 8; c++) acc[r][c] *= alpha;
            for (int u = 0; u < DC_U; u++) {
                float vf[8];
                dc_unpack(vr[u], DT, vf);
                for (int c = 0; c < 8; c++) acc[r][c] = fmaf(p[u], vf[c], acc[r][c]);
            }
        }
    }

    /* Merge the block's streams through shared memory. */
    for (int r = 0; r < ROWS; r++) {
        if (cidx == 0) {
            ml[(stream * ROWS + r) * 2] = m[r];
            ml[(stream * ROWS + r) * 2 + 1] = l[r];
        }
        for (int c = 0; c < 8; c++) accs[(stream * ROWS + r) * D + cidx * 8 + c] = acc[r][c];
    }
    __syncthreads();
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
        float M = -INFINITY;
        for (int64_t sp = 0; sp < splits; sp++)
            M = cu_nanmax(M, __ldcg(ws.part_lse + (unit * splits + sp) * ROWS + r));
        float W = 0.0f, O = 0.0f;
        for (int64_t sp = 0; sp < splits; sp++) {
            const float ls = __ldcg(ws.part_lse + (unit * splits + sp) * ROWS + r);
            const float w = ls == -INFINITY ? 0.0f : exp2f(ls - M);
            W += w;
            O += w * __ldcg(ws.part_o + ((unit * splits + sp) * ROWS + r) * D + c);
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

/* One kernel per (storage dtype, rows per block): the body is inlined with
 * both as constants, so the unused rows and dtype branches compile away. */
#define DC_KERNEL(name, ROWS, DT)                                                                  \
    __global__ void __launch_bounds__(DC_THREADS)                                                  \
        name(kr_cu_attention a, int64_t splits, kr_cu_decode_ws ws) {                              \
        dc_body(a, splits, ws, ROWS, DT);                                                          \
    }
DC_KERNEL(dc_f16_r4, 4, KR_F16)
DC_KERNEL(dc_f16_r8, 8, KR_F16)
DC_KERNEL(dc_bf16_r4, 4, KR_BF16)
DC_KERNEL(dc_bf16_r8, 8, KR_BF16)
DC_KERNEL(dc_i8_r4, 4, KR_I8)
DC_KERNEL(dc_i8_r8, 8, KR_I8)

static int dc_rows(const kr_cu_attention *a) {
    return (a->H / a->Hkv) * a->Sq <= 4 ? 4 : 8;
}

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
    if (a->D != 32 && a->D != 64 && a->D != 128 && a->D != 256) {
        snprintf(why, n, "decode kernel takes head_dim 32, 64, 128 or 256, got %lld",
                 (long long)a->D);
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
    const int rows = dc_rows(a);
    const int64_t chunks = ((a->H / a->Hkv) * a->Sq + rows - 1) / rows;
    const int ns = KR_CU_DECODE_WARPS * (32 / (int)(a->D / 8));
    const size_t smem = sizeof(float) * (size_t)(rows * a->D + ns * rows * 2 + ns * rows * a->D);
    dim3 grid((unsigned)splits, (unsigned)(a->Hkv * chunks), (unsigned)a->B);
    const int dt = a->int8 ? KR_I8 : a->k.dtype;
    void (*kern)(kr_cu_attention, int64_t, kr_cu_decode_ws) =
        dt == KR_F16    ? (rows == 4 ? dc_f16_r4 : dc_f16_r8)
        : dt == KR_BF16 ? (rows == 4 ? dc_bf16_r4 : dc_bf16_r8)
                        : (rows == 4 ? dc_i8_r4 : dc_i8_r8);
    kern<<<grid, DC_THREADS, smem, (cudaStream_t)stream>>>(*a, splits, *ws);
    return cu_launched("decode attention", err, n);
}
