/*
 * model_config.c — config.json (and generation_config.json) of a Llama,
 * Mistral or Qwen2 model directory into kr_model_config, with Hugging Face's
 * defaults and a message naming the file and field for anything missing,
 * mistyped or out of range.
 *
 * Like transformers 5, partial_rotary_factor is not applied to these
 * architectures, and a yarn rope_scaling without "factor" takes
 * max_position_embeddings / original_max_position_embeddings.
 */
#include "../core/internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file as a parsed JSON object; *root NULL when absent (and !required). */
static kr_status read_json(kr_context *ctx, const char *dir, const char *name, bool required,
                           cJSON **root) {
    *root = NULL;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        if (!required && errno == ENOENT) return KR_OK;
        return kr_fail(ctx, KR_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 65536;
            char *t = cap <= (64u << 20) ? realloc(text, cap) : NULL;
            if (!t) {
                free(text);
                fclose(fp);
                return kr_fail(ctx, KR_ERR_FORMAT, "%s: too large for a config file", name);
            }
            text = t;
        }
        const size_t got = fread(text + len, 1, 4096, fp);
        len += got;
        if (got < 4096) break;
    }
    fclose(fp);
    text[len] = '\0';
    *root = cJSON_ParseWithLength(text, len);
    if (!*root || !cJSON_IsObject(*root)) {
        const char *at = cJSON_GetErrorPtr();
        const long off = at && at >= text && at <= text + len ? (long)(at - text) : -1;
        free(text);
        cJSON_Delete(*root);
        *root = NULL;
        return kr_fail(ctx, KR_ERR_FORMAT, "%s: not a JSON object (error near byte %ld)", name,
                       off);
    }
    free(text);
    return KR_OK;
}

/* An integer field: absent -> dflt (or an error when required). */
static kr_status get_int(kr_context *ctx, const cJSON *o, const char *field, bool required,
                         int64_t dflt, int64_t lo, int64_t *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, field);
    if (!j || cJSON_IsNull(j)) {
        if (required) return kr_fail(ctx, KR_ERR_FORMAT, "config.json: \"%s\" is missing", field);
        *out = dflt;
        return KR_OK;
    }
    const double d = cJSON_IsNumber(j) ? j->valuedouble : NAN;
    if (!(d == floor(d)) || d < (double)lo || d > 9007199254740991.0)
        return kr_fail(ctx, KR_ERR_FORMAT, "config.json: \"%s\" must be an integer >= %lld", field,
                       (long long)lo);
    *out = (int64_t)d;
    return KR_OK;
}

static kr_status get_num(kr_context *ctx, const cJSON *o, const char *file, const char *field,
                         double dflt, double *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, field);
    if (!j || cJSON_IsNull(j)) {
        *out = dflt;
        return KR_OK;
    }
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return kr_fail(ctx, KR_ERR_FORMAT, "%s: \"%s\" must be a number", file, field);
    *out = j->valuedouble;
    return KR_OK;
}

static kr_status rope_scaling(kr_context *ctx, const cJSON *rs, int64_t max_pos,
                              kr_rope_params *p) {
    static const char f[] = "config.json: rope_scaling";
    if (!rs || cJSON_IsNull(rs)) return KR_OK;
    if (!cJSON_IsObject(rs)) return kr_fail(ctx, KR_ERR_FORMAT, "%s must be an object", f);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "default";
    if (!strcmp(type, "default"))
        p->scaling = KR_ROPE_SCALING_NONE;
    else if (!strcmp(type, "linear"))
        p->scaling = KR_ROPE_SCALING_LINEAR;
    else if (!strcmp(type, "llama3"))
        p->scaling = KR_ROPE_SCALING_LLAMA3;
    else if (!strcmp(type, "yarn"))
        p->scaling = KR_ROPE_SCALING_YARN;
    else
        return kr_fail(ctx, KR_ERR_UNSUPPORTED,
                       "%s: rope_type '%s' is not supported (default, linear, llama3, yarn)", f,
                       type);
    double omp = 0;
    kr_status s = get_num(ctx, rs, "config.json", "factor", 0, &p->factor);
    if (!s) s = get_num(ctx, rs, "config.json", "low_freq_factor", 1, &p->low_freq_factor);
    if (!s) s = get_num(ctx, rs, "config.json", "high_freq_factor", 4, &p->high_freq_factor);
    if (!s) s = get_num(ctx, rs, "config.json", "original_max_position_embeddings", 0, &omp);
    if (!s) s = get_num(ctx, rs, "config.json", "beta_fast", 0, &p->beta_fast);
    if (!s) s = get_num(ctx, rs, "config.json", "beta_slow", 0, &p->beta_slow);
    if (!s) s = get_num(ctx, rs, "config.json", "mscale", 0, &p->mscale);
    if (!s) s = get_num(ctx, rs, "config.json", "mscale_all_dim", 0, &p->mscale_all_dim);
    if (!s) s = get_num(ctx, rs, "config.json", "attention_factor", 0, &p->attention_factor);
    if (s) return s;
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(rs, "truncate");
    p->yarn_no_truncate = cJSON_IsFalse(tr);
    p->original_max_position_embeddings = (int64_t)omp;
    if (p->scaling == KR_ROPE_SCALING_YARN && p->factor == 0 && omp > 0)
        p->factor = (double)max_pos / omp;
    if (p->scaling != KR_ROPE_SCALING_NONE && !(p->factor > 0))
        return kr_fail(ctx, KR_ERR_FORMAT, "%s: \"factor\" must be a positive number", f);
    if (p->scaling == KR_ROPE_SCALING_LLAMA3 && p->original_max_position_embeddings < 1)
        return kr_fail(ctx, KR_ERR_FORMAT, "%s: llama3 needs \"original_max_position_embeddings\"",
                       f);
    return KR_OK;
}

/* eos_token_id: an integer or a list of them. */
static kr_status eos_ids(kr_context *ctx, const cJSON *j, const char *file, kr_model_config *c) {
    if (!j || cJSON_IsNull(j)) return KR_OK;
    const int n = cJSON_IsArray(j) ? cJSON_GetArraySize(j) : 1;
    if (n > KR_MAX_EOS)
        return kr_fail(ctx, KR_ERR_UNSUPPORTED, "%s: %d eos_token_id values (at most %d)", file, n,
                       KR_MAX_EOS);
    c->n_eos = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_IsArray(j) ? cJSON_GetArrayItem(j, i) : j;
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble != floor(e->valuedouble))
            return kr_fail(ctx, KR_ERR_FORMAT,
                           "%s: eos_token_id must be a token id or a list of them", file);
        c->eos_token_ids[c->n_eos++] = (int64_t)e->valuedouble;
    }
    return KR_OK;
}

kr_status kr_model_config_load(kr_context *ctx, const char *dir, kr_model_config *out) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!dir || !out)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_model_config_load: NULL argument");
    memset(out, 0, sizeof *out);
    cJSON *root = NULL, *gen = NULL;
    kr_status s = read_json(ctx, dir, "config.json", true, &root);
    if (s) return s;
    kr_model_config *c = out;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const char *type = cJSON_IsString(mt) ? mt->valuestring : "";
    if (!strcmp(type, "llama"))
        c->arch = KR_ARCH_LLAMA;
    else if (!strcmp(type, "mistral"))
        c->arch = KR_ARCH_MISTRAL;
    else if (!strcmp(type, "qwen2"))
        c->arch = KR_ARCH_QWEN2;
    else {
        s = kr_fail(ctx, KR_ERR_UNSUPPORTED,
                    "config.json: model_type '%s' is not a supported architecture (llama, "
                    "mistral, qwen2)",
                    type);
        goto done;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", type);
    s = get_int(ctx, root, "hidden_size", true, 0, 1, &c->hidden_size);
    if (!s) s = get_int(ctx, root, "num_hidden_layers", true, 0, 1, &c->n_layers);
    if (!s) s = get_int(ctx, root, "num_attention_heads", true, 0, 1, &c->n_heads);
    if (!s) s = get_int(ctx, root, "num_key_value_heads", false, c->n_heads, 1, &c->n_kv_heads);
    if (!s && c->hidden_size % c->n_heads)
        s = kr_fail(ctx, KR_ERR_FORMAT,
                    "config.json: hidden_size %lld is not a multiple of num_attention_heads %lld",
                    (long long)c->hidden_size, (long long)c->n_heads);
    if (!s) s = get_int(ctx, root, "head_dim", false, c->hidden_size / c->n_heads, 2, &c->head_dim);
    if (!s) s = get_int(ctx, root, "intermediate_size", true, 0, 1, &c->intermediate_size);
    if (!s) s = get_int(ctx, root, "vocab_size", true, 0, 1, &c->vocab_size);
    if (!s)
        s = get_int(ctx, root, "max_position_embeddings", false, 2048, 1,
                    &c->max_position_embeddings);
    if (!s) s = get_num(ctx, root, "config.json", "rms_norm_eps", 1e-6, &c->rms_norm_eps);
    if (s) goto done;
    if (c->n_heads % c->n_kv_heads || c->head_dim % 2 || !(c->rms_norm_eps > 0)) {
        s = kr_fail(ctx, KR_ERR_FORMAT,
                    "config.json: num_attention_heads %lld must be a multiple of "
                    "num_key_value_heads %lld, head_dim %lld even, rms_norm_eps > 0",
                    (long long)c->n_heads, (long long)c->n_kv_heads, (long long)c->head_dim);
        goto done;
    }
    c->rope = kr_rope_params_default();
    c->rope.layout = KR_ROPE_HALF_SPLIT; /* transformers' rotate_half */
    s = get_num(ctx, root, "config.json", "rope_theta", 10000.0, &c->rope.theta);
    if (!s && !(c->rope.theta > 0))
        s = kr_fail(ctx, KR_ERR_FORMAT, "config.json: \"rope_theta\" must be positive");
    /* transformers 5 writes "rope_parameters" (rope_type, rope_theta and the scaling
     * fields in one object) where earlier versions wrote rope_theta + rope_scaling. */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!s && cJSON_IsObject(rp)) {
        if (!rs || cJSON_IsNull(rs)) rs = rp;
        if (cJSON_GetObjectItemCaseSensitive(rp, "rope_theta"))
            s = get_num(ctx, rp, "config.json", "rope_theta", 10000.0, &c->rope.theta);
        if (!s && !(c->rope.theta > 0))
            s = kr_fail(ctx, KR_ERR_FORMAT,
                        "config.json: rope_parameters \"rope_theta\" must be positive");
    }
    if (!s) s = rope_scaling(ctx, rs, c->max_position_embeddings, &c->rope);
    if (s) goto done;
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    c->tie_word_embeddings = cJSON_IsTrue(tie);
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "attention_bias");
    c->qkv_bias = c->arch == KR_ARCH_QWEN2 || cJSON_IsTrue(bias);
    s = get_int(ctx, root, "sliding_window", false, -1, 1, &c->sliding_window);
    /* Qwen2 carries a window but uses it only with use_sliding_window. */
    if (c->arch == KR_ARCH_QWEN2 &&
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_sliding_window")))
        c->sliding_window = -1;
    if (!s) s = get_int(ctx, root, "bos_token_id", false, -1, 0, &c->bos_token_id);
    if (!s)
        s = eos_ids(ctx, cJSON_GetObjectItemCaseSensitive(root, "eos_token_id"), "config.json", c);
    if (s) goto done;
    const cJSON *td = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
    if (!td) td = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    const char *tds = cJSON_IsString(td) ? td->valuestring : "float32";
    c->torch_dtype = !strcmp(tds, "bfloat16") ? KR_BF16 : !strcmp(tds, "float16") ? KR_F16 : KR_F32;
    /* generation_config.json, when present, has the last word on bos/eos. */
    s = read_json(ctx, dir, "generation_config.json", false, &gen);
    if (!s && gen) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(gen, "bos_token_id");
        if (cJSON_IsNumber(b) && b->valuedouble >= 0) c->bos_token_id = (int64_t)b->valuedouble;
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(gen, "eos_token_id");
        if (e && !cJSON_IsNull(e)) s = eos_ids(ctx, e, "generation_config.json", c);
    }
done:
    cJSON_Delete(root);
    cJSON_Delete(gen);
    return s;
}
