/*
 * ops.c — the front-ends of kr_attention and kr_rope: every argument is
 * checked (with a message naming what was wrong) before any memory is
 * touched, then the resolved arguments go to the backend that serves them.
 */
#include "internal.h"
#include "dispatch.h"

#include <math.h>
#include <stdlib.h>

kr_attention_params kr_attention_params_default(void) {
    kr_attention_params p = {0};
    p.window_left = -1;
    p.window_right = -1;
    return p;
}

/* Checks mask, lse, kv_lens, window and scale against resolved extents and
 * fills them into `a`. Shared by kr_attention and kr_kv_cache_attention.
 * `max_keys` is the largest number of keys any sequence can see. */
kr_status kr_attention_resolve_params(kr_context *ctx, const char *op, const kr_attention_params *p,
                                      int64_t max_keys, kr_attention_args *a) {
    kr_attention_params d = kr_attention_params_default();
    if (!p) p = &d;
    if (!isfinite(p->scale) || p->scale < 0.0f)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: scale must be finite and >= 0, got %g",
                       op, (double)p->scale);
    if (p->window_left < -1 || p->window_right < -1)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "%s: window (%lld, %lld) must be >= -1 (-1 = unbounded)", op,
                       (long long)p->window_left, (long long)p->window_right);
    a->scale = p->scale == 0.0f ? (float)(1.0 / sqrt((double)a->D)) : p->scale;
    a->causal = p->causal != 0;
    a->window_left = p->window_left;
    a->window_right = p->window_right;
    a->mask = p->mask;
    a->lse = p->lse;
    if (p->mask) {
        kr_status s = kr_check_tensor(ctx, op, "mask", p->mask);
        if (s) return s;
        const int64_t *ms = p->mask->shape;
        if (p->mask->dtype != KR_F32)
            return kr_fail(ctx, KR_ERR_DTYPE, "%s: mask dtype must be f32, got %s", op,
                           kr_dtype_name(p->mask->dtype));
        if ((ms[0] != 1 && ms[0] != a->B) || (ms[1] != 1 && ms[1] != a->H) || ms[2] != a->Sq ||
            ms[3] < max_keys)
            return kr_fail(ctx, KR_ERR_SHAPE,
                           "%s: mask shape [%lld, %lld, %lld, %lld] does not broadcast to "
                           "[B %lld, H %lld, Sq %lld, Skv %lld]",
                           op, (long long)ms[0], (long long)ms[1], (long long)ms[2],
                           (long long)ms[3], (long long)a->B, (long long)a->H, (long long)a->Sq,
                           (long long)max_keys);
    }
    if (p->lse) {
        kr_status s = kr_check_tensor(ctx, op, "lse", p->lse);
        if (s) return s;
        const int64_t *ls = p->lse->shape;
        if (p->lse->dtype != KR_F32)
            return kr_fail(ctx, KR_ERR_DTYPE, "%s: lse dtype must be f32, got %s", op,
                           kr_dtype_name(p->lse->dtype));
        if (ls[0] != a->B || ls[1] != a->H || ls[2] != a->Sq || ls[3] != 1)
            return kr_fail(ctx, KR_ERR_SHAPE,
                           "%s: lse shape [%lld, %lld, %lld, %lld] must be [B %lld, H %lld, Sq "
                           "%lld, 1]",
                           op, (long long)ls[0], (long long)ls[1], (long long)ls[2],
                           (long long)ls[3], (long long)a->B, (long long)a->H, (long long)a->Sq);
    }
    return KR_OK;
}

/* q/out extents against each other and against k/v's head_dim and heads. */
kr_status kr_attention_check_q_out(kr_context *ctx, const char *op, const kr_tensor *q,
                                   const kr_tensor *out, int64_t hkv, int64_t d) {
    kr_status s = kr_check_tensor(ctx, op, "q", q);
    if (!s) s = kr_check_tensor(ctx, op, "out", out);
    if (s) return s;
    if (!kr_dtype_is_float(q->dtype))
        return kr_fail(ctx, KR_ERR_DTYPE, "%s: q dtype must be f32, f16 or bf16, got %s", op,
                       kr_dtype_name(q->dtype));
    if (!kr_dtype_is_float(out->dtype))
        return kr_fail(ctx, KR_ERR_DTYPE, "%s: out dtype must be f32, f16 or bf16, got %s", op,
                       kr_dtype_name(out->dtype));
    for (int i = 0; i < 4; i++)
        if (out->shape[i] != q->shape[i])
            return kr_fail(ctx, KR_ERR_SHAPE,
                           "%s: out shape [%lld, %lld, %lld, %lld] differs from q shape [%lld, "
                           "%lld, %lld, %lld]",
                           op, (long long)out->shape[0], (long long)out->shape[1],
                           (long long)out->shape[2], (long long)out->shape[3],
                           (long long)q->shape[0], (long long)q->shape[1], (long long)q->shape[2],
                           (long long)q->shape[3]);
    if (q->shape[3] != d)
        return kr_fail(ctx, KR_ERR_SHAPE, "%s: q head_dim %lld differs from k/v head_dim %lld", op,
                       (long long)q->shape[3], (long long)d);
    if (q->shape[2] % hkv != 0)
        return kr_fail(ctx, KR_ERR_SHAPE,
                       "%s: q heads %lld not divisible by kv heads %lld (need H %% Hkv == 0)", op,
                       (long long)q->shape[2], (long long)hkv);
    return KR_OK;
}

kr_status kr_check_devices(kr_context *ctx, const char *op, kr_device dev,
                           const kr_tensor *const *t, const char *const *names, int n,
                           void **state) {
    kr_status s = kr_device_state(ctx, op, dev, state);
    for (int i = 0; !s && i < n; i++)
        if (t[i]) s = kr_check_on_device(ctx, op, names[i], t[i], dev);
    return s;
}

kr_status kr_attention(kr_context *ctx, const kr_tensor *q, const kr_tensor *k, const kr_tensor *v,
                       kr_tensor *out, const kr_attention_params *params) {
    static const char op[] = "kr_attention";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    kr_status s = kr_check_tensor(ctx, op, "k", k);
    if (!s) s = kr_check_tensor(ctx, op, "v", v);
    if (s) return s;
    if (k->dtype != v->dtype || !kr_dtype_is_float(k->dtype))
        return kr_fail(ctx, KR_ERR_DTYPE, "%s: k and v must share a float dtype, got %s and %s", op,
                       kr_dtype_name(k->dtype), kr_dtype_name(v->dtype));
    for (int i = 0; i < 4; i++)
        if (k->shape[i] != v->shape[i])
            return kr_fail(ctx, KR_ERR_SHAPE, "%s: k and v shapes differ in dim %d (%lld vs %lld)",
                           op, i, (long long)k->shape[i], (long long)v->shape[i]);
    s = kr_attention_check_q_out(ctx, op, q, out, k->shape[2], k->shape[3]);
    if (s) return s;
    if (q->dtype != k->dtype)
        return kr_fail(ctx, KR_ERR_DTYPE, "%s: q dtype %s differs from k/v dtype %s", op,
                       kr_dtype_name(q->dtype), kr_dtype_name(k->dtype));
    if (q->shape[0] != k->shape[0])
        return kr_fail(ctx, KR_ERR_SHAPE, "%s: q batch %lld differs from k/v batch %lld", op,
                       (long long)q->shape[0], (long long)k->shape[0]);

    kr_attention_args a = {0};
    a.q = q;
    a.k = k;
    a.v = v;
    a.out = out;
    a.B = q->shape[0];
    a.Sq = q->shape[1];
    a.H = q->shape[2];
    a.D = q->shape[3];
    a.Skv = k->shape[1];
    a.Hkv = k->shape[2];
    s = kr_attention_resolve_params(ctx, op, params, a.Skv, &a);
    if (s) return s;
    if (params && params->kv_lens) {
        for (int64_t b = 0; b < a.B; b++)
            if (params->kv_lens[b] < 0 || params->kv_lens[b] > a.Skv)
                return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                               "%s: kv_lens[%lld] = %lld is outside [0, Skv %lld]", op,
                               (long long)b, (long long)params->kv_lens[b], (long long)a.Skv);
        a.kv_lens = params->kv_lens;
    }
    const kr_tensor *all[] = {q, k, v, out, a.mask, a.lse};
    static const char *const names[] = {"q", "k", "v", "out", "mask", "lse"};
    s = kr_check_devices(ctx, op, q->device, all, names, 6, &a.dev_state);
    if (s) return s;
    a.n_threads = ctx->n_threads;
    return kr_dispatch_attention(ctx, &a);
}

kr_status kr_rope(kr_context *ctx, kr_tensor *x, const int64_t *positions,
                  const kr_rope_params *params) {
    static const char op[] = "kr_rope";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    kr_status s = kr_check_tensor(ctx, op, "x", x);
    if (s) return s;
    if (!kr_dtype_is_float(x->dtype))
        return kr_fail(ctx, KR_ERR_DTYPE, "%s: x dtype must be f32, f16 or bf16, got %s", op,
                       kr_dtype_name(x->dtype));
    if (!positions) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: positions is NULL", op);
    void *state = NULL;
    const kr_tensor *all[] = {x};
    static const char *const names[] = {"x"};
    s = kr_check_devices(ctx, op, x->device, all, names, 1, &state);
    if (s) return s;
    /* Device positions (CUDA x only) are used as given; host ones are checked. */
    const bool pos_dev = x->device.type == KR_DEVICE_CUDA && kr_is_device_pointer(ctx, positions);
    if (!pos_dev && kr_is_device_pointer(ctx, positions))
        return kr_fail(ctx, KR_ERR_DEVICE, "%s: positions is device memory but x is on the cpu",
                       op);
    const int64_t n_pos = pos_dev ? 0 : x->shape[0] * x->shape[1];
    for (int64_t i = 0; i < n_pos; i++)
        if (positions[i] < 0)
            return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: positions[%lld] = %lld is negative",
                           op, (long long)i, (long long)positions[i]);
    const int64_t D = x->shape[3];
    double *inv_freq = malloc(sizeof(double) * (size_t)(D / 2 + 1));
    if (!inv_freq) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
    kr_rope_args a = {0};
    a.x = x;
    a.positions = positions;
    a.layout = params ? params->layout : KR_ROPE_HALF_SPLIT;
    a.inv_freq = inv_freq;
    s = kr_rope_resolve(ctx, params, D, inv_freq, &a.attention_factor, &a.rotary_dim);
    a.n_threads = ctx->n_threads;
    a.dev_state = state;
    a.positions_on_device = pos_dev;
    if (!s) s = kr_dispatch_rope(ctx, &a);
    free(inv_freq);
    return s;
}
