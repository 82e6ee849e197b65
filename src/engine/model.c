/*
 * model.c — a Llama-family decoder (Llama, Mistral, Qwen2) on top of the
 * kr_ ops, read top to bottom like llama2.c's forward():
 *
 *   x = embed[tokens]
 *   per layer:  h = rmsnorm(x) * w_in
 *               q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)
 *               RoPE on q (kr_rope); k, v appended to the cache with RoPE on k
 *               a = attention(q, cache) (kr_kv_cache_attention, causal)
 *               x += a Wo^T
 *               h = rmsnorm(x) * w_post
 *               x += (silu(h Wg^T) * (h Wu^T)) Wd^T
 *   logits = rmsnorm(x) * w_norm  lm_head^T   (lm_head = embed when tied)
 *
 * Matrix products are OpenBLAS sgemm over f32 copies of the weights; the
 * attention and RoPE go through the context, so its acceleration settings
 * (and the per-model switches, keyed by the directory name) pick the backend.
 */
#include "../core/internal.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct layer_w {
    float *w_in, *w_post;     /* [hidden] */
    float *wq, *wk, *wv, *wo; /* [H*D][hidden], [Hkv*D][hidden] x2, [hidden][H*D] */
    float *bq, *bk, *bv;      /* Qwen2 biases, or NULL */
    float *wg, *wu, *wd;      /* [F][hidden] x2, [hidden][F] */
} layer_w;

struct kr_model {
    kr_model_config c;
    char id[128];    /* the directory's last component: the per-model switch key */
    float *embed;    /* [vocab][hidden] */
    float *norm;     /* [hidden] */
    float *lm_head;  /* [vocab][hidden] (= embed when tied) */
    layer_w *layers; /* [n_layers] */
    float **owned;   /* every buffer above, for freeing */
    int64_t n_owned;
    kr_kv_cache *cache;
    int64_t max_context;
    /* run state for up to `chunk` tokens */
    int64_t chunk;
    float *x, *h, *q, *k, *v, *att, *g, *u; /* [chunk][...] */
    int64_t *pos;
};

kr_model_options kr_model_options_default(void) {
    kr_model_options o = {KR_F16, 0};
    return o;
}

const kr_model_config *kr_model_get_config(const kr_model *m) { return m ? &m->c : NULL; }
int64_t kr_model_position(const kr_model *m) {
    return m ? kr_kv_cache_seq_len(m->cache, 0, 0) : -1;
}

size_t kr_model_kv_bytes(const kr_model *m) { return m ? kr_kv_cache_bytes_used(m->cache) : 0; }

void kr_model_free(kr_model *m) {
    if (!m) return;
    for (int64_t i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    kr_kv_cache_free(m->cache);
    float *run[] = {m->x, m->h, m->q, m->k, m->v, m->att, m->g, m->u};
    for (size_t i = 0; i < sizeof run / sizeof run[0]; i++) free(run[i]);
    free(m->pos);
    free(m);
}

/* Tensor `name` with the given shape, as a new f32 array the model owns. */
static kr_status take(kr_context *ctx, kr_model *m, const kr_weights *w, const char *name,
                      int64_t d0, int64_t d1, float **out, int64_t *n_used) {
    const int64_t shape[2] = {d0, d1};
    kr_tensor t;
    kr_status s = kr_weights_get(ctx, w, name, shape, d1 ? 2 : 1, &t);
    if (s) return s;
    const int64_t n = d0 * (d1 ? d1 : 1);
    float *f = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    float **owned = realloc(m->owned, sizeof *owned * (size_t)(m->n_owned + 1));
    if (!f || !owned) {
        free(f);
        if (owned) m->owned = owned;
        return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "loading '%s': out of memory", name);
    }
    m->owned = owned;
    m->owned[m->n_owned++] = f;
    const kr_tensor *v = &t;
    for (int64_t i = 0; i < n; i++) f[i] = kr_load(v, i);
    *out = f;
    (*n_used)++;
    return KR_OK;
}

static kr_status load_weights(kr_context *ctx, kr_model *m, const kr_weights *w) {
    const kr_model_config *c = &m->c;
    const int64_t E = c->hidden_size, HD = c->n_heads * c->head_dim,
                  KD = c->n_kv_heads * c->head_dim, F = c->intermediate_size, V = c->vocab_size;
    int64_t used = 0;
    kr_status s = take(ctx, m, w, "model.embed_tokens.weight", V, E, &m->embed, &used);
    if (!s) s = take(ctx, m, w, "model.norm.weight", E, 0, &m->norm, &used);
    if (!s && !c->tie_word_embeddings)
        s = take(ctx, m, w, "lm_head.weight", V, E, &m->lm_head, &used);
    if (!s && c->tie_word_embeddings) m->lm_head = m->embed;
    char name[160];
#define TAKE(field, suffix, d0, d1)                                                                \
    if (!s) {                                                                                      \
        snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, suffix);                 \
        s = take(ctx, m, w, name, d0, d1, &ly->field, &used);                                      \
    }
    for (int64_t l = 0; l < c->n_layers && !s; l++) {
        layer_w *ly = &m->layers[l];
        TAKE(w_in, "input_layernorm.weight", E, 0)
        TAKE(w_post, "post_attention_layernorm.weight", E, 0)
        TAKE(wq, "self_attn.q_proj.weight", HD, E)
        TAKE(wk, "self_attn.k_proj.weight", KD, E)
        TAKE(wv, "self_attn.v_proj.weight", KD, E)
        TAKE(wo, "self_attn.o_proj.weight", E, HD)
        if (c->qkv_bias) {
            TAKE(bq, "self_attn.q_proj.bias", HD, 0)
            TAKE(bk, "self_attn.k_proj.bias", KD, 0)
            TAKE(bv, "self_attn.v_proj.bias", KD, 0)
        }
        TAKE(wg, "mlp.gate_proj.weight", F, E)
        TAKE(wu, "mlp.up_proj.weight", F, E)
        TAKE(wd, "mlp.down_proj.weight", E, F)
    }
#undef TAKE
    if (s) return s;
    if (used != kr_weights_count(w)) { /* name the first tensor nobody asked for */
        for (int64_t i = 0; i < kr_weights_count(w); i++) {
            const char *n = kr_weights_name(w, i);
            bool known = !strcmp(n, "model.embed_tokens.weight") ||
                         !strcmp(n, "model.norm.weight") ||
                         (!c->tie_word_embeddings && !strcmp(n, "lm_head.weight"));
            static const char prefix[] = "model.layers.";
            char *dot = NULL;
            const long long l = strncmp(n, prefix, sizeof prefix - 1)
                                    ? -1
                                    : strtoll(n + sizeof prefix - 1, &dot, 10);
            const int off = dot && *dot == '.' ? (int)(dot + 1 - n) : 0;
            if (!known && off > 0 && l >= 0 && l < c->n_layers) {
                static const char *const parts[] = {
                    "input_layernorm.weight",  "post_attention_layernorm.weight",
                    "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                    "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                    "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                    "mlp.down_proj.weight",    "self_attn.q_proj.bias",
                    "self_attn.k_proj.bias",   "self_attn.v_proj.bias"};
                for (int p = 0; p < (c->qkv_bias ? 12 : 9) && !known; p++)
                    known = !strcmp(n + off, parts[p]);
            }
            if (!known)
                return kr_fail(ctx, KR_ERR_FORMAT,
                               "weights: unexpected tensor '%s' for a %s model with %lld layers", n,
                               c->model_type, (long long)c->n_layers);
        }
    }
    return KR_OK;
}

static kr_status alloc_run(kr_context *ctx, kr_model *m) {
    const kr_model_config *c = &m->c;
    const int64_t T = m->chunk, E = c->hidden_size, HD = c->n_heads * c->head_dim,
                  KD = c->n_kv_heads * c->head_dim, F = c->intermediate_size;
    m->x = malloc(sizeof(float) * (size_t)(T * E));
    m->h = malloc(sizeof(float) * (size_t)(T * (E > HD ? E : HD)));
    m->q = malloc(sizeof(float) * (size_t)(T * HD));
    m->k = malloc(sizeof(float) * (size_t)(T * KD));
    m->v = malloc(sizeof(float) * (size_t)(T * KD));
    m->att = malloc(sizeof(float) * (size_t)(T * HD));
    m->g = malloc(sizeof(float) * (size_t)(T * F));
    m->u = malloc(sizeof(float) * (size_t)(T * F));
    m->pos = malloc(sizeof(int64_t) * (size_t)T);
    if (!m->x || !m->h || !m->q || !m->k || !m->v || !m->att || !m->g || !m->u || !m->pos)
        return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "kr_model_load: out of memory (run state)");
    return KR_OK;
}

static kr_status finish_load(kr_context *ctx, kr_model *m, const kr_model_options *opts);

kr_status kr_model_load(kr_context *ctx, const char *dir, const kr_model_options *opts,
                        kr_model **out) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    if (!out || !dir) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_model_load: NULL argument");
    *out = NULL;
    const kr_model_options d = kr_model_options_default();
    if (!opts) opts = &d;
    kr_model *m = calloc(1, sizeof *m);
    if (!m) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "kr_model_load: out of memory");
    kr_status s = kr_model_config_load(ctx, dir, &m->c);
    kr_weights *w = NULL;
    if (!s) s = kr_weights_open(ctx, dir, &w);
    if (!s) {
        m->layers = calloc((size_t)m->c.n_layers, sizeof *m->layers);
        s = m->layers ? load_weights(ctx, m, w)
                      : kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "kr_model_load: out of memory");
    }
    kr_weights_free(w);
    if (!s) s = finish_load(ctx, m, opts);
    if (s) {
        kr_model_free(m);
        return s;
    }
    const char *slash = strrchr(dir, '/');
    snprintf(m->id, sizeof m->id, "%s", slash && slash[1] ? slash + 1 : dir);
    *out = m;
    return KR_OK;
}

kr_kv_cache *kr_model_kv_cache(kr_model *m) { return m ? m->cache : NULL; }

/* The cache and run state of a model whose config and weights are set. */
static kr_status finish_load(kr_context *ctx, kr_model *m, const kr_model_options *opts) {
    openblas_set_num_threads(1); /* the engine threads its products itself (linear) */
    m->max_context = opts->max_context > 0                 ? opts->max_context
                     : m->c.max_position_embeddings < 4096 ? m->c.max_position_embeddings
                                                           : 4096;
    m->chunk = 64;
    kr_kv_cache_options ko = {
        m->c.n_layers,  1, m->max_context, m->c.n_kv_heads, m->c.head_dim, opts->kv_dtype,
        kr_device_cpu()};
    kr_status s = kr_kv_cache_create(ctx, &ko, &m->cache);
    return s ? s : alloc_run(ctx, m);
}

/* A new owned f32 array of n normal values (Box-Muller over splitmix64). */
static float *random_f32(kr_model *m, int64_t n, double sd, double mean, uint64_t *state) {
    float *f = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    float **owned = realloc(m->owned, sizeof *owned * (size_t)(m->n_owned + 1));
    if (owned) m->owned = owned;
    if (!f || !owned) {
        free(f);
        return NULL;
    }
    m->owned[m->n_owned++] = f;
    for (int64_t i = 0; i < n; i++) {
        uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        const double u1 = ((double)(z >> 11) + 0.5) * 0x1.0p-53;
        const double u2 = (double)((z >> 1) & 0xffff) / 65536.0;
        f[i] = (float)(mean + sd * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
    return f;
}

kr_status kr_model_create_random(kr_context *ctx, const kr_model_config *c,
                                 const kr_model_options *opts, uint64_t seed, kr_model **out) {
    static const char op[] = "kr_model_create_random";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!c || !out) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: NULL argument", op);
    *out = NULL;
    if (c->hidden_size < 1 || c->n_layers < 1 || c->n_heads < 1 || c->n_kv_heads < 1 ||
        c->n_heads % c->n_kv_heads || c->head_dim < 2 || c->head_dim % 2 ||
        c->intermediate_size < 1 || c->vocab_size < 1 || !(c->rms_norm_eps > 0))
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: inconsistent configuration", op);
    const kr_model_options d = kr_model_options_default();
    if (!opts) opts = &d;
    kr_model *m = calloc(1, sizeof *m);
    if (!m) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
    m->c = *c;
    snprintf(m->id, sizeof m->id, "random");
    const int64_t E = c->hidden_size, HD = c->n_heads * c->head_dim,
                  KD = c->n_kv_heads * c->head_dim, F = c->intermediate_size, V = c->vocab_size;
    uint64_t st = seed;
    const double sd = 0.02;
    bool ok = (m->layers = calloc((size_t)c->n_layers, sizeof *m->layers)) != NULL;
    ok = ok && (m->embed = random_f32(m, V * E, sd, 0, &st)) &&
         (m->norm = random_f32(m, E, 0, 1, &st));
    if (ok) m->lm_head = c->tie_word_embeddings ? m->embed : random_f32(m, V * E, sd, 0, &st);
    ok = ok && m->lm_head;
    for (int64_t l = 0; ok && l < c->n_layers; l++) {
        layer_w *ly = &m->layers[l];
        ok = (ly->w_in = random_f32(m, E, 0, 1, &st)) &&
             (ly->w_post = random_f32(m, E, 0, 1, &st)) &&
             (ly->wq = random_f32(m, HD * E, sd, 0, &st)) &&
             (ly->wk = random_f32(m, KD * E, sd, 0, &st)) &&
             (ly->wv = random_f32(m, KD * E, sd, 0, &st)) &&
             (ly->wo = random_f32(m, E * HD, sd, 0, &st)) &&
             (ly->wg = random_f32(m, F * E, sd, 0, &st)) &&
             (ly->wu = random_f32(m, F * E, sd, 0, &st)) &&
             (ly->wd = random_f32(m, E * F, sd, 0, &st));
        if (ok && c->qkv_bias)
            ok = (ly->bq = random_f32(m, HD, sd, 0, &st)) &&
                 (ly->bk = random_f32(m, KD, sd, 0, &st)) &&
                 (ly->bv = random_f32(m, KD, sd, 0, &st));
    }
    kr_status s = ok ? finish_load(ctx, m, opts)
                     : kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
    if (s) {
        kr_model_free(m);
        return s;
    }
    *out = m;
    return KR_OK;
}

kr_status kr_model_reset(kr_context *ctx, kr_model *m) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    if (!m) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_model_reset: model is NULL");
    return kr_kv_cache_reset(ctx, m->cache);
}

/* y[n][out] = x[n][in] W^T (+ b). The output columns are split over the
 * context's OpenMP threads, each calling a single-threaded OpenBLAS sgemm:
 * one thread pool for the whole engine (OpenBLAS's own pool spinning beside
 * OpenMP's halved decode speed on 2 cores). */
static void linear(const float *x, const float *W, const float *b, int64_t n, int64_t in,
                   int64_t out, float *y, int32_t n_threads) {
    const int64_t per = ((out + n_threads - 1) / n_threads + 15) / 16 * 16;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t j0 = 0; j0 < out; j0 += per) {
        const int64_t cols = out - j0 < per ? out - j0 : per;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)cols, (int)in, 1.0f, x,
                    (int)in, W + j0 * in, (int)in, 0.0f, y + j0, (int)out);
    }
    if (b)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < out; j++) y[i * out + j] += b[j];
}

/* HF's LlamaRMSNorm in fp32: x * rsqrt(mean(x^2) + eps) * w */
static void rmsnorm(const float *x, const float *w, int64_t n, int64_t E, double eps, float *y) {
    for (int64_t i = 0; i < n; i++) {
        float ss = 0.0f;
        for (int64_t j = 0; j < E; j++) ss += x[i * E + j] * x[i * E + j];
        const float r = 1.0f / sqrtf(ss / (float)E + (float)eps);
        for (int64_t j = 0; j < E; j++) y[i * E + j] = w[j] * (x[i * E + j] * r);
    }
}

/* One chunk of n <= m->chunk tokens. */
static kr_status forward_chunk(kr_context *ctx, kr_model *m, const int32_t *tokens, int64_t n,
                               float *logits, int32_t all_logits) {
    const kr_model_config *c = &m->c;
    const int64_t E = c->hidden_size, H = c->n_heads, Hkv = c->n_kv_heads, D = c->head_dim;
    const int64_t HD = H * D, KD = Hkv * D, F = c->intermediate_size, V = c->vocab_size;
    const int64_t p0 = kr_model_position(m);
    for (int64_t i = 0; i < n; i++) {
        memcpy(m->x + i * E, m->embed + (int64_t)tokens[i] * E, sizeof(float) * (size_t)E);
        m->pos[i] = p0 + i;
    }
    kr_attention_params ap = kr_attention_params_default();
    ap.causal = 1;
    if (c->sliding_window > 0) ap.window_left = c->sliding_window - 1;
    const int32_t nt = ctx->n_threads;
    kr_status s = kr_context_set_model(ctx, m->id);
    for (int64_t l = 0; l < c->n_layers && !s; l++) {
        const layer_w *ly = &m->layers[l];
        rmsnorm(m->x, ly->w_in, n, E, c->rms_norm_eps, m->h);
        linear(m->h, ly->wq, ly->bq, n, E, HD, m->q, nt);
        linear(m->h, ly->wk, ly->bk, n, E, KD, m->k, nt);
        linear(m->h, ly->wv, ly->bv, n, E, KD, m->v, nt);
        kr_tensor tq = kr_tensor_bshd(m->q, KR_F32, 1, n, H, D);
        kr_tensor tk = kr_tensor_bshd(m->k, KR_F32, 1, n, Hkv, D);
        kr_tensor tv = kr_tensor_bshd(m->v, KR_F32, 1, n, Hkv, D);
        kr_tensor ta = kr_tensor_bshd(m->att, KR_F32, 1, n, H, D);
        s = kr_rope(ctx, &tq, m->pos, &c->rope);
        if (!s) s = kr_kv_cache_append(ctx, m->cache, l, &tk, &tv, NULL, m->pos, &c->rope);
        if (!s) s = kr_kv_cache_attention(ctx, m->cache, l, &tq, &ta, &ap);
        if (s) break;
        linear(m->att, ly->wo, NULL, n, HD, E, m->h, nt);
        for (int64_t i = 0; i < n * E; i++) m->x[i] += m->h[i];
        rmsnorm(m->x, ly->w_post, n, E, c->rms_norm_eps, m->h);
        linear(m->h, ly->wg, NULL, n, E, F, m->g, nt);
        linear(m->h, ly->wu, NULL, n, E, F, m->u, nt);
        for (int64_t i = 0; i < n * F; i++) {
            const float g = m->g[i];
            m->g[i] = g / (1.0f + expf(-g)) * m->u[i]; /* silu(g) * u */
        }
        linear(m->g, ly->wd, NULL, n, F, E, m->h, nt);
        for (int64_t i = 0; i < n * E; i++) m->x[i] += m->h[i];
    }
    if (s || !logits) return s;
    const int64_t first = all_logits ? 0 : n - 1, rows = n - first;
    rmsnorm(m->x + first * E, m->norm, rows, E, c->rms_norm_eps, m->h);
    linear(m->h, m->lm_head, NULL, rows, E, V, logits, nt);
    return KR_OK;
}

kr_status kr_model_forward(kr_context *ctx, kr_model *m, const int32_t *tokens, int64_t n,
                           float *logits, int32_t all_logits) {
    static const char op[] = "kr_model_forward";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!m || !tokens || n < 1)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: bad arguments", op);
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->c.vocab_size)
            return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                           "%s: tokens[%lld] = %d is outside the vocabulary (%lld)", op,
                           (long long)i, (int)tokens[i], (long long)m->c.vocab_size);
    if (kr_model_position(m) + n > m->max_context)
        return kr_fail(ctx, KR_ERR_CAPACITY, "%s: %lld + %lld tokens exceed the context of %lld",
                       op, (long long)kr_model_position(m), (long long)n,
                       (long long)m->max_context);
    for (int64_t i0 = 0; i0 < n; i0 += m->chunk) {
        const int64_t k = n - i0 < m->chunk ? n - i0 : m->chunk;
        const bool last = i0 + k == n;
        float *lg = !logits      ? NULL
                    : all_logits ? logits + i0 * m->c.vocab_size
                    : last       ? logits
                                 : NULL;
        const kr_status s = forward_chunk(ctx, m, tokens + i0, k, lg, all_logits);
        if (s) return s;
    }
    return KR_OK;
}
