/*
 * simd_avx2.h — AVX2 helpers the x86_avx2 kernels share: loading 8 values
 * of any storage dtype as fp32 (F16C for fp16, a shift for bf16), storing
 * them back with round-to-nearest-even, exp2 for the softmax, and cos/sin
 * tables for RoPE. Compiled only into files built with -mavx2 -mfma -mf16c.
 */
#ifndef KR_CPU_SIMD_AVX2_H
#define KR_CPU_SIMD_AVX2_H

#include "../cpu.h"

#include <immintrin.h>
#include <math.h>

#define KR_INLINE static inline __attribute__((always_inline))

/* ---- loads and stores ----------------------------------------------------- */

KR_INLINE __m256 kr_avx2_load8(const void *p, kr_dtype dt) {
    switch (dt) {
    case KR_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    case KR_BF16:
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    default: return _mm256_loadu_ps((const float *)p);
    }
}

/* fp32 -> bf16 with round to nearest even; NaN stays a quiet NaN (as half.c). */
KR_INLINE __m128i kr_avx2_to_bf16(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan);
    r = _mm256_srli_epi32(r, 16);
    /* pack the 8 low halves: packus works per 128-bit lane */
    const __m256i packed = _mm256_packus_epi32(r, r);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

KR_INLINE void kr_avx2_store8(void *p, kr_dtype dt, __m256 v) {
    switch (dt) {
    case KR_F16:
        _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        break;
    case KR_BF16: _mm_storeu_si128((__m128i *)p, kr_avx2_to_bf16(v)); break;
    default: _mm256_storeu_ps((float *)p, v); break;
    }
}

/* kr_avx2_store8 by a non-temporal store (past the caches): p 16-byte
 * aligned for f16/bf16, 32-byte for f32. */
KR_INLINE void kr_avx2_store8_nt(void *p, kr_dtype dt, __m256 v) {
    switch (dt) {
    case KR_F16:
        _mm_stream_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        break;
    case KR_BF16: _mm_stream_si128((__m128i *)p, kr_avx2_to_bf16(v)); break;
    default: _mm256_stream_ps((float *)p, v); break;
    }
}

/* Copies n bytes (a multiple of 16) to 16-byte aligned dst by non-temporal
 * stores. */
KR_INLINE void kr_avx2_copy_nt(void *dst, const void *src, size_t n) {
    for (size_t i = 0; i < n; i += 16)
        _mm_stream_si128((__m128i *)((char *)dst + i),
                         _mm_loadu_si128((const __m128i *)((const char *)src + i)));
}

/* Loads n (a multiple of 8) values of a row as fp32. */
KR_INLINE void kr_avx2_load_row(const void *src, kr_dtype dt, int64_t n, float *dst) {
    const size_t es = kr_dtype_size(dt);
    for (int64_t c = 0; c < n; c += 8)
        _mm256_storeu_ps(dst + c, kr_avx2_load8((const char *)src + (size_t)c * es, dt));
}

KR_INLINE float kr_avx2_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

KR_INLINE float kr_avx2_hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- exp2 --------------------------------------------------------------------- */

/* 2^x for x <= 0 (softmax arguments): x = n + f, f in [-0.5, 0.5], 2^f by
 * its Taylor series to degree 7 (relative error < 1e-8 before rounding),
 * 2^n through the exponent bits. x <= -127 gives 0; NaN stays NaN (the
 * clamp keeps x as max's second operand so a NaN passes through). */
KR_INLINE __m256 kr_avx2_exp2(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x);
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(1.525273380405984e-05f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.5403530393381606e-04f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-03f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618129107628477e-03f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550410866482158e-02f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402265069591007e-01f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931471805599453e-01f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* ---- RoPE tables ---------------------------------------------------------------- */

/* cos and sin (times attention_factor) of pos * inv_freq[i] for i < half,
 * rounded to fp32 — the values the reference computes with libm in double.
 * Four angles at a time in double: Cody-Waite reduction by pi/2 (three
 * parts, exact for the quadrant counts of any realistic position), Taylor
 * polynomials on [-pi/4, pi/4] (error < 1e-15), quadrant fix-up. */
void kr_avx2_rope_table(double pos, const double *inv_freq, int64_t half, double attention_factor,
                        float *cosv, float *sinv);

/* The constants of that table, shared by every width that computes it (the
 * AVX-512 variant's eight-angle form must give the same values): pi/2 in
 * three parts (fdlibm's; k * KR_PIO2_1 is exact for k < 2^20), 2/pi, and the
 * Taylor coefficients, highest order first: sin r = r + r^3 P(r^2) with P's
 * coefficients in KR_SIN_COEF, cos r = C(r^2) with KR_COS_COEF. */
#define KR_PIO2_1 1.57079632673412561417e+00
#define KR_PIO2_2 6.07710050630396597660e-11
#define KR_PIO2_3 2.02226624879595063154e-21
#define KR_INV_PIO2 6.36619772367581382433e-01
static const double KR_SIN_COEF[7] = {
    -1.0 / 1307674368000.0, 1.0 / 6227020800.0, -1.0 / 39916800.0, 1.0 / 362880.0,
    -1.0 / 5040.0,          1.0 / 120.0,        -1.0 / 6.0};
static const double KR_COS_COEF[9] = {1.0 / 20922789888000.0,
                                      -1.0 / 87178291200.0,
                                      1.0 / 479001600.0,
                                      -1.0 / 3628800.0,
                                      1.0 / 40320.0,
                                      -1.0 / 720.0,
                                      1.0 / 24.0,
                                      -0.5,
                                      1.0};

/* The kernels (attention_avx2.c, rope_avx2.c). */
kr_status kr_cpu_avx2_attention(const kr_attention_args *a, char *err, size_t err_len);

#endif /* KR_CPU_SIMD_AVX2_H */
