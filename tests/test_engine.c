/*
 * test_engine.c — the forward pass and the sampler.
 *
 * Small random-weight Llama / Qwen2 / Mistral models are written to a temp
 * directory (config.json + safetensors, f32 or bf16), loaded with
 * kr_model_load, and run in chunks (prefill, then token by token); their
 * logits are compared with a float64 forward pass written here from the
 * architecture's definition (RMSNorm, rotate-half RoPE with the library's
 * frequencies, causal GQA attention with Mistral's window, SwiGLU, tied or
 * separate lm_head). The sampler is checked for greedy, seeds, top-k/top-p/
 * min-p, the repetition penalty and its draw frequencies.
 */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char tmp[256];
static kr_context *ctx, *ctx_ref; /* default backends; reference only */

static int setup(void **state) {
    (void)state;
    if (kt_tmpdir("kr_engine", tmp)) return -1;
    ctx = kt_context();
    kr_context_options o = kr_context_options_default();
    o.acceleration = 0;
    if (kr_context_create(&o, &ctx_ref, NULL, 0) != KR_OK) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    if (kt_tmpdir_remove(tmp)) return -1;
    kr_context_free(ctx);
    kr_context_free(ctx_ref);
    return 0;
}

/* ---- a tiny model ---------------------------------------------------------------- */

typedef struct tiny {
    const char *type;
    int64_t E, L, H, Hkv, D, F, V;
    int tied, bias, window, llama3;
    kr_dtype wdt;
} tiny;

#define MAX_T 64
typedef struct wt {
    char name[96];
    int64_t d0, d1;
    double *v; /* values as stored (rounded to wdt) */
} wt;

typedef struct model_w {
    wt t[64];
    int n;
} model_w;

static double *add(model_w *m, kt_rng *r, const char *name, int64_t d0, int64_t d1, double sd,
                   double mean, kr_dtype dt) {
    wt *w = &m->t[m->n++];
    snprintf(w->name, sizeof w->name, "%s", name);
    w->d0 = d0;
    w->d1 = d1;
    const int64_t n = d0 * (d1 ? d1 : 1);
    w->v = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) w->v[i] = kt_round(dt, mean + sd * kt_normal(r));
    return w->v;
}

static const double *find(const model_w *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, name)) return m->t[i].v;
    return NULL;
}

static void make_weights(const tiny *c, uint64_t seed, model_w *m) {
    kt_rng r = kt_rng_for(seed);
    memset(m, 0, sizeof *m);
    char n[96];
    add(m, &r, "model.embed_tokens.weight", c->V, c->E, 1.0, 0, c->wdt);
    for (int64_t l = 0; l < c->L; l++) {
#define W(suffix, d0, d1, sd, mean)                                                                \
    snprintf(n, sizeof n, "model.layers.%lld.%s", (long long)l, suffix);                           \
    add(m, &r, n, d0, d1, sd, mean, c->wdt)
        W("input_layernorm.weight", c->E, 0, 0.1, 1.0);
        W("post_attention_layernorm.weight", c->E, 0, 0.1, 1.0);
        W("self_attn.q_proj.weight", c->H * c->D, c->E, 0.2, 0);
        W("self_attn.k_proj.weight", c->Hkv * c->D, c->E, 0.2, 0);
        W("self_attn.v_proj.weight", c->Hkv * c->D, c->E, 0.2, 0);
        W("self_attn.o_proj.weight", c->E, c->H * c->D, 0.2, 0);
        if (c->bias) {
            W("self_attn.q_proj.bias", c->H * c->D, 0, 0.1, 0);
            W("self_attn.k_proj.bias", c->Hkv * c->D, 0, 0.1, 0);
            W("self_attn.v_proj.bias", c->Hkv * c->D, 0, 0.1, 0);
        }
        W("mlp.gate_proj.weight", c->F, c->E, 0.2, 0);
        W("mlp.up_proj.weight", c->F, c->E, 0.2, 0);
        W("mlp.down_proj.weight", c->E, c->F, 0.2, 0);
#undef W
    }
    add(m, &r, "model.norm.weight", c->E, 0, 0.1, 1.0, c->wdt);
    if (!c->tied) add(m, &r, "lm_head.weight", c->V, c->E, 0.2, 0, c->wdt);
}

static void free_weights(model_w *m) {
    for (int i = 0; i < m->n; i++) free(m->t[i].v);
}

/* config.json and model.safetensors for c with weights m (skip: a tensor left out). */
static void write_model(const char *dir, const tiny *c, const model_w *m, const char *skip,
                        const char *extra) {
    mkdir(dir, 0755);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "{\"model_type\":\"%s\",\"hidden_size\":%lld,\"num_hidden_layers\":%lld,"
            "\"num_attention_heads\":%lld,\"num_key_value_heads\":%lld,\"head_dim\":%lld,"
            "\"intermediate_size\":%lld,\"vocab_size\":%lld,\"rms_norm_eps\":1e-5,"
            "\"rope_theta\":%s,\"tie_word_embeddings\":%s,\"max_position_embeddings\":%s",
            c->type, (long long)c->E, (long long)c->L, (long long)c->H, (long long)c->Hkv,
            (long long)c->D, (long long)c->F, (long long)c->V, c->llama3 ? "500000.0" : "10000.0",
            c->tied ? "true" : "false", c->llama3 ? "131072" : "512");
    if (c->window) fprintf(f, ",\"sliding_window\":%d", c->window);
    if (c->llama3)
        fprintf(f, ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,"
                   "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                   "\"original_max_position_embeddings\":8192}");
    fprintf(f, "}");
    fclose(f);
    /* header */
    const size_t es = kr_dtype_size(c->wdt);
    char *hdr = malloc(1 << 16);
    size_t hl = (size_t)sprintf(hdr, "{");
    size_t off = 0;
    const char *dts = c->wdt == KR_F32 ? "F32" : c->wdt == KR_F16 ? "F16" : "BF16";
    for (int i = 0; i <= m->n; i++) {
        const bool is_extra = i == m->n;
        if (is_extra && !extra) break;
        const char *name = is_extra ? extra : m->t[i].name;
        if (skip && !strcmp(name, skip)) continue;
        const int64_t d0 = is_extra ? 4 : m->t[i].d0, d1 = is_extra ? 0 : m->t[i].d1;
        const size_t bytes = (size_t)(d0 * (d1 ? d1 : 1)) * es;
        if (d1)
            hl += (size_t)sprintf(hdr + hl,
                                  "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],"
                                  "\"data_offsets\":[%zu,%zu]}",
                                  hl > 1 ? "," : "", name, dts, (long long)d0, (long long)d1, off,
                                  off + bytes);
        else
            hl += (size_t)sprintf(hdr + hl,
                                  "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],"
                                  "\"data_offsets\":[%zu,%zu]}",
                                  hl > 1 ? "," : "", name, dts, (long long)d0, off, off + bytes);
        off += bytes;
    }
    hl += (size_t)sprintf(hdr + hl, "}");
    while (hl % 8) hdr[hl++] = ' ';
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    f = fopen(path, "wb");
    assert_non_null(f);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(hdr, 1, hl, f);
    for (int i = 0; i <= m->n; i++) {
        const bool is_extra = i == m->n;
        if (is_extra && !extra) break;
        if (!is_extra && skip && !strcmp(m->t[i].name, skip)) continue;
        const int64_t n = is_extra ? 4 : m->t[i].d0 * (m->t[i].d1 ? m->t[i].d1 : 1);
        kt_buf b = kt_buf_new(c->wdt, n);
        for (int64_t j = 0; j < n; j++) kt_set(&b, j, is_extra ? 0.0 : m->t[i].v[j]);
        fwrite(b.data, es, (size_t)n, f);
        kt_buf_free(&b);
    }
    fclose(f);
    free(hdr);
}

/* ---- the float64 reference forward pass ------------------------------------------------ */

static void rms(const double *x, const double *w, int64_t E, double *y) {
    double ss = 0;
    for (int64_t j = 0; j < E; j++) ss += x[j] * x[j];
    const double r = 1.0 / sqrt(ss / (double)E + 1e-5);
    for (int64_t j = 0; j < E; j++) y[j] = w[j] * x[j] * r;
}

static void lin(const double *x, const double *W, const double *b, int64_t in, int64_t out,
                double *y) {
    for (int64_t o = 0; o < out; o++) {
        double s = b ? b[o] : 0;
        for (int64_t i = 0; i < in; i++) s += W[o * in + i] * x[i];
        y[o] = s;
    }
}

/* logits [T][V] of tokens[0..T) from position 0. */
static void oracle(const tiny *c, const model_w *m, const int32_t *tok, int64_t T, double *logits) {
    const int64_t E = c->E, H = c->H, Hkv = c->Hkv, D = c->D, F = c->F, V = c->V;
    double *x = calloc((size_t)(T * E), sizeof(double)), *h = malloc(sizeof(double) * (size_t)E);
    double *q = malloc(sizeof(double) * (size_t)(T * H * D));
    double *k = malloc(sizeof(double) * (size_t)(T * Hkv * D)),
           *v = malloc(sizeof(double) * (size_t)(T * Hkv * D));
    double *a = malloc(sizeof(double) * (size_t)(H * D)), *o = malloc(sizeof(double) * (size_t)E);
    double *g = malloc(sizeof(double) * (size_t)F), *u = malloc(sizeof(double) * (size_t)F);
    double *sc = malloc(sizeof(double) * (size_t)T);
    double inv[256], af = 1;
    kr_rope_params rp = kr_rope_params_default();
    rp.theta = c->llama3 ? 500000.0 : 10000.0;
    if (c->llama3) {
        rp.scaling = KR_ROPE_SCALING_LLAMA3;
        rp.factor = 8;
        rp.low_freq_factor = 1;
        rp.high_freq_factor = 4;
        rp.original_max_position_embeddings = 8192;
    }
    assert_int_equal(kr_rope_frequencies(ctx, &rp, D, inv, &af), KR_OK);
    const double *emb = find(m, "model.embed_tokens.weight");
    for (int64_t t = 0; t < T; t++) memcpy(x + t * E, emb + tok[t] * E, sizeof(double) * (size_t)E);
    char n[96];
#define G(suffix) (snprintf(n, sizeof n, "model.layers.%lld.%s", (long long)l, suffix), find(m, n))
    for (int64_t l = 0; l < c->L; l++) {
        for (int64_t t = 0; t < T; t++) {
            rms(x + t * E, G("input_layernorm.weight"), E, h);
            lin(h, G("self_attn.q_proj.weight"), c->bias ? G("self_attn.q_proj.bias") : NULL, E,
                H * D, q + t * H * D);
            lin(h, G("self_attn.k_proj.weight"), c->bias ? G("self_attn.k_proj.bias") : NULL, E,
                Hkv * D, k + t * Hkv * D);
            lin(h, G("self_attn.v_proj.weight"), c->bias ? G("self_attn.v_proj.bias") : NULL, E,
                Hkv * D, v + t * Hkv * D);
            /* rotate-half RoPE in double */
            for (int64_t hh = 0; hh < H + Hkv; hh++) {
                double *row = hh < H ? q + (t * H + hh) * D : k + (t * Hkv + hh - H) * D;
                for (int64_t i = 0; i < D / 2; i++) {
                    const double ang = (double)t * inv[i], cs = cos(ang) * af, sn = sin(ang) * af;
                    const double x0 = row[i], x1 = row[i + D / 2];
                    row[i] = x0 * cs - x1 * sn;
                    row[i + D / 2] = x0 * sn + x1 * cs;
                }
            }
        }
        for (int64_t t = 0; t < T; t++) {
            for (int64_t hh = 0; hh < H; hh++) {
                const int64_t hk = hh / (H / Hkv);
                int64_t lo = 0;
                if (c->window && t - (c->window - 1) > 0) lo = t - (c->window - 1);
                double mx = -INFINITY, sum = 0;
                for (int64_t j = lo; j <= t; j++) {
                    double s = 0;
                    for (int64_t d = 0; d < D; d++)
                        s += q[(t * H + hh) * D + d] * k[(j * Hkv + hk) * D + d];
                    sc[j] = s / sqrt((double)D);
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int64_t j = lo; j <= t; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int64_t d = 0; d < D; d++) {
                    double s = 0;
                    for (int64_t j = lo; j <= t; j++) s += sc[j] * v[(j * Hkv + hk) * D + d];
                    a[hh * D + d] = s / sum;
                }
            }
            lin(a, G("self_attn.o_proj.weight"), NULL, H * D, E, o);
            for (int64_t j = 0; j < E; j++) x[t * E + j] += o[j];
            rms(x + t * E, G("post_attention_layernorm.weight"), E, h);
            lin(h, G("mlp.gate_proj.weight"), NULL, E, F, g);
            lin(h, G("mlp.up_proj.weight"), NULL, E, F, u);
            for (int64_t j = 0; j < F; j++) g[j] = g[j] / (1 + exp(-g[j])) * u[j];
            lin(g, G("mlp.down_proj.weight"), NULL, F, E, o);
            for (int64_t j = 0; j < E; j++) x[t * E + j] += o[j];
        }
    }
#undef G
    const double *head = c->tied ? emb : find(m, "lm_head.weight");
    for (int64_t t = 0; t < T; t++) {
        rms(x + t * E, find(m, "model.norm.weight"), E, h);
        lin(h, head, NULL, E, V, logits + t * V);
    }
    free(x), free(h), free(q), free(k), free(v), free(a), free(o), free(g), free(u), free(sc);
}

static void run_model(kr_context *cx, const tiny *c, uint64_t seed, kr_dtype kv, double tol) {
    char dir[400];
    snprintf(dir, sizeof dir, "%s/%s_%s_%d_%llu_%s", tmp, c->type, kr_dtype_name(c->wdt), (int)kv,
             (unsigned long long)seed, cx == ctx_ref ? "ref" : "accel");
    model_w m;
    make_weights(c, seed, &m);
    write_model(dir, c, &m, NULL, NULL);
    const int64_t T = 13;
    int32_t tok[13];
    kt_rng r = kt_rng_for(seed + 1);
    for (int i = 0; i < T; i++) tok[i] = (int32_t)kt_int(&r, c->V);
    double *want = malloc(sizeof(double) * (size_t)(T * c->V));
    oracle(c, &m, tok, T, want);
    kr_model_options o = kr_model_options_default();
    o.kv_dtype = kv;
    o.max_context = 64;
    kr_model *mod = NULL;
    if (kr_model_load(cx, dir, &o, &mod) != KR_OK)
        fail_msg("load %s: %s", dir, kr_context_last_error(cx));
    float *got = malloc(sizeof(float) * (size_t)(T * c->V));
    /* prefill 9 tokens with every row's logits, then 4 decode steps */
    assert_int_equal(kr_model_forward(cx, mod, tok, 9, got, 1), KR_OK);
    for (int64_t t = 9; t < T; t++)
        assert_int_equal(kr_model_forward(cx, mod, tok + t, 1, got + t * c->V, 0), KR_OK);
    assert_int_equal(kr_model_position(mod), T);
    /* f32 cache: max abs difference (the 1e-4); a rounded cache:
     * normwise relative error of all logits */
    double worst = 0;
    double *g64 = malloc(sizeof(double) * (size_t)(T * c->V));
    for (int64_t i = 0; i < T * c->V; i++) {
        g64[i] = got[i];
        const double e = fabs((double)got[i] - want[i]);
        if (!(e <= worst)) worst = e;
    }
    const double rel = kt_rel_err(g64, want, T * c->V);
    free(g64);
    const double err = kv == KR_F32 ? worst : rel;
    kr_feature_info fi;
    kr_accel_feature_info(cx, KR_FEATURE_FLASH_ATTENTION, &fi);
    printf("# [%-4s] %-8s weights %-4s kv %-4s window %d llama3 %d bias %d tied %d: max |logit - "
           "f64| = "
           "%.2g, normwise %.2g (tol %.0e %s)\n",
           cx == ctx_ref ? "ref" : fi.backend, c->type, kr_dtype_name(c->wdt), kr_dtype_name(kv),
           c->window, c->llama3, c->bias, c->tied, worst, rel, tol,
           kv == KR_F32 ? "max abs" : "normwise");
    if (!(err <= tol)) fail_msg("%s: logits differ from the float64 forward by %.3g", dir, err);
    /* reset: the same prompt again gives the same last logits */
    assert_int_equal(kr_model_reset(cx, mod), KR_OK);
    assert_int_equal(kr_model_forward(cx, mod, tok, T, got, 0), KR_OK);
    if (kv == KR_F32)
        for (int64_t i = 0; i < c->V; i++)
            if (!(fabs((double)got[i] - want[(T - 1) * c->V + i]) <= tol))
                fail_msg("after reset: logit %lld", (long long)i);
    kr_model_free(mod);
    free(got);
    free(want);
    free_weights(&m);
}

static void test_forward(void **state) {
    (void)state;
    const tiny llama = {"llama", 64, 2, 4, 2, 16, 96, 50, 1, 0, 0, 0, KR_F32};
    const tiny qwen2 = {"qwen2", 48, 2, 6, 2, 8, 80, 40, 0, 1, 0, 0, KR_BF16};
    const tiny mistral = {"mistral", 32, 2, 4, 1, 8, 64, 30, 0, 0, 5, 0, KR_F32};
    const tiny llama3 = {"llama", 32, 1, 2, 2, 16, 48, 30, 0, 0, 0, 1, KR_F16};
    kr_context *both[2] = {ctx, ctx_ref};
    for (int i = 0; i < 2; i++) {
        run_model(both[i], &llama, 1000, KR_F32, 1e-4);
        run_model(both[i], &qwen2, 1001, KR_F32, 1e-4);
        run_model(both[i], &mistral, 1002, KR_F32, 1e-4);
        run_model(both[i], &llama3, 1003, KR_F32, 1e-4);
        run_model(both[i], &llama, 1004, KR_F16, 1e-3);
        run_model(both[i], &llama, 1005, KR_I8, 2e-2);
    }
}

static void test_model_errors(void **state) {
    (void)state;
    const tiny c = {"llama", 32, 1, 2, 2, 16, 48, 30, 1, 0, 0, 0, KR_F32};
    model_w m;
    make_weights(&c, 2000, &m);
    char dir[400];
    kr_model *mod = NULL;
    snprintf(dir, sizeof dir, "%s/missing", tmp);
    write_model(dir, &c, &m, "model.layers.0.mlp.up_proj.weight", NULL);
    assert_int_equal(kr_model_load(ctx, dir, NULL, &mod), KR_ERR_FORMAT);
    printf("# missing: %s\n", kr_context_last_error(ctx));
    assert_non_null(
        strstr(kr_context_last_error(ctx), "'model.layers.0.mlp.up_proj.weight' is missing"));
    snprintf(dir, sizeof dir, "%s/extra", tmp);
    write_model(dir, &c, &m, NULL, "model.layers.0.self_attn.rotary_emb.inv_freq");
    assert_int_equal(kr_model_load(ctx, dir, NULL, &mod), KR_ERR_FORMAT);
    printf("# extra: %s\n", kr_context_last_error(ctx));
    assert_non_null(strstr(kr_context_last_error(ctx),
                           "unexpected tensor 'model.layers.0.self_attn.rotary_emb.inv_freq'"));
    /* the config says 2 kv heads, the weights were made for 1 */
    tiny c1 = c;
    c1.Hkv = 1;
    model_w m1;
    make_weights(&c1, 2001, &m1);
    snprintf(dir, sizeof dir, "%s/shape", tmp);
    write_model(dir, &c1, &m1, NULL, NULL);
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    write_model(dir, &c1, &m1, NULL, NULL);
    FILE *f = fopen(cfg, "w");
    fprintf(f, "{\"model_type\":\"llama\",\"hidden_size\":32,\"num_hidden_layers\":1,"
               "\"num_attention_heads\":2,\"num_key_value_heads\":2,\"head_dim\":16,"
               "\"intermediate_size\":48,\"vocab_size\":30,\"tie_word_embeddings\":true}");
    fclose(f);
    assert_int_equal(kr_model_load(ctx, dir, NULL, &mod), KR_ERR_SHAPE);
    printf("# shape: %s\n", kr_context_last_error(ctx));
    assert_non_null(
        strstr(kr_context_last_error(ctx), "k_proj.weight' has shape [16, 32], expected [32, 32]"));
    assert_null(mod);
    /* bad tokens and a full context */
    snprintf(dir, sizeof dir, "%s/ok", tmp);
    write_model(dir, &c, &m, NULL, NULL);
    kr_model_options o = kr_model_options_default();
    o.max_context = 4;
    assert_int_equal(kr_model_load(ctx, dir, &o, &mod), KR_OK);
    const int32_t bad[2] = {3, 30};
    assert_int_equal(kr_model_forward(ctx, mod, bad, 2, NULL, 0), KR_ERR_INVALID_ARGUMENT);
    const int32_t five[5] = {1, 2, 3, 4, 5};
    assert_int_equal(kr_model_forward(ctx, mod, five, 5, NULL, 0), KR_ERR_CAPACITY);
    kr_model_free(mod);
    kr_model_free(NULL);
    free_weights(&m);
    free_weights(&m1);
}

/* ---- greedy generation, and the demo model `krserve generate` runs in ctest ---------------- */

/* A byte-level tokenizer.json over the 256 byte tokens (ids = byte values)
 * plus "Ġt" (256) and "he" (257), BOS "<s>" (258). */
static void write_byte_tokenizer(const char *dir) {
    char *buf = malloc(1 << 16), *p = buf;
    p += sprintf(p, "{\"added_tokens\":[{\"id\":258,\"content\":\"<s>\",\"special\":true}],"
                    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"use_regex\":true},"
                    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":["
                    "{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
                    "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}]},"
                    "\"model\":{\"type\":\"BPE\",\"vocab\":{");
    int k = 0;
    for (int b = 0; b < 256; b++) {
        const int keep = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        const int cp = keep ? b : 256 + k++;
        if (cp == '"' || cp == '\\')
            p += sprintf(p, "%s\"\\%c\":%d", b ? "," : "", cp, b);
        else if (cp < 0x80)
            p += sprintf(p, "%s\"%c\":%d", b ? "," : "", cp, b);
        else
            p += sprintf(p, "%s\"\\u%04x\":%d", b ? "," : "", cp, b);
    }
    p += sprintf(p, ",\"\\u0120t\":256,\"he\":257},\"merges\":[\"\\u0120 t\",\"h e\"]}}");
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(buf, f);
    fclose(f);
    free(buf);
}

static void test_greedy(void **state) {
    (void)state;
    const tiny c = {"llama", 64, 2, 4, 2, 16, 128, 259, 0, 0, 0, 0, KR_F32};
    model_w m;
    make_weights(&c, 3000, &m);
    const char *dir = KR_TEST_DEMO_DIR; /* kept: ctest's generate_demo runs the CLI on it */
    write_model(dir, &c, &m, NULL, NULL);
    write_byte_tokenizer(dir);
    kr_tokenizer *tok = NULL;
    assert_int_equal(kr_tokenizer_load(ctx, dir, &tok), KR_OK);
    int32_t ids[64];
    int64_t n = 0;
    assert_int_equal(kr_tokenizer_encode(ctx, tok, "the theory", 1, ids, 64, &n), KR_OK);
    assert_int_equal(ids[0], 258); /* BOS from the post-processor */
    kr_model *mod = NULL;
    kr_model_options o = kr_model_options_default();
    o.kv_dtype = KR_F32;
    assert_int_equal(kr_model_load(ctx, dir, &o, &mod), KR_OK);
    kr_sampler_params sp = kr_sampler_params_default();
    sp.temperature = 0;
    kr_sampler *s = NULL;
    assert_int_equal(kr_sampler_create(ctx, &sp, &s), KR_OK);
    /* 32 greedy tokens, against the argmax of the float64 forward over the whole prefix */
    float *lg = malloc(sizeof(float) * (size_t)c.V);
    double *want = malloc(sizeof(double) * (size_t)(64 * c.V));
    assert_int_equal(kr_model_forward(ctx, mod, ids, n, lg, 0), KR_OK);
    const int64_t n0 = n;
    int mismatches = 0;
    for (int i = 0; i < 32; i++) {
        int32_t next;
        assert_int_equal(kr_sampler_sample(ctx, s, lg, c.V, ids, n, &next), KR_OK);
        oracle(&c, &m, ids, n, want);
        int64_t best = 0;
        for (int64_t v = 1; v < c.V; v++)
            if (want[(n - 1) * c.V + v] > want[(n - 1) * c.V + best]) best = v;
        mismatches += best != next;
        ids[n++] = next;
        assert_int_equal(kr_model_forward(ctx, mod, &next, 1, lg, 0), KR_OK);
    }
    printf("# greedy: 32 tokens after a %lld-token prompt, %d differ from the float64 argmax\n",
           (long long)n0, mismatches);
    assert_int_equal(mismatches, 0);
    free(lg);
    free(want);
    kr_sampler_free(s);
    kr_model_free(mod);
    kr_tokenizer_free(tok);
    free_weights(&m);
}

/* ---- sampler ------------------------------------------------------------------------------ */

static int32_t sample(const kr_sampler_params *p, const float *lg, int64_t n, const int32_t *hist,
                      int64_t nh) {
    kr_sampler *s = NULL;
    assert_int_equal(kr_sampler_create(ctx, p, &s), KR_OK);
    int32_t t = -1;
    assert_int_equal(kr_sampler_sample(ctx, s, lg, n, hist, nh, &t), KR_OK);
    kr_sampler_free(s);
    return t;
}

static void test_sampler(void **state) {
    (void)state;
    const float lg[6] = {1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 0.0f};
    kr_sampler_params p = kr_sampler_params_default();
    p.temperature = 0;
    assert_int_equal(sample(&p, lg, 6, NULL, 0), 1); /* the first maximum */
    const int32_t hist[3] = {1, 1, 4};
    p.repetition_penalty = 2.0f; /* 3 -> 1.5 for tokens 1 and 4, once each */
    assert_int_equal(sample(&p, lg, 6, hist, 3), 2);
    p = kr_sampler_params_default();
    p.top_k = 1;
    assert_int_equal(sample(&p, lg, 6, NULL, 0), 1);
    p = kr_sampler_params_default();
    p.top_p = 0.01f;
    assert_int_equal(sample(&p, lg, 6, NULL, 0), 1);
    p = kr_sampler_params_default();
    p.min_p = 0.99f; /* only the two tied maxima survive */
    for (uint64_t seed = 0; seed < 20; seed++) {
        p.seed = seed;
        const int32_t t = sample(&p, lg, 6, NULL, 0);
        assert_true(t == 1 || t == 4);
    }
    /* the same seed, the same draws; frequencies follow softmax at temperature 0.7 */
    p = kr_sampler_params_default();
    p.temperature = 0.7f;
    p.seed = 42;
    kr_sampler *s1 = NULL, *s2 = NULL;
    assert_int_equal(kr_sampler_create(ctx, &p, &s1), KR_OK);
    assert_int_equal(kr_sampler_create(ctx, &p, &s2), KR_OK);
    const int N = 20000;
    int count[6] = {0};
    for (int i = 0; i < N; i++) {
        int32_t a, b;
        assert_int_equal(kr_sampler_sample(ctx, s1, lg, 6, NULL, 0, &a), KR_OK);
        assert_int_equal(kr_sampler_sample(ctx, s2, lg, 6, NULL, 0, &b), KR_OK);
        assert_int_equal(a, b);
        count[a]++;
    }
    double z = 0;
    for (int i = 0; i < 6; i++) z += exp(lg[i] / 0.7);
    for (int i = 0; i < 6; i++) {
        const double pi = exp(lg[i] / 0.7) / z, sd = sqrt(N * pi * (1 - pi));
        if (!(fabs(count[i] - N * pi) <= 5 * sd + 1))
            fail_msg("token %d drawn %d times, expected %.0f +- %.0f", i, count[i], N * pi, sd);
    }
    const float nan_lg[2] = {0.0f, NAN};
    int32_t t;
    assert_int_equal(kr_sampler_sample(ctx, s1, nan_lg, 2, NULL, 0, &t), KR_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kr_context_last_error(ctx), "logits[1] is NaN"));
    kr_sampler_free(s1);
    kr_sampler_free(s2);
    p.top_p = 0;
    kr_sampler *bad = NULL;
    assert_int_equal(kr_sampler_create(ctx, &p, &bad), KR_ERR_INVALID_ARGUMENT);
    assert_null(bad);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward),
        cmocka_unit_test(test_model_errors),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_sampler),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
