/*
 * decode_avx512.c — the AVX-512 (F, BW, VL) kernels the tiled driver
 * (x86_avx2/attention_avx2.c) calls when this variant is chosen, through
 * kr_cpu_decode_kernels: for decode, scores of R query rows against cache
 * rows read in place and the output update O = O * corr + P V from cache
 * rows; for the tiled (prefill, chunked) path, 6 x 32 and 6 x 64 register
 * kernels and the softmax step of a tile a row sees whole. Everything else
 * (tiles, masks, splits, conversions) is the AVX2 driver's.
 *
 * Why a variant: in decode each cached K/V element meets R = 4 query rows
 * (32 query heads over 8 kv heads), so a key and kv head cost 4 D
 * multiply-adds for q.k and as many for p.v — 128 FMA instructions per key
 * and head at head_dim 128 and 8 lanes, half at 16; in prefill the tile
 * products are the work, and 16 lanes double what each instruction does
 * (this VM's 512-bit FMA peak is twice its 256-bit one).
 *
 *   q.k: keys four at a time, R x 4 accumulators of 16 channels over
 *        head_dim, then a transposing reduction (4 accumulators -> 4 sums);
 *   p.v: 64 channels (4 vectors) per pass over the keys, R x 4 accumulators,
 *        p broadcast; a 16-channel tail pass when head_dim % 64 = 16, 32, 48.
 * int8 rows are codes: K's group scales multiply the converted codes, V's
 * multiply them likewise (channel factors are folded elsewhere).
 */
#include "../cpu.h"

#include <immintrin.h>
#include <math.h>

#define KR_INLINE static inline __attribute__((always_inline))
#define MR 6  /* at most this many rows (the driver's register block) */
#define TK 64 /* row stride of S and P (the driver's tile) */

/* 16 values of a cache row at channel d as fp32 (int8: the codes). */
KR_INLINE __m512 ld16(const char *row, int64_t d, kr_dtype dt) {
    switch (dt) {
    case KR_I8:
        return _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + d))));
    case KR_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 2 * d)));
    case KR_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + 2 * d))), 16));
    default: return _mm512_loadu_ps((const float *)(const void *)(row + 4 * d));
    }
}

/* The four lane-sums of a, b, c, e (16 lanes each), as one 4-float vector. */
KR_INLINE __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 e) {
    /* pairwise: lanes of (a, b) interleaved and added, then (c, e), then both */
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 ce = _mm512_add_ps(_mm512_unpacklo_ps(c, e), _mm512_unpackhi_ps(c, e));
    /* each 128-bit lane now holds a0+a2 b0+b2 a1+a3 b1+b3 (ab) and the same for ce */
    const __m512 x =
        _mm512_add_ps(_mm512_shuffle_ps(ab, ce, 0x44), _mm512_shuffle_ps(ab, ce, 0xee));
    /* each 128-bit lane: partial sums of a, b, c, e in that order; add the four lanes */
    const __m512 y = _mm512_add_ps(x, _mm512_shuffle_f32x4(x, x, 0x4e));
    const __m512 z = _mm512_add_ps(y, _mm512_shuffle_f32x4(y, y, 0xb1));
    return _mm512_castps512_ps128(z);
}

/* S[r][j .. j + 4) for R rows (NK = 4 keys; fewer keys repeat the last row,
 * their sums unused). g: the keys' group scales (int8). */
KR_INLINE void qk4(const float *q, int64_t D, const char *const *k, const float *const *g,
                   kr_dtype dt, float *S, int nk, const int R) {
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
        __m512 kv[4];
#pragma GCC unroll 4
        for (int x = 0; x < 4; x++) {
            kv[x] = ld16(k[x], d, dt);
            if (dt == KR_I8)
                kv[x] = _mm512_mul_ps(kv[x], _mm512_set1_ps(g[x][d / KR_KV_INT8_GROUP]));
        }
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m512 qv = _mm512_loadu_ps(q + r * D + d);
#pragma GCC unroll 4
            for (int x = 0; x < 4; x++) acc[r][x] = _mm512_fmadd_ps(qv, kv[x], acc[r][x]);
        }
    }
    /* a masked store: a loop over nk floats became a memcpy call, which
     * spilled every accumulator around it (CPU history 23) */
    const __mmask8 m = (__mmask8)((1u << nk) - 1);
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
        _mm_mask_storeu_ps(S + r * TK, m, sum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
}

KR_INLINE void qk_all(const float *q, int64_t D, const char *const *krow, const float *gk,
                      int64_t ng, int64_t n, float *S, kr_dtype dt, const int R,
                      const kr_cpu_pf *pf) {
    for (int64_t j = 0; j < n; j += 4) {
        const int nk = n - j < 4 ? (int)(n - j) : 4;
        if (pf) kr_cpu_pf_keys(pf, j, 4);
        const char *k[4];
        const float *g[4];
        for (int x = 0; x < 4; x++) {
            const int64_t jj = j + (x < nk ? x : nk - 1);
            k[x] = krow[jj];
            g[x] = gk + jj * ng;
        }
        qk4(q, D, k, g, dt, S + j, nk, R);
    }
}

/* O[r][c .. c + 16 C) = O * corr[r] + sum_j P[r][j] V[j][c ..] for R rows. */
KR_INLINE void pv_chunk(const float *P, int64_t j_lo, int64_t j_hi, const char *const *vrow,
                        const float *gv, int64_t ng, kr_dtype dt, int64_t c, float *O, int64_t D,
                        const float *corr, const int R, const int C, const kr_cpu_pf *pf) {
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        const __m512 cr = _mm512_set1_ps(corr[r]);
#pragma GCC unroll 4
        for (int x = 0; x < C; x++)
            acc[r][x] = _mm512_mul_ps(_mm512_loadu_ps(O + r * D + c + 16 * x), cr);
    }
    for (int64_t j = j_lo; j < j_hi; j++) {
        if (pf) kr_cpu_pf_keys(pf, j - j_lo, 1);
        __m512 v[4];
#pragma GCC unroll 4
        for (int x = 0; x < C; x++) {
            v[x] = ld16(vrow[j], c + 16 * x, dt);
            if (dt == KR_I8)
                v[x] = _mm512_mul_ps(v[x],
                                     _mm512_set1_ps(gv[j * ng + (c + 16 * x) / KR_KV_INT8_GROUP]));
        }
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m512 pj = _mm512_set1_ps(P[r * TK + j]);
#pragma GCC unroll 4
            for (int x = 0; x < C; x++) acc[r][x] = _mm512_fmadd_ps(pj, v[x], acc[r][x]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int x = 0; x < C; x++) _mm512_storeu_ps(O + r * D + c + 16 * x, acc[r][x]);
}

KR_INLINE void pv_all(const float *P, int64_t j_lo, int64_t j_hi, const char *const *vrow,
                      const float *gv, int64_t ng, int64_t D, float *O, const float *corr,
                      kr_dtype dt, const int R, const kr_cpu_pf *pf) {
    int64_t c = 0; /* the first pass over the keys takes pf */
    for (; c + 64 <= D; c += 64, pf = NULL)
        pv_chunk(P, j_lo, j_hi, vrow, gv, ng, dt, c, O, D, corr, R, 4, pf);
    for (; c < D; c += 16, pf = NULL)
        pv_chunk(P, j_lo, j_hi, vrow, gv, ng, dt, c, O, D, corr, R, 1, pf);
}

#define KR_AVX512_CASES(X)                                                                         \
    X(KR_F32, 4)                                                                                   \
    X(KR_F16, 4)                                                                                   \
    X(KR_BF16, 4)                                                                                  \
    X(KR_I8, 4)                                                                                    \
    X(KR_F32, 6)                                                                                   \
    X(KR_F16, 6) X(KR_BF16, 6) X(KR_I8, 6) X(KR_F32, 1) X(KR_F16, 1) X(KR_BF16, 1) X(KR_I8, 1)

static void qk_direct(const float *q, int64_t D, const char *const *krow, const float *gk,
                      int64_t ng, int64_t n, float *S, kr_dtype dt, int R, const kr_cpu_pf *pf,
                      void *qs) {
    (void)qs; /* q_state_bytes 0 */
#define X(DT, RR)                                                                                  \
    if (dt == (DT) && R == (RR)) {                                                                 \
        qk_all(q, D, krow, gk, ng, n, S, DT, RR, pf);                                              \
        return;                                                                                    \
    }
    KR_AVX512_CASES(X)
#undef X
}

static void pv_direct(const float *P, int64_t j_lo, int64_t j_hi, const char *const *vrow,
                      const float *gv, int64_t ng, int64_t D, float *O, const float *corr,
                      kr_dtype dt, int R, const kr_cpu_pf *pf) {
#define X(DT, RR)                                                                                  \
    if (dt == (DT) && R == (RR)) {                                                                 \
        pv_all(P, j_lo, j_hi, vrow, gv, ng, D, O, corr, DT, RR, pf);                               \
        return;                                                                                    \
    }
    KR_AVX512_CASES(X)
#undef X
}

/* C[r][0 .. 16 NV) = (scale ? C[r] * scale[r] : 0) + sum_k A[r][k] B[k][0 .. 16 NV)
 * for the driver's 6 rows: the driver's gemm_rx16 at 16 lanes, NV vectors a
 * row (6 NV accumulators), A broadcast, NV B vectors per k. */
KR_INLINE void gemm6xv(const float *A, int64_t lda, const float *B, int64_t ldb, int64_t K,
                       float *C, int64_t ldc, const float *scale, const int NV) {
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        const __m512 sc = _mm512_set1_ps(scale ? scale[r] : 0.0f);
#pragma GCC unroll 4
        for (int x = 0; x < NV; x++)
            acc[r][x] = scale ? _mm512_mul_ps(_mm512_loadu_ps(C + r * ldc + 16 * x), sc)
                              : _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K; k++) {
        __m512 b[4];
#pragma GCC unroll 4
        for (int x = 0; x < NV; x++) b[x] = _mm512_loadu_ps(B + k * ldb + 16 * x);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            const __m512 a = _mm512_set1_ps(A[r * lda + k]);
#pragma GCC unroll 4
            for (int x = 0; x < NV; x++) acc[r][x] = _mm512_fmadd_ps(a, b[x], acc[r][x]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int x = 0; x < NV; x++) _mm512_storeu_ps(C + r * ldc + 16 * x, acc[r][x]);
}

/* kr_cpu_decode_kernels.gemm6x32 and gemm6x64. */
static void gemm6x32(const float *A, int64_t lda, const float *B, int64_t ldb, int64_t K, float *C,
                     int64_t ldc, const float *scale) {
    gemm6xv(A, lda, B, ldb, K, C, ldc, scale, 2);
}

static void gemm6x64(const float *A, int64_t lda, const float *B, int64_t ldb, int64_t K, float *C,
                     int64_t ldc, const float *scale) {
    gemm6xv(A, lda, B, ldb, K, C, ldc, scale, 4);
}

/* 2^x, 16 lanes: kr_avx2_exp2's method and coefficients (x <= -127 gives
 * 0, NaN stays NaN). */
KR_INLINE __m512 exp2_16(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-127.0f), x);
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.525273380405984e-05f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381606e-04f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618129107628477e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550410866482158e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402265069591007e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471805599453e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    const __m512i e =
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* kr_cpu_decode_kernels.softmax: the driver's softmax_row for a tile the row
 * sees whole, 16 lanes (the last vector masked to n). */
static float softmax_full(float *s, int64_t n, float *m, float *l) {
    const int nv = (int)((n + 15) / 16);
    const __mmask16 tail = (__mmask16)(n % 16 ? (1u << (n % 16)) - 1 : 0xffffu);
    __m512 x[TK / 16];
    __m512 mx = _mm512_set1_ps(-INFINITY);
    __mmask16 bad = 0;
    for (int v = 0; v < nv; v++) {
        x[v] = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), v == nv - 1 ? tail : 0xffff,
                                    s + 16 * v);
        mx = _mm512_max_ps(mx, x[v]);
        bad |= _mm512_cmp_ps_mask(x[v], x[v], _CMP_UNORD_Q);
    }
    const float m_tile = bad ? NAN : _mm512_reduce_max_ps(mx);
    const float m_old = *m;
    const float m_new = (m_tile != m_tile || m_tile > m_old) ? m_tile : m_old;
    if (m_new == -INFINITY) { /* nothing visible yet */
        for (int64_t j = 0; j < n; j++) s[j] = 0.0f;
        return 1.0f;
    }
    const __m512 mv = _mm512_set1_ps(m_new);
    __m512 sum = _mm512_setzero_ps();
    for (int v = 0; v < nv; v++) {
        const __m512 e = exp2_16(_mm512_sub_ps(x[v], mv)); /* masked lanes: 2^-inf = 0 */
        _mm512_mask_storeu_ps(s + 16 * v, v == nv - 1 ? tail : 0xffff, e);
        sum = _mm512_add_ps(sum, e);
    }
    const float corr = m_old == -INFINITY ? 0.0f : exp2f(m_old - m_new);
    *l = *l * corr + _mm512_reduce_add_ps(sum);
    *m = m_new;
    return corr;
}

/* kr_cpu_decode_kernels.dequant_row: 16 codes a vector, the group scales
 * by F16C (the same two roundings as kr_kv_int8_group_scale). */
static void dequant_row(const int8_t *q, const uint8_t *meta, const float *chan, int64_t D,
                        float *out) {
    const float rs = _cvtsh_ss((unsigned short)(meta[0] | (meta[1] << 8)));
    for (int64_t g = 0; g < D / KR_KV_INT8_GROUP; g++) {
        const __m512 sc = _mm512_set1_ps(rs * ((float)meta[2 + g] * (1.0f / 255.0f)));
        for (int64_t c = g * KR_KV_INT8_GROUP; c < (g + 1) * KR_KV_INT8_GROUP; c += 16) {
            const __m512 x =
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + c))));
            _mm512_storeu_ps(out + c,
                             _mm512_mul_ps(_mm512_mul_ps(x, sc), _mm512_loadu_ps(chan + c)));
        }
    }
}

static const kr_cpu_decode_kernels avx512_decode = {qk_direct,    pv_direct,   gemm6x32, gemm6x64,
                                                    softmax_full, dequant_row, 0};

/* With AVX512_VNNI: int8 rows by integer dot products where decode_vnni.c
 * takes the case, the float kernels above otherwise. */
static void qk_int8_dot(const float *q, int64_t D, const char *const *krow, const float *gk,
                        int64_t ng, int64_t n, float *S, kr_dtype dt, int R, const kr_cpu_pf *pf,
                        void *qs) {
    if (dt == KR_I8 && kr_cpu_vnni_qk(q, D, krow, gk, ng, n, S, R, pf, qs)) return;
    qk_direct(q, D, krow, gk, ng, n, S, dt, R, pf, NULL);
}

static void pv_int8_dot(const float *P, int64_t j_lo, int64_t j_hi, const char *const *vrow,
                        const float *gv, int64_t ng, int64_t D, float *O, const float *corr,
                        kr_dtype dt, int R, const kr_cpu_pf *pf) {
    if (dt == KR_I8 && kr_cpu_vnni_pv(P, j_lo, j_hi, vrow, gv, ng, D, O, corr, R, pf)) return;
    pv_direct(P, j_lo, j_hi, vrow, gv, ng, D, O, corr, dt, R, pf);
}

static const kr_cpu_decode_kernels avx512_vnni_decode = {qk_int8_dot,
                                                         pv_int8_dot,
                                                         gemm6x32,
                                                         gemm6x64,
                                                         softmax_full,
                                                         dequant_row,
                                                         KR_CPU_VNNI_Q_STATE_BYTES};

static const kr_cpu_decode_kernels *decode_kernels = &avx512_decode;

static kr_status attention(const kr_attention_args *a, char *err, size_t err_len) {
    return kr_cpu_tiled_attention(a, decode_kernels, err, err_len);
}

static kr_status kv_append(const kr_kv_append_args *a, char *err, size_t err_len) {
    return kr_cpu_kv_append(a, kr_cpu_avx512_append_kernels(), err, err_len);
}

static kr_cpu_kernels avx512_kernels;

const kr_cpu_kernels *kr_cpu_avx512_kernels(bool int8_dot) {
    const kr_cpu_kernels *base = kr_cpu_avx2_kernels();
    if (!base) return NULL;
    avx512_kernels = *base;
    decode_kernels = int8_dot ? &avx512_vnni_decode : &avx512_decode;
    avx512_kernels.isa =
        int8_dot ? "avx512f+avx512bw+avx512vl (decode, tile products, softmax, int8 append), "
                   "avx512vnni (int8 decode dot products) / avx2+fma+f16c"
                 : "avx512f+avx512bw+avx512vl (decode, tile products, softmax, int8 append) / "
                   "avx2+fma+f16c";
    avx512_kernels.attention = attention;
    avx512_kernels.kv_append = kv_append;
    return &avx512_kernels;
}
