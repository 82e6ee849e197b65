/*
 * test_accel.c — the acceleration framework without a GPU: plugin present,
 * absent, wrong API version, not a plugin, failing at load or probe; the
 * configuration file (every key, bad files with line numbers), environment
 * and API precedence; fault injection on every op with fallback on and off,
 * counters and the single warning; the per-model switch. The accelerated
 * backend is the test plugin (tests/plugins/test_backend.c).
 */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLUGIN(name) KR_TEST_PLUGIN_DIR "/libkrserve-" name ".so"

static int n_warnings;
static char last_warning[512];

static void count_log(void *user, kr_log_level level, const char *msg) {
    (void)user;
    if (level >= KR_LOG_WARN) {
        n_warnings++;
        snprintf(last_warning, sizeof last_warning, "%s", msg);
    }
}

static kr_context *make_ctx(const char *plugin, kr_context_options *o_in, kr_status want,
                            char *err) {
    kr_context_options o = o_in ? *o_in : kr_context_options_default();
    o.plugin_path = plugin;
    o.log_fn = count_log;
    /* These tests are about plugins and the framework: the built-in cpu
     * backend is kept out of the way (test_cpu_backend covers it). */
    if (!o.deny_backends) o.deny_backends = "cpu";
    kr_context *ctx = NULL;
    char buf[512];
    kr_status s = kr_context_create(&o, &ctx, err ? err : buf, 512);
    if (s != want)
        fail_msg("context create: %s (want %s): %s", kr_status_name(s), kr_status_name(want),
                 err ? err : buf);
    return ctx;
}

/* The slot of the plugin (index of the first non-ref backend). */
static kr_backend_info plugin_info(kr_context *ctx) {
    kr_backend_info bi;
    const int n = kr_accel_backend_count(ctx);
    assert_int_equal(n, 3); /* plugin slot, cpu (denied here), ref */
    assert_int_equal(kr_accel_backend_info(ctx, 0, &bi), KR_OK);
    kr_backend_info last;
    assert_int_equal(kr_accel_backend_info(ctx, n - 1, &last), KR_OK);
    assert_string_equal(last.name, "ref");
    return bi;
}

static void test_plugin_states(void **state) {
    (void)state;
    kr_context *ctx = make_ctx(PLUGIN("test"), NULL, KR_OK, NULL);
    kr_backend_info bi = plugin_info(ctx);
    assert_string_equal(bi.name, "test");
    assert_true(bi.available);
    const char *why;
    assert_true(kr_accel_enabled(ctx, &why));
    kr_feature_info fi;
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi), KR_OK);
    assert_true(fi.available);
    assert_string_equal(fi.backend, "test");
    kr_context_free(ctx);

    const struct {
        const char *path, *fault, *reason;
    } refusals[] = {
        {"/nonexistent/krserve", NULL, "not found (looked in /nonexistent/krserve)"},
        {PLUGIN("badapi"), NULL, "API version 999; this libkrserve needs 3"},
        {PLUGIN("noentry"), NULL, "no krserve_backend_entry symbol"},
        {PLUGIN("test"), "probe:test", "injected fault at probe"},
        {PLUGIN("test"), "load:test", "injected fault at load"},
    };
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
        if (refusals[i].fault) setenv("KRSERVE_FAULT", refusals[i].fault, 1);
        ctx = make_ctx(refusals[i].path, NULL, KR_OK, NULL);
        unsetenv("KRSERVE_FAULT");
        bi = plugin_info(ctx);
        printf("# plugin %s%s%s -> %s: %s\n", refusals[i].path, refusals[i].fault ? " with " : "",
               refusals[i].fault ? refusals[i].fault : "", bi.name, bi.reason);
        assert_false(bi.available);
        if (!strstr(bi.reason, refusals[i].reason))
            fail_msg("reason '%s' lacks '%s'", bi.reason, refusals[i].reason);
        assert_false(kr_accel_enabled(ctx, &why));
        assert_string_equal(why, "no accelerated backend is available");
        /* calls still work, on ref */
        float x[64] = {1.0f};
        int64_t pos = 3;
        kr_tensor t = kr_tensor_bshd(x, KR_F32, 1, 1, 1, 64);
        kr_rope_params rp = kr_rope_params_default();
        assert_int_equal(kr_rope(ctx, &t, &pos, &rp), KR_OK);
        assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FUSED_ROPE, &fi), KR_OK);
        assert_int_equal(fi.counters.calls, 1);
        assert_int_equal(fi.counters.accelerated, 0);
        kr_context_free(ctx);
    }
}

/* ---- the ops, run through one context ----------------------------------- */

typedef struct op_run {
    float out[2 * 7 * 8 * 64];
    float rope_x[2 * 7 * 8 * 64];
    float kv_read[7 * 2 * 64];
} op_run;

/* Runs attention, rope and an int8 kv append (op 0, 1, 2) once; returns status. */
static kr_status run_op(kr_context *ctx, int op, op_run *r) {
    kt_rng g = kt_rng_for(900);
    static float q[2 * 7 * 8 * 64], k[2 * 7 * 2 * 64], v[2 * 7 * 2 * 64];
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) q[i] = (float)kt_normal(&g);
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        k[i] = (float)kt_normal(&g);
        v[i] = (float)kt_normal(&g);
    }
    kr_tensor tq = kr_tensor_bshd(q, KR_F32, 2, 7, 8, 64),
              tk = kr_tensor_bshd(k, KR_F32, 2, 7, 2, 64);
    kr_tensor tv = kr_tensor_bshd(v, KR_F32, 2, 7, 2, 64);
    if (op == 0) {
        kr_tensor to = kr_tensor_bshd(r->out, KR_F32, 2, 7, 8, 64);
        kr_attention_params p = kr_attention_params_default();
        p.causal = 1;
        return kr_attention(ctx, &tq, &tk, &tv, &to, &p);
    }
    if (op == 1) {
        memcpy(r->rope_x, q, sizeof q);
        kr_tensor tx = kr_tensor_bshd(r->rope_x, KR_F32, 2, 7, 8, 64);
        int64_t pos[14];
        for (int i = 0; i < 14; i++) pos[i] = 100 * i;
        kr_rope_params rp = kr_rope_params_default();
        return kr_rope(ctx, &tx, pos, &rp);
    }
    kr_kv_cache_options o = {1, 2, 16, 2, 64, KR_I8, {KR_DEVICE_CPU, 0}};
    kr_kv_cache *c = NULL;
    assert_int_equal(kr_kv_cache_create(ctx, &o, &c), KR_OK);
    kr_rope_params rp = kr_rope_params_default();
    kr_status s = kr_kv_cache_append(ctx, c, 0, &tk, &tv, NULL, NULL, &rp);
    if (!s) {
        kr_tensor a = kr_tensor_bshd(r->kv_read, KR_F32, 1, 7, 2, 64), b = a;
        static float vv[7 * 2 * 64];
        b.data = vv;
        assert_int_equal(kr_kv_cache_read(ctx, c, 0, 1, 0, 7, &a, &b), KR_OK);
    }
    kr_kv_cache_free(c);
    return s;
}

static const kr_feature op_feature[3] = {KR_FEATURE_FLASH_ATTENTION, KR_FEATURE_FUSED_ROPE,
                                         KR_FEATURE_KV_QUANTIZATION};
static const char *const op_fault[3] = {"attention:test", "rope:test", "kv_append:test"};

static void test_fault_injection_every_op(void **state) {
    (void)state;
    for (int op = 0; op < 3; op++) {
        /* the reference result, from a context without the plugin */
        kr_context_options o = kr_context_options_default();
        o.acceleration = 0;
        kr_context *refctx = make_ctx(PLUGIN("test"), &o, KR_OK, NULL);
        op_run *want = calloc(1, sizeof *want), *got = calloc(1, sizeof *got);
        assert_int_equal(run_op(refctx, op, want), KR_OK);
        kr_feature_info fi;
        assert_int_equal(kr_accel_feature_info(refctx, op_feature[op], &fi), KR_OK);
        assert_int_equal(fi.counters.accelerated, 0);
        kr_context_free(refctx);

        /* fallback on: the right result, one fallback, one warning, sticky */
        setenv("KRSERVE_FAULT", op_fault[op], 1);
        kr_context *ctx = make_ctx(PLUGIN("test"), NULL, KR_OK, NULL);
        n_warnings = 0;
        for (int rep = 0; rep < 2; rep++) {
            memset(got, 0, sizeof *got);
            assert_int_equal(run_op(ctx, op, got), KR_OK);
            assert_memory_equal(got, want, sizeof *got); /* same reference kernels: bit-identical */
        }
        assert_int_equal(kr_accel_feature_info(ctx, op_feature[op], &fi), KR_OK);
        printf("# %-15s fallback on: calls %lld accelerated %lld fallbacks %lld warnings %d; "
               "reason: %s\n",
               op_fault[op], (long long)fi.counters.calls, (long long)fi.counters.accelerated,
               (long long)fi.counters.fallbacks, n_warnings, fi.counters.last_reason);
        assert_int_equal(fi.counters.calls, 2);
        assert_int_equal(fi.counters.accelerated, 0);
        assert_int_equal(fi.counters.fallbacks, 1);
        assert_int_equal(n_warnings, 1);
        assert_non_null(strstr(last_warning, "switched off"));
        assert_non_null(strstr(fi.counters.last_reason, "on test failed"));
        assert_false(fi.available); /* switched off for this context */
        kr_context_free(ctx);

        /* fallback off: the caller gets the error */
        o = kr_context_options_default();
        o.fallback_to_reference = 0;
        ctx = make_ctx(PLUGIN("test"), &o, KR_OK, NULL);
        kr_status s = run_op(ctx, op, got);
        assert_int_equal(s, KR_ERR_FAULT_INJECTED);
        assert_non_null(strstr(kr_context_last_error(ctx), "fallback_to_reference is off"));
        kr_context_free(ctx);
        unsetenv("KRSERVE_FAULT");

        /* no fault: the plugin does the work */
        ctx = make_ctx(PLUGIN("test"), NULL, KR_OK, NULL);
        assert_int_equal(run_op(ctx, op, got), KR_OK);
        assert_memory_equal(got, want, sizeof *got);
        assert_int_equal(kr_accel_feature_info(ctx, op_feature[op], &fi), KR_OK);
        assert_int_equal(fi.counters.accelerated, 1);
        kr_backend_info bi = plugin_info(ctx);
        assert_int_equal(bi.calls[op_feature[op]], 1);
        kr_context_free(ctx);
        free(want);
        free(got);
    }
    /* the n-th call only */
    setenv("KRSERVE_FAULT", "attention:test:2", 1);
    kr_context *ctx = make_ctx(PLUGIN("test"), NULL, KR_OK, NULL);
    unsetenv("KRSERVE_FAULT");
    op_run *r = calloc(1, sizeof *r);
    for (int i = 0; i < 3; i++) assert_int_equal(run_op(ctx, 0, r), KR_OK);
    kr_feature_info fi;
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi), KR_OK);
    assert_int_equal(fi.counters.accelerated, 1);
    assert_int_equal(fi.counters.fallbacks, 1);
    kr_context_free(ctx);
    free(r);
    setenv("KRSERVE_FAULT", "attention", 1);
    char err[512];
    make_ctx(PLUGIN("test"), NULL, KR_ERR_CONFIG, err);
    assert_non_null(strstr(err, "KRSERVE_FAULT"));
    unsetenv("KRSERVE_FAULT");
}

static void test_unsupported_case_and_switches(void **state) {
    (void)state;
    kr_context *ctx = make_ctx(PLUGIN("test"), NULL, KR_OK, NULL);
    /* head_dim 80: the test backend declines, ref serves, no fallback */
    float q[80], k[80], v[80], ob[80];
    for (int i = 0; i < 80; i++) q[i] = k[i] = v[i] = 0.1f * (float)i;
    kr_tensor tq = kr_tensor_bshd(q, KR_F32, 1, 1, 1, 80),
              tk = kr_tensor_bshd(k, KR_F32, 1, 1, 1, 80);
    kr_tensor tv = kr_tensor_bshd(v, KR_F32, 1, 1, 1, 80),
              to = kr_tensor_bshd(ob, KR_F32, 1, 1, 1, 80);
    assert_int_equal(kr_attention(ctx, &tq, &tk, &tv, &to, NULL), KR_OK);
    kr_feature_info fi;
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi), KR_OK);
    assert_int_equal(fi.counters.accelerated, 0);
    assert_int_equal(fi.counters.fallbacks, 0);
    assert_non_null(strstr(fi.counters.last_reason, "head_dim 80"));

    /* per-model switch: model A without flash attention, model B with */
    op_run *r = calloc(1, sizeof *r);
    assert_int_equal(kr_accel_set_model_feature(ctx, "model-a", KR_FEATURE_FLASH_ATTENTION, 0),
                     KR_OK);
    assert_int_equal(kr_context_set_model(ctx, "model-a"), KR_OK);
    assert_int_equal(run_op(ctx, 0, r), KR_OK);
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi), KR_OK);
    assert_int_equal(fi.counters.accelerated, 0);
    assert_string_equal(fi.reason, "disabled for the current model");
    assert_int_equal(kr_context_set_model(ctx, "model-b"), KR_OK);
    assert_int_equal(run_op(ctx, 0, r), KR_OK);
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi), KR_OK);
    assert_int_equal(fi.counters.accelerated, 1);
    /* model A's other features stay accelerated */
    assert_int_equal(kr_context_set_model(ctx, "model-a"), KR_OK);
    assert_int_equal(run_op(ctx, 1, r), KR_OK);
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FUSED_ROPE, &fi), KR_OK);
    assert_int_equal(fi.counters.accelerated, 1);
    /* global switch via the API */
    assert_int_equal(kr_accel_set_feature(ctx, KR_FEATURE_FUSED_ROPE, 0), KR_OK);
    assert_int_equal(run_op(ctx, 1, r), KR_OK);
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FUSED_ROPE, &fi), KR_OK);
    assert_int_equal(fi.counters.accelerated, 1);
    assert_string_equal(fi.reason, "disabled by configuration");
    assert_int_equal(kr_accel_set_feature(ctx, (kr_feature)7, 0), KR_ERR_INVALID_ARGUMENT);
    assert_int_equal(kr_accel_set_model_feature(ctx, "", KR_FEATURE_FUSED_ROPE, 0),
                     KR_ERR_INVALID_ARGUMENT);
    kr_context_free(ctx);

    /* prefer_reference and enabled = false keep everything on ref */
    kr_context_options o = kr_context_options_default();
    o.prefer_reference = 1;
    ctx = make_ctx(PLUGIN("test"), &o, KR_OK, NULL);
    assert_int_equal(run_op(ctx, 0, r), KR_OK);
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi), KR_OK);
    assert_int_equal(fi.counters.accelerated, 0);
    assert_string_equal(fi.reason, "prefer_reference is set");
    kr_context_free(ctx);
    free(r);
}

/* ---- configuration -------------------------------------------------------- */

static const char *write_file(const char *name, const char *text) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", KR_TEST_PLUGIN_DIR, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_config_file(void **state) {
    (void)state;
    const char *good = write_file(
        "good.yaml", "# every key\n"
                     "acceleration:\n"
                     "  enabled: true\n"
                     "  fallback_to_reference: false\n"
                     "  prefer_reference: no\n"
                     "  fallback_log_level: error\n"
                     "  plugin_path: " PLUGIN("test") "\n"
                                                      "  features:\n"
                                                      "    flash_attention: false\n"
                                                      "    fused_rope: true\n"
                                                      "    kv_quantization: on\n"
                                                      "  backends:\n"
                                                      "    order: [test, ref]\n"
                                                      "    deny: [cpu]\n"
                                                      "  models:\n"
                                                      "    model-a: {fused_rope: false}\n");
    kr_context_options o = kr_context_options_default();
    o.config_path = good;
    kr_context *ctx = NULL;
    char err[512];
    kr_status s = kr_context_create(&o, &ctx, err, sizeof err);
    if (s) fail_msg("good.yaml: %s", err);
    assert_string_equal(kr_accel_config_path(ctx), good);
    kr_feature_info fi;
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi), KR_OK);
    assert_false(fi.enabled);
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FUSED_ROPE, &fi), KR_OK);
    assert_true(fi.available);
    assert_string_equal(fi.backend, "test");
    assert_int_equal(kr_context_set_model(ctx, "model-a"), KR_OK);
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FUSED_ROPE, &fi), KR_OK);
    assert_false(fi.available);
    kr_context_free(ctx);

    /* precedence: API > environment > file */
    setenv("KRSERVE_FLASH_ATTENTION", "1", 1);
    assert_int_equal(kr_context_create(&o, &ctx, err, sizeof err), KR_OK);
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi), KR_OK);
    assert_true(fi.enabled); /* environment over file */
    kr_context_free(ctx);
    o.features[KR_FEATURE_FLASH_ATTENTION] = 0;
    assert_int_equal(kr_context_create(&o, &ctx, err, sizeof err), KR_OK);
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi), KR_OK);
    assert_false(fi.enabled); /* API over environment */
    kr_context_free(ctx);
    unsetenv("KRSERVE_FLASH_ATTENTION");
    setenv("KRSERVE_ACCELERATION", "maybe", 1);
    assert_int_equal(kr_context_create(NULL, &ctx, err, sizeof err), KR_ERR_CONFIG);
    assert_non_null(strstr(err, "KRSERVE_ACCELERATION=maybe"));
    unsetenv("KRSERVE_ACCELERATION");
    setenv("KRSERVE_CONFIG", good, 1); /* the file through the environment */
    assert_int_equal(kr_context_create(NULL, &ctx, err, sizeof err), KR_OK);
    assert_string_equal(kr_accel_config_path(ctx), good);
    kr_context_free(ctx);
    unsetenv("KRSERVE_CONFIG");

    const struct {
        const char *name, *text, *want;
    } bad[] = {
        {"unknown.yaml", "acceleration:\n  enabled: true\n  flash: true\n",
         "unknown.yaml:3: acceleration.flash: unknown key"},
        {"type.yaml", "acceleration:\n  enabled: perhaps\n",
         "type.yaml:2: acceleration.enabled: expected true or false"},
        {"syntax.yaml", "acceleration:\n  enabled: [true\n  x: 1\n", "syntax.yaml:"},
        {"feature.yaml", "acceleration:\n  features:\n    flash_atention: true\n",
         "feature.yaml:3: acceleration.features.flash_atention: unknown key"},
        {"level.yaml", "acceleration:\n  fallback_log_level: loud\n",
         "level.yaml:2: acceleration.fallback_log_level"},
        {"order.yaml", "acceleration:\n  backends:\n    order: [ref, test]\n",
         "order.yaml:3: acceleration.backends.order"},
        {"deny.yaml", "acceleration:\n  backends: {deny: [ref]}\n", "cannot be denied"},
        {"top.yaml", "accelerashun:\n  enabled: true\n",
         "top.yaml:1: accelerashun: unknown top-level key"},
        {"list.yaml", "- a\n- b\n", "top.yaml"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o = kr_context_options_default();
        o.config_path = write_file(bad[i].name, bad[i].text);
        s = kr_context_create(&o, &ctx, err, sizeof err);
        printf("# %-13s -> %s: %s\n", bad[i].name, kr_status_name(s), err);
        assert_int_equal(s, KR_ERR_CONFIG);
        assert_null(ctx);
        if (i + 1 < sizeof bad / sizeof bad[0] && !strstr(err, bad[i].want))
            fail_msg("%s: message '%s' lacks '%s'", bad[i].name, err, bad[i].want);
    }
    o = kr_context_options_default();
    o.config_path = "/nonexistent.yaml";
    assert_int_equal(kr_context_create(&o, &ctx, err, sizeof err), KR_ERR_IO);
    assert_non_null(strstr(err, "/nonexistent.yaml"));
    o = kr_context_options_default();
    o.deny_backends = "ref";
    assert_int_equal(kr_context_create(&o, &ctx, err, sizeof err), KR_ERR_CONFIG);
    o = kr_context_options_default();
    o.backends = "test,gpu,ref";
    assert_int_equal(kr_context_create(&o, &ctx, err, sizeof err), KR_ERR_CONFIG);
    assert_non_null(strstr(err, "unknown backend 'gpu'"));

    /* deny-list through the API keeps the plugin out */
    o = kr_context_options_default();
    o.deny_backends = "test,cpu";
    ctx = make_ctx(PLUGIN("test"), &o, KR_OK, NULL);
    assert_int_equal(kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fi), KR_OK);
    assert_false(fi.available);
    assert_non_null(strstr(fi.reason, "denied"));
    kr_context_free(ctx);
}

int main(void) {
    kt_base_seed();
    unsetenv("KRSERVE_FAULT");
    unsetenv("KRSERVE_CONFIG");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plugin_states),
        cmocka_unit_test(test_fault_injection_every_op),
        cmocka_unit_test(test_unsupported_case_and_switches),
        cmocka_unit_test(test_config_file),
    };
    return cmocka_run_group_tests_name("accel", tests, NULL, NULL);
}
