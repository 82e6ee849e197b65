/*
 * test_int8_codes.c — two shortcuts the CUDA int8 append kernel takes
 * (src/backends/cuda/rope.cu, aq_kernel), checked on the CPU, where CI runs:
 *
 *   - a code is read from the low byte of v + 1.5 * 2^23 (v = y times the
 *     group step's reciprocal; the add rounds v to nearest even, as rintf);
 *   - there is no clamp to [-127, 127]: for a finite row |v| < 127.5 always,
 *     because the f16 row scale is rounded up and the u8 share by ceil.
 *
 * kr_ref_quantize_row (the reference every backend matches bit for bit)
 * quantises seeded rows built to stress the bound: a group maximum equal to
 * the row maximum, values one ulp around the maximum, row maxima on f16
 * rounding boundaries, exact half-way quotients, group magnitudes 2^-20 ..
 * 2^20 apart, subnormal and huge rows (the f16 row scale overflows), zero
 * groups and outlier channel factors. For every value of every finite row
 * the shortcut's code must equal ref's, and ref's clamp must never bind; a
 * row with a NaN or an infinity must have every code 0 (the kernel zeroes
 * such rows after packing). Head dims 64, 96, 128, 256.
 */
#include "common.h"

#include "../src/backends/ref/ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_D 256

/* The kernel's code for y * inv: low byte of the float sum's bits. The
 * product and the sum are two roundings (the kernel's __fmul_rn and
 * __fadd_rn): volatile keeps the compiler from fusing them. */
static int8_t shortcut_code(float y, float inv) {
    volatile float v = y * inv;
    volatile float sum = v + 12582912.0f; /* 1.5 * 2^23 */
    const float s = sum;
    uint32_t bits;
    memcpy(&bits, &s, sizeof bits);
    return (int8_t)(uint8_t)(bits & 0xffu);
}

/* A row of D values in one of the stressing shapes (mode), and its channel
 * factors (all 1 but for some modes' outlier channels). */
static void make_row(kt_rng *r, int mode, int64_t D, float *x, float *chan) {
    const int64_t G = D / KR_KV_INT8_GROUP;
    for (int64_t c = 0; c < D; c++) chan[c] = 1.0f;
    switch (mode) {
    case 0: { /* normal, magnitude 10^-6 .. 10^6 */
        const double m = pow(10.0, 12.0 * kt_uniform(r) - 6.0);
        for (int64_t c = 0; c < D; c++) x[c] = (float)(m * kt_normal(r));
        break;
    }
    case 1: { /* every group's maximum is the row's: every share is 255 */
        const float a = (float)pow(2.0, 40.0 * kt_uniform(r) - 20.0) * (float)(1.0 + kt_uniform(r));
        for (int64_t c = 0; c < D; c++) x[c] = (float)((2.0 * kt_uniform(r) - 1.0) * a);
        for (int64_t g = 0; g < G; g++)
            x[g * KR_KV_INT8_GROUP + kt_int(r, KR_KV_INT8_GROUP)] = kt_int(r, 2) ? a : -a;
        break;
    }
    case 2: { /* row maximum within a few ulps of 127 times an f16 value */
        const float h = kr_f16_to_f32((uint16_t)(0x0400 + kt_int(r, 0x7800))); /* normal f16 */
        float a = h * 127.0f;
        for (int64_t k = kt_int(r, 9) - 4; k != 0; k += k > 0 ? -1 : 1)
            a = nextafterf(a, k > 0 ? INFINITY : 0.0f);
        for (int64_t c = 0; c < D; c++) x[c] = (float)((2.0 * kt_uniform(r) - 1.0) * a);
        x[kt_int(r, D)] = kt_int(r, 2) ? a : -a;
        /* and values one ulp around the maximum elsewhere */
        for (int i = 0; i < 4; i++) x[kt_int(r, D)] = nextafterf(a, kt_int(r, 2) ? INFINITY : 0.0f);
        break;
    }
    case 3: { /* groups 2^-20 .. 2^20 apart */
        for (int64_t g = 0; g < G; g++) {
            const double m = pow(2.0, 40.0 * kt_uniform(r) - 20.0);
            for (int64_t c = g * KR_KV_INT8_GROUP; c < (g + 1) * KR_KV_INT8_GROUP; c++)
                x[c] = (float)(m * kt_normal(r));
        }
        break;
    }
    case 4: /* subnormal and tiny rows */
        for (int64_t c = 0; c < D; c++)
            x[c] = (float)(pow(10.0, -45.0 + 8.0 * kt_uniform(r)) * (kt_int(r, 2) ? 1 : -1));
        break;
    case 5: /* huge rows: amax / 127 overflows f16 (the row scale is infinite) */
        for (int64_t c = 0; c < D; c++)
            x[c] = (float)(pow(10.0, 4.0 + 34.0 * kt_uniform(r)) * (kt_int(r, 2) ? 1 : -1));
        break;
    case 6: { /* small integers and half-integers times a power of two: exact ties */
        const double p = pow(2.0, (double)(kt_int(r, 40) - 20));
        for (int64_t c = 0; c < D; c++) x[c] = (float)(p * 0.5 * (double)(kt_int(r, 509) - 254));
        break;
    }
    default: /* zero groups and outlier channel factors */
        for (int64_t c = 0; c < D; c++) x[c] = (float)kt_normal(r);
        for (int64_t g = 0; g < G; g++)
            if (kt_int(r, 3) == 0)
                for (int64_t c = g * KR_KV_INT8_GROUP; c < (g + 1) * KR_KV_INT8_GROUP; c++)
                    x[c] = 0.0f;
        for (int i = 0; i < 3; i++) {
            const int64_t c = kt_int(r, D);
            chan[c] = (float)(0.25 + 16.0 * kt_uniform(r));
            x[c] *= 20.0f;
        }
        break;
    }
}

static void test_shortcut_codes(void **state) {
    (void)state;
    const int64_t dims[] = {64, 96, 128, 256};
    const int rows = kt_quick() ? 2000 : 40000;
    int64_t values = 0, nonfinite_rows = 0, at127 = 0;
    for (int di = 0; di < 4; di++) {
        const int64_t D = dims[di], G = D / KR_KV_INT8_GROUP;
        kt_rng r = kt_rng_for(810000 + (uint64_t)di);
        for (int row = 0; row < rows; row++) {
            float x[MAX_D], chan[MAX_D];
            int8_t q[MAX_D];
            uint8_t meta[KR_KV_INT8_META_BYTES(MAX_D)];
            const int mode = row % 8;
            make_row(&r, mode, D, x, chan);
            const bool poison = row % 97 == 0; /* a NaN or an infinity somewhere */
            if (poison) {
                const int k = (int)kt_int(&r, 3);
                x[kt_int(&r, D)] = k == 0 ? NAN : k == 1 ? INFINITY : -INFINITY;
            }
            kr_ref_quantize_row(x, chan, D, q, meta);
            float amax = 0.0f; /* the kernel's row maximum: a NaN sticks */
            for (int64_t c = 0; c < D; c++) {
                const float a = fabsf(x[c] / chan[c]);
                amax = a != a || amax != amax ? NAN : fmaxf(amax, a);
            }
            const bool fin = isfinite(amax);
            if (poison && fin)
                fail_msg("D %lld row %d: the poisoned row is finite", (long long)D, row);
            nonfinite_rows += !fin;
            for (int64_t g = 0; g < G; g++) {
                const float s = kr_kv_int8_group_scale(meta, g);
                const float inv = s > 0.0f && isfinite(s) ? 1.0f / s : 0.0f;
                for (int64_t c = g * KR_KV_INT8_GROUP; c < (g + 1) * KR_KV_INT8_GROUP; c++) {
                    const float y = x[c] / chan[c];
                    const int8_t want = q[c];
                    if (!fin) {
                        if (want != 0)
                            fail_msg(
                                "D %lld row %d (mode %d) channel %lld: a non-finite row's code "
                                "%d, not 0",
                                (long long)D, row, mode, (long long)c, want);
                        continue;
                    }
                    volatile float v = y * inv;
                    if (fabsf(rintf(v)) > 127.0f)
                        fail_msg("D %lld row %d (mode %d) channel %lld: y %.9g times 1/step %.9g = "
                                 "%.9g rounds past 127: ref's clamp binds (seed %llu)",
                                 (long long)D, row, mode, (long long)c, (double)y, (double)inv,
                                 (double)v, (unsigned long long)kt_base_seed());
                    const int8_t got = shortcut_code(y, inv);
                    if (got != want)
                        fail_msg("D %lld row %d (mode %d) channel %lld: shortcut code %d, ref %d "
                                 "(y %.9g, 1/step %.9g)",
                                 (long long)D, row, mode, (long long)c, got, want, (double)y,
                                 (double)inv);
                    at127 += want == 127 || want == -127;
                    values++;
                }
            }
        }
    }
    printf("# int8 codes by the 1.5*2^23 add, no clamp: %lld values of finite rows equal ref's "
           "(%lld at +-127), %lld non-finite rows all 0\n",
           (long long)values, (long long)at127, (long long)nonfinite_rows);
    assert_true(values > 0 && at127 > 0 && nonfinite_rows > 0);
}

int main(void) {
    kt_base_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shortcut_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
