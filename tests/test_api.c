/*
 * test_api.c — the API's edges: every public function given bad input
 * returns an error status and a message naming the problem, and writes
 * nothing; free(NULL) is a no-op; the status, version and conversion
 * helpers behave as documented.
 */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define B_ 2
#define S_ 5
#define H_ 4
#define HKV_ 2
#define D_ 64

/* A valid attention call, mutated by each bad-input case. */
typedef struct attn_setup {
    float q[B_ * S_ * H_ * D_], k[B_ * S_ * HKV_ * D_], v[B_ * S_ * HKV_ * D_];
    float out[B_ * S_ * H_ * D_], mask[S_ * S_], lse[B_ * H_ * S_];
    kr_tensor tq, tk, tv, tout, tmask, tlse;
    int64_t lens[B_];
    kr_attention_params p;
} attn_setup;

static void attn_init(attn_setup *s) {
    kt_rng r = kt_rng_for(7);
    for (size_t i = 0; i < sizeof s->q / sizeof s->q[0]; i++) s->q[i] = (float)kt_normal(&r);
    for (size_t i = 0; i < sizeof s->k / sizeof s->k[0]; i++)
        s->k[i] = s->v[i] = (float)kt_normal(&r);
    for (size_t i = 0; i < sizeof s->mask / sizeof s->mask[0]; i++) s->mask[i] = 0.0f;
    s->tq = kr_tensor_bshd(s->q, KR_F32, B_, S_, H_, D_);
    s->tk = kr_tensor_bshd(s->k, KR_F32, B_, S_, HKV_, D_);
    s->tv = kr_tensor_bshd(s->v, KR_F32, B_, S_, HKV_, D_);
    s->tout = kr_tensor_bshd(s->out, KR_F32, B_, S_, H_, D_);
    s->tmask = kr_tensor_contiguous(s->mask, KR_F32, 1, 1, S_, S_);
    s->tlse = kr_tensor_contiguous(s->lse, KR_F32, B_, H_, S_, 1);
    s->lens[0] = S_;
    s->lens[1] = 3;
    s->p = kr_attention_params_default();
    s->p.mask = &s->tmask;
    s->p.lse = &s->tlse;
    s->p.kv_lens = s->lens;
    for (size_t i = 0; i < sizeof s->out / sizeof s->out[0]; i++) s->out[i] = 12345.0f;
    for (size_t i = 0; i < sizeof s->lse / sizeof s->lse[0]; i++) s->lse[i] = 12345.0f;
}

static bool untouched(const attn_setup *s) {
    for (size_t i = 0; i < sizeof s->out / sizeof s->out[0]; i++)
        if (s->out[i] != 12345.0f) return false;
    for (size_t i = 0; i < sizeof s->lse / sizeof s->lse[0]; i++)
        if (s->lse[i] != 12345.0f) return false;
    return true;
}

typedef struct bad_case {
    const char *what;
    void (*mutate)(attn_setup *s);
    kr_status want;
    const char *msg_has; /* a word the message must contain */
} bad_case;

static void m_q_null(attn_setup *s) { s->tq.data = NULL; }
static void m_k_shape(attn_setup *s) { s->tk.shape[1] = 4; }
static void m_out_shape(attn_setup *s) { s->tout.shape[2] = 2; }
static void m_head_dim(attn_setup *s) {
    s->tq.shape[3] = 32;
    s->tout.shape[3] = 32;
}
static void m_gqa(attn_setup *s) {
    s->tq.shape[2] = 3;
    s->tout.shape[2] = 3;
}
static void m_dtype_mix(attn_setup *s) {
    s->tk.dtype = KR_F16;
    s->tv.dtype = KR_F16;
}
static void m_dtype_i8(attn_setup *s) { s->tq.dtype = KR_I8; }
static void m_dtype_bad(attn_setup *s) { s->tv.dtype = (kr_dtype)42; }
static void m_device(attn_setup *s) { s->tq.device.type = KR_DEVICE_CUDA; }
static void m_zero_extent(attn_setup *s) { s->tq.shape[1] = 0; }
static void m_neg_stride(attn_setup *s) { s->tk.stride[1] = -1; }
static void m_batch(attn_setup *s) {
    s->tk.shape[0] = 1;
    s->tv.shape[0] = 1;
}
static void m_mask_shape(attn_setup *s) { s->tmask.shape[2] = 3; }
static void m_mask_dtype(attn_setup *s) { s->tmask.dtype = KR_F16; }
static void m_lse_shape(attn_setup *s) { s->tlse.shape[1] = 1; }
static void m_lens(attn_setup *s) { s->lens[1] = S_ + 1; }
static void m_lens_neg(attn_setup *s) { s->lens[0] = -1; }
static void m_window(attn_setup *s) { s->p.window_left = -2; }
static void m_scale(attn_setup *s) { s->p.scale = NAN; }
static void m_out_dtype(attn_setup *s) { s->tout.dtype = KR_I8; }

static void test_attention_bad_input(void **state) {
    kr_context *ctx = *state;
    const bad_case cases[] = {
        {"q.data NULL", m_q_null, KR_ERR_INVALID_ARGUMENT, "q.data"},
        {"k/v shapes differ", m_k_shape, KR_ERR_SHAPE, "differ"},
        {"out shape", m_out_shape, KR_ERR_SHAPE, "out shape"},
        {"head_dim mismatch", m_head_dim, KR_ERR_SHAPE, "head_dim"},
        {"H % Hkv", m_gqa, KR_ERR_SHAPE, "divisible"},
        {"q/k dtype mismatch", m_dtype_mix, KR_ERR_DTYPE, "dtype"},
        {"int8 q", m_dtype_i8, KR_ERR_DTYPE, "q dtype"},
        {"invalid dtype", m_dtype_bad, KR_ERR_DTYPE, "not a kr_dtype"},
        {"cuda tensor", m_device, KR_ERR_DEVICE, "device"},
        {"zero extent", m_zero_extent, KR_ERR_SHAPE, "shape[1]"},
        {"negative stride", m_neg_stride, KR_ERR_SHAPE, "stride"},
        {"batch mismatch", m_batch, KR_ERR_SHAPE, "batch"},
        {"mask shape", m_mask_shape, KR_ERR_SHAPE, "mask"},
        {"mask dtype", m_mask_dtype, KR_ERR_DTYPE, "mask"},
        {"lse shape", m_lse_shape, KR_ERR_SHAPE, "lse"},
        {"kv_lens > Skv", m_lens, KR_ERR_INVALID_ARGUMENT, "kv_lens[1]"},
        {"kv_lens < 0", m_lens_neg, KR_ERR_INVALID_ARGUMENT, "kv_lens[0]"},
        {"window < -1", m_window, KR_ERR_INVALID_ARGUMENT, "window"},
        {"scale NaN", m_scale, KR_ERR_INVALID_ARGUMENT, "scale"},
        {"int8 out", m_out_dtype, KR_ERR_DTYPE, "out dtype"},
    };
    attn_setup *s = malloc(sizeof *s);
    assert_non_null(s);
    attn_init(s);
    assert_int_equal(kr_attention(ctx, &s->tq, &s->tk, &s->tv, &s->tout, &s->p), KR_OK);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        attn_init(s);
        cases[i].mutate(s);
        kr_status st = kr_attention(ctx, &s->tq, &s->tk, &s->tv, &s->tout, &s->p);
        const char *msg = kr_context_last_error(ctx);
        if (st != cases[i].want || !strstr(msg, cases[i].msg_has) || !untouched(s))
            fail_msg("bad input '%s': status %s (want %s), message '%s' (want '%s'), output %s",
                     cases[i].what, kr_status_name(st), kr_status_name(cases[i].want), msg,
                     cases[i].msg_has, untouched(s) ? "untouched" : "WRITTEN");
        printf("# %-20s -> %s: %s\n", cases[i].what, kr_status_name(st), msg);
    }
    attn_init(s);
    assert_int_equal(kr_attention(NULL, &s->tq, &s->tk, &s->tv, &s->tout, &s->p),
                     KR_ERR_INVALID_ARGUMENT);
    assert_int_equal(kr_attention(ctx, NULL, &s->tk, &s->tv, &s->tout, &s->p),
                     KR_ERR_INVALID_ARGUMENT);
    assert_int_equal(kr_attention(ctx, &s->tq, &s->tk, &s->tv, NULL, &s->p),
                     KR_ERR_INVALID_ARGUMENT);
    assert_true(untouched(s));
    free(s);
}

static void test_rope_bad_input(void **state) {
    kr_context *ctx = *state;
    float x[2 * 3 * 64], keep[2 * 3 * 64];
    for (int i = 0; i < 2 * 3 * 64; i++) keep[i] = x[i] = (float)i;
    kr_tensor t = kr_tensor_bshd(x, KR_F32, 1, 2, 3, 64);
    int64_t pos[2] = {0, 5}, neg[2] = {0, -1};
    kr_rope_params p = kr_rope_params_default();
    struct {
        const char *what;
        kr_rope_params p;
        const int64_t *pos;
        kr_status want;
        const char *msg_has;
    } cases[8];
    for (int i = 0; i < 8; i++) {
        cases[i].p = p;
        cases[i].pos = pos;
        cases[i].want = KR_ERR_INVALID_ARGUMENT;
    }
    cases[0].what = "positions NULL";
    cases[0].pos = NULL;
    cases[0].msg_has = "positions";
    cases[1].what = "negative position";
    cases[1].pos = neg;
    cases[1].msg_has = "positions[1]";
    cases[2].what = "odd rotary_dim";
    cases[2].p.rotary_dim = 33;
    cases[2].msg_has = "rotary_dim";
    cases[3].what = "rotary_dim > D";
    cases[3].p.rotary_dim = 66;
    cases[3].msg_has = "rotary_dim";
    cases[4].what = "theta <= 1";
    cases[4].p.theta = 0.5;
    cases[4].msg_has = "theta";
    cases[5].what = "bad scaling";
    cases[5].p.scaling = (kr_rope_scaling_type)9;
    cases[5].msg_has = "scaling";
    cases[6].what = "llama3 no params";
    cases[6].p.scaling = KR_ROPE_SCALING_LLAMA3;
    cases[6].p.factor = 8;
    cases[6].msg_has = "llama3";
    cases[7].what = "yarn no original";
    cases[7].p.scaling = KR_ROPE_SCALING_YARN;
    cases[7].p.factor = 4;
    cases[7].msg_has = "yarn";
    for (int i = 0; i < 8; i++) {
        kr_status st = kr_rope(ctx, &t, cases[i].pos, &cases[i].p);
        const char *msg = kr_context_last_error(ctx);
        if (st != cases[i].want || !strstr(msg, cases[i].msg_has) || memcmp(x, keep, sizeof x))
            fail_msg("rope bad input '%s': status %s, message '%s'", cases[i].what,
                     kr_status_name(st), msg);
        printf("# %-20s -> %s: %s\n", cases[i].what, kr_status_name(st), msg);
    }
    kr_tensor bad = t;
    bad.dtype = KR_I8;
    assert_int_equal(kr_rope(ctx, &bad, pos, &p), KR_ERR_DTYPE);
    assert_int_equal(kr_rope(ctx, &t, pos, NULL), KR_ERR_INVALID_ARGUMENT);
    assert_int_equal(kr_rope(NULL, &t, pos, &p), KR_ERR_INVALID_ARGUMENT);
    assert_memory_equal(x, keep, sizeof x);
    double inv[32], af;
    assert_int_equal(kr_rope_frequencies(ctx, &p, 64, NULL, &af), KR_ERR_INVALID_ARGUMENT);
    assert_int_equal(kr_rope_frequencies(ctx, &p, 1, inv, &af), KR_ERR_INVALID_ARGUMENT);
    assert_int_equal(kr_rope_frequencies(ctx, &p, 64, inv, &af), KR_OK);
}

static void test_kv_cache_bad_input(void **state) {
    kr_context *ctx = *state;
    kr_kv_cache_options o = {2, 2, 8, 2, 64, KR_I8, {KR_DEVICE_CPU, 0}};
    kr_kv_cache *c = NULL;
    /* create */
    kr_kv_cache_options bad = o;
    bad.n_layers = 0;
    assert_int_equal(kr_kv_cache_create(ctx, &bad, &c), KR_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kr_context_last_error(ctx), "n_layers"));
    assert_null(c);
    bad = o;
    bad.dtype = (kr_dtype)9;
    assert_int_equal(kr_kv_cache_create(ctx, &bad, &c), KR_ERR_DTYPE);
    bad = o;
    bad.device.type = KR_DEVICE_CUDA;
    assert_int_equal(kr_kv_cache_create(ctx, &bad, &c), KR_ERR_DEVICE);
    bad = o;
    bad.head_dim = 512;
    assert_int_equal(kr_kv_cache_create(ctx, &bad, &c), KR_ERR_UNSUPPORTED);
    assert_non_null(strstr(kr_context_last_error(ctx), "head_dim"));
    assert_int_equal(kr_kv_cache_create(ctx, NULL, &c), KR_ERR_INVALID_ARGUMENT);
    assert_int_equal(kr_kv_cache_create(ctx, &o, NULL), KR_ERR_INVALID_ARGUMENT);
    assert_int_equal(kr_kv_cache_create(ctx, &o, &c), KR_OK);

    /* append: 6 tokens fit, 3 more do not */
    float k[2 * 6 * 2 * 64], v[2 * 6 * 2 * 64];
    kt_rng r = kt_rng_for(8);
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        k[i] = (float)kt_normal(&r);
        v[i] = (float)kt_normal(&r);
    }
    kr_tensor tk = kr_tensor_bshd(k, KR_F32, 2, 6, 2, 64),
              tv = kr_tensor_bshd(v, KR_F32, 2, 6, 2, 64);
    assert_int_equal(kr_kv_cache_append(ctx, c, 0, &tk, &tv, NULL, NULL, NULL), KR_OK);
    float before[6 * 2 * 64], bv[6 * 2 * 64], after[6 * 2 * 64], av[6 * 2 * 64];
    kr_tensor rb = kr_tensor_bshd(before, KR_F32, 1, 6, 2, 64),
              rbv = kr_tensor_bshd(bv, KR_F32, 1, 6, 2, 64);
    assert_int_equal(kr_kv_cache_read(ctx, c, 0, 1, 0, 6, &rb, &rbv), KR_OK);
    const size_t used = kr_kv_cache_bytes_used(c);

    kr_tensor t3k = tk, t3v = tv;
    t3k.shape[1] = t3v.shape[1] = 3;
    assert_int_equal(kr_kv_cache_append(ctx, c, 0, &t3k, &t3v, NULL, NULL, NULL), KR_ERR_CAPACITY);
    printf("# append past capacity -> %s\n", kr_context_last_error(ctx));
    assert_non_null(strstr(kr_context_last_error(ctx), "capacity 8"));
    int64_t n_new[2] = {1, 7};
    assert_int_equal(kr_kv_cache_append(ctx, c, 0, &tk, &tv, n_new, NULL, NULL),
                     KR_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kr_context_last_error(ctx), "n_new[1]"));
    int64_t pos[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -3, 11};
    kr_rope_params rope = kr_rope_params_default();
    t3k.shape[1] = t3v.shape[1] = 2;
    assert_int_equal(kr_kv_cache_append(ctx, c, 0, &t3k, &t3v, NULL, pos + 8, &rope),
                     KR_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kr_context_last_error(ctx), "negative"));
    assert_int_equal(kr_kv_cache_append(ctx, c, 2, &tk, &tv, NULL, NULL, NULL),
                     KR_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kr_context_last_error(ctx), "layer 2"));
    kr_tensor wrong = tk;
    wrong.shape[2] = 1;
    assert_int_equal(kr_kv_cache_append(ctx, c, 0, &wrong, &wrong, NULL, NULL, NULL), KR_ERR_SHAPE);
    wrong = tv;
    wrong.dtype = KR_F16;
    assert_int_equal(kr_kv_cache_append(ctx, c, 0, &tk, &wrong, NULL, NULL, NULL), KR_ERR_DTYPE);
    kr_rope_params badrope = rope;
    badrope.rotary_dim = 3;
    assert_int_equal(kr_kv_cache_append(ctx, c, 0, &t3k, &t3v, NULL, NULL, &badrope),
                     KR_ERR_INVALID_ARGUMENT);
    /* nothing was written by any failed append */
    assert_int_equal(kr_kv_cache_seq_len(c, 0, 0), 6);
    assert_int_equal(kr_kv_cache_seq_len(c, 0, 1), 6);
    assert_int_equal(kr_kv_cache_bytes_used(c), used);
    kr_tensor ra = kr_tensor_bshd(after, KR_F32, 1, 6, 2, 64),
              rav = kr_tensor_bshd(av, KR_F32, 1, 6, 2, 64);
    assert_int_equal(kr_kv_cache_read(ctx, c, 0, 1, 0, 6, &ra, &rav), KR_OK);
    assert_memory_equal(before, after, sizeof before);
    assert_memory_equal(bv, av, sizeof bv);

    /* attention over the cache */
    float q[2 * 1 * 4 * 64], out[2 * 1 * 4 * 64];
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        q[i] = 1.0f;
        out[i] = 777.0f;
    }
    kr_tensor tq = kr_tensor_bshd(q, KR_F32, 2, 1, 4, 64),
              to = kr_tensor_bshd(out, KR_F32, 2, 1, 4, 64);
    kr_attention_params p = kr_attention_params_default();
    int64_t lens[2] = {1, 1};
    p.kv_lens = lens;
    assert_int_equal(kr_kv_cache_attention(ctx, c, 0, &tq, &to, &p), KR_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kr_context_last_error(ctx), "kv_lens"));
    kr_tensor tq3 = kr_tensor_bshd(q, KR_F32, 2, 1, 3, 64),
              to3 = kr_tensor_bshd(out, KR_F32, 2, 1, 3, 64);
    assert_int_equal(kr_kv_cache_attention(ctx, c, 0, &tq3, &to3, NULL), KR_ERR_SHAPE);
    kr_tensor tq1 = kr_tensor_bshd(q, KR_F32, 1, 1, 4, 64),
              to1 = kr_tensor_bshd(out, KR_F32, 1, 1, 4, 64);
    assert_int_equal(kr_kv_cache_attention(ctx, c, 0, &tq1, &to1, NULL), KR_ERR_SHAPE);
    assert_non_null(strstr(kr_context_last_error(ctx), "batch"));
    assert_int_equal(kr_kv_cache_attention(ctx, c, -1, &tq, &to, NULL), KR_ERR_INVALID_ARGUMENT);
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) assert_true(out[i] == 777.0f);
    assert_int_equal(kr_kv_cache_attention(ctx, c, 0, &tq, &to, NULL), KR_OK);

    /* read */
    assert_int_equal(kr_kv_cache_read(ctx, c, 0, 1, 4, 6, &ra, &rav), KR_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kr_context_last_error(ctx), "outside"));
    assert_int_equal(kr_kv_cache_read(ctx, c, 0, 2, 0, 6, &ra, &rav), KR_ERR_INVALID_ARGUMENT);
    assert_int_equal(kr_kv_cache_seq_len(c, 5, 0), -1);
    assert_int_equal(kr_kv_cache_seq_len(NULL, 0, 0), -1);
    assert_int_equal(kr_kv_cache_reset(ctx, NULL), KR_ERR_INVALID_ARGUMENT);
    assert_int_equal(kr_kv_cache_bytes(NULL), 0);
    kr_kv_cache_free(c);
    kr_kv_cache_free(NULL);
}

static void test_context(void **state) {
    (void)state;
    kr_context *ctx = (kr_context *)1;
    char err[128];
    kr_context_options o = kr_context_options_default();
    o.n_threads = -1;
    assert_int_equal(kr_context_create(&o, &ctx, err, sizeof err), KR_ERR_INVALID_ARGUMENT);
    assert_null(ctx);
    assert_non_null(strstr(err, "n_threads"));
    o = kr_context_options_default();
    o.log_level = (kr_log_level)17;
    assert_int_equal(kr_context_create(&o, &ctx, err, sizeof err), KR_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err, "log_level"));
    assert_int_equal(kr_context_create(NULL, NULL, err, sizeof err), KR_ERR_INVALID_ARGUMENT);
    o.log_level = KR_LOG_ERROR;
    o.n_threads = 3;
    assert_int_equal(kr_context_create(&o, &ctx, NULL, 0), KR_OK);
    assert_int_equal(kr_context_threads(ctx), 3);
    assert_string_equal(kr_context_last_error(ctx), "");
    kr_context_free(ctx);
    kr_context_free(NULL);
    assert_string_equal(kr_context_last_error(NULL), "no context");
}

static void test_status_version_dtypes(void **state) {
    (void)state;
    assert_string_equal(kr_version(), KR_VERSION_STRING);
    assert_int_equal(kr_version_number(), KR_VERSION_NUMBER);
    assert_string_equal(kr_status_string(KR_OK), "ok");
    assert_string_equal(kr_status_name(KR_ERR_CAPACITY), "KR_ERR_CAPACITY");
    for (int s = 0; s < KR_STATUS_COUNT_; s++) {
        assert_true(strlen(kr_status_string((kr_status)s)) > 0);
        assert_true(strncmp(kr_status_name((kr_status)s), "KR_", 3) == 0);
    }
    assert_string_equal(kr_status_string((kr_status)999), "unknown status");
    assert_string_equal(kr_status_string((kr_status)-1), "unknown status");
    assert_int_equal(kr_dtype_size(KR_BF16), 2);
    assert_int_equal(kr_dtype_size((kr_dtype)77), 0);
    assert_string_equal(kr_dtype_name((kr_dtype)77), "?");
    kr_tensor t = kr_tensor_bhsd((void *)1, KR_F16, 2, 3, 4, 5);
    assert_int_equal(t.stride[0], 60);
    assert_int_equal(t.stride[1], 5);
    assert_int_equal(t.stride[2], 15);
    assert_int_equal(t.stride[3], 1);
}

/* fp16/bf16 conversions: exact values, rounding to even, subnormals,
 * overflow, infinities and NaN. */
static void test_half_conversions(void **state) {
    (void)state;
    assert_int_equal(kr_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(kr_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(kr_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(kr_f32_to_f16(65520.0f), 0x7c00);          /* rounds to inf */
    assert_int_equal(kr_f32_to_f16(1.0f + 0x1.0p-11f), 0x3c00); /* tie to even */
    assert_int_equal(kr_f32_to_f16(1.0f + 0x1.8p-11f), 0x3c01);
    assert_int_equal(kr_f32_to_f16(0x1.0p-24f), 0x0001); /* smallest subnormal */
    assert_int_equal(kr_f32_to_f16(0x1.0p-26f), 0x0000);
    assert_int_equal(kr_f32_to_f16(INFINITY), 0x7c00);
    assert_true(isnan(kr_f16_to_f32(kr_f32_to_f16(NAN))));
    assert_true(kr_f16_to_f32(0x0001) == 0x1.0p-24f);
    assert_true(kr_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(isinf(kr_f16_to_f32(0xfc00)) && kr_f16_to_f32(0xfc00) < 0);
    assert_int_equal(kr_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(kr_f32_to_bf16(1.0f + 0x1.0p-8f), 0x3f80); /* tie to even */
    assert_int_equal(kr_f32_to_bf16(1.0f + 0x1.8p-8f), 0x3f81);
    assert_true(isnan(kr_bf16_to_f32(kr_f32_to_bf16(NAN))));
    assert_true(kr_bf16_to_f32(kr_f32_to_bf16(INFINITY)) == INFINITY);
    /* every f16 bit pattern survives a round trip through f32 */
    for (uint32_t h = 0; h < 0x10000; h++) {
        const float f = kr_f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        assert_int_equal(kr_f32_to_f16(f), h);
    }
}

int main(void) {
    kt_base_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_bad_input),   cmocka_unit_test(test_rope_bad_input),
        cmocka_unit_test(test_kv_cache_bad_input),    cmocka_unit_test(test_context),
        cmocka_unit_test(test_status_version_dtypes), cmocka_unit_test(test_half_conversions),
    };
    return cmocka_run_group_tests_name("api", tests, kt_setup_context, kt_teardown_context);
}
