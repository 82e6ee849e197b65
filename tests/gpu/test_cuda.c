/*
 * test_cuda.c — the CUDA package's conformance driver (run on a GPU by
 * tests/gpu/run.sh; without a usable device every test reports SKIPPED).
 *
 * Each case runs three ways: in a reference-only context on host copies
 * (ref), in a context with acceleration on (the cuda kernels where they
 * apply, else the in-device reference cuda-unfused), and in a context with
 * acceleration off (cuda-unfused for everything). Both device results are
 * compared with ref and, for attention, with the float64 oracle; outputs
 * are poisoned with NaN before each call; counters must show which backend
 * served it. Every case prints its parameters and seed on failure
 * (KR_TEST_SEED re-runs it).
 *
 * Also: the device-memory API and its refusals, RoPE (every layout and
 * scaling, host and device positions, strided views), the device KV cache
 * (f32/f16/bf16/int8: append with RoPE read back against ref, decode and
 * chunked prefill against ref, int8 against fp16 within 1 %), and fault
 * injection proving the in-device fallback.
 */
#include "../common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kr_context *ctx_ref, *ctx_gpu, *ctx_unf;
static char no_gpu[512];
static const kr_device DEV = {KR_DEVICE_CUDA, 0};

static kr_context *make(int accel) {
    kr_context_options o = kr_context_options_default();
    o.acceleration = accel;
    o.fallback_to_reference = 0;
    o.deny_backends = "test";
    o.log_level = KR_LOG_OFF;
    kr_context *c = NULL;
    char err[512];
    if (kr_context_create(&o, &c, err, sizeof err) != KR_OK) fail_msg("context: %s", err);
    return c;
}

static int setup(void **state) {
    (void)state;
    ctx_ref = make(0);
    ctx_gpu = make(1);
    ctx_unf = make(0);
    void *p = NULL;
    if (kr_device_alloc(ctx_gpu, DEV, 16, &p) != KR_OK)
        snprintf(no_gpu, sizeof no_gpu, "%s", kr_context_last_error(ctx_gpu));
    kr_device_free(ctx_gpu, DEV, p);
    if (no_gpu[0]) printf("# SKIP: no usable CUDA device: %s\n", no_gpu);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kr_context_free(ctx_ref);
    kr_context_free(ctx_gpu);
    kr_context_free(ctx_unf);
    return 0;
}

#define NEED_GPU()                                                                                 \
    do {                                                                                           \
        if (no_gpu[0]) skip();                                                                     \
    } while (0)

/* A device copy of a host buffer. */
static void *to_dev(kr_context *ctx, const kt_buf *b) {
    const size_t bytes = (size_t)b->n * kr_dtype_size(b->dt);
    void *d = NULL;
    if (kr_device_alloc(ctx, DEV, bytes, &d) != KR_OK ||
        kr_device_copy(ctx, d, DEV, b->data, kr_device_cpu(), bytes) != KR_OK)
        fail_msg("to_dev: %s", kr_context_last_error(ctx));
    return d;
}

static void from_dev(kr_context *ctx, kt_buf *b, const void *d) {
    if (kr_context_synchronize(ctx) != KR_OK ||
        kr_device_copy(ctx, b->data, kr_device_cpu(), d, DEV, (size_t)b->n * kr_dtype_size(b->dt)))
        fail_msg("from_dev: %s", kr_context_last_error(ctx));
}

/* A device buffer filled with NaN bytes (0xff: NaN in f32/f16/bf16). */
static void *dev_poisoned(kr_context *ctx, kr_dtype dt, int64_t n) {
    void *d = NULL;
    const size_t bytes = (size_t)n * kr_dtype_size(dt);
    if (kr_device_alloc(ctx, DEV, bytes, &d) != KR_OK || kr_device_fill(ctx, DEV, d, 0xff, bytes))
        fail_msg("dev_poisoned: %s", kr_context_last_error(ctx));
    return d;
}

static int64_t served(kr_context *ctx, const char *backend, kr_feature f) {
    for (int32_t i = 0; i < kr_accel_backend_count(ctx); i++) {
        kr_backend_info bi;
        kr_accel_backend_info(ctx, i, &bi);
        if (!strcmp(bi.name, backend)) return bi.calls[f];
    }
    return -1;
}

/* The attention counters' last fallback reason. */
static const char *last_reason(kr_context *ctx) {
    static kr_feature_info fi;
    if (kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi) != KR_OK) return "?";
    return fi.counters.last_reason;
}

static void fill(kt_rng *r, kt_buf *b, double *d) {
    for (int64_t i = 0; i < b->n; i++) {
        const double x = kt_round(b->dt, kt_normal(r));
        kt_set(b, i, x);
        if (d) d[i] = x;
    }
}

static double tol_for(kr_dtype dt) { return dt == KR_F32 ? 1e-5 : dt == KR_F16 ? 1e-3 : 8e-3; }

static double *as_double(const kt_buf *b) {
    double *d = malloc(sizeof(double) * (size_t)b->n);
    for (int64_t i = 0; i < b->n; i++) d[i] = kt_get(b, i);
    return d;
}

/* ---- device memory API --------------------------------------------------------------- */

static void test_device_api(void **state) {
    (void)state;
    NEED_GPU();
    kr_context *ctx = ctx_gpu;
    float host[1000], back[1000];
    for (int i = 0; i < 1000; i++) host[i] = (float)i * 0.5f;
    void *d = NULL, *d2 = NULL;
    assert_int_equal(kr_device_alloc(ctx, DEV, sizeof host, &d), KR_OK);
    assert_int_equal(kr_device_alloc(ctx, DEV, sizeof host, &d2), KR_OK);
    assert_int_equal(kr_device_copy(ctx, d, DEV, host, kr_device_cpu(), sizeof host), KR_OK);
    assert_int_equal(kr_device_copy(ctx, d2, DEV, d, DEV, sizeof host), KR_OK);
    assert_int_equal(kr_device_copy(ctx, back, kr_device_cpu(), d2, DEV, sizeof host), KR_OK);
    assert_memory_equal(host, back, sizeof host);
    assert_int_equal(kr_device_fill(ctx, DEV, d2, 0, sizeof host), KR_OK);
    assert_int_equal(kr_device_copy(ctx, back, kr_device_cpu(), d2, DEV, sizeof host), KR_OK);
    assert_true(back[999] == 0.0f);
    /* A host pointer tagged CUDA is refused, never touched. */
    kr_tensor th = kr_tensor_on(kr_tensor_bshd(host, KR_F32, 1, 1, 1, 1000), DEV);
    kr_tensor td = kr_tensor_on(kr_tensor_bshd(d, KR_F32, 1, 1, 1, 1000), DEV);
    kr_tensor to = kr_tensor_on(kr_tensor_bshd(d2, KR_F32, 1, 1, 1, 1000), DEV);
    assert_int_equal(kr_attention(ctx, &th, &td, &td, &to, NULL), KR_ERR_DEVICE);
    assert_non_null(strstr(kr_context_last_error(ctx), "host memory"));
    /* Mixed devices are refused with both named. */
    kr_tensor tc = kr_tensor_bshd(host, KR_F32, 1, 1, 1, 1000);
    assert_int_equal(kr_attention(ctx, &td, &tc, &td, &to, NULL), KR_ERR_DEVICE);
    assert_non_null(strstr(kr_context_last_error(ctx), "cpu:0"));
    /* A device that does not exist. */
    void *bad = NULL;
    assert_int_equal(kr_device_alloc(ctx, kr_device_cuda(15), 16, &bad), KR_ERR_DEVICE);
    printf("# cuda:15: %s\n", kr_context_last_error(ctx));
    /* Streams: the context's own, a caller's, back again. */
    void *s0 = NULL;
    assert_int_equal(kr_context_get_stream(ctx, DEV, &s0), KR_OK);
    assert_non_null(s0);
    assert_int_equal(kr_context_set_stream(ctx, DEV, NULL), KR_OK);
    assert_int_equal(kr_context_synchronize(ctx), KR_OK);
    assert_int_equal(kr_device_free(ctx, DEV, d), KR_OK);
    assert_int_equal(kr_device_free(ctx, DEV, d2), KR_OK);
    assert_int_equal(kr_device_free(ctx, DEV, NULL), KR_OK);
}

/* ---- attention ------------------------------------------------------------------------- */

typedef struct acase {
    int64_t B, Sq, Skv, H, Hkv, D;
    kr_dtype dt;
    int causal, mask, ragged, lse, bhsd;
    int64_t wl;
    uint64_t id;
} acase;

static double worst_dec[3], worst_unf[3];
static int n_fast, n_unfused_only;

static void run_attention(const acase *c) {
    static int n_cases;
    if (++n_cases % 60 == 0) printf("# attention case %d\n", n_cases);
    const bool verbose = getenv("KR_TEST_VERBOSE") != NULL;
    char desc[256];
    snprintf(desc, sizeof desc,
             "attention B=%lld Sq=%lld Skv=%lld H=%lld Hkv=%lld D=%lld %s causal=%d wl=%lld "
             "mask=%d ragged=%d lse=%d bhsd=%d seed=%llu",
             (long long)c->B, (long long)c->Sq, (long long)c->Skv, (long long)c->H,
             (long long)c->Hkv, (long long)c->D, kr_dtype_name(c->dt), c->causal, (long long)c->wl,
             c->mask, c->ragged, c->lse, c->bhsd, (unsigned long long)c->id);
    kt_rng r = kt_rng_for(c->id ^ kt_base_seed());
    const int64_t nq = c->B * c->Sq * c->H * c->D, nk = c->B * c->Skv * c->Hkv * c->D;
    const int64_t nl = c->B * c->H * c->Sq;
    kt_buf q = kt_buf_new(c->dt, nq), k = kt_buf_new(c->dt, nk), v = kt_buf_new(c->dt, nk);
    kt_buf o_ref = kt_buf_new(c->dt, nq), o_dev = kt_buf_new(c->dt, nq);
    kt_buf l_ref = kt_buf_new(KR_F32, nl), l_dev = kt_buf_new(KR_F32, nl);
    double *qd = malloc(sizeof(double) * (size_t)nq), *kd = malloc(sizeof(double) * (size_t)nk);
    double *vd = malloc(sizeof(double) * (size_t)nk), *od = malloc(sizeof(double) * (size_t)nq);
    double *ld = malloc(sizeof(double) * (size_t)nl);
    fill(&r, &q, qd);
    fill(&r, &k, kd);
    fill(&r, &v, vd);
    kr_tensor (*view)(void *, kr_dtype, int64_t, int64_t, int64_t, int64_t) =
        c->bhsd ? kr_tensor_bhsd : kr_tensor_bshd;
    /* The oracle reads BSHD; a BHSD case stores k/v transposed. */
    if (c->bhsd) {
        kt_buf kt = kt_buf_new(c->dt, nk), vt = kt_buf_new(c->dt, nk);
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t s = 0; s < c->Skv; s++)
                for (int64_t h = 0; h < c->Hkv; h++)
                    for (int64_t d = 0; d < c->D; d++) {
                        const int64_t src = ((b * c->Skv + s) * c->Hkv + h) * c->D + d;
                        const int64_t dst = ((b * c->Hkv + h) * c->Skv + s) * c->D + d;
                        kt_set(&kt, dst, kd[src]);
                        kt_set(&vt, dst, vd[src]);
                    }
        kt_buf_free(&k);
        kt_buf_free(&v);
        k = kt;
        v = vt;
    }
    kr_tensor tq = kr_tensor_bshd(q.data, c->dt, c->B, c->Sq, c->H, c->D);
    kr_tensor tk = view(k.data, c->dt, c->B, c->Skv, c->Hkv, c->D);
    kr_tensor tv = view(v.data, c->dt, c->B, c->Skv, c->Hkv, c->D);
    kr_tensor tor = kr_tensor_bshd(o_ref.data, c->dt, c->B, c->Sq, c->H, c->D);
    kr_tensor tlr = kr_tensor_contiguous(l_ref.data, KR_F32, c->B, c->H, c->Sq, 1);
    kr_attention_params p = kr_attention_params_default();
    p.causal = c->causal;
    p.window_left = c->wl;
    kt_attn_case oc = {c->B,      c->Sq, c->Skv, c->H, c->Hkv, c->D, 1.0 / sqrt((double)c->D),
                       c->causal, c->wl, -1,     NULL, 1,      1,    NULL};
    double *md = NULL;
    kt_buf mb = {0};
    kr_tensor mt = {0}, mt_dev = {0};
    void *mask_dev = NULL;
    if (c->mask) {
        const int64_t nm = c->H * c->Sq * c->Skv;
        md = malloc(sizeof(double) * (size_t)nm);
        mb = kt_buf_new(KR_F32, nm);
        for (int64_t i = 0; i < nm; i++) {
            md[i] = kt_uniform(&r) < 0.1 ? -INFINITY : kt_round(KR_F32, kt_normal(&r));
            kt_set(&mb, i, md[i]);
        }
        mt = kr_tensor_contiguous(mb.data, KR_F32, 1, c->H, c->Sq, c->Skv);
        mask_dev = to_dev(ctx_gpu, &mb);
        mt_dev = kr_tensor_on(kr_tensor_contiguous(mask_dev, KR_F32, 1, c->H, c->Sq, c->Skv), DEV);
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
    if (verbose) printf("# %s\n", desc);
    kt_poison(&o_ref);
    if (c->lse) p.lse = &tlr;
    if (c->mask) p.mask = &mt;
    if (kr_attention(ctx_ref, &tq, &tk, &tv, &tor, &p) != KR_OK)
        fail_msg("%s: ref: %s", desc, kr_context_last_error(ctx_ref));
    kt_oracle_attention(&oc, qd, kd, vd, od, ld);
    double *gr = as_double(&o_ref);
    if (verbose) printf("#   ref and oracle done\n");
    /* Device runs: accelerated context, then acceleration off. */
    for (int run = 0; run < 2; run++) {
        kr_context *ctx = run ? ctx_unf : ctx_gpu;
        void *dq = to_dev(ctx, &q), *dk = to_dev(ctx, &k), *dv = to_dev(ctx, &v);
        void *dout = dev_poisoned(ctx, c->dt, nq), *dl = dev_poisoned(ctx, KR_F32, nl);
        kr_tensor gq = kr_tensor_on(kr_tensor_bshd(dq, c->dt, c->B, c->Sq, c->H, c->D), DEV);
        kr_tensor gk = kr_tensor_on(view(dk, c->dt, c->B, c->Skv, c->Hkv, c->D), DEV);
        kr_tensor gv = kr_tensor_on(view(dv, c->dt, c->B, c->Skv, c->Hkv, c->D), DEV);
        kr_tensor go = kr_tensor_on(kr_tensor_bshd(dout, c->dt, c->B, c->Sq, c->H, c->D), DEV);
        kr_tensor gl = kr_tensor_on(kr_tensor_contiguous(dl, KR_F32, c->B, c->H, c->Sq, 1), DEV);
        kr_attention_params pd = p;
        pd.lse = c->lse ? &gl : NULL;
        pd.mask = c->mask ? &mt_dev : NULL;
        const int64_t fast0 = served(ctx, "cuda", KR_FEATURE_FLASH_ATTENTION);
        const int64_t unf0 = served(ctx, "cuda-unfused", KR_FEATURE_FLASH_ATTENTION);
        if (verbose) printf("#   run %d: inputs on the device\n", run);
        if (kr_attention(ctx, &gq, &gk, &gv, &go, &pd) != KR_OK)
            fail_msg("%s run %d: %s", desc, run, kr_context_last_error(ctx));
        if (verbose) printf("#   run %d: queued\n", run);
        const bool fast = served(ctx, "cuda", KR_FEATURE_FLASH_ATTENTION) == fast0 + 1;
        const bool unf = served(ctx, "cuda-unfused", KR_FEATURE_FLASH_ATTENTION) == unf0 + 1;
        if (fast == unf || (run == 1 && fast))
            fail_msg("%s run %d: served by cuda %d / cuda-unfused %d", desc, run, fast, unf);
        /* the cases the fast kernels cover must reach them: decode (Sq <= 16) takes
         * head_dim 64/128/256, prefill 64/128; both f16/bf16 K/V without a mask */
        const bool expect_fast = (c->dt == KR_F16 || c->dt == KR_BF16) && !c->mask &&
                                 (c->D == 64 || c->D == 128 || (c->D == 256 && c->Sq <= 16));
        if (run == 0 && expect_fast && !fast)
            fail_msg("%s: fell back to cuda-unfused (%s)", desc, last_reason(ctx));
        if (run == 0) fast ? n_fast++ : n_unfused_only++;
        from_dev(ctx, &o_dev, dout);
        from_dev(ctx, &l_dev, dl);
        double *gd = as_double(&o_dev);
        const double eo = kt_rel_err(gd, od, nq), er = kt_rel_err(gd, gr, nq);
        const double tol = tol_for(c->dt);
        const char *who = fast ? "cuda" : "cuda-unfused";
        if (!(eo <= tol)) fail_msg("%s: %s vs oracle %.3g > %.1g", desc, who, eo, tol);
        if (!(er <= tol)) fail_msg("%s: %s vs ref %.3g > %.1g", desc, who, er, tol);
        for (int64_t i = 0; i < nq; i++)
            if (od[i] == 0.0 && gd[i] != 0.0)
                fail_msg("%s: %s element %lld must be 0, got %g", desc, who, (long long)i, gd[i]);
        if (c->lse)
            for (int64_t i = 0; i < nl; i++) {
                const double g = kt_get(&l_dev, i), w = ld[i];
                if (w == -INFINITY ? g != -INFINITY : !(fabs(g - w) <= 2e-5 * (1 + fabs(w))))
                    fail_msg("%s: %s lse[%lld] = %.9g, oracle %.9g", desc, who, (long long)i, g, w);
            }
        double *worst = fast ? worst_dec : worst_unf;
        if (eo > worst[c->dt]) worst[c->dt] = eo;
        free(gd);
        void *bufs[] = {dq, dk, dv, dout, dl};
        for (int i = 0; i < 5; i++) kr_device_free(ctx, DEV, bufs[i]);
    }
    kr_device_free(ctx_gpu, DEV, mask_dev);
    kt_buf_free(&q);
    kt_buf_free(&k);
    kt_buf_free(&v);
    kt_buf_free(&o_ref);
    kt_buf_free(&o_dev);
    kt_buf_free(&l_ref);
    kt_buf_free(&l_dev);
    kt_buf_free(&mb);
    free(qd);
    free(kd);
    free(vd);
    free(od);
    free(ld);
    free(gr);
    free(md);
    free(lens);
}

static void test_attention_grid(void **state) {
    (void)state;
    NEED_GPU();
    /* decode (Sq <= 16) and prefill shapes: tile +- 1, Sq > Skv (bottom-right causal
     * leaves the first rows empty), a long chunk over many tiles */
    static const int64_t sq_skv[][2] = {{1, 1},    {1, 7},     {1, 1000},  {1, 4097}, {3, 65},
                                        {17, 64},  {65, 65},   {16, 1000}, {7, 300},  {130, 130},
                                        {200, 77}, {96, 1000}, {300, 700}};
    static const int64_t dims[] = {64, 80, 128, 256};
    static const int64_t gqa[] = {1, 4, 8};
    uint64_t id = 500000;
    /* KR_TEST_QUICK (compute-sanitizer): the small shapes and one prefill shape
     * over two row blocks and two key tiles */
    const size_t n_shapes = sizeof sq_skv / sizeof sq_skv[0];
    /* KR_TEST_SQ=n: the shapes with Sq = n only (a sanitizer run on one shape) */
    const char *only = getenv("KR_TEST_SQ");
    const int64_t only_sq = only ? strtoll(only, NULL, 10) : -1;
    for (size_t s = 0; s < n_shapes; s++)
        if ((!kt_quick() || s < 5 || sq_skv[s][0] == 130) &&
            (only_sq < 0 || sq_skv[s][0] == only_sq))
            for (int di = 0; di < 4; di++)
                for (int g = 0; g < 3; g++)
                    for (int dt = 0; dt < 3; dt++, id++) {
                        /* the largest shape: the prefill kernels' head dims only (the
                         * host reference and oracle dominate the run time) */
                        if (sq_skv[s][0] * sq_skv[s][1] > 100000 && dims[di] != 64 &&
                            dims[di] != 128)
                            continue;
                        acase c = {0};
                        c.B = 2, c.Hkv = 2, c.H = 2 * gqa[g], c.D = dims[di];
                        c.Sq = sq_skv[s][0], c.Skv = sq_skv[s][1];
                        c.dt = (kr_dtype)dt;
                        c.id = id;
                        c.wl = -1;
                        /* Rotate the variants through the grid. */
                        switch (id % 6) {
                        case 0: c.causal = 1; break;
                        case 1: c.ragged = 1, c.lse = 1; break;
                        case 2: c.mask = 1; break;
                        case 3: c.causal = 1, c.wl = 50; break;
                        case 4: c.bhsd = 1, c.lse = 1; break;
                        default: c.causal = 1, c.ragged = 1; break;
                        }
                        run_attention(&c);
                    }
    /* More row blocks than SMs (132 on an H100): the Hopper kernel's blocks
     * are persistent and take items from its work counter — causal items of
     * unequal cost, ragged lengths; head_dim 64 with two consumers (400 rows)
     * and three (1100); non-causal head_dim 128 on the round-robin kernel. Also in a quick run with
     * KR_TEST_SQ=400 or 1100 (the sanitizers on that path). */
    static const acase many[] = {
        {3, 400, 400, 24, 8, 64, KR_BF16, 1, 0, 1, 0, 0, -1, 778},
        {3, 400, 400, 24, 8, 128, KR_F16, 1, 0, 0, 1, 0, -1, 779},
        {3, 400, 400, 24, 8, 128, KR_BF16, 0, 0, 1, 0, 0, -1, 780},
        {1, 1100, 1100, 24, 8, 64, KR_F16, 0, 0, 0, 1, 0, -1, 781},
        {1, 1100, 1100, 24, 8, 64, KR_BF16, 1, 0, 1, 0, 0, -1, 782},
        /* non-causal head_dim 128: the round-robin kernel (under 2048 keys) and
         * the wide-tile one (176 keys a tile), keys not a whole number of tiles;
         * 112-288 row blocks, enough not to be split onto the sm_80 kernel, up
         * to three a persistent block */
        {3, 400, 1000, 24, 8, 128, KR_F16, 0, 0, 1, 1, 0, -1, 783},
        {1, 400, 2100, 28, 4, 128, KR_BF16, 0, 0, 1, 1, 0, -1, 784},
        {1, 400, 2100, 28, 4, 128, KR_F16, 0, 0, 0, 0, 1, -1, 785},
        /* O staged in shared memory and stored by bulk tensor copies (head_dim
         * 128 up to 1K keys, causal or not) into a BHSD output: the tensor map
         * takes the output's strides; 400 rows clip the last row block */
        {3, 400, 700, 24, 8, 128, KR_BF16, 1, 0, 0, 0, 1, -1, 786},
        {3, 400, 400, 24, 8, 128, KR_F16, 0, 0, 0, 1, 1, -1, 787},
        /* decode grids of more blocks than the SMs hold (several waves): one
         * split (320 blocks, output stored directly), four splits of head_dim
         * 64 with ragged lengths (merged by the last split), a window, five
         * query rows */
        {40, 1, 1000, 32, 8, 128, KR_F16, 0, 0, 0, 1, 0, -1, 788},
        {24, 1, 3000, 16, 8, 64, KR_BF16, 1, 0, 1, 0, 1, -1, 789},
        {16, 1, 2000, 32, 8, 128, KR_BF16, 1, 0, 0, 1, 0, 100, 790},
        {16, 5, 2000, 32, 8, 128, KR_F16, 1, 0, 1, 1, 0, -1, 791},
    };
    for (size_t i = 0; i < sizeof many / sizeof many[0]; i++)
        if (only_sq == many[i].Sq || (!kt_quick() && only_sq < 0)) run_attention(&many[i]);
    if (kt_quick()) return;
    /* More than KR_CU_INLINE sequences: lengths travel through device memory. */
    acase big = {70, 1, 300, 8, 2, 128, KR_F16, 1, 0, 1, 1, 0, -1, 777};
    run_attention(&big);
    printf("# attention: %d cases on the cuda kernels, %d on cuda-unfused only; worst vs oracle "
           "cuda f32 %.2g f16 %.2g bf16 %.2g; cuda-unfused f32 %.2g f16 %.2g bf16 %.2g\n",
           n_fast, n_unfused_only, worst_dec[0], worst_dec[1], worst_dec[2], worst_unf[0],
           worst_unf[1], worst_unf[2]);
}

/* ---- RoPE ------------------------------------------------------------------------------ */

static void test_rope(void **state) {
    (void)state;
    NEED_GPU();
    uint64_t id = 600000;
    const int64_t dims[] = {6, 64, 80, 128, 256};
    int64_t n_exact = 0, n_total = 0;
    double worst = 0;
    for (int dt = 0; dt < 3; dt++)
        for (int lay = 0; lay < 2; lay++)
            for (int sc = 0; sc < 4; sc++)
                for (int di = 0; di < 5; di++)
                    for (int var = 0; var < 3; var++, id++) {
                        if (kt_quick() && (sc > 1 || di % 2)) continue;
                        /* var 0: host positions; 1: device positions; 2: BHSD (strided) */
                        const int64_t B = 2, S = 37, H = 5, D = dims[di];
                        kt_rng r = kt_rng_for(id ^ kt_base_seed());
                        kt_buf x = kt_buf_new((kr_dtype)dt, B * S * H * D);
                        fill(&r, &x, NULL);
                        int64_t pos[2 * 37];
                        for (int i = 0; i < B * S; i++) pos[i] = kt_int(&r, 200000);
                        kr_rope_params p = kr_rope_params_default();
                        p.layout = (kr_rope_layout)lay;
                        p.theta = 500000;
                        p.rotary_dim = di == 2 ? 48 : 0;
                        p.scaling = (kr_rope_scaling_type)sc;
                        p.factor = 8;
                        p.low_freq_factor = 1;
                        p.high_freq_factor = 4;
                        p.original_max_position_embeddings = 8192;
                        kt_buf want = kt_buf_new((kr_dtype)dt, x.n),
                               got = kt_buf_new((kr_dtype)dt, x.n);
                        memcpy(want.data, x.data, (size_t)x.n * kr_dtype_size(x.dt));
                        kr_tensor (*view)(void *, kr_dtype, int64_t, int64_t, int64_t, int64_t) =
                            var == 2 ? kr_tensor_bhsd : kr_tensor_bshd;
                        kr_tensor th = view(want.data, x.dt, B, S, H, D);
                        assert_int_equal(kr_rope(ctx_ref, &th, pos, &p), KR_OK);
                        void *dx = to_dev(ctx_gpu, &x);
                        kr_tensor td = kr_tensor_on(view(dx, x.dt, B, S, H, D), DEV);
                        const int64_t *gpos = pos;
                        void *dpos = NULL;
                        if (var == 1) {
                            assert_int_equal(kr_device_alloc(ctx_gpu, DEV, sizeof pos, &dpos),
                                             KR_OK);
                            assert_int_equal(kr_device_copy(ctx_gpu, dpos, DEV, pos,
                                                            kr_device_cpu(), sizeof pos),
                                             KR_OK);
                            gpos = dpos;
                        }
                        const int64_t before = served(ctx_gpu, "cuda", KR_FEATURE_FUSED_ROPE);
                        if (kr_rope(ctx_gpu, &td, gpos, &p) != KR_OK)
                            fail_msg("rope seed %llu: %s", (unsigned long long)id,
                                     kr_context_last_error(ctx_gpu));
                        assert_int_equal(served(ctx_gpu, "cuda", KR_FEATURE_FUSED_ROPE),
                                         before + 1);
                        from_dev(ctx_gpu, &got, dx);
                        double *a = as_double(&got), *b = as_double(&want);
                        const double e = kt_rel_err(a, b, x.n);
                        n_exact += !memcmp(got.data, want.data, (size_t)x.n * kr_dtype_size(x.dt));
                        n_total++;
                        /* Same arithmetic as ref; the double cos/sin may differ in a last bit. */
                        if (!(e <= 1e-6))
                            fail_msg(
                                "rope %s layout %d scaling %d D %lld var %d seed %llu: vs ref %.3g",
                                kr_dtype_name(x.dt), lay, sc, (long long)D, var,
                                (unsigned long long)id, e);
                        if (e > worst) worst = e;
                        free(a);
                        free(b);
                        kr_device_free(ctx_gpu, DEV, dx);
                        kr_device_free(ctx_gpu, DEV, dpos);
                        kt_buf_free(&x);
                        kt_buf_free(&want);
                        kt_buf_free(&got);
                    }
    printf("# rope: %lld of %lld cases bit-identical to ref; worst normwise %.2g\n",
           (long long)n_exact, (long long)n_total, worst);
}

/* ---- KV cache on the device ------------------------------------------------------------- */

/* A device copy of a host buffer one element past a 16-byte boundary
 * (rows no longer 16-byte aligned); free *base. */
static void *to_dev_shifted(kr_context *ctx, const kt_buf *b, void **base) {
    const size_t es = kr_dtype_size(b->dt), bytes = (size_t)b->n * es;
    if (kr_device_alloc(ctx, DEV, bytes + es, base) != KR_OK ||
        kr_device_copy(ctx, (char *)*base + es, DEV, b->data, kr_device_cpu(), bytes) != KR_OK)
        fail_msg("to_dev_shifted: %s", kr_context_last_error(ctx));
    return (char *)*base + es;
}

/* Appends the same K/V to a host cache (ref) and a device cache (gpu);
 * shifted: the device K/V rows are not 16-byte aligned (the kernels' element-wise path). */
static void append_both(kr_kv_cache *ch, kr_kv_cache *cd, const kt_buf *k, const kt_buf *v,
                        int64_t B, int64_t S, int64_t Hkv, int64_t D, const int64_t *n_new,
                        const kr_rope_params *rp, bool shifted) {
    kr_tensor hk = kr_tensor_bshd(k->data, k->dt, B, S, Hkv, D);
    kr_tensor hv = kr_tensor_bshd(v->data, v->dt, B, S, Hkv, D);
    assert_int_equal(kr_kv_cache_append(ctx_ref, ch, 0, &hk, &hv, n_new, NULL, rp), KR_OK);
    void *dk, *dv;
    void *pk = shifted ? to_dev_shifted(ctx_gpu, k, &dk) : (dk = to_dev(ctx_gpu, k));
    void *pv = shifted ? to_dev_shifted(ctx_gpu, v, &dv) : (dv = to_dev(ctx_gpu, v));
    kr_tensor gk = kr_tensor_on(kr_tensor_bshd(pk, k->dt, B, S, Hkv, D), DEV);
    kr_tensor gv = kr_tensor_on(kr_tensor_bshd(pv, v->dt, B, S, Hkv, D), DEV);
    if (kr_kv_cache_append(ctx_gpu, cd, 0, &gk, &gv, n_new, NULL, rp) != KR_OK)
        fail_msg("device append: %s", kr_context_last_error(ctx_gpu));
    assert_int_equal(kr_context_synchronize(ctx_gpu), KR_OK);
    kr_device_free(ctx_gpu, DEV, dk);
    kr_device_free(ctx_gpu, DEV, dv);
}

static double read_back_err(kr_kv_cache *ch, kr_kv_cache *cd, int64_t B, int64_t Hkv, int64_t D) {
    double worst = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t n = kr_kv_cache_seq_len(ch, 0, b);
        assert_int_equal(n, kr_kv_cache_seq_len(cd, 0, b));
        if (n == 0) continue;
        kt_buf k1, v1, k2, v2;
        assert_int_equal(kt_read_seq(ctx_ref, ch, 0, b, n, Hkv, D, &k1, &v1), KR_OK);
        if (kt_read_seq(ctx_gpu, cd, 0, b, n, Hkv, D, &k2, &v2) != KR_OK)
            fail_msg("device read: %s", kr_context_last_error(ctx_gpu));
        for (int w = 0; w < 2; w++) {
            double *x = as_double(w ? &v2 : &k2), *y = as_double(w ? &v1 : &k1);
            const double e = kt_rel_err(x, y, k1.n);
            if (e > worst) worst = e;
            free(x);
            free(y);
        }
        kt_buf_free(&k1);
        kt_buf_free(&v1);
        kt_buf_free(&k2);
        kt_buf_free(&v2);
    }
    return worst;
}

static void test_kv_cache(void **state) {
    (void)state;
    NEED_GPU();
    const kr_dtype dts[] = {KR_F32, KR_F16, KR_BF16, KR_I8};
    const int64_t lens[] = {1, 37, 1500, 4100};
    const int64_t sqs[] = {1, 3, 16, 40};
    double worst_app[4] = {0}, worst_att[4] = {0};
    uint64_t id = 700000;
    for (int d = 0; d < 4; d++)
        for (int l = 0; l < 4; l++)
            for (int s = 0; s < 4; s++, id++) {
                if (kt_quick() && lens[l] > 37) continue;
                /* Hkv 24 at len 37: a token's 48 rows take two staging chunks of the append
                 * kernel in f32; K/V given in f16, f32 or bf16, and (l == 2) unaligned */
                const int64_t B = 2, Hkv = l == 1 ? 24 : 2,
                              G = (l + s) % 3 == 0   ? 1
                                  : (l + s) % 3 == 1 ? 4
                                                     : 8;
                const int64_t dims[] = {128, 256, 80, 64};
                const int64_t H = Hkv * G, D = dims[s], Sq = sqs[s], L = lens[l];
                const kr_dtype in_dt = (d + s) % 3 == 0   ? KR_F16
                                       : (d + s) % 3 == 1 ? KR_F32
                                                          : KR_BF16;
                const bool shifted = l == 2;
                char desc[200];
                snprintf(desc, sizeof desc,
                         "kv %s len %lld Sq %lld G %lld Hkv %lld D %lld k/v %s%s seed %llu",
                         kr_dtype_name(dts[d]), (long long)L, (long long)Sq, (long long)G,
                         (long long)Hkv, (long long)D, kr_dtype_name(in_dt),
                         shifted ? " unaligned" : "", (unsigned long long)id);
                kt_rng r = kt_rng_for(id ^ kt_base_seed());
                kr_kv_cache_options o = {1, B, L + Sq, Hkv, D, dts[d], {KR_DEVICE_CPU, 0}};
                kr_kv_cache *ch = NULL, *cd = NULL;
                assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &ch), KR_OK);
                o.device = DEV;
                if (kr_kv_cache_create(ctx_gpu, &o, &cd) != KR_OK)
                    fail_msg("%s: %s", desc, kr_context_last_error(ctx_gpu));
                kt_buf k = kt_buf_new(in_dt, B * L * Hkv * D), v = kt_buf_new(in_dt, k.n);
                fill(&r, &k, NULL);
                fill(&r, &v, NULL);
                for (int64_t i = 0; i < k.n; i += D) kt_set(&k, i + 5, 20.0 * kt_get(&k, i + 5));
                int64_t n_new[2] = {L, L > 1 ? L - L / 3 : 1}; /* ragged */
                kr_rope_params rp = kr_rope_params_default();
                rp.layout = (kr_rope_layout)(s % 2);
                append_both(ch, cd, &k, &v, B, L, Hkv, D, n_new, &rp, shifted);
                const double ea = read_back_err(ch, cd, B, Hkv, D);
                /* bit-equal arithmetic; a last-bit cos/sin difference can move an int8 code */
                if (!(ea <= (dts[d] == KR_I8 ? 2e-3 : 1e-6)))
                    fail_msg("%s: append read back vs ref %.3g", desc, ea);
                if (ea > worst_app[d]) worst_app[d] = ea;
                /* decode / chunked prefill over the cache */
                /* q in f16 over the int8 cache at even lengths: on Hopper, prefill then
                 * stages the dequantised cache for the Hopper kernel (f32 q: the sm_80 kernel) */
                const kr_dtype q_dt = dts[d] == KR_I8 && l % 2 == 0 ? KR_F16 : KR_F32;
                kt_buf q = kt_buf_new(q_dt, B * Sq * H * D), oref = kt_buf_new(KR_F32, q.n),
                       odev = kt_buf_new(KR_F32, q.n);
                fill(&r, &q, NULL);
                kt_poison(&oref);
                kr_tensor tq = kr_tensor_bshd(q.data, q_dt, B, Sq, H, D);
                kr_tensor t1 = kr_tensor_bshd(oref.data, KR_F32, B, Sq, H, D);
                kr_attention_params p = kr_attention_params_default();
                p.causal = 1;
                assert_int_equal(kr_kv_cache_attention(ctx_ref, ch, 0, &tq, &t1, &p), KR_OK);
                void *dq = to_dev(ctx_gpu, &q), *dout = dev_poisoned(ctx_gpu, KR_F32, q.n);
                kr_tensor gq = kr_tensor_on(kr_tensor_bshd(dq, q_dt, B, Sq, H, D), DEV);
                kr_tensor go = kr_tensor_on(kr_tensor_bshd(dout, KR_F32, B, Sq, H, D), DEV);
                if (kr_kv_cache_attention(ctx_gpu, cd, 0, &gq, &go, &p) != KR_OK)
                    fail_msg("%s: %s", desc, kr_context_last_error(ctx_gpu));
                from_dev(ctx_gpu, &odev, dout);
                double *x = as_double(&odev), *y = as_double(&oref);
                const double e = kt_rel_err(x, y, q.n);
                /* f16/bf16/int8 caches: the tensor-core kernels round q and the probabilities
                 * to f16 (bf16 for a bf16 cache) before their MMAs, as FlashAttention does, so
                 * that type's attention tolerance applies; an f32 cache stays in fp32. Over
                 * int8, prefill (Sq > 16) also rounds the dequantised K and V to f16 (decode
                 * keeps codes exact and scales in fp32): twice the f16 tolerance, still ~4x
                 * under the quantisation error itself (test_int8_vs_f16) */
                const double tol_att = dts[d] == KR_F32             ? 2e-5
                                       : dts[d] == KR_BF16          ? tol_for(KR_BF16)
                                       : dts[d] == KR_I8 && Sq > 16 ? 2 * tol_for(KR_F16)
                                                                    : tol_for(KR_F16);
                if (!(e <= tol_att))
                    fail_msg("%s: device cache attention vs ref %.3g > %.1g", desc, e, tol_att);
                if (e > worst_att[d]) worst_att[d] = e;
                free(x);
                free(y);
                kr_device_free(ctx_gpu, DEV, dq);
                kr_device_free(ctx_gpu, DEV, dout);
                kt_buf_free(&k);
                kt_buf_free(&v);
                kt_buf_free(&q);
                kt_buf_free(&oref);
                kt_buf_free(&odev);
                kr_kv_cache_free(ch);
                kr_kv_cache_free(cd);
            }
    printf("# device kv cache vs ref: append (read back) f32 %.2g f16 %.2g bf16 %.2g int8 %.2g; "
           "attention f32 %.2g f16 %.2g bf16 %.2g int8 %.2g\n",
           worst_app[0], worst_app[1], worst_app[2], worst_app[3], worst_att[0], worst_att[1],
           worst_att[2], worst_att[3]);
}

/* INT8 cache decode against the fp16 cache, both on the device: within 1 %. */
/* Non-finite K/V into the int8 cache: a row with a NaN, +inf or -inf gets
 * a NaN row scale on the device as in ref (kr_ref_quantize_row), so the
 * whole row reads back NaN, and every other row of the same tokens reads
 * back as ref's. The first append (clean, outlier channel 5) fixes the
 * channel factors; the second carries the non-finite values. Cases: the
 * warp-per-token kernel (head_dim 128, f16/bf16, both layouts, full and
 * partial rotary, no RoPE) and the staged one (80, 256, f32 input, and
 * head_dim 128 with 24 rotated pairs: half % 16 != 0). */
static void test_int8_nonfinite(void **state) {
    (void)state;
    NEED_GPU();
    const int64_t B = 2, S = 6, Hkv = 3;
    const struct {
        int64_t D;
        kr_dtype dt;
        kr_rope_layout layout;
        int64_t rotary; /* 0: all of D; -1: no RoPE */
    } cases[] = {
        {128, KR_F16, KR_ROPE_HALF_SPLIT, 0},   {128, KR_BF16, KR_ROPE_INTERLEAVED, 0},
        {128, KR_F16, KR_ROPE_HALF_SPLIT, 64},  {128, KR_BF16, KR_ROPE_HALF_SPLIT, 96},
        {128, KR_F16, KR_ROPE_INTERLEAVED, 32}, {128, KR_BF16, KR_ROPE_HALF_SPLIT, -1},
        {80, KR_F16, KR_ROPE_HALF_SPLIT, 0},    {256, KR_F32, KR_ROPE_INTERLEAVED, 0},
        {128, KR_F16, KR_ROPE_HALF_SPLIT, 48},
    };
    double worst = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t D = cases[ci].D;
        const uint64_t id = 705000 + (uint64_t)ci;
        kt_rng r = kt_rng_for(id ^ kt_base_seed());
        kr_kv_cache_options o = {1, B, 2 * S, Hkv, D, KR_I8, {KR_DEVICE_CPU, 0}};
        kr_kv_cache *ch = NULL, *cd = NULL;
        assert_int_equal(kr_kv_cache_create(ctx_ref, &o, &ch), KR_OK);
        o.device = DEV;
        if (kr_kv_cache_create(ctx_gpu, &o, &cd) != KR_OK)
            fail_msg("D %lld: %s", (long long)D, kr_context_last_error(ctx_gpu));
        kr_rope_params rp = kr_rope_params_default();
        rp.layout = cases[ci].layout;
        rp.rotary_dim = cases[ci].rotary > 0 ? cases[ci].rotary : 0;
        for (int round = 0; round < 2; round++) {
            kt_buf k = kt_buf_new(cases[ci].dt, B * S * Hkv * D), v = kt_buf_new(cases[ci].dt, k.n);
            fill(&r, &k, NULL);
            fill(&r, &v, NULL);
            for (int64_t i = 0; i < k.n; i += D) kt_set(&k, i + 5, 20.0 * kt_get(&k, i + 5));
            if (round == 1) {
                /* rows (b, s, h): K (0,1,0) NaN at 7; V (0,3,2) +inf at 40; K (1,4,1)
                 * -inf at D-1 and +inf at 0; V (1,0,0) NaN at 0 and -inf at 33 */
                kt_set(&k, ((0 * S + 1) * Hkv + 0) * D + 7, NAN);
                kt_set(&v, ((0 * S + 3) * Hkv + 2) * D + 40, INFINITY);
                kt_set(&k, ((1 * S + 4) * Hkv + 1) * D + D - 1, -INFINITY);
                kt_set(&k, ((1 * S + 4) * Hkv + 1) * D + 0, INFINITY);
                kt_set(&v, ((1 * S + 0) * Hkv + 0) * D + 0, NAN);
                kt_set(&v, ((1 * S + 0) * Hkv + 0) * D + 33, -INFINITY);
            }
            append_both(ch, cd, &k, &v, B, S, Hkv, D, NULL, cases[ci].rotary < 0 ? NULL : &rp,
                        false);
            kt_buf_free(&k);
            kt_buf_free(&v);
        }
        int64_t nan_rows = 0;
        for (int64_t b = 0; b < B; b++) {
            kt_buf k1, v1, k2, v2;
            assert_int_equal(kt_read_seq(ctx_ref, ch, 0, b, 2 * S, Hkv, D, &k1, &v1), KR_OK);
            if (kt_read_seq(ctx_gpu, cd, 0, b, 2 * S, Hkv, D, &k2, &v2) != KR_OK)
                fail_msg("device read: %s", kr_context_last_error(ctx_gpu));
            for (int w = 0; w < 2; w++) {
                const kt_buf *x = w ? &v2 : &k2, *y = w ? &v1 : &k1;
                double num = 0, den = 0;
                for (int64_t row = 0; row < 2 * S * Hkv; row++) {
                    const bool ref_nan = isnan(kt_get(y, row * D));
                    nan_rows += ref_nan;
                    for (int64_t c = 0; c < D; c++) {
                        const double a = kt_get(x, row * D + c), e = kt_get(y, row * D + c);
                        if (isnan(e) != ref_nan)
                            fail_msg("D %lld b %lld %s row %lld: ref's row is not all NaN "
                                     "or all finite (seed %llu)",
                                     (long long)D, (long long)b, w ? "V" : "K", (long long)row,
                                     (unsigned long long)id);
                        if (isnan(a) != isnan(e))
                            fail_msg("D %lld b %lld %s row %lld ch %lld: device %g, ref %g "
                                     "(seed %llu)",
                                     (long long)D, (long long)b, w ? "V" : "K", (long long)row,
                                     (long long)c, a, e, (unsigned long long)id);
                        if (!isnan(e)) num += (a - e) * (a - e), den += e * e;
                    }
                }
                const double err = den > 0 ? sqrt(num / den) : sqrt(num);
                if (err > worst) worst = err;
                if (!(err <= 2e-3))
                    fail_msg("D %lld b %lld %s: finite rows vs ref %.3g (seed %llu)", (long long)D,
                             (long long)b, w ? "V" : "K", err, (unsigned long long)id);
            }
            kt_buf_free(&k1);
            kt_buf_free(&v1);
            kt_buf_free(&k2);
            kt_buf_free(&v2);
        }
        if (nan_rows != 4)
            fail_msg("D %lld: %lld NaN rows in ref, 4 expected", (long long)D, (long long)nan_rows);
        kr_kv_cache_free(ch);
        kr_kv_cache_free(cd);
    }
    printf("# int8 append with NaN/inf rows: %zu cases, NaN rows as ref's, finite rows vs ref "
           "%.3g\n",
           sizeof cases / sizeof cases[0], worst);
}

static void test_int8_vs_f16(void **state) {
    (void)state;
    NEED_GPU();
    const int64_t B = 4, L = kt_quick() ? 512 : 8192, Hkv = 8, H = 32, D = 128;
    kt_rng r = kt_rng_for(710000 ^ kt_base_seed());
    kr_kv_cache *c16 = NULL, *c8 = NULL;
    kr_kv_cache_options o = {1, B, L, Hkv, D, KR_F16, DEV};
    assert_int_equal(kr_kv_cache_create(ctx_gpu, &o, &c16), KR_OK);
    o.dtype = KR_I8;
    assert_int_equal(kr_kv_cache_create(ctx_gpu, &o, &c8), KR_OK);
    kt_buf k = kt_buf_new(KR_F16, B * L * Hkv * D), v = kt_buf_new(KR_F16, k.n);
    fill(&r, &k, NULL);
    fill(&r, &v, NULL);
    void *dk = to_dev(ctx_gpu, &k), *dv = to_dev(ctx_gpu, &v);
    kr_tensor gk = kr_tensor_on(kr_tensor_bshd(dk, KR_F16, B, L, Hkv, D), DEV);
    kr_tensor gv = kr_tensor_on(kr_tensor_bshd(dv, KR_F16, B, L, Hkv, D), DEV);
    kr_rope_params rp = kr_rope_params_default();
    assert_int_equal(kr_kv_cache_append(ctx_gpu, c16, 0, &gk, &gv, NULL, NULL, &rp), KR_OK);
    assert_int_equal(kr_kv_cache_append(ctx_gpu, c8, 0, &gk, &gv, NULL, NULL, &rp), KR_OK);
    kt_buf q = kt_buf_new(KR_F16, B * H * D), o16 = kt_buf_new(KR_F16, q.n),
           o8 = kt_buf_new(KR_F16, q.n);
    fill(&r, &q, NULL);
    void *dq = to_dev(ctx_gpu, &q), *d16 = dev_poisoned(ctx_gpu, KR_F16, q.n),
         *d8 = dev_poisoned(ctx_gpu, KR_F16, q.n);
    kr_tensor gq = kr_tensor_on(kr_tensor_bshd(dq, KR_F16, B, 1, H, D), DEV);
    kr_tensor g16 = kr_tensor_on(kr_tensor_bshd(d16, KR_F16, B, 1, H, D), DEV);
    kr_tensor g8 = kr_tensor_on(kr_tensor_bshd(d8, KR_F16, B, 1, H, D), DEV);
    assert_int_equal(kr_kv_cache_attention(ctx_gpu, c16, 0, &gq, &g16, NULL), KR_OK);
    assert_int_equal(kr_kv_cache_attention(ctx_gpu, c8, 0, &gq, &g8, NULL), KR_OK);
    from_dev(ctx_gpu, &o16, d16);
    from_dev(ctx_gpu, &o8, d8);
    double *x = as_double(&o8), *y = as_double(&o16);
    const double e = kt_rel_err(x, y, q.n);
    printf("# int8 vs fp16 device cache decode (4 x %lld, 32:8 heads, hd128): %.3g%% normwise\n",
           (long long)L, 100 * e);
    assert_true(e <= 0.01);
    free(x);
    free(y);
    void *bufs[] = {dk, dv, dq, d16, d8};
    for (int i = 0; i < 5; i++) kr_device_free(ctx_gpu, DEV, bufs[i]);
    kt_buf_free(&k);
    kt_buf_free(&v);
    kt_buf_free(&q);
    kt_buf_free(&o16);
    kt_buf_free(&o8);
    kr_kv_cache_free(c16);
    kr_kv_cache_free(c8);
}

/* ---- the in-device fallback ------------------------------------------------------------ */

static void test_fault_fallback(void **state) {
    (void)state;
    NEED_GPU();
    setenv("KRSERVE_FAULT", "attention:cuda", 1);
    kr_context_options o = kr_context_options_default();
    o.log_level = KR_LOG_OFF;
    o.deny_backends = "test";
    kr_context *ctx = NULL;
    char err[512];
    assert_int_equal(kr_context_create(&o, &ctx, err, sizeof err), KR_OK);
    unsetenv("KRSERVE_FAULT");
    const int64_t B = 1, S = 2000, Hkv = 2, H = 8, D = 128;
    kt_rng r = kt_rng_for(720000 ^ kt_base_seed());
    kt_buf q = kt_buf_new(KR_F16, B * H * D), k = kt_buf_new(KR_F16, B * S * Hkv * D),
           v = kt_buf_new(KR_F16, k.n), out = kt_buf_new(KR_F16, q.n),
           want = kt_buf_new(KR_F16, q.n);
    fill(&r, &q, NULL);
    fill(&r, &k, NULL);
    fill(&r, &v, NULL);
    kr_tensor hq = kr_tensor_bshd(q.data, KR_F16, B, 1, H, D);
    kr_tensor hk = kr_tensor_bshd(k.data, KR_F16, B, S, Hkv, D);
    kr_tensor hv = kr_tensor_bshd(v.data, KR_F16, B, S, Hkv, D);
    kr_tensor hw = kr_tensor_bshd(want.data, KR_F16, B, 1, H, D);
    assert_int_equal(kr_attention(ctx_ref, &hq, &hk, &hv, &hw, NULL), KR_OK);
    void *dq = to_dev(ctx, &q), *dk = to_dev(ctx, &k), *dv = to_dev(ctx, &v);
    void *dout = dev_poisoned(ctx, KR_F16, q.n);
    kr_tensor gq = kr_tensor_on(kr_tensor_bshd(dq, KR_F16, B, 1, H, D), DEV);
    kr_tensor gk = kr_tensor_on(kr_tensor_bshd(dk, KR_F16, B, S, Hkv, D), DEV);
    kr_tensor gv = kr_tensor_on(kr_tensor_bshd(dv, KR_F16, B, S, Hkv, D), DEV);
    kr_tensor go = kr_tensor_on(kr_tensor_bshd(dout, KR_F16, B, 1, H, D), DEV);
    for (int call = 0; call < 2; call++)
        assert_int_equal(kr_attention(ctx, &gq, &gk, &gv, &go, NULL), KR_OK);
    kr_feature_info fi;
    kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi);
    printf("# fault attention:cuda -> calls %lld, accelerated %lld, fallbacks %lld, "
           "cuda-unfused served %lld; reason: %s\n",
           (long long)fi.counters.calls, (long long)fi.counters.accelerated,
           (long long)fi.counters.fallbacks,
           (long long)served(ctx, "cuda-unfused", KR_FEATURE_FLASH_ATTENTION),
           fi.counters.last_reason);
    assert_int_equal(fi.counters.fallbacks, 1); /* then switched off (sticky) */
    assert_int_equal(fi.counters.accelerated, 0);
    assert_int_equal(served(ctx, "cuda-unfused", KR_FEATURE_FLASH_ATTENTION), 2);
    from_dev(ctx, &out, dout);
    double *x = as_double(&out), *y = as_double(&want);
    assert_true(kt_rel_err(x, y, q.n) <= 1e-3);
    free(x);
    free(y);
    void *bufs[] = {dq, dk, dv, dout};
    for (int i = 0; i < 4; i++) kr_device_free(ctx, DEV, bufs[i]);
    kt_buf_free(&q);
    kt_buf_free(&k);
    kt_buf_free(&v);
    kt_buf_free(&out);
    kt_buf_free(&want);
    kr_context_free(ctx);
}

/* Bad input on the device gets a status and a message, never a crash. */
static void test_errors(void **state) {
    (void)state;
    NEED_GPU();
    void *d = NULL;
    assert_int_equal(kr_device_alloc(ctx_gpu, DEV, 4 * 600 * 3, &d), KR_OK);
    kr_tensor t = kr_tensor_on(kr_tensor_bshd(d, KR_F32, 1, 1, 1, 600), DEV);
    const kr_status s = kr_attention(ctx_gpu, &t, &t, &t, &t, NULL);
    printf("# head_dim 600 on the device: %s: %s\n", kr_status_name(s),
           kr_context_last_error(ctx_gpu));
    assert_int_equal(s, KR_ERR_UNSUPPORTED);
    kr_kv_cache_options o = {1, 1, 16, 1, 64, KR_F16, kr_device_cuda(15)};
    kr_kv_cache *c = NULL;
    assert_int_equal(kr_kv_cache_create(ctx_gpu, &o, &c), KR_ERR_DEVICE);
    kr_device_free(ctx_gpu, DEV, d);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress survives a killed run */
    printf("# seed %llu (KR_TEST_SEED=N re-runs)\n", (unsigned long long)kt_base_seed());
    /* KR_TEST_FILTER=test_attention_grid: that test only (cmocka's name filter) */
    if (getenv("KR_TEST_FILTER")) cmocka_set_test_filter(getenv("KR_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_api),     cmocka_unit_test(test_attention_grid),
        cmocka_unit_test(test_rope),           cmocka_unit_test(test_kv_cache),
        cmocka_unit_test(test_int8_nonfinite), cmocka_unit_test(test_int8_vs_f16),
        cmocka_unit_test(test_fault_fallback), cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
