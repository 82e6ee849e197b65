/*
 * attention_avx2.c — tiled flash attention on AVX2 + FMA, for prefill,
 * decode and chunked prefill over any KV storage (fp32, fp16, bf16 tensors
 * or the int8 cache).
 *
 * Work is cut into units (batch b, kv head hk, a tile of query positions,
 * a range of keys). A unit's rows are every query head of the GQA group at
 * every position of the tile, so each K/V tile is converted once and used by
 * all of them:
 *
 *     row r = t * G + g   (position t of the tile, head g of the group)
 *     Qp [rows][D]  fp32, pre-multiplied by scale * log2(e)
 *     Op [rows][D]  fp32 running (un-normalised) output
 *     m, l [rows]   running max (log2 units) and sum of 2^(s - m)
 *
 * For each tile of TK keys: K and V are converted (int8 dequantised) into
 * fp32 tiles Kt/Vt [TK][D] in L1/L2; then, MR rows at a time, the scores
 * S = Qp Kt^T come from a register-blocked MR x 2 kernel (12 accumulators
 * over head_dim, reduced with hadd), masked only where the tile is partly
 * visible (causal diagonal, window, ragged end, additive mask), folded into
 * the online softmax with exp2, and Op += P Vt runs as an MR x 16 kernel
 * (12 accumulators, P broadcast from L1) with the rescale folded into its
 * first load. Tiles no row of a block can see are skipped, so causal prefill
 * does about half the work.
 *
 * The Sq x Skv score matrix never exists: S holds MR x TK floats.
 *
 * Threads (OpenMP) take units heaviest first (late query tiles under a
 * causal mask). When the units are too few for the threads (decode: Sq is
 * 1..16), the keys are split across units too and the partial (Op, m, l)
 * are merged by log-sum-exp afterwards.
 */
#include "simd_avx2.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TK 64         /* keys per tile */
#define UNIT_ROWS 240 /* query rows a prefill unit takes, about (history 16) */
#define MR 6          /* rows per register block */
#define PF 128        /* rows of K/V prefetched ahead */
#define LOG2E 1.4426950408889634

typedef struct att_plan {
    const kr_attention_args *a;
    int64_t G;        /* query heads per kv head */
    int64_t Tq;       /* query positions per unit */
    int64_t n_qt;     /* query tiles */
    int64_t ns;       /* key splits */
    int64_t split;    /* keys per split (multiple of TK) */
    int64_t rows;     /* G * Tq */
    int64_t rows_pad; /* rows rounded up to MR */
    int64_t hpu;      /* kv heads per unit */
    int64_t n_hg;     /* kv head groups: Hkv / hpu */
    int64_t tk;       /* keys per tile (<= TK) */
    bool direct;      /* decode: one row block per kv head, K/V read from the cache in place */
    kr_dtype kv_dt;   /* storage dtype of K/V (KR_I8 for the int8 cache) */
    const kr_cpu_decode_kernels *dk; /* a wider ISA's decode kernels, or NULL: this file's */
    float qscale;                    /* scale * log2(e) */
    float *part;                     /* ns > 1: [unit][rows_pad][D] partial outputs */
    float *part_ml;                  /* ns > 1: [unit][rows_pad][2] m and l */
} att_plan;

typedef struct att_scratch {
    float *Qp, *Op, *m, *l, *S, *Kt, *Vt, *KT, *corr;
    int64_t *lo, *hi, *qi; /* per row: visible keys [lo, hi), query index */
    int64_t *qh;           /* per row: query head */
    /* decode reading the cache directly: row pointers and int8 group scales of a tile */
    const char *krow[TK], *vrow[TK];
    float gk[TK * (KR_CPU_MAX_HEAD_DIM / KR_KV_INT8_GROUP)],
        gv[TK * (KR_CPU_MAX_HEAD_DIM / KR_KV_INT8_GROUP)];
    unsigned char *qs; /* the decode kernels' q state, q_state_bytes a head of the unit, or NULL */
} att_scratch;

/* ---- micro-kernels ------------------------------------------------------------ */

/* The one register-blocked kernel, for R rows (R = MR, or 1 for single rows):
 *
 *   C[r][0..16) = (scale ? C[r][0..16) * scale[r] : 0) + sum_k A[r][k] B[k][0..16)
 *
 * 2R accumulators, A broadcast, two B vectors per k. Scores are
 * S = Qp . KT (A = Qp, B = the transposed K tile, keys in the lanes); the
 * output update is O = O * corr + P . V (A = P, B = the V tile). */
KR_INLINE void gemm_rx16(const float *A, int64_t lda, const float *B, int64_t ldb, int64_t K,
                         float *C, int64_t ldc, const float *scale, const int R) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        if (scale) {
            const __m256 sc = _mm256_broadcast_ss(scale + r);
            acc[r][0] = _mm256_mul_ps(_mm256_loadu_ps(C + r * ldc), sc);
            acc[r][1] = _mm256_mul_ps(_mm256_loadu_ps(C + r * ldc + 8), sc);
        } else {
            acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        }
    }
    for (int64_t k = 0; k < K; k++) {
        const __m256 b0 = _mm256_loadu_ps(B + k * ldb), b1 = _mm256_loadu_ps(B + k * ldb + 8);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        _mm256_storeu_ps(C + r * ldc, acc[r][0]);
        _mm256_storeu_ps(C + r * ldc + 8, acc[r][1]);
    }
}

/* KT[d][j] = Kt[j][d] for j < n (n <= TK), zero for n <= j < roundup(n, 16):
 * 8 x 8 register transposes. */
static void transpose_tile(const float *Kt, int64_t n, int64_t D, float *KT) {
    const int64_t n16 = (n + 15) & ~(int64_t)15;
    for (int64_t j0 = 0; j0 < n16; j0 += 8) {
        for (int64_t d0 = 0; d0 < D; d0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = j0 + i < n ? _mm256_loadu_ps(Kt + (j0 + i) * D + d0) : _mm256_setzero_ps();
            const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
            const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
            const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
            const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
            const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *o = KT + d0 * TK + j0;
            _mm256_store_ps(o + 0 * TK, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_store_ps(o + 1 * TK, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_store_ps(o + 2 * TK, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_store_ps(o + 3 * TK, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_store_ps(o + 4 * TK, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_store_ps(o + 5 * TK, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_store_ps(o + 6 * TK, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_store_ps(o + 7 * TK, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
    }
}

/* kr_kv_int8_group_scale with the F16C conversion inline (same value). */
KR_INLINE float group_scale(const uint8_t *meta, int64_t g) {
    return _cvtsh_ss((unsigned short)(meta[0] | (meta[1] << 8))) *
           ((float)meta[2 + g] * (1.0f / 255.0f));
}

/* All n_groups scales of one int8 row into out, four at a time (the same two
 * roundings as group_scale, so the same values). */
KR_INLINE void group_scales(const uint8_t *meta, int64_t n_groups, float *out) {
    const __m128 rs = _mm_set1_ps(_cvtsh_ss((unsigned short)(meta[0] | (meta[1] << 8))));
    const __m128 inv = _mm_set1_ps(1.0f / 255.0f);
    int64_t g = 0;
    for (; g + 4 <= n_groups; g += 4) {
        int32_t w;
        memcpy(&w, meta + 2 + g, 4);
        const __m128 u = _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(w)));
        _mm_storeu_ps(out + g, _mm_mul_ps(rs, _mm_mul_ps(u, inv)));
    }
    for (; g < n_groups; g++) out[g] = group_scale(meta, g);
}

/* ---- decode: kernels that read the cache directly -------------------------------- */

/* 8 values of a cache row at channel d, as fp32 (int8: the raw codes). */
KR_INLINE __m256 ld8(const char *row, int64_t d, kr_dtype dt) {
    switch (dt) {
    case KR_I8:
        return _mm256_cvtepi32_ps(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + d))));
    case KR_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * d)));
    case KR_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + 2 * d))), 16));
    default: return _mm256_loadu_ps((const float *)(const void *)(row + 4 * d));
    }
}

/* S[r][0..1] for R rows over two cache rows k0, k1 (int8: g0/g1 are their
 * group scales; the channel factors are already folded into q). */
KR_INLINE void qk_direct(const float *q, int64_t D, const char *k0, const char *k1, const float *g0,
                         const float *g1, kr_dtype dt, float *s, const int R) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
        __m256 a = ld8(k0, d, dt), b = ld8(k1, d, dt);
        if (dt == KR_I8) {
            a = _mm256_mul_ps(a, _mm256_broadcast_ss(g0 + d / KR_KV_INT8_GROUP));
            b = _mm256_mul_ps(b, _mm256_broadcast_ss(g1 + d / KR_KV_INT8_GROUP));
        }
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m256 qv = _mm256_loadu_ps(q + r * D + d);
            __asm__("" : "+x"(qv)); /* one load for both keys, not a memory operand in each FMA */
            acc[r][0] = _mm256_fmadd_ps(qv, a, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(qv, b, acc[r][1]);
        }
    }
    /* the sums, four rows at a time in one pass of shuffles: hadd of
     * (key 0, key 1) per row, hadd of row pairs, the two 128-bit halves
     * added, leaving (r, k0), (r, k1) in adjacent lanes for each row */
    int r = 0;
#pragma GCC unroll 2
    for (; r + 4 <= R; r += 4) {
        const __m256 h01 = _mm256_hadd_ps(_mm256_hadd_ps(acc[r][0], acc[r][1]),
                                          _mm256_hadd_ps(acc[r + 1][0], acc[r + 1][1]));
        const __m256 h23 = _mm256_hadd_ps(_mm256_hadd_ps(acc[r + 2][0], acc[r + 2][1]),
                                          _mm256_hadd_ps(acc[r + 3][0], acc[r + 3][1]));
        const __m256 t = _mm256_add_ps(_mm256_permute2f128_ps(h01, h23, 0x20),
                                       _mm256_permute2f128_ps(h01, h23, 0x31));
        const __m128 lo = _mm256_castps256_ps128(t), hi = _mm256_extractf128_ps(t, 1);
        _mm_storel_pi((__m64 *)(void *)(s + r * TK), lo);
        _mm_storeh_pi((__m64 *)(void *)(s + (r + 1) * TK), lo);
        _mm_storel_pi((__m64 *)(void *)(s + (r + 2) * TK), hi);
        _mm_storeh_pi((__m64 *)(void *)(s + (r + 3) * TK), hi);
    }
#pragma GCC unroll 3
    for (; r < R; r++) {
        const __m256 h = _mm256_hadd_ps(acc[r][0], acc[r][1]);
        const __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        const __m128 y = _mm_hadd_ps(x, x);
        _mm_storel_pi((__m64 *)(void *)(s + r * TK), y);
    }
}

/* O[r][c..c+16) = O * corr[r] + sum_{j in [j_lo, j_hi)} P[r][j] V[j][c..c+16) for R rows,
 * V read from the cache rows vrow[j] (int8: scaled by gv[j][group]). */
KR_INLINE void pv_direct(const float *P, int64_t j_lo, int64_t j_hi, const char *const *vrow,
                         const float *gv, int64_t n_groups, kr_dtype dt, int64_t c, float *O,
                         int64_t D, const float *corr, const int R, const kr_cpu_pf *pf) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        const __m256 cr = _mm256_broadcast_ss(corr + r);
        acc[r][0] = _mm256_mul_ps(_mm256_loadu_ps(O + r * D + c), cr);
        acc[r][1] = _mm256_mul_ps(_mm256_loadu_ps(O + r * D + c + 8), cr);
    }
    for (int64_t j = j_lo; j < j_hi; j++) {
        if (pf) kr_cpu_pf_keys(pf, j - j_lo, 1);
        __m256 v0 = ld8(vrow[j], c, dt), v1 = ld8(vrow[j], c + 8, dt);
        if (dt == KR_I8) {
            const __m256 g = _mm256_broadcast_ss(gv + j * n_groups + c / KR_KV_INT8_GROUP);
            v0 = _mm256_mul_ps(v0, g);
            v1 = _mm256_mul_ps(v1, g);
        }
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m256 pj = _mm256_broadcast_ss(P + r * TK + j);
            acc[r][0] = _mm256_fmadd_ps(pj, v0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(pj, v1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        _mm256_storeu_ps(O + r * D + c, acc[r][0]);
        _mm256_storeu_ps(O + r * D + c + 8, acc[r][1]);
    }
}

/* Row pointers (and int8 group scales) of keys [j0, j0 + n) of kv head hk. */
static void direct_rows(const kr_attention_args *a, int64_t b, int64_t hk, int64_t j0, int64_t n,
                        att_scratch *w) {
    const int64_t D = a->D, n_groups = (D + KR_KV_INT8_GROUP - 1) / KR_KV_INT8_GROUP;
    for (int64_t j = 0; j < n; j++) {
        if (a->k8) {
            const int64_t r = (b * a->k8->capacity + j0 + j) * a->Hkv + hk;
            const int64_t M = KR_KV_INT8_META_BYTES(D);
            w->krow[j] = (const char *)(a->k8->data + r * D);
            w->vrow[j] = (const char *)(a->v8->data + r * D);
            group_scales(a->k8->meta + r * M, n_groups, w->gk + j * n_groups);
            group_scales(a->v8->meta + r * M, n_groups, w->gv + j * n_groups);
        } else {
            const kr_tensor *k = a->k, *v = a->v;
            const size_t es = kr_dtype_size(k->dtype);
            w->krow[j] =
                (const char *)k->data +
                (size_t)(b * k->stride[0] + (j0 + j) * k->stride[1] + hk * k->stride[2]) * es;
            w->vrow[j] =
                (const char *)v->data +
                (size_t)(b * v->stride[0] + (j0 + j) * v->stride[1] + hk * v->stride[2]) * es;
        }
    }
}

/* Scores of R rows against n keys read from the cache; dt and R are
 * constants in each instantiation below. */
KR_INLINE void qk_direct_all(const float *q, int64_t D, const att_scratch *w, int64_t n, float *S,
                             const kr_dtype dt, const int R, const kr_cpu_pf *pf) {
    const int64_t ng = (D + KR_KV_INT8_GROUP - 1) / KR_KV_INT8_GROUP;
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
        if (pf) kr_cpu_pf_keys(pf, j, 2);
        qk_direct(q, D, w->krow[j], w->krow[j + 1], w->gk + j * ng, w->gk + (j + 1) * ng, dt, S + j,
                  R);
    }
    if (pf && j < n) kr_cpu_pf_keys(pf, j, 2);
    if (j < n)
        qk_direct(q, D, w->krow[j], w->krow[j], w->gk + j * ng, w->gk + j * ng, dt, S + j, R);
}

KR_INLINE void pv_direct_all(const float *P, int64_t j_lo, int64_t j_hi, const att_scratch *w,
                             int64_t D, float *O, const float *corr, const kr_dtype dt, const int R,
                             const kr_cpu_pf *pf) {
    const int64_t ng = (D + KR_KV_INT8_GROUP - 1) / KR_KV_INT8_GROUP;
    for (int64_t c = 0; c < D; c += 16, pf = NULL) /* the first pass over the keys takes pf */
        pv_direct(P, j_lo, j_hi, w->vrow, w->gv, ng, dt, c, O, D, corr, R, pf);
}

#define KR_DIRECT_CASES(X)                                                                         \
    X(KR_F32, 4)                                                                                   \
    X(KR_F16, 4)                                                                                   \
    X(KR_BF16, 4)                                                                                  \
    X(KR_I8, 4)                                                                                    \
    X(KR_F32, 6)                                                                                   \
    X(KR_F16, 6) X(KR_BF16, 6) X(KR_I8, 6) X(KR_F32, 1) X(KR_F16, 1) X(KR_BF16, 1) X(KR_I8, 1)

static void qk_direct_dispatch(const float *q, int64_t D, const att_scratch *w, int64_t n, float *S,
                               kr_dtype dt, int R, const kr_cpu_pf *pf) {
#define X(DT, RR)                                                                                  \
    if (dt == (DT) && R == (RR)) {                                                                 \
        qk_direct_all(q, D, w, n, S, DT, RR, pf);                                                  \
        return;                                                                                    \
    }
    KR_DIRECT_CASES(X)
#undef X
}

static void pv_direct_dispatch(const float *P, int64_t j_lo, int64_t j_hi, const att_scratch *w,
                               int64_t D, float *O, const float *corr, kr_dtype dt, int R,
                               const kr_cpu_pf *pf) {
#define X(DT, RR)                                                                                  \
    if (dt == (DT) && R == (RR)) {                                                                 \
        pv_direct_all(P, j_lo, j_hi, w, D, O, corr, DT, RR, pf);                                   \
        return;                                                                                    \
    }
    KR_DIRECT_CASES(X)
#undef X
}

/* ---- tiles -------------------------------------------------------------------- */

/* Converts keys [j0, j0 + n) of kv heads [hk0, hk0 + nh), sequence b, into
 * dst[hh][n][D] (hh = hk - hk0). Position-major: the heads of one position
 * sit next to each other in the cache, so the read streams through memory;
 * PF positions ahead are prefetched by hand. */
static void load_tiles(const kr_attention_args *a, const kr_cpu_decode_kernels *dk, int which,
                       int64_t b, int64_t hk0, int64_t nh, int64_t j0, int64_t n, float *dst) {
    const int64_t D = a->D;
    const kr_kv_int8_view *v8 = which ? a->v8 : a->k8;
    if (v8) {
        const int64_t M = KR_KV_INT8_META_BYTES(D);
        for (int64_t j = 0; j < n; j++) {
            const int64_t r0 = (b * v8->capacity + j0 + j) * a->Hkv + hk0;
            if (nh < a->Hkv && j0 + j + PF < v8->capacity) {
                const char *ahead = (const char *)(v8->data + (r0 + PF * a->Hkv) * D);
                for (int64_t c = 0; c < nh * D; c += 64) _mm_prefetch(ahead + c, _MM_HINT_T0);
                const char *mahead = (const char *)(v8->meta + (r0 + PF * a->Hkv) * M);
                for (int64_t c = 0; c < nh * M; c += 64) _mm_prefetch(mahead + c, _MM_HINT_T0);
            }
            for (int64_t hh = 0; hh < nh; hh++) {
                const int64_t r = r0 + hh;
                const int8_t *src = v8->data + r * D;
                const uint8_t *meta = v8->meta + r * M;
                const float *chan = v8->chan + (hk0 + hh) * D;
                float *o = dst + (hh * n + j) * D;
                if (dk && dk->dequant_row && D % KR_KV_INT8_GROUP == 0) {
                    dk->dequant_row(src, meta, chan, D, o);
                    continue;
                }
                float gs[KR_CPU_MAX_HEAD_DIM / KR_KV_INT8_GROUP];
                group_scales(meta, D / KR_KV_INT8_GROUP, gs);
                for (int64_t g = 0; g < D / KR_KV_INT8_GROUP; g++) {
                    const __m256 sc = _mm256_set1_ps(gs[g]);
                    for (int64_t c = g * KR_KV_INT8_GROUP; c < (g + 1) * KR_KV_INT8_GROUP; c += 8) {
                        const __m256 x = _mm256_cvtepi32_ps(
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(src + c))));
                        _mm256_storeu_ps(
                            o + c, _mm256_mul_ps(_mm256_mul_ps(x, sc), _mm256_loadu_ps(chan + c)));
                    }
                }
                /* head_dim 16, 48, ...: a last partial group */
                for (int64_t c = (D / KR_KV_INT8_GROUP) * KR_KV_INT8_GROUP; c < D; c++)
                    o[c] = (float)src[c] * kr_kv_int8_group_scale(meta, c / KR_KV_INT8_GROUP) *
                           chan[c];
            }
        }
        return;
    }
    const kr_tensor *t = which ? a->v : a->k;
    const size_t es = kr_dtype_size(t->dtype);
    for (int64_t j = 0; j < n; j++) {
        const char *src0 =
            (const char *)t->data +
            (size_t)(b * t->stride[0] + (j0 + j) * t->stride[1] + hk0 * t->stride[2]) * es;
        if (nh < a->Hkv && j0 + j + PF < t->shape[1]) {
            for (int64_t hh = 0; hh < nh; hh++) {
                const char *ahead = src0 + (size_t)(PF * t->stride[1] + hh * t->stride[2]) * es;
                for (int64_t c = 0; c < D * (int64_t)es; c += 64)
                    _mm_prefetch(ahead + c, _MM_HINT_T0);
            }
        }
        for (int64_t hh = 0; hh < nh; hh++)
            kr_avx2_load_row(src0 + (size_t)(hh * t->stride[2]) * es, t->dtype, D,
                             dst + (hh * n + j) * D);
    }
}

/* ---- one unit ------------------------------------------------------------------- */

/* Packs the query rows of the unit: heads [hk0, hk0 + hpu), query tile qt.
 * Row (hh, r) lives at hh * rows_pad + r. */
static void unit_rows(const att_plan *p, int64_t b, int64_t hk0, int64_t qt, att_scratch *w,
                      int64_t *n_pos) {
    const kr_attention_args *a = p->a;
    const int64_t D = a->D, G = p->G;
    const int64_t t0 = qt * p->Tq;
    int64_t nt = a->Sq - t0;
    if (nt > p->Tq) nt = p->Tq;
    *n_pos = nt;
    const int64_t L = a->kv_lens ? a->kv_lens[b] : a->Skv;
    const __m256 qs = _mm256_set1_ps(p->qscale);
    const size_t es = kr_dtype_size(a->q->dtype);
    for (int64_t hh = 0; hh < p->hpu; hh++)
        for (int64_t r = 0; r < p->rows_pad; r++) {
            const int64_t row = hh * p->rows_pad + r;
            float *dst = w->Qp + row * D;
            const int64_t t = r / G, g = r % G;
            if (r >= nt * G) { /* padding: sees nothing */
                memset(dst, 0, sizeof(float) * (size_t)D);
                w->lo[row] = w->hi[row] = 0;
                w->qi[row] = -1;
                w->qh[row] = 0;
                continue;
            }
            const int64_t i = t0 + t, h = (hk0 + hh) * G + g;
            const char *src =
                (const char *)a->q->data +
                (size_t)(b * a->q->stride[0] + i * a->q->stride[1] + h * a->q->stride[2]) * es;
            for (int64_t c = 0; c < D; c += 8)
                _mm256_storeu_ps(
                    dst + c, _mm256_mul_ps(kr_avx2_load8(src + (size_t)c * es, a->q->dtype), qs));
            if (p->direct && a->k8) { /* int8: K's channel factors folded into q */
                const float *chan = a->k8->chan + (hk0 + hh) * D;
                for (int64_t c = 0; c < D; c += 8)
                    _mm256_storeu_ps(dst + c, _mm256_mul_ps(_mm256_loadu_ps(dst + c),
                                                            _mm256_loadu_ps(chan + c)));
            }
            kr_attention_row_range(a, L, i, &w->lo[row], &w->hi[row]);
            w->qi[row] = i;
            w->qh[row] = h;
        }
}

/* Online softmax of one block row over a tile: masks, then folds the tile's
 * scores into (m, l) and leaves P = 2^(s - m) in s. */
static void softmax_row(const kr_attention_args *a, int64_t b, att_scratch *w, int64_t row,
                        float *s, int64_t j0, int64_t n, bool full, float *corr_out,
                        const kr_cpu_decode_kernels *dk) {
    if (full && dk && dk->softmax) { /* a wider variant's, for a tile the row sees whole */
        *corr_out = dk->softmax(s, n, &w->m[row], &w->l[row]);
        return;
    }
    const int64_t n8 = (n + 7) & ~(int64_t)7;
    if (!full) {
        const int64_t rl = w->lo[row], rh = w->hi[row];
        for (int64_t j = 0; j < n; j++) {
            const int64_t key = j0 + j;
            if (key < rl || key >= rh) {
                s[j] = -INFINITY;
            } else if (a->mask) {
                const kr_tensor *mt = a->mask;
                const int64_t mb = mt->shape[0] == 1 ? 0 : b;
                const int64_t mh = mt->shape[1] == 1 ? 0 : w->qh[row];
                s[j] += (float)LOG2E * kr_load(mt, kr_offset(mt, mb, mh, w->qi[row], key));
            }
        }
    }
    for (int64_t j = n; j < n8; j++) s[j] = -INFINITY;
    __m256 mx = _mm256_set1_ps(-INFINITY), bad = _mm256_setzero_ps();
    for (int64_t j = 0; j < n8; j += 8) {
        const __m256 x = _mm256_loadu_ps(s + j);
        mx = _mm256_max_ps(mx, x);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    }
    /* a NaN score makes the row NaN, as in the reference */
    const float m_tile = _mm256_movemask_ps(bad) ? NAN : kr_avx2_hmax(mx);
    const float m_old = w->m[row];
    const float m_new = (m_tile != m_tile || m_tile > m_old) ? m_tile : m_old;
    if (m_new == -INFINITY) { /* nothing visible yet */
        *corr_out = 1.0f;
        memset(s, 0, sizeof(float) * (size_t)n8);
        return;
    }
    const __m256 mv = _mm256_set1_ps(m_new);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < n8; j += 8) {
        const __m256 e = kr_avx2_exp2(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
        _mm256_storeu_ps(s + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    const float corr = m_old == -INFINITY ? 0.0f : exp2f(m_old - m_new);
    *corr_out = corr;
    w->l[row] = w->l[row] * corr + kr_avx2_hsum(sum);
    w->m[row] = m_new;
}

/* Whether any value of the tile is inf or NaN. */
static bool tile_nonfinite(const float *t, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t e = 0; e < n; e += 8) {
        const __m256 x = _mm256_loadu_ps(t + e);
        acc = _mm256_or_ps(acc, _mm256_cmp_ps(_mm256_sub_ps(x, x), x, _CMP_UNORD_Q));
    }
    return _mm256_movemask_ps(acc) != 0;
}

static void prefetch_bytes(const char *p, size_t n) {
    for (size_t o = 0; o < n; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
}

/* Prefetches keys [j0, j0 + n) of kv heads [hk0, hk0 + nh), K and V. */
static void prefetch_tile(const kr_attention_args *a, int64_t b, int64_t hk0, int64_t nh,
                          int64_t j0, int64_t n) {
    const int64_t D = a->D;
    if (a->k8) {
        const int64_t M = KR_KV_INT8_META_BYTES(D);
        for (int64_t j = 0; j < n; j++) {
            const int64_t r = (b * a->k8->capacity + j0 + j) * a->Hkv + hk0;
            prefetch_bytes((const char *)(a->k8->data + r * D), (size_t)(nh * D));
            prefetch_bytes((const char *)(a->v8->data + r * D), (size_t)(nh * D));
            prefetch_bytes((const char *)(a->k8->meta + r * M), (size_t)(nh * M));
            prefetch_bytes((const char *)(a->v8->meta + r * M), (size_t)(nh * M));
        }
        return;
    }
    const size_t es = kr_dtype_size(a->k->dtype);
    const bool packed = a->k->stride[2] == D && a->v->stride[2] == D; /* heads adjacent */
    for (int64_t j = 0; j < n; j++)
        for (int64_t h = 0; h < (packed ? 1 : nh); h++) {
            const size_t len = (size_t)((packed ? nh : 1) * D) * es;
            prefetch_bytes((const char *)a->k->data +
                               (size_t)(b * a->k->stride[0] + (j0 + j) * a->k->stride[1] +
                                        (hk0 + h) * a->k->stride[2]) *
                                   es,
                           len);
            prefetch_bytes((const char *)a->v->data +
                               (size_t)(b * a->v->stride[0] + (j0 + j) * a->v->stride[1] +
                                        (hk0 + h) * a->v->stride[2]) *
                                   es,
                           len);
        }
}

/* Where keys [j0, j0 + n) of every kv head of sequence b lie, K (which 0)
 * or V (1), when that is one stretch of memory (positions adjacent, heads
 * packed): *len bytes from the return value; NULL otherwise. */
static const char *tile_stretch(const kr_attention_args *a, int which, int64_t b, int64_t j0,
                                int64_t n, size_t *len) {
    const int64_t D = a->D, row = a->Hkv * D;
    if (a->k8) {
        const kr_kv_int8_view *t = which ? a->v8 : a->k8;
        *len = (size_t)(n * row);
        return (const char *)(t->data + (b * t->capacity + j0) * row);
    }
    const kr_tensor *t = which ? a->v : a->k;
    if (t->stride[2] != D || t->stride[1] != row) return NULL;
    const size_t es = kr_dtype_size(t->dtype);
    *len = (size_t)(n * row) * es;
    return (const char *)t->data + (size_t)(b * t->stride[0] + j0 * row) * es;
}

/* Head hh's share of the stretch [s, s + len) split over nh heads, to be
 * prefetched over the n keys of that head's kernel call. */
static kr_cpu_pf pf_share(const char *s, size_t len, int64_t hh, int64_t nh, int64_t n) {
    const size_t line = ~(size_t)63;
    const size_t share = ((len + (size_t)nh - 1) / (size_t)nh + 63) & line; /* whole lines */
    const size_t a = (size_t)hh * share < len ? (size_t)hh * share : len;
    const size_t e = a + share < len ? a + share : len;
    kr_cpu_pf pf = {s + a, s + e, (int64_t)(((share + (size_t)n - 1) / (size_t)n + 63) & line)};
    return pf;
}

static void pf_all(const kr_cpu_pf *pf) {
    if (pf->end > pf->p) prefetch_bytes(pf->p, (size_t)(pf->end - pf->p));
}

/* Decode: each kv head's rows are one block; K and V are read in place. */
static void unit_run_direct(const att_plan *p, int64_t b, int64_t hk0, int64_t lo, int64_t hi,
                            att_scratch *w) {
    const kr_attention_args *a = p->a;
    const int64_t D = a->D;
    const int R = (int)p->rows_pad;
    /* Each kv head reads its rows Hkv rows apart, too far for the hardware
     * prefetchers; the unit's heads together cover every position's rows,
     * one contiguous stretch of K and one of V per tile. The next tile's
     * stretches are prefetched while this one is computed, each head's
     * kernels taking that head's share a few lines a key, in address order
     * (a burst of the whole tile fills the line buffers and stalls the
     * products: CPU history 20); where a tile is not one stretch, in one
     * burst. The first tile is a burst either way. */
    const bool spread = hk0 == 0 && p->hpu == a->Hkv;
    const size_t qsb = p->dk ? p->dk->q_state_bytes : 0;
    for (int64_t hh = 0; w->qs && hh < p->hpu; hh++) /* this unit's rows of q: "not yet" */
        memset(w->qs + (size_t)hh * qsb, 0, 64);
    if (spread && lo < hi) prefetch_tile(a, b, hk0, p->hpu, lo, hi - lo < p->tk ? hi - lo : p->tk);
    for (int64_t j0 = lo; j0 < hi; j0 += p->tk) {
        const int64_t n = hi - j0 < p->tk ? hi - j0 : p->tk;
        const int64_t nx = hi - j0 - n < p->tk ? hi - j0 - n : p->tk; /* the next tile's keys */
        size_t k_len = 0, v_len = 0;
        const char *k_next = NULL, *v_next = NULL;
        if (spread && nx > 0) {
            k_next = tile_stretch(a, 0, b, j0 + n, nx, &k_len);
            v_next = tile_stretch(a, 1, b, j0 + n, nx, &v_len);
        }
        if (nx > 0 && (!k_next || !v_next))
            prefetch_tile(a, b, hk0, p->hpu, j0 + n, nx);
        else if (nx > 0 && a->k8) { /* the int8 rows' metadata: a few lines, at once */
            const int64_t M = KR_KV_INT8_META_BYTES(D), r = (b * a->k8->capacity + j0 + n) * a->Hkv;
            prefetch_bytes((const char *)(a->k8->meta + r * M), (size_t)(nx * a->Hkv * M));
            prefetch_bytes((const char *)(a->v8->meta + r * M), (size_t)(nx * a->Hkv * M));
        }
        for (int64_t hh = 0; hh < p->hpu; hh++) {
            kr_cpu_pf kpf = {NULL, NULL, 0}, vpf = {NULL, NULL, 0};
            const bool pf = k_next && v_next;
            if (pf) {
                kpf = pf_share(k_next, k_len, hh, p->hpu, n);
                vpf = pf_share(v_next, v_len, hh, p->hpu, n);
            }
            const int64_t rb = hh * p->rows_pad;
            bool any = false, full = a->mask == NULL;
            for (int r = 0; r < R; r++) { /* padding rows (qi < 0) as in unit_run */
                const int64_t rl = w->lo[rb + r], rh = w->hi[rb + r];
                if (rl < j0 + n && rh > j0 && rl < rh) any = true;
                if (w->qi[rb + r] >= 0 && !(rl <= j0 && rh >= j0 + n)) full = false;
            }
            if (!any) {
                if (pf) { /* this head's share of the next tile all the same */
                    pf_all(&kpf);
                    pf_all(&vpf);
                }
                continue;
            }
            direct_rows(a, b, hk0 + hh, j0, n, w);
            float *S = w->S;
            const int64_t ng = (D + KR_KV_INT8_GROUP - 1) / KR_KV_INT8_GROUP;
            if (p->dk)
                p->dk->qk(w->Qp + rb * D, D, w->krow, w->gk, ng, n, S, p->kv_dt, R,
                          pf ? &kpf : NULL, w->qs ? w->qs + (size_t)hh * qsb : NULL);
            else
                qk_direct_dispatch(w->Qp + rb * D, D, w, n, S, p->kv_dt, R, pf ? &kpf : NULL);
            for (int r = 0; r < R; r++)
                softmax_row(a, b, w, rb + r, S + r * TK, j0, n, full, &w->corr[r], p->dk);
            if (full && p->dk) {
                p->dk->pv(S, 0, n, w->vrow, w->gv, ng, D, w->Op + rb * D, w->corr, p->kv_dt, R,
                          pf ? &vpf : NULL);
            } else if (full) {
                pv_direct_dispatch(S, 0, n, w, D, w->Op + rb * D, w->corr, p->kv_dt, R,
                                   pf ? &vpf : NULL);
            } else { /* each row over its own visible keys: no 0 * inf */
                if (pf) pf_all(&vpf);
                for (int r = 0; r < R; r++) {
                    int64_t jl = w->lo[rb + r] - j0, jh = w->hi[rb + r] - j0;
                    if (jl < 0) jl = 0;
                    if (jh > n) jh = n;
                    if (jh < jl) jh = jl;
                    if (p->dk)
                        p->dk->pv(S + r * TK, jl, jh, w->vrow, w->gv, ng, D, w->Op + (rb + r) * D,
                                  w->corr + r, p->kv_dt, 1, NULL);
                    else
                        pv_direct_dispatch(S + r * TK, jl, jh, w, D, w->Op + (rb + r) * D,
                                           w->corr + r, p->kv_dt, 1, NULL);
                }
            }
        }
    }
    if (a->v8) /* V's channel factors, applied once to the sums */
        for (int64_t hh = 0; hh < p->hpu; hh++) {
            const float *chan = a->v8->chan + (hk0 + hh) * D;
            for (int64_t r = 0; r < p->rows_pad; r++) {
                float *o = w->Op + (hh * p->rows_pad + r) * D;
                for (int64_t c = 0; c < D; c += 8)
                    _mm256_storeu_ps(
                        o + c, _mm256_mul_ps(_mm256_loadu_ps(o + c), _mm256_loadu_ps(chan + c)));
            }
        }
}

/* Runs keys [k_lo, k_hi) for every row of the unit. */
static void unit_run(const att_plan *p, int64_t b, int64_t hk0, int64_t k_lo, int64_t k_hi,
                     att_scratch *w) {
    const kr_attention_args *a = p->a;
    const int64_t D = a->D, all_rows = p->hpu * p->rows_pad;
    for (int64_t r = 0; r < all_rows; r++) {
        w->m[r] = -INFINITY;
        w->l[r] = 0.0f;
    }
    memset(w->Op, 0, sizeof(float) * (size_t)(all_rows * D));
    /* the keys any row sees */
    int64_t lo = k_hi, hi = k_lo;
    for (int64_t r = 0; r < all_rows; r++) {
        if (w->lo[r] >= w->hi[r]) continue;
        if (w->lo[r] < lo) lo = w->lo[r];
        if (w->hi[r] > hi) hi = w->hi[r];
    }
    if (lo < k_lo) lo = k_lo;
    if (hi > k_hi) hi = k_hi;
    if (p->direct) {
        unit_run_direct(p, b, hk0, lo, hi, w);
        return;
    }
    for (int64_t j0 = lo; j0 < hi; j0 += p->tk) {
        const int64_t n = hi - j0 < p->tk ? hi - j0 : p->tk;
        bool loaded = false, v_bad = false, v_checked = false, transposed = false;
        for (int64_t hh = 0; hh < p->hpu; hh++) {
            const float *Kt = w->Kt + hh * n * D, *Vt = w->Vt + hh * n * D;
            transposed = false; /* KT holds one kv head's tile at a time */
            for (int64_t rb = hh * p->rows_pad; rb < (hh + 1) * p->rows_pad; rb += MR) {
                const int R = MR; /* rows_pad is a multiple of MR on this path */
                /* visibility of this tile for the block; a padding row (qi < 0)
                 * does not make it partial: its output is never stored, so it
                 * may take the whole tile with the others */
                bool any = false, full = a->mask == NULL;
                for (int r = 0; r < R; r++) {
                    const int64_t rl = w->lo[rb + r], rh = w->hi[rb + r];
                    if (rl < j0 + n && rh > j0 && rl < rh) any = true;
                    if (w->qi[rb + r] >= 0 && !(rl <= j0 && rh >= j0 + n)) full = false;
                }
                if (!any) continue;
                if (!loaded) {
                    load_tiles(a, p->dk, 0, b, hk0, p->hpu, j0, n, w->Kt);
                    load_tiles(a, p->dk, 1, b, hk0, p->hpu, j0, n, w->Vt);
                    /* an inf or NaN value must not meet the zero weight of a
                     * key its row cannot see (0 * inf = NaN): such tiles use
                     * each row's exact range below */
                    loaded = true;
                    v_checked = false;
                    transposed = false;
                }
                if (!full && !v_checked) {
                    v_bad = tile_nonfinite(w->Vt, p->hpu * n * D);
                    v_checked = true;
                }
                float *S = w->S;
                if (!transposed) {
                    transpose_tile(Kt, n, D, w->KT);
                    transposed = true;
                }
                int64_t j = 0;
                const int64_t n16 = (n + 15) & ~(int64_t)15; /* KT is zero-padded to 16 keys */
                if (p->dk && p->dk->gemm6x64 && n16 == 64)
                    for (; j + 64 <= n16; j += 64)
                        p->dk->gemm6x64(w->Qp + rb * D, D, w->KT + j, TK, D, S + j, TK, NULL);
                if (p->dk && p->dk->gemm6x32)
                    for (; j + 32 <= n16; j += 32)
                        p->dk->gemm6x32(w->Qp + rb * D, D, w->KT + j, TK, D, S + j, TK, NULL);
                for (; j < n; j += 16)
                    gemm_rx16(w->Qp + rb * D, D, w->KT + j, TK, D, S + j, TK, NULL, MR);
                for (int r = 0; r < R; r++)
                    softmax_row(a, b, w, rb + r, S + r * TK, j0, n, full, &w->corr[r], p->dk);
                if (v_bad && !full) {
                    for (int r = 0; r < R; r++) {
                        const int64_t row = rb + r;
                        int64_t jl = w->lo[row] - j0, jh = w->hi[row] - j0;
                        if (jl < 0) jl = 0;
                        if (jh > n) jh = n;
                        if (jh < jl) jh = jl;
                        for (int64_t c = 0; c < D; c += 16)
                            gemm_rx16(S + r * TK + jl, TK, Vt + jl * D + c, D, jh - jl,
                                      w->Op + row * D + c, D, w->corr + r, 1);
                    }
                } else {
                    int64_t c = 0;
                    if (p->dk && p->dk->gemm6x64)
                        for (; c + 64 <= D; c += 64)
                            p->dk->gemm6x64(S, TK, Vt + c, D, n, w->Op + rb * D + c, D, w->corr);
                    if (p->dk && p->dk->gemm6x32)
                        for (; c + 32 <= D; c += 32)
                            p->dk->gemm6x32(S, TK, Vt + c, D, n, w->Op + rb * D + c, D, w->corr);
                    for (; c < D; c += 16)
                        gemm_rx16(S, TK, Vt + c, D, n, w->Op + rb * D + c, D, w->corr, MR);
                }
            }
        }
    }
}

/* Normalises and writes the rows of a finished unit to out (and lse). */
static void unit_store(const att_plan *p, int64_t b, int64_t n_pos, const att_scratch *w) {
    const kr_attention_args *a = p->a;
    const int64_t D = a->D;
    const size_t es = kr_dtype_size(a->out->dtype);
    for (int64_t hh = 0; hh < p->hpu; hh++)
        for (int64_t r = 0; r < n_pos * p->G; r++) {
            const int64_t row = hh * p->rows_pad + r;
            const int64_t i = w->qi[row], h = w->qh[row];
            const float l = w->l[row];
            const bool empty = l == 0.0f && w->m[row] == -INFINITY;
            const __m256 inv = _mm256_set1_ps(empty ? 0.0f : 1.0f / l);
            char *dst =
                (char *)a->out->data +
                (size_t)(b * a->out->stride[0] + i * a->out->stride[1] + h * a->out->stride[2]) *
                    es;
            for (int64_t c = 0; c < D; c += 8)
                kr_avx2_store8(dst + (size_t)c * es, a->out->dtype,
                               empty ? _mm256_setzero_ps()
                                     : _mm256_mul_ps(_mm256_loadu_ps(w->Op + row * D + c), inv));
            if (a->lse)
                kr_store(a->lse, kr_offset(a->lse, b, h, i, 0),
                         empty ? -INFINITY
                               : (float)(((double)w->m[row] + log2((double)l)) / LOG2E));
        }
}

/* ---- the call ------------------------------------------------------------------- */

static void scratch_free(att_scratch *w) {
    free(w->Qp);
    free(w->Op);
    free(w->m);
    free(w->l);
    free(w->S);
    free(w->Kt);
    free(w->Vt);
    free(w->KT);
    free(w->corr);
    free(w->lo);
    free(w->hi);
    free(w->qi);
    free(w->qh);
    free(w->qs);
}

static bool scratch_alloc(att_scratch *w, const att_plan *p) {
    memset(w, 0, sizeof *w);
    const size_t rp = (size_t)(p->hpu * p->rows_pad), D = (size_t)p->a->D;
    const size_t tile = (size_t)(p->hpu * p->tk) * D;
    w->Qp = aligned_alloc(64, sizeof(float) * rp * D);
    w->Op = aligned_alloc(64, sizeof(float) * rp * D);
    w->m = calloc(rp, sizeof(float));
    w->l = calloc(rp, sizeof(float));
    w->S = aligned_alloc(64, sizeof(float) * MR * TK);
    w->Kt = aligned_alloc(64, sizeof(float) * tile);
    w->Vt = aligned_alloc(64, sizeof(float) * tile);
    w->KT = aligned_alloc(64, sizeof(float) * TK * D);
    w->corr = malloc(sizeof(float) * MR);
    w->lo = calloc(rp, sizeof(int64_t));
    w->hi = calloc(rp, sizeof(int64_t));
    w->qi = calloc(rp, sizeof(int64_t));
    w->qh = calloc(rp, sizeof(int64_t));
    const size_t qsb = p->dk && p->direct ? p->dk->q_state_bytes : 0;
    if (qsb) w->qs = aligned_alloc(64, qsb * (size_t)p->hpu);
    if (w->Qp && w->Op && w->m && w->l && w->S && w->Kt && w->Vt && w->KT && w->corr && w->lo &&
        w->hi && w->qi && w->qh && (w->qs || !qsb))
        return true;
    scratch_free(w);
    return false;
}

/* Index of unit (b, head group hg, query tile qt, split s). */
static int64_t unit_index(const att_plan *p, int64_t b, int64_t hg, int64_t qt, int64_t s) {
    return ((b * p->n_hg + hg) * p->n_qt + qt) * p->ns + s;
}

/* Merges the key splits of (b, hg, qt) into out. */
static void merge_splits(const att_plan *p, int64_t b, int64_t hg, int64_t qt, att_scratch *w) {
    const kr_attention_args *a = p->a;
    const int64_t D = a->D, all_rows = p->hpu * p->rows_pad;
    int64_t n_pos;
    unit_rows(p, b, hg * p->hpu, qt, w, &n_pos); /* row indices; Qp is not used */
    for (int64_t row = 0; row < all_rows; row++) {
        float M = -INFINITY;
        for (int64_t s = 0; s < p->ns; s++) {
            const float m = p->part_ml[(unit_index(p, b, hg, qt, s) * all_rows + row) * 2];
            if (m > M) M = m;
        }
        float L = 0.0f;
        float *o = w->Op + row * D;
        memset(o, 0, sizeof(float) * (size_t)D);
        bool nan = false;
        for (int64_t s = 0; s < p->ns; s++) {
            const int64_t u = unit_index(p, b, hg, qt, s);
            const float *ml = p->part_ml + (u * all_rows + row) * 2;
            nan |= ml[0] != ml[0] || ml[1] != ml[1];
            if (ml[0] == -INFINITY || ml[0] != ml[0]) continue;
            const float f = exp2f(ml[0] - M);
            L += ml[1] * f;
            const float *po = p->part + (u * all_rows + row) * D;
            const __m256 fv = _mm256_set1_ps(f);
            for (int64_t c = 0; c < D; c += 8)
                _mm256_storeu_ps(
                    o + c, _mm256_fmadd_ps(_mm256_loadu_ps(po + c), fv, _mm256_loadu_ps(o + c)));
        }
        w->m[row] = nan ? 0.0f : M;
        w->l[row] = nan ? NAN : L;
    }
    unit_store(p, b, n_pos, w);
}

kr_status kr_cpu_tiled_attention(const kr_attention_args *a, const kr_cpu_decode_kernels *dk,
                                 char *err, size_t err_len) {
    att_plan p;
    memset(&p, 0, sizeof p);
    p.a = a;
    p.dk = dk;
    p.G = a->H / a->Hkv;
    p.qscale = (float)((double)a->scale * LOG2E);
    const int threads = a->n_threads > 0 ? a->n_threads : 1;
    /* about 240 rows per unit: enough to amortise each converted K/V tile
     * (at 120 the copies of f32 K/V rows were ~13 % of the time at 8K) */
    p.Tq = UNIT_ROWS / p.G > 0 ? UNIT_ROWS / p.G : 1;
    if (p.Tq > a->Sq) p.Tq = a->Sq;
    p.n_qt = (a->Sq + p.Tq - 1) / p.Tq;
    p.rows = p.G * p.Tq;
    /* decode (few query rows): a unit takes every kv head of a key range, so
     * the cache streams through memory in order; prefill: one kv head */
    p.hpu = a->Sq <= 16 ? a->Hkv : 1;
    p.tk = TK; /* 32 for every-head units until session 9: 64 is ~8 % faster at 16K chunked */
    p.kv_dt = a->k8 ? KR_I8 : a->k->dtype;
    /* The tiled path works in whole blocks of MR rows (padding rows see
     * nothing). Decode with at most MR rows per kv head reads the cache in
     * place instead, with 4-row kernels when a kv head has 4 query rows. */
    p.rows_pad = (p.rows + MR - 1) / MR * MR;
    p.direct = p.hpu > 1 && p.rows_pad <= MR;
    if (p.direct && p.rows == 4) p.rows_pad = 4;
    p.n_hg = a->Hkv / p.hpu;
    const int64_t base_units = a->B * p.n_hg * p.n_qt;
    p.ns = 1;
    /* too few units for the threads (decode): split the keys too */
    if (base_units < 4 * (int64_t)threads && a->Skv >= 2 * 512) {
        p.ns = (4 * (int64_t)threads + base_units - 1) / base_units;
        if (p.ns > a->Skv / 512) p.ns = a->Skv / 512;
    }
    p.split = ((a->Skv + p.ns - 1) / p.ns + p.tk - 1) / p.tk * p.tk;
    const int64_t units = base_units * p.ns, all_rows = p.hpu * p.rows_pad;
    if (p.ns > 1) {
        p.part = malloc(sizeof(float) * (size_t)(units * all_rows * a->D));
        p.part_ml = malloc(sizeof(float) * (size_t)(units * all_rows * 2));
        if (!p.part || !p.part_ml) {
            free(p.part);
            free(p.part_ml);
            snprintf(err, err_len, "cpu attention: out of memory for %lld key splits",
                     (long long)p.ns);
            return KR_ERR_OUT_OF_MEMORY;
        }
    }
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        /* every thread meets every worksharing loop, even one whose scratch
         * could not be allocated (it then skips its units and reports) */
        att_scratch w;
        const bool ok = scratch_alloc(&w, &p);
        if (!ok) failed = 1;
            /* heaviest first: the last query tiles see the most keys */
#pragma omp for schedule(dynamic, 1)
        for (int64_t u = 0; u < units; u++) {
            if (!ok) continue;
            const int64_t per_qt = a->B * p.n_hg * p.ns;
            const int64_t qt = p.n_qt - 1 - u / per_qt, rest = u % per_qt;
            const int64_t s = rest % p.ns, bh = rest / p.ns;
            const int64_t b = bh / p.n_hg, hg = bh % p.n_hg;
            int64_t n_pos;
            unit_rows(&p, b, hg * p.hpu, qt, &w, &n_pos);
            const int64_t k_lo = s * p.split;
            const int64_t k_hi = k_lo + p.split < a->Skv ? k_lo + p.split : a->Skv;
            unit_run(&p, b, hg * p.hpu, k_lo, k_hi, &w);
            if (p.ns == 1) {
                unit_store(&p, b, n_pos, &w);
            } else if (p.part && p.part_ml) { /* allocated whenever ns > 1 */
                const int64_t idx = unit_index(&p, b, hg, qt, s);
                memcpy(p.part + idx * all_rows * a->D, w.Op,
                       sizeof(float) * (size_t)(all_rows * a->D));
                for (int64_t r = 0; r < all_rows; r++) {
                    p.part_ml[(idx * all_rows + r) * 2] = w.m[r];
                    p.part_ml[(idx * all_rows + r) * 2 + 1] = w.l[r];
                }
            }
        }
        if (p.ns > 1) {
#pragma omp for schedule(static)
            for (int64_t u = 0; u < base_units; u++) {
                if (!ok) continue;
                const int64_t qt = u % p.n_qt, bh = u / p.n_qt;
                merge_splits(&p, bh / p.n_hg, bh % p.n_hg, qt, &w);
            }
        }
        if (ok) scratch_free(&w);
    }
    free(p.part);
    free(p.part_ml);
    if (failed) {
        snprintf(err, err_len, "cpu attention: out of memory for per-thread tiles (head_dim %lld)",
                 (long long)a->D);
        return KR_ERR_OUT_OF_MEMORY;
    }
    return KR_OK;
}

kr_status kr_cpu_avx2_attention(const kr_attention_args *a, char *err, size_t err_len) {
    return kr_cpu_tiled_attention(a, NULL, err, err_len);
}
