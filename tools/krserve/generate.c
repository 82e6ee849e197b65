/*
 * generate.c — `krserve generate --model DIR --prompt TEXT`: tokenizer.json
 * encodes the prompt (with the BOS the tokenizer asks for), the model runs
 * the prompt in one prefill and then one token at a time, the sampler picks
 * each token, text streams to stdout as it completes (UTF-8 held back across
 * tokens), and a stats line goes to stderr: prompt tokens, prefill and decode
 * tokens per second, time to first token, KV bytes, and the accelerated /
 * fallback counters that show which kernels ran. `krserve tokenize` prints
 * the ids and pieces of a text.
 */
#include "generate.h"

#include <krserve/krserve.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void gen_usage(FILE *f) {
    fprintf(f, "usage: krserve generate --model DIR --prompt TEXT [options]\n"
               "  -n N               tokens to generate (default 64)\n"
               "  --temp T           temperature, 0 = greedy (default 0.8)\n"
               "  --top-k K          keep the K most likely tokens (default 0 = off)\n"
               "  --top-p P          nucleus sampling (default 0.95)\n"
               "  --min-p P          drop tokens below P x the top probability (default 0)\n"
               "  --repeat-penalty R repetition penalty (default 1 = off)\n"
               "  --seed S           sampler seed (default 0)\n"
               "  --kv-dtype T       KV cache storage: f16 (default), bf16, f32, i8\n"
               "  --ctx N            KV cache capacity in tokens (default min(model, 4096))\n"
               "  --stop STR         stop when the text generated so far ends with STR\n"
               "                     (repeatable; eos ids from the model always stop)\n");
}

static bool parse_num(const char *s, double lo, double hi, double *out) {
    char *end = NULL;
    const double v = strtod(s, &end);
    if (!end || end == s || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

static kr_context *open_ctx(const char *config) {
    kr_context_options o = kr_context_options_default();
    o.config_path = config;
    kr_context *ctx = NULL;
    char err[512];
    if (kr_context_create(&o, &ctx, err, sizeof err) != KR_OK) {
        fprintf(stderr, "krserve: %s\n", err);
        return NULL;
    }
    return ctx;
}

int kr_cmd_generate(int argc, char **argv, const char *config) {
    const char *dir = NULL, *prompt = NULL;
    const char *stops[16];
    int n_stops = 0;
    double n_gen = 64, ctx_len = 0;
    kr_sampler_params sp = kr_sampler_params_default();
    sp.temperature = 0.8f;
    sp.top_p = 0.95f;
    kr_model_options mo = kr_model_options_default();
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x = 0;
        bool ok = v != NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            gen_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--model"))
            dir = v;
        else if (!strcmp(a, "--prompt"))
            prompt = v;
        else if (!strcmp(a, "--stop")) {
            ok = ok && *v && n_stops < 16;
            if (ok) stops[n_stops++] = v;
        } else if (!strcmp(a, "-n"))
            ok = ok && parse_num(v, 0, 1e7, &n_gen);
        else if (!strcmp(a, "--ctx"))
            ok = ok && parse_num(v, 1, 1e8, &ctx_len);
        else if (!strcmp(a, "--temp"))
            ok = ok && parse_num(v, 0, 100, &x), sp.temperature = (float)x;
        else if (!strcmp(a, "--top-k"))
            ok = ok && parse_num(v, 0, 1e9, &x), sp.top_k = (int32_t)x;
        else if (!strcmp(a, "--top-p"))
            ok = ok && parse_num(v, 1e-9, 1, &x), sp.top_p = (float)x;
        else if (!strcmp(a, "--min-p"))
            ok = ok && parse_num(v, 0, 0.999999, &x), sp.min_p = (float)x;
        else if (!strcmp(a, "--repeat-penalty"))
            ok = ok && parse_num(v, 1e-3, 100, &x), sp.repetition_penalty = (float)x;
        else if (!strcmp(a, "--seed"))
            ok = ok && parse_num(v, 0, 1.8e19, &x), sp.seed = (uint64_t)x;
        else if (!strcmp(a, "--kv-dtype")) {
            if (ok && !strcmp(v, "f16"))
                mo.kv_dtype = KR_F16;
            else if (ok && !strcmp(v, "bf16"))
                mo.kv_dtype = KR_BF16;
            else if (ok && !strcmp(v, "f32"))
                mo.kv_dtype = KR_F32;
            else if (ok && (!strcmp(v, "i8") || !strcmp(v, "int8")))
                mo.kv_dtype = KR_I8;
            else
                ok = false;
        } else {
            fprintf(stderr, "krserve generate: unknown option '%s' (try --help)\n", a);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "krserve generate: %s needs a valid value%s%s (try --help)\n", a,
                    v ? ", got " : "", v ? v : "");
            return 2;
        }
        i++;
    }
    if (!dir || !prompt) {
        fprintf(stderr, "krserve generate: --model DIR and --prompt TEXT are required\n");
        return 2;
    }
    mo.max_context = (int64_t)ctx_len;
    kr_context *ctx = open_ctx(config);
    if (!ctx) return 1;
    int rc = 1;
    kr_tokenizer *tok = NULL;
    kr_model *m = NULL;
    kr_sampler *smp = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    const double t_load = now_s();
    if (kr_tokenizer_load(ctx, dir, &tok) || kr_model_load(ctx, dir, &mo, &m) ||
        kr_sampler_create(ctx, &sp, &smp)) {
        fprintf(stderr, "krserve generate: %s\n", kr_context_last_error(ctx));
        goto done;
    }
    const kr_model_config *c = kr_model_get_config(m);
    const int64_t cap = (int64_t)strlen(prompt) + 8 + (int64_t)n_gen;
    ids = malloc(sizeof(int32_t) * (size_t)cap);
    logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    int64_t n_prompt = 0;
    if (!ids || !logits ||
        kr_tokenizer_encode(ctx, tok, prompt, 1, ids, cap - (int64_t)n_gen, &n_prompt)) {
        fprintf(stderr, "krserve generate: %s\n", kr_context_last_error(ctx));
        goto done;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "krserve generate: the prompt encodes to no tokens\n");
        goto done;
    }
    const double t0 = now_s();
    if (kr_model_forward(ctx, m, ids, n_prompt, logits, 0)) {
        fprintf(stderr, "krserve generate: %s\n", kr_context_last_error(ctx));
        goto done;
    }
    const double t_prefill = now_s() - t0;
    double t_first = 0;
    kr_detok dt = {0};
    int64_t n_out = 0;
    char text[4096];
    char tail[256] = ""; /* the last bytes generated, for --stop */
    size_t tail_len = 0;
    fputs(prompt, stdout);
    fflush(stdout);
    const double t1 = now_s();
    for (; n_out < (int64_t)n_gen; n_out++) {
        int32_t next = 0;
        if (kr_sampler_sample(ctx, smp, logits, c->vocab_size, ids, n_prompt + n_out, &next)) {
            fprintf(stderr, "\nkrserve generate: %s\n", kr_context_last_error(ctx));
            goto done;
        }
        if (n_out == 0) t_first = t_prefill + (now_s() - t1);
        bool stop = false;
        for (int32_t e = 0; e < c->n_eos; e++) stop |= next == c->eos_token_ids[e];
        if (stop) break;
        ids[n_prompt + n_out] = next;
        const int64_t w = kr_tokenizer_decode(tok, &dt, next, text, sizeof text);
        if (w > 0) {
            fwrite(text, 1, (size_t)w, stdout);
            fflush(stdout);
            for (int64_t i = 0; i < w; i++) { /* keep the last 255 bytes */
                if (tail_len == sizeof tail - 1) memmove(tail, tail + 1, --tail_len);
                tail[tail_len++] = text[i];
            }
            tail[tail_len] = '\0';
            for (int k = 0; k < n_stops && !stop; k++) {
                const size_t l = strlen(stops[k]);
                stop = l <= tail_len && !memcmp(tail + tail_len - l, stops[k], l);
            }
            if (stop) {
                n_out++;
                break;
            }
        }
        if (n_out + 1 < (int64_t)n_gen && kr_model_forward(ctx, m, &next, 1, logits, 0)) {
            fprintf(stderr, "\nkrserve generate: %s\n", kr_context_last_error(ctx));
            goto done;
        }
    }
    const double t_decode = now_s() - t1;
    printf("\n");
    fflush(stdout);
    kr_feature_info fa, fr, fq;
    kr_accel_feature_info(ctx, KR_FEATURE_FLASH_ATTENTION, &fa);
    kr_accel_feature_info(ctx, KR_FEATURE_FUSED_ROPE, &fr);
    kr_accel_feature_info(ctx, KR_FEATURE_KV_QUANTIZATION, &fq);
    fprintf(stderr,
            "[%s, %lld layers, load %.2f s] prompt %lld tokens, prefill %.1f tok/s, decode %.1f "
            "tok/s (%lld tokens), time to first token %.1f ms, KV %.1f KiB (%s); attention %s "
            "%lld/%lld accelerated, %lld fallbacks; rope %lld/%lld; kv quantisation %lld/%lld\n",
            c->model_type, (long long)c->n_layers, t0 - t_load, (long long)n_prompt,
            (double)n_prompt / t_prefill, n_out > 1 ? (double)(n_out - 1) / t_decode : 0.0,
            (long long)n_out, 1e3 * t_first, (double)kr_model_kv_bytes(m) / 1024.0,
            kr_dtype_name(mo.kv_dtype), fa.backend, (long long)fa.counters.accelerated,
            (long long)fa.counters.calls, (long long)fa.counters.fallbacks,
            (long long)fr.counters.accelerated, (long long)fr.counters.calls,
            (long long)fq.counters.accelerated, (long long)fq.counters.calls);
    rc = 0;
done:
    free(ids);
    free(logits);
    kr_sampler_free(smp);
    kr_model_free(m);
    kr_tokenizer_free(tok);
    kr_context_free(ctx);
    return rc;
}

int kr_cmd_tokenize(int argc, char **argv, const char *config) {
    const char *dir = NULL, *text = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            dir = argv[++i];
        else if (!text && argv[i][0] != '-')
            text = argv[i];
        else {
            fprintf(stderr, "usage: krserve tokenize --model DIR TEXT\n");
            return 2;
        }
    }
    if (!dir || !text) {
        fprintf(stderr, "usage: krserve tokenize --model DIR TEXT\n");
        return 2;
    }
    kr_context *ctx = open_ctx(config);
    if (!ctx) return 1;
    kr_tokenizer *tok = NULL;
    const int64_t cap = (int64_t)strlen(text) + 8;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
    int64_t n = 0;
    int rc = 1;
    if (!ids || kr_tokenizer_load(ctx, dir, &tok) ||
        kr_tokenizer_encode(ctx, tok, text, 1, ids, cap, &n)) {
        fprintf(stderr, "krserve tokenize: %s\n", kr_context_last_error(ctx));
    } else {
        for (int64_t i = 0; i < n; i++) {
            char piece[1024];
            kr_detok dt = {0};
            dt.started = 1; /* a piece alone: keep its leading space */
            const int64_t w = kr_tokenizer_decode(tok, &dt, ids[i], piece, sizeof piece);
            printf("%lld\t%d\t'%s'\n", (long long)i, (int)ids[i], w >= 0 ? piece : "?");
        }
        rc = 0;
    }
    free(ids);
    kr_tokenizer_free(tok);
    kr_context_free(ctx);
    return rc;
}
