/*
 * attention_prefill.cu — flash attention for many query rows (prefill and
 * chunked prefill) on tensor cores, sm_80+: FlashAttention-2's scheme in
 * mma.sync.
 *
 * Grid: (row block, head, sequence). A block of PF_NW warps owns BM =
 * 16 MT PF_NW query rows of one head, 16 MT per warp (MT = 1 or 2 16-row MMA
 * tiles, so every K/V fragment read from shared memory serves MT MMAs);
 * it walks the keys its rows can see in tiles of PF_BN(D) keys, K and V
 * tiles brought into shared memory by cp.async PF_STAGES - 1 tiles ahead.
 * Per tile a warp computes S = Q K^T (m16n8k16; Q and K by ldmatrix), an
 * online softmax on S in registers (exp2 on the SFU, scale * log2 e folded
 * into one FMA), and O += P V with S's accumulators reused as P's A operand
 * and V by ldmatrix.trans; O stays in registers until the end. Q is staged
 * once in shared memory in the K/V type (cp.async, or converted from any
 * dtype; q enters the MMA unscaled). Row blocks of one head are adjacent in
 * the grid, so the blocks running together share that head's K/V in L2.
 *
 * Shared-memory tiles are [key][channel] rows of 2 D bytes with 16-byte
 * chunks XOR-swizzled by the row (chunk c of row r at c ^ (r % 8)), so the
 * 8 row addresses of every ldmatrix (plain or .trans) and the cp.async
 * writes fall in 8 different bank groups without padding.
 *
 * Masks: the row ranges (ops.h: causal aligned bottom-right, windows,
 * ragged lengths) are monotone in the row, so a block's tiles run from the
 * first row's lo to the last row's hi and nothing outside is loaded; a
 * tile that every row of a warp sees whole skips the per-key test, and a
 * warp none of whose rows sees the tile skips its MMAs. Causal row blocks
 * are scheduled heaviest first (the grid's row-block index runs backwards)
 * so the short ones fill the last wave.
 *
 * A grid too small to fill the GPU (chunked prefill: a few row blocks over a
 * long cache) splits the keys: each split writes its rows' partial output
 * and LSE to scratch and pf_merge combines them. The int8 cache runs on the
 * same kernel, its tiles dequantised in shared memory (pf_load_tile8).
 *
 *   Q (smem) --> S = Q K^T --(mask, online softmax)--> P (regs) --> O += P V
 *                   ^ K tile (smem, ldmatrix)                       ^ V tile (.trans)
 */
#include "prefill.cuh"

/* The kernel lab (bench/prefill_lab.sh) builds variants by overriding these. */
#ifndef PF_NW
#define PF_NW 4 /* warps per block */
#endif
#ifndef PF_BN_D64
#define PF_BN_D64 128 /* keys per tile at head_dim 64 */
#endif
#ifndef PF_BN_D128
#define PF_BN_D128 64 /* keys per tile at head_dim 128 */
#endif
#define PF_BN(D) ((D) == 64 ? PF_BN_D64 : PF_BN_D128)
#define PF_BN_MAX (PF_BN_D64 > PF_BN_D128 ? PF_BN_D64 : PF_BN_D128)
#ifndef PF_STAGES
#define PF_STAGES 2 /* shared-memory K/V tile buffers (loads run PF_STAGES - 1 ahead) */
#endif
/* The softmax of a lane's rows in phases with tree reductions (their latencies
 * overlap), or row by row with chained ones: phased won at head_dim 128 (+8 %),
 * lost at 64 (-5..-12 %) in the lab; PF_SOFTMAX_PHASED=0 turns it off. */
#ifndef PF_SOFTMAX_PHASED
#define PF_SOFTMAX_PHASED 1
#endif
#define PF_THREADS (PF_NW * 32)
/* MT: 16-row MMA tiles per warp (1 or 2; each K/V fragment read from shared
 * memory serves MT MMAs); a block holds PF_BM(MT) query rows. */
#define PF_BM(MT) (16 * (MT)*PF_NW)

/* Byte offset of 16-byte chunk c of row r in a swizzled [rows][2 D bytes] tile. */
__device__ __forceinline__ int pf_sw(int r, int c, const int D) {
    return r * 2 * D + ((c ^ (r % 8)) * 16);
}

/* Issue the copies of the K and V tile of keys [j0, j0 + PF_BN(D)) into one
 * stage; keys at or past ke are zero-filled (a masked key's V must be a
 * finite 0, since its P of 0 still meets it in the MMA). */
/* A thread copies 16-byte chunk threadIdx % (D / 8) of every (PF_THREADS / (D /
 * 8))-th row; its K and V addresses of key 0 (pf_kv_base) are worked out once
 * per block, so a tile costs one multiply and an add per row. */
typedef struct pf_kv_base {
    const char *k, *v;
    int64_t k_row, v_row; /* bytes between consecutive keys */
} pf_kv_base;

__device__ __forceinline__ pf_kv_base pf_kv_base_of(const kr_cu_attention &a, int64_t b, int64_t hk,
                                                    const int D) {
    const int64_t c = threadIdx.x % (D / 8);
    pf_kv_base p;
    p.k = (const char *)a.k.data + 2 * cu_off(a.k, b, 0, hk, 8 * c);
    p.v = (const char *)a.v.data + 2 * cu_off(a.v, b, 0, hk, 8 * c);
    p.k_row = 2 * a.k.stride[1];
    p.v_row = 2 * a.v.stride[1];
    return p;
}

__device__ __forceinline__ void pf_load_tile(const kr_cu_attention &a, const pf_kv_base &p,
                                             char *ks, char *vs, int j0, int ke, const int D) {
    const int CH = D / 8, RPP = PF_THREADS / CH, BN = PF_BN(D);
    const int c = threadIdx.x % CH, r0 = threadIdx.x / CH;
    const char *kp = p.k + (int64_t)(j0 + r0) * p.k_row, *vp = p.v + (int64_t)(j0 + r0) * p.v_row;
#pragma unroll
    for (int r = r0; r < BN; r += RPP, kp += RPP * p.k_row, vp += RPP * p.v_row) {
        const bool ok = j0 + r < ke;
        tc_cp16(ks + pf_sw(r, c, D), ok ? kp : (const char *)a.k.data, ok);
        tc_cp16(vs + pf_sw(r, c, D), ok ? vp : (const char *)a.v.data, ok);
    }
}

/* ---- the int8 cache (kv_cache.h): rows of D codes, per-row metadata (f16
 * row scale, u8 group scales), per-channel factors. A tile's codes come in
 * by cp.async like f16 rows (16 codes a copy, unswizzled [key][D] bytes);
 * before the tile's MMAs the block dequantises them, code x group scale,
 * into the f16 tile layout the MMAs read (values round to f16). The channel
 * factors stay out of the tiles: K's are folded into q when it is staged,
 * V's applied to the output once. */
__device__ __forceinline__ void pf_load_tile8(const kr_cu_attention &a, int64_t b, int64_t hk,
                                              char *ks, char *vs, int j0, int ke, const int D) {
    const int CH = D / 16, BN = PF_BN(D);
    for (int x = threadIdx.x; x < BN * CH; x += PF_THREADS) {
        const int r = x / CH, c = x % CH;
        const bool ok = j0 + r < ke;
        const int64_t off = ((b * a.k8.capacity + j0 + r) * a.Hkv + hk) * D + 16 * c;
        tc_cp16(ks + r * D + 16 * c, ok ? a.k8.data + off : a.k8.data, ok);
        tc_cp16(vs + r * D + 16 * c, ok ? a.v8.data + off : a.v8.data, ok);
    }
}

/* A thread dequantises the 16-code chunks x = threadIdx + k PF_THREADS
 * (k < PF_I8_CHUNKS) of a tile; their group scales are read from the row
 * metadata with plain loads one tile ahead (the 2 + D/32-byte rows are not
 * aligned for cp.async), so the loads' latency hides behind a tile of MMAs. */
#define PF_I8_CHUNKS(D) (PF_BN(D) * (D) / 16 / PF_THREADS)
static_assert(PF_BN_D64 * 64 / 16 % PF_THREADS == 0 && PF_BN_D128 * 128 / 16 % PF_THREADS == 0 &&
                  PF_BN_D64 * 64 / 16 / PF_THREADS <= 8 && PF_BN_D128 * 128 / 16 / PF_THREADS <= 8,
              "a tile's 16-code chunks split evenly over the threads, at most 8 each");
__device__ __forceinline__ void pf_group_scales(const kr_cu_int8 &q8, const kr_cu_attention &a,
                                                int64_t b, int64_t hk, int j0, int ke, float *gs,
                                                const int D) {
    const int CH = D / 16, META = KR_KV_INT8_META_BYTES(D);
    const uint8_t *base = q8.meta + ((b * q8.capacity) * a.Hkv + hk) * META;
    const int64_t row = a.Hkv * META;
#pragma unroll
    for (int k = 0; k < PF_I8_CHUNKS(D); k++) {
        const int x = threadIdx.x + k * PF_THREADS, r = x / CH, c = x % CH;
        gs[k] = j0 + r < ke
                    ? cu_int8_group_scale(base + (int64_t)(j0 + r) * row, 16 * c / KR_KV_INT8_GROUP)
                    : 0.0f;
    }
}

__device__ __forceinline__ void pf_dequant(const char *src, char *dst, const float *gsk,
                                           const int D) {
    const int CH = D / 16;
#pragma unroll
    for (int k = 0; k < PF_I8_CHUNKS(D); k++) {
        const int x = threadIdx.x + k * PF_THREADS, r = x / CH, c = x % CH;
        const float gs = gsk[k];
        const uint4 w = *(const uint4 *)(src + r * D + 16 * c);
        const unsigned wd[4] = {w.x, w.y, w.z, w.w};
        unsigned o[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const float c0 = (float)(int8_t)(wd[e / 2] >> (16 * (e % 2)));
            const float c1 = (float)(int8_t)(wd[e / 2] >> (16 * (e % 2) + 8));
            o[e] = tc_pack(c0 * gs, c1 * gs, KR_F16);
        }
        *(uint4 *)(dst + pf_sw(r, 2 * c, D)) = make_uint4(o[0], o[1], o[2], o[3]);
        *(uint4 *)(dst + pf_sw(r, 2 * c + 1, D)) = make_uint4(o[4], o[5], o[6], o[7]);
    }
}

/* The block's q rows [i0, i0 + PF_BM(MT)) (times chan[c] when given: the int8
 * cache's K channel factors) into shared memory in the K/V type,
 * swizzled like the tiles; rows past Sq are zero. q already in that type,
 * rows 16-byte aligned: cp.async (joins the first tile's group); any other
 * dtype or stride: loaded, rounded and stored by the threads. */
__device__ __forceinline__ void pf_load_q(const kr_cu_attention &a, char *qs, int64_t b, int64_t h,
                                          int i0, bool q_async, const float *chan, const int DT,
                                          const int D, const int MT) {
    const int CH = D / 8;
    for (int x = threadIdx.x; x < PF_BM(MT) * CH; x += PF_THREADS) {
        const int r = x / CH, c = x % CH;
        const int64_t i = i0 + r;
        if (q_async) {
            const bool ok = i < a.Sq;
            tc_cp16(qs + pf_sw(r, c, D),
                    ok ? (const char *)a.q.data + 2 * cu_off(a.q, b, i, h, 8 * c)
                       : (const char *)a.q.data,
                    ok);
        } else {
            unsigned w[4] = {0u, 0u, 0u, 0u};
            if (i < a.Sq)
                for (int e = 0; e < 4; e++) {
                    const int64_t ch = 8 * c + 2 * e;
                    float lo = cu_load(a.q.data, a.q.dtype, cu_off(a.q, b, i, h, ch));
                    float hi = cu_load(a.q.data, a.q.dtype, cu_off(a.q, b, i, h, ch + 1));
                    if (chan) lo *= chan[ch], hi *= chan[ch + 1];
                    w[e] = tc_pack(lo, hi, DT);
                }
            *(uint4 *)(qs + pf_sw(r, c, D)) = make_uint4(w[0], w[1], w[2], w[3]);
        }
    }
}

__device__ __forceinline__ void pf_body(const kr_cu_attention &a, bool q_async,
                                        const kr_cu_prefill_ws &ws, const int DT, const int D,
                                        const int MT, const bool I8) {
    extern __shared__ __align__(128) char smem_raw[];
    /* 1024-aligned, so a row's swizzle bits are free for XOR in addresses */
    char *smem = smem_raw + ((1024 - (unsigned)__cvta_generic_to_shared(smem_raw) % 1024) % 1024);
    const int BN = PF_BN(D);
    const bool PHASED = PF_SOFTMAX_PHASED && D == 128;
    const int NT = BN / 8; /* 8-key blocks of a tile */
    const int NC = D / 8;  /* 8-channel blocks of the output */
    const int TILE = BN * 2 * D;
    const int BM = PF_BM(MT), WM = 16 * MT; /* rows per block, per warp */
    const int QBYTES = BM * 2 * D;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, q4 = lane % 4;
    const int64_t h = blockIdx.y, b = blockIdx.z % a.B, split = blockIdx.z / a.B;
    const int64_t hk = h / (a.H / a.Hkv);
    /* rows and keys are int from here on: kr_cu_prefill_supported keeps Sq + Skv
     * well inside 32 bits and the launcher clamps the windows */
    const int Sq = (int)a.Sq;
    const int i0 = (int)(gridDim.x - 1 - blockIdx.x) * BM;
    const int L = a.has_lens ? (int)cu_len(a.lens, b) : (int)a.Skv;
    int kmin, kmax, y0, y1;
    pf_range(a, L, i0, &kmin, &y0);
    pf_range(a, L, min(i0 + BM, Sq) - 1, &y1, &kmax);
    if (kmax < kmin) kmax = kmin;
    if (ws.splits > 1) { /* this split's whole tiles of the block's range */
        const int per = ((kmax - kmin + BN - 1) / BN + ws.splits - 1) / ws.splits;
        kmin = min(kmax, kmin + (int)split * per * BN);
        kmax = min(kmax, kmin + per * BN);
    }
    /* this warp's rows: the first and last real one */
    const int w0 = i0 + warp * WM, w1 = min(w0 + WM - 1, Sq - 1);
    int wlo = 0, whi = 0, lo_last = 0, hi_first = 0;
    if (w0 < Sq) {
        pf_range(a, L, w0, &wlo, &hi_first);
        pf_range(a, L, w1, &lo_last, &whi);
    }
    const bool warp_live = w0 < Sq && whi > wlo;
    /* this lane's rows are lane_row + 16 mt (+ 8); their ranges are worked out
     * again in the (few) masked tiles rather than kept in 4 MT registers */
    const int lane_row = w0 + lane / 4;

    /* shared memory: Q | stages (f16 K, V tiles; int8: K, V codes) | int8: the
     * dequantised f16 K, V tiles */
    const int STAGE = I8 ? 2 * BN * D : 2 * TILE;
    char *qs = smem, *stages = smem + QBYTES, *deq = stages + PF_STAGES * STAGE;
    pf_load_q(a, qs, b, h, i0, q_async, I8 ? a.k8.chan + hk * D : NULL, DT, D, MT);
    const pf_kv_base kvp = I8 ? pf_kv_base{} : pf_kv_base_of(a, b, hk, D);
    const int nt = (kmax - kmin + BN - 1) / BN;
    float gk[8], gv[8]; /* int8: group scales of the next tile's chunks (PF_I8_CHUNKS(D) used) */
    if (I8) {
        pf_group_scales(a.k8, a, b, hk, kmin, kmax, gk, D);
        pf_group_scales(a.v8, a, b, hk, kmin, kmax, gv, D);
    }
    for (int s = 0; s < PF_STAGES - 1; s++) {
        if (s < nt) {
            char *st = stages + s * STAGE;
            if (I8)
                pf_load_tile8(a, b, hk, st, st + BN * D, kmin + s * BN, kmax, D);
            else
                pf_load_tile(a, kvp, st, st + TILE, kmin + s * BN, kmax, D);
        }
        tc_commit();
    }
    const float c = a.scale * PF_LOG2E;
    float m[4], l[4], o[2][16][4]; /* 2 MT, MT, NC used */
#pragma unroll
    for (int x = 0; x < 2 * MT; x++) m[x] = -INFINITY, l[x] = 0.0f;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int n = 0; n < NC; n++) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
    /* ldmatrix row addresses (every row offset is a multiple of 8 rows plus
     * lane % 8, so the swizzle is lane % 8 throughout; the chunk bits of the
     * row offsets are zero, so the even part of a chunk is XORed in):
     *   Q (A, 16 x 16 per mt and k): row 16 mt + lane % 16, chunk 2 k + lane / 16
     *   K (B of S, 2 key blocks x 16 ch): row 8 n + 8 (lane / 16) + lane % 8,
     *     chunk 2 k + (lane / 8) % 2
     *   V (B of P V, .trans, 16 keys x 2 ch blocks): row 16 k + lane % 8 +
     *     8 ((lane / 8) % 2), chunk n + lane / 16 */
    const unsigned qlane = (unsigned)__cvta_generic_to_shared(qs) +
                           (unsigned)((warp * WM + lane % 16) * 2 * D) +
                           (unsigned)(((lane / 16) ^ (lane % 8)) * 16);
    const unsigned klane = (unsigned)(((lane / 16) * 8 + lane % 8) * 2 * D) +
                           (unsigned)((((lane / 8) % 2) ^ (lane % 8)) * 16);
    const unsigned vlane = (unsigned)((lane % 8 + 8 * ((lane / 8) % 2)) * 2 * D) +
                           (unsigned)(((lane / 16) ^ (lane % 8)) * 16);
    const unsigned sbase = (unsigned)__cvta_generic_to_shared(stages);

    for (int t = 0; t < nt; t++) {
        tc_wait(PF_STAGES - 2);
        __syncthreads();
        {
            const int tn = t + PF_STAGES - 1;
            char *st = stages + (tn % PF_STAGES) * STAGE;
            if (tn < nt) {
                if (I8)
                    pf_load_tile8(a, b, hk, st, st + BN * D, kmin + tn * BN, kmax, D);
                else
                    pf_load_tile(a, kvp, st, st + TILE, kmin + tn * BN, kmax, D);
            }
            tc_commit();
        }
        const int j0 = kmin + t * BN;
        unsigned kt = sbase + (unsigned)((t % PF_STAGES) * STAGE);
        if (I8) { /* codes -> f16 tiles (the barrier above freed them) */
            const char *st = stages + (t % PF_STAGES) * STAGE;
            pf_dequant(st, deq, gk, D);
            pf_dequant(st + BN * D, deq + TILE, gv, D);
            if (t + 1 < nt) { /* the next tile's scales, used one iteration on */
                pf_group_scales(a.k8, a, b, hk, j0 + BN, kmax, gk, D);
                pf_group_scales(a.v8, a, b, hk, j0 + BN, kmax, gv, D);
            }
            __syncthreads();
            kt = (unsigned)__cvta_generic_to_shared(deq);
        }
        const unsigned vt = kt + TILE;
        if (!warp_live || j0 >= whi || j0 + BN <= wlo) continue;

        /* S = Q K^T */
        float s[2][PF_BN_MAX / 8][4]; /* MT, NT used */
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int n = 0; n < NT; n++)
                s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
#pragma unroll
        for (int k = 0; k < D / 16; k++) {
            unsigned qa[2][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
                tc_ldsm4_at((qlane ^ (32 * k)) + mt * 16 * 2 * D, qa[mt]);
#pragma unroll
            for (int n = 0; n < NT; n += 2) {
                unsigned f[4];
                tc_ldsm4_at(((kt + klane) ^ (32 * k)) + 8 * n * 2 * D, f);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    tc_mma(s[mt][n], qa[mt], f[0], f[1], DT);
                    tc_mma(s[mt][n + 1], qa[mt], f[2], f[3], DT);
                }
            }
        }

        /* mask (unless every row of the warp sees the whole tile), row maxima,
         * online softmax in the log2 domain (m: running max of s * c) */
        const bool full = j0 >= lo_last && j0 + BN <= hi_first;
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                if (!full) {
                    const int r = lane_row + 16 * mt + 8 * hf;
                    int lo = 0, hi = 0;
                    if (r < Sq) pf_range(a, L, r, &lo, &hi);
#pragma unroll
                    for (int n = 0; n < NT; n++)
#pragma unroll
                        for (int e = 2 * hf; e < 2 * hf + 2; e++) {
                            const int j = j0 + 8 * n + 2 * q4 + (e % 2);
                            if (j < lo || j >= hi) s[mt][n][e] = -INFINITY;
                        }
                }
                if (PHASED) continue;
                const int x = 2 * mt + hf;
                float mx = -INFINITY;
#pragma unroll
                for (int n = 0; n < NT; n++)
#pragma unroll
                    for (int e = 2 * hf; e < 2 * hf + 2; e++) mx = cu_nanmax(mx, s[mt][n][e]);
                mx = cu_nanmax(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = cu_nanmax(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mn = cu_nanmax(m[x], mx * c);
                const float al = mn == -INFINITY ? 1.0f : tc_exp2(m[x] - mn);
                const float sub = mn == -INFINITY ? 0.0f : mn;
                m[x] = mn;
                float sum = 0.0f;
#pragma unroll
                for (int n = 0; n < NT; n++)
#pragma unroll
                    for (int e = 2 * hf; e < 2 * hf + 2; e++) {
                        s[mt][n][e] = tc_exp2(fmaf(s[mt][n][e], c, -sub));
                        sum += s[mt][n][e];
                    }
                l[x] = l[x] * al + sum;
#pragma unroll
                for (int n = 0; n < NC; n++) o[mt][n][2 * hf] *= al, o[mt][n][2 * hf + 1] *= al;
            }
        if (PHASED) {
            /* the 2 MT rows of this lane side by side, each phase over all of them so
             * their latencies overlap; maxima and sums as trees (depth log2 NT, not NT) */
            float mx[4], al[4], sub[4];
#pragma unroll
            for (int x = 0; x < 2 * MT; x++) {
                float v[8];
                const int e = 2 * (x % 2);
#pragma unroll
                for (int n = 0; n < NT && n < 8; n++) {
                    v[n] = cu_nanmax(s[x / 2][n][e], s[x / 2][n][e + 1]);
                    if (NT > 8) /* 128-key tiles: fold the second half in first */
                        v[n] =
                            cu_nanmax(v[n], cu_nanmax(s[x / 2][n + 8][e], s[x / 2][n + 8][e + 1]));
                }
                mx[x] = pf_tree(v, NT > 8 ? 8 : NT, true);
            }
#pragma unroll
            for (int sh = 1; sh <= 2; sh *= 2)
#pragma unroll
                for (int x = 0; x < 2 * MT; x++)
                    mx[x] = cu_nanmax(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], sh));
#pragma unroll
            for (int x = 0; x < 2 * MT; x++) {
                const float mn = cu_nanmax(m[x], mx[x] * c);
                al[x] = mn == -INFINITY ? 1.0f : tc_exp2(m[x] - mn);
                sub[x] = mn == -INFINITY ? 0.0f : mn;
                m[x] = mn;
            }
#pragma unroll
            for (int x = 0; x < 2 * MT; x++) {
                float v[8];
                const int e = 2 * (x % 2);
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    s[x / 2][n][e] = tc_exp2(fmaf(s[x / 2][n][e], c, -sub[x]));
                    s[x / 2][n][e + 1] = tc_exp2(fmaf(s[x / 2][n][e + 1], c, -sub[x]));
                    const float p2 = s[x / 2][n][e] + s[x / 2][n][e + 1];
                    if (n < 8)
                        v[n] = p2;
                    else
                        v[n - 8] += p2;
                }
                l[x] = l[x] * al[x] + pf_tree(v, NT > 8 ? 8 : NT, false);
            }
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int n = 0; n < NC; n++) {
                    o[mt][n][0] *= al[2 * mt], o[mt][n][1] *= al[2 * mt];
                    o[mt][n][2] *= al[2 * mt + 1], o[mt][n][3] *= al[2 * mt + 1];
                }
        }

        /* O += P V, 16 keys a step: P's A fragment from two 8-key blocks of S */
#pragma unroll
        for (int k = 0; k < BN / 16; k++) {
            unsigned pa[2][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                pa[mt][0] = tc_pack(s[mt][2 * k][0], s[mt][2 * k][1], DT);
                pa[mt][1] = tc_pack(s[mt][2 * k][2], s[mt][2 * k][3], DT);
                pa[mt][2] = tc_pack(s[mt][2 * k + 1][0], s[mt][2 * k + 1][1], DT);
                pa[mt][3] = tc_pack(s[mt][2 * k + 1][2], s[mt][2 * k + 1][3], DT);
            }
#pragma unroll
            for (int n = 0; n < NC; n += 2) {
                unsigned f[4];
                tc_ldsm4_t_at(((vt + vlane) ^ (16 * n)) + 16 * k * 2 * D, f);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    tc_mma(o[mt][n], pa[mt], f[0], f[1], DT);
                    tc_mma(o[mt][n + 1], pa[mt], f[2], f[3], DT);
                }
            }
        }
    }
    tc_wait(0);
#pragma unroll
    for (int x = 0; x < 2 * MT; x++) {
        float lx = l[x];
        lx += __shfl_xor_sync(0xffffffffu, lx, 1);
        lx += __shfl_xor_sync(0xffffffffu, lx, 2);
        const int r = lane_row + 16 * (x / 2) + 8 * (x % 2);
        const float *vchan = I8 ? a.v8.chan + hk * D : NULL;
        if (ws.splits > 1)
            pf_store_part(a, ws, split, b, h, r, m[x], lx, o[x / 2], x % 2, vchan, D);
        else
            pf_store_row(a, b, h, r, m[x], lx, o[x / 2], x % 2, vchan, D);
    }
}

#define PF_KERNEL(name, DT, D, MT, I8)                                                             \
    __global__ void __launch_bounds__(PF_THREADS)                                                  \
        name(kr_cu_attention a, bool q_async, kr_cu_prefill_ws ws) {                               \
        pf_body(a, q_async, ws, DT, D, MT, I8);                                                    \
    }
PF_KERNEL(pf_f16_d64_m1, KR_F16, 64, 1, false)
PF_KERNEL(pf_f16_d128_m1, KR_F16, 128, 1, false)
PF_KERNEL(pf_f16_d128_m2, KR_F16, 128, 2, false)
PF_KERNEL(pf_bf16_d64_m1, KR_BF16, 64, 1, false)
PF_KERNEL(pf_bf16_d128_m1, KR_BF16, 128, 1, false)
PF_KERNEL(pf_bf16_d128_m2, KR_BF16, 128, 2, false)
PF_KERNEL(pf_i8_d64_m1, KR_F16, 64, 1, true)
PF_KERNEL(pf_i8_d128_m1, KR_F16, 128, 1, true)

/* The splits of a row combined: one warp per (row, head, sequence), D / 32
 * channels a lane; weights 2^(lse_s - max) (a NaN anywhere stays NaN). */
__global__ void __launch_bounds__(32) pf_merge(kr_cu_attention a, kr_cu_prefill_ws ws) {
    const int64_t i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int lane = threadIdx.x, CPL = (int)a.D / 32;
    const int64_t stride = a.B * a.H * a.Sq, row0 = (b * a.H + h) * a.Sq + i;
    float mx = -INFINITY;
    for (int s = 0; s < ws.splits; s++) mx = cu_nanmax(mx, ws.part_lse[row0 + s * stride]);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, sum = 0.0f;
    if (mx != -INFINITY)
        for (int s = 0; s < ws.splits; s++) {
            const int64_t row = row0 + s * stride;
            const float w = tc_exp2(ws.part_lse[row] - mx);
            sum += w;
            for (int e = 0; e < CPL; e++) acc[e] += w * ws.part_o[row * a.D + lane * CPL + e];
        }
    const bool empty = mx == -INFINITY;
    for (int e = 0; e < CPL; e++)
        cu_store(a.out.data, a.out.dtype, cu_off(a.out, b, i, h, lane * CPL + e),
                 empty ? 0.0f : acc[e] / sum);
    if (a.has_lse && lane == 0)
        ((float *)a.lse.data)[cu_off(a.lse, b, h, i, 0)] =
            empty ? -INFINITY : (mx + log2f(sum)) * PF_LN2;
}

extern "C" int kr_cu_prefill_supported(const kr_cu_attention *a, char *why, size_t n) {
    if (a->D != 64 && a->D != 128) {
        snprintf(why, n, "prefill kernel takes head_dim 64 or 128, got %lld", (long long)a->D);
        return 0;
    }
    if (a->has_mask) {
        snprintf(why, n, "prefill kernel takes no additive mask");
        return 0;
    }
    if (a->int8) {
        if ((uintptr_t)a->k8.data % 16 || (uintptr_t)a->v8.data % 16) {
            snprintf(why, n, "prefill kernel needs 16-byte aligned int8 cache rows");
            return 0;
        }
    } else if (a->k.dtype != a->v.dtype || (a->k.dtype != KR_F16 && a->k.dtype != KR_BF16)) {
        snprintf(why, n, "prefill kernel takes f16 or bf16 K/V of one type, got %s/%s",
                 kr_dtype_name(a->k.dtype), kr_dtype_name(a->v.dtype));
        return 0;
    }
    if (!a->int8 && (!cu_rows_aligned16(&a->k) || !cu_rows_aligned16(&a->v))) {
        snprintf(why, n, "prefill kernel needs K/V rows 16-byte aligned with unit inner stride");
        return 0;
    }
    if (!(a->scale > 0.0f)) {
        snprintf(why, n, "prefill kernel takes a positive scale, got %g", (double)a->scale);
        return 0;
    }
    if (a->Skv + a->Sq > 0x3fffffff) { /* includes tile overshoot */
        snprintf(why, n, "prefill kernel: Sq %lld + kv length %lld past 30-bit indices",
                 (long long)a->Sq, (long long)a->Skv);
        return 0;
    }
    if (a->B > 65535 || a->H > 65535 || a->Sq > 0x7fffffff) {
        snprintf(why, n, "prefill kernel grid: batch %lld or heads %lld past 65535",
                 (long long)a->B, (long long)a->H);
        return 0;
    }
    return 1;
}

/* ---- the int8 cache staged for the Hopper kernel ------------------------------
 * Rows [0, len_b) of every sequence's K and V dequantised — code x group
 * scale x channel factor, kr_ref's order, rounded once to q's type — into
 * [B][Skv][Hkv][D] buffers; rows past len_b are zeros. A thread takes one
 * 16-code chunk of a K row and of the V row beside it. */
#define ST_THREADS 256

__global__ void __launch_bounds__(ST_THREADS)
    st_kernel(kr_cu_attention a, void *ks, void *vs, int dt) {
    const int64_t b = blockIdx.y, per_row = a.D / 16;
    const int64_t x = (int64_t)blockIdx.x * ST_THREADS + threadIdx.x;
    const int64_t row = x / per_row, ch = x % per_row, j = row / a.Hkv, hk = row % a.Hkv;
    if (j >= a.Skv) return;
    const int64_t dst = ((b * a.Skv + j) * a.Hkv + hk) * a.D + 16 * ch;
    const bool live = j < (a.has_lens ? cu_len(a.lens, b) : a.Skv);
    const int64_t src = (b * a.k8.capacity + j) * a.Hkv + hk, M = KR_KV_INT8_META_BYTES(a.D);
    for (int w = 0; w < 2; w++) {
        const kr_cu_int8 &q8 = w ? a.v8 : a.k8;
        unsigned o[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (live) {
            const uint4 raw = *(const uint4 *)(q8.data + src * a.D + 16 * ch);
            const unsigned wd[4] = {raw.x, raw.y, raw.z, raw.w};
            const float gs = cu_int8_group_scale(q8.meta + src * M, 16 * ch / KR_KV_INT8_GROUP);
            const float4 *cf = (const float4 *)(q8.chan + hk * a.D + 16 * ch);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float4 f = cf[e];
                const float c[4] = {f.x, f.y, f.z, f.w};
                float v[4];
#pragma unroll
                for (int i = 0; i < 4; i++)
                    v[i] = __fmul_rn(__fmul_rn((float)(int8_t)(wd[e] >> (8 * i)), gs), c[i]);
                o[2 * e] = tc_pack(v[0], v[1], dt);
                o[2 * e + 1] = tc_pack(v[2], v[3], dt);
            }
        }
        uint4 *d = (uint4 *)((uint16_t *)(w ? vs : ks) + dst);
        d[0] = make_uint4(o[0], o[1], o[2], o[3]);
        d[1] = make_uint4(o[4], o[5], o[6], o[7]);
    }
}

extern "C" size_t kr_cu_int8_stage_bytes(const kr_cu_attention *a) {
    if (!a->int8 || a->D % 16 || (a->q.dtype != KR_F16 && a->q.dtype != KR_BF16)) return 0;
    return 2 * 2 * (size_t)(a->B * a->Skv * a->Hkv * a->D);
}

extern "C" void kr_cu_int8_stage_view(const kr_cu_attention *a, void *buf, kr_cu_attention *out) {
    *out = *a;
    out->int8 = false;
    const size_t half = kr_cu_int8_stage_bytes(a) / 2;
    out->k = kr_tensor_bshd(buf, a->q.dtype, a->B, a->Skv, a->Hkv, a->D);
    out->v = kr_tensor_bshd((char *)buf + half, a->q.dtype, a->B, a->Skv, a->Hkv, a->D);
    out->k.device = out->v.device = a->q.device;
}

extern "C" kr_status kr_cu_int8_stage(const kr_cu_attention *a, const kr_cu_attention *view,
                                      void *stream, char *err, size_t n) {
    const int64_t chunks = a->Skv * a->Hkv * (a->D / 16);
    const int64_t blocks = (chunks + ST_THREADS - 1) / ST_THREADS;
    if (blocks > 0x7fffffff || a->B > 65535) {
        snprintf(err, n, "int8 staging: kv length %lld x %lld heads too large for one launch",
                 (long long)a->Skv, (long long)a->Hkv);
        return KR_ERR_UNSUPPORTED;
    }
    if (blocks == 0 || a->B == 0) return KR_OK;
    st_kernel<<<dim3((unsigned)blocks, (unsigned)a->B), ST_THREADS, 0, (cudaStream_t)stream>>>(
        *a, view->k.data, view->v.data, a->q.dtype);
    return cu_launched("int8 staging", err, n);
}

typedef void (*pf_fn)(kr_cu_attention, bool, kr_cu_prefill_ws);

/* The kernel for this call, its rows per block and its shared memory. Two
 * 16-row tiles per warp pay at head_dim 128 (the lab: +10-12 % over one at
 * 2K+ keys) except for short causal rows, where a block's few tiles cannot
 * repay its fixed cost; at 64, one tile with 128-key tiles wins. */
static pf_fn pf_kernel(const kr_cu_attention *a, int64_t *bm, size_t *smem) {
    static const pf_fn fns[3][2] = {{pf_f16_d64_m1, pf_f16_d128_m1},
                                    {pf_bf16_d64_m1, pf_bf16_d128_m1},
                                    {pf_i8_d64_m1, pf_i8_d128_m1}};
    static const pf_fn m2[2] = {pf_f16_d128_m2, pf_bf16_d128_m2};
    /* int8: one tile per warp (the group scales held for the next tile need
     * the registers a second one would take) */
#ifdef PF_FORCE_MT
    const int mt = a->D == 64 || a->int8 ? 1 : PF_FORCE_MT;
#else
    const int mt = a->D == 128 && !a->int8 && !(a->causal && a->Sq <= 1024) ? 2 : 1;
#endif
    *bm = PF_BM(mt);
    const size_t tile = (size_t)PF_BN(a->D) * 2 * (size_t)a->D; /* one f16 K or V tile */
    *smem = (size_t)*bm * 2 * (size_t)a->D + 1024 +
            (a->int8 ? PF_STAGES * tile + 2 * tile : PF_STAGES * 2 * tile);
    if (mt == 2) return m2[a->k.dtype == KR_BF16];
    return fns[a->int8 ? 2 : a->k.dtype == KR_BF16][a->D == 128];
}

/* Calls served per kernel (kr_cu_prefill_counts). */
static int64_t pf_served[2];

extern "C" void kr_cu_prefill_counts(int64_t counts[2]) {
    counts[0] = __atomic_load_n(&pf_served[0], __ATOMIC_RELAXED);
    counts[1] = __atomic_load_n(&pf_served[1], __ATOMIC_RELAXED);
}

static bool pf_hopper(const kr_cu_attention *a) {
    char why[160];
    return a->cc == 90 && kr_cu_hopper_supported(a, why, sizeof why);
}

extern "C" int64_t kr_cu_prefill_splits(const kr_cu_attention *a, int n_sm, int *hopper) {
    *hopper = pf_hopper(a) && kr_cu_hopper_splits(a, n_sm) == 1;
    if (*hopper) return 1;
    int64_t bm = 0;
    size_t smem = 0;
    const pf_fn fn = pf_kernel(a, &bm, &smem);
    const int per_sm = cu_blocks_per_sm((const void *)fn, PF_THREADS, smem);
    /* Split the keys only when the row blocks fill less than two waves of
     * block slots, and keep every split at least 4 tiles long (chunked
     * prefill: a few hundred new rows over a long cache). */
    const int64_t blocks = (a->Sq + bm - 1) / bm * a->H * a->B;
    const int64_t slots = (int64_t)n_sm * per_sm;
    if (blocks >= 2 * slots) return 1;
    int64_t s = (2 * slots + blocks - 1) / blocks;
    const int64_t by_len = a->Skv / (4 * PF_BN(a->D));
    if (s > by_len) s = by_len;
    if (s > KR_CU_PREFILL_MAX_SPLITS) s = KR_CU_PREFILL_MAX_SPLITS;
    if (s * a->B > 65535) s = 65535 / a->B;
    return s < 1 ? 1 : s;
}

extern "C" size_t kr_cu_prefill_ws_bytes(const kr_cu_attention *a, int64_t splits) {
    if (splits <= 1) return 0;
    return sizeof(float) * (size_t)(splits * a->B * a->H * a->Sq * (a->D + 1));
}

extern "C" kr_status kr_cu_prefill(const kr_cu_attention *a, const kr_cu_prefill_ws *ws,
                                   void *stream, char *err, size_t n) {
    /* windows wider than every row's reach are no window: clamped, so the
     * kernels' 32-bit range arithmetic cannot overflow */
    kr_cu_attention c = *a;
    const int64_t reach = a->Sq + a->Skv;
    if (c.window_left > reach) c.window_left = reach;
    if (c.window_right > reach) c.window_right = reach;
    const int splits = ws->splits > 1 ? ws->splits : 1;
    kr_status st;
    if (ws->hopper) {
        st = kr_cu_hopper_prefill(&c, ws, stream, err, n);
        if (!st) __atomic_add_fetch(&pf_served[1], 1, __ATOMIC_RELAXED);
    } else {
        int64_t bm = 0;
        size_t smem = 0;
        const pf_fn fn = pf_kernel(a, &bm, &smem);
        /* int8: q goes through the threads, which fold in K's channel factors */
        const bool q_async = !a->int8 && a->q.dtype == a->k.dtype && cu_rows_aligned16(&a->q);
        st = cu_allow_smem((const void *)fn, smem, "prefill attention", err, n);
        if (st) return st;
        if (a->Sq == 0 || a->B == 0 || a->H == 0) return KR_OK;
        dim3 grid((unsigned)((a->Sq + bm - 1) / bm), (unsigned)a->H, (unsigned)(a->B * splits));
        fn<<<grid, PF_THREADS, smem, (cudaStream_t)stream>>>(c, q_async, *ws);
        st = cu_launched("prefill attention", err, n);
        if (!st) __atomic_add_fetch(&pf_served[0], 1, __ATOMIC_RELAXED);
    }
    if (st || splits == 1 || a->Sq == 0 || a->B == 0 || a->H == 0) return st;
    pf_merge<<<dim3((unsigned)a->Sq, (unsigned)a->H, (unsigned)a->B), 32, 0,
               (cudaStream_t)stream>>>(c, *ws);
    return cu_launched("prefill split merge", err, n);
}
