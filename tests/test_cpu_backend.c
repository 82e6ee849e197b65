/*
 * test_cpu_backend.c — the conformance driver for the cpu backend: every
 * case runs once in a reference-only context and once in a cpu-only
 * context (fallback off, so a failure cannot hide behind ref), and the cpu
 * result is compared with the reference and, for attention, with the
 * float64 oracle. The counters must show the cpu backend served the call.
 * Cases the cpu backend declines are counted and printed as SKIP, never as
 * passes. On a CPU without AVX2/FMA/F16C the whole program reports SKIP.
 *
 * Grids: attention Sq/Skv in {1, 7, 64, 65, 1000} x head_dim {64, 80, 96,
 * 128, 256} x GQA {1, 4, 8} x f32/f16/bf16 x causal/window/mask/ragged/LSE;
 * KV cache decode (Sq 1..16) and chunked prefill over f32/f16/bf16/int8
 * caches up to 4100 tokens (key splits merged by LSE); RoPE in every layout,
 * partial rotary and scaling; append with RoPE into every cache dtype.
 */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kr_context *ctx_ref, *ctx_cpu;
static int n_skip;

static kr_context *make(bool cpu) {
    kr_context_options o = kr_context_options_default();
    if (cpu) {
        o.backends = "cpu";
        o.deny_backends = "cuda,test";
        o.fallback_to_reference = 0;
        o.acceleration = 1;
    } else {
        o.acceleration = 0;
    }
    o.log_level = KR_LOG_OFF;
    kr_context *c = NULL;
    char err[512];
    if (kr_context_create(&o, &c, err, sizeof err) != KR_OK) fail_msg("context: %s", err);
    return c;
}

static int setup(void **state) {
    (void)state;
    ctx_ref = make(false);
    ctx_cpu = make(true);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kr_context_free(ctx_ref);
    kr_context_free(ctx_cpu);
    printf("# cases the cpu backend declined (SKIP, served by nobody here): %d\n", n_skip);
    return 0;
}

static bool cpu_available(kr_feature f) {
    kr_feature_info fi;
    kr_accel_feature_info(ctx_cpu, f, &fi);
    return fi.available && !strcmp(fi.backend, "cpu");
}

static int64_t accelerated(kr_feature f) {
    kr_feature_info fi;
    kr_accel_feature_info(ctx_cpu, f, &fi);
    return fi.counters.accelerated;
}

static void fill(kt_rng *r, kt_buf *b, double *d) {
    for (int64_t i = 0; i < b->n; i++) {
        const double x = kt_round(b->dt, kt_normal(r));
        kt_set(b, i, x);
        if (d) d[i] = x;
    }
}

static double tol_for(kr_dtype dt) { return dt == KR_F32 ? 1e-5 : dt == KR_F16 ? 1e-3 : 8e-3; }

/* Whether ctx's cpu backend takes integer dot products for the int8 decode
 * (AVX512_VNNI; its probe reason names them). */
static bool int8_dot(kr_context *ctx) {
    for (int32_t i = 0; i < kr_accel_backend_count(ctx); i++) {
        kr_backend_info bi;
        if (kr_accel_backend_info(ctx, i, &bi) == KR_OK && !strcmp(bi.name, "cpu"))
            return bi.available && strstr(bi.reason, "avx512vnni") != NULL;
    }
    return false;
}

/* cpu vs ref on the int8 cache with integer dot products: q and P are
 * quantised per call into two 8-bit digits each (x86_avx512/decode_vnni.c),
 * an error of at most 1/508 of a q group's step and 1/510 of a P step per
 * value; over these grids' normal data the normwise error is 2e-5 .. 3e-5
 * (printed; one digit each gave 6.6e-3), so 1e-4 leaves a factor of three.
 * With the float kernels (KRSERVE_CPU_INT8_DOT=0, or no VNNI) the bar is
 * 1e-5. */
#define INT8_DOT_TOL 1e-4

/* ---- attention ---------------------------------------------------------------- */

typedef struct acase {
    int64_t B, Sq, Skv, H, Hkv, D;
    kr_dtype dt;
    int causal, mask, ragged, lse;
    int64_t wl;
    uint64_t id;
} acase;

static void run_attention(const acase *c, double *worst_oracle, double *worst_ref) {
    char desc[256];
    snprintf(desc, sizeof desc,
             "attention B=%lld Sq=%lld Skv=%lld H=%lld Hkv=%lld D=%lld %s causal=%d wl=%lld "
             "mask=%d ragged=%d lse=%d seed=%llu",
             (long long)c->B, (long long)c->Sq, (long long)c->Skv, (long long)c->H,
             (long long)c->Hkv, (long long)c->D, kr_dtype_name(c->dt), c->causal, (long long)c->wl,
             c->mask, c->ragged, c->lse, (unsigned long long)c->id);
    kt_rng r = kt_rng_for(c->id);
    const int64_t nq = c->B * c->Sq * c->H * c->D, nk = c->B * c->Skv * c->Hkv * c->D;
    kt_buf q = kt_buf_new(c->dt, nq), k = kt_buf_new(c->dt, nk), v = kt_buf_new(c->dt, nk);
    kt_buf o_ref = kt_buf_new(c->dt, nq), o_cpu = kt_buf_new(c->dt, nq);
    const int64_t nl = c->B * c->H * c->Sq;
    kt_buf l_ref = kt_buf_new(KR_F32, nl), l_cpu = kt_buf_new(KR_F32, nl);
    double *qd = malloc(sizeof(double) * (size_t)nq), *kd = malloc(sizeof(double) * (size_t)nk);
    double *vd = malloc(sizeof(double) * (size_t)nk), *od = malloc(sizeof(double) * (size_t)nq);
    double *gc = malloc(sizeof(double) * (size_t)nq), *gr = malloc(sizeof(double) * (size_t)nq);
    double *ld = malloc(sizeof(double) * (size_t)nl);
    fill(&r, &q, qd);
    fill(&r, &k, kd);
    fill(&r, &v, vd);
    kr_tensor tq = kr_tensor_bshd(q.data, c->dt, c->B, c->Sq, c->H, c->D);
    kr_tensor tk = kr_tensor_bshd(k.data, c->dt, c->B, c->Skv, c->Hkv, c->D);
    kr_tensor tv = kr_tensor_bshd(v.data, c->dt, c->B, c->Skv, c->Hkv, c->D);
    kr_tensor tor = kr_tensor_bshd(o_ref.data, c->dt, c->B, c->Sq, c->H, c->D);
    kr_tensor toc = kr_tensor_bshd(o_cpu.data, c->dt, c->B, c->Sq, c->H, c->D);
    kr_tensor tlr = kr_tensor_contiguous(l_ref.data, KR_F32, c->B, c->H, c->Sq, 1);
    kr_tensor tlc = kr_tensor_contiguous(l_cpu.data, KR_F32, c->B, c->H, c->Sq, 1);
    kr_attention_params p = kr_attention_params_default();
    p.causal = c->causal;
    p.window_left = c->wl;
    kt_attn_case oc = {c->B,      c->Sq, c->Skv, c->H, c->Hkv, c->D, 1.0 / sqrt((double)c->D),
                       c->causal, c->wl, -1,     NULL, 1,      1,    NULL};
    double *md = NULL;
    kt_buf mb = {0};
    kr_tensor mt;
    if (c->mask) {
        const int64_t nm = c->H * c->Sq * c->Skv;
        md = malloc(sizeof(double) * (size_t)nm);
        mb = kt_buf_new(KR_F32, nm);
        for (int64_t i = 0; i < nm; i++) {
            md[i] = kt_uniform(&r) < 0.1 ? -INFINITY : kt_round(KR_F32, kt_normal(&r));
            kt_set(&mb, i, md[i]);
        }
        mt = kr_tensor_contiguous(mb.data, KR_F32, 1, c->H, c->Sq, c->Skv);
        p.mask = &mt;
        oc.mask = md;
        oc.mask_h = c->H;
    }
    int64_t *lens = NULL;
    if (c->ragged) {
        lens = malloc(sizeof(int64_t) * (size_t)c->B);
        for (int64_t b = 0; b < c->B; b++) lens[b] = kt_int(&r, c->Skv + 1);
        lens[c->B - 1] = c->Skv;
        p.kv_lens = lens;
        oc.kv_lens = lens;
    }
    kt_poison(&o_ref);
    kt_poison(&o_cpu);
    kt_poison(&l_cpu);
    if (c->lse) p.lse = &tlr;
    if (kr_attention(ctx_ref, &tq, &tk, &tv, &tor, &p) != KR_OK)
        fail_msg("%s: ref: %s", desc, kr_context_last_error(ctx_ref));
    if (c->lse) p.lse = &tlc;
    const int64_t before = accelerated(KR_FEATURE_FLASH_ATTENTION);
    const kr_status st = kr_attention(ctx_cpu, &tq, &tk, &tv, &toc, &p);
    if (st != KR_OK) fail_msg("%s: cpu: %s", desc, kr_context_last_error(ctx_cpu));
    if (accelerated(KR_FEATURE_FLASH_ATTENTION) != before + 1) {
        n_skip++; /* declined (head_dim not a multiple of 16): ref served it */
    } else {
        kt_oracle_attention(&oc, qd, kd, vd, od, ld);
        for (int64_t i = 0; i < nq; i++) {
            gc[i] = kt_get(&o_cpu, i);
            gr[i] = kt_get(&o_ref, i);
        }
        const double eo = kt_rel_err(gc, od, nq), er = kt_rel_err(gc, gr, nq);
        if (!(eo <= tol_for(c->dt)))
            fail_msg("%s: cpu vs oracle %.3g > %.1g", desc, eo, tol_for(c->dt));
        if (!(er <= tol_for(c->dt)))
            fail_msg("%s: cpu vs ref %.3g > %.1g", desc, er, tol_for(c->dt));
        for (int64_t i = 0; i < nq; i++)
            if (od[i] == 0.0 && gc[i] != 0.0)
                fail_msg("%s: element %lld must be 0", desc, (long long)i);
        if (c->lse)
            for (int64_t i = 0; i < nl; i++) {
                const double g = kt_get(&l_cpu, i), w = ld[i];
                if (w == -INFINITY ? g != -INFINITY : !(fabs(g - w) <= 2e-5 * (1 + fabs(w))))
                    fail_msg("%s: lse[%lld] = %.9g, oracle %.9g", desc, (long long)i, g, w);
            }
        if (eo > *worst_oracle) *worst_oracle = eo;
        if (er > *worst_ref) *worst_ref = er;
    }
    kt_buf_free(&q);
    kt_buf_free(&k);
    kt_buf_free(&v);
    kt_buf_free(&o_ref);
    kt_buf_free(&o_cpu);
    kt_buf_free(&l_ref);
    kt_buf_free(&l_cpu);
    kt_buf_free(&mb);
    free(qd);
    free(kd);
    free(vd);
    free(od);
    free(gc);
    free(gr);
    free(ld);
    free(md);
    free(lens);
}

static const int64_t SEQS[] = {1, 7, 64, 65, 1000};
static const int64_t DIMS[] = {64, 80, 96, 128, 256};
static const int64_t GQA[] = {1, 4, 8};

static void test_attention_grid(void **state) {
    (void)state;
    if (!cpu_available(KR_FEATURE_FLASH_ATTENTION)) skip();
    double wo[3] = {0}, wr[3] = {0};
    uint64_t id = 70000;
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 5; b++)
            for (int v = 0; v < 6; v++, id++) {
                acase c = {0};
                c.Sq = SEQS[a];
                c.Skv = SEQS[b];
                if (kt_quick() && c.Sq * c.Skv > 5000) continue;
                const int idx = a * 5 + b + v;
                c.D = DIMS[idx % 5];
                c.Hkv = c.Sq * c.Skv > 100000 ? 1 : 2;
                c.H = c.Hkv * GQA[idx % 3];
                c.B = c.Sq * c.Skv > 100000 ? 1 : 2;
                c.dt = (kr_dtype)(v % 3); /* f32, f16, bf16 */
                c.wl = -1;
                c.causal = v >= 3 || (v == 1);
                if (v == 2) c.wl = 9;
                if (v == 4) c.mask = 1;
                if (v == 5) c.ragged = 1;
                c.lse = v % 2;
                c.id = id;
                run_attention(&c, &wo[c.dt], &wr[c.dt]);
            }
    printf("# cpu attention worst normwise error vs oracle / vs ref: f32 %.2g / %.2g (tol 1e-5), "
           "f16 %.2g / %.2g, bf16 %.2g / %.2g\n",
           wo[0], wr[0], wo[1], wr[1], wo[2], wr[2]);
}

/* ---- KV cache: decode and chunked prefill --------------------------------------- */

/* One KV-cache attention case: a cache of dtype dt filled by ref with
 * seeded normal K/V (n_new: per-sequence lengths, NULL: all L), decode or
 * chunked prefill of Sq causal rows on ref and on ctx's cpu backend.
 * poison 1: a NaN in query head 0's first row; 2: an inf in V at key L / 2
 * of kv head 1 (both only for batch 1). Fails unless cpu served the call,
 * its NaNs are exactly ref's (none without poison) and the rest is within
 * tol normwise of ref; returns that error. */
typedef struct kv_case {
    kr_dtype dt;
    int64_t B, Hkv, G, D, L, Sq;
    const int64_t *n_new;
    int poison;
    uint64_t id;
} kv_case;

static double kv_case_run(kr_context *ctx, const kv_case *c, double tol) {
    const int64_t B = c->B, Hkv = c->Hkv, H = Hkv * c->G, D = c->D, L = c->L, Sq = c->Sq;
    char desc[240];
    snprintf(desc, sizeof desc, "kv %s B %lld len %lld Sq %lld G %lld D %lld poison %d seed %llu",
             kr_dtype_name(c->dt), (long long)B, (long long)L, (long long)Sq, (long long)c->G,
             (long long)D, c->poison, (unsigned long long)c->id);
    kt_rng r = kt_rng_for(c->id);
    kr_kv_cache_options o = {1, B, L + Sq, Hkv, D, c->dt, {KR_DEVICE_CPU, 0}};
    kr_kv_cache *cache = NULL;
    assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &cache), KR_OK);
    kt_buf k = kt_buf_new(KR_F32, B * L * Hkv * D), v = kt_buf_new(KR_F32, B * L * Hkv * D);
    fill(&r, &k, NULL);
    fill(&r, &v, NULL);
    if (c->poison == 2) kt_set(&v, ((L / 2) * Hkv + 1) * D + 3, INFINITY);
    kr_tensor tk = kr_tensor_bshd(k.data, KR_F32, B, L, Hkv, D);
    kr_tensor tv = kr_tensor_bshd(v.data, KR_F32, B, L, Hkv, D);
    kr_rope_params rp = kr_rope_params_default();
    assert_int_equal(kr_kv_cache_append(ctx_ref, cache, 0, &tk, &tv, c->n_new, NULL, &rp), KR_OK);
    kt_buf q = kt_buf_new(KR_F32, B * Sq * H * D);
    fill(&r, &q, NULL);
    if (c->poison == 1) kt_set(&q, 5, NAN);
    kt_buf oref = kt_buf_new(KR_F32, q.n), ocpu = kt_buf_new(KR_F32, q.n);
    kt_poison(&oref);
    kt_poison(&ocpu);
    kr_tensor tq = kr_tensor_bshd(q.data, KR_F32, B, Sq, H, D);
    kr_tensor t1 = kr_tensor_bshd(oref.data, KR_F32, B, Sq, H, D);
    kr_tensor t2 = kr_tensor_bshd(ocpu.data, KR_F32, B, Sq, H, D);
    kr_attention_params p = kr_attention_params_default();
    p.causal = 1;
    const kr_status s1 = kr_kv_cache_attention(ctx_ref, cache, 0, &tq, &t1, &p);
    kr_feature_info fi;
    kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi);
    const int64_t before = fi.counters.accelerated;
    const kr_status s2 = kr_kv_cache_attention(ctx, cache, 0, &tq, &t2, &p);
    if (s1 != KR_OK || s2 != KR_OK)
        fail_msg("%s: status %s / %s (%s)", desc, kr_status_name(s1), kr_status_name(s2),
                 kr_context_last_error(ctx));
    kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi);
    if (fi.counters.accelerated != before + 1)
        fail_msg("%s: the cpu backend did not serve the call", desc);
    double *a = malloc(sizeof(double) * (size_t)q.n), *b = malloc(sizeof(double) * (size_t)q.n);
    int64_t n_fin = 0, n_nan = 0;
    for (int64_t i = 0; i < q.n; i++) {
        const double x = kt_get(&ocpu, i), y = kt_get(&oref, i);
        if (isnan(x) != isnan(y))
            fail_msg("%s: element %lld cpu %g, ref %g (NaN in one only)", desc, (long long)i, x, y);
        if (isnan(y)) {
            n_nan++;
            continue;
        }
        a[n_fin] = x;
        b[n_fin++] = y;
    }
    if ((c->poison != 0) != (n_nan != 0))
        fail_msg("%s: %lld NaN outputs on ref with poison %d", desc, (long long)n_nan, c->poison);
    const double e = n_fin ? kt_rel_err(a, b, n_fin) : 0.0;
    if (!(e <= tol)) fail_msg("%s: cpu vs ref %.3g > %.1g", desc, e, tol);
    free(a);
    free(b);
    kt_buf_free(&k);
    kt_buf_free(&v);
    kt_buf_free(&q);
    kt_buf_free(&oref);
    kt_buf_free(&ocpu);
    kr_kv_cache_free(cache);
    return e;
}

/* Decode and chunked prefill over every cache dtype, ragged lengths, cpu
 * (context ctx) vs ref; only_int8: the int8 cases alone. Returns the worst
 * int8 error. */
static double kv_cache_cases(kr_context *ctx, bool only_int8, double int8_tol) {
    const kr_dtype dts[] = {KR_F32, KR_F16, KR_BF16, KR_I8};
    const int64_t lens[] = {1, 37, 1500, 4100};
    const int64_t sqs[] = {1, 3, 16, 40};
    double worst = 0, worst8 = 0;
    uint64_t id = 80000;
    for (int d = 0; d < 4; d++)
        for (int l = 0; l < 4; l++)
            for (int s = 0; s < 4; s++, id++) {
                if (kt_quick() && lens[l] > 1500) continue;
                if (only_int8 && dts[d] != KR_I8) continue;
                const int64_t L = lens[l];
                const int64_t n_new[2] = {L, L > 1 ? L - L / 3 : 1}; /* ragged */
                const kv_case c = {dts[d], 2, 2, GQA[(d + l + s) % 3], s % 2 ? 64 : 128, L, sqs[s],
                                   n_new,  0, id};
                const double e = kv_case_run(ctx, &c, dts[d] == KR_I8 ? int8_tol : 1e-5);
                if (dts[d] == KR_I8 && e > worst8) worst8 = e;
                if (dts[d] != KR_I8 && e > worst) worst = e;
            }
    if (!only_int8)
        printf("# cpu kv-cache attention (decode, chunked prefill, f32/f16/bf16): worst vs ref "
               "%.2g (tol 1e-5)\n",
               worst);
    printf("# cpu kv-cache attention over int8 (%s): worst vs ref %.2g (tol %.1g)\n",
           int8_tol > 1e-5 ? "integer dot products" : "float kernels", worst8, int8_tol);
    return worst8;
}

/* With dot products named, the int8 cases must show their rounding: the
 * float kernels stay at 1.5e-6 of ref here, the two-digit quantisation at
 * 2e-5 .. 3e-5, so a worst error under 5e-6 means the integer kernels
 * declined every call and the float ones did the work. */
#define INT8_DOT_SIGN 5e-6

static void test_kv_cache_attention(void **state) {
    (void)state;
    if (!cpu_available(KR_FEATURE_FLASH_ATTENTION)) skip();
    const bool dot = int8_dot(ctx_cpu);
    const double worst8 = kv_cache_cases(ctx_cpu, false, dot ? INT8_DOT_TOL : 1e-5);
    if (dot && !(worst8 > INT8_DOT_SIGN))
        fail_msg("int8 cases at %.2g of ref, the float kernels' level: the integer dot products "
                 "did not run",
                 worst8);
}

/* The int8 decode over the head dims the integer kernels take (64, 128,
 * 256) and one they leave to the float kernels (96), GQA 1/4/8, lengths
 * around the 16-key and 64-key steps, Sq 1 and 2; then a NaN in one query
 * head and an inf in one cached V row: NaN exactly where ref has it. */
static void test_kv_cache_int8_grid(void **state) {
    (void)state;
    if (!cpu_available(KR_FEATURE_FLASH_ATTENTION)) skip();
    const double tol = int8_dot(ctx_cpu) ? INT8_DOT_TOL : 1e-5;
    const int64_t dims[] = {64, 96, 128, 256}, gs[] = {1, 4, 8}, lens[] = {1, 15, 17, 64, 65, 700};
    double worst = 0;
    int64_t n_cases = 0;
    uint64_t id = 81000;
    for (int di = 0; di < 4; di++)
        for (int gi = 0; gi < 3; gi++)
            for (int li = 0; li < 6; li++)
                for (int64_t Sq = 1; Sq <= 2; Sq++)
                    for (int poison = 0; poison < 3; poison++, id++) {
                        if (poison && (li != 4 || Sq != 1)) continue;
                        const kv_case c = {KR_I8,    1,  2,    gs[gi], dims[di],
                                           lens[li], Sq, NULL, poison, id};
                        const double e = kv_case_run(ctx_cpu, &c, tol);
                        if (e > worst) worst = e;
                        n_cases++;
                    }
    printf("# cpu int8 decode grid (%lld cases, head_dim 64/96/128/256, NaN/inf inputs): worst vs "
           "ref %.2g (tol %.1g)\n",
           (long long)n_cases, worst, tol);
}

/* KRSERVE_CPU_INT8_DOT=0 keeps the float kernels: the int8 cases at 1e-5.
 * (The variable is read at probe time, so ctx_cpu is re-made after.) */
static void test_kv_cache_int8_dot_off(void **state) {
    (void)state;
    if (!cpu_available(KR_FEATURE_FLASH_ATTENTION)) skip();
    const bool was_on = int8_dot(ctx_cpu);
    const char *given = getenv("KRSERVE_CPU_INT8_DOT"); /* the caller's, restored after */
    char saved[32] = "";
    if (given) snprintf(saved, sizeof saved, "%s", given);
    setenv("KRSERVE_CPU_INT8_DOT", "0", 1);
    kr_context *off = make(true);
    const bool off_on = int8_dot(off);
    kv_cache_cases(off, true, 1e-5);
    kr_context_free(off);
    if (given)
        setenv("KRSERVE_CPU_INT8_DOT", saved, 1);
    else
        unsetenv("KRSERVE_CPU_INT8_DOT");
    kr_context_free(ctx_cpu);
    ctx_cpu = make(true);
    if (off_on) fail_msg("KRSERVE_CPU_INT8_DOT=0: the cpu backend still names avx512vnni");
    if (int8_dot(ctx_cpu) != was_on) fail_msg("int8 dot products not restored after the variable");
}

/* ---- RoPE ------------------------------------------------------------------------ */

static void test_rope(void **state) {
    (void)state;
    if (!cpu_available(KR_FEATURE_FUSED_ROPE)) skip();
    double worst = 0;
    uint64_t id = 90000;
    const int64_t dims[] = {6, 64, 80, 128, 256};
    for (int dt = 0; dt < 3; dt++)
        for (int lay = 0; lay < 2; lay++)
            for (int sc = 0; sc < 4; sc++)
                for (int di = 0; di < 5; di++, id++) {
                    const int64_t B = 2, S = 19, H = 3, D = dims[di];
                    kt_rng r = kt_rng_for(id);
                    kt_buf x0 = kt_buf_new((kr_dtype)dt, B * S * H * D);
                    fill(&r, &x0, NULL);
                    kt_buf x1 = kt_buf_new((kr_dtype)dt, x0.n), x2 = kt_buf_new((kr_dtype)dt, x0.n);
                    memcpy(x1.data, x0.data, (size_t)x0.n * kr_dtype_size((kr_dtype)dt));
                    memcpy(x2.data, x0.data, (size_t)x0.n * kr_dtype_size((kr_dtype)dt));
                    int64_t pos[2 * 19];
                    for (int i = 0; i < B * S; i++) pos[i] = kt_int(&r, i % 2 ? 600000 : 4096);
                    kr_rope_params p = kr_rope_params_default();
                    p.layout = (kr_rope_layout)lay;
                    p.theta = 500000;
                    p.rotary_dim = di == 3 ? 64 : 0; /* partial rotary at 128 */
                    p.scaling = (kr_rope_scaling_type)sc;
                    p.factor = 8;
                    p.low_freq_factor = 1;
                    p.high_freq_factor = 4;
                    p.original_max_position_embeddings = 8192;
                    kr_tensor t1 = kr_tensor_bshd(x1.data, (kr_dtype)dt, B, S, H, D);
                    kr_tensor t2 = kr_tensor_bshd(x2.data, (kr_dtype)dt, B, S, H, D);
                    assert_int_equal(kr_rope(ctx_ref, &t1, pos, &p), KR_OK);
                    const int64_t before = accelerated(KR_FEATURE_FUSED_ROPE);
                    assert_int_equal(kr_rope(ctx_cpu, &t2, pos, &p), KR_OK);
                    assert_int_equal(accelerated(KR_FEATURE_FUSED_ROPE), before + 1);
                    double *a = malloc(sizeof(double) * (size_t)x0.n),
                           *b = malloc(sizeof(double) * (size_t)x0.n);
                    for (int64_t i = 0; i < x0.n; i++) {
                        a[i] = kt_get(&x2, i);
                        b[i] = kt_get(&x1, i);
                    }
                    const double e = kt_rel_err(a, b, x0.n);
                    /* the same arithmetic: equal but for rare last-bit cos/sin differences */
                    const double tol = dt == KR_F32 ? 1e-6 : dt == KR_F16 ? 1e-3 : 8e-3;
                    if (!(e <= tol))
                        fail_msg("rope %s layout %d scaling %d D %lld seed %llu: cpu vs ref %.3g",
                                 kr_dtype_name((kr_dtype)dt), lay, sc, (long long)D,
                                 (unsigned long long)id, e);
                    if (e > worst) worst = e;
                    free(a);
                    free(b);
                    kt_buf_free(&x0);
                    kt_buf_free(&x1);
                    kt_buf_free(&x2);
                }
    printf("# cpu rope worst normwise difference from ref: %.2g\n", worst);
}

/* ---- RoPE + (quantise +) append ----------------------------------------------------- */

static void test_kv_append(void **state) {
    (void)state;
    if (!cpu_available(KR_FEATURE_KV_QUANTIZATION)) skip();
    const kr_dtype dts[] = {KR_F32, KR_F16, KR_BF16, KR_I8};
    double worst[4] = {0};
    uint64_t id = 95000;
    for (int d = 0; d < 4; d++)
        for (int lay = 0; lay < 2; lay++)
            for (int rope = 0; rope < 2; rope++, id++) {
                const int64_t B = 2, S = 23, Hkv = 3, D = lay ? 128 : 96, cap = 2 * S;
                kt_rng r = kt_rng_for(id);
                kr_kv_cache_options o = {1, B, cap, Hkv, D, dts[d], {KR_DEVICE_CPU, 0}};
                kr_kv_cache *c1 = NULL, *c2 = NULL;
                assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &c1), KR_OK);
                assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &c2), KR_OK);
                kr_rope_params p = kr_rope_params_default();
                p.layout = (kr_rope_layout)lay;
                for (int step = 0; step < 2; step++) { /* the first append fixes int8 factors */
                    kt_buf k = kt_buf_new(KR_F16, B * S * Hkv * D), v = kt_buf_new(KR_F16, k.n);
                    fill(&r, &k, NULL);
                    fill(&r, &v, NULL);
                    for (int64_t i = 0; i < k.n; i += D) /* an outlier channel */
                        kt_set(&k, i + 5, 20.0 * kt_get(&k, i + 5));
                    kr_tensor tk = kr_tensor_bshd(k.data, KR_F16, B, S, Hkv, D);
                    kr_tensor tv = kr_tensor_bshd(v.data, KR_F16, B, S, Hkv, D);
                    int64_t n_new[2] = {S, S - 7};
                    assert_int_equal(
                        kr_kv_cache_append(ctx_ref, c1, 0, &tk, &tv, n_new, NULL, rope ? &p : NULL),
                        KR_OK);
                    const int64_t before = accelerated(dts[d] == KR_I8 ? KR_FEATURE_KV_QUANTIZATION
                                                                       : KR_FEATURE_FUSED_ROPE);
                    assert_int_equal(
                        kr_kv_cache_append(ctx_cpu, c2, 0, &tk, &tv, n_new, NULL, rope ? &p : NULL),
                        KR_OK);
                    assert_int_equal(accelerated(dts[d] == KR_I8 ? KR_FEATURE_KV_QUANTIZATION
                                                                 : KR_FEATURE_FUSED_ROPE),
                                     before + 1);
                    kt_buf_free(&k);
                    kt_buf_free(&v);
                }
                for (int64_t b = 0; b < B; b++) {
                    const int64_t n = kr_kv_cache_seq_len(c1, 0, b);
                    assert_int_equal(n, kr_kv_cache_seq_len(c2, 0, b));
                    kt_buf k1, v1, k2, v2;
                    assert_int_equal(kt_read_seq(ctx_ref, c1, 0, b, n, Hkv, D, &k1, &v1), KR_OK);
                    assert_int_equal(kt_read_seq(ctx_ref, c2, 0, b, n, Hkv, D, &k2, &v2), KR_OK);
                    double *x = malloc(sizeof(double) * (size_t)k1.n),
                           *y = malloc(sizeof(double) * (size_t)k1.n);
                    for (int w = 0; w < 2; w++) {
                        for (int64_t i = 0; i < k1.n; i++) {
                            x[i] = kt_get(w ? &v2 : &k2, i);
                            y[i] = kt_get(w ? &v1 : &k1, i);
                        }
                        const double e = kt_rel_err(x, y, k1.n);
                        /* same arithmetic as ref: bit-equal but for a rare last-bit cos/sin
                         * difference that can move an int8 code by one step */
                        const double tol = dts[d] == KR_I8 ? 2e-3 : 1e-6;
                        if (!(e <= tol))
                            fail_msg("append %s layout %d rope %d seq %lld %s: cpu vs ref %.3g",
                                     kr_dtype_name(dts[d]), lay, rope, (long long)b, w ? "V" : "K",
                                     e);
                        if (e > worst[d]) worst[d] = e;
                    }
                    free(x);
                    free(y);
                    kt_buf_free(&k1);
                    kt_buf_free(&v1);
                    kt_buf_free(&k2);
                    kt_buf_free(&v2);
                }
                kr_kv_cache_free(c1);
                kr_kv_cache_free(c2);
            }
    printf("# cpu kv append vs ref (read back): f32 %.2g, f16 %.2g, bf16 %.2g, int8 %.2g\n",
           worst[0], worst[1], worst[2], worst[3]);
}

/* A case the cpu backend declines goes to ref with the reason counted. */
static void test_declined_case(void **state) {
    (void)state;
    if (!cpu_available(KR_FEATURE_FLASH_ATTENTION)) skip();
    kr_context *ctx = kt_context();
    float q[72] = {0}, k[72] = {0}, v[72] = {0}, o[72];
    kr_tensor tq = kr_tensor_bshd(q, KR_F32, 1, 1, 1, 72),
              tk = kr_tensor_bshd(k, KR_F32, 1, 1, 1, 72);
    kr_tensor tv = kr_tensor_bshd(v, KR_F32, 1, 1, 1, 72),
              to = kr_tensor_bshd(o, KR_F32, 1, 1, 1, 72);
    assert_int_equal(kr_attention(ctx, &tq, &tk, &tv, &to, NULL), KR_OK);
    kr_feature_info fi;
    kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi);
    assert_int_equal(fi.counters.accelerated, 0);
    assert_non_null(strstr(fi.counters.last_reason, "head_dim 72"));
    kr_context_free(ctx);
}

/* int8 appends of awkward rows, cpu against ref value for value (NaN where
 * ref has NaN): a group of zeros, a whole zero row, a NaN and an infinity
 * (their rows get an unusable scale: codes 0), tiny and huge magnitudes
 * (the f16 row scale overflows), head_dim 64, 96 and 128. */
static void test_kv_append_int8_edges(void **state) {
    (void)state;
    if (!cpu_available(KR_FEATURE_KV_QUANTIZATION)) skip();
    const int64_t dims[] = {64, 96, 128};
    for (int di = 0; di < 3; di++) {
        const int64_t B = 1, S = 6, Hkv = 2, D = dims[di];
        kt_rng r = kt_rng_for(96000 + (uint64_t)di);
        kr_kv_cache_options o = {1, B, 2 * S, Hkv, D, KR_I8, {KR_DEVICE_CPU, 0}};
        kr_kv_cache *c1 = NULL, *c2 = NULL;
        assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &c1), KR_OK);
        assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &c2), KR_OK);
        for (int step = 0; step < 2; step++) { /* the first append fixes the factors */
            kt_buf k = kt_buf_new(KR_F32, B * S * Hkv * D), v = kt_buf_new(KR_F32, k.n);
            fill(&r, &k, NULL);
            fill(&r, &v, NULL);
            if (step == 1) {
                for (int64_t c = 32; c < 64; c++) kt_set(&k, 0 * Hkv * D + c, 0.0); /* zero group */
                for (int64_t c = 0; c < D; c++) kt_set(&v, 1 * Hkv * D + c, 0.0);   /* zero row */
                kt_set(&k, 2 * Hkv * D + 7, NAN);
                kt_set(&v, 3 * Hkv * D + D + 3, INFINITY);
                for (int64_t c = 0; c < D; c++) kt_set(&v, 4 * Hkv * D + c, 1e-6 * (c + 1));
                kt_set(&k, 5 * Hkv * D + D + 1, 3e38); /* amax / 127 overflows f16 */
            }
            kr_tensor tk = kr_tensor_bshd(k.data, KR_F32, B, S, Hkv, D);
            kr_tensor tv = kr_tensor_bshd(v.data, KR_F32, B, S, Hkv, D);
            assert_int_equal(kr_kv_cache_append(ctx_ref, c1, 0, &tk, &tv, NULL, NULL, NULL), KR_OK);
            assert_int_equal(kr_kv_cache_append(ctx_cpu, c2, 0, &tk, &tv, NULL, NULL, NULL), KR_OK);
            kt_buf_free(&k);
            kt_buf_free(&v);
        }
        const int64_t n = kr_kv_cache_seq_len(c1, 0, 0);
        kt_buf k1, v1, k2, v2;
        assert_int_equal(kt_read_seq(ctx_ref, c1, 0, 0, n, Hkv, D, &k1, &v1), KR_OK);
        assert_int_equal(kt_read_seq(ctx_ref, c2, 0, 0, n, Hkv, D, &k2, &v2), KR_OK);
        int64_t nan_seen = 0;
        for (int w = 0; w < 2; w++)
            for (int64_t i = 0; i < k1.n; i++) {
                const double x = kt_get(w ? &v2 : &k2, i), y = kt_get(w ? &v1 : &k1, i);
                nan_seen += y != y;
                if (!(x == y || (x != x && y != y)))
                    fail_msg("int8 append D %lld %s element %lld: cpu %.9g, ref %.9g", (long long)D,
                             w ? "V" : "K", (long long)i, x, y);
            }
        if (!nan_seen) fail_msg("D %lld: the NaN/inf rows did not read back as NaN", (long long)D);
        kt_buf_free(&k1);
        kt_buf_free(&v1);
        kt_buf_free(&k2);
        kt_buf_free(&v2);
        kr_kv_cache_free(c1);
        kr_kv_cache_free(c2);
    }
}

/* int8 appends over the shapes the wide quantiser batches differently: 1, 8
 * and 9 kv heads (2, 16 and 18 rows: one partial batch, one whole, a whole
 * and a partial), head_dim 64/128/256, f16/bf16/f32 inputs, no RoPE
 * (cpu must equal ref value for value), half-split and interleaved RoPE over
 * all or half of the channels (equal but for a rare last-bit cos/sin
 * difference: at most 0.1 % of the values, 2e-3 normwise), an outlier
 * channel (factors other than 1), and a NaN row and an infinite row among
 * the later heads. */
static void test_kv_append_int8_shapes(void **state) {
    (void)state;
    if (!cpu_available(KR_FEATURE_KV_QUANTIZATION)) skip();
    const int64_t heads[] = {1, 8, 9}, dims[] = {64, 128, 256};
    const kr_dtype dts[] = {KR_F16, KR_BF16, KR_F32};
    uint64_t id = 97000;
    int64_t cases = 0;
    for (int hi = 0; hi < 3; hi++)
        for (int di = 0; di < 3; di++)
            for (int ti = 0; ti < 3; ti++)
                for (int rope = 0; rope < 5; rope++, id++) {
                    /* rope: 0 none, 1 half-split, 2 interleaved, 3/4 the same over D/2 */
                    const int64_t B = 2, S = 7, Hkv = heads[hi], D = dims[di];
                    kt_rng r = kt_rng_for(id);
                    kr_kv_cache_options o = {1, B, 2 * S, Hkv, D, KR_I8, {KR_DEVICE_CPU, 0}};
                    kr_kv_cache *c1 = NULL, *c2 = NULL;
                    assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &c1), KR_OK);
                    assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &c2), KR_OK);
                    kr_rope_params p = kr_rope_params_default();
                    p.layout = rope == 2 || rope == 4 ? KR_ROPE_INTERLEAVED : KR_ROPE_HALF_SPLIT;
                    p.rotary_dim = rope >= 3 ? D / 2 : 0;
                    for (int step = 0; step < 2; step++) {
                        kt_buf k = kt_buf_new(dts[ti], B * S * Hkv * D),
                               v = kt_buf_new(dts[ti], k.n);
                        fill(&r, &k, NULL);
                        fill(&r, &v, NULL);
                        for (int64_t i = 0; i < k.n; i += D)
                            kt_set(&k, i + 3, 16.0 * kt_get(&k, i + 3));
                        if (step == 1) { /* token 2 of sequence 0: the last head's rows */
                            const int64_t row = (2 * Hkv + Hkv - 1) * D;
                            kt_set(&k, row + D / 2 + 1, NAN);
                            kt_set(&v, row + 5, -INFINITY);
                        }
                        kr_tensor tk = kr_tensor_bshd(k.data, dts[ti], B, S, Hkv, D);
                        kr_tensor tv = kr_tensor_bshd(v.data, dts[ti], B, S, Hkv, D);
                        int64_t n_new[2] = {S, S - 3};
                        const kr_rope_params *pp = rope ? &p : NULL;
                        assert_int_equal(
                            kr_kv_cache_append(ctx_ref, c1, 0, &tk, &tv, n_new, NULL, pp), KR_OK);
                        assert_int_equal(
                            kr_kv_cache_append(ctx_cpu, c2, 0, &tk, &tv, n_new, NULL, pp), KR_OK);
                        kt_buf_free(&k);
                        kt_buf_free(&v);
                    }
                    for (int64_t b = 0; b < B; b++) {
                        const int64_t n = kr_kv_cache_seq_len(c1, 0, b);
                        kt_buf k1, v1, k2, v2;
                        assert_int_equal(kt_read_seq(ctx_ref, c1, 0, b, n, Hkv, D, &k1, &v1),
                                         KR_OK);
                        assert_int_equal(kt_read_seq(ctx_ref, c2, 0, b, n, Hkv, D, &k2, &v2),
                                         KR_OK);
                        for (int w = 0; w < 2; w++) {
                            int64_t differ = 0, nan_ref = 0;
                            double num = 0, den = 0;
                            for (int64_t i = 0; i < k1.n; i++) {
                                const double x = kt_get(w ? &v2 : &k2, i),
                                             y = kt_get(w ? &v1 : &k1, i);
                                nan_ref += y != y;
                                if (x == y || (x != x && y != y)) continue;
                                differ++;
                                if (x != x || y != y || rope == 0)
                                    fail_msg("int8 append Hkv %lld D %lld %s rope %d seq %lld %s "
                                             "element %lld: cpu %.9g, ref %.9g (seed id %llu)",
                                             (long long)Hkv, (long long)D, kr_dtype_name(dts[ti]),
                                             rope, (long long)b, w ? "V" : "K", (long long)i, x, y,
                                             (unsigned long long)id);
                                num += (x - y) * (x - y);
                            }
                            for (int64_t i = 0; i < k1.n; i++) {
                                const double y = kt_get(w ? &v1 : &k1, i);
                                if (y == y) den += y * y;
                            }
                            if (differ * 1000 > k1.n || num > 4e-6 * den)
                                fail_msg(
                                    "int8 append Hkv %lld D %lld %s rope %d seq %lld %s: %lld of "
                                    "%lld values differ from ref (seed id %llu)",
                                    (long long)Hkv, (long long)D, kr_dtype_name(dts[ti]), rope,
                                    (long long)b, w ? "V" : "K", (long long)differ, (long long)k1.n,
                                    (unsigned long long)id);
                            if (b == 0 && nan_ref == 0)
                                fail_msg(
                                    "Hkv %lld D %lld: the NaN/inf row did not read back as NaN",
                                    (long long)Hkv, (long long)D);
                        }
                        kt_buf_free(&k1);
                        kt_buf_free(&v1);
                        kt_buf_free(&k2);
                        kt_buf_free(&v2);
                    }
                    kr_kv_cache_free(c1);
                    kr_kv_cache_free(c2);
                    cases++;
                }
    printf("# cpu int8 append vs ref over %lld shapes: equal (RoPE: but rare last-bit cos/sin)\n",
           (long long)cases);
}

/* Prefill-sized appends: every thread's share of the tokens writes more than
 * 1 MiB, so the rows go by non-temporal stores (the int8 quantiser's codes,
 * and a same-dtype float cache's rows), after a first append that leaves the
 * second one's slots mid-cache. They read back equal to ref's value for
 * value (int8 with RoPE: but for rare last-bit cos/sin differences, as
 * above). */
static void test_kv_append_long_run(void **state) {
    (void)state;
    if (!cpu_available(KR_FEATURE_KV_QUANTIZATION)) skip();
    int64_t threads = kr_context_threads(ctx_cpu);
    if (threads < 1 || threads > 64) threads = 64;
    const int64_t B = 1, Hkv = 8, D = 128, S1 = 5, S = 520 * threads;
    const kr_dtype cache_dt[] = {KR_I8, KR_F16, KR_BF16, KR_F32};
    const kr_dtype in_dt[] = {KR_F16, KR_F16, KR_BF16, KR_F32};
    /* quick (valgrind's pass): the int8 and f16 caches, with RoPE */
    const int n_dt = kt_quick() ? 2 : 4;
    for (int d = 0; d < n_dt; d++)
        for (int rope = kt_quick() ? 1 : 0; rope < 2; rope++) {
            const uint64_t id = 98000 + (uint64_t)(2 * d + rope);
            const kr_dtype dt = in_dt[d];
            kt_rng r = kt_rng_for(id);
            kr_kv_cache_options o = {1, B, S1 + S, Hkv, D, cache_dt[d], {KR_DEVICE_CPU, 0}};
            kr_kv_cache *c1 = NULL, *c2 = NULL;
            assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &c1), KR_OK);
            assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &c2), KR_OK);
            kr_rope_params p = kr_rope_params_default();
            const kr_rope_params *pp = rope ? &p : NULL;
            for (int step = 0; step < 2; step++) {
                const int64_t n = step ? S : S1;
                kt_buf k = kt_buf_new(dt, B * n * Hkv * D), v = kt_buf_new(dt, k.n);
                fill(&r, &k, NULL);
                fill(&r, &v, NULL);
                kr_tensor tk = kr_tensor_bshd(k.data, dt, B, n, Hkv, D);
                kr_tensor tv = kr_tensor_bshd(v.data, dt, B, n, Hkv, D);
                assert_int_equal(kr_kv_cache_append(ctx_ref, c1, 0, &tk, &tv, NULL, NULL, pp),
                                 KR_OK);
                assert_int_equal(kr_kv_cache_append(ctx_cpu, c2, 0, &tk, &tv, NULL, NULL, pp),
                                 KR_OK);
                kt_buf_free(&k);
                kt_buf_free(&v);
            }
            kt_buf k1, v1, k2, v2;
            assert_int_equal(kt_read_seq(ctx_ref, c1, 0, 0, S1 + S, Hkv, D, &k1, &v1), KR_OK);
            assert_int_equal(kt_read_seq(ctx_ref, c2, 0, 0, S1 + S, Hkv, D, &k2, &v2), KR_OK);
            for (int w = 0; w < 2; w++) {
                int64_t differ = 0;
                for (int64_t i = 0; i < k1.n; i++) {
                    const double x = kt_get(w ? &v2 : &k2, i), y = kt_get(w ? &v1 : &k1, i);
                    if (x == y) continue;
                    differ++;
                    if (!rope || cache_dt[d] != KR_I8 || x != x || y != y)
                        fail_msg("%s append of %lld tokens, rope %d, %s element %lld: cpu %.9g, "
                                 "ref %.9g (seed id %llu)",
                                 kr_dtype_name(cache_dt[d]), (long long)S, rope, w ? "V" : "K",
                                 (long long)i, x, y, (unsigned long long)id);
                }
                if (differ * 1000 > k1.n)
                    fail_msg("%s append of %lld tokens, rope %d, %s: %lld of %lld values differ",
                             kr_dtype_name(cache_dt[d]), (long long)S, rope, w ? "V" : "K",
                             (long long)differ, (long long)k1.n);
            }
            kt_buf_free(&k1);
            kt_buf_free(&v1);
            kt_buf_free(&k2);
            kt_buf_free(&v2);
            kr_kv_cache_free(c1);
            kr_kv_cache_free(c2);
        }
    printf("# cpu appends of %lld tokens into %s caches (streamed rows) vs ref: equal\n",
           (long long)S, n_dt == 4 ? "int8/f16/bf16/f32" : "int8/f16");
}

int main(void) {
    kt_base_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_grid),
        cmocka_unit_test(test_kv_cache_attention),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_kv_append),
        cmocka_unit_test(test_kv_cache_int8_grid),
        cmocka_unit_test(test_kv_cache_int8_dot_off),
        cmocka_unit_test(test_kv_append_int8_edges),
        cmocka_unit_test(test_kv_append_int8_shapes),
        cmocka_unit_test(test_kv_append_long_run),
        cmocka_unit_test(test_declined_case),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
