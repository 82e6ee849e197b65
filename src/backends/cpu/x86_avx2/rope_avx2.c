/*
 * rope_avx2.c — fused RoPE, and fused RoPE + (quantise +) append into the KV
 * cache, on AVX2; plus this variant's kernel table.
 *
 * One pass over the data: per token, the cos/sin table of its position is
 * built once (kr_avx2_rope_table, four angles at a time in double) and used
 * by every head; each row is loaded, converted to fp32, rotated, and stored
 * back (RoPE) or written into the cache (append) — as fp16/bf16/fp32, or
 * quantised to the int8 layout of kv_cache.h in registers. The arithmetic
 * is the reference's, operation for operation (cos/sin rounded to fp32,
 * x c - y s as two products and a difference, the same quantiser steps),
 * so the results agree with ref to the last bit in all but rare cases.
 *
 * Threads (OpenMP) split the tokens. The first append to an int8 layer
 * first reduces each channel's amax over the appended tokens (per thread,
 * then merged), fixes the channel factors exactly as ref does, then runs the
 * fused pass.
 */
#include "simd_avx2.h"

#include "../../ref/ref.h"

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- cos / sin tables ------------------------------------------------------------ */

void kr_avx2_rope_table(double pos, const double *inv_freq, int64_t half, double attention_factor,
                        float *cosv, float *sinv) {
    const __m256d P1 = _mm256_set1_pd(KR_PIO2_1), P2 = _mm256_set1_pd(KR_PIO2_2);
    const __m256d P3 = _mm256_set1_pd(KR_PIO2_3), inv_pio2 = _mm256_set1_pd(KR_INV_PIO2);
    const __m256d posv = _mm256_set1_pd(pos), af = _mm256_set1_pd(attention_factor);
    const __m256d magic = _mm256_set1_pd(6755399441055744.0); /* 1.5 * 2^52 */
    int64_t i = 0;
    for (; i + 4 <= half && pos < 1e9; i += 4) {
        const __m256d x = _mm256_mul_pd(posv, _mm256_loadu_pd(inv_freq + i));
        const __m256d k = _mm256_round_pd(_mm256_mul_pd(x, inv_pio2),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256d r = _mm256_fnmadd_pd(k, P1, x);
        r = _mm256_fnmadd_pd(k, P2, r);
        r = _mm256_fnmadd_pd(k, P3, r);
        const __m256d r2 = _mm256_mul_pd(r, r);
        /* sin r = r (1 - r2/3! + r2^2/5! - ...), to r^15 */
        __m256d s = _mm256_set1_pd(KR_SIN_COEF[0]);
        for (int c = 1; c < 7; c++) s = _mm256_fmadd_pd(s, r2, _mm256_set1_pd(KR_SIN_COEF[c]));
        s = _mm256_fmadd_pd(_mm256_mul_pd(s, r2), r, r);
        /* cos r = 1 - r2/2! + ..., to r^16 */
        __m256d c = _mm256_set1_pd(KR_COS_COEF[0]);
        for (int e = 1; e < 9; e++) c = _mm256_fmadd_pd(c, r2, _mm256_set1_pd(KR_COS_COEF[e]));
        /* quadrant q = k mod 4: sin = s, c, -s, -c; cos = c, -s, -c, s */
        const __m256i q = _mm256_castpd_si256(_mm256_add_pd(k, magic));
        const __m256i q1 = _mm256_slli_epi64(_mm256_and_si256(q, _mm256_set1_epi64x(1)), 63);
        const __m256i q2 = _mm256_slli_epi64(_mm256_and_si256(q, _mm256_set1_epi64x(2)), 62);
        const __m256d odd = _mm256_castsi256_pd(q1); /* sign bit set when q is odd */
        const __m256d sn0 = _mm256_blendv_pd(s, c, odd);
        const __m256d cs0 = _mm256_blendv_pd(c, s, odd);
        /* sin negative for q = 2, 3; cos negative for q = 1, 2 */
        const __m256d sin_neg = _mm256_castsi256_pd(q2);
        const __m256d cos_neg = _mm256_castsi256_pd(_mm256_xor_si256(q2, q1));
        const __m256d sv = _mm256_xor_pd(sn0, sin_neg);
        const __m256d cv = _mm256_xor_pd(cs0, cos_neg);
        _mm_storeu_ps(cosv + i, _mm256_cvtpd_ps(_mm256_mul_pd(cv, af)));
        _mm_storeu_ps(sinv + i, _mm256_cvtpd_ps(_mm256_mul_pd(sv, af)));
    }
    for (; i < half; i++) { /* tail, and absurd positions: libm */
        const double ang = pos * inv_freq[i];
        cosv[i] = (float)(cos(ang) * attention_factor);
        sinv[i] = (float)(sin(ang) * attention_factor);
    }
}

/* Rotates the first 2 * half channels of an fp32 row in place. */
static void rotate_row(float *row, int64_t half, kr_rope_layout layout, const float *cosv,
                       const float *sinv) {
    int64_t i = 0;
    if (layout == KR_ROPE_HALF_SPLIT) {
        for (; i + 8 <= half; i += 8) {
            const __m256 x = _mm256_loadu_ps(row + i), y = _mm256_loadu_ps(row + half + i);
            const __m256 c = _mm256_loadu_ps(cosv + i), s = _mm256_loadu_ps(sinv + i);
            _mm256_storeu_ps(row + i, _mm256_sub_ps(_mm256_mul_ps(x, c), _mm256_mul_ps(y, s)));
            _mm256_storeu_ps(row + half + i,
                             _mm256_add_ps(_mm256_mul_ps(x, s), _mm256_mul_ps(y, c)));
        }
        for (; i < half; i++) {
            const float x = row[i], y = row[half + i];
            row[i] = x * cosv[i] - y * sinv[i];
            row[half + i] = x * sinv[i] + y * cosv[i];
        }
        return;
    }
    /* interleaved: 4 pairs per vector; cos duplicated, sin signed (-s, +s) */
    const __m256 sign = _mm256_castsi256_ps(_mm256_setr_epi32(
        (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0));
    const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    for (; i + 4 <= half; i += 4) {
        const __m256 v = _mm256_loadu_ps(row + 2 * i);
        const __m256 c =
            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cosv + i)), dup);
        const __m256 s =
            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sinv + i)), dup);
        const __m256 sw = _mm256_permute_ps(v, 0xB1); /* y0 x0 y1 x1 ... */
        /* x' = x c + (-(y s)),  y' = y c + x s */
        const __m256 prod = _mm256_xor_ps(_mm256_mul_ps(sw, s), sign);
        _mm256_storeu_ps(row + 2 * i, _mm256_add_ps(_mm256_mul_ps(v, c), prod));
    }
    for (; i < half; i++) {
        const float x = row[2 * i], y = row[2 * i + 1];
        row[2 * i] = x * cosv[i] - y * sinv[i];
        row[2 * i + 1] = x * sinv[i] + y * cosv[i];
    }
}

/* Loads channels [0, n) of row (b, s, h) of t as fp32. */
static void load_any(const kr_tensor *t, int64_t b, int64_t s, int64_t h, int64_t n, float *dst) {
    const size_t es = kr_dtype_size(t->dtype);
    const int64_t off = b * t->stride[0] + s * t->stride[1] + h * t->stride[2];
    const char *src = (const char *)t->data + (size_t)off * es;
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
        _mm256_storeu_ps(dst + c, kr_avx2_load8(src + (size_t)c * es, t->dtype));
    for (; c < n; c++) dst[c] = kr_load(t, off + c);
}

static void store_any(const kr_tensor *t, int64_t b, int64_t s, int64_t h, int64_t n,
                      const float *row) {
    const size_t es = kr_dtype_size(t->dtype);
    const int64_t off = b * t->stride[0] + s * t->stride[1] + h * t->stride[2];
    char *dst = (char *)t->data + (size_t)off * es;
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
        kr_avx2_store8(dst + (size_t)c * es, t->dtype, _mm256_loadu_ps(row + c));
    for (; c < n; c++) kr_store(t, off + c, row[c]);
}

/* Rotates one row in place in registers (no scratch row): half-split with
 * half % 8 == 0, or interleaved with half % 4 == 0. dt is a constant in each
 * instantiation. Same arithmetic as rotate_row. */
KR_INLINE void rotate_inplace(char *row, const kr_dtype dt, int64_t half, kr_rope_layout layout,
                              const float *cosv, const float *sinv) {
    const size_t es = dt == KR_F32 ? 4 : 2;
    if (layout == KR_ROPE_HALF_SPLIT) {
        for (int64_t i = 0; i < half; i += 8) {
            char *px = row + (size_t)i * es, *py = row + (size_t)(half + i) * es;
            const __m256 x = kr_avx2_load8(px, dt), y = kr_avx2_load8(py, dt);
            const __m256 c = _mm256_loadu_ps(cosv + i), s = _mm256_loadu_ps(sinv + i);
            kr_avx2_store8(px, dt, _mm256_sub_ps(_mm256_mul_ps(x, c), _mm256_mul_ps(y, s)));
            kr_avx2_store8(py, dt, _mm256_add_ps(_mm256_mul_ps(x, s), _mm256_mul_ps(y, c)));
        }
        return;
    }
    const __m256 sign = _mm256_castsi256_ps(_mm256_setr_epi32(
        (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0));
    const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    for (int64_t i = 0; i < half; i += 4) {
        char *pv = row + (size_t)(2 * i) * es;
        const __m256 v = kr_avx2_load8(pv, dt);
        const __m256 c =
            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cosv + i)), dup);
        const __m256 s =
            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sinv + i)), dup);
        const __m256 prod = _mm256_xor_ps(_mm256_mul_ps(_mm256_permute_ps(v, 0xB1), s), sign);
        kr_avx2_store8(pv, dt, _mm256_add_ps(_mm256_mul_ps(v, c), prod));
    }
}

/* kr_avx2_store8, or its non-temporal twin when nt. */
KR_INLINE void store8_as(bool nt, void *p, kr_dtype dt, __m256 v) {
    if (nt)
        kr_avx2_store8_nt(p, dt, v);
    else
        kr_avx2_store8(p, dt, v);
}

/* dst = RoPE(src) for a row of D channels (rotated ones first, then the
 * rest copied), src and dst of the same dtype dt (a constant in each
 * instantiation): each value is read once and written once. nt: dst by
 * non-temporal stores (dst 32-byte aligned, D * size a multiple of 32). */
KR_INLINE void rotate_copy(char *dst, const char *src, const kr_dtype dt, int64_t D, int64_t half,
                           kr_rope_layout layout, const float *cosv, const float *sinv,
                           const bool nt) {
    const size_t es = dt == KR_F32 ? 4 : 2;
    int64_t done = 0;
    if (layout == KR_ROPE_HALF_SPLIT) {
        for (int64_t i = 0; i < half; i += 8) {
            const __m256 x = kr_avx2_load8(src + (size_t)i * es, dt);
            const __m256 y = kr_avx2_load8(src + (size_t)(half + i) * es, dt);
            const __m256 c = _mm256_loadu_ps(cosv + i), s = _mm256_loadu_ps(sinv + i);
            store8_as(nt, dst + (size_t)i * es, dt,
                      _mm256_sub_ps(_mm256_mul_ps(x, c), _mm256_mul_ps(y, s)));
            store8_as(nt, dst + (size_t)(half + i) * es, dt,
                      _mm256_add_ps(_mm256_mul_ps(x, s), _mm256_mul_ps(y, c)));
        }
        done = 2 * half;
    } else {
        const __m256 sign = _mm256_castsi256_ps(_mm256_setr_epi32(
            (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0));
        const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        for (int64_t i = 0; i < half; i += 4) {
            const __m256 v = kr_avx2_load8(src + (size_t)(2 * i) * es, dt);
            const __m256 c =
                _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cosv + i)), dup);
            const __m256 s =
                _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sinv + i)), dup);
            const __m256 prod = _mm256_xor_ps(_mm256_mul_ps(_mm256_permute_ps(v, 0xB1), s), sign);
            store8_as(nt, dst + (size_t)(2 * i) * es, dt, _mm256_add_ps(_mm256_mul_ps(v, c), prod));
        }
        done = 2 * half;
    }
    if (nt)
        kr_avx2_copy_nt(dst + (size_t)done * es, src + (size_t)done * es, (size_t)(D - done) * es);
    else
        memcpy(dst + (size_t)done * es, src + (size_t)done * es, (size_t)(D - done) * es);
}

/* Every head of token (b, s), in place. */
static void rope_token_inplace(const kr_tensor *x, int64_t b, int64_t s, int64_t half,
                               kr_rope_layout layout, const float *cosv, const float *sinv) {
    const size_t es = kr_dtype_size(x->dtype);
    char *base = (char *)x->data + (size_t)(b * x->stride[0] + s * x->stride[1]) * es;
    const size_t hs = (size_t)x->stride[2] * es;
    for (int64_t h = 0; h < x->shape[2]; h++) {
        char *row = base + (size_t)h * hs;
        switch (x->dtype) {
        case KR_F16: rotate_inplace(row, KR_F16, half, layout, cosv, sinv); break;
        case KR_BF16: rotate_inplace(row, KR_BF16, half, layout, cosv, sinv); break;
        default: rotate_inplace(row, KR_F32, half, layout, cosv, sinv); break;
        }
    }
}

static kr_status rope(const kr_rope_args *a, char *err, size_t err_len) {
    const kr_tensor *x = a->x;
    const int64_t B = x->shape[0], S = x->shape[1], H = x->shape[2];
    const int64_t half = a->rotary_dim / 2, rot = a->rotary_dim;
    const int threads = a->n_threads > 0 ? a->n_threads : 1;
    (void)threads; /* read by the OpenMP pragmas only */
    /* whole vectors of pairs: rotate in registers; otherwise through a row */
    const bool in_regs = a->layout == KR_ROPE_HALF_SPLIT ? half % 8 == 0 : half % 4 == 0;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *buf = malloc(sizeof(float) * (size_t)(rot + 2 * half + 16));
        if (!buf) failed = 1;
#pragma omp for schedule(static)
        for (int64_t bs = 0; bs < B * S; bs++) {
            if (!buf) continue;
            float *row = buf, *cosv = buf + rot + 8, *sinv = cosv + half;
            kr_avx2_rope_table((double)a->positions[bs], a->inv_freq, half, a->attention_factor,
                               cosv, sinv);
            const int64_t b = bs / S, s = bs % S;
            if (in_regs) {
                rope_token_inplace(x, b, s, half, a->layout, cosv, sinv);
                continue;
            }
            for (int64_t h = 0; h < H; h++) {
                /* channels beyond rotary_dim are neither read nor written */
                load_any(x, b, s, h, rot, row);
                rotate_row(row, half, a->layout, cosv, sinv);
                store_any(x, b, s, h, rot, row);
            }
        }
        free(buf);
    }
    if (failed) {
        snprintf(err, err_len, "cpu rope: out of memory");
        return KR_ERR_OUT_OF_MEMORY;
    }
    return KR_OK;
}

/* ---- int8 quantisation (kr_ref_quantize_row, vectorised) --------------------- */

static void quantize_row_any(float *x, const float *chan, int64_t D, int8_t *q, uint8_t *meta) {
    const int64_t groups = (D + KR_KV_INT8_GROUP - 1) / KR_KV_INT8_GROUP;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 amax_v = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    float gmax[KR_CPU_MAX_HEAD_DIM / KR_KV_INT8_GROUP + 1];
    for (int64_t g = 0; g < groups; g++) {
        __m256 gm = _mm256_setzero_ps();
        const int64_t end = (g + 1) * KR_KV_INT8_GROUP < D ? (g + 1) * KR_KV_INT8_GROUP : D;
        for (int64_t c = g * KR_KV_INT8_GROUP; c < end; c += 8) {
            /* y = x / chan, kept in x for the rounding pass: ref's (x / chan) / s.
             * Dividing by the usual factor 1 is exact, so it is skipped. */
            const __m256 ch = _mm256_loadu_ps(chan + c);
            __m256 y = _mm256_loadu_ps(x + c);
            if (_mm256_movemask_ps(_mm256_cmp_ps(ch, _mm256_set1_ps(1.0f), _CMP_EQ_OQ)) != 0xff) {
                y = _mm256_div_ps(y, ch);
                _mm256_storeu_ps(x + c, y);
            }
            const __m256 av = _mm256_and_ps(y, absmask);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(av, av, _CMP_UNORD_Q));
            gm = _mm256_max_ps(av, gm); /* NaN ignored, as ref's `av > gmax` */
            amax_v = _mm256_max_ps(av, amax_v);
        }
        gmax[g] = kr_avx2_hmax(gm);
    }
    const float amax = _mm256_movemask_ps(bad) ? NAN : kr_avx2_hmax(amax_v);
    /* the row and group scales: ref's scalar steps */
    /* F16C converts exactly as half.c does (round to nearest even) */
    uint16_t rh = isfinite(amax) ? (uint16_t)_cvtss_sh(amax / 127.0f, _MM_FROUND_TO_NEAREST_INT)
                                 : kr_f32_to_f16(NAN);
    if (isfinite(amax) && _cvtsh_ss(rh) * 127.0f < amax) rh++;
    meta[0] = (uint8_t)(rh & 0xff);
    meta[1] = (uint8_t)(rh >> 8);
    const float row_scale = _cvtsh_ss(rh);
    for (int64_t g = 0; g < groups; g++) {
        float u = row_scale > 0.0f ? ceilf(255.0f * gmax[g] / (127.0f * row_scale)) : 0.0f;
        if (!(u <= 255.0f)) u = 255.0f;
        meta[2 + g] = (uint8_t)u;
    }
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t g = 0; g < groups; g++) {
        const float s = row_scale * ((float)meta[2 + g] * (1.0f / 255.0f)); /* the group scale */
        const bool usable = s > 0.0f && isfinite(s);
        const float inv = usable ? 1.0f / s : 0.0f; /* ref's reciprocal, computed the same way */
        const __m256 sv = _mm256_set1_ps(inv);
        const int64_t c0 = g * KR_KV_INT8_GROUP;
        if (usable && c0 + KR_KV_INT8_GROUP <= D) {
            __m256i v[4];
            for (int k = 0; k < 4; k++) {
                const int64_t c = c0 + 8 * k;
                __m256 r = _mm256_mul_ps(_mm256_loadu_ps(x + c), sv); /* x holds x / chan */
                r = _mm256_round_ps(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                const __m256 ord = _mm256_cmp_ps(r, r, _CMP_ORD_Q);
                r = _mm256_and_ps(_mm256_min_ps(_mm256_max_ps(r, lo), hi), ord);
                v[k] = _mm256_cvtps_epi32(r);
            }
            const __m256i ab = _mm256_packs_epi32(v[0], v[1]), cd = _mm256_packs_epi32(v[2], v[3]);
            const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
            _mm256_storeu_si256((__m256i *)(q + c0), bytes);
        } else {
            const int64_t end = c0 + KR_KV_INT8_GROUP < D ? c0 + KR_KV_INT8_GROUP : D;
            for (int64_t c = c0; c < end; c++) {
                float r = usable ? rintf(x[c] * inv) : 0.0f; /* x holds x / chan */
                if (r > 127.0f) r = 127.0f;
                if (r < -127.0f) r = -127.0f;
                q[c] = r == r ? (int8_t)r : 0;
            }
        }
    }
}

/* The largest lane of each of g[0..3], as one vector (group 0 first). */
KR_INLINE __m128 hmax4(const __m256 *g) {
    const __m256 a = _mm256_max_ps(_mm256_unpacklo_ps(g[0], g[1]), _mm256_unpackhi_ps(g[0], g[1]));
    const __m256 b = _mm256_max_ps(_mm256_unpacklo_ps(g[2], g[3]), _mm256_unpackhi_ps(g[2], g[3]));
    const __m256 c = _mm256_max_ps(_mm256_shuffle_ps(a, b, 0x44), _mm256_shuffle_ps(a, b, 0xEE));
    return _mm_max_ps(_mm256_castps256_ps128(c), _mm256_extractf128_ps(c, 1));
}

/* quantize_row_any for two rows at once (a head's K and V, so that their
 * latency-bound scale steps overlap), whole 32-channel groups only (D a
 * multiple of 32, at most KR_CPU_MAX_HEAD_DIM), with the same arithmetic: the group maxima reduced
 * four at a time, the group scales and their reciprocals computed four
 * groups per vector (IEEE operations round the same in any lane), and the
 * codes rounded by the conversion itself (round to nearest even, as rintf)
 * and saturated by the packs — on this path every value is finite (a NaN or
 * infinity anywhere makes the row scale unusable) and |x / s| <= 127 by the
 * choice of s, so ref's clamp and NaN test change nothing. chan_ones[r]: every
 * factor of row r's head is 1, so ref's division by it is exact and skipped. */
static void quantize_row_pair(float *const *x, const float *const *chan, const bool *chan_ones,
                              int64_t D, int8_t *const *q, uint8_t *const *meta) {
    const int NR = 2;
    const int64_t groups = D / KR_KV_INT8_GROUP;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    /* pass 1, each row: group maxima (padded with zeros to a multiple of 4
     * groups), the row maximum, whether a NaN is in it */
    __m256 gm[2][KR_CPU_MAX_HEAD_DIM / KR_KV_INT8_GROUP + 3];
    float row_scale[2];
    for (int r = 0; r < NR; r++) {
        __m256 amax_v = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (int64_t g = groups; g < groups + 3; g++) gm[r][g] = _mm256_setzero_ps();
        for (int64_t g = 0; g < groups; g++) {
            __m256 m = _mm256_setzero_ps();
            for (int64_t c = g * KR_KV_INT8_GROUP; c < (g + 1) * KR_KV_INT8_GROUP; c += 8) {
                __m256 y = _mm256_loadu_ps(x[r] + c);
                if (!chan_ones[r]) {
                    y = _mm256_div_ps(y, _mm256_loadu_ps(chan[r] + c));
                    _mm256_storeu_ps(x[r] + c, y);
                }
                const __m256 av = _mm256_and_ps(y, absmask);
                bad = _mm256_or_ps(bad, _mm256_cmp_ps(av, av, _CMP_UNORD_Q));
                m = _mm256_max_ps(av, m); /* NaN ignored, as ref's `av > gmax` */
            }
            gm[r][g] = m;
            amax_v = _mm256_max_ps(m, amax_v);
        }
        /* the f16 row scale: ref's scalar steps (F16C rounds as half.c does) */
        const float amax = _mm256_movemask_ps(bad) ? NAN : kr_avx2_hmax(amax_v);
        uint16_t rh = isfinite(amax) ? (uint16_t)_cvtss_sh(amax / 127.0f, _MM_FROUND_TO_NEAREST_INT)
                                     : kr_f32_to_f16(NAN);
        if (isfinite(amax) && _cvtsh_ss(rh) * 127.0f < amax) rh++;
        meta[r][0] = (uint8_t)(rh & 0xff);
        meta[r][1] = (uint8_t)(rh >> 8);
        row_scale[r] = _cvtsh_ss(rh);
    }
    /* pass 2, each row: group scales and their reciprocals, four groups a vector */
    float inv[2][KR_CPU_MAX_HEAD_DIM / KR_KV_INT8_GROUP + 3];
    for (int r = 0; r < NR; r++) {
        const __m128 den = _mm_set1_ps(127.0f * row_scale[r]), rs = _mm_set1_ps(row_scale[r]);
        for (int64_t g4 = 0; g4 < groups; g4 += 4) {
            /* u = ceil(255 gmax / (127 rs)), 255 at most (and for NaN); 0 without a scale */
            __m128 u =
                _mm_ceil_ps(_mm_div_ps(_mm_mul_ps(_mm_set1_ps(255.0f), hmax4(gm[r] + g4)), den));
            u = _mm_min_ps(u, _mm_set1_ps(255.0f));
            if (!(row_scale[r] > 0.0f)) u = _mm_setzero_ps();
            const __m128i ui = _mm_cvttps_epi32(u);
            const __m128 sc =
                _mm_mul_ps(rs, _mm_mul_ps(_mm_cvtepi32_ps(ui), _mm_set1_ps(1.0f / 255.0f)));
            const __m128 ok = _mm_and_ps(_mm_cmpgt_ps(sc, _mm_setzero_ps()),
                                         _mm_cmplt_ps(sc, _mm_set1_ps(INFINITY)));
            _mm_storeu_ps(inv[r] + g4, _mm_and_ps(_mm_div_ps(_mm_set1_ps(1.0f), sc), ok));
            int32_t uu[4];
            _mm_storeu_si128((__m128i *)uu, ui);
            for (int k = 0; k < 4 && g4 + k < groups; k++) meta[r][2 + g4 + k] = (uint8_t)uu[k];
        }
    }
    /* pass 3, each row: the codes */
    const __m256i lo = _mm256_set1_epi8(-127);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int r = 0; r < NR; r++)
        for (int64_t g = 0; g < groups; g++) {
            const int64_t c0 = g * KR_KV_INT8_GROUP;
            if (inv[r][g] == 0.0f) { /* no usable scale (zero group, NaN/inf row): code 0 */
                memset(q[r] + c0, 0, KR_KV_INT8_GROUP);
                continue;
            }
            const __m256 sv = _mm256_set1_ps(inv[r][g]);
            __m256i v[4];
            for (int e = 0; e < 4; e++)
                v[e] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x[r] + c0 + 8 * e), sv));
            const __m256i ab = _mm256_packs_epi32(v[0], v[1]), cd = _mm256_packs_epi32(v[2], v[3]);
            const __m256i bytes =
                _mm256_max_epi8(_mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order), lo);
            _mm256_storeu_si256((__m256i *)(q[r] + c0), bytes);
        }
}

/* ---- append ------------------------------------------------------------------------ */

/* The new token slots: token (b, t) with t < n_new[b]. nt: a float cache's
 * rows of a same-dtype append by non-temporal stores (kr_cpu_kv_append says
 * when). */
static void append_token(const kr_kv_append_args *a, const kr_cpu_append_kernels *ak, int64_t b,
                         int64_t t, float *row, float *cosv, float *sinv, const bool *chan_ones,
                         bool nt) {
    kr_kv_cache *c = a->cache;
    const kr_kv_cache_options *o = &c->o;
    const int64_t D = o->head_dim, Hkv = o->n_kv_heads, half = a->rotary_dim / 2;
    kr_kv_layer *ly = &c->layers[a->layer];
    const int64_t slot = c->len[a->layer * o->batch + b] + t;
    if (a->inv_freq)
        (ak && ak->rope_table ? ak->rope_table : kr_avx2_rope_table)(
            (double)a->positions[b * a->k->shape[1] + t], a->inv_freq, half, a->attention_factor,
            cosv, sinv);
    const size_t es = kr_dtype_size(o->dtype);
    const int64_t M = KR_KV_INT8_META_BYTES(D);
    const bool i8_whole =
        o->dtype == KR_I8 && D % KR_KV_INT8_GROUP == 0 && D <= KR_CPU_MAX_HEAD_DIM;
    if (i8_whole) {
        /* int8: each head's K and V rows quantised as a pair (row2 = the V row) */
        float *row2 = sinv + D / 2 + 8;
        for (int64_t h = 0; h < Hkv; h++) {
            const int64_t r = (b * o->capacity + slot) * Hkv + h;
            load_any(a->k, b, t, h, D, row);
            if (a->inv_freq) rotate_row(row, half, a->layout, cosv, sinv);
            load_any(a->v, b, t, h, D, row2);
            float *const x[2] = {row, row2};
            const float *const chan[2] = {ly->k_chan + h * D, ly->v_chan + h * D};
            const bool ones[2] = {chan_ones[h], chan_ones[Hkv + h]};
            int8_t *const q[2] = {(int8_t *)ly->k + r * D, (int8_t *)ly->v + r * D};
            uint8_t *const meta[2] = {ly->k_meta + r * M, ly->v_meta + r * M};
            quantize_row_pair(x, chan, ones, D, q, meta);
        }
        return;
    }
    for (int w = 0; w < 2; w++) {
        const bool is_k = w == 0;
        const kr_tensor *src = is_k ? a->k : a->v;
        char *data = is_k ? ly->k : ly->v;
        const bool rope_k = is_k && a->inv_freq;
        /* float cache fed without rounding (same dtype, or into f32): copy,
         * then rotate in place in registers — ref's arithmetic, one pass */
        const bool direct =
            o->dtype != KR_I8 && (o->dtype == src->dtype || o->dtype == KR_F32) &&
            (!rope_k || (a->layout == KR_ROPE_HALF_SPLIT ? half % 8 == 0 : half % 4 == 0));
        for (int64_t h = 0; h < Hkv; h++) {
            const int64_t r = (b * o->capacity + slot) * Hkv + h;
            if (direct && o->dtype == src->dtype) { /* no conversion: one pass, no re-read */
                const char *sp =
                    (const char *)src->data +
                    (size_t)(b * src->stride[0] + t * src->stride[1] + h * src->stride[2]) * es;
                char *dst = data + (size_t)(r * D) * es;
                if (!rope_k) {
                    if (nt)
                        kr_avx2_copy_nt(dst, sp, (size_t)D * es);
                    else
                        memcpy(dst, sp, (size_t)D * es);
                    continue;
                }
                switch (o->dtype) {
                case KR_F16:
                    rotate_copy(dst, sp, KR_F16, D, half, a->layout, cosv, sinv, nt);
                    break;
                case KR_BF16:
                    rotate_copy(dst, sp, KR_BF16, D, half, a->layout, cosv, sinv, nt);
                    break;
                default: rotate_copy(dst, sp, KR_F32, D, half, a->layout, cosv, sinv, nt); break;
                }
                continue;
            }
            if (direct) {
                const size_t ses = kr_dtype_size(src->dtype);
                const char *sp =
                    (const char *)src->data +
                    (size_t)(b * src->stride[0] + t * src->stride[1] + h * src->stride[2]) * ses;
                char *dst = data + (size_t)(r * D) * es;
                for (int64_t cc = 0; cc < D; cc += 8)
                    kr_avx2_store8(dst + (size_t)cc * es, o->dtype,
                                   kr_avx2_load8(sp + (size_t)cc * ses, src->dtype));
                if (rope_k) {
                    switch (o->dtype) {
                    case KR_F16: rotate_inplace(dst, KR_F16, half, a->layout, cosv, sinv); break;
                    case KR_BF16: rotate_inplace(dst, KR_BF16, half, a->layout, cosv, sinv); break;
                    default: rotate_inplace(dst, KR_F32, half, a->layout, cosv, sinv); break;
                    }
                }
                continue;
            }
            load_any(src, b, t, h, D, row);
            if (rope_k) rotate_row(row, half, a->layout, cosv, sinv);
            if (o->dtype == KR_I8) {
                quantize_row_any(row, (is_k ? ly->k_chan : ly->v_chan) + h * D, D,
                                 (int8_t *)data + r * D, (is_k ? ly->k_meta : ly->v_meta) + r * M);
            } else {
                char *dst = data + (size_t)(r * D) * es;
                for (int64_t cc = 0; cc < D; cc += 8)
                    kr_avx2_store8(dst + (size_t)cc * es, o->dtype, _mm256_loadu_ps(row + cc));
            }
        }
    }
}

/* amax[2][Hkv][D] of the (rotated) K and the V rows this append brings. */
static void channel_amax(const kr_kv_append_args *a, int64_t b, int64_t t, float *row, float *cosv,
                         float *sinv, float *amax) {
    const kr_kv_cache_options *o = &a->cache->o;
    const int64_t D = o->head_dim, Hkv = o->n_kv_heads, half = a->rotary_dim / 2;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    if (a->inv_freq)
        kr_avx2_rope_table((double)a->positions[b * a->k->shape[1] + t], a->inv_freq, half,
                           a->attention_factor, cosv, sinv);
    for (int w = 0; w < 2; w++)
        for (int64_t h = 0; h < Hkv; h++) {
            load_any(w == 0 ? a->k : a->v, b, t, h, D, row);
            if (w == 0 && a->inv_freq) rotate_row(row, half, a->layout, cosv, sinv);
            float *m = amax + (w * Hkv + h) * D;
            for (int64_t c = 0; c < D; c += 8)
                _mm256_storeu_ps(m + c,
                                 _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(row + c), absmask),
                                               _mm256_loadu_ps(m + c)));
        }
}

/* Whether a wider variant's int8 quantiser takes this append (whole
 * 32-channel groups; RoPE pairs in whole 16-lane vectors). */
static bool i8_run_fits(const kr_kv_append_args *a, const kr_cpu_append_kernels *ak) {
    const kr_kv_cache_options *o = &a->cache->o;
    const int64_t D = o->head_dim, half = a->rotary_dim / 2;
    return ak && ak->i8_run && o->dtype == KR_I8 && D % KR_KV_INT8_GROUP == 0 &&
           D <= KR_CPU_MAX_HEAD_DIM &&
           (!a->inv_freq || (a->layout == KR_ROPE_HALF_SPLIT ? half % 16 == 0 : half % 8 == 0));
}

/* Tokens t0 .. t0 + n - 1 of sequence b, through the variant's quantiser. */
static void i8_run(const kr_kv_append_args *a, const kr_cpu_append_kernels *ak, int64_t b,
                   int64_t t0, int64_t n, const bool *chan_ones, void *scratch) {
    kr_kv_cache *c = a->cache;
    const kr_kv_cache_options *o = &c->o;
    const int64_t D = o->head_dim, Hkv = o->n_kv_heads, M = KR_KV_INT8_META_BYTES(D);
    kr_kv_layer *ly = &c->layers[a->layer];
    const int64_t r0 = (b * o->capacity + c->len[a->layer * o->batch + b] + t0) * Hkv;
    const kr_tensor *k = a->k, *v = a->v;
    const int64_t kes = (int64_t)kr_dtype_size(k->dtype), ves = (int64_t)kr_dtype_size(v->dtype);
    const kr_cpu_i8_run run = {(const char *)k->data + (b * k->stride[0] + t0 * k->stride[1]) * kes,
                               (const char *)v->data + (b * v->stride[0] + t0 * v->stride[1]) * ves,
                               k->stride[2] * kes,
                               v->stride[2] * ves,
                               k->stride[1] * kes,
                               v->stride[1] * ves,
                               k->dtype,
                               v->dtype,
                               n,
                               Hkv,
                               D,
                               a->inv_freq ? a->positions + b * k->shape[1] + t0 : NULL,
                               a->inv_freq,
                               a->attention_factor,
                               a->rotary_dim / 2,
                               a->layout,
                               ly->k_chan,
                               ly->v_chan,
                               chan_ones,
                               (int8_t *)ly->k + r0 * D,
                               (int8_t *)ly->v + r0 * D,
                               ly->k_meta + r0 * M,
                               ly->v_meta + r0 * M};
    ak->i8_run(&run, scratch);
}

kr_status kr_cpu_kv_append(const kr_kv_append_args *a, const kr_cpu_append_kernels *ak, char *err,
                           size_t err_len) {
    kr_kv_cache *c = a->cache;
    const kr_kv_cache_options *o = &c->o;
    const int64_t D = o->head_dim, Hkv = o->n_kv_heads, S = a->k->shape[1], B = o->batch;
    kr_kv_layer *ly = &c->layers[a->layer];
    const int threads = a->n_threads > 0 ? a->n_threads : 1;
    (void)threads; /* read by the OpenMP pragmas only */
    bool any_new = false;
    for (int64_t b = 0; b < B; b++) any_new |= a->n_new[b] > 0;
    const bool fix_chan = o->dtype == KR_I8 && !ly->chan_set && any_new;
    const size_t amax_n = (size_t)(2 * Hkv * D);
    float *amax = fix_chan ? calloc(amax_n, sizeof(float)) : NULL;
    if (fix_chan && !amax) {
        snprintf(err, err_len, "cpu kv append: out of memory");
        return KR_ERR_OUT_OF_MEMORY;
    }
    int failed = 0;
    if (fix_chan) {
#pragma omp parallel num_threads(threads) reduction(| : failed)
        {
            float *buf = malloc(sizeof(float) * (size_t)(2 * D + 16));
            float *mine = calloc(amax_n, sizeof(float));
            if (!buf || !mine) failed = 1;
#pragma omp for schedule(static)
            for (int64_t bt = 0; bt < B * S; bt++) {
                const int64_t b = bt / S, t = bt % S;
                if (!buf || !mine || t >= a->n_new[b]) continue;
                channel_amax(a, b, t, buf, buf + D, buf + D + D / 2 + 8, mine);
            }
            if (mine) {
#pragma omp critical(kr_cpu_amax)
                for (size_t i = 0; i < amax_n; i++)
                    if (mine[i] > amax[i]) amax[i] = mine[i];
            }
            free(buf);
            free(mine);
        }
        float *tmp = malloc(sizeof(float) * (size_t)D);
        if (!tmp) failed = 1;
        for (int w = 0; w < 2 && !failed; w++)
            for (int64_t h = 0; h < Hkv; h++) {
                float *m = amax + (w * Hkv + h) * D;
                kr_ref_chan_factors(a, w == 0, m, tmp);
                memcpy((w == 0 ? ly->k_chan : ly->v_chan) + h * D, m, sizeof(float) * (size_t)D);
            }
        free(tmp);
        free(amax);
        if (failed) {
            snprintf(err, err_len, "cpu kv append: out of memory");
            return KR_ERR_OUT_OF_MEMORY;
        }
        ly->chan_set = true;
    }
    /* heads whose int8 channel factors are all 1 (the usual case): no division */
    bool *ones = calloc((size_t)(2 * Hkv), sizeof(bool));
    if (!ones) {
        snprintf(err, err_len, "cpu kv append: out of memory");
        return KR_ERR_OUT_OF_MEMORY;
    }
    for (int64_t i = 0; o->dtype == KR_I8 && i < 2 * Hkv; i++) {
        const float *ch = (i < Hkv ? ly->k_chan : ly->v_chan) + (i % Hkv) * D;
        ones[i] = true;
        for (int64_t d = 0; d < D; d++) ones[i] = ones[i] && ch[d] == 1.0f;
    }
    if (i8_run_fits(a, ak)) {
        /* each thread one contiguous share of the (b, t) slots, as runs per sequence */
#pragma omp parallel num_threads(threads) reduction(| : failed)
        {
            const size_t bytes = (ak->i8_scratch + 63) / 64 * 64;
            void *scratch = aligned_alloc(64, bytes);
            if (!scratch) failed = 1;
            const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
            const int64_t lo = B * S * id / nt, hi = B * S * (id + 1) / nt;
            for (int64_t bt = lo; scratch && bt < hi;) {
                const int64_t b = bt / S, t0 = bt % S;
                const int64_t t1 = S < t0 + (hi - bt) ? S : t0 + (hi - bt);
                const int64_t end = t1 < a->n_new[b] ? t1 : a->n_new[b];
                if (end > t0) i8_run(a, ak, b, t0, end - t0, ones, scratch);
                bt += t1 - t0;
            }
            free(scratch);
        }
    } else {
        /* a float cache's rows past the caches where a thread's share is
         * long enough (KR_CPU_STREAM_BYTES) */
        const size_t es = kr_dtype_size(o->dtype);
        const bool nt = o->dtype != KR_I8 && (D * (int64_t)es) % 32 == 0 &&
                        ((uintptr_t)ly->k | (uintptr_t)ly->v) % 32 == 0 &&
                        B * S * 2 * Hkv * D * (int64_t)es / threads >= KR_CPU_STREAM_BYTES;
#pragma omp parallel num_threads(threads) reduction(| : failed)
        {
            /* row, cos, sin, and a second row (int8 pairs) */
            float *buf = malloc(sizeof(float) * (size_t)(3 * D + 24));
            if (!buf) failed = 1;
#pragma omp for schedule(static) nowait
            for (int64_t bt = 0; bt < B * S; bt++) {
                const int64_t b = bt / S, t = bt % S;
                if (!buf || t >= a->n_new[b]) continue;
                append_token(a, ak, b, t, buf, buf + D, buf + D + D / 2 + 8, ones, nt);
            }
            if (nt) _mm_sfence(); /* this thread's streamed rows before the region ends */
            free(buf);
        }
    }
    free(ones);
    if (failed) {
        snprintf(err, err_len, "cpu kv append: out of memory");
        return KR_ERR_OUT_OF_MEMORY;
    }
    return KR_OK;
}

/* ---- the variant's table ------------------------------------------------------------ */

static kr_status kv_append(const kr_kv_append_args *a, char *err, size_t err_len) {
    return kr_cpu_kv_append(a, NULL, err, err_len);
}

static const kr_cpu_kernels avx2_kernels = {"avx2+fma+f16c", kr_cpu_avx2_attention, rope,
                                            kv_append};

const kr_cpu_kernels *kr_cpu_avx2_kernels(void) { return &avx2_kernels; }
