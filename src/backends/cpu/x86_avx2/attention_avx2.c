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

#define TK 64  /* keys per tile */
#define MR 6   /* rows per register block */
#define PF 128 /* rows of K/V prefetched ahead */
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
    float qscale;     /* scale * log2(e) */
    float *part;      /* ns > 1: [unit][rows_pad][D] partial outputs */
    float *part_ml;   /* ns > 1: [unit][rows_pad][2] m and l */
} att_plan;

typedef struct att_scratch {
    float *Qp, *Op, *m, *l, *S, *Kt, *Vt, *corr;
    int64_t *lo, *hi, *qi; /* per row: visible keys [lo, hi), query index */
    int64_t *qh;           /* per row: query head */
} att_scratch;

/* ---- micro-kernels ------------------------------------------------------------ */

/* S[r][0..1] = Qp[r] . K[0..1] for R rows (R <= MR), over D (a multiple
 * of 8). The 2R accumulators are reduced pairwise with hadd. */
KR_INLINE void qk_rx2(const float *q, int64_t D, const float *k0, const float *k1, float *s,
                      int64_t ldS, const int R) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
        const __m256 a = _mm256_loadu_ps(k0 + d), b = _mm256_loadu_ps(k1 + d);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m256 qv = _mm256_loadu_ps(q + r * D + d);
            acc[r][0] = _mm256_fmadd_ps(qv, a, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(qv, b, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        const __m256 h =
            _mm256_hadd_ps(acc[r][0], acc[r][1]); /* a01 a23 b01 b23 | a45 a67 b45 b67 */
        const __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        const __m128 y = _mm_hadd_ps(x, x); /* a b a b */
        s[r * ldS] = _mm_cvtss_f32(y);
        s[r * ldS + 1] = _mm_cvtss_f32(_mm_shuffle_ps(y, y, 1));
    }
}

KR_INLINE void qk_rx1(const float *q, int64_t D, const float *k0, float *s, int64_t ldS,
                      const int R) {
    __m256 acc[MR];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
        const __m256 a = _mm256_loadu_ps(k0 + d);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * D + d), a, acc[r]);
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) s[r * ldS] = kr_avx2_hsum(acc[r]);
}

/* O[r][0..16) = O[r][0..16) * corr[r] + sum_j P[r][j] V[j][0..16), R rows. */
KR_INLINE void pv_rx16(const float *P, int64_t ldP, int64_t n, const float *V, int64_t ldV,
                       float *O, int64_t ldO, const float *corr, const int R) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        const __m256 c = _mm256_broadcast_ss(corr + r);
        acc[r][0] = _mm256_mul_ps(_mm256_loadu_ps(O + r * ldO), c);
        acc[r][1] = _mm256_mul_ps(_mm256_loadu_ps(O + r * ldO + 8), c);
    }
    for (int64_t j = 0; j < n; j++) {
        const __m256 v0 = _mm256_loadu_ps(V + j * ldV), v1 = _mm256_loadu_ps(V + j * ldV + 8);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m256 p = _mm256_broadcast_ss(P + r * ldP + j);
            acc[r][0] = _mm256_fmadd_ps(p, v0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(p, v1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        _mm256_storeu_ps(O + r * ldO, acc[r][0]);
        _mm256_storeu_ps(O + r * ldO + 8, acc[r][1]);
    }
}

/* The R-row block kernels, specialised for R = MR and R = 4 (decode with
 * 4 query heads per kv head), generic below that. */
static void block_qk(const float *q, int64_t D, const float *Kt, int64_t n, float *S, int R) {
    int64_t j = 0;
    if (R == MR) {
        for (; j + 2 <= n; j += 2) qk_rx2(q, D, Kt + j * D, Kt + (j + 1) * D, S + j, TK, MR);
        for (; j < n; j++) qk_rx1(q, D, Kt + j * D, S + j, TK, MR);
    } else if (R == 4) {
        for (; j + 2 <= n; j += 2) qk_rx2(q, D, Kt + j * D, Kt + (j + 1) * D, S + j, TK, 4);
        for (; j < n; j++) qk_rx1(q, D, Kt + j * D, S + j, TK, 4);
    } else {
        for (int r = 0; r < R; r++)
            for (int64_t jj = 0; jj < n; jj++)
                qk_rx1(q + r * D, D, Kt + jj * D, S + r * TK + jj, TK, 1);
    }
}

static void block_pv(const float *P, int64_t n, const float *Vt, int64_t D, float *O,
                     const float *corr, int R) {
    for (int64_t c = 0; c < D; c += 16) {
        if (R == MR)
            pv_rx16(P, TK, n, Vt + c, D, O + c, D, corr, MR);
        else if (R == 4)
            pv_rx16(P, TK, n, Vt + c, D, O + c, D, corr, 4);
        else
            for (int r = 0; r < R; r++)
                pv_rx16(P + r * TK, TK, n, Vt + c, D, O + r * D + c, D, corr + r, 1);
    }
}

/* ---- tiles -------------------------------------------------------------------- */

/* Converts keys [j0, j0 + n) of kv heads [hk0, hk0 + nh), sequence b, into
 * dst[hh][n][D] (hh = hk - hk0). Position-major: the heads of one position
 * sit next to each other in the cache, so the read streams through memory;
 * PF positions ahead are prefetched by hand. */
static void load_tiles(const kr_attention_args *a, int which, int64_t b, int64_t hk0, int64_t nh,
                       int64_t j0, int64_t n, float *dst) {
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
                for (int64_t g = 0; g < D / KR_KV_INT8_GROUP; g++) {
                    const __m256 sc = _mm256_set1_ps(kr_kv_int8_group_scale(meta, g));
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
            kr_attention_row_range(a, L, i, &w->lo[row], &w->hi[row]);
            w->qi[row] = i;
            w->qh[row] = h;
        }
}

/* Online softmax of one block row over a tile: masks, then folds the tile's
 * scores into (m, l) and leaves P = 2^(s - m) in s. */
static void softmax_row(const kr_attention_args *a, int64_t b, att_scratch *w, int64_t row,
                        float *s, int64_t j0, int64_t n, bool full, float *corr_out) {
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
    for (int64_t j0 = lo; j0 < hi; j0 += p->tk) {
        const int64_t n = hi - j0 < p->tk ? hi - j0 : p->tk;
        bool loaded = false, v_bad = false, v_checked = false;
        for (int64_t hh = 0; hh < p->hpu; hh++) {
            const float *Kt = w->Kt + hh * n * D, *Vt = w->Vt + hh * n * D;
            for (int64_t rb = hh * p->rows_pad; rb < (hh + 1) * p->rows_pad; rb += MR) {
                const int64_t left = (hh + 1) * p->rows_pad - rb;
                const int R = left < MR ? (int)left : MR;
                /* visibility of this tile for the block */
                bool any = false, full = a->mask == NULL;
                for (int r = 0; r < R; r++) {
                    const int64_t rl = w->lo[rb + r], rh = w->hi[rb + r];
                    if (rl < j0 + n && rh > j0 && rl < rh) any = true;
                    if (!(rl <= j0 && rh >= j0 + n)) full = false;
                }
                if (!any) continue;
                if (!loaded) {
                    load_tiles(a, 0, b, hk0, p->hpu, j0, n, w->Kt);
                    load_tiles(a, 1, b, hk0, p->hpu, j0, n, w->Vt);
                    /* an inf or NaN value must not meet the zero weight of a
                     * key its row cannot see (0 * inf = NaN): such tiles use
                     * each row's exact range below */
                    loaded = true;
                    v_checked = false;
                }
                if (!full && !v_checked) {
                    v_bad = tile_nonfinite(w->Vt, p->hpu * n * D);
                    v_checked = true;
                }
                float *S = w->S;
                block_qk(w->Qp + rb * D, D, Kt, n, S, R);
                for (int r = 0; r < R; r++)
                    softmax_row(a, b, w, rb + r, S + r * TK, j0, n, full, &w->corr[r]);
                if (v_bad && !full) {
                    for (int r = 0; r < R; r++) {
                        const int64_t row = rb + r;
                        int64_t jl = w->lo[row] - j0, jh = w->hi[row] - j0;
                        if (jl < 0) jl = 0;
                        if (jh > n) jh = n;
                        if (jh < jl) jh = jl;
                        for (int64_t c = 0; c < D; c += 16)
                            pv_rx16(S + r * TK + jl, TK, jh - jl, Vt + jl * D + c, D,
                                    w->Op + row * D + c, D, w->corr + r, 1);
                    }
                } else {
                    block_pv(S, n, Vt, D, w->Op + rb * D, w->corr, R);
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
    free(w->corr);
    free(w->lo);
    free(w->hi);
    free(w->qi);
    free(w->qh);
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
    w->corr = malloc(sizeof(float) * MR);
    w->lo = calloc(rp, sizeof(int64_t));
    w->hi = calloc(rp, sizeof(int64_t));
    w->qi = calloc(rp, sizeof(int64_t));
    w->qh = calloc(rp, sizeof(int64_t));
    if (w->Qp && w->Op && w->m && w->l && w->S && w->Kt && w->Vt && w->corr && w->lo && w->hi &&
        w->qi && w->qh)
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

kr_status kr_cpu_avx2_attention(const kr_attention_args *a, char *err, size_t err_len) {
    att_plan p;
    memset(&p, 0, sizeof p);
    p.a = a;
    p.G = a->H / a->Hkv;
    p.qscale = (float)((double)a->scale * LOG2E);
    const int threads = a->n_threads > 0 ? a->n_threads : 1;
    /* about 64 rows per unit: enough to amortise each K/V tile */
    p.Tq = 64 / p.G > 0 ? 64 / p.G : 1;
    if (p.Tq > a->Sq) p.Tq = a->Sq;
    p.n_qt = (a->Sq + p.Tq - 1) / p.Tq;
    p.rows = p.G * p.Tq;
    p.rows_pad = (p.rows + MR - 1) / MR * MR;
    if (p.rows == 4) p.rows_pad = 4; /* decode, 4 heads per kv head: the 4-row kernels */
    /* decode (few query rows): a unit takes every kv head of a key range, so
     * the cache streams through memory in order; prefill: one kv head */
    p.hpu = a->Sq <= 16 ? a->Hkv : 1;
    p.tk = p.hpu > 1 ? 32 : TK;
    p.n_hg = a->Hkv / p.hpu;
    const int64_t base_units = a->B * p.n_hg * p.n_qt;
    p.ns = 1;
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
