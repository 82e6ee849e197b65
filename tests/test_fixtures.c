/*
 * test_fixtures.c — the engine against transformers: every model directory
 * under tests/fixtures (made by tests/gpu/make_fixtures.py) is loaded with
 * its tokenizer; the tokenisation of each prompt and text must equal
 * transformers', the logits of every prompt position must be within 1e-4
 * (f32 weights, f32 KV cache), and 32 greedy tokens must be the same ids,
 * in a reference-only context and in one with the accelerated backends.
 * With no fixture directory present, the tests report SKIPPED.
 */
#include "common.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cJSON *read_ref(const char *dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/reference.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *t = malloc((size_t)n + 1);
    const size_t got = fread(t, 1, (size_t)n, f);
    fclose(f);
    t[got] = '\0';
    cJSON *j = cJSON_Parse(t);
    free(t);
    return j;
}

static int64_t ids_of(const cJSON *arr, int32_t *out, int64_t cap) {
    int64_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) if (n < cap) out[n++] = (int32_t)e->valuedouble;
    return n;
}

static void check_dir(kr_context *ctx, const char *dir, const char *name) {
    cJSON *ref = read_ref(dir);
    if (!ref) fail_msg("%s: no readable reference.json", dir);
    kr_tokenizer *tok = NULL;
    kr_model *m = NULL;
    if (kr_tokenizer_load(ctx, dir, &tok)) fail_msg("%s: %s", dir, kr_context_last_error(ctx));
    kr_model_options o = kr_model_options_default();
    o.kv_dtype = KR_F32;
    o.max_context = 512;
    if (kr_model_load(ctx, dir, &o, &m)) fail_msg("%s: %s", dir, kr_context_last_error(ctx));
    const kr_model_config *c = kr_model_get_config(m);
    int32_t want[512], got[512];
    /* tokenisation of every text */
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(ref, "texts")) {
        const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(e, "text"));
        const int64_t nw = ids_of(cJSON_GetObjectItem(e, "ids"), want, 512);
        int64_t ng = 0;
        assert_int_equal(kr_tokenizer_encode(ctx, tok, text, 1, got, 512, &ng), KR_OK);
        if (ng != nw || memcmp(got, want, sizeof(int32_t) * (size_t)nw))
            fail_msg("%s: tokenisation of '%s' differs from transformers' (%lld vs %lld ids)", name,
                     text, (long long)ng, (long long)nw);
    }
    double worst = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(ref, "prompts")) {
        const int64_t n = ids_of(cJSON_GetObjectItem(e, "ids"), want, 512);
        int64_t ng = 0;
        const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(e, "text"));
        assert_int_equal(kr_tokenizer_encode(ctx, tok, text, 1, got, 512, &ng), KR_OK);
        assert_int_equal(ng, n);
        float *lg = malloc(sizeof(float) * (size_t)(n * c->vocab_size));
        assert_int_equal(kr_model_reset(ctx, m), KR_OK);
        assert_int_equal(kr_model_forward(ctx, m, want, n, lg, 1), KR_OK);
        const cJSON *rows = cJSON_GetObjectItem(e, "logits");
        for (int64_t t = 0; t < n; t++) {
            const cJSON *row = cJSON_GetArrayItem(rows, (int)t);
            if (cJSON_GetArraySize(row) != c->vocab_size)
                fail_msg("%s: reference logits row %lld has %d entries, vocab %lld", name,
                         (long long)t, cJSON_GetArraySize(row), (long long)c->vocab_size);
            int64_t v = 0;
            const cJSON *x;
            cJSON_ArrayForEach(x, row) {
                const double d = fabs((double)lg[t * c->vocab_size + v] - x->valuedouble);
                if (!(d <= 1e-4))
                    fail_msg("%s: logit [%lld][%lld] of '%s' is %.7g, transformers %.7g", name,
                             (long long)t, (long long)v, text, (double)lg[t * c->vocab_size + v],
                             x->valuedouble);
                if (d > worst) worst = d;
                v++;
            }
        }
        /* 32 greedy tokens; transformers ran with min_new_tokens, so eos is masked */
        const int64_t ng2 = ids_of(cJSON_GetObjectItem(e, "greedy"), want + n, 512 - n);
        float *last = malloc(sizeof(float) * (size_t)c->vocab_size);
        memcpy(last, lg + (n - 1) * c->vocab_size, sizeof(float) * (size_t)c->vocab_size);
        for (int64_t i = 0; i < ng2; i++) {
            for (int32_t k = 0; k < c->n_eos; k++) last[c->eos_token_ids[k]] = -INFINITY;
            int64_t best = 0;
            for (int64_t v = 1; v < c->vocab_size; v++)
                if (last[v] > last[best]) best = v;
            if (best != want[n + i])
                fail_msg("%s: greedy token %lld of '%s' is %lld, transformers %d", name,
                         (long long)i, text, (long long)best, (int)want[n + i]);
            const int32_t next = (int32_t)best;
            assert_int_equal(kr_model_forward(ctx, m, &next, 1, last, 0), KR_OK);
        }
        free(last);
        free(lg);
    }
    printf("# fixture %-8s: tokenisations identical, worst |logit - transformers| %.2g, greedy ids "
           "identical\n",
           name, worst);
    kr_model_free(m);
    kr_tokenizer_free(tok);
    cJSON_Delete(ref);
}

static void run_all(int accel) {
    DIR *d = opendir(KR_TEST_FIXTURES_DIR);
    int n = 0;
    kr_context_options o = kr_context_options_default();
    o.acceleration = accel;
    kr_context *ctx = NULL;
    assert_int_equal(kr_context_create(&o, &ctx, NULL, 0), KR_OK);
    for (struct dirent *e = d ? readdir(d) : NULL; e; e = readdir(d)) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s", KR_TEST_FIXTURES_DIR, e->d_name);
        char ref[1100];
        snprintf(ref, sizeof ref, "%s/reference.json", dir);
        FILE *f = e->d_name[0] != '.' ? fopen(ref, "r") : NULL;
        if (!f) continue;
        fclose(f);
        check_dir(ctx, dir, e->d_name);
        n++;
    }
    if (d) closedir(d);
    kr_context_free(ctx);
    if (!n) {
        printf("# SKIP: no fixture directories in %s yet (tests/gpu/make_fixtures.py makes them)\n",
               KR_TEST_FIXTURES_DIR);
        skip();
    }
}

static void test_fixtures_ref(void **state) {
    (void)state;
    run_all(0);
}

static void test_fixtures_accelerated(void **state) {
    (void)state;
    run_all(KR_UNSET);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures_ref),
        cmocka_unit_test(test_fixtures_accelerated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
