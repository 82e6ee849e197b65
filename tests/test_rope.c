/*
 * test_rope.c — kr_rope against the float64 oracle for every scaling
 * variant, both pair layouts, partial rotary, BSHD and BHSD views, positions
 * up to 131072 (f32 within 1e-6 normwise; f16 1e-3, bf16 8e-3), and
 * kr_rope_frequencies against values Hugging Face transformers computed
 * (hf_rope_values.h): each inverse frequency within 1e-6 relative, the
 * attention factor within 1e-9, and cos/sin at positions up to 131071.
 */
#include "common.h"
#include "hf_rope_values.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kr_rope_params params_for(const char *name) {
    kr_rope_params p = kr_rope_params_default();
    if (!strcmp(name, "default")) {
    } else if (!strcmp(name, "partial")) {
        p.rotary_dim = 64;
    } else if (!strcmp(name, "linear")) {
        p.scaling = KR_ROPE_SCALING_LINEAR;
        p.factor = 4.0;
    } else if (!strcmp(name, "llama3")) {
        p.theta = 500000.0;
        p.scaling = KR_ROPE_SCALING_LLAMA3;
        p.factor = 8.0;
        p.low_freq_factor = 1.0;
        p.high_freq_factor = 4.0;
        p.original_max_position_embeddings = 8192;
    } else if (!strcmp(name, "yarn")) {
        p.theta = 1000000.0;
        p.scaling = KR_ROPE_SCALING_YARN;
        p.factor = 4.0;
        p.original_max_position_embeddings = 32768;
    } else if (!strcmp(name, "yarn_mscale")) {
        p.scaling = KR_ROPE_SCALING_YARN;
        p.factor = 40.0;
        p.original_max_position_embeddings = 4096;
        p.beta_fast = 32.0;
        p.beta_slow = 1.0;
        p.mscale = 0.707;
        p.mscale_all_dim = 0.707;
    } else {
        fail_msg("unknown case %s", name);
    }
    return p;
}

static void test_frequencies_match_hf(void **state) {
    kr_context *ctx = *state;
    const size_t n_cases = sizeof hf_rope_cases / sizeof hf_rope_cases[0];
    for (size_t c = 0; c < n_cases; c++) {
        const hf_rope_case *hc = &hf_rope_cases[c];
        kr_rope_params p = params_for(hc->name);
        assert_true(p.theta == hc->theta);
        double inv[64], af = 0.0;
        kr_status s = kr_rope_frequencies(ctx, &p, hc->head_dim, inv, &af);
        if (s) fail_msg("%s: %s", hc->name, kr_context_last_error(ctx));
        double worst = 0.0;
        for (int i = 0; i < hc->n_freq; i++) {
            const double rel = fabs(inv[i] - hc->inv_freq[i]) / hc->inv_freq[i];
            if (rel > worst) worst = rel;
            if (!(rel <= 1e-6))
                fail_msg("%s: inv_freq[%d] = %.10g, transformers %.10g (rel %.3g)", hc->name, i,
                         inv[i], hc->inv_freq[i], rel);
        }
        if (!(fabs(af - hc->attention_factor) <= 1e-9 * hc->attention_factor))
            fail_msg("%s: attention factor %.12g, transformers %.12g", hc->name, af,
                     hc->attention_factor);

        /* cos/sin through kr_rope itself: rotate (1, 0) in pair i at p. The
         * allowance for each angle is transformers' own fp32 rounding of
         * inv_freq (2^-24 relative) times the position. */
        double worst_ang = 0.0, worst_hf32 = 0.0;
        for (int a = 0; a < 18; a++) {
            const hf_angle *ha = &hc->angles[a];
            const int64_t D = hc->head_dim, rd = p.rotary_dim ? p.rotary_dim : D;
            float *x = calloc((size_t)D, sizeof(float));
            assert_non_null(x);
            const int64_t ix = ha->pair, iy = ha->pair + rd / 2; /* half-split */
            x[ix] = 1.0f;
            kr_tensor t = kr_tensor_bshd(x, KR_F32, 1, 1, 1, D);
            int64_t pos = ha->pos;
            assert_int_equal(kr_rope(ctx, &t, &pos, &p), KR_OK);
            const double allow = 2e-6 + (double)ha->pos * hc->inv_freq[ha->pair] * 0x1.0p-23;
            const double ec = fabs(x[ix] - ha->cos), es = fabs(x[iy] - ha->sin);
            if (!(ec <= allow && es <= allow))
                fail_msg("%s: pos %lld pair %d: cos %.9g sin %.9g, transformers %.9g %.9g "
                         "(allowance %.3g)",
                         hc->name, ha->pos, ha->pair, x[ix], x[iy], ha->cos, ha->sin, allow);
            if (ec > worst_ang) worst_ang = ec;
            if (fabs(ha->cos_hf_fp32 - ha->cos) > worst_hf32)
                worst_hf32 = fabs(ha->cos_hf_fp32 - ha->cos);
            free(x);
        }
        printf("# %-12s inv_freq worst rel %.2g; cos/sin worst abs %.2g (transformers' fp32 "
               "model cos differs by up to %.2g)\n",
               hc->name, worst, worst_ang, worst_hf32);
    }
}

typedef struct rcase {
    const char *variant;
    kr_rope_layout layout;
    kr_dtype dt;
    int bhsd;
    int64_t B, S, H, D, rotary_dim;
    uint64_t id;
} rcase;

static double run_rope(kr_context *ctx, const rcase *c) {
    kt_rng r = kt_rng_for(c->id);
    kr_rope_params p = params_for(c->variant);
    p.layout = c->layout;
    p.rotary_dim = c->rotary_dim;
    const int64_t n = c->B * c->S * c->H * c->D;
    kt_buf xb = kt_buf_new(c->dt, n);
    double *want = malloc(sizeof(double) * (size_t)n), *got = malloc(sizeof(double) * (size_t)n);
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)(c->B * c->S));
    assert_true(want && got && pos);
    kr_tensor x = c->bhsd ? kr_tensor_bhsd(xb.data, c->dt, c->B, c->S, c->H, c->D)
                          : kr_tensor_bshd(xb.data, c->dt, c->B, c->S, c->H, c->D);
    for (int64_t i = 0; i < c->B * c->S; i++)
        pos[i] = i == 0 ? 131072 : kt_int(&r, 131073); /* up to 131072 */
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t s = 0; s < c->S; s++)
            for (int64_t h = 0; h < c->H; h++)
                for (int64_t d = 0; d < c->D; d++) {
                    const double v = kt_round(c->dt, kt_normal(&r));
                    kt_set(&xb, b * x.stride[0] + s * x.stride[1] + h * x.stride[2] + d, v);
                    want[((b * c->S + s) * c->H + h) * c->D + d] = v;
                }
    double inv[256], af;
    assert_int_equal(kr_rope_frequencies(ctx, &p, c->D, inv, &af), KR_OK);
    const int64_t rd = c->rotary_dim ? c->rotary_dim : c->D;
    kt_oracle_rope(want, c->B * c->S, c->H, c->D, pos, inv, rd, c->layout, af);
    kr_status s = kr_rope(ctx, &x, pos, &p);
    if (s) fail_msg("rope %s: %s", c->variant, kr_context_last_error(ctx));
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t q = 0; q < c->S; q++)
            for (int64_t h = 0; h < c->H; h++)
                for (int64_t d = 0; d < c->D; d++) {
                    const int64_t i = ((b * c->S + q) * c->H + h) * c->D + d;
                    got[i] = kt_get(&xb, b * x.stride[0] + q * x.stride[1] + h * x.stride[2] + d);
                    /* channels past rotary_dim are untouched, bit for bit */
                    if (d >= rd && got[i] != want[i])
                        fail_msg("rope %s: channel %lld past rotary_dim %lld changed", c->variant,
                                 (long long)d, (long long)rd);
                }
    const double err = kt_rel_err(got, want, n);
    const double tol = c->dt == KR_F32 ? 1e-6 : c->dt == KR_F16 ? 1e-3 : 8e-3;
    if (!(err <= tol))
        fail_msg("rope case id=%llu variant=%s layout=%d dtype=%s bhsd=%d B=%lld S=%lld H=%lld "
                 "D=%lld rotary_dim=%lld seed=%llu: error %.3g > %.1g",
                 (unsigned long long)c->id, c->variant, (int)c->layout, kr_dtype_name(c->dt),
                 c->bhsd, (long long)c->B, (long long)c->S, (long long)c->H, (long long)c->D,
                 (long long)c->rotary_dim, (unsigned long long)kt_base_seed(), err, tol);
    kt_buf_free(&xb);
    free(want);
    free(got);
    free(pos);
    return err;
}

static void test_rope_oracle_grid(void **state) {
    kr_context *ctx = *state;
    const char *variants[] = {"default", "linear", "llama3", "yarn", "yarn_mscale"};
    const kr_dtype dts[] = {KR_F32, KR_F16, KR_BF16};
    const int64_t dims[] = {64, 80, 96, 128, 256};
    uint64_t id = 100;
    double worst[3] = {0, 0, 0};
    for (int v = 0; v < 5; v++)
        for (int l = 0; l < 2; l++)
            for (int t = 0; t < 3; t++)
                for (int partial = 0; partial < 2; partial++, id++) {
                    rcase c = {variants[v], l ? KR_ROPE_HALF_SPLIT : KR_ROPE_INTERLEAVED,
                               dts[t],      (v + t) % 2,
                               2,           7,
                               3,           dims[(v + l + t) % 5],
                               0,           id};
                    if (partial) c.rotary_dim = c.D / 2 - (c.D / 2) % 2; /* even, about half */
                    const double e = run_rope(ctx, &c);
                    if (e > worst[t]) worst[t] = e;
                }
    printf("# rope worst normwise error: f32 %.3g (tol 1e-6), f16 %.3g, bf16 %.3g\n", worst[0],
           worst[1], worst[2]);
}

int main(void) {
    kt_base_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frequencies_match_hf),
        cmocka_unit_test(test_rope_oracle_grid),
    };
    return cmocka_run_group_tests_name("rope", tests, kt_setup_context, kt_teardown_context);
}
