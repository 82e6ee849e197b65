/*
 * test_bench.c — `krserve bench` without timing anything that matters:
 * option parsing (good forms, and bad values each getting a message that
 * names the option), the FLOP and byte formulas (hand-computed values and a
 * brute-force count of visible pairs), the JSON document's schema and the
 * CSV on a tiny run, the check that refuses to time a wrong backend (the
 * test plugin with KRSERVE_TEST_WRONG=1), and the gnuplot plot.
 */
#include "common.h"

#include "bench.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- options -------------------------------------------------------------- */

static int parse(kb_options *o, char *err, size_t n, int argc, const char *const *argv) {
    kb_options_default(o);
    FILE *null = fopen("/dev/null", "w");
    const int r = kb_parse_args(argc, (char **)argv, o, null, err, n);
    if (null) fclose(null);
    return r;
}

static void test_defaults(void **state) {
    (void)state;
    kb_options o;
    kb_options_default(&o);
    assert_int_equal(o.n_contexts, 5);
    assert_int_equal(o.contexts[0], 512);
    assert_int_equal(o.contexts[4], 32768);
    assert_int_equal(o.heads, 32);
    assert_int_equal(o.kv_heads, 8);
    assert_int_equal(o.head_dim, 128);
    assert_true(o.all_backends);
    for (int k = 0; k < KB_KIND_COUNT_; k++) assert_true(o.kinds[k]);
}

static void test_parse_good(void **state) {
    (void)state;
    kb_options o;
    char err[256] = "";
    const char *a1[] = {"decode",  "rope",     "--context",  "7,4k",    "--heads=16:4",
                        "--dtype", "f32,bf16", "--kv-dtype", "int8",    "--causal",
                        "--reps",  "3",        "--backend",  "cpu,ref", "--plot",
                        "x.svg",   "--budget", "0.5"};
    assert_int_equal(parse(&o, err, sizeof err, 18, a1), 0);
    assert_false(o.kinds[KB_ATTENTION]);
    assert_true(o.kinds[KB_DECODE]);
    assert_true(o.kinds[KB_ROPE]);
    assert_false(o.kinds[KB_KV_APPEND]);
    assert_int_equal(o.n_contexts, 2);
    assert_int_equal(o.contexts[0], 7);
    assert_int_equal(o.contexts[1], 4096);
    assert_int_equal(o.heads, 16);
    assert_int_equal(o.kv_heads, 4);
    assert_int_equal(o.n_dtypes, 2);
    assert_int_equal(o.dtypes[0], KR_F32);
    assert_int_equal(o.dtypes[1], KR_BF16);
    assert_int_equal(o.n_kv_dtypes, 1);
    assert_int_equal(o.kv_dtypes[0], KR_I8);
    assert_int_equal(o.n_causal, 1);
    assert_int_equal(o.causal_modes[0], 1);
    assert_int_equal(o.reps, 3);
    assert_false(o.all_backends);
    assert_int_equal(o.n_backends, 2);
    assert_string_equal(o.backends[0], "cpu");
    assert_string_equal(o.plot, "x.svg");
    assert_true(fabs(o.budget_s - 0.5) < 1e-12);

    const char *a2[] = {"--causal", "both", "--heads", "8", "--no-progress", "--backend", "all"};
    assert_int_equal(parse(&o, err, sizeof err, 7, a2), 0);
    assert_int_equal(o.n_causal, 2);
    assert_int_equal(o.heads, 8);
    assert_int_equal(o.kv_heads, 8);
    assert_false(o.progress);
    assert_true(o.all_backends);

    const char *a3[] = {"--no-causal", "--help"};
    assert_int_equal(parse(&o, err, sizeof err, 2, a3), 1);
}

static void test_parse_bad(void **state) {
    (void)state;
    static const struct {
        const char *argv[3];
        int argc;
        const char *want; /* in the message */
    } cases[] = {
        {{"--context", "0"}, 2, "--context: '0'"},
        {{"--context", "5,,6"}, 2, "--context: empty item"},
        {{"--context", "12q"}, 2, "--context: '12q'"},
        {{"--heads", "32:7"}, 2, "not a multiple of 7"},
        {{"--heads", "x"}, 2, "--heads: 'x'"},
        {{"--head-dim", "7"}, 2, "--head-dim: '7' is not an even"},
        {{"--q-len", "17"}, 2, "--q-len: '17'"},
        {{"--dtype", "int8"}, 2, "--dtype: 'int8' is not one of f32, f16, bf16"},
        {{"--kv-dtype", "q4"}, 2, "--kv-dtype: 'q4'"},
        {{"--causal=maybe"}, 1, "--causal: 'maybe'"},
        {{"--reps", "0"}, 2, "--reps: '0'"},
        {{"--reps"}, 1, "--reps: missing value"},
        {{"--warmup", "-1"}, 2, "--warmup: '-1'"},
        {{"--threads", "-1"}, 2, "--threads: '-1'"},
        {{"--budget", "-1"}, 2, "--budget: '-1'"},
        {{"--budget", "nan"}, 2, "--budget: 'nan'"},
        {{"--ref-budget", "0"}, 2, "--ref-budget: '0'"},
        {{"--batch", "0"}, 2, "--batch: '0'"},
        {{"--plot", "a.jpg"}, 2, "--plot: 'a.jpg' must end in .png or .svg"},
        {{"--backend", "Bad!"}, 2, "--backend: 'Bad!'"},
        {{"--seed", "-3"}, 2, "--seed: '-3'"},
        {{"--bogus"}, 1, "unknown option '--bogus'"},
        {{"warp"}, 1, "unknown sub-benchmark 'warp'"},
        {{"generate"}, 1, "needs the engine"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kb_options o;
        char err[256] = "";
        const int r = parse(&o, err, sizeof err, cases[i].argc, cases[i].argv);
        if (r != -1 || !strstr(err, cases[i].want))
            fail_msg("case %zu (%s %s): returned %d, message '%s', wanted '%s'", i,
                     cases[i].argv[0], cases[i].argc > 1 ? cases[i].argv[1] : "", r, err,
                     cases[i].want);
    }
}

/* ---- formulas --------------------------------------------------------------- */

/* Visible pairs by brute force, from the masking rule in ops.h. */
static double brute_pairs(int64_t Sq, int64_t Skv, bool causal) {
    double n = 0;
    for (int64_t i = 0; i < Sq; i++)
        for (int64_t j = 0; j < Skv; j++) n += !causal || j <= Skv - Sq + i;
    return n;
}

static void test_formulas(void **state) {
    (void)state;
    assert_true(kb_attention_pairs(4, 4, true) == 10);
    assert_true(kb_attention_pairs(4, 4, false) == 16);
    assert_true(kb_attention_pairs(2, 5, true) == 9); /* rows see 4 and 5 keys */
    assert_true(kb_attention_pairs(5, 2, true) == 3); /* rows see 0, 0, 0, 1, 2 */
    assert_true(kb_attention_pairs(0, 5, true) == 0);
    const int64_t sizes[] = {1, 2, 7, 16, 33, 100};
    for (size_t a = 0; a < 6; a++)
        for (size_t b = 0; b < 6; b++)
            for (int c = 0; c < 2; c++)
                assert_true(kb_attention_pairs(sizes[a], sizes[b], c) ==
                            brute_pairs(sizes[a], sizes[b], c));

    /* attention: B2 H4 Hkv2 D64 S10 f16 causal: 55 pairs */
    kb_shape s = {KB_ATTENTION, 2, 4, 2, 64, 10, 1, KR_F16, KR_F16, true};
    kb_cost c = kb_case_cost(&s);
    assert_true(c.flops == 4.0 * 2 * 4 * 64 * 55);
    assert_true(c.bytes == 2.0 * 2 * 10 * 64 * (2 * 4 + 2 * 2));
    assert_true(c.compute);
    /* decode over an int8 cache: 2 x 8 heads x (128 + 6) bytes per token */
    assert_true(kb_kv_token_bytes(8, 128, KR_I8) == 2144);
    assert_true(kb_kv_token_bytes(8, 128, KR_F16) == 4096);
    kb_shape d = {KB_DECODE, 1, 32, 8, 128, 1000, 1, KR_F16, KR_I8, true};
    c = kb_case_cost(&d);
    assert_true(c.bytes == 1000.0 * 2144 + 2.0 * 2 * 32 * 128);
    assert_true(c.flops == 4.0 * 32 * 128 * 1000);
    assert_false(c.compute);
    d.q_len = 4; /* causal within the chunk: 997 + 998 + 999 + 1000 keys */
    c = kb_case_cost(&d);
    assert_true(c.flops == 4.0 * 32 * 128 * 3994);
    assert_true(c.compute); /* chunked prefill: judged against the FMA ceiling */
    d.q_len = 3;
    assert_false(kb_case_cost(&d).compute);
    kb_shape r = {KB_ROPE, 1, 4, 4, 64, 10, 1, KR_F32, KR_F32, false};
    c = kb_case_cost(&r);
    assert_true(c.bytes == 2.0 * 4 * 10 * 4 * 64 + 8.0 * 10);
    kb_shape k = {KB_KV_APPEND, 1, 4, 2, 64, 10, 1, KR_F16, KR_F16, false};
    c = kb_case_cost(&k);
    assert_true(c.bytes == 2.0 * 2 * 10 * 2 * 64 + 10.0 * 2 * 2 * 64 * 2);
}

/* ---- a tiny run ---------------------------------------------------------------- */

static void tiny_options(kb_options *o) {
    kb_options_default(o);
    o->n_contexts = 2;
    o->contexts[0] = 7;
    o->contexts[1] = 33;
    o->heads = 4;
    o->kv_heads = 2;
    o->head_dim = 64;
    o->q_len = 2;
    o->dtypes[0] = KR_F32;
    o->reps = 2;
    o->progress = false;
    o->quiet = true;
    o->tiny_ceilings = true;
    o->seed = kt_base_seed();
}

static void expect_number_or_null(const cJSON *o, const char *key) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!x || !(cJSON_IsNumber(x) || cJSON_IsNull(x)))
        fail_msg("field '%s' missing or not a number/null", key);
}

static const cJSON *expect(const cJSON *o, const char *key, int type) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!x || (x->type & 0xff) != type) fail_msg("field '%s' missing or of the wrong type", key);
    return x;
}

static void test_json_schema(void **state) {
    (void)state;
    kb_options o;
    tiny_options(&o);
    kb_report rep;
    char err[512] = "";
    if (kb_run(&o, &rep, err, sizeof err)) fail_msg("kb_run: %s", err);
    /* 4 sub-benchmarks: attention 1 series, decode 2 (f16, int8), rope 1,
     * kv-append 2; 2 contexts; at least ref */
    assert_true(rep.n_results >= 12);
    char *s = kb_json_string(&rep);
    assert_non_null(s);
    cJSON *root = cJSON_Parse(s);
    free(s);
    assert_non_null(root);
    assert_string_equal(expect(root, "schema", cJSON_String)->valuestring, "krserve-bench");
    assert_int_equal(expect(root, "schema_version", cJSON_Number)->valueint, KB_SCHEMA_VERSION);
    expect(root, "krserve_version", cJSON_String);
    expect(root, "date", cJSON_String);
    const cJSON *m = expect(root, "machine", cJSON_Object);
    expect(m, "cpu", cJSON_String);
    expect(m, "threads", cJSON_Number);
    const cJSON *ce = expect(root, "ceilings", cJSON_Object);
    expect(ce, "fma_gflops", cJSON_Number);
    expect(ce, "read_gbps", cJSON_Number);
    expect(ce, "fma_kernel", cJSON_String);
    const cJSON *op = expect(root, "options", cJSON_Object);
    assert_int_equal(cJSON_GetArraySize(expect(op, "contexts", cJSON_Array)), 2);
    const cJSON *results = expect(root, "results", cJSON_Array);
    assert_int_equal(cJSON_GetArraySize(results), rep.n_results);
    const cJSON *r;
    int ref_ok = 0;
    cJSON_ArrayForEach(r, results) {
        expect(r, "sub_benchmark", cJSON_String);
        const cJSON *p = expect(r, "params", cJSON_Object);
        const char *keys[] = {"batch", "heads", "kv_heads", "head_dim", "context", "q_len"};
        for (size_t i = 0; i < 6; i++) expect(p, keys[i], cJSON_Number);
        expect(p, "dtype", cJSON_String);
        assert_non_null(cJSON_GetObjectItemCaseSensitive(p, "kv_dtype"));
        assert_true(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(p, "causal")));
        expect(r, "backend", cJSON_String);
        expect(r, "served_by", cJSON_String);
        const char *st = expect(r, "state", cJSON_String)->valuestring;
        expect(r, "note", cJSON_String);
        expect(r, "reps", cJSON_Number);
        const char *nums[] = {"median_s",         "min_s",   "max_s", "spread",
                              "sampled",          "flops",   "bytes", "tolerance",
                              "ceiling_fraction", "speedup", "error"};
        for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) expect_number_or_null(r, nums[i]);
        expect(r, "bound", cJSON_String);
        const cJSON *t = expect(r, "throughput", cJSON_Object);
        expect_number_or_null(t, "gflops");
        expect_number_or_null(t, "gbps");
        const cJSON *c = expect(r, "counters", cJSON_Object);
        expect(c, "calls", cJSON_Number);
        expect(c, "accelerated", cJSON_Number);
        expect(c, "fallbacks", cJSON_Number);
        expect(c, "last_reason", cJSON_String);
        if (!strcmp(cJSON_GetObjectItem(r, "backend")->valuestring, "ref")) {
            /* tiny cases fit any budget: the reference is measured, in full, by itself */
            assert_string_equal(st, "ok");
            assert_true(cJSON_GetObjectItem(r, "median_s")->valuedouble > 0);
            assert_true(fabs(cJSON_GetObjectItem(r, "speedup")->valuedouble - 1) < 1e-12);
            assert_true(cJSON_GetObjectItem(r, "sampled")->valuedouble == 1);
            assert_true(cJSON_GetObjectItem(c, "calls")->valuedouble >= 2);
            assert_true(cJSON_GetObjectItem(c, "accelerated")->valuedouble == 0);
            ref_ok++;
        }
    }
    assert_int_equal(ref_ok, 12);
    cJSON_Delete(root);

    /* the files: JSON parses, CSV has a header and a row per result */
    char json[] = "/tmp/krbench-test-XXXXXX", csv[64];
    const int fd = mkstemp(json);
    assert_true(fd >= 0);
    close(fd);
    snprintf(csv, sizeof csv, "%s.csv", json);
    assert_int_equal(kb_write_json(&rep, json, err, sizeof err), 0);
    assert_int_equal(kb_write_csv(&rep, csv, err, sizeof err), 0);
    FILE *f = fopen(csv, "r");
    assert_non_null(f);
    int lines = 0, ch;
    while ((ch = fgetc(f)) != EOF) lines += ch == '\n';
    fclose(f);
    assert_int_equal(lines, rep.n_results + 1);
    assert_int_equal(kb_write_json(&rep, "/nonexistent/dir/x.json", err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/dir/x.json"));
    remove(json);
    remove(csv);
    kb_report_free(&rep);
}

/* A backend that answers wrongly is reported WRONG and not timed; a right
 * one is timed, with its calls counted as accelerated. */
/* tiny_options with one sub-benchmark, on the test plugin's backend alone
 * (beside ref). */
static void test_plugin_options(kb_options *o, kb_kind kind) {
    tiny_options(o);
    for (int k = 0; k < KB_KIND_COUNT_; k++) o->kinds[k] = k == (int)kind;
    o->all_backends = false;
    o->n_backends = 1;
    snprintf(o->backends[0], sizeof o->backends[0], "test");
}

/* An append that reports success and writes nothing: the bench fills the
 * cache with other values before the checked run, so the unwritten slots
 * read back wrong (not as the reference's own run left them). */
static void test_unwritten_append_is_wrong(void **state) {
    (void)state;
    setenv("KRSERVE_PLUGIN_PATH", KR_TEST_PLUGIN_DIR "/libkrserve-test.so", 1);
    setenv("KRSERVE_TEST_WRONG", "append", 1);
    kb_options o;
    test_plugin_options(&o, KB_KV_APPEND);
    kb_report rep;
    char err[512] = "";
    if (kb_run(&o, &rep, err, sizeof err)) fail_msg("kb_run: %s", err);
    int n_test = 0;
    for (int i = 0; i < rep.n_results; i++) {
        const kb_result *r = &rep.results[i];
        if (!strcmp(r->backend, "ref")) continue;
        n_test++;
        if (r->state != KB_WRONG)
            fail_msg("kv-append to %s, context %lld: state %s, wanted wrong",
                     kr_dtype_name(r->shape.kv_dtype), (long long)r->shape.context,
                     kb_state_name(r->state));
        assert_int_equal(r->reps, 0);
    }
    assert_int_equal(n_test, 4); /* 2 contexts x the f16 and int8 caches */
    kb_report_free(&rep);
    unsetenv("KRSERVE_TEST_WRONG");
    unsetenv("KRSERVE_PLUGIN_PATH");
}

static void test_checked_before_timed(void **state) {
    (void)state;
    setenv("KRSERVE_PLUGIN_PATH", KR_TEST_PLUGIN_DIR "/libkrserve-test.so", 1);
    for (int wrong = 0; wrong < 2; wrong++) {
        if (wrong)
            setenv("KRSERVE_TEST_WRONG", "1", 1);
        else
            unsetenv("KRSERVE_TEST_WRONG");
        kb_options o;
        test_plugin_options(&o, KB_ATTENTION);
        kb_report rep;
        char err[512] = "";
        if (kb_run(&o, &rep, err, sizeof err)) fail_msg("kb_run: %s", err);
        assert_int_equal(rep.n_results, 4); /* 2 contexts x (ref, test) */
        for (int i = 0; i < rep.n_results; i++) {
            const kb_result *r = &rep.results[i];
            if (!strcmp(r->backend, "ref")) continue;
            assert_string_equal(r->backend, "test");
            if (wrong) {
                if (r->state != KB_WRONG)
                    fail_msg("context %lld: state %s, wanted wrong", (long long)r->shape.context,
                             kb_state_name(r->state));
                assert_int_equal(r->reps, 0);
                assert_true(r->error > r->tolerance);
                assert_non_null(strstr(r->note, "WRONG"));
                assert_true(isnan(r->speedup));
            } else {
                if (r->state != KB_OK) fail_msg("state %s: %s", kb_state_name(r->state), r->note);
                assert_true(r->error <= r->tolerance);
                assert_true(r->accelerated > 0);
                assert_int_equal(r->accelerated, r->calls);
                assert_int_equal(r->fallbacks, 0);
                assert_string_equal(r->served_by, "test");
                assert_true(isfinite(r->speedup) && r->speedup > 0);
            }
        }
        kb_report_free(&rep);
    }
    unsetenv("KRSERVE_TEST_WRONG");

    /* a backend that does not exist is an error naming it */
    kb_options o;
    tiny_options(&o);
    o.all_backends = false;
    o.n_backends = 1;
    snprintf(o.backends[0], sizeof o.backends[0], "nosuch");
    kb_report rep;
    char err[512] = "";
    assert_int_equal(kb_run(&o, &rep, err, sizeof err), -1);
    assert_non_null(strstr(err, "'nosuch'"));
    kb_report_free(&rep);
    unsetenv("KRSERVE_PLUGIN_PATH");
}

static void test_plot(void **state) {
    (void)state;
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        skip(); /* gnuplot-nox is a test dependency; `make test` installs it */
    }
    kb_options o;
    tiny_options(&o);
    o.n_contexts = 1;
    kb_report rep;
    char err[512] = "";
    if (kb_run(&o, &rep, err, sizeof err)) fail_msg("kb_run: %s", err);
    char png[] = "/tmp/krbench-plot-XXXXXX.png";
    const int fd = mkstemps(png, 4);
    assert_true(fd >= 0);
    close(fd);
    if (kb_write_plot(&rep, png, err, sizeof err)) fail_msg("plot: %s", err);
    FILE *f = fopen(png, "rb");
    assert_non_null(f);
    unsigned char sig[8] = {0};
    assert_int_equal(fread(sig, 1, 8, f), 8);
    fclose(f);
    assert_memory_equal(sig, "\x89PNG\r\n\x1a\n", 8);
    remove(png);
    kb_report_free(&rep);
}

int main(void) {
    kt_base_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_formulas),
        cmocka_unit_test(test_json_schema),
        cmocka_unit_test(test_checked_before_timed),
        cmocka_unit_test(test_unwritten_append_is_wrong),
        cmocka_unit_test(test_plot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
