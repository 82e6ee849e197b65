/*
 * bench_generate.c — `krserve bench generate`, llama-bench style: prefill
 * and decode tokens per second of a whole model at several KV depths, the
 * accelerated backends against the reference, in one run.
 *
 * The model is random-weight (kr_model_create_random; a Llama-like shape
 * that fits a small machine, or --model DIR for real weights). For each
 * depth d the KV cache is filled to d with random K/V (cache content does
 * not change the speed, and filling it through the model would take longer
 * than the measurement), then one chunk of --prefill tokens is run at depth
 * d (prefill tok/s) and --decode single tokens after it (decode tok/s). Each
 * backend has its own context (ref: acceleration off); the cache is refilled
 * to d for each. A reference case whose estimated time exceeds --ref-budget
 * seconds is skipped with its estimate printed.
 */
#include "generate.h"

#include <krserve/krserve.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Fills the model's cache to `depth` tokens of random K/V (all layers). */
static kr_status fill(kr_context *ctx, kr_model *m, int64_t depth, uint64_t seed) {
    const kr_model_config *c = kr_model_get_config(m);
    kr_kv_cache *kc = kr_model_kv_cache(m);
    kr_status s = kr_kv_cache_reset(ctx, kc);
    const int64_t step = 1024, row = c->n_kv_heads * c->head_dim;
    uint16_t *buf = malloc(sizeof(uint16_t) * (size_t)(step * row));
    if (!buf) return KR_ERR_OUT_OF_MEMORY;
    uint64_t st = seed;
    for (int64_t i = 0; i < step * row; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        buf[i] = kr_f32_to_f16((float)((double)(st >> 40) / 16777216.0 - 0.5));
    }
    for (int64_t l = 0; l < c->n_layers && !s; l++)
        for (int64_t t = 0; t < depth && !s; t += step) {
            const int64_t n = depth - t < step ? depth - t : step;
            kr_tensor k = kr_tensor_bshd(buf, KR_F16, 1, n, c->n_kv_heads, c->head_dim);
            s = kr_kv_cache_append(ctx, kc, l, &k, &k, NULL, NULL, NULL);
        }
    free(buf);
    return s;
}

typedef struct gb_result {
    double prefill, decode; /* tok/s; < 0: skipped, with the estimate in est_s */
    double est_s;
} gb_result;

static kr_status measure(kr_context *ctx, kr_model *m, int64_t depth, int64_t n_pre, int64_t n_dec,
                         gb_result *r) {
    const kr_model_config *c = kr_model_get_config(m);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)n_pre);
    float *lg = malloc(sizeof(float) * (size_t)c->vocab_size);
    if (!tok || !lg) {
        free(tok);
        free(lg);
        return KR_ERR_OUT_OF_MEMORY;
    }
    for (int64_t i = 0; i < n_pre; i++) tok[i] = (int32_t)((i * 7919) % c->vocab_size);
    kr_status s = fill(ctx, m, depth, 42);
    double t0 = now();
    if (!s) s = kr_model_forward(ctx, m, tok, n_pre, lg, 0);
    r->prefill = (double)n_pre / (now() - t0);
    t0 = now();
    for (int64_t i = 0; i < n_dec && !s; i++)
        s = kr_model_forward(ctx, m, tok + i % n_pre, 1, lg, 0);
    r->decode = (double)n_dec / (now() - t0);
    free(tok);
    free(lg);
    return s;
}

static kr_context *ctx_for(const char *config, int accel) {
    kr_context_options o = kr_context_options_default();
    o.config_path = config;
    o.acceleration = accel;
    o.log_level = KR_LOG_ERROR;
    kr_context *ctx = NULL;
    char err[512];
    if (kr_context_create(&o, &ctx, err, sizeof err) != KR_OK) {
        fprintf(stderr, "krserve bench generate: %s\n", err);
        return NULL;
    }
    return ctx;
}

int kr_cmd_bench_generate(int argc, char **argv, const char *config) {
    int64_t depths[16] = {512, 2048, 8192, 32768}, n_depths = 4, n_pre = 128, n_dec = 16;
    double ref_budget = 30;
    const char *dir = NULL;
    kr_dtype kv = KR_F16;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: krserve bench generate [--depths 512,2048,8192,32768] [--prefill 128]\n"
                   "       [--decode 16] [--kv-dtype f16|i8] [--ref-budget SECONDS] [--model DIR]\n"
                   "prefill and decode tokens/s of a whole model at each KV depth: accelerated\n"
                   "backends vs the reference (a random-weight Llama-like model unless --model)\n");
            return 0;
        }
        if (!v) {
            fprintf(stderr, "krserve bench generate: %s needs a value\n", a);
            return 2;
        }
        char *end = NULL;
        if (!strcmp(a, "--depths")) {
            n_depths = 0;
            for (const char *p = v; *p && n_depths < 16;) {
                const long long d = strtoll(p, &end, 10);
                if (end == p || d < 0 || d > (1 << 24)) {
                    fprintf(stderr,
                            "krserve bench generate: --depths '%s' is not a list of "
                            "token counts\n",
                            v);
                    return 2;
                }
                depths[n_depths++] = d;
                p = *end == ',' ? end + 1 : end;
            }
        } else if (!strcmp(a, "--prefill") || !strcmp(a, "--decode") ||
                   !strcmp(a, "--ref-budget")) {
            const double x = strtod(v, &end);
            if (end == v || *end || !(x >= (a[2] == 'r' ? 0 : 1)) || x > 1e7) {
                fprintf(stderr, "krserve bench generate: %s '%s' is out of range\n", a, v);
                return 2;
            }
            if (a[2] == 'p')
                n_pre = (int64_t)x;
            else if (a[2] == 'd')
                n_dec = (int64_t)x;
            else
                ref_budget = x;
        } else if (!strcmp(a, "--model")) {
            dir = v;
        } else if (!strcmp(a, "--kv-dtype") && (!strcmp(v, "f16") || !strcmp(v, "i8"))) {
            kv = !strcmp(v, "i8") ? KR_I8 : KR_F16;
        } else {
            fprintf(stderr, "krserve bench generate: bad option or value '%s %s' (try --help)\n", a,
                    v);
            return 2;
        }
        i++;
    }
    int64_t max_depth = 0;
    for (int64_t i = 0; i < n_depths; i++)
        max_depth = depths[i] > max_depth ? depths[i] : max_depth;
    kr_context *acc = ctx_for(config, KR_UNSET), *ref = ctx_for(config, 0);
    kr_model *m = NULL;
    int rc = 1;
    if (!acc || !ref) goto done;
    kr_model_options mo = kr_model_options_default();
    mo.kv_dtype = kv;
    mo.max_context = max_depth + n_pre + n_dec + 1;
    kr_model_config c;
    memset(&c, 0, sizeof c);
    if (dir) {
        if (kr_model_load(acc, dir, &mo, &m)) {
            fprintf(stderr, "krserve bench generate: %s\n", kr_context_last_error(acc));
            goto done;
        }
    } else { /* ~50M parameters besides the 32000-token embedding: fits 2 cores */
        c.arch = KR_ARCH_LLAMA;
        snprintf(c.model_type, sizeof c.model_type, "llama");
        c.hidden_size = 768, c.n_layers = 8, c.n_heads = 12, c.n_kv_heads = 4, c.head_dim = 64;
        c.intermediate_size = 2048, c.vocab_size = 32000, c.max_position_embeddings = 131072;
        c.rms_norm_eps = 1e-5, c.rope = kr_rope_params_default(), c.tie_word_embeddings = 1;
        c.sliding_window = -1, c.bos_token_id = -1;
        if (kr_model_create_random(acc, &c, &mo, 7, &m)) {
            fprintf(stderr, "krserve bench generate: %s\n", kr_context_last_error(acc));
            goto done;
        }
    }
    const kr_model_config *mc = kr_model_get_config(m);
    printf(
        "krserve bench generate: %s, %lld layers, hidden %lld, %lld:%lld heads x %lld, ffn %lld, "
        "vocab %lld%s; KV %s; prefill %lld tokens, decode %lld tokens at each depth\n",
        mc->model_type, (long long)mc->n_layers, (long long)mc->hidden_size, (long long)mc->n_heads,
        (long long)mc->n_kv_heads, (long long)mc->head_dim, (long long)mc->intermediate_size,
        (long long)mc->vocab_size, dir ? "" : " (random weights)", kr_dtype_name(kv),
        (long long)n_pre, (long long)n_dec);
    printf("%8s | %14s %14s %8s | %14s %14s %8s\n", "depth", "prefill accel", "prefill ref",
           "speed-up", "decode accel", "decode ref", "speed-up");
    /* the reference's attention speed, from the smallest depth, scales its estimates */
    double ref_s_per_key = 0;
    for (int64_t i = 0; i < n_depths; i++) {
        const int64_t d = depths[i];
        gb_result ra, rr = {-1, -1, 0};
        if (measure(acc, m, d, n_pre, n_dec, &ra)) {
            fprintf(stderr, "krserve bench generate: %s\n", kr_context_last_error(acc));
            goto done;
        }
        /* reference cost ~ tokens x depth x (per-key time) + the accelerated matmuls */
        const double est = ref_s_per_key * (double)(n_pre + n_dec) * (double)d;
        if (ref_s_per_key > 0 && est > ref_budget) {
            rr.est_s = est;
        } else {
            const double t0 = now();
            if (measure(ref, m, d, n_pre, n_dec, &rr)) {
                fprintf(stderr, "krserve bench generate: %s\n", kr_context_last_error(ref));
                goto done;
            }
            const double spent = now() - t0;
            if (d > 0)
                ref_s_per_key = fmax(ref_s_per_key, spent / ((double)(n_pre + n_dec) * (double)d));
        }
        char p_ref[32], d_ref[32], p_x[16], d_x[16];
        if (rr.prefill < 0) {
            snprintf(p_ref, sizeof p_ref, "skip (~%.0fs)", rr.est_s);
            snprintf(d_ref, sizeof d_ref, "skip");
            snprintf(p_x, sizeof p_x, "-");
            snprintf(d_x, sizeof d_x, "-");
        } else {
            snprintf(p_ref, sizeof p_ref, "%.1f", rr.prefill);
            snprintf(d_ref, sizeof d_ref, "%.2f", rr.decode);
            snprintf(p_x, sizeof p_x, "%.2fx", ra.prefill / rr.prefill);
            snprintf(d_x, sizeof d_x, "%.2fx", ra.decode / rr.decode);
        }
        printf("%8lld | %14.1f %14s %8s | %14.2f %14s %8s\n", (long long)d, ra.prefill, p_ref, p_x,
               ra.decode, d_ref, d_x);
        fflush(stdout);
    }
    kr_feature_info fa;
    kr_accel_feature_info(acc, KR_FEATURE_FLASH_ATTENTION, &fa);
    printf("counters (accelerated context): attention %lld calls, %lld accelerated (%s), %lld "
           "fallbacks\n",
           (long long)fa.counters.calls, (long long)fa.counters.accelerated, fa.backend,
           (long long)fa.counters.fallbacks);
    rc = 0;
done:
    kr_model_free(m);
    kr_context_free(acc);
    kr_context_free(ref);
    return rc;
}
