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
#include "tc.cuh"

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

/* The last split's merge reads DC_MERGE_BATCH(D) splits at a time. */
#ifndef DC_MERGE_BATCH
/* 16 at head_dim 128 (one round trip for the 16 splits of 1 x 4K); 12
 * elsewhere, where 16 made ptxas spill (head_dim 64 with 8 rows) */
#define DC_MERGE_BATCH(D) ((D) == 128 ? 16 : 12)
#endif

/* The end of a block, once every warp's (m, l, acc) is in shared memory
 * (ml: [NW][ROWS][2] max and sum, accs: [NW][ROWS][D] unnormalised output):
 * the warps are merged; with one split the result is stored, else the
 * block's partial is written and the last split of the unit to arrive
 * merges every split's partial into out (and lse). */
__device__ __forceinline__ void dc_merge(const kr_cu_attention &a, int64_t splits,
                                         const kr_cu_decode_ws &ws, const float *ml,
                                         const float *accs, int64_t unit, int64_t chunk, int64_t hk,
                                         int64_t b, const int ROWS, const int DT, const int D) {
    const int NW = KR_CU_DECODE_WARPS;
    const int tid = threadIdx.x;
    const int Sq = (int)a.Sq, G = (int)a.H / (int)a.Hkv, R = G * Sq;
    const int64_t split = blockIdx.x;
    __shared__ int is_last;
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
        const float o = empty ? 0.0f : O * __frcp_rn(Lsum);
        const float lse2 = empty ? -INFINITY : M + log2f(Lsum);
        const int row = (int)chunk * ROWS + r;
        if (n_part) {
            float *po = ws.part_o + ((unit * splits + split) * ROWS + r) * D;
            po[c] = o;
            if (c == 0) ws.part_lse[(unit * splits + split) * ROWS + r] = lse2;
        } else if (row < R) {
            const int64_t h = hk * G + (Sq == 1 ? row : row / Sq), i = Sq == 1 ? 0 : row % Sq;
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
    /* One pass: a thread takes 4 channels of one row and reads every split's
     * LSE and partial for them, DC_MERGE_BATCH(D) splits at a time with all
     * loads of a batch independent (one round trip to L2 for up to that many
     * splits), folding each batch in by its maximum. */
    const float *lse_of = ws.part_lse + unit * splits * ROWS;
    for (int e = 4 * tid; e < ROWS * D; e += 4 * DC_THREADS) {
        const int r = e / D, c = e % D;
        const int row = (int)chunk * ROWS + r;
        if (row >= R) continue;
        const float *po = ws.part_o + (unit * splits * ROWS + r) * D + c;
        float M = -INFINITY, W = 0.0f, O[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t s0 = 0; s0 < splits; s0 += DC_MERGE_BATCH(D)) {
            float ls[16]; /* DC_MERGE_BATCH(D) <= 16 used */
            float4 os[16];
#pragma unroll
            for (int i = 0; i < DC_MERGE_BATCH(D); i++) {
                const bool ok = s0 + i < splits;
                ls[i] = ok ? __ldcg(lse_of + (s0 + i) * ROWS + r) : -INFINITY;
                os[i] = ok ? __ldcg((const float4 *)(po + (s0 + i) * ROWS * D))
                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
            float mn = M;
#pragma unroll
            for (int i = 0; i < DC_MERGE_BATCH(D); i++) mn = cu_nanmax(mn, ls[i]);
            if (mn == -INFINITY) continue;     /* every split so far saw no key */
            const float alpha = exp2f(M - mn); /* 0 while M is -inf */
            W *= alpha;
            for (int k = 0; k < 4; k++) O[k] *= alpha;
#pragma unroll
            for (int i = 0; i < DC_MERGE_BATCH(D); i++) {
                const float w = exp2f(ls[i] - mn);
                W += w;
                O[0] = fmaf(w, os[i].x, O[0]), O[1] = fmaf(w, os[i].y, O[1]);
                O[2] = fmaf(w, os[i].z, O[2]), O[3] = fmaf(w, os[i].w, O[3]);
            }
            M = mn;
        }
        const bool empty = M == -INFINITY;
        const int64_t h = hk * G + (Sq == 1 ? row : row / Sq), i = Sq == 1 ? 0 : row % Sq;
        const float inv = __frcp_rn(W);
        for (int k = 0; k < 4; k++) {
            const float f = DT == KR_I8 ? a.v8.chan[hk * a.D + c + k] : 1.0f;
            cu_store(a.out.data, a.out.dtype, cu_off(a.out, b, i, h, c + k),
                     empty ? 0.0f : O[k] * inv * f);
        }
        if (a.has_lse && c == 0)
            ((float *)a.lse.data)[cu_off(a.lse, b, h, i, 0)] =
                empty ? -INFINITY : (M + log2f(W)) * DC_LN2;
    }
    if (tid == 0) ws.counters[unit] = 0;
}

/* Warp state of the CUDA-core kernels (lane owns channels lane * D/32 ..)
 * into shared memory, then dc_merge. */
__device__ __forceinline__ void dc_finish(const kr_cu_attention &a, int64_t splits,
                                          const kr_cu_decode_ws &ws, float *ml, float *accs,
                                          const float *m, const float *l, float (*acc)[8],
                                          int64_t unit, int64_t chunk, int64_t hk, int64_t b,
                                          const int ROWS, const int DT, const int D) {
    const int CPL = D / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = 0; r < ROWS; r++) {
        const float lsum = dc_warp_sum(l[r]);
        if (lane == 0) {
            ml[(warp * ROWS + r) * 2] = m[r];
            ml[(warp * ROWS + r) * 2 + 1] = lsum;
        }
        for (int c = 0; c < CPL; c++) accs[(warp * ROWS + r) * D + lane * CPL + c] = acc[r][c];
    }
    dc_merge(a, splits, ws, ml, accs, unit, chunk, hk, b, ROWS, DT, D);
}

/* The visible range [lo[r], hi[r]) of each of the block's ROWS query rows
 * (empty past the R real ones), their union [*kmin, *kmax), and whether
 * every real row sees exactly the union (then no per-key test is needed). */
__device__ __forceinline__ void dc_ranges(const kr_cu_attention &a, int64_t L, int64_t chunk,
                                          int64_t R, int64_t *lo, int64_t *hi, int64_t *kmin,
                                          int64_t *kmax, bool *uniform, const int ROWS) {
    *kmin = L, *kmax = 0;
    for (int r = 0; r < ROWS; r++) {
        lo[r] = hi[r] = 0;
        if (chunk * ROWS + r < R) {
            cu_row_range(a, L, (chunk * ROWS + r) % a.Sq, &lo[r], &hi[r]);
            if (hi[r] > lo[r]) *kmin = min(*kmin, lo[r]), *kmax = max(*kmax, hi[r]);
        }
    }
    if (*kmax < *kmin) *kmax = *kmin;
    *uniform = true;
    for (int r = 0; r < ROWS; r++)
        if (chunk * ROWS + r < R && (lo[r] != *kmin || hi[r] != *kmax)) *uniform = false;
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

    const int64_t G = a.H / a.Hkv, R = G * a.Sq;
    const int64_t n_chunks = (R + ROWS - 1) / ROWS;
    const int64_t split = blockIdx.x, hk = blockIdx.y / n_chunks, chunk = blockIdx.y % n_chunks;
    const int64_t b = blockIdx.z;
    const int64_t unit = (b * a.Hkv + hk) * n_chunks + chunk;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int64_t L = a.has_lens ? cu_len(a.lens, b) : a.Skv;

    /* each row's visible range and their union; q rows, pre-scaled */
    int64_t lo[8], hi[8], kmin, kmax;
    bool uniform;
    dc_ranges(a, L, chunk, R, lo, hi, &kmin, &kmax, &uniform, ROWS);
    for (int r = 0; r < ROWS; r++) {
        const int64_t row = chunk * ROWS + r;
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

    dc_finish(a, splits, ws, ml, accs, m, l, acc, unit, chunk, hk, b, ROWS, DT, D);
}

/* One kernel per (storage dtype, rows per block, head_dim): the body is
 * inlined with all three as constants, so unused rows, dtype branches and
 * channel loops compile away. */
#define DECODE_KERNEL(name, body)                                                                  \
    __global__ void __launch_bounds__(DC_THREADS)                                                  \
        name(kr_cu_attention a, int64_t splits, kr_cu_decode_ws ws) {                              \
        body;                                                                                      \
    }
/* v2 serves the int8 cache at head_dim 256 (v4 covers 64 and 128). */
DECODE_KERNEL(dc_i8_r4_d256, dc_body(a, splits, ws, 4, KR_I8, 256))
DECODE_KERNEL(dc_i8_r8_d256, dc_body(a, splits, ws, 8, KR_I8, 256))

/* ---- v3: f16 / bf16 K/V through a cp.async pipeline in shared memory ----
 *
 * The block streams its split's keys in tiles of DP_BT(D) keys (32 KiB of K
 * and 32 KiB of V at head_dim 128), DP_STAGES tiles deep: while the warps compute on one tile
 * the next one is in flight, so each SM keeps ~64-128 KiB of loads outstanding
 * without holding them in registers. Rows are padded by 16 bytes in shared
 * memory so that 8 lanes reading 8 different key rows hit 8 different banks.
 *
 * In a tile, warp w owns keys [w * KPW, (w + 1) * KPW) (KPW = 2048 / D): for
 * the scores each key is spread over D / 64 lanes of 64 channels each (one
 * shuffle step per extra lane), for p * V every lane takes D / 32 channels of
 * each of the warp's keys, as in v2. */
/* The lab (KR_LAB_PART=decode bench/prefill_lab.sh) overrides these. H100,
 * 32:8 heads, head_dim 128: 128-key tiles in 2 stages (one block of 139 KiB
 * per SM) beat 64-key tiles in 3 (two blocks of 106 KiB) by 2-5 % from 256 MB
 * of KV and lose 5-7 % at 1K keys (docs/PERFORMANCE.md, CUDA history). The
 * tensor-core kernels take at most 128 keys a tile (a warp's scores live in
 * registers: 32 keys); v3 (head_dim 256) keeps 32. */
#ifndef DP_STAGES
#define DP_STAGES 2 /* dp_wait_ahead waits for DP_STAGES - 2 (2 to 4 stages) */
#endif
#ifndef DP_TILE_KEYS
#define DP_TILE_KEYS 128
#endif
#define DP_BT(D) ((D) >= 256 ? 32 : DP_TILE_KEYS)
static_assert(DP_TILE_KEYS % (16 * KR_CU_DECODE_WARPS) == 0 &&
                  DP_TILE_KEYS / KR_CU_DECODE_WARPS <= 32,
              "a warp's share of a tensor-core tile: 16-key steps, at most 32 keys");
#define DP_PITCH(D) (2 * (D) + 16)

/* Wait until at most DP_STAGES - 2 groups (the tiles ahead) are in flight, or none. */
__device__ __forceinline__ void dp_wait_ahead(void) { tc_wait(DP_STAGES - 2); }

/* Issue the copies of the tile of keys j0 .. j0 + BT into K and V stages;
 * keys at or past ke are zero-filled. A thread copies one 16-byte column
 * of every (128 / (D / 8))-th row, so its addresses advance by a stride. */
__device__ __forceinline__ void dp_load_tile(const kr_cu_attention &a, char *ks_, char *vs_,
                                             int64_t b, int64_t hk, int64_t j0, int64_t ke,
                                             const int D) {
    const int BT = DP_BT(D), CH = D / 8, P = DP_PITCH(D), RPP = DC_THREADS / CH;
    const int r0 = threadIdx.x / CH, c = threadIdx.x % CH;
    const int64_t sk = 2 * RPP * a.k.stride[1], sv = 2 * RPP * a.v.stride[1];
    const char *kp = (const char *)a.k.data + 2 * cu_off(a.k, b, j0 + r0, hk, 8 * c);
    const char *vp = (const char *)a.v.data + 2 * cu_off(a.v, b, j0 + r0, hk, 8 * c);
    if (j0 + BT <= ke) { /* a whole tile: no key to zero-fill */
        for (int r = r0; r < BT; r += RPP, kp += sk, vp += sv) {
            tc_cp16(ks_ + r * P + 16 * c, kp, true);
            tc_cp16(vs_ + r * P + 16 * c, vp, true);
        }
        return;
    }
    for (int r = r0; r < BT; r += RPP, kp += sk, vp += sv) {
        const bool ok = j0 + r < ke;
        tc_cp16(ks_ + r * P + 16 * c, ok ? kp : (const char *)a.k.data, ok);
        tc_cp16(vs_ + r * P + 16 * c, ok ? vp : (const char *)a.v.data, ok);
    }
}

/* DP_TMA (lab variant, sm_90 and up; -DDP_TMA=1): the tensor-core kernels' f16/bf16
 * tiles come in by bulk tensor copies (TMA) completing on one mbarrier per
 * stage, issued by one thread, instead of every thread's 16-byte cp.async
 * (32 a thread a tile at head_dim 128, with their address arithmetic). A
 * tile is D / 64 boxes of [BT keys][64 channels] as the 128-byte swizzle
 * writes them (16-byte chunk c of row r at c ^ (r % 8)); keys past the
 * split are loaded (rows past the tensor come in as zeros) and their V rows
 * zeroed after the copy lands (a V row of garbage could hold NaN, which a
 * zero weight would not cancel). A 1-d bulk copy per row (cp.async.bulk)
 * was measured first: 2.8x slower (docs/PERFORMANCE.md, CUDA history 57).
 * The tensor maps measured up to 4 % faster for fp16 and 2-8 % for int8 on
 * the H100 (history 58). Off by default until racecheck is re-run on the
 * int8 kernel: its warnings were traced to the prologue's copies issued
 * apart from the mbarriers' init and that is mended (history 59), but the
 * mended kernel has not run on a GPU yet, nor the full conformance grid. */
#ifndef DP_TMA
#define DP_TMA 0
#endif
#if DP_TMA && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define DP_USE_TMA 1
#else
#define DP_USE_TMA 0
#endif
/* the K and V maps of a TMA call (kernel parameters: __grid_constant__) */
typedef struct dp_maps {
    CUtensorMap k, v;
} dp_maps;

/* Byte offset of 16-byte chunk c of key row r (s = r % 8) in a TMA tile of BT rows. */
__device__ __forceinline__ int dp_sw(int r, int c, int s, const int BT) {
    return (c / 8) * BT * 128 + r * 128 + (((c % 8) ^ s) * 16);
}

#if DP_USE_TMA
__device__ __forceinline__ unsigned dp_smem(const void *p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
/* Thread 0: the stages' mbarriers, one arrival each (the expect_tx of the
 * thread that issues the tile). */
__device__ __forceinline__ void dp_bars_init(uint64_t *bars, const int n) {
    for (int s = 0; s < n; s++)
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(dp_smem(bars + s)));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
/* Thread 0: the tile of keys j0 .. j0 + BT into the K and V stages. The
 * stage was last read by ldmatrix and written by the zeroing of the generic
 * proxy before the block's barrier: the proxy fence orders those accesses
 * before the copies' writes. */
__device__ __forceinline__ void dp_tma_tile(const dp_maps *mp, char *ks_, char *vs_, int b, int hk,
                                            int j0, uint64_t *bar, const int BT, const int NB) {
    /* NB boxes of 128-byte rows a tile (D / 64 for f16/bf16; 1 for the int8
     * codes at head_dim 128) */
    const unsigned sb = dp_smem(bar);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(sb),
                 "r"((unsigned)(2 * NB * BT * 128))
                 : "memory");
#pragma unroll
    for (int h = 0; h < NB; h++) {
        asm volatile(
            "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::"
            "bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dp_smem(ks_ + h * BT * 128)),
            "l"(&mp->k), "r"(64 * h), "r"(j0), "r"(hk), "r"(b), "r"(sb)
            : "memory");
        asm volatile(
            "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::"
            "bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dp_smem(vs_ + h * BT * 128)),
            "l"(&mp->v), "r"(64 * h), "r"(j0), "r"(hk), "r"(b), "r"(sb)
            : "memory");
    }
}
/* Spin until the stage's phase of the given parity has completed. */
__device__ __forceinline__ void dp_bar_wait(uint64_t *bar, unsigned parity) {
    asm volatile("{\n.reg .pred p;\nDP_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra DP_WAIT;\n}\n" ::"r"(dp_smem(bar)),
                 "r"(parity)
                 : "memory");
}
#endif

__device__ __forceinline__ void dp_cvt8(const uint4 x, const int DT, float *f) {
    const unsigned w[4] = {x.x, x.y, x.z, x.w};
    for (int i = 0; i < 4; i++) {
        float2 y;
        if (DT == KR_F16)
            y = __half22float2(*(const __half2 *)&w[i]);
        else
            y = __bfloat1622float2(*(const __nv_bfloat162 *)&w[i]);
        f[2 * i] = y.x;
        f[2 * i + 1] = y.y;
    }
}

__device__ __forceinline__ void dp_body(const kr_cu_attention &a, int64_t splits,
                                        const kr_cu_decode_ws &ws, const int ROWS, const int DT,
                                        const int D) {
    extern __shared__ __align__(16) float sh[];
    const int NW = KR_CU_DECODE_WARPS, CPL = D / 32;
    const int BT = DP_BT(D), P = DP_PITCH(D), KPW = BT / NW;
    float *qs = sh;                                /* [ROWS][D] */
    float *ps = qs + ROWS * D;                     /* [NW][KPW][ROWS] */
    char *stages = (char *)(ps + NW * KPW * ROWS); /* [STAGES][K tile, V tile] */
    const int STB = 2 * BT * P;                    /* bytes of one stage */
    float *ml = (float *)stages;                   /* after the loop: [NW][ROWS][2] */
    float *accs = ml + NW * ROWS * 2;              /* and [NW][ROWS][D] */

    const int64_t G = a.H / a.Hkv, R = G * a.Sq;
    const int64_t n_chunks = (R + ROWS - 1) / ROWS;
    const int64_t split = blockIdx.x, hk = blockIdx.y / n_chunks, chunk = blockIdx.y % n_chunks;
    const int64_t b = blockIdx.z;
    const int64_t unit = (b * a.Hkv + hk) * n_chunks + chunk;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int64_t L = a.has_lens ? cu_len(a.lens, b) : a.Skv;

    int64_t lo[8], hi[8], kmin, kmax;
    bool uniform;
    dc_ranges(a, L, chunk, R, lo, hi, &kmin, &kmax, &uniform, ROWS);
    const int64_t per = (kmax - kmin + splits - 1) / splits;
    const int64_t ks = min(kmax, kmin + split * per), ke = min(kmax, ks + per);
    const int64_t nt = (ke - ks + BT - 1) / BT;

    /* Start the pipeline first, then stage q while the loads fly. */
    for (int t = 0; t < DP_STAGES - 1; t++) {
        if (t < nt)
            dp_load_tile(a, stages + t * STB, stages + t * STB + BT * P, b, hk,
                         ks + (int64_t)t * BT, ke, D);
        tc_commit();
    }
    for (int r = 0; r < ROWS; r++) {
        const int64_t row = chunk * ROWS + r;
        const int64_t h = hk * G + row / a.Sq, i = row % a.Sq;
        for (int c = tid; c < D; c += DC_THREADS)
            qs[r * D + c] =
                row < R ? cu_load(a.q.data, a.q.dtype, cu_off(a.q, b, i, h, c)) * a.scale * DC_LOG2E
                        : 0.0f;
    }

    float m[8], l[8], acc[8][8];
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int c = 0; c < CPL; c++) acc[r][c] = 0.0f;
    }
    const int kk = lane % KPW, part = lane / KPW;
    float *wps = ps + warp * KPW * ROWS;
    for (int64_t t = 0; t < nt; t++) {
        dp_wait_ahead();
        __syncthreads(); /* tile t landed for every thread; tile t - 1 is consumed */
        {
            const int64_t tn = t + DP_STAGES - 1;
            char *st = stages + (tn % DP_STAGES) * STB;
            if (tn < nt) dp_load_tile(a, st, st + BT * P, b, hk, ks + tn * BT, ke, D);
            tc_commit();
        }
        const char *kt = stages + (t % DP_STAGES) * STB, *vt = kt + BT * P;
        const int64_t j0 = ks + t * BT + warp * KPW;
        /* scores: this lane's 64 channels of key kk, then the key's lanes summed */
        float s[8];
        for (int r = 0; r < ROWS; r++) s[r] = 0.0f;
        const char *kr = kt + (warp * KPW + kk) * P + part * 128;
#pragma unroll
        for (int c8 = 0; c8 < 8; c8++) {
            float kf[8];
            dp_cvt8(*(const uint4 *)(kr + 16 * c8), DT, kf);
            for (int r = 0; r < ROWS; r++) {
                const float4 q0 = *(const float4 *)(qs + r * D + part * 64 + c8 * 8);
                const float4 q1 = *(const float4 *)(qs + r * D + part * 64 + c8 * 8 + 4);
                float d = s[r];
                d = fmaf(q0.x, kf[0], d), d = fmaf(q0.y, kf[1], d);
                d = fmaf(q0.z, kf[2], d), d = fmaf(q0.w, kf[3], d);
                d = fmaf(q1.x, kf[4], d), d = fmaf(q1.y, kf[5], d);
                d = fmaf(q1.z, kf[6], d), d = fmaf(q1.w, kf[7], d);
                s[r] = d;
            }
        }
        for (int o = KPW; o < 32; o <<= 1)
            for (int r = 0; r < ROWS; r++) s[r] += __shfl_xor_sync(0xffffffffu, s[r], o);
        const int64_t j = j0 + kk;
        for (int r = 0; r < ROWS; r++) {
            const bool hidden = j >= ke || (!uniform && (j < lo[r] || j >= hi[r]));
            const float sr = hidden ? -INFINITY : s[r];
            const float mn = cu_nanmax(m[r], dc_warp_max(sr));
            const float alpha = mn == -INFINITY ? 1.0f : exp2f(m[r] - mn);
            const float p = mn == -INFINITY ? 0.0f : exp2f(sr - mn);
            l[r] = l[r] * alpha + (part == 0 ? p : 0.0f);
            m[r] = mn;
            for (int c = 0; c < CPL; c++) acc[r][c] *= alpha;
            if (part == 0) wps[kk * ROWS + r] = p;
        }
        __syncwarp();
        /* p * V over the warp's keys; zero-filled rows past ke have p = 0 */
#pragma unroll 4
        for (int k2 = 0; k2 < KPW; k2++) {
            const char *vr = vt + (warp * KPW + k2) * P + lane * CPL * 2;
            float vf[8];
            if (CPL == 8) {
                dp_cvt8(*(const uint4 *)vr, DT, vf);
            } else {
                const uint2 x =
                    CPL == 4 ? *(const uint2 *)vr : make_uint2(*(const unsigned *)vr, 0u);
                dp_cvt8(make_uint4(x.x, x.y, 0u, 0u), DT, vf);
            }
            for (int r = 0; r < ROWS; r++) {
                const float p = wps[k2 * ROWS + r];
                for (int c = 0; c < CPL; c++) acc[r][c] = fmaf(p, vf[c], acc[r][c]);
            }
        }
        __syncwarp();
    }
    tc_wait(0);
    __syncthreads(); /* the stages are reused for the merge */
    dc_finish(a, splits, ws, ml, accs, m, l, acc, unit, chunk, hk, b, ROWS, DT, D);
}

/* v3 serves head_dim 256 (v4 covers 64 and 128). */
DECODE_KERNEL(dp_f16_r4_d256, dp_body(a, splits, ws, 4, KR_F16, 256))
DECODE_KERNEL(dp_f16_r8_d256, dp_body(a, splits, ws, 8, KR_F16, 256))
DECODE_KERNEL(dp_bf16_r4_d256, dp_body(a, splits, ws, 4, KR_BF16, 256))
DECODE_KERNEL(dp_bf16_r8_d256, dp_body(a, splits, ws, 8, KR_BF16, 256))

/* ---- v4: the same pipeline, scores and p * V on tensor cores (mma.sync) ----
 *
 * For head_dim 64 and 128. A warp's KPW keys of a tile go through
 * m16n8k16 MMAs with the block's query rows as M (ROWS of the 16 are real,
 * the rest zero: decode is bound by reading K/V, so the idle rows cost
 * nothing that matters) and keys as N: S = Q K^T with K fragments read by
 * ldmatrix, then P (rounded to the storage type) times V with V fragments
 * read by ldmatrix.trans, the accumulators of S reused as the A operand of
 * P V as in FlashAttention-2. A lane holds query row lane / 4 and, of each
 * 8-key or 8-channel block, columns 2 (lane % 4) and 2 (lane % 4) + 1.
 * q enters the MMA unscaled (exact for f16 q over an f16 cache); the scale
 * and log2 e are applied to S in fp32. */
/* c[0..1] += A B for one m16n8k16 step; A rows 8..15 are zero (a1 = a3 = 0)
 * and the accumulators of those rows are dropped. */
__device__ __forceinline__ void dm_mma(float *c, unsigned a0, unsigned a2, unsigned b0, unsigned b1,
                                       const int DT) {
    float z2 = 0.0f, z3 = 0.0f; /* rows 8..15: zero in, dropped out */
    if (DT == KR_F16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(z2), "+f"(z3)
                     : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(z2), "+f"(z3)
                     : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

/* What a v4 block works on: its (sequence, kv head, row chunk) unit, the key
 * range [ks, ke) of its split, and this lane's query row (lane / 4): its
 * visible range, whether it is a real row, and whether every row of the
 * block sees the same range (then no per-key test is needed). */
typedef struct dm_unit {
    int64_t G, R, hk, chunk, b, unit, ks, ke, mylo, myhi;
    bool uniform, live;
} dm_unit;

__device__ __forceinline__ dm_unit dm_unit_of(const kr_cu_attention &a, int64_t splits,
                                              const int ROWS) {
    dm_unit u;
    /* 32-bit index arithmetic (heads, rows and chunks are small): every
     * 64-bit division here cost a range check and a branch on top of the
     * 32-bit one, on the chain before the first tile's loads */
    const int Sq = (int)a.Sq, G = (int)a.H / (int)a.Hkv, R = G * Sq;
    const unsigned n_chunks = (unsigned)(R + ROWS - 1) / ROWS, hk = blockIdx.y / n_chunks;
    u.G = G, u.R = R, u.hk = hk, u.chunk = blockIdx.y - hk * n_chunks, u.b = blockIdx.z;
    u.unit = (u.b * a.Hkv + u.hk) * n_chunks + u.chunk;
    const int64_t L = a.has_lens ? cu_len(a.lens, u.b) : a.Skv;
    const int myr = (threadIdx.x % 32) / 4;
    int64_t kmin = L, kmax = 0;
    u.mylo = u.myhi = 0;
    u.uniform = true;
    if (!a.causal && a.window_left < 0 && a.window_right < 0) {
        /* no mask: every row sees [0, L) (what cu_row_range gives) */
        kmin = 0, kmax = L, u.mylo = 0, u.myhi = L;
    } else {
        /* the rows' ranges are computed twice rather than kept in arrays,
         * which would go to local memory */
        const int r0 = (int)u.chunk * ROWS;
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            int64_t lo = 0, hi = 0;
            if (r0 + r < R) cu_row_range(a, L, (r0 + r) % Sq, &lo, &hi);
            if (hi > lo) kmin = min(kmin, lo), kmax = max(kmax, hi);
        }
        if (kmax < kmin) kmax = kmin;
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            int64_t lo = 0, hi = 0;
            if (r0 + r < R) {
                cu_row_range(a, L, (r0 + r) % Sq, &lo, &hi);
                if (lo != kmin || hi != kmax) u.uniform = false;
            }
            if (r == myr) u.mylo = lo, u.myhi = hi;
        }
    }
    u.live = myr < ROWS && u.chunk * ROWS + myr < u.R;
    const int64_t per = (kmax - kmin + splits - 1) / splits;
    u.ks = min(kmax, kmin + (int64_t)blockIdx.x * per);
    u.ke = min(kmax, u.ks + per);
    return u;
}

/* The block's q rows (times chan[c] when given) staged in shared memory,
 * then this lane's A fragments of each 16-channel step (rows 0..7; rows
 * 8..15 of the MMAs are zero). */
__device__ __forceinline__ void dm_q_frags(const kr_cu_attention &a, const dm_unit &u,
                                           const float *chan, float *qs, unsigned (*qa)[2],
                                           const int ROWS, const int DT, const int D,
                                           const bool PERM) {
    for (int r = 0; r < ROWS; r++) {
        const int row = (int)u.chunk * ROWS + r, Sq = (int)a.Sq;
        const int64_t h = u.hk * u.G + (Sq == 1 ? row : row / Sq), i = Sq == 1 ? 0 : row % Sq;
        for (int c = threadIdx.x; c < D; c += DC_THREADS)
            qs[r * D + c] = row < u.R ? cu_load(a.q.data, a.q.dtype, cu_off(a.q, u.b, i, h, c)) *
                                            (chan ? chan[c] : 1.0f)
                                      : 0.0f;
    }
    __syncthreads();
    const int lane = threadIdx.x % 32, myr = lane / 4, q4 = lane % 4;
#pragma unroll
    for (int k = 0; k < D / 16; k++) {
        /* PERM (the int8 cache): MMA channels 2 q4 + e and 2 q4 + 8 + e are the
         * step's channels 4 q4 + e and 4 q4 + 2 + e, the order in which a lane
         * holds its four K codes (dq_body) */
        const float *qr = qs + myr * D + 16 * k + (PERM ? 4 : 2) * q4;
        const int hi = PERM ? 2 : 8;
        qa[k][0] = myr < ROWS ? tc_pack(qr[0], qr[1], DT) : 0u;
        qa[k][1] = myr < ROWS ? tc_pack(qr[hi], qr[hi + 1], DT) : 0u;
    }
}

/* Scores of this lane's keys (j0 + 8n + 2(lane % 4) + e) scaled into the
 * log2 domain, hidden ones -inf; returns the tile maximum of its row. */
__device__ __forceinline__ float dm_mask_max(float (*sc)[2], const int NT, int64_t j0,
                                             const dm_unit &u, float qscale) {
    const int q4 = threadIdx.x % 4;
    float tmax = -INFINITY;
    if (u.live && u.uniform && j0 + 8 * NT <= u.ke) {
        /* a real row that sees every key of the block, none past the split */
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                sc[n][e] *= qscale;
                tmax = cu_nanmax(tmax, sc[n][e]);
            }
    } else {
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int64_t j = j0 + 8 * n + 2 * q4 + e;
                const bool hidden =
                    !u.live || j >= u.ke || (!u.uniform && (j < u.mylo || j >= u.myhi));
                sc[n][e] = hidden ? -INFINITY : sc[n][e] * qscale;
                tmax = cu_nanmax(tmax, sc[n][e]);
            }
    }
    tmax = cu_nanmax(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    return cu_nanmax(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
}

/* After the loop: the row sums of the 4 lanes of a row combined, each warp's
 * (m, l, o * oscale) into shared memory (the stages, free now), dc_merge. */
__device__ __forceinline__ void dm_finish(const kr_cu_attention &a, int64_t splits,
                                          const kr_cu_decode_ws &ws, const dm_unit &u, float *ml,
                                          float m, float l, float (*o)[2], float oscale,
                                          const int ROWS, const int DT, const int D,
                                          const bool PERM) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, myr = lane / 4, q4 = lane % 4;
    float *accs = ml + KR_CU_DECODE_WARPS * ROWS * 2;
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    __syncthreads();
    if (myr < ROWS) {
        if (q4 == 0) {
            ml[(warp * ROWS + myr) * 2] = m;
            ml[(warp * ROWS + myr) * 2 + 1] = l;
        }
#pragma unroll
        for (int n = 0; n < D / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                /* PERM (the int8 cache): block n = 2 x (16-channel half) + parity,
                 * column 2 q4 + e is channel 2 (2 q4 + e) + parity of that half */
                const int c = PERM ? (n / 2) * 16 + 4 * q4 + 2 * e + n % 2 : 8 * n + 2 * q4 + e;
                accs[(warp * ROWS + myr) * D + c] = o[n][e] * oscale;
            }
    }
    dc_merge(a, splits, ws, ml, accs, u.unit, u.chunk, u.hk, u.b, ROWS, DT, D);
}

/* mp: the K/V maps of the TMA variant (DP_TMA), else NULL (cp.async). */
__device__ __forceinline__ void dm_body(const kr_cu_attention &a, int64_t splits,
                                        const kr_cu_decode_ws &ws, const dp_maps *mp,
                                        const int ROWS, const int DT, const int D) {
    extern __shared__ __align__(16) float sh[];
    const bool tma = DP_USE_TMA && mp != NULL;
    const int NW = KR_CU_DECODE_WARPS;
    const int BT = DP_BT(D), P = tma ? 128 : DP_PITCH(D), KPW = BT / NW;
    const int NT = KPW / 8;                 /* 8-key blocks of a warp's share of a tile */
    const int NC = D / 8;                   /* 8-channel blocks of the output */
    float *qs = sh;                         /* [ROWS][D] */
    char *stages = (char *)(sh + ROWS * D); /* [STAGES][K tile, V tile] */
    /* TMA: the stages' mbarriers, then the stages at the next 1024 bytes (the
     * swizzle atom: a row's swizzle is its address bits 7-9) */
#if DP_USE_TMA
    uint64_t *bars = (uint64_t *)(void *)stages;
    if (tma) stages = (char *)(((uintptr_t)(stages + 64) + 1023) & ~(uintptr_t)1023);
#endif
    const int STB = tma ? 2 * BT * 2 * D : 2 * BT * P;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const dm_unit u = dm_unit_of(a, splits, ROWS);
    const int64_t b = u.b, hk = u.hk, ks = u.ks, ke = u.ke;
    const int64_t nt = (ke - ks + BT - 1) / BT;

    if (tma) {
#if DP_USE_TMA
        if (threadIdx.x == 0) {
            dp_bars_init(bars, DP_STAGES);
            for (int t = 0; t < DP_STAGES - 1 && t < nt; t++)
                dp_tma_tile(mp, stages + t * STB, stages + t * STB + STB / 2, (int)b, (int)hk,
                            (int)(ks + (int64_t)t * BT), bars + t, BT, D / 64);
        }
#endif
    } else {
        for (int t = 0; t < DP_STAGES - 1; t++) {
            if (t < nt)
                dp_load_tile(a, stages + t * STB, stages + t * STB + BT * P, b, hk,
                             ks + (int64_t)t * BT, ke, D);
            tc_commit();
        }
    }
    unsigned qa[8][2]; /* D / 16 <= 8 used */
    dm_q_frags(a, u, NULL, qs, qa, ROWS, DT, D, false);
    const float qscale = a.scale * DC_LOG2E;

    float m = -INFINITY, l = 0.0f, o[16][2]; /* NC <= 16 used */
#pragma unroll
    for (int n = 0; n < NC; n++) o[n][0] = o[n][1] = 0.0f;
    for (int64_t t = 0; t < nt; t++) {
        if (tma) {
#if DP_USE_TMA
            /* every warp is done with tile t - 1's stage: refill it with tile
             * t + STAGES - 1, then wait for tile t (its stage's use t / STAGES) */
            __syncthreads();
            const int64_t tn = t + DP_STAGES - 1;
            char *st = stages + (tn % DP_STAGES) * STB;
            if (threadIdx.x == 0 && tn < nt)
                dp_tma_tile(mp, st, st + STB / 2, (int)b, (int)hk, (int)(ks + tn * BT),
                            bars + tn % DP_STAGES, BT, D / 64);
            dp_bar_wait(bars + t % DP_STAGES, (unsigned)(t / DP_STAGES) & 1u);
            const int64_t past = ks + (t + 1) * BT - ke; /* keys of the tile past the split */
            if (past > 0) {
                /* whole 128-byte rows (each box's): the swizzle stays inside a row */
                char *vz = stages + (t % DP_STAGES) * STB + STB / 2;
                const int r0 = BT - (int)past, nch = (int)past * (D / 8);
                for (int i = threadIdx.x; i < nch; i += DC_THREADS) {
                    const int r = r0 + i / (D / 8), c = i % (D / 8);
                    *(uint4 *)(void *)(vz + (c / 8) * BT * 128 + r * 128 + (c % 8) * 16) =
                        make_uint4(0, 0, 0, 0);
                }
                __syncthreads();
            }
#endif
        } else {
            dp_wait_ahead();
            __syncthreads();
            const int64_t tn = t + DP_STAGES - 1;
            char *st = stages + (tn % DP_STAGES) * STB;
            if (tn < nt) dp_load_tile(a, st, st + BT * P, b, hk, ks + tn * BT, ke, D);
            tc_commit();
        }
        /* TMA: tiles of D / 64 boxes, rows of 128 bytes; else rows of P bytes */
        const char *kt = stages + (t % DP_STAGES) * STB + warp * KPW * P;
        const char *vt = stages + (t % DP_STAGES) * STB + (tma ? STB / 2 : BT * P) + warp * KPW * P;
        const int64_t j0 = ks + t * BT + warp * KPW;
        /* S = Q K^T over this warp's KPW keys, 16 keys (two 8-key blocks) a step */
        float sc[4][2]; /* NT <= 4 used */
#pragma unroll
        for (int n = 0; n < NT; n++) sc[n][0] = sc[n][1] = 0.0f;
#pragma unroll
        for (int n = 0; n < NT; n += 2) {
            /* lane's ldmatrix row: matrix lane / 8 = (key block, channel half) */
            const int kr_row = 8 * (n + (lane / 16)) + lane % 8, kc = (lane / 8) % 2;
            const char *kr = kt + kr_row * P + kc * 16;
#pragma unroll
            for (int k = 0; k < D / 16; k++) {
                unsigned f[4];
                tc_ldsm4(tma ? kt + dp_sw(kr_row, kc + 2 * k, lane % 8, BT) : kr + 32 * k, f);
                dm_mma(sc[n], qa[k][0], qa[k][1], f[0], f[1], DT);
                dm_mma(sc[n + 1], qa[k][0], qa[k][1], f[2], f[3], DT);
            }
        }
        /* online softmax of row lane / 4 over the tile (its 4 lanes together) */
        const float tmax = dm_mask_max(sc, NT, j0, u, qscale);
        const float mn = cu_nanmax(m, tmax);
        const float alpha = mn == -INFINITY ? 1.0f : exp2f(m - mn);
        m = mn;
        l *= alpha;
#pragma unroll
        for (int n = 0; n < NC; n++) o[n][0] *= alpha, o[n][1] *= alpha;
        unsigned pa[4];
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const float p0 = mn == -INFINITY ? 0.0f : exp2f(sc[n][0] - mn);
            const float p1 = mn == -INFINITY ? 0.0f : exp2f(sc[n][1] - mn);
            l += p0 + p1;
            pa[n] = tc_pack(p0, p1, DT);
        }
/* O += P V, 16 keys a step, two 8-channel blocks per ldmatrix.trans */
#pragma unroll
        for (int k = 0; k < NT / 2; k++) {
            const int vr_row = 16 * k + (lane % 8) + 8 * ((lane / 8) % 2), vc = lane / 16;
            const char *vr = vt + vr_row * P + vc * 16;
#pragma unroll
            for (int n = 0; n < NC; n += 2) {
                unsigned f[4];
                tc_ldsm4_t(tma ? vt + dp_sw(vr_row, vc + n, lane % 8, BT) : vr + 16 * n, f);
                dm_mma(o[n], pa[2 * k], pa[2 * k + 1], f[0], f[1], DT);
                dm_mma(o[n + 1], pa[2 * k], pa[2 * k + 1], f[2], f[3], DT);
            }
        }
    }
    if (!tma) tc_wait(0);
    dm_finish(a, splits, ws, u, (float *)stages, m, l, o, 1.0f, ROWS, DT, D, false);
}

/* The TMA variant's kernels take the maps as a kernel parameter. */
#define DM_TMA_KERNEL(name, body)                                                                  \
    __global__ void __launch_bounds__(DC_THREADS)                                                  \
        name(kr_cu_attention a, int64_t splits, kr_cu_decode_ws ws,                                \
             const __grid_constant__ dp_maps maps) {                                               \
        body;                                                                                      \
    }
#define DM_KERNELS(D)                                                                              \
    DECODE_KERNEL(dm_f16_r4_d##D, dm_body(a, splits, ws, NULL, 4, KR_F16, D))                      \
    DECODE_KERNEL(dm_f16_r8_d##D, dm_body(a, splits, ws, NULL, 8, KR_F16, D))                      \
    DECODE_KERNEL(dm_bf16_r4_d##D, dm_body(a, splits, ws, NULL, 4, KR_BF16, D))                    \
    DECODE_KERNEL(dm_bf16_r8_d##D, dm_body(a, splits, ws, NULL, 8, KR_BF16, D))
DM_KERNELS(64)
DM_KERNELS(128)
#if DP_TMA
#define DM_TMA_KERNELS(D)                                                                          \
    DM_TMA_KERNEL(dmt_f16_r4_d##D, dm_body(a, splits, ws, &maps, 4, KR_F16, D))                    \
    DM_TMA_KERNEL(dmt_f16_r8_d##D, dm_body(a, splits, ws, &maps, 8, KR_F16, D))                    \
    DM_TMA_KERNEL(dmt_bf16_r4_d##D, dm_body(a, splits, ws, &maps, 4, KR_BF16, D))                  \
    DM_TMA_KERNEL(dmt_bf16_r8_d##D, dm_body(a, splits, ws, &maps, 8, KR_BF16, D))
DM_TMA_KERNELS(64)
DM_TMA_KERNELS(128)
#endif

/* ---- v4 over the int8 cache: the same pipeline and MMAs, codes in f16 ----
 *
 * Codes (-127..127) are exact in f16, so K and V codes feed m16n8k16 f16
 * MMAs directly, converted in registers (xor, byte permute, one half2
 * subtract). ldmatrix reads the codes from shared memory as 16-bit pairs,
 * 16 keys x 32 channels (one group) per x4: for K a lane gets four
 * consecutive codes of one key per matrix, so the MMA's channels are
 * permuted within each 16 (q's fragments likewise); for V (.trans) a lane
 * gets one channel pair of two keys, so the even and odd channels of each
 * 16-channel half are two output blocks, put back in order by dm_finish.
 * The scales stay out of the MMAs: K's channel factors are
 * folded into q; K's group scales multiply the per-group partial scores in
 * fp32; V's group scales multiply P before it is rounded to f16 (one P per
 * 32-channel group), with a power-of-two factor per warp and tile that keeps
 * the largest such product in [0.5, 1) (no f16 overflow or subnormals for
 * the terms that matter; the accumulator is rescaled when it changes); V's
 * channel factors are applied once to the output. The row metadata is read
 * with plain loads one tile ahead (its rows are not 4-byte aligned for
 * cp.async) and kept in shared memory as fp32 group scales. */
#define DQ_PITCH(D) ((D) + 16)
/* Tiles in flight and keys a tile for the int8 kernel; the lab
 * (KR_LAB_PART=int8) overrides them. */
#ifndef DQ_STAGES
#define DQ_STAGES DP_STAGES
#endif
#ifndef DQ_TILE_KEYS
#define DQ_TILE_KEYS DP_TILE_KEYS
#endif
#define DQ_BT(D) DQ_TILE_KEYS
static_assert(DQ_TILE_KEYS % (16 * KR_CU_DECODE_WARPS) == 0 &&
                  DQ_TILE_KEYS / KR_CU_DECODE_WARPS <= 32,
              "a warp's share of an int8 tile: 16-key steps, at most 32 keys");

/* Two of the four codes in x (each already xor 0x80, i.e. 128 + code as an
 * unsigned byte) as a half2 of exact integers: the bytes that sel picks
 * (a __byte_perm selector whose other nibbles pick the 0x64 bytes) become
 * the low bytes of two halves 0x64xx = 1024 + 128 + code, less 1152. */
__device__ __forceinline__ unsigned dq_pick(unsigned x, unsigned sel) {
    const unsigned w = __byte_perm(x, 0x64646464u, sel);
    const __half2 h =
        __hsub2(*(const __half2 *)&w, __halves2half2(__float2half(1152.0f), __float2half(1152.0f)));
    return *(const unsigned *)&h;
}

/* Copies of the int8 K and V codes of keys j0 .. j0 + BT (zero past ke). */
__device__ __forceinline__ void dq_load_tile(const kr_cu_attention &a, char *ks_, char *vs_,
                                             int64_t b, int64_t hk, int64_t j0, int64_t ke,
                                             const int D) {
    const int BT = DQ_BT(D), CH = D / 16, P = DQ_PITCH(D), RPP = DC_THREADS / CH;
    const int r0 = threadIdx.x / CH, c = threadIdx.x % CH;
    const int64_t step = (int64_t)RPP * a.Hkv * D;
    const int8_t *kp = a.k8.data + ((b * a.k8.capacity + j0 + r0) * a.Hkv + hk) * D + 16 * c;
    const int8_t *vp = a.v8.data + ((b * a.v8.capacity + j0 + r0) * a.Hkv + hk) * D + 16 * c;
    for (int r = r0; r < BT; r += RPP, kp += step, vp += step) {
        const bool ok = j0 + r < ke;
        tc_cp16(ks_ + r * P + 16 * c, ok ? kp : a.k8.data, ok);
        tc_cp16(vs_ + r * P + 16 * c, ok ? vp : a.v8.data, ok);
    }
}

/* This thread's metadata rows of a tile (K rows, then V rows), as u16 words. */
__device__ __forceinline__ void dq_load_meta(const kr_cu_attention &a, int64_t b, int64_t hk,
                                             int64_t j0, int64_t ke, unsigned short *w,
                                             const int D) {
    const int BT = DQ_BT(D), MW = KR_KV_INT8_META_BYTES(D) / 2;
#pragma unroll
    for (int n = 0; n < 2 * BT / DC_THREADS; n++) {
        const int i = threadIdx.x + n * DC_THREADS;
        const kr_cu_int8 &c = i < BT ? a.k8 : a.v8;
        const int64_t j = j0 + i % BT;
        const unsigned short *m =
            (const unsigned short *)(c.meta + ((b * c.capacity + j) * a.Hkv + hk) *
                                                  KR_KV_INT8_META_BYTES(D));
#pragma unroll
        for (int k = 0; k < MW; k++) w[n * MW + k] = j < ke ? __ldg(m + k) : 0;
    }
}

/* ... and as fp32 group scales into the stage: gs[0..BT) K rows, [BT..2BT) V. */
__device__ __forceinline__ void dq_store_meta(float *gs, const unsigned short *w, const int D) {
    const int BT = DQ_BT(D), MW = KR_KV_INT8_META_BYTES(D) / 2, NG = D / 32;
#pragma unroll
    for (int n = 0; n < 2 * BT / DC_THREADS; n++) {
        const int i = threadIdx.x + n * DC_THREADS;
        const unsigned short *m = w + n * MW;
        const float rs = __half2float(__ushort_as_half(m[0]));
#pragma unroll
        for (int g = 0; g < NG; g++) {
            const unsigned u8 = (m[1 + g / 2] >> (8 * (g % 2))) & 0xffu;
            gs[i * NG + g] = __fmul_rn(rs, __fmul_rn((float)u8, 1.0f / 255.0f));
        }
    }
}

/* mp: the code maps of the TMA variant (DP_TMA, head_dim 128: rows of 128
 * codes, one box a tile), else NULL (cp.async). Keys past the split need no
 * zeroing there: codes are finite and their group scales are zero. */
__device__ __forceinline__ void dq_body(const kr_cu_attention &a, int64_t splits,
                                        const kr_cu_decode_ws &ws, const dp_maps *mp,
                                        const int ROWS, const int D) {
    extern __shared__ __align__(16) float sh[];
    const bool tma = DP_USE_TMA && mp != NULL && D == 128;
    const int NW = KR_CU_DECODE_WARPS, NG = D / 32;
    const int BT = DQ_BT(D), P = tma ? 128 : DQ_PITCH(D), KPW = BT / NW;
    const int NT = KPW / 8, NC = D / 8;
    float *qs = sh;                         /* [ROWS][D] */
    char *stages = (char *)(sh + ROWS * D); /* [STAGES][K codes, V codes, K gs, V gs] */
#if DP_USE_TMA
    uint64_t *bars = (uint64_t *)(void *)stages; /* then the stages at 1024 bytes, as dm_body's */
    if (tma) stages = (char *)(((uintptr_t)(stages + 64) + 1023) & ~(uintptr_t)1023);
#endif
    const int STB = 2 * BT * P + 2 * BT * NG * 4;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, q4 = lane % 4;
    const dm_unit u = dm_unit_of(a, splits, ROWS);
    const int64_t b = u.b, hk = u.hk, ks = u.ks, ke = u.ke;
    const int64_t nt = (ke - ks + BT - 1) / BT;

    unsigned short mw[2 * 3]; /* metadata words in flight: <= 2 rows x 3 words */
#if DP_USE_TMA
    /* the mbarriers' init and the first tiles' copies in one branch of thread
     * 0, as dm_body's: issued from a second branch after the warp reconverged,
     * racecheck reported each copy's expect_tx against the init (a potential
     * warp-level RAW hazard, 1,443 warnings; CUDA history 59) */
    if (tma && threadIdx.x == 0) {
        dp_bars_init(bars, DQ_STAGES);
        for (int t = 0; t < DQ_STAGES - 1 && t < nt; t++)
            dp_tma_tile(mp, stages + t * STB, stages + t * STB + BT * P, (int)b, (int)hk,
                        (int)(ks + (int64_t)t * BT), bars + t, BT, 1);
    }
#endif
    for (int t = 0; t < DQ_STAGES - 1; t++) {
        char *st = stages + t * STB;
        if (t < nt) {
            if (!tma) dq_load_tile(a, st, st + BT * P, b, hk, ks + (int64_t)t * BT, ke, D);
            dq_load_meta(a, b, hk, ks + (int64_t)t * BT, ke, mw, D);
            dq_store_meta((float *)(st + 2 * BT * P), mw, D);
        }
        if (!tma) tc_commit();
    }
    unsigned qa[8][2]; /* D / 16 <= 8 used */
    dm_q_frags(a, u, a.k8.chan + hk * a.D, qs, qa, ROWS, KR_F16, D, true);
    const float qscale = a.scale * DC_LOG2E;

    float m = -INFINITY, l = 0.0f, o[16][2], cf = 1.0f; /* o is in units of 1 / cf */
#pragma unroll
    for (int n = 0; n < NC; n++) o[n][0] = o[n][1] = 0.0f;
    for (int64_t t = 0; t < nt; t++) {
        if (!tma) tc_wait(DQ_STAGES - 2);
        __syncthreads();
        const int64_t tn = t + DQ_STAGES - 1;
        char *stn = stages + (tn % DQ_STAGES) * STB;
        if (tn < nt) {
            if (tma) {
#if DP_USE_TMA
                if (threadIdx.x == 0)
                    dp_tma_tile(mp, stn, stn + BT * P, (int)b, (int)hk, (int)(ks + tn * BT),
                                bars + tn % DQ_STAGES, BT, 1);
#endif
            } else {
                dq_load_tile(a, stn, stn + BT * P, b, hk, ks + tn * BT, ke, D);
            }
            dq_load_meta(a, b, hk, ks + tn * BT, ke, mw, D);
        }
        if (tma) {
#if DP_USE_TMA
            dp_bar_wait(bars + t % DQ_STAGES, (unsigned)(t / DQ_STAGES) & 1u);
#endif
        } else {
            tc_commit();
        }
        const char *st = stages + (t % DQ_STAGES) * STB;
        const char *kt = st + warp * KPW * P, *vt = st + BT * P + warp * KPW * P;
        const float *gk = (const float *)(st + 2 * BT * P) + warp * KPW * NG;
        const float *gv = gk + BT * NG;
        const int64_t j0 = ks + t * BT + warp * KPW;
        /* S: per 16 keys and 32-channel group one ldmatrix.x4 of the codes as
         * 16-bit pairs (a lane gets four consecutive codes of a key per
         * matrix: MMA channels permuted as in q's fragments), four MMAs,
         * times the keys' group scales */
        float sc[4][2]; /* NT <= 4 used */
#pragma unroll
        for (int n = 0; n < NT; n++) sc[n][0] = sc[n][1] = 0.0f;
#pragma unroll
        for (int n = 0; n < NT; n += 2) {
            /* matrix lane / 8: (key block n + lane / 16, channel half (lane / 8) % 2) */
            const int kr_row = 8 * (n + lane / 16) + lane % 8, kc = (lane / 8) % 2;
            const char *kr = kt + kr_row * P + kc * 16;
#pragma unroll
            for (int g = 0; g < NG; g++) {
                unsigned f[4];
                tc_ldsm4(tma ? kt + dp_sw(kr_row, kc + 2 * g, lane % 8, BT) : kr + 32 * g, f);
#pragma unroll
                for (int i = 0; i < 4; i++) f[i] ^= 0x80808080u;
                float p0[2] = {0.0f, 0.0f}, p1[2] = {0.0f, 0.0f};
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    dm_mma(p0, qa[2 * g + h][0], qa[2 * g + h][1], dq_pick(f[h], 0x4140),
                           dq_pick(f[h], 0x4342), KR_F16);
                    dm_mma(p1, qa[2 * g + h][0], qa[2 * g + h][1], dq_pick(f[2 + h], 0x4140),
                           dq_pick(f[2 + h], 0x4342), KR_F16);
                }
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    sc[n][e] = fmaf(gk[(8 * n + 2 * q4 + e) * NG + g], p0[e], sc[n][e]);
                    sc[n + 1][e] = fmaf(gk[(8 * n + 8 + 2 * q4 + e) * NG + g], p1[e], sc[n + 1][e]);
                }
            }
        }
        const float tmax = dm_mask_max(sc, NT, j0, u, qscale);
        /* the largest V group scale of the warp's keys in this tile sets cf */
        float gmax = 0.0f;
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 2; e++)
#pragma unroll
                for (int g = 0; g < NG; g++) gmax = fmaxf(gmax, gv[(8 * n + 2 * q4 + e) * NG + g]);
        /* a lane's keys depend on lane % 4 only: the four lanes of a row hold the warp's 32 */
        gmax = fmaxf(gmax, __shfl_xor_sync(0xffffffffu, gmax, 1));
        gmax = fmaxf(gmax, __shfl_xor_sync(0xffffffffu, gmax, 2));
        const int ex = (__float_as_int(gmax) >> 23) & 0xff;
        const float cn =
            gmax > 0.0f && ex >= 1 && ex <= 253 ? __int_as_float((253 - ex) << 23) : cf;
        const float mn = cu_nanmax(m, tmax);
        const float am = mn == -INFINITY ? 1.0f : exp2f(m - mn); /* the softmax rescale */
        const float alpha = am * (cn / cf);                      /* o's, with the new cf */
        m = mn;
        cf = cn;
        l *= am;
#pragma unroll
        for (int n = 0; n < NC; n++) o[n][0] *= alpha, o[n][1] *= alpha;
        float p[4][2];
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                p[n][e] = mn == -INFINITY ? 0.0f : exp2f(sc[n][e] - mn);
                l += p[n][e];
            }
            /* O += (P gs_V cf) V: per 16 keys and group, one P and one
             * ldmatrix.x4.trans of the codes as 16-bit pairs (a lane gets a
             * channel pair of two keys per matrix); the even and odd channels of
             * each 16-channel half are two MMA blocks (dm_finish puts them back) */
#pragma unroll
        for (int k = 0; k < NT / 2; k++) {
            const int ka = 16 * k + 2 * q4, kb = ka + 8;
            const int vr_row = 16 * k + lane % 8 + 8 * ((lane / 8) % 2), vc = lane / 16;
            const char *vr = vt + vr_row * P + vc * 16;
#pragma unroll
            for (int g = 0; g < NG; g++) {
                const unsigned pa0 = tc_pack(p[2 * k][0] * gv[ka * NG + g] * cf,
                                             p[2 * k][1] * gv[(ka + 1) * NG + g] * cf, KR_F16);
                const unsigned pa2 = tc_pack(p[2 * k + 1][0] * gv[kb * NG + g] * cf,
                                             p[2 * k + 1][1] * gv[(kb + 1) * NG + g] * cf, KR_F16);
                unsigned f[4];
                tc_ldsm4_t(tma ? vt + dp_sw(vr_row, vc + 2 * g, lane % 8, BT) : vr + 32 * g, f);
#pragma unroll
                for (int i = 0; i < 4; i++) f[i] ^= 0x80808080u;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    /* f[2h]: keys ka, ka + 1; f[2h + 1]: keys kb, kb + 1 */
                    dm_mma(o[4 * g + 2 * h], pa0, pa2, dq_pick(f[2 * h], 0x4240),
                           dq_pick(f[2 * h + 1], 0x4240), KR_F16);
                    dm_mma(o[4 * g + 2 * h + 1], pa0, pa2, dq_pick(f[2 * h], 0x4341),
                           dq_pick(f[2 * h + 1], 0x4341), KR_F16);
                }
            }
        }
        /* the metadata of tile tn, loaded above, into its stage */
        if (tn < nt) dq_store_meta((float *)(stn + 2 * BT * P), mw, D);
    }
    if (!tma) tc_wait(0);
    dm_finish(a, splits, ws, u, (float *)stages, m, l, o, 1.0f / cf, ROWS, KR_I8, D, true);
}

/* Blocks per SM the int8 kernels are compiled for (registers permitting
 * it); the lab (KR_LAB_PART=int8) overrides it. */
#ifndef DQ_MIN_BLOCKS
#define DQ_MIN_BLOCKS 1
#endif
#define DQ_KERNEL(name, body)                                                                      \
    __global__ void __launch_bounds__(DC_THREADS, DQ_MIN_BLOCKS)                                   \
        name(kr_cu_attention a, int64_t splits, kr_cu_decode_ws ws) {                              \
        body;                                                                                      \
    }
DQ_KERNEL(dq_r4_d64, dq_body(a, splits, ws, NULL, 4, 64))
DQ_KERNEL(dq_r8_d64, dq_body(a, splits, ws, NULL, 8, 64))
DQ_KERNEL(dq_r4_d128, dq_body(a, splits, ws, NULL, 4, 128))
DQ_KERNEL(dq_r8_d128, dq_body(a, splits, ws, NULL, 8, 128))
#if DP_TMA
#define DQ_TMA_KERNEL(name, body)                                                                  \
    __global__ void __launch_bounds__(DC_THREADS, DQ_MIN_BLOCKS)                                   \
        name(kr_cu_attention a, int64_t splits, kr_cu_decode_ws ws,                                \
             const __grid_constant__ dp_maps maps) {                                               \
        body;                                                                                      \
    }
DQ_TMA_KERNEL(dqt_r4_d128, dq_body(a, splits, ws, &maps, 4, 128))
DQ_TMA_KERNEL(dqt_r8_d128, dq_body(a, splits, ws, &maps, 8, 128))
#endif

typedef void (*dc_kernel_fn)(kr_cu_attention, int64_t, kr_cu_decode_ws);

static int dc_rows(const kr_cu_attention *a) { return (a->H / a->Hkv) * a->Sq <= 4 ? 4 : 8; }

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
    /* grid y: kv heads x row chunks (this also keeps H under 2^20, which the
     * kernels' 32-bit index arithmetic needs) */
    const int64_t chunks = ((a->H / a->Hkv) * a->Sq + dc_rows(a) - 1) / dc_rows(a);
    if (a->Hkv > 65535 / 16 || a->Hkv * chunks > 65535 || a->B > 65535) {
        snprintf(why, n,
                 "decode kernel grid: %lld kv heads x %lld row chunks or batch %lld too large",
                 (long long)a->Hkv, (long long)chunks, (long long)a->B);
        return 0;
    }
    if (!a->int8) {
        if (a->k.dtype != KR_F16 && a->k.dtype != KR_BF16) {
            snprintf(why, n, "decode kernel takes f16/bf16 K/V or an int8 cache, got %s",
                     kr_dtype_name(a->k.dtype));
            return 0;
        }
        if (!cu_rows_aligned16(&a->k) || !cu_rows_aligned16(&a->v)) {
            snprintf(why, n, "decode kernel needs K/V rows 16-byte aligned with unit inner stride");
            return 0;
        }
    }
    return 1;
}

/* v4 on tensor cores for head_dim 64 and 128 (dm_*: f16/bf16 K/V, dq_*: the
 * int8 cache); head_dim 256: v3 (dp_*, CUDA cores) for f16/bf16, v2 (dc_*)
 * for int8. The kernel and its dynamic shared memory. */
static dc_kernel_fn dp_kernel(const kr_cu_attention *a, size_t *smem) {
    static const dc_kernel_fn mma[2][2][2] = {
        {{dm_f16_r4_d64, dm_f16_r8_d64}, {dm_bf16_r4_d64, dm_bf16_r8_d64}},
        {{dm_f16_r4_d128, dm_f16_r8_d128}, {dm_bf16_r4_d128, dm_bf16_r8_d128}},
    };
    static const dc_kernel_fn quant[2][2] = {{dq_r4_d64, dq_r8_d64}, {dq_r4_d128, dq_r8_d128}};
    static const dc_kernel_fn cores[2][2] = {{dp_f16_r4_d256, dp_f16_r8_d256},
                                             {dp_bf16_r4_d256, dp_bf16_r8_d256}};
    const int64_t rows = dc_rows(a), D = a->D, BT = DP_BT(D), nw = KR_CU_DECODE_WARPS;
    const int r8 = rows == 8;
    if (a->int8) {
        if (D != 256) {
            const int64_t QT = DQ_BT(D);
            *smem = sizeof(float) * (size_t)(rows * D) +
                    (size_t)(DQ_STAGES * (2 * QT * DQ_PITCH(D) + 2 * QT * (D / 32) * 4));
            return quant[D == 128][r8];
        }
        *smem = sizeof(float) * (size_t)(rows * D + nw * rows * 32 + nw * rows * 2 + nw * rows * D);
        return r8 ? dc_i8_r8_d256 : dc_i8_r4_d256;
    }
    const int bf = a->k.dtype != KR_F16;
    const size_t stages = (size_t)(DP_STAGES * 2 * BT * DP_PITCH(D));
    if (D != 256) {
        *smem = sizeof(float) * (size_t)(rows * D) + stages;
        return mma[D == 128][bf][r8];
    }
    *smem = sizeof(float) * (size_t)(rows * D + nw * (BT / nw) * rows) + stages;
    return cores[bf][r8];
}

extern "C" int64_t kr_cu_decode_splits(const kr_cu_attention *a, int n_sm) {
    const int64_t rows = dc_rows(a);
    const int64_t units = a->B * a->Hkv * (((a->H / a->Hkv) * a->Sq + rows - 1) / rows);
    int64_t lmax = a->Skv;
    if (a->has_lens && !a->lens.dev) {
        lmax = 0;
        for (int64_t b = 0; b < a->B; b++) lmax = a->lens.v[b] > lmax ? a->lens.v[b] : lmax;
    }
    if (!a->int8 || a->D != 256) {
        /* v3/v4: the fewest splits that fill the SMs' block slots to >= 90% over
         * whole waves (then the fullest count of as many waves), each split at
         * least two tiles (one round trip) unless
         * the keys are too few to fill the slots that way (1 x 1K). Only
         * counts that share the tiles out evenly are tried: 30 splits of 64
         * tiles would give 3 tiles to 22 splits and none to 8 (and a third
         * round trip to every block), where 32 splits of 2 tiles fill the same
         * slots in two. */
        size_t smem = 0;
        const dc_kernel_fn fn = dp_kernel(a, &smem);
        const int64_t slots = (int64_t)n_sm * cu_blocks_per_sm((const void *)fn, DC_THREADS, smem);
        const int64_t bt = a->int8 ? DQ_BT(a->D) : DP_BT(a->D);
        const int64_t tiles = (lmax + bt - 1) / bt;
        int64_t max_s = units * ((tiles + 1) / 2) < slots ? tiles : (tiles + 1) / 2;
        if (max_s > 1024) max_s = 1024;
        int64_t best = 1, best_waves = 0;
        double best_eff = 0;
        for (int64_t t = 1; t <= max_s; t++) {
            const int64_t per = (tiles + t - 1) / t, s = (tiles + per - 1) / per;
            if (s != t) continue; /* the same split as a smaller count */
            const int64_t blocks = units * s, waves = (blocks + slots - 1) / slots;
            /* past 90 %, only counts of as many waves may still fill more slots
             * (1 x 128K: 15 splits of 69 tiles leave 12 SMs idle, 16 of 64 none) */
            if (best_eff >= 0.9 && waves > best_waves) break;
            const double eff = (double)blocks / (double)(waves * slots);
            if (eff > best_eff + 1e-9) best = s, best_eff = eff, best_waves = waves;
        }
        return best;
    }
    /* v2: enough blocks for ~8 waves at 3 blocks per SM, but no split under 128 keys. */
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
    dim3 grid((unsigned)splits, (unsigned)(a->Hkv * chunks), (unsigned)a->B);
    size_t smem = 0;
#if DP_TMA
    if (a->cc >= 90 && !a->int8 && a->D != 256) {
        typedef void (*dmt_fn)(kr_cu_attention, int64_t, kr_cu_decode_ws, dp_maps);
        static const dmt_fn tk[2][2][2] = {
            {{dmt_f16_r4_d64, dmt_f16_r8_d64}, {dmt_bf16_r4_d64, dmt_bf16_r8_d64}},
            {{dmt_f16_r4_d128, dmt_f16_r8_d128}, {dmt_bf16_r4_d128, dmt_bf16_r8_d128}},
        };
        const dmt_fn f = tk[a->D == 128][a->k.dtype != KR_F16][rows == 8];
        dp_maps mp;
        memset(&mp, 0, sizeof mp);
        /* a map the driver refuses: the cp.async kernel below */
        if (cu_tensor_map(&mp.k, &a->k, a->B, a->Skv, a->Hkv, a->D, DP_BT(a->D)) &&
            cu_tensor_map(&mp.v, &a->v, a->B, a->Skv, a->Hkv, a->D, DP_BT(a->D))) {
            smem = sizeof(float) * (size_t)(rows * a->D) + 64 + 1024 +
                   (size_t)(DP_STAGES * 2 * DP_BT(a->D) * 2 * a->D);
            const kr_status st = cu_allow_smem((const void *)f, smem, "decode attention", err, n);
            if (st) return st;
            f<<<grid, DC_THREADS, smem, (cudaStream_t)stream>>>(*a, splits, *ws, mp);
            return cu_launched("decode attention", err, n);
        }
    }
    if (a->cc >= 90 && a->int8 && a->D == 128) {
        /* the codes as [B][capacity][Hkv][D] i8 views */
        const int64_t D = a->D, BT = DQ_BT(D);
        kr_tensor kt, vt;
        memset(&kt, 0, sizeof kt);
        kt.data = (void *)a->k8.data, kt.dtype = KR_I8;
        kt.stride[0] = a->k8.capacity * a->Hkv * D, kt.stride[1] = a->Hkv * D;
        kt.stride[2] = D, kt.stride[3] = 1;
        vt = kt, vt.data = (void *)a->v8.data, vt.stride[0] = a->v8.capacity * a->Hkv * D;
        dp_maps mp;
        memset(&mp, 0, sizeof mp);
        if (cu_tensor_map(&mp.k, &kt, a->B, a->k8.capacity, a->Hkv, D, (int)BT) &&
            cu_tensor_map(&mp.v, &vt, a->B, a->v8.capacity, a->Hkv, D, (int)BT)) {
            typedef void (*dqt_fn)(kr_cu_attention, int64_t, kr_cu_decode_ws, dp_maps);
            const dqt_fn f = rows == 8 ? dqt_r8_d128 : dqt_r4_d128;
            smem = sizeof(float) * (size_t)(rows * D) + 64 + 1024 +
                   (size_t)(DQ_STAGES * (2 * BT * 128 + 2 * BT * (D / 32) * 4));
            const kr_status st =
                cu_allow_smem((const void *)f, smem, "int8 decode attention", err, n);
            if (st) return st;
            f<<<grid, DC_THREADS, smem, (cudaStream_t)stream>>>(*a, splits, *ws, mp);
            return cu_launched("int8 decode attention", err, n);
        }
    }
#endif
    const dc_kernel_fn fn = dp_kernel(a, &smem);
    const kr_status st = cu_allow_smem((const void *)fn, smem, "decode attention", err, n);
    if (st) return st;
    fn<<<grid, DC_THREADS, smem, (cudaStream_t)stream>>>(*a, splits, *ws);
    return cu_launched("decode attention", err, n);
}
