/*
 * kv_cache.c — the KV cache object: creation and sizing, the validated
 * front-ends of append / attention / read, and the byte accounting. The
 * storage layout is the one kv_cache.h draws.
 */
#include "internal.h"
#include "dispatch.h"

#include "backend.h"
#include "../backends/ref/ref.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

static bool storage_dtype_ok(kr_dtype dt) { return kr_dtype_is_float(dt) || dt == KR_I8; }

static size_t row_bytes(const kr_kv_cache_options *o) {
    return (size_t)o->head_dim * kr_dtype_size(o->dtype) +
           (o->dtype == KR_I8 ? (size_t)KR_KV_INT8_META_BYTES(o->head_dim) : 0);
}

size_t kr_kv_cache_bytes_per_token(const kr_kv_cache *c) {
    return c ? 2 * (size_t)c->o.n_kv_heads * row_bytes(&c->o) : 0;
}

static size_t chan_bytes(const kr_kv_cache *c) {
    return c->o.dtype == KR_I8 ? 2 * (size_t)(c->o.n_kv_heads * c->o.head_dim) * sizeof(float) : 0;
}

size_t kr_kv_cache_bytes(const kr_kv_cache *c) {
    if (!c) return 0;
    return (size_t)c->o.n_layers *
           ((size_t)(c->o.batch * c->o.capacity) * kr_kv_cache_bytes_per_token(c) + chan_bytes(c));
}

size_t kr_kv_cache_bytes_used(const kr_kv_cache *c) {
    if (!c) return 0;
    size_t total = 0;
    for (int64_t l = 0; l < c->o.n_layers; l++) {
        int64_t tokens = 0;
        for (int64_t b = 0; b < c->o.batch; b++) tokens += c->len[l * c->o.batch + b];
        total += (size_t)tokens * kr_kv_cache_bytes_per_token(c);
        if (c->layers[l].chan_set) total += chan_bytes(c);
    }
    return total;
}

int64_t kr_kv_cache_seq_len(const kr_kv_cache *c, int64_t layer, int64_t b) {
    if (!c || layer < 0 || layer >= c->o.n_layers || b < 0 || b >= c->o.batch) return -1;
    return c->len[layer * c->o.batch + b];
}

/* Storage of the cache's device: host memory aligned to a cache line (a row
 * of 2^k bytes then never straddles one, and the CPU kernels' vector loads
 * are not split across two), or the plugin's allocator. */
static void *storage_alloc(const kr_kv_cache *c, size_t bytes) {
    if (!c->dev_ops) return aligned_alloc(64, (bytes + 63) / 64 * 64);
    void *p = NULL;
    char err[KR_ERRMSG_LEN];
    return c->dev_ops->alloc(c->o.device.index, bytes, &p, err, sizeof err) ? NULL : p;
}

static void storage_free(const kr_kv_cache *c, void *p) {
    if (!p) return;
    if (c->dev_ops)
        c->dev_ops->free(c->o.device.index, p);
    else
        free(p);
}

void kr_kv_cache_free(kr_kv_cache *c) {
    if (!c) return;
    if (c->layers) {
        for (int64_t l = 0; l < c->o.n_layers; l++) {
            kr_kv_layer *ly = &c->layers[l];
            void *bufs[] = {ly->k, ly->v, ly->k_meta, ly->v_meta, ly->k_chan, ly->v_chan};
            for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) storage_free(c, bufs[i]);
        }
    }
    if (c->dev_dl) dlclose(c->dev_dl);
    free(c->layers);
    free(c->len);
    free(c);
}

kr_status kr_kv_cache_create(kr_context *ctx, const kr_kv_cache_options *o, kr_kv_cache **out) {
    static const char op[] = "kr_kv_cache_create";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!out) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: out is NULL", op);
    *out = NULL;
    if (!o) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: options is NULL", op);
    const struct {
        const char *name;
        int64_t v;
    } ext[] = {{"n_layers", o->n_layers},
               {"batch", o->batch},
               {"capacity", o->capacity},
               {"n_kv_heads", o->n_kv_heads},
               {"head_dim", o->head_dim}};
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
        if (ext[i].v < 1 || ext[i].v > ((int64_t)1 << 31))
            return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: %s must be in [1, 2^31], got %lld",
                           op, ext[i].name, (long long)ext[i].v);
    if (!storage_dtype_ok(o->dtype))
        return kr_fail(ctx, KR_ERR_DTYPE, "%s: storage dtype %d is not f32, f16, bf16 or i8", op,
                       (int)o->dtype);
    if (o->dtype == KR_I8 && o->head_dim > 256)
        return kr_fail(ctx, KR_ERR_UNSUPPORTED,
                       "%s: int8 storage supports head_dim <= 256, got %lld", op,
                       (long long)o->head_dim);
    void *state = NULL;
    kr_status s = kr_device_state(ctx, op, o->device, &state);
    if (s) return s;
    const double per_layer =
        (double)o->batch * (double)o->capacity * (double)o->n_kv_heads * (double)o->head_dim * 2.0;
    if (per_layer * (double)o->n_layers > 1e15)
        return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: %.3g elements is beyond any memory", op,
                       per_layer * (double)o->n_layers);

    kr_kv_cache *c = calloc(1, sizeof *c);
    if (!c) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
    c->o = *o;
    if (o->device.type == KR_DEVICE_CUDA) {
        /* Keep the plugin loaded for as long as the cache holds its memory. */
        c->dev_ops = ctx->dev_ops;
        c->dev_dl = dlopen(ctx->dev_plugin_path, RTLD_NOW | RTLD_LOCAL);
        if (!c->dev_dl) {
            free(c);
            return kr_fail(ctx, KR_ERR_DEVICE, "%s: cannot hold the CUDA plugin %s: %s", op,
                           ctx->dev_plugin_path, dlerror());
        }
    }
    c->len = calloc((size_t)(o->n_layers * o->batch), sizeof(int64_t));
    c->layers = calloc((size_t)o->n_layers, sizeof(kr_kv_layer));
    bool ok = c->len && c->layers;
    const size_t rows = (size_t)(o->batch * o->capacity * o->n_kv_heads);
    const size_t data_bytes = rows * (size_t)o->head_dim * kr_dtype_size(o->dtype);
    for (int64_t l = 0; ok && l < o->n_layers; l++) {
        kr_kv_layer *ly = &c->layers[l];
        ly->k = storage_alloc(c, data_bytes);
        ly->v = storage_alloc(c, data_bytes);
        ok = ly->k && ly->v;
        if (ok && o->dtype == KR_I8) {
            const size_t meta = rows * (size_t)KR_KV_INT8_META_BYTES(o->head_dim);
            const size_t chan = (size_t)(o->n_kv_heads * o->head_dim) * sizeof(float);
            ly->k_meta = storage_alloc(c, meta);
            ly->v_meta = storage_alloc(c, meta);
            ly->k_chan = storage_alloc(c, chan);
            ly->v_chan = storage_alloc(c, chan);
            ok = ly->k_meta && ly->v_meta && ly->k_chan && ly->v_chan;
        }
    }
    if (!ok) {
        kr_kv_cache_free(c);
        return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of %s memory allocating %.1f MiB", op,
                       o->device.type == KR_DEVICE_CUDA ? "device" : "host",
                       (double)data_bytes * 2.0 * (double)o->n_layers / 1048576.0);
    }
    *out = c;
    return KR_OK;
}

kr_status kr_kv_cache_reset(kr_context *ctx, kr_kv_cache *c) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!c) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_kv_cache_reset: cache is NULL");
    memset(c->len, 0, sizeof(int64_t) * (size_t)(c->o.n_layers * c->o.batch));
    for (int64_t l = 0; l < c->o.n_layers; l++) {
        c->layers[l].chan_set = false;
        c->layers[l].k_ones = c->layers[l].v_ones = 0;
    }
    return KR_OK;
}

static kr_status check_layer(kr_context *ctx, const char *op, const kr_kv_cache *c, int64_t layer) {
    if (!c) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: cache is NULL", op);
    if (layer < 0 || layer >= c->o.n_layers)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: layer %lld is outside [0, %lld)", op,
                       (long long)layer, (long long)c->o.n_layers);
    return KR_OK;
}

kr_status kr_kv_cache_append(kr_context *ctx, kr_kv_cache *c, int64_t layer, const kr_tensor *k,
                             const kr_tensor *v, const int64_t *n_new, const int64_t *positions,
                             const kr_rope_params *rope) {
    static const char op[] = "kr_kv_cache_append";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    kr_status s = check_layer(ctx, op, c, layer);
    if (!s) s = kr_check_tensor(ctx, op, "k", k);
    if (!s) s = kr_check_tensor(ctx, op, "v", v);
    if (s) return s;
    if (k->dtype != v->dtype || !kr_dtype_is_float(k->dtype))
        return kr_fail(ctx, KR_ERR_DTYPE, "%s: k and v must share a float dtype, got %s and %s", op,
                       kr_dtype_name(k->dtype), kr_dtype_name(v->dtype));
    const kr_kv_cache_options *o = &c->o;
    for (int i = 0; i < 4; i++)
        if (k->shape[i] != v->shape[i])
            return kr_fail(ctx, KR_ERR_SHAPE, "%s: k and v shapes differ in dim %d (%lld vs %lld)",
                           op, i, (long long)k->shape[i], (long long)v->shape[i]);
    void *state = NULL;
    const kr_tensor *all[] = {k, v};
    static const char *const names[] = {"k", "v"};
    s = kr_check_devices(ctx, op, o->device, all, names, 2, &state);
    if (s) return s;
    if (kr_is_device_pointer(ctx, positions) || kr_is_device_pointer(ctx, n_new))
        return kr_fail(ctx, KR_ERR_DEVICE, "%s: positions and n_new must be host memory", op);
    if (k->shape[0] != o->batch || k->shape[2] != o->n_kv_heads || k->shape[3] != o->head_dim)
        return kr_fail(ctx, KR_ERR_SHAPE,
                       "%s: k shape [%lld, %lld, %lld, %lld] must be [batch %lld, S, kv heads "
                       "%lld, head_dim %lld]",
                       op, (long long)k->shape[0], (long long)k->shape[1], (long long)k->shape[2],
                       (long long)k->shape[3], (long long)o->batch, (long long)o->n_kv_heads,
                       (long long)o->head_dim);
    const int64_t B = o->batch, S = k->shape[1];
    int64_t *len = c->len + layer * B;
    int64_t *nn = malloc(sizeof(int64_t) * (size_t)B);
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)(B * S));
    double *inv_freq = malloc(sizeof(double) * (size_t)(o->head_dim / 2 + 1));
    if (!nn || !pos || !inv_freq) {
        s = kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
        goto done;
    }
    for (int64_t b = 0; b < B; b++) {
        nn[b] = n_new ? n_new[b] : S;
        if (nn[b] < 0 || nn[b] > S) {
            s = kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                        "%s: n_new[%lld] = %lld is outside [0, S %lld]", op, (long long)b,
                        (long long)nn[b], (long long)S);
            goto done;
        }
        if (len[b] + nn[b] > o->capacity) {
            s = kr_fail(ctx, KR_ERR_CAPACITY,
                        "%s: layer %lld sequence %lld holds %lld tokens; appending %lld exceeds "
                        "capacity %lld",
                        op, (long long)layer, (long long)b, (long long)len[b], (long long)nn[b],
                        (long long)o->capacity);
            goto done;
        }
        for (int64_t t = 0; t < S; t++) {
            const int64_t p = positions ? positions[b * S + t] : len[b] + t;
            if (p < 0) {
                s = kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: positions[%lld] = %lld is negative",
                            op, (long long)(b * S + t), (long long)p);
                goto done;
            }
            pos[b * S + t] = p;
        }
    }
    kr_kv_append_args a = {0};
    a.cache = c;
    a.layer = layer;
    a.k = k;
    a.v = v;
    a.n_new = nn;
    a.positions = pos;
    if (rope) {
        s = kr_rope_resolve(ctx, rope, o->head_dim, inv_freq, &a.attention_factor, &a.rotary_dim);
        if (s) goto done;
        a.inv_freq = inv_freq;
        a.layout = rope->layout;
    }
    a.n_threads = ctx->n_threads;
    a.dev_state = state;
    a.positions_implicit = positions == NULL;
    a.chan_factors = kr_ref_chan_factors;
    s = kr_dispatch_kv_append(ctx, &a);
    if (!s)
        for (int64_t b = 0; b < B; b++) len[b] += nn[b];
done:
    free(nn);
    free(pos);
    free(inv_freq);
    return s;
}

kr_status kr_kv_cache_attention(kr_context *ctx, const kr_kv_cache *c, int64_t layer,
                                const kr_tensor *q, kr_tensor *out,
                                const kr_attention_params *params) {
    static const char op[] = "kr_kv_cache_attention";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    kr_status s = check_layer(ctx, op, c, layer);
    if (s) return s;
    const kr_kv_cache_options *o = &c->o;
    s = kr_attention_check_q_out(ctx, op, q, out, o->n_kv_heads, o->head_dim);
    if (s) return s;
    void *state = NULL;
    const kr_tensor *all[] = {q, out, params ? params->mask : NULL, params ? params->lse : NULL};
    static const char *const names[] = {"q", "out", "mask", "lse"};
    s = kr_check_devices(ctx, op, o->device, all, names, 4, &state);
    if (s) return s;
    if (q->shape[0] != o->batch)
        return kr_fail(ctx, KR_ERR_SHAPE, "%s: q batch %lld differs from the cache's batch %lld",
                       op, (long long)q->shape[0], (long long)o->batch);
    if (params && params->kv_lens)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "%s: params.kv_lens must be NULL (the cache's lengths are used)", op);
    const int64_t *len = c->len + layer * o->batch;
    int64_t max_len = 0;
    for (int64_t b = 0; b < o->batch; b++)
        if (len[b] > max_len) max_len = len[b];

    kr_attention_args a = {0};
    a.q = q;
    a.out = out;
    a.B = o->batch;
    a.Sq = q->shape[1];
    a.H = q->shape[2];
    a.D = o->head_dim;
    a.Hkv = o->n_kv_heads;
    a.Skv = max_len;
    a.kv_lens = len;
    s = kr_attention_resolve_params(ctx, op, params, max_len, &a);
    if (s) return s;
    const kr_kv_layer *ly = &c->layers[layer];
    kr_tensor kt =
        kr_tensor_bshd(ly->k, o->dtype, o->batch, o->capacity, o->n_kv_heads, o->head_dim);
    kr_tensor vt =
        kr_tensor_bshd(ly->v, o->dtype, o->batch, o->capacity, o->n_kv_heads, o->head_dim);
    kt.device = vt.device = o->device;
    kr_kv_int8_view k8 = {ly->k, ly->k_meta, ly->k_chan, o->capacity};
    kr_kv_int8_view v8 = {ly->v, ly->v_meta, ly->v_chan, o->capacity};
    if (o->dtype == KR_I8) {
        a.k8 = &k8;
        a.v8 = &v8;
    } else {
        a.k = &kt;
        a.v = &vt;
    }
    a.n_threads = ctx->n_threads;
    a.dev_state = state;
    return kr_dispatch_attention(ctx, &a);
}

kr_status kr_kv_cache_read(kr_context *ctx, const kr_kv_cache *c, int64_t layer, int64_t b,
                           int64_t start, int64_t n, kr_tensor *k_out, kr_tensor *v_out) {
    static const char op[] = "kr_kv_cache_read";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    kr_status s = check_layer(ctx, op, c, layer);
    if (!s) s = kr_check_tensor(ctx, op, "k_out", k_out);
    if (!s) s = kr_check_tensor(ctx, op, "v_out", v_out);
    if (!s) s = kr_check_on_device(ctx, op, "k_out", k_out, kr_device_cpu());
    if (!s) s = kr_check_on_device(ctx, op, "v_out", v_out, kr_device_cpu());
    if (s) return s;
    const kr_kv_cache_options *o = &c->o;
    if (b < 0 || b >= o->batch)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: sequence %lld is outside [0, %lld)", op,
                       (long long)b, (long long)o->batch);
    const int64_t have = c->len[layer * o->batch + b];
    if (start < 0 || n < 1 || start + n > have)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "%s: tokens [%lld, %lld) are outside the %lld held by sequence %lld", op,
                       (long long)start, (long long)(start + n), (long long)have, (long long)b);
    const kr_tensor *outs[2] = {k_out, v_out};
    for (int w = 0; w < 2; w++) {
        const kr_tensor *t = outs[w];
        if (t->dtype != KR_F32)
            return kr_fail(ctx, KR_ERR_DTYPE, "%s: %s must be f32, got %s", op,
                           w ? "v_out" : "k_out", kr_dtype_name(t->dtype));
        if (t->shape[0] != 1 || t->shape[1] != n || t->shape[2] != o->n_kv_heads ||
            t->shape[3] != o->head_dim)
            return kr_fail(ctx, KR_ERR_SHAPE, "%s: %s must be [1, %lld, %lld, %lld]", op,
                           w ? "v_out" : "k_out", (long long)n, (long long)o->n_kv_heads,
                           (long long)o->head_dim);
    }
    const kr_kv_layer *ly = &c->layers[layer];
    const int64_t D = o->head_dim, Hkv = o->n_kv_heads, M = KR_KV_INT8_META_BYTES(D);
    const size_t es = kr_dtype_size(o->dtype);
    /* The n * Hkv rows asked for are contiguous in each buffer, from row r0. */
    const int64_t r0 = (b * o->capacity + start) * Hkv, rows = n * Hkv;
    const size_t data_bytes = (size_t)(rows * D) * es, meta_bytes = (size_t)(rows * M);
    const size_t chan_bytes_ = (size_t)(Hkv * D) * sizeof(float);
    const bool i8 = o->dtype == KR_I8;
    const void *src[2][3] = {
        {(const char *)ly->k + (size_t)(r0 * D) * es, i8 ? ly->k_meta + r0 * M : NULL, ly->k_chan},
        {(const char *)ly->v + (size_t)(r0 * D) * es, i8 ? ly->v_meta + r0 * M : NULL, ly->v_chan}};
    float *row = calloc((size_t)D, sizeof(float));
    void *host = NULL;
    if (!row) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
    if (c->dev_ops) { /* bring the rows (and scales) to the host first */
        const size_t sizes[3] = {data_bytes, i8 ? meta_bytes : 0, i8 ? chan_bytes_ : 0};
        host = malloc(2 * (sizes[0] + sizes[1] + sizes[2]));
        if (!host) {
            free(row);
            return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
        }
        char *p = host;
        for (int w = 0; w < 2; w++)
            for (int i = 0; i < 3; i++) {
                if (!sizes[i]) continue;
                s = kr_device_copy(ctx, p, kr_device_cpu(), src[w][i], o->device, sizes[i]);
                if (s) {
                    free(host);
                    free(row);
                    return s;
                }
                src[w][i] = p;
                p += sizes[i];
            }
    }
    for (int w = 0; w < 2; w++) {
        kr_tensor rows_view = kr_tensor_bshd((void *)src[w][0], o->dtype, 1, n, Hkv, D);
        for (int64_t t = 0; t < n; t++)
            for (int64_t h = 0; h < Hkv; h++) {
                const int64_t r = t * Hkv + h;
                if (i8)
                    kr_kv_int8_dequant_row((const int8_t *)src[w][0] + r * D,
                                           (const uint8_t *)src[w][1] + r * M,
                                           (const float *)src[w][2] + h * D, D, row);
                else
                    for (int64_t d = 0; d < D; d++)
                        row[d] = kr_load(&rows_view, kr_offset(&rows_view, 0, t, h, d));
                for (int64_t d = 0; d < D; d++)
                    kr_store(outs[w], kr_offset(outs[w], 0, t, h, d), row[d]);
            }
    }
    free(host);
    free(row);
    return KR_OK;
}
