/*
 * append_avx512.c — the AVX-512 (F, BW, VL) kernels of the KV append: the
 * token's RoPE table eight angles at a time, and the int8 quantiser for a run
 * of consecutive tokens, their K and V rows 16 at a time. The append driver
 * (x86_avx2/rope_avx2.c) calls them through kr_cpu_append_kernels.
 *
 * Why: quantising a row is a short vector pass (convert, rotate, group maxima,
 * codes) around a long scalar chain (row maximum -> f16 row scale -> the
 * groups' u8 shares -> their reciprocals: two horizontal reductions, three
 * divisions and two f16 conversions, each waiting on the one before). Row by
 * row that chain set the pace (the AVX2 quantiser ran at about one
 * instruction a cycle). Here up to 16 rows are staged first, their group
 * maxima transposed so that lane r holds row r, and the chain runs once for
 * all 16 rows, one lane each; then each row's codes are written — after the
 * next batch has been staged, so that the chain's latency overlaps work that
 * does not wait on it.
 *
 * Every step is ref's operation on the same values (IEEE operations round the
 * same in any lane; the f16 conversion rounds to nearest even as half.c does),
 * so codes and metadata are ref's bit for bit — test_cpu_backend compares
 * them value for value.
 */
#include "../cpu.h"

#include "../x86_avx2/simd_avx2.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define NR 16 /* rows quantised together: one a lane */
#define MAX_G (KR_CPU_MAX_HEAD_DIM / KR_KV_INT8_GROUP)

/* ---- the RoPE table ---------------------------------------------------------------- */

/* kr_avx2_rope_table at eight angles a vector: the same double-precision steps
 * per lane (so the same values); the rest (a tail under 8, absurd positions)
 * goes to kr_avx2_rope_table itself. */
static void rope_table8(double pos, const double *inv_freq, int64_t half, double attention_factor,
                        float *cosv, float *sinv) {
    const __m512d P1 = _mm512_set1_pd(KR_PIO2_1), P2 = _mm512_set1_pd(KR_PIO2_2);
    const __m512d P3 = _mm512_set1_pd(KR_PIO2_3), inv_pio2 = _mm512_set1_pd(KR_INV_PIO2);
    const __m512d posv = _mm512_set1_pd(pos), af = _mm512_set1_pd(attention_factor);
    const __m512d magic = _mm512_set1_pd(6755399441055744.0); /* 1.5 * 2^52 */
    int64_t i = 0;
    for (; i + 8 <= half && pos < 1e9; i += 8) {
        const __m512d x = _mm512_mul_pd(posv, _mm512_loadu_pd(inv_freq + i));
        const __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(x, inv_pio2),
                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512d r = _mm512_fnmadd_pd(k, P1, x);
        r = _mm512_fnmadd_pd(k, P2, r);
        r = _mm512_fnmadd_pd(k, P3, r);
        const __m512d r2 = _mm512_mul_pd(r, r);
        __m512d s = _mm512_set1_pd(KR_SIN_COEF[0]);
        for (int c = 1; c < 7; c++) s = _mm512_fmadd_pd(s, r2, _mm512_set1_pd(KR_SIN_COEF[c]));
        s = _mm512_fmadd_pd(_mm512_mul_pd(s, r2), r, r);
        __m512d c = _mm512_set1_pd(KR_COS_COEF[0]);
        for (int e = 1; e < 9; e++) c = _mm512_fmadd_pd(c, r2, _mm512_set1_pd(KR_COS_COEF[e]));
        /* quadrant q = k mod 4: sin = s, c, -s, -c; cos = c, -s, -c, s */
        const __m512i q = _mm512_castpd_si512(_mm512_add_pd(k, magic));
        const __mmask8 odd = _mm512_test_epi64_mask(q, _mm512_set1_epi64(1));
        const __m512i q1 = _mm512_slli_epi64(_mm512_and_si512(q, _mm512_set1_epi64(1)), 63);
        const __m512i q2 = _mm512_slli_epi64(_mm512_and_si512(q, _mm512_set1_epi64(2)), 62);
        const __m512i sn0 = _mm512_castpd_si512(_mm512_mask_blend_pd(odd, s, c));
        const __m512i cs0 = _mm512_castpd_si512(_mm512_mask_blend_pd(odd, c, s));
        const __m512d sv = _mm512_castsi512_pd(_mm512_xor_si512(sn0, q2));
        const __m512d cv = _mm512_castsi512_pd(_mm512_xor_si512(cs0, _mm512_xor_si512(q2, q1)));
        _mm256_storeu_ps(cosv + i, _mm512_cvtpd_ps(_mm512_mul_pd(cv, af)));
        _mm256_storeu_ps(sinv + i, _mm512_cvtpd_ps(_mm512_mul_pd(sv, af)));
    }
    if (i < half)
        kr_avx2_rope_table(pos, inv_freq + i, half - i, attention_factor, cosv + i, sinv + i);
}

/* ---- the int8 quantiser ------------------------------------------------------------ */

/* 16 channels of an input row from p as fp32 (exact for every input dtype). */
KR_INLINE __m512 ld16(const char *p, kr_dtype dt) {
    switch (dt) {
    case KR_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)p));
    case KR_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)p)), 16));
    default: return _mm512_loadu_ps((const float *)(const void *)p);
    }
}

/* Lane r of the result: the largest lane of v[r] as an unsigned integer, for
 * 16 vectors (|x| bit patterns: their integer order is the order of the
 * values, NaN above infinity). */
KR_INLINE __m512i hmax_rows(const __m512i *v) {
#define KR_SHUF(a, b, imm)                                                                         \
    _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), imm))
    __m512i t[8], u[4];
    for (int k = 0; k < 8; k++) /* per 128 bits: a0|a2 b0|b2 a1|a3 b1|b3 */
        t[k] = _mm512_max_epu32(_mm512_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
                                _mm512_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 4; k++) /* per 128 bits: rows 4k .. 4k+3, each over those 4 lanes */
        u[k] = _mm512_max_epu32(KR_SHUF(t[2 * k], t[2 * k + 1], 0x44),
                                KR_SHUF(t[2 * k], t[2 * k + 1], 0xEE));
#undef KR_SHUF
    /* fold the four 128-bit lanes: first pairs of them, then the rest */
    const __m512i w01 = _mm512_max_epu32(_mm512_shuffle_i32x4(u[0], u[1], 0x44),
                                         _mm512_shuffle_i32x4(u[0], u[1], 0xEE));
    const __m512i w23 = _mm512_max_epu32(_mm512_shuffle_i32x4(u[2], u[3], 0x44),
                                         _mm512_shuffle_i32x4(u[2], u[3], 0xEE));
    return _mm512_max_epu32(_mm512_shuffle_i32x4(w01, w23, 0x88),
                            _mm512_shuffle_i32x4(w01, w23, 0xDD));
}

/* max(m, |v|) on bit patterns (NaN above all). */
KR_INLINE __m512i absmax1(__m512 v, __m512i m) {
    return _mm512_max_epu32(
        m, _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
}

/* One row into x (fp32: rotated when cosv, divided by its channel factors
 * unless ones) and its group maxima of |x| as bit patterns into gm[g * NR].
 * A row with a NaN gets a NaN maximum somewhere, which makes it a row ref
 * cannot quantise; in a finite row the integer maximum is ref's `av > gmax`
 * maximum. D and half are constants where the caller is specialised. cd/sd:
 * the interleaved layout's cos duplicated and sin signed (-s, +s) per pair. */
KR_INLINE void stage_row(const char *src, kr_dtype dt, const int64_t D, const int64_t half,
                         kr_rope_layout layout, const float *cosv, const float *sinv,
                         const float *cd, const float *sd, const float *chan, bool ones, float *x,
                         __m512i *gm) {
    const size_t es = dt == KR_F32 ? 4 : 2;
    __m512i acc[MAX_G];
    for (int64_t g = 0; g < D / KR_KV_INT8_GROUP; g++) acc[g] = _mm512_setzero_si512();
    int64_t c = 0;
    if (cosv && layout == KR_ROPE_HALF_SPLIT) {
        /* ref: x' = x c - y s, y' = x s + y c (products rounded, no FMA) */
        for (int64_t i = 0; i < half; i += 16) {
            const __m512 xv = ld16(src + (size_t)i * es, dt);
            const __m512 yv = ld16(src + (size_t)(half + i) * es, dt);
            const __m512 cv = _mm512_loadu_ps(cosv + i), sv = _mm512_loadu_ps(sinv + i);
            const __m512 xr = _mm512_sub_ps(_mm512_mul_ps(xv, cv), _mm512_mul_ps(yv, sv));
            const __m512 yr = _mm512_add_ps(_mm512_mul_ps(xv, sv), _mm512_mul_ps(yv, cv));
            _mm512_store_ps(x + i, xr);
            _mm512_store_ps(x + half + i, yr);
            if (ones) {
                acc[i / KR_KV_INT8_GROUP] = absmax1(xr, acc[i / KR_KV_INT8_GROUP]);
                acc[(half + i) / KR_KV_INT8_GROUP] =
                    absmax1(yr, acc[(half + i) / KR_KV_INT8_GROUP]);
            }
        }
        c = 2 * half;
    } else if (cosv) {
        /* pairs (x, y): x c + (-(y s)) and y c + x s — ref's values exactly */
        for (int64_t i = 0; i < 2 * half; i += 16) {
            const __m512 v = ld16(src + (size_t)i * es, dt);
            const __m512 prod = _mm512_mul_ps(_mm512_permute_ps(v, 0xB1), _mm512_load_ps(sd + i));
            const __m512 r = _mm512_add_ps(_mm512_mul_ps(v, _mm512_load_ps(cd + i)), prod);
            _mm512_store_ps(x + i, r);
            if (ones) acc[i / KR_KV_INT8_GROUP] = absmax1(r, acc[i / KR_KV_INT8_GROUP]);
        }
        c = 2 * half;
    }
    for (; c < D; c += 16) {
        const __m512 v = ld16(src + (size_t)c * es, dt);
        _mm512_store_ps(x + c, v);
        if (ones) acc[c / KR_KV_INT8_GROUP] = absmax1(v, acc[c / KR_KV_INT8_GROUP]);
    }
    if (!ones) /* ref's x / chan; skipped where every factor is 1 (exact) */
        for (c = 0; c < D; c += 16) {
            const __m512 v = _mm512_div_ps(_mm512_load_ps(x + c), _mm512_loadu_ps(chan + c));
            _mm512_store_ps(x + c, v);
            acc[c / KR_KV_INT8_GROUP] = absmax1(v, acc[c / KR_KV_INT8_GROUP]);
        }
    for (int64_t g = 0; g < D / KR_KV_INT8_GROUP; g++) gm[g * NR] = acc[g];
}

/* Codes of one row: round(x * inv[g]) to nearest even by the conversion,
 * saturated by the narrowing, -128 lifted to -127 (ref's clamp). inv is 0
 * for a group without a usable scale: there every x is finite (a row with
 * NaN/inf is zeroed by the caller), so its codes come out 0, as ref's.
 * nt: q is 64-byte aligned and D a multiple of 64; the codes bypass the
 * caches (non-temporal stores). */
KR_INLINE void codes_row(const float *x, const int64_t D, const float *inv, int8_t *q,
                         const bool nt) {
    int64_t c = 0;
    /* 64 channels (two groups) a step: two packs, one dword permute */
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (; c + 64 <= D; c += 64) {
        const __m512 s0 = _mm512_set1_ps(inv[c / KR_KV_INT8_GROUP]);
        const __m512 s1 = _mm512_set1_ps(inv[c / KR_KV_INT8_GROUP + 1]);
        const __m512i c0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(x + c), s0));
        const __m512i c1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(x + c + 16), s0));
        const __m512i c2 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(x + c + 32), s1));
        const __m512i c3 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(x + c + 48), s1));
        const __m512i b =
            _mm512_packs_epi16(_mm512_packs_epi32(c0, c1), _mm512_packs_epi32(c2, c3));
        const __m512i codes =
            _mm512_max_epi8(_mm512_permutexvar_epi32(order, b), _mm512_set1_epi8(-127));
        if (nt)
            _mm512_stream_si512((void *)(q + c), codes);
        else
            _mm512_storeu_si512((void *)(q + c), codes);
    }
    for (; c < D; c += KR_KV_INT8_GROUP) {
        const __m512 sv = _mm512_set1_ps(inv[c / KR_KV_INT8_GROUP]);
        const __m128i a =
            _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(x + c), sv)));
        const __m128i b = _mm512_cvtsepi32_epi8(
            _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(x + c + 16), sv)));
        _mm256_storeu_si256(
            (__m256i *)(void *)(q + c),
            _mm256_max_epi8(_mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1),
                            _mm256_set1_epi8(-127)));
    }
}

/* A batch of up to 16 rows between its staging and its codes. */
typedef struct i8_batch {
    _Alignas(64) float x[NR][KR_CPU_MAX_HEAD_DIM];
    _Alignas(64) float inv[NR][MAX_G];
    _Alignas(64) __m512i gm[MAX_G * NR];
    uint8_t share[MAX_G][NR];
    uint16_t rh16[NR];
    __mmask16 fin;
    int64_t tok, r0; /* token of the run, first row (K0 .. K(Hkv-1), V0 .. V(Hkv-1)) */
    int nr;
} i8_batch;

/* Stages rows r0 .. r0 + nr - 1 of token tok into bt. */
KR_INLINE void stage_batch(const kr_cpu_i8_run *t, const int64_t D, const int64_t half,
                           const float *cosv, const float *sinv, const float *cd, const float *sd,
                           i8_batch *bt) {
    const int64_t Hkv = t->Hkv, G = D / KR_KV_INT8_GROUP;
    for (int i = 0; i < bt->nr; i++) {
        const int64_t row = bt->r0 + i;
        const bool is_k = row < Hkv;
        const int64_t h = is_k ? row : row - Hkv;
        if (is_k)
            stage_row(t->k + bt->tok * t->k_ts + h * t->k_hs, t->k_dt, D, half, t->layout, cosv,
                      sinv, cd, sd, t->k_chan + h * D, t->ones[row], bt->x[i], bt->gm + i);
        else
            stage_row(t->v + bt->tok * t->v_ts + h * t->v_hs, t->v_dt, D, half, t->layout, NULL,
                      NULL, cd, sd, t->v_chan + h * D, t->ones[row], bt->x[i], bt->gm + i);
    }
    for (int i = bt->nr; i < NR; i++)
        for (int64_t g = 0; g < G; g++) bt->gm[g * NR + i] = _mm512_setzero_si512();
}

/* The scale chain of a staged batch, lane r = row r0 + r: ref's steps in
 * the same order. */
KR_INLINE void chain_batch(const int64_t D, uint16_t f16_nan, i8_batch *bt) {
    const int64_t G = D / KR_KV_INT8_GROUP;
    __m512i gmax[MAX_G], abits = _mm512_setzero_si512();
    for (int64_t g = 0; g < G; g++) {
        gmax[g] = hmax_rows(bt->gm + g * NR);
        abits = _mm512_max_epu32(gmax[g], abits);
    }
    /* a NaN anywhere: ref's row maximum is NaN (the row's codes are 0) */
    const __mmask16 bad = _mm512_cmpgt_epu32_mask(abits, _mm512_set1_epi32(0x7f800000));
    const __m512 amax = _mm512_mask_mov_ps(_mm512_castsi512_ps(abits), bad, _mm512_set1_ps(NAN));
    /* f16 row scale: amax / 127 rounded to nearest, one step up if it falls
     * short; NaN when amax is not finite */
    const __mmask16 fin = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
    __m256i rh = _mm512_cvtps_ph(_mm512_div_ps(amax, _mm512_set1_ps(127.0f)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 up =
        fin & _mm512_cmp_ps_mask(_mm512_mul_ps(_mm512_cvtph_ps(rh), _mm512_set1_ps(127.0f)), amax,
                                 _CMP_LT_OQ);
    rh = _mm256_mask_add_epi16(rh, up, rh, _mm256_set1_epi16(1));
    rh = _mm256_mask_mov_epi16(_mm256_set1_epi16((short)f16_nan), fin, rh);
    _mm256_storeu_si256((__m256i *)(void *)bt->rh16, rh);
    bt->fin = fin;
    const __m512 rs = _mm512_cvtph_ps(rh);
    const __mmask16 pos = _mm512_cmp_ps_mask(rs, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512 den = _mm512_mul_ps(_mm512_set1_ps(127.0f), rs);
    _Alignas(64) float inv_g[MAX_G][NR];
    for (int64_t g = 0; g < G; g++) {
        /* u = ceil(255 gmax / (127 rs)), at most 255 (NaN too), 0 without a
         * scale (every row with a NaN or infinity lands here) */
        __m512 u = _mm512_roundscale_ps(
            _mm512_div_ps(_mm512_mul_ps(_mm512_set1_ps(255.0f), _mm512_castsi512_ps(gmax[g])), den),
            _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
        u = _mm512_maskz_mov_ps(pos, _mm512_min_ps(u, _mm512_set1_ps(255.0f)));
        const __m512i ui = _mm512_cvttps_epi32(u);
        const __m512 sc =
            _mm512_mul_ps(rs, _mm512_mul_ps(_mm512_cvtepi32_ps(ui), _mm512_set1_ps(1.0f / 255.0f)));
        const __mmask16 ok = _mm512_cmp_ps_mask(sc, _mm512_setzero_ps(), _CMP_GT_OQ) &
                             _mm512_cmp_ps_mask(sc, _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
        _mm512_store_ps(inv_g[g], _mm512_maskz_div_ps(ok, _mm512_set1_ps(1.0f), sc));
        _mm_storeu_si128((__m128i *)(void *)bt->share[g], _mm512_cvtepi32_epi8(ui));
    }
    for (int i = 0; i < bt->nr; i++)
        for (int64_t g = 0; g < G; g++) bt->inv[i][g] = inv_g[g][i];
}

/* Each row's metadata and codes (nt: as codes_row). */
KR_INLINE void codes_batch(const kr_cpu_i8_run *t, const int64_t D, const i8_batch *bt,
                           const bool nt) {
    const int64_t Hkv = t->Hkv, G = D / KR_KV_INT8_GROUP, M = KR_KV_INT8_META_BYTES(D);
    for (int i = 0; i < bt->nr; i++) {
        const int64_t row = bt->r0 + i;
        const bool is_k = row < Hkv;
        const int64_t h = is_k ? row : row - Hkv;
        const int64_t slot_row = bt->tok * Hkv + h;
        int8_t *q = (is_k ? t->kq : t->vq) + slot_row * D;
        uint8_t *meta = (is_k ? t->km : t->vm) + slot_row * M;
        meta[0] = (uint8_t)(bt->rh16[i] & 0xff);
        meta[1] = (uint8_t)(bt->rh16[i] >> 8);
        for (int64_t g = 0; g < G; g++) meta[2 + g] = bt->share[g][i];
        if (!(bt->fin >> i & 1)) /* NaN or infinity in the row: no usable scale, codes 0 */
            memset(q, 0, (size_t)D);
        else
            codes_row(bt->x[i], D, bt->inv[i], q, nt);
    }
}

/* The run's rows in batches of 16 (a token's K rows, then its V rows),
 * pipelined: a batch's scale chain (a long dependent sequence) is followed
 * by the previous batch's codes, which do not wait on it. D and half are
 * constants where the caller is specialised; nt: the codes by non-temporal
 * stores (codes_row). */
KR_INLINE void i8_run_body(const kr_cpu_i8_run *t, const int64_t D, const int64_t half,
                           i8_batch *bts, const bool nt) {
    const int64_t Hkv = t->Hkv, per_tok = (2 * Hkv + NR - 1) / NR, total = t->n_tok * per_tok;
    const uint16_t f16_nan = kr_f32_to_f16(NAN); /* ref's scale for a row it cannot quantise */
    _Alignas(64) float cosv[KR_CPU_MAX_HEAD_DIM / 2 + 16], sinv[KR_CPU_MAX_HEAD_DIM / 2 + 16];
    _Alignas(64) float cd[KR_CPU_MAX_HEAD_DIM], sd[KR_CPU_MAX_HEAD_DIM];
    const bool rope = t->positions != NULL;
    const int64_t k_row = D * (int64_t)kr_dtype_size(t->k_dt),
                  v_row = D * (int64_t)kr_dtype_size(t->v_dt);
    for (int64_t j = 0; j <= total; j++) {
        if (j < total) {
            i8_batch *bt = &bts[j & 1];
            bt->tok = j / per_tok;
            bt->r0 = (j % per_tok) * NR;
            bt->nr = 2 * Hkv - bt->r0 < NR ? (int)(2 * Hkv - bt->r0) : NR;
            if (rope && bt->r0 == 0) {
                rope_table8((double)t->positions[bt->tok], t->inv_freq, half, t->attention_factor,
                            cosv, sinv);
                if (t->layout != KR_ROPE_HALF_SPLIT)
                    for (int64_t i = 0; i < half; i++) {
                        cd[2 * i] = cd[2 * i + 1] = cosv[i];
                        sd[2 * i] = -sinv[i];
                        sd[2 * i + 1] = sinv[i];
                    }
            }
            if (bt->r0 == 0 && bt->tok + 1 < t->n_tok) {
                /* the next token's rows on their way into L2 (into L1 they
                 * were 1.4x slower on a Zen 4 VM: CPU history 27), and, for
                 * write-back stores, the cache lines it will write */
                const int64_t nx = bt->tok + 1;
                for (int64_t h = 0; h < Hkv; h++) {
                    const char *pk = t->k + nx * t->k_ts + h * t->k_hs;
                    const char *pv = t->v + nx * t->v_ts + h * t->v_hs;
                    for (int64_t o = 0; o < k_row; o += 64) _mm_prefetch(pk + o, _MM_HINT_T1);
                    for (int64_t o = 0; o < v_row; o += 64) _mm_prefetch(pv + o, _MM_HINT_T1);
                }
                for (int64_t o = 0; !nt && o < Hkv * D; o += 64) {
                    _m_prefetchw(t->kq + nx * Hkv * D + o);
                    _m_prefetchw(t->vq + nx * Hkv * D + o);
                }
            }
            stage_batch(t, D, half, rope ? cosv : NULL, sinv, cd, sd, bt);
            chain_batch(D, f16_nan, bt);
        }
        if (j > 0) codes_batch(t, D, &bts[(j - 1) & 1], nt);
    }
    if (nt) _mm_sfence(); /* the streamed codes ordered before what follows the run */
}

/* kr_cpu_append_kernels.i8_run. */
static void i8_run(const kr_cpu_i8_run *t, void *scratch) {
    i8_batch *bts = scratch; /* two batches, ~50 KB: the driver's, not the stack's */
    /* the codes past the caches where the run is long enough (KR_CPU_STREAM_BYTES) */
    const bool nt = t->D % 64 == 0 && ((uintptr_t)t->kq | (uintptr_t)t->vq) % 64 == 0 &&
                    t->n_tok * 2 * t->Hkv * t->D >= KR_CPU_STREAM_BYTES;
    /* the usual shape with everything constant, so that the group maxima stay in registers */
    if (t->D == 128 && t->half == 64)
        i8_run_body(t, 128, 64, bts, nt);
    else
        i8_run_body(t, t->D, t->half, bts, nt);
}

static const kr_cpu_append_kernels avx512_append = {rope_table8, i8_run, 2 * sizeof(i8_batch)};

const kr_cpu_append_kernels *kr_cpu_avx512_append_kernels(void) { return &avx512_append; }
