/*
 * decode_vnni.c — integer dot products (AVX-512 VNNI, vpdpbusd) for decode
 * over the int8 cache: the q.k and p.v kernels of kr_cpu_decode_kernels for
 * int8 rows whose head_dim is a multiple of 64, on CPUs with AVX512_VNNI.
 *
 * Why: with fp32 arithmetic an int8 row costs as many FMAs as an fp16 row
 * plus a widen, a convert and a scale per 16 codes, so the int8 decode was
 * compute-bound at about the fp16 one's speed (CPU history 11, 22). One
 * vpdpbusd multiplies 64 byte pairs and sums them four at a time into 16
 * int32 lanes: a quarter of the instructions of fp32 FMAs on the same codes.
 * Both operands must be 8-bit, so the float side is quantised per call,
 * each value into two 8-bit digits (one digit each gave 6.6e-3 normwise
 * against ref, two give 3e-5: CPU history 22):
 *
 *   q.k: each query row, per 32-channel group g, with its own step
 *        sq_g = amax_g / 127: q ~ sq_g (hi + lo / 254);
 *            S[r][j] = sum_g sq_g(r) sk_g(j) sum_{c in g} (hi_c + lo_c / 254) k_c
 *   p.v: P times V's group scales, per row and group over the call's keys,
 *        with step ps_g = max_j (p_j sv_g(j)) / 255: x ~ ps_g (hi + lo / 255);
 *            O[r][c] += ps_g(r) sum_j (hi + lo / 255)_g(r, j) v_j[c]
 *
 * tests/test_cpu_backend.c holds the result to 1e-4 normwise of ref (the
 * float kernels on the same codes) and checks that the integer kernels ran;
 * KRSERVE_CPU_INT8_DOT=0 keeps the float kernels (bit-for-bit the pre-VNNI
 * results). A call whose inputs are not finite (a NaN or inf query, score or
 * V scale) returns false and the caller runs the float kernel, which gives
 * ref's NaN.
 *
 * Layouts. q.k keeps the keys in the lanes: 16 keys' rows (64 channels at
 * a time) are transposed as 16 x 16 dwords, so register c4 holds channels
 * [4 c4, 4 c4 + 4) of all 16 keys and a query dword is broadcast against it:
 *
 *     rows (key x: dwords d0 .. d15)      transposed (dword c4: keys 0 .. 15)
 *     k0:  d0  d1  ... d15                T0:  k0.d0  k1.d0  ... k15.d0
 *     k1:  d0  d1  ... d15       ->       T1:  k0.d1  k1.d1  ... k15.d1
 *     ...                                 ...
 *
 * vpdpbusd wants one unsigned operand: K's codes are offset to u8 (x ^ 0x80
 * = x + 128) and the offset's share, -128 sum_{c in g} qi_c, starts each
 * group's accumulator. p.v keeps channels in the lanes and four keys in
 * each dword: four V rows are byte- then word-interleaved (unpack), which
 * leaves 128-bit lane L of register t holding channels 16 L + 4 t .. + 3;
 * the sums are put back in channel order (a 4 x 4 transpose of 128-bit
 * lanes) once a call. P's codes are the u8 operand, V's the signed one.
 */
#include "../cpu.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define KR_INLINE static inline __attribute__((always_inline))
#define TK 64  /* row stride of S and P (the driver's tile) */
#define MAXR 6 /* most rows a call takes */
#define MAXG (KR_CPU_MAX_HEAD_DIM / KR_KV_INT8_GROUP)
#define G KR_KV_INT8_GROUP

_Static_assert(KR_KV_INT8_GROUP == 32, "the kernels hold a group in 8 dword lanes");
_Static_assert(TK % 16 == 0, "q.k takes keys 16 at a time");
_Static_assert(TK == 64, "quantise_p packs a tile's 64 codes of a row and group at once");

/* ---- q.k ------------------------------------------------------------------------- */

/* A query row as two int8 digits a group: q ~ sq (hi + lo / 254), hi the
 * nearest code of q / sq, lo the nearest of its remainder (|r| <= 1/2)
 * times 254, so the row's error is at most sq / 508 a value. */
typedef struct q8_row {
    int8_t hi[KR_CPU_MAX_HEAD_DIM], lo[KR_CPU_MAX_HEAD_DIM];
    float sq[MAXG];
    int32_t off_hi[MAXG], off_lo[MAXG]; /* -128 times the sum of the group's digits */
} q8_row;

/* A head's q for a unit (kr_cpu_decode_kernels.qk's qs): the rows'
 * digits, made by the unit's first call and reused by the others. */
typedef struct q8_state {
    int32_t state; /* 0: not yet quantised; 1: qr holds the rows; 2: a value is not finite */
    q8_row qr[MAXR];
} q8_state;
_Static_assert(sizeof(q8_state) <= KR_CPU_VNNI_Q_STATE_BYTES && KR_CPU_VNNI_Q_STATE_BYTES % 64 == 0,
               "KR_CPU_VNNI_Q_STATE_BYTES holds a q8_state in whole cache lines");

/* The two digits of 16 values x (already divided by the step) into hi and
 * lo; each digit's sum is added to *shi / *slo (for the offset shares). */
KR_INLINE void digits16(__m512 x, int8_t *hi, int8_t *lo, __m512i *shi, __m512i *slo) {
    const __m512i h = _mm512_cvtps_epi32(x); /* nearest; |x| <= 127 */
    const __m512i l = _mm512_cvtps_epi32(
        _mm512_mul_ps(_mm512_sub_ps(x, _mm512_cvtepi32_ps(h)), _mm512_set1_ps(254.0f)));
    _mm_storeu_si128((__m128i *)(void *)hi, _mm512_cvtsepi32_epi8(h));
    _mm_storeu_si128((__m128i *)(void *)lo, _mm512_cvtsepi32_epi8(l));
    *shi = _mm512_add_epi32(*shi, h);
    *slo = _mm512_add_epi32(*slo, l);
}

/* Quantises row q (D floats) into *o; false when a value is not finite. */
static bool quantise_q(const float *q, int64_t D, q8_row *o) {
    for (int64_t g = 0; g < D / G; g++) {
        const __m512 a = _mm512_loadu_ps(q + g * G), b = _mm512_loadu_ps(q + g * G + 16);
        const __m512 big = _mm512_set1_ps(3.0e38f); /* max_ps drops NaNs: compare first */
        if (_mm512_cmp_ps_mask(_mm512_abs_ps(a), big, _CMP_NLE_UQ) |
            _mm512_cmp_ps_mask(_mm512_abs_ps(b), big, _CMP_NLE_UQ))
            return false; /* NaN, inf or huge */
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        const __m512 iv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m512i shi = _mm512_setzero_si512(), slo = _mm512_setzero_si512();
        digits16(_mm512_mul_ps(a, iv), o->hi + g * G, o->lo + g * G, &shi, &slo);
        digits16(_mm512_mul_ps(b, iv), o->hi + g * G + 16, o->lo + g * G + 16, &shi, &slo);
        o->sq[g] = amax * (1.0f / 127.0f);
        o->off_hi[g] = -128 * _mm512_reduce_add_epi32(shi);
        o->off_lo[g] = -128 * _mm512_reduce_add_epi32(slo);
    }
    return true;
}

/* In place: t[c] lane x = the input's t[x] lane c (16 x 16 dwords). */
KR_INLINE void transpose16(__m512i t[16]) {
    __m512i a[16], b[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_epi32(t[2 * i], t[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(t[2 * i], t[2 * i + 1]);
    }
    /* b[4 i + s], 128-bit lane L: dword 4 L + s of keys 4 i .. 4 i + 3 */
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
#pragma GCC unroll 4
    for (int s = 0; s < 4; s++) {
        const __m512i c1 = _mm512_shuffle_i32x4(b[s], b[4 + s], 0x44); /* b_s L0 L1, b_4+s L0 L1 */
        const __m512i c2 = _mm512_shuffle_i32x4(b[s], b[4 + s], 0xee); /* L2 L3 */
        const __m512i e1 = _mm512_shuffle_i32x4(b[8 + s], b[12 + s], 0x44);
        const __m512i e2 = _mm512_shuffle_i32x4(b[8 + s], b[12 + s], 0xee);
        t[s] = _mm512_shuffle_i32x4(c1, e1, 0x88); /* lane 0 of each key quad */
        t[4 + s] = _mm512_shuffle_i32x4(c1, e1, 0xdd);
        t[8 + s] = _mm512_shuffle_i32x4(c2, e2, 0x88);
        t[12 + s] = _mm512_shuffle_i32x4(c2, e2, 0xdd);
    }
}

/* S[r][j0 .. j0 + nk) for R rows against 16 keys (fewer: the last row
 * repeated, its lanes not stored). */
KR_INLINE void qk16(const q8_row *qr, int64_t D, const char *const *krow, const float *gk,
                    int64_t ng, int64_t j0, int nk, float *S, const int R, const kr_cpu_pf *pf) {
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_min_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(nk - 1)),
        _mm512_set1_epi32((int)ng));
    __m512 s[MAXR];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) s[r] = _mm512_setzero_ps();
    for (int64_t h = 0; h < D / 64; h++) {
        /* the prefetch share of the 16 keys, spread over the halves (a
         * 16-key burst stalls the loads: CPU history 20) */
        if (pf) {
            const int64_t nh = D / 64, a = j0 + 16 * h / nh, e = j0 + 16 * (h + 1) / nh;
            kr_cpu_pf_keys(pf, a, (int)(e - a));
        }
        __m512i t[16];
#pragma GCC unroll 16
        for (int x = 0; x < 16; x++)
            t[x] = _mm512_xor_si512(
                _mm512_loadu_si512((const void *)(krow[j0 + (x < nk ? x : nk - 1)] + 64 * h)),
                bias);
        transpose16(t);
#pragma GCC unroll 2
        for (int gg = 0; gg < 2; gg++) {
            const int64_t g = 2 * h + gg;
            /* the 16 keys' scales of group g */
            const __m512 sk = _mm512_i32gather_ps(idx, gk + j0 * ng + g, 4);
#pragma GCC unroll 6
            for (int r = 0; r < R; r++) {
                __m512i ah = _mm512_set1_epi32(qr[r].off_hi[g]);
                __m512i al = _mm512_set1_epi32(qr[r].off_lo[g]);
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++) {
                    int32_t dh, dl; /* channels 4 i .. 4 i + 3 of the group */
                    memcpy(&dh, qr[r].hi + g * G + 4 * i, 4);
                    memcpy(&dl, qr[r].lo + g * G + 4 * i, 4);
                    ah = _mm512_dpbusd_epi32(ah, t[8 * gg + i], _mm512_set1_epi32(dh));
                    al = _mm512_dpbusd_epi32(al, t[8 * gg + i], _mm512_set1_epi32(dl));
                }
                const __m512 sc = _mm512_mul_ps(sk, _mm512_set1_ps(qr[r].sq[g]));
                const __m512 v = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(al), _mm512_set1_ps(1.0f / 254.0f), _mm512_cvtepi32_ps(ah));
                s[r] = _mm512_fmadd_ps(v, sc, s[r]);
            }
        }
    }
    const __mmask16 m = (__mmask16)(nk >= 16 ? 0xffffu : (1u << nk) - 1);
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(S + r * TK + j0, m, s[r]);
}

KR_INLINE bool qk_rows(const float *q, int64_t D, const char *const *krow, const float *gk,
                       int64_t ng, int64_t n, float *S, const int R, const kr_cpu_pf *pf,
                       q8_state *st) {
    q8_row local[MAXR];
    q8_row *qr = st ? st->qr : local;
    if (!st || st->state == 0) { /* per call, or the unit's first call */
        if (st) st->state = 2;
        for (int r = 0; r < R; r++)
            if (!quantise_q(q + r * D, D, &qr[r])) return false;
        if (st) st->state = 1;
    }
    if (st && st->state != 1) return false; /* not finite: the float kernels take it */
    for (int64_t j = 0; j < n; j += 16)
        qk16(qr, D, krow, gk, ng, j, n - j < 16 ? (int)(n - j) : 16, S, R, pf);
    return true;
}

bool kr_cpu_vnni_qk(const float *q, int64_t D, const char *const *krow, const float *gk, int64_t ng,
                    int64_t n, float *S, int R, const kr_cpu_pf *pf, void *qs) {
    if (D % 64 || D > KR_CPU_MAX_HEAD_DIM || ng != D / G || n > TK || n < 1) return false;
    q8_state *st = qs;
    switch (R) {
    case 1: return qk_rows(q, D, krow, gk, ng, n, S, 1, pf, st);
    case 4: return qk_rows(q, D, krow, gk, ng, n, S, 4, pf, st);
    case 6: return qk_rows(q, D, krow, gk, ng, n, S, 6, pf, st);
    default: return false;
    }
}

/* ---- p.v ------------------------------------------------------------------------- */

/* P's codes of a call: pq[r][g][j] for keys j of [j_lo, j_hi) from 0, padded
 * to a multiple of 16 with zeros; ps[r][g] their scales. */
typedef struct p8 {
    uint8_t pq[2][MAXR][MAXG][TK]; /* digits: x / ps ~ pq[0] + pq[1] / 255 */
    float ps[MAXR][MAXG];
} p8;

/* Quantises R rows of P (at P + r * TK + j_lo, n keys) times V's group
 * scales; false when a value is not finite. The step of row r and group g
 * is bounded from maxima taken once, ps = max_j p_j * max_j sv_g(j) / 255,
 * instead of the maximum of the products themselves: the keys' scaled V
 * scales w_g(j) = sv_g(j) / max sv_g are shared by the rows, and each
 * (row, group) costs one product a key before its digits (y = p_j 255 /
 * max p times w_g(j) <= 255). Where the two maxima fall on different keys
 * the digits use less of their range, still two of them: ~1.5e-5 of the
 * bound a value (the per-product maxima and 16-key digit stores took a
 * sixth of a single-thread decode: CPU history 27). */
KR_INLINE bool quantise_p(const float *P, int64_t j_lo, int64_t n, const float *gv, int64_t ng,
                          p8 *o, const int R) {
    const __m512i idx =
        _mm512_mullo_epi32(/* 16 keys' scales of one group */
                           _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32((int)ng));
    const __m512 big = _mm512_set1_ps(3.0e38f); /* max_ps drops NaNs: compare first */
    /* the packs leave 128-bit lane L of each source in the result's dword
     * 4 L' + ...: this puts the 64 keys back in order */
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512 w[MAXG][TK / 16];
    float svmax[MAXG];
    for (int64_t g = 0; g < ng; g++) {
        __m512 mx = _mm512_setzero_ps();
        __mmask16 bad = 0;
        for (int v = 0; v < TK / 16; v++) {
            const int64_t left = n - 16 * v;
            const __mmask16 m = (__mmask16)(left >= 16 ? 0xffffu : left > 0 ? (1u << left) - 1 : 0);
            w[g][v] = m ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx,
                                                   gv + (j_lo + 16 * v) * ng + g, 4)
                        : _mm512_setzero_ps();
            bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(w[g][v]), big, _CMP_NLE_UQ);
            mx = _mm512_max_ps(mx, w[g][v]);
        }
        if (bad) return false; /* NaN, inf or huge */
        svmax[g] = _mm512_reduce_max_ps(mx);
        const __m512 iv = _mm512_set1_ps(svmax[g] > 0.0f ? 1.0f / svmax[g] : 0.0f);
        for (int v = 0; v < TK / 16; v++)
            w[g][v] = _mm512_min_ps(_mm512_mul_ps(w[g][v], iv), _mm512_set1_ps(1.0f));
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        __m512 p[TK / 16], mx = _mm512_setzero_ps();
        __mmask16 bad = 0;
        for (int v = 0; v < TK / 16; v++) {
            const int64_t left = n - 16 * v;
            const __mmask16 m = (__mmask16)(left >= 16 ? 0xffffu : left > 0 ? (1u << left) - 1 : 0);
            p[v] = _mm512_maskz_loadu_ps(m, P + r * TK + j_lo + 16 * v);
            bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(p[v]), big, _CMP_NLE_UQ);
            mx = _mm512_max_ps(mx, p[v]);
        }
        if (bad) return false;
        const float pmax = _mm512_reduce_max_ps(mx);
        const __m512 iv = _mm512_set1_ps(pmax > 0.0f ? 255.0f / pmax : 0.0f);
        for (int v = 0; v < TK / 16; v++) p[v] = _mm512_mul_ps(p[v], iv);
        for (int64_t g = 0; g < ng; g++) {
            __m512i hi[TK / 16], lo[TK / 16];
            for (int v = 0; v < TK / 16; v++) {
                /* hi = floor(y) in [0, 255], lo = nearest of (y - hi) 255 in [0, 255] */
                const __m512 y = _mm512_mul_ps(p[v], w[g][v]);
                const __m512 h = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                hi[v] = _mm512_cvtps_epi32(h);
                lo[v] =
                    _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(y, h), _mm512_set1_ps(255.0f)));
            }
            const __m512i h8 = _mm512_packus_epi16(_mm512_packus_epi32(hi[0], hi[1]),
                                                   _mm512_packus_epi32(hi[2], hi[3]));
            const __m512i l8 = _mm512_packus_epi16(_mm512_packus_epi32(lo[0], lo[1]),
                                                   _mm512_packus_epi32(lo[2], lo[3]));
            _mm512_storeu_si512((void *)&o->pq[0][r][g][0], _mm512_permutexvar_epi32(order, h8));
            _mm512_storeu_si512((void *)&o->pq[1][r][g][0], _mm512_permutexvar_epi32(order, l8));
            o->ps[r][g] = pmax * svmax[g] * (1.0f / 255.0f);
        }
    }
    return true;
}

/* O[r][64 h .. 64 h + 64) = O * corr[r] + P V over the call's keys, R rows,
 * with P's digit dg (corr NULL: no rescale; digit 1 weighs 1 / 255): four
 * keys a step, 4 R int32 accumulators. */
KR_INLINE void pv_half(const p8 *pq, int dg, int64_t n, const char *const *vrow, int64_t j_lo,
                       int64_t h, float *O, int64_t D, const float *corr, const int R,
                       const kr_cpu_pf *pf) {
    __m512i acc[MAXR][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
        acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_si512();
    for (int64_t j = 0; j < n; j += 4) {
        if (pf) kr_cpu_pf_keys(pf, j, 4);
        __m512i x[4];
#pragma GCC unroll 4
        for (int y = 0; y < 4; y++) /* keys past n: any row (their codes in P are 0) */
            x[y] = _mm512_loadu_si512(
                (const void *)(vrow[j_lo + (j + y < n ? j + y : n - 1)] + 64 * h));
        const __m512i lo01 = _mm512_unpacklo_epi8(x[0], x[1]),
                      hi01 = _mm512_unpackhi_epi8(x[0], x[1]);
        const __m512i lo23 = _mm512_unpacklo_epi8(x[2], x[3]),
                      hi23 = _mm512_unpackhi_epi8(x[2], x[3]);
        __m512i v[4];
        v[0] = _mm512_unpacklo_epi16(lo01, lo23); /* lane L: channels 16 L + 0 .. 3 */
        v[1] = _mm512_unpackhi_epi16(lo01, lo23); /* 16 L + 4 .. 7 */
        v[2] = _mm512_unpacklo_epi16(hi01, hi23); /* 16 L + 8 .. 11 */
        v[3] = _mm512_unpackhi_epi16(hi01, hi23); /* 16 L + 12 .. 15 */
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            /* the four keys' codes of groups 2h (lanes 0-7) and 2h + 1 (8-15) */
            int32_t d0, d1;
            memcpy(&d0, &pq->pq[dg][r][2 * h][j], 4);
            memcpy(&d1, &pq->pq[dg][r][2 * h + 1][j], 4);
            const __m512i pw = _mm512_mask_set1_epi32(_mm512_set1_epi32(d0), 0xff00, d1);
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], pw, v[t]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        /* channel order: chunk m = lane m of acc[r][0 .. 3] */
        const __m512i x1 = _mm512_shuffle_i32x4(acc[r][0], acc[r][1], 0x44);
        const __m512i x2 = _mm512_shuffle_i32x4(acc[r][0], acc[r][1], 0xee);
        const __m512i y1 = _mm512_shuffle_i32x4(acc[r][2], acc[r][3], 0x44);
        const __m512i y2 = _mm512_shuffle_i32x4(acc[r][2], acc[r][3], 0xee);
        const __m512i c[4] = {
            _mm512_shuffle_i32x4(x1, y1, 0x88), _mm512_shuffle_i32x4(x1, y1, 0xdd),
            _mm512_shuffle_i32x4(x2, y2, 0x88), _mm512_shuffle_i32x4(x2, y2, 0xdd)};
        float *o = O + r * D + 64 * h;
        const float w = dg ? 1.0f / 255.0f : 1.0f;
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++) {
            const __m512 prev =
                corr ? _mm512_mul_ps(_mm512_loadu_ps(o + 16 * m), _mm512_set1_ps(corr[r]))
                     : _mm512_loadu_ps(o + 16 * m);
            _mm512_storeu_ps(o + 16 * m,
                             _mm512_fmadd_ps(_mm512_cvtepi32_ps(c[m]),
                                             _mm512_set1_ps(pq->ps[r][2 * h + m / 2] * w), prev));
        }
    }
}

KR_INLINE bool pv_rows(const float *P, int64_t j_lo, int64_t j_hi, const char *const *vrow,
                       const float *gv, int64_t ng, int64_t D, float *O, const float *corr,
                       const int R, const kr_cpu_pf *pf) {
    p8 pq;
    memset(pq.ps, 0, sizeof pq.ps);
    const int64_t n = j_hi - j_lo;
    if (!quantise_p(P, j_lo, n, gv, ng, &pq, R)) return false;
    for (int64_t h = 0; h < D / 64; h++, pf = NULL) { /* the first pass over the keys takes pf */
        pv_half(&pq, 0, n, vrow, j_lo, h, O, D, corr, R, pf);
        pv_half(&pq, 1, n, vrow, j_lo, h, O, D, NULL, R, NULL);
    }
    return true;
}

bool kr_cpu_vnni_pv(const float *P, int64_t j_lo, int64_t j_hi, const char *const *vrow,
                    const float *gv, int64_t ng, int64_t D, float *O, const float *corr, int R,
                    const kr_cpu_pf *pf) {
    if (D % 64 || D > KR_CPU_MAX_HEAD_DIM || ng != D / G || j_hi - j_lo > TK || j_hi <= j_lo)
        return false;
    switch (R) {
    case 1: return pv_rows(P, j_lo, j_hi, vrow, gv, ng, D, O, corr, 1, pf);
    case 4: return pv_rows(P, j_lo, j_hi, vrow, gv, ng, D, O, corr, 4, pf);
    case 6: return pv_rows(P, j_lo, j_hi, vrow, gv, ng, D, O, corr, 6, pf);
    default: return false;
    }
}
