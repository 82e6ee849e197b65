/*
 * test_attention.c — kr_attention against the float64 oracle over shape
 * grids (Sq, Skv in {1, 7, 64, 65, 1000}; head_dim 64/80/96/128/256; GQA
 * 1/4/8; BSHD and BHSD views; causal, sliding window, masks, ragged
 * lengths; f32/f16/bf16). Outputs are poisoned with NaN before each call.
 * Tolerances (normwise relative): f32 1e-5, f16 1e-3, bf16 8e-3 by output
 * dtype; LSE within 2e-5 * (1 + |lse|). A failing case prints every
 * parameter and the seed, so it can be re-run as printed.
 */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct acase {
    int64_t B, Sq, Skv, H, Hkv, D;
    kr_dtype dt, out_dt;
    int bhsd;
    int causal;
    int64_t wl, wr;
    int mask; /* 0 none, 1 [1,1,Sq,Skv] finite, 2 [B,H,Sq,Skv] with -inf and a fully masked row */
    int ragged;
    int lse;
    uint64_t id;
} acase;

static void describe(const acase *c, char *buf, size_t n) {
    snprintf(buf, n,
             "case id=%llu B=%lld Sq=%lld Skv=%lld H=%lld Hkv=%lld D=%lld dtype=%s out=%s "
             "layout=%s causal=%d window=(%lld,%lld) mask=%d ragged=%d lse=%d seed=%llu",
             (unsigned long long)c->id, (long long)c->B, (long long)c->Sq, (long long)c->Skv,
             (long long)c->H, (long long)c->Hkv, (long long)c->D, kr_dtype_name(c->dt),
             kr_dtype_name(c->out_dt), c->bhsd ? "bhsd" : "bshd", c->causal, (long long)c->wl,
             (long long)c->wr, c->mask, c->ragged, c->lse, (unsigned long long)kt_base_seed());
}

static double tol_for(kr_dtype dt) { return dt == KR_F32 ? 1e-5 : dt == KR_F16 ? 1e-3 : 8e-3; }

static kr_tensor view(void *data, kr_dtype dt, int bhsd, int64_t b, int64_t s, int64_t h,
                      int64_t d) {
    return bhsd ? kr_tensor_bhsd(data, dt, b, s, h, d) : kr_tensor_bshd(data, dt, b, s, h, d);
}

static int64_t off(const kr_tensor *t, int64_t b, int64_t s, int64_t h, int64_t d) {
    return b * t->stride[0] + s * t->stride[1] + h * t->stride[2] + d * t->stride[3];
}

/* Fills a view with N(0,1) values rounded to its dtype and the same values
 * (rounded) into a BSHD double array. */
static void fill(kt_rng *r, kt_buf *buf, const kr_tensor *t, double *dbl) {
    for (int64_t b = 0; b < t->shape[0]; b++)
        for (int64_t s = 0; s < t->shape[1]; s++)
            for (int64_t h = 0; h < t->shape[2]; h++)
                for (int64_t d = 0; d < t->shape[3]; d++) {
                    double x = kt_round(buf->dt, kt_normal(r));
                    kt_set(buf, off(t, b, s, h, d), x);
                    dbl[((b * t->shape[1] + s) * t->shape[2] + h) * t->shape[3] + d] = x;
                }
}

/* Runs one case; returns the normwise error (or +inf) and fails the test
 * with the full parameter line when it is over tolerance. */
static double run_case(kr_context *ctx, const acase *c) {
    kt_rng r = kt_rng_for(c->id);
    char desc[512];
    describe(c, desc, sizeof desc);
    const int64_t nq = c->B * c->Sq * c->H * c->D, nk = c->B * c->Skv * c->Hkv * c->D;
    kt_buf qb = kt_buf_new(c->dt, nq), kb = kt_buf_new(c->dt, nk), vb = kt_buf_new(c->dt, nk);
    kt_buf ob = kt_buf_new(c->out_dt, nq);
    double *qd = malloc(sizeof(double) * (size_t)nq), *kd = malloc(sizeof(double) * (size_t)nk);
    double *vd = malloc(sizeof(double) * (size_t)nk), *od = malloc(sizeof(double) * (size_t)nq);
    double *got = malloc(sizeof(double) * (size_t)nq);
    const int64_t nl = c->B * c->H * c->Sq;
    double *lse_want = malloc(sizeof(double) * (size_t)nl);
    kt_buf lb = kt_buf_new(KR_F32, nl);
    assert_true(qd && kd && vd && od && got && lse_want);

    kr_tensor q = view(qb.data, c->dt, c->bhsd, c->B, c->Sq, c->H, c->D);
    kr_tensor k = view(kb.data, c->dt, c->bhsd, c->B, c->Skv, c->Hkv, c->D);
    kr_tensor v = view(vb.data, c->dt, c->bhsd, c->B, c->Skv, c->Hkv, c->D);
    kr_tensor o = view(ob.data, c->out_dt, c->bhsd, c->B, c->Sq, c->H, c->D);
    fill(&r, &qb, &q, qd);
    fill(&r, &kb, &k, kd);
    fill(&r, &vb, &v, vd);

    kr_attention_params p = kr_attention_params_default();
    p.causal = c->causal;
    p.window_left = c->wl;
    p.window_right = c->wr;
    kt_attn_case oc = {c->B,      c->Sq, c->Skv, c->H, c->Hkv, c->D, 1.0 / sqrt((double)c->D),
                       c->causal, c->wl, c->wr,  NULL, 1,      1,    NULL};

    double *maskd = NULL;
    kt_buf mb = {0};
    kr_tensor mt;
    if (c->mask) {
        const int64_t mB = c->mask == 2 ? c->B : 1, mH = c->mask == 2 ? c->H : 1;
        const int64_t nm = mB * mH * c->Sq * c->Skv;
        maskd = malloc(sizeof(double) * (size_t)nm);
        mb = kt_buf_new(KR_F32, nm);
        for (int64_t i = 0; i < nm; i++) {
            double x = kt_round(KR_F32, kt_normal(&r));
            if (c->mask == 2 && kt_uniform(&r) < 0.1) x = -INFINITY;
            maskd[i] = x;
        }
        if (c->mask == 2) /* one row fully masked: defined as zeros, LSE -inf */
            for (int64_t j = 0; j < c->Skv; j++) maskd[j] = -INFINITY;
        for (int64_t i = 0; i < nm; i++) kt_set(&mb, i, maskd[i]);
        mt = kr_tensor_contiguous(mb.data, KR_F32, mB, mH, c->Sq, c->Skv);
        p.mask = &mt;
        oc.mask = maskd;
        oc.mask_b = mB;
        oc.mask_h = mH;
    }
    int64_t *lens = NULL;
    if (c->ragged) {
        lens = malloc(sizeof(int64_t) * (size_t)c->B);
        for (int64_t b = 0; b < c->B; b++) lens[b] = kt_int(&r, c->Skv + 1);
        lens[kt_int(&r, c->B)] = c->Skv;
        if (c->B > 1) lens[0] = kt_int(&r, 2) ? 0 : lens[0];
        p.kv_lens = lens;
        oc.kv_lens = lens;
    }
    kr_tensor lt = kr_tensor_contiguous(lb.data, KR_F32, c->B, c->H, c->Sq, 1);
    if (c->lse) p.lse = &lt;

    kt_poison(&ob);
    kt_poison(&lb);
    kr_status s = kr_attention(ctx, &q, &k, &v, &o, &p);
    if (s != KR_OK)
        fail_msg("%s: status %s: %s", desc, kr_status_name(s), kr_context_last_error(ctx));
    kt_oracle_attention(&oc, qd, kd, vd, od, lse_want);

    for (int64_t b = 0; b < c->B; b++)
        for (int64_t i = 0; i < c->Sq; i++)
            for (int64_t h = 0; h < c->H; h++)
                for (int64_t d = 0; d < c->D; d++)
                    got[((b * c->Sq + i) * c->H + h) * c->D + d] = kt_get(&ob, off(&o, b, i, h, d));
    const double err = kt_rel_err(got, od, nq);
    if (!(err <= tol_for(c->out_dt)))
        fail_msg("%s: normwise error %.3g > tolerance %.1g", desc, err, tol_for(c->out_dt));
    /* Zero rows must be exactly zero (fully masked rows). */
    for (int64_t i = 0; i < nq; i++)
        if (od[i] == 0.0 && got[i] != 0.0)
            fail_msg("%s: element %lld should be 0, got %g", desc, (long long)i, got[i]);
    if (c->lse)
        for (int64_t i = 0; i < nl; i++) {
            const double g = kt_get(&lb, i), w = lse_want[i];
            if (w == -INFINITY ? g != -INFINITY : !(fabs(g - w) <= 2e-5 * (1.0 + fabs(w))))
                fail_msg("%s: lse[%lld] = %.9g, want %.9g", desc, (long long)i, g, w);
        }
    kt_buf_free(&qb);
    kt_buf_free(&kb);
    kt_buf_free(&vb);
    kt_buf_free(&ob);
    kt_buf_free(&lb);
    kt_buf_free(&mb);
    free(qd);
    free(kd);
    free(vd);
    free(od);
    free(got);
    free(lse_want);
    free(maskd);
    free(lens);
    return err;
}

static const int64_t SEQS[] = {1, 7, 64, 65, 1000};
static const int64_t DIMS[] = {64, 80, 96, 128, 256};
static const int64_t GQA[] = {1, 4, 8};

/* Every (Sq, Skv) pair, non-causal and causal, with head_dim, GQA ratio,
 * layout and extras rotating so that each value meets each pair. */
static void test_seq_pairs_f32(void **state) {
    kr_context *ctx = *state;
    uint64_t id = 1000;
    double worst = 0.0;
    for (int a = 0; a < 5; a++)
        for (int bq = 0; bq < 5; bq++)
            for (int causal = 0; causal < 2; causal++, id++) {
                acase c = {0};
                const int idx = a * 5 + bq;
                c.Sq = SEQS[a];
                c.Skv = SEQS[bq];
                if (kt_quick() && c.Sq * c.Skv > 5000) continue;
                c.D = DIMS[(idx + causal) % 5];
                const int64_t g = GQA[(idx + 2 * causal) % 3];
                const bool big = c.Sq * c.Skv > 100000;
                c.Hkv = big ? 1 : 2;
                c.H = c.Hkv * g;
                c.B = big ? 1 : 2;
                c.dt = c.out_dt = KR_F32;
                c.bhsd = idx % 2;
                c.causal = causal;
                c.wl = c.wr = -1;
                if (idx % 4 == 1) c.wl = 5;                /* sliding window */
                if (idx % 4 == 2) c.mask = causal ? 2 : 1; /* additive mask */
                if (idx % 4 == 3) c.ragged = 1;
                c.lse = idx % 3 != 0;
                c.id = id;
                double e = run_case(ctx, &c);
                if (e > worst) worst = e;
            }
    printf("# seq pairs f32: worst normwise error %.3g (tolerance 1e-5)\n", worst);
}

/* head_dim x GQA x layout x variant at a small awkward shape. */
static void test_small_grid_f32(void **state) {
    kr_context *ctx = *state;
    uint64_t id = 5000;
    double worst = 0.0;
    for (int d = 0; d < 5; d++)
        for (int g = 0; g < 3; g++)
            for (int l = 0; l < 2; l++)
                for (int var = 0; var < 7; var++, id++) {
                    if (kt_quick() && (d + g + l + var) % 3 != 0)
                        continue; /* a third of the grid */
                    acase c = {0};
                    c.B = 2;
                    c.Sq = 7;
                    c.Skv = 65;
                    c.D = DIMS[d];
                    c.Hkv = 2;
                    c.H = 2 * GQA[g];
                    c.dt = c.out_dt = KR_F32;
                    c.bhsd = l;
                    c.wl = c.wr = -1;
                    c.lse = 1;
                    switch (var) {
                    case 0: break;
                    case 1: c.causal = 1; break;
                    case 2:
                        c.wl = 9;
                        c.wr = 3;
                        break;
                    case 3:
                        c.causal = 1;
                        c.wl = 20;
                        break;
                    case 4: c.mask = 1; break;
                    case 5:
                        c.mask = 2;
                        c.causal = 1;
                        break;
                    case 6:
                        c.ragged = 1;
                        c.causal = 1;
                        break;
                    }
                    c.id = id;
                    double e = run_case(ctx, &c);
                    if (e > worst) worst = e;
                }
    printf("# small grid f32: worst normwise error %.3g (tolerance 1e-5)\n", worst);
}

/* f16 and bf16 inputs; output in the same dtype or in f32. */
static void test_half_dtypes(void **state) {
    kr_context *ctx = *state;
    uint64_t id = 9000;
    const kr_dtype dts[] = {KR_F16, KR_BF16};
    double worst[2] = {0, 0};
    for (int t = 0; t < 2; t++)
        for (int a = 0; a < 4; a++)
            for (int bq = 0; bq < 5; bq++, id++) {
                acase c = {0};
                c.Sq = SEQS[a];
                c.Skv = SEQS[bq];
                if (kt_quick() && c.Sq * c.Skv > 5000) continue;
                c.B = 2;
                c.D = DIMS[(a + bq) % 5];
                c.Hkv = 2;
                c.H = 2 * GQA[(a + bq + t) % 3];
                c.dt = dts[t];
                c.out_dt = bq == 4 ? KR_F32 : dts[t];
                c.bhsd = (a + bq) % 2;
                c.causal = (a + bq + t) % 2;
                c.wl = c.wr = -1;
                c.ragged = bq == 2;
                c.mask = a == 3 ? 2 : 0;
                c.lse = 1;
                c.id = id;
                double e = run_case(ctx, &c);
                if (c.out_dt == c.dt && e > worst[t]) worst[t] = e;
            }
    printf("# f16 worst %.3g (tol 1e-3), bf16 worst %.3g (tol 8e-3)\n", worst[0], worst[1]);
}

/* Explicit scale, and causal with Sq > Skv (the first rows see nothing). */
static void test_scale_and_empty_rows(void **state) {
    kr_context *ctx = *state;
    acase c = {0};
    c.B = 1;
    c.Sq = 9;
    c.Skv = 4;
    c.H = 4;
    c.Hkv = 1;
    c.D = 64;
    c.dt = c.out_dt = KR_F32;
    c.causal = 1;
    c.wl = c.wr = -1;
    c.lse = 1;
    c.id = 42;
    run_case(ctx, &c); /* rows 0..4 have no visible key: zeros, LSE -inf */

    /* scale: q*2 with scale s/2 equals q with scale s */
    float qv[64], q2[64], kv[3 * 64], vv[3 * 64], o1[64], o2[64];
    kt_rng r = kt_rng_for(43);
    for (int i = 0; i < 64; i++) {
        qv[i] = (float)kt_normal(&r);
        q2[i] = 2.0f * qv[i];
    }
    for (int i = 0; i < 3 * 64; i++) {
        kv[i] = (float)kt_normal(&r);
        vv[i] = (float)kt_normal(&r);
    }
    kr_tensor q = kr_tensor_bshd(qv, KR_F32, 1, 1, 1, 64),
              qq = kr_tensor_bshd(q2, KR_F32, 1, 1, 1, 64);
    kr_tensor k = kr_tensor_bshd(kv, KR_F32, 1, 3, 1, 64),
              v = kr_tensor_bshd(vv, KR_F32, 1, 3, 1, 64);
    kr_tensor a = kr_tensor_bshd(o1, KR_F32, 1, 1, 1, 64),
              b = kr_tensor_bshd(o2, KR_F32, 1, 1, 1, 64);
    kr_attention_params p = kr_attention_params_default();
    p.scale = 0.25f;
    assert_int_equal(kr_attention(ctx, &q, &k, &v, &a, &p), KR_OK);
    p.scale = 0.125f;
    assert_int_equal(kr_attention(ctx, &qq, &k, &v, &b, &p), KR_OK);
    for (int i = 0; i < 64; i++) assert_true(fabsf(o1[i] - o2[i]) <= 1e-6f * (1.0f + fabsf(o1[i])));
}

/* NaN and inf: a NaN in one query row makes that row NaN and leaves the
 * others finite; an inf key makes rows that see it non-finite. */
static void test_nan_inf(void **state) {
    kr_context *ctx = *state;
    enum { S = 5, D = 64 };
    float q[S * D], k[S * D], v[S * D], o[S * D];
    kt_rng r = kt_rng_for(44);
    for (int i = 0; i < S * D; i++) {
        q[i] = (float)kt_normal(&r);
        k[i] = (float)kt_normal(&r);
        v[i] = (float)kt_normal(&r);
    }
    q[2 * D + 3] = NAN;
    kr_tensor qt = kr_tensor_bshd(q, KR_F32, 1, S, 1, D),
              kt = kr_tensor_bshd(k, KR_F32, 1, S, 1, D);
    kr_tensor vt = kr_tensor_bshd(v, KR_F32, 1, S, 1, D),
              ot = kr_tensor_bshd(o, KR_F32, 1, S, 1, D);
    assert_int_equal(kr_attention(ctx, &qt, &kt, &vt, &ot, NULL), KR_OK);
    for (int i = 0; i < S; i++)
        for (int d = 0; d < D; d++) {
            if (i == 2)
                assert_true(isnan(o[i * D + d]));
            else
                assert_true(isfinite(o[i * D + d]));
        }
    q[2 * D + 3] = 0.5f;
    v[4 * D] = INFINITY; /* key 4 is seen only by row 4 under causal */
    kr_attention_params p = kr_attention_params_default();
    p.causal = 1;
    assert_int_equal(kr_attention(ctx, &qt, &kt, &vt, &ot, &p), KR_OK);
    for (int i = 0; i < 4; i++) assert_true(isfinite(o[i * D]));
    assert_false(isfinite(o[4 * D]));
}

int main(void) {
    kt_base_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_grid_f32), cmocka_unit_test(test_seq_pairs_f32),
        cmocka_unit_test(test_half_dtypes),    cmocka_unit_test(test_scale_and_empty_rows),
        cmocka_unit_test(test_nan_inf),
    };
    return cmocka_run_group_tests_name("attention", tests, kt_setup_context, kt_teardown_context);
}
