/*
 * bench_run.c — running the cases. For each case the inputs are built once
 * (seeded PRNG) and shared by every backend; the reference backend computes
 * the check output first; then each backend, in the order asked:
 *
 *   1. estimate: from its own time on the previous, smaller context of the
 *      same series; over the budget -> skipped with that reason (the
 *      reference attention is then timed on its last query rows instead);
 *   2. check: output poisoned with NaN, one run, compared normwise with the
 *      reference; over the tolerance -> WRONG, not timed;
 *   3. warm-up runs, then repetitions until --reps or the budget is spent;
 *      median, min, max;
 *   4. counters (calls, accelerated, fallbacks) before and after, and the
 *      backend that served the calls.
 *
 * Each backend runs in its own context: ref with acceleration off, any other
 * with the others denied, so the counters show exactly what served it.
 */
#include "bench.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- data ------------------------------------------------------------------ */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
    if (ax < 0x38800000u) {                                   /* subnormal or zero */
        const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        const int shift = 126 - (int)(ax >> 23);
        if (shift > 24) return (uint16_t)sign;
        const uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        return (uint16_t)(sign | (r + (rem > half || (rem == half && (r & 1)))));
    }
    const uint32_t r = ax - 0x38000000u; /* rebias 127 -> 15 */
    const uint32_t h = r >> 13, rem = r & 0x1fffu;
    return (uint16_t)(sign | (h + (rem > 0x1000u || (rem == 0x1000u && (h & 1)))));
}

static float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ffu, x;
    if (e == 0) {
        if (m == 0) {
            x = sign;
        } else { /* subnormal */
            e = 113;
            while (!(m & 0x400u)) {
                m <<= 1;
                e--;
            }
            x = sign | (e << 23) | ((m & 0x3ffu) << 13);
        }
    } else if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else {
        x = sign | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

static float bf16_to_f32(uint16_t h) {
    const uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static float load_el(const void *p, kr_dtype dt, int64_t i) {
    switch (dt) {
    case KR_F32: return ((const float *)p)[i];
    case KR_F16: return f16_to_f32(((const uint16_t *)p)[i]);
    case KR_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    default: return NAN;
    }
}

static void store_el(void *p, kr_dtype dt, int64_t i, float x) {
    switch (dt) {
    case KR_F32: ((float *)p)[i] = x; break;
    case KR_F16: ((uint16_t *)p)[i] = f32_to_f16(x); break;
    case KR_BF16: ((uint16_t *)p)[i] = f32_to_bf16(x); break;
    default: break;
    }
}

static void *alloc_el(kr_dtype dt, int64_t n) {
    size_t bytes = (size_t)n * kr_dtype_size(dt);
    bytes = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* Uniform in [-1, 1): attention logits of order 1 at any head_dim once
 * scaled by 1/sqrt(D). */
static void fill_random(void *p, kr_dtype dt, int64_t n, uint64_t *seed) {
    for (int64_t i = 0; i < n; i++)
        store_el(p, dt, i, (float)((double)(splitmix(seed) >> 11) * 0x1.0p-52 - 1.0));
}

static void poison(void *p, kr_dtype dt, int64_t n) {
    for (int64_t i = 0; i < n; i++) store_el(p, dt, i, NAN);
}

/* ---- backends ----------------------------------------------------------------- */

typedef struct kb_be {
    char name[32];
    kr_context *ctx;
    bool is_ref;
    /* per series: the previous context's measurement, for estimates */
    double prev_cost, prev_time;
} kb_be;

static kr_context *open_ctx(const kb_options *o, const char *only, const char *deny, char *err,
                            size_t err_len) {
    kr_context_options co = kr_context_options_default();
    co.config_path = o->config;
    co.n_threads = o->threads;
    if (!only) {
        co.acceleration = 0;
    } else {
        co.acceleration = 1;
        co.backends = only;
        co.deny_backends = deny[0] ? deny : NULL;
        co.fallback_to_reference = 1;
        co.prefer_reference = 0;
        for (int f = 0; f < 3; f++) co.features[f] = 1;
    }
    co.log_level = KR_LOG_ERROR;
    kr_context *ctx = NULL;
    if (kr_context_create(&co, &ctx, err, err_len) != KR_OK) return NULL;
    return ctx;
}

/* Picks the backends (ref first) and opens a context for each. */
static int open_backends(const kb_options *o, kr_context *probe, kb_be *be, int *n_be, char *err,
                         size_t err_len) {
    int n = 0;
    be[n].ctx = open_ctx(o, NULL, "", err, err_len);
    if (!be[n].ctx) return -1;
    snprintf(be[n].name, sizeof be[n].name, "ref");
    be[n].is_ref = true;
    n++;
    *n_be = n; /* the caller frees what was opened, on error too */
    const int nb = kr_accel_backend_count(probe);
    kr_backend_info *info = calloc((size_t)(nb > 0 ? nb : 1), sizeof *info);
    if (!info) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    for (int i = 0; i < nb; i++) kr_accel_backend_info(probe, i, &info[i]);
    /* which names to run */
    char names[KB_MAX_BACKENDS][32];
    int n_names = 0;
    if (o->all_backends) {
        for (int i = 0; i < nb && n_names < KB_MAX_BACKENDS; i++) {
            if (!strcmp(info[i].name, "ref") || !info[i].available || info[i].denied) continue;
            if (info[i].device_type != KR_DEVICE_CPU) continue; /* device tensors: GPU bench */
            snprintf(names[n_names++], sizeof names[0], "%s", info[i].name);
        }
    }
    for (int j = 0; j < o->n_backends && n_names < KB_MAX_BACKENDS; j++) {
        if (!strcmp(o->backends[j], "ref")) continue;
        int found = -1;
        for (int i = 0; i < nb; i++)
            if (!strcmp(info[i].name, o->backends[j])) found = i;
        if (found < 0) {
            snprintf(err, err_len, "--backend: no backend named '%s' (krserve info lists them)",
                     o->backends[j]);
            free(info);
            return -1;
        }
        if (!info[found].available || info[found].denied) {
            snprintf(err, err_len, "--backend: backend '%s' is not available here: %s",
                     o->backends[j],
                     info[found].denied ? "denied by configuration" : info[found].reason);
            free(info);
            return -1;
        }
        if (info[found].device_type != KR_DEVICE_CPU) {
            snprintf(err, err_len,
                     "--backend: backend '%s' serves device memory; its benchmark is "
                     "tests/gpu/run.sh (bench_sdpa.py: against torch SDPA on the same card)",
                     o->backends[j]);
            free(info);
            return -1;
        }
        bool dup = false;
        for (int k = 0; k < n_names; k++) dup = dup || !strcmp(names[k], o->backends[j]);
        if (!dup) snprintf(names[n_names++], sizeof names[0], "%s", o->backends[j]);
    }
    for (int k = 0; k < n_names && n < KB_MAX_BACKENDS; k++) {
        char deny[512] = "";
        for (int i = 0; i < nb; i++) {
            /* CPU runs never touch device backends; a device's reference cannot be denied. */
            if (!strcmp(info[i].name, "ref") || !strcmp(info[i].name, names[k]) ||
                info[i].device_type != KR_DEVICE_CPU)
                continue;
            const size_t len = strlen(deny);
            snprintf(deny + len, sizeof deny - len, "%s%s", len ? "," : "", info[i].name);
        }
        be[n].ctx = open_ctx(o, names[k], deny, err, err_len);
        if (!be[n].ctx) {
            free(info);
            *n_be = n;
            return -1;
        }
        snprintf(be[n].name, sizeof be[n].name, "%s", names[k]);
        be[n].is_ref = false;
        n++;
    }
    free(info);
    *n_be = n;
    return 0;
}

/* ---- counters -------------------------------------------------------------------- */

typedef struct kb_snap {
    kr_feature_counters fc;
    int64_t calls[KB_MAX_BACKENDS + 2];
    int n;
} kb_snap;

static void snap(kr_context *ctx, kr_feature f, kb_snap *s) {
    kr_feature_info fi;
    memset(s, 0, sizeof *s);
    if (kr_accel_feature_info(ctx, f, &fi) == KR_OK) s->fc = fi.counters;
    s->n = kr_accel_backend_count(ctx);
    if (s->n > KB_MAX_BACKENDS + 2) s->n = KB_MAX_BACKENDS + 2;
    for (int i = 0; i < s->n; i++) {
        kr_backend_info bi;
        if (kr_accel_backend_info(ctx, i, &bi) == KR_OK) s->calls[i] = bi.calls[f];
    }
}

static void counters_delta(kr_context *ctx, kr_feature f, const kb_snap *before, kb_result *r) {
    kb_snap after;
    snap(ctx, f, &after);
    r->calls = after.fc.calls - before->fc.calls;
    r->accelerated = after.fc.accelerated - before->fc.accelerated;
    r->fallbacks = after.fc.fallbacks - before->fc.fallbacks;
    snprintf(r->last_reason, sizeof r->last_reason, "%s", after.fc.last_reason);
    int64_t best = -1;
    for (int i = 0; i < after.n && i < before->n; i++) {
        const int64_t d = after.calls[i] - before->calls[i];
        if (d > best) {
            kr_backend_info bi;
            if (kr_accel_backend_info(ctx, i, &bi) != KR_OK) continue;
            best = d;
            snprintf(r->served_by, sizeof r->served_by, "%s", bi.name);
        }
    }
}

/* ---- one case ------------------------------------------------------------------ */

/* Everything a case needs, built once and shared by the backends. */
typedef struct kb_case {
    kb_shape s;
    kr_feature feature;
    /* attention: q [B,S,H,D], k/v [B,S,Hkv,D]; decode: q [B,q_len,H,D];
     * rope: x0 (pristine) and x [B,S,H,D]; kv-append: k/v [B,S,Hkv,D] */
    void *q, *k, *v, *out, *x0, *x;
    int64_t n_q, n_kv, n_out, n_x;
    int64_t *positions;
    kr_kv_cache *cache; /* decode: filled once; kv-append: reset per run */
    kr_context *ref;    /* the reference's context (kv-append poisons the cache with it) */
    /* the reference's check output, as float */
    float *want;
    int64_t n_want;
    int64_t check_rows; /* attention: last rows checked */
    kr_rope_params rope;
    double tolerance;
} kb_case;

static int64_t check_heads(const kb_shape *s) { return s->heads / s->kv_heads; }

/* Views of attention for the last `rows` query rows; `group` limits the
 * heads to the last kv head and its query heads. */
static void attention_views(const kb_case *c, int64_t rows, bool group, void *out_buf, kr_tensor *q,
                            kr_tensor *k, kr_tensor *v, kr_tensor *out) {
    const kb_shape *s = &c->s;
    const int64_t B = s->batch, S = s->context, H = s->heads, Hkv = s->kv_heads, D = s->head_dim;
    const size_t e = kr_dtype_size(s->dtype);
    *q = kr_tensor_bshd((char *)c->q + (size_t)((S - rows) * H * D) * e, s->dtype, B, rows, H, D);
    q->stride[0] = S * H * D;
    *k = kr_tensor_bshd(c->k, s->dtype, B, S, Hkv, D);
    *v = kr_tensor_bshd(c->v, s->dtype, B, S, Hkv, D);
    if (out_buf) { /* a separate [B, rows, heads, D] buffer */
        *out = kr_tensor_bshd(out_buf, s->dtype, B, rows, group ? check_heads(s) : H, D);
    } else {
        *out = kr_tensor_bshd((char *)c->out + (size_t)((S - rows) * H * D) * e, s->dtype, B, rows,
                              H, D);
        out->stride[0] = S * H * D;
    }
    if (group) {
        const int64_t G = check_heads(s);
        q->data = (char *)q->data + (size_t)((H - G) * D) * e;
        q->shape[2] = G;
        k->data = (char *)k->data + (size_t)((Hkv - 1) * D) * e;
        k->shape[2] = 1;
        v->data = (char *)v->data + (size_t)((Hkv - 1) * D) * e;
        v->shape[2] = 1;
    }
}

/* kv-append: empties the cache and appends the case's first token, untimed,
 * so that the timed append of all `context` tokens after it is a steady-state
 * one (the int8 channel factors are fixed by a layer's first append). */
static kr_status kv_prime(kb_case *c, kr_context *ctx) {
    const kb_shape *s = &c->s;
    const kr_status st = kr_kv_cache_reset(ctx, c->cache);
    if (st) return st;
    kr_tensor k = kr_tensor_bshd(c->k, s->dtype, s->batch, 1, s->kv_heads, s->head_dim);
    kr_tensor v = kr_tensor_bshd(c->v, s->dtype, s->batch, 1, s->kv_heads, s->head_dim);
    k.stride[0] = v.stride[0] = s->context * s->kv_heads * s->head_dim;
    return kr_kv_cache_append(ctx, c->cache, 0, &k, &v, NULL, NULL, &c->rope);
}

/* kv-append: every slot the checked append writes filled first, by the
 * reference, with other values (the case's K and V swapped), so that an
 * accelerated append that leaves a slot unwritten reads back wrong instead
 * of reading back the reference's own run. */
static kr_status kv_poison(kb_case *c) {
    const kb_shape *s = &c->s;
    kr_status st = kr_kv_cache_reset(c->ref, c->cache);
    if (st) return st;
    kr_tensor k = kr_tensor_bshd(c->v, s->dtype, s->batch, s->context, s->kv_heads, s->head_dim);
    kr_tensor v = kr_tensor_bshd(c->k, s->dtype, s->batch, s->context, s->kv_heads, s->head_dim);
    st = kr_kv_cache_append(c->ref, c->cache, 0, &k, &v, NULL, NULL, &c->rope);
    return st ? st : kr_kv_cache_reset(c->ref, c->cache);
}

/* Runs the case once on ctx. `rows` < context: attention on the last rows
 * only (the reference's sampled timing). */
static kr_status run_once(kb_case *c, kr_context *ctx, int64_t rows) {
    const kb_shape *s = &c->s;
    const int64_t B = s->batch, H = s->heads, Hkv = s->kv_heads, D = s->head_dim;
    kr_attention_params p = kr_attention_params_default();
    switch (s->kind) {
    case KB_ATTENTION: {
        kr_tensor q, k, v, out;
        attention_views(c, rows, false, NULL, &q, &k, &v, &out);
        p.causal = s->causal;
        return kr_attention(ctx, &q, &k, &v, &out, &p);
    }
    case KB_DECODE: {
        kr_tensor q = kr_tensor_bshd(c->q, s->dtype, B, s->q_len, H, D);
        kr_tensor out = kr_tensor_bshd(c->out, s->dtype, B, s->q_len, H, D);
        p.causal = 1;
        return kr_kv_cache_attention(ctx, c->cache, 0, &q, &out, &p);
    }
    case KB_ROPE: {
        kr_tensor x = kr_tensor_bshd(c->x, s->dtype, B, s->context, H, D);
        return kr_rope(ctx, &x, c->positions, &c->rope);
    }
    case KB_KV_APPEND: {
        const kr_status st = kv_prime(c, ctx);
        if (st) return st;
        kr_tensor k = kr_tensor_bshd(c->k, s->dtype, B, s->context, Hkv, D);
        kr_tensor v = kr_tensor_bshd(c->v, s->dtype, B, s->context, Hkv, D);
        return kr_kv_cache_append(ctx, c->cache, 0, &k, &v, NULL, NULL, &c->rope);
    }
    default: return KR_ERR_INVALID_ARGUMENT;
    }
}

/* The checked values of the output of the last run, as float (the caller
 * frees). For kv-append, the cache read back. */
static float *checked_values(kb_case *c, kr_context *ctx, int64_t *n_out) {
    const kb_shape *s = &c->s;
    const int64_t B = s->batch, H = s->heads, Hkv = s->kv_heads, D = s->head_dim;
    float *v = NULL;
    int64_t n = 0;
    switch (s->kind) {
    case KB_ATTENTION: { /* last check_rows rows, last kv group */
        const int64_t r = c->check_rows, G = check_heads(s), S = s->context;
        n = B * r * G * D;
        v = calloc((size_t)n, sizeof *v);
        if (!v) return NULL;
        int64_t i = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = S - r; t < S; t++)
                for (int64_t h = H - G; h < H; h++)
                    for (int64_t d = 0; d < D; d++)
                        v[i++] = load_el(c->out, s->dtype, ((b * S + t) * H + h) * D + d);
        break;
    }
    case KB_DECODE:
    case KB_ROPE: { /* the whole output: decode's out, RoPE's rotated x */
        const void *src = s->kind == KB_DECODE ? c->out : c->x;
        n = s->kind == KB_DECODE ? c->n_out : c->n_x;
        v = calloc((size_t)n, sizeof *v);
        if (!v) return NULL;
        for (int64_t i = 0; i < n; i++) v[i] = load_el(src, s->dtype, i);
        break;
    }
    case KB_KV_APPEND: {
        const int64_t S = s->context, per = S * Hkv * D;
        n = 2 * B * per;
        v = calloc((size_t)n, sizeof *v);
        if (!v) return NULL;
        for (int64_t b = 0; b < B; b++) {
            kr_tensor ko = kr_tensor_bshd(v + 2 * b * per, KR_F32, 1, S, Hkv, D);
            kr_tensor vo = kr_tensor_bshd(v + (2 * b + 1) * per, KR_F32, 1, S, Hkv, D);
            if (kr_kv_cache_read(ctx, c->cache, 0, b, 1, S, &ko, &vo) != KR_OK) {
                for (int64_t i = 0; i < 2 * per; i++) v[2 * b * per + i] = NAN;
            }
        }
        break;
    }
    default: break;
    }
    *n_out = n;
    return v;
}

static double rel_err(const float *got, const float *want, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)got[i] - (double)want[i];
        if (!isfinite(got[i]) && isfinite(want[i])) return INFINITY;
        num += d * d;
        den += (double)want[i] * (double)want[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

/* Resets what a run changes, so every backend starts from the same inputs. */
static void reset_inputs(kb_case *c) {
    if (c->s.kind == KB_ROPE) memcpy(c->x, c->x0, (size_t)c->n_x * kr_dtype_size(c->s.dtype));
    if (c->out) poison(c->out, c->s.dtype, c->n_out);
}

static void case_free(kb_case *c) {
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->out);
    free(c->x0);
    free(c->x);
    free(c->positions);
    free(c->want);
    kr_kv_cache_free(c->cache);
    memset(c, 0, sizeof *c);
}

static double tolerance_for(const kb_shape *s) {
    double t = s->dtype == KR_F32 ? 1e-4 : s->dtype == KR_F16 ? 3e-3 : 2e-2;
    if ((s->kind == KB_DECODE || s->kind == KB_KV_APPEND) && s->kv_dtype == KR_I8 && t < 1e-2)
        t = 1e-2;
    if ((s->kind == KB_DECODE || s->kind == KB_KV_APPEND) && s->kv_dtype == KR_BF16 && t < 2e-2)
        t = 2e-2;
    return t;
}

/* Builds the inputs of a case; the reference context fills the decode cache. */
static int case_build(kb_case *c, const kb_shape *s, uint64_t seed, kr_context *ref, char *err,
                      size_t err_len) {
    memset(c, 0, sizeof *c);
    c->s = *s;
    c->tolerance = tolerance_for(s);
    c->rope = kr_rope_params_default();
    c->rope.theta = 500000.0;
    const int64_t B = s->batch, S = s->context, H = s->heads, Hkv = s->kv_heads, D = s->head_dim;
    uint64_t st = seed;
    bool ok = true;
    switch (s->kind) {
    case KB_ATTENTION:
        c->feature = KR_FEATURE_FLASH_ATTENTION;
        c->n_q = c->n_out = B * S * H * D;
        c->n_kv = B * S * Hkv * D;
        c->q = alloc_el(s->dtype, c->n_q);
        c->k = alloc_el(s->dtype, c->n_kv);
        c->v = alloc_el(s->dtype, c->n_kv);
        c->out = alloc_el(s->dtype, c->n_out);
        ok = c->q && c->k && c->v && c->out;
        if (ok) {
            fill_random(c->q, s->dtype, c->n_q, &st);
            fill_random(c->k, s->dtype, c->n_kv, &st);
            fill_random(c->v, s->dtype, c->n_kv, &st);
        }
        c->check_rows = S < 16 ? S : 16;
        break;
    case KB_DECODE: {
        c->feature = KR_FEATURE_FLASH_ATTENTION;
        c->n_q = c->n_out = B * s->q_len * H * D;
        c->q = alloc_el(s->dtype, c->n_q);
        c->out = alloc_el(s->dtype, c->n_out);
        ok = c->q && c->out;
        if (!ok) break;
        fill_random(c->q, s->dtype, c->n_q, &st);
        kr_kv_cache_options co = {1, B, S, Hkv, D, s->kv_dtype, {KR_DEVICE_CPU, 0}};
        if (kr_kv_cache_create(ref, &co, &c->cache) != KR_OK) {
            snprintf(err, err_len, "decode: cache of %lld tokens: %s", (long long)S,
                     kr_context_last_error(ref));
            case_free(c);
            return -1;
        }
        /* fill in chunks of up to 1024 tokens */
        const int64_t chunk = S < 1024 ? S : 1024;
        void *k = alloc_el(s->dtype, B * chunk * Hkv * D),
             *v = alloc_el(s->dtype, B * chunk * Hkv * D);
        ok = k && v;
        for (int64_t t = 0; ok && t < S; t += chunk) {
            const int64_t n = S - t < chunk ? S - t : chunk;
            fill_random(k, s->dtype, B * n * Hkv * D, &st);
            fill_random(v, s->dtype, B * n * Hkv * D, &st);
            kr_tensor kt = kr_tensor_bshd(k, s->dtype, B, n, Hkv, D);
            kr_tensor vt = kr_tensor_bshd(v, s->dtype, B, n, Hkv, D);
            if (kr_kv_cache_append(ref, c->cache, 0, &kt, &vt, NULL, NULL, &c->rope) != KR_OK) {
                snprintf(err, err_len, "decode: filling the cache: %s", kr_context_last_error(ref));
                free(k);
                free(v);
                case_free(c);
                return -1;
            }
        }
        free(k);
        free(v);
        break;
    }
    case KB_ROPE:
        c->feature = KR_FEATURE_FUSED_ROPE;
        c->n_x = B * S * H * D;
        c->x0 = alloc_el(s->dtype, c->n_x);
        c->x = alloc_el(s->dtype, c->n_x);
        c->positions = malloc((size_t)(B * S) * sizeof *c->positions);
        ok = c->x0 && c->x && c->positions;
        if (!ok) break;
        fill_random(c->x0, s->dtype, c->n_x, &st);
        for (int64_t i = 0; i < B * S; i++) c->positions[i] = i % S;
        break;
    case KB_KV_APPEND: {
        c->feature = s->kv_dtype == KR_I8 ? KR_FEATURE_KV_QUANTIZATION : KR_FEATURE_FUSED_ROPE;
        c->n_kv = B * S * Hkv * D;
        c->k = alloc_el(s->dtype, c->n_kv);
        c->v = alloc_el(s->dtype, c->n_kv);
        ok = c->k && c->v;
        if (!ok) break;
        fill_random(c->k, s->dtype, c->n_kv, &st);
        fill_random(c->v, s->dtype, c->n_kv, &st);
        kr_kv_cache_options co = {1, B, S + 1, Hkv, D, s->kv_dtype, {KR_DEVICE_CPU, 0}};
        if (kr_kv_cache_create(ref, &co, &c->cache) != KR_OK) {
            snprintf(err, err_len, "kv-append: cache of %lld tokens: %s", (long long)S,
                     kr_context_last_error(ref));
            case_free(c);
            return -1;
        }
        break;
    }
    default: ok = false;
    }
    if (!ok) {
        snprintf(err, err_len, "%s: out of memory for context %lld", kb_kind_name(s->kind),
                 (long long)S);
        case_free(c);
        return -1;
    }
    return 0;
}

/* The reference's check output (and its time, for the first estimate). */
static kr_status case_reference(kb_case *c, kr_context *ref, double *seconds) {
    const kb_shape *s = &c->s;
    c->ref = ref;
    reset_inputs(c);
    const double t0 = kb_now();
    kr_status st;
    if (s->kind == KB_ATTENTION) {
        const int64_t G = check_heads(s);
        c->n_want = s->batch * c->check_rows * G * s->head_dim;
        void *buf = alloc_el(s->dtype, c->n_want);
        if (!buf) return KR_ERR_OUT_OF_MEMORY;
        kr_tensor q, k, v, out;
        attention_views(c, c->check_rows, true, buf, &q, &k, &v, &out);
        kr_attention_params p = kr_attention_params_default();
        p.causal = s->causal;
        st = kr_attention(ref, &q, &k, &v, &out, &p);
        *seconds = kb_now() - t0;
        c->want = malloc((size_t)c->n_want * sizeof *c->want);
        if (c->want)
            for (int64_t i = 0; i < c->n_want; i++) c->want[i] = load_el(buf, s->dtype, i);
        free(buf);
        if (!c->want) return KR_ERR_OUT_OF_MEMORY;
        return st;
    }
    st = run_once(c, ref, s->context);
    *seconds = kb_now() - t0;
    if (st) return st;
    c->want = checked_values(c, ref, &c->n_want);
    return c->want ? KR_OK : KR_ERR_OUT_OF_MEMORY;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double throughput_cost(const kb_cost *c) { return c->compute ? c->flops : c->bytes; }

/* One backend on one case. */
static void case_backend(kb_case *c, kb_be *be, const kb_options *o, const kb_ceilings *ceil,
                         double ref_rate, kb_result *r) {
    const kb_shape *s = &c->s;
    memset(r, 0, sizeof *r);
    r->shape = *s;
    snprintf(r->backend, sizeof r->backend, "%s", be->name);
    r->cost = kb_case_cost(s);
    r->speedup = NAN;
    r->error = NAN;
    r->tolerance = c->tolerance;
    r->sampled = 1;
    const double work = throughput_cost(&r->cost);
    const double budget = be->is_ref && o->ref_budget_s > 0 ? o->ref_budget_s : o->budget_s;
    int64_t rows = s->context;

    /* 1. estimate */
    double est = 0;
    if (be->prev_cost > 0 && be->prev_time > 0) est = be->prev_time * work / be->prev_cost;
    if (be->is_ref && s->kind == KB_ATTENTION && est == 0 && ref_rate > 0)
        est = r->cost.flops / ref_rate;
    if (est > budget) {
        if (be->is_ref && s->kind == KB_ATTENTION) {
            /* time the last rows only: the heaviest rows of a causal case */
            const double full = kb_attention_pairs(s->context, s->context, s->causal);
            while (rows > 1 &&
                   est * kb_attention_pairs(rows, s->context, s->causal) / full > budget / 3)
                rows /= 2;
            r->sampled = kb_attention_pairs(rows, s->context, s->causal) / full;
            snprintf(r->note, sizeof r->note,
                     "timed on the last %lld of %lld query rows (%.2g%% of the work): the whole "
                     "case would take ~%.0f s",
                     (long long)rows, (long long)s->context, 100 * r->sampled, est);
        } else {
            r->state = KB_SKIPPED;
            snprintf(r->note, sizeof r->note,
                     "skipped: estimated %.1f s per run > budget %.1f s (raise --budget)", est,
                     budget);
            return;
        }
    }

    kb_snap before;
    snap(be->ctx, c->feature, &before);

    /* 2. check against the reference (the reference itself is not checked) */
    int warm = o->warmup;
    if (!be->is_ref) {
        reset_inputs(c);
        kr_status st = s->kind == KB_KV_APPEND ? kv_poison(c) : KR_OK;
        if (st != KR_OK) {
            r->state = KB_FAILED;
            snprintf(r->note, sizeof r->note, "failed: poisoning the cache (reference): %s: %s",
                     kr_status_string(st), kr_context_last_error(c->ref));
            return;
        }
        st = run_once(c, be->ctx, rows);
        if (st != KR_OK) {
            r->state = KB_FAILED;
            snprintf(r->note, sizeof r->note, "failed: %s: %s", kr_status_string(st),
                     kr_context_last_error(be->ctx));
            counters_delta(be->ctx, c->feature, &before, r);
            return;
        }
        int64_t n = 0;
        float *got = checked_values(c, be->ctx, &n);
        r->error = got && n == c->n_want ? rel_err(got, c->want, n) : INFINITY;
        free(got);
        if (!(r->error <= c->tolerance)) {
            r->state = KB_WRONG;
            snprintf(r->note, sizeof r->note,
                     "WRONG: normwise relative error %.3g against ref > tolerance %.1g; not timed",
                     r->error, c->tolerance);
            counters_delta(be->ctx, c->feature, &before, r);
            return;
        }
        warm = warm > 0 ? warm - 1 : 0; /* the check run warmed it */
    }

    /* 3. warm-up, then repetitions within the budget */
    for (int i = 0; i < warm; i++) {
        const kr_status st = run_once(c, be->ctx, rows);
        if (st != KR_OK) {
            r->state = KB_FAILED;
            snprintf(r->note, sizeof r->note, "failed: %s: %s", kr_status_string(st),
                     kr_context_last_error(be->ctx));
            counters_delta(be->ctx, c->feature, &before, r);
            return;
        }
    }
    double *t = malloc((size_t)o->reps * sizeof *t);
    if (!t) {
        r->state = KB_FAILED;
        snprintf(r->note, sizeof r->note, "failed: out of memory");
        return;
    }
    double spent = 0;
    int n = 0;
    while (n < o->reps && (n == 0 || spent < budget)) {
        if (s->kind == KB_KV_APPEND) kv_prime(c, be->ctx); /* untimed */
        const double t0 = kb_now();
        kr_status st;
        if (s->kind == KB_KV_APPEND) {
            const int64_t B = s->batch, Hkv = s->kv_heads, D = s->head_dim;
            kr_tensor k = kr_tensor_bshd(c->k, s->dtype, B, s->context, Hkv, D);
            kr_tensor v = kr_tensor_bshd(c->v, s->dtype, B, s->context, Hkv, D);
            st = kr_kv_cache_append(be->ctx, c->cache, 0, &k, &v, NULL, NULL, &c->rope);
        } else {
            st = run_once(c, be->ctx, rows);
        }
        t[n] = kb_now() - t0;
        if (st != KR_OK) {
            r->state = KB_FAILED;
            snprintf(r->note, sizeof r->note, "failed: %s: %s", kr_status_string(st),
                     kr_context_last_error(be->ctx));
            free(t);
            counters_delta(be->ctx, c->feature, &before, r);
            return;
        }
        spent += t[n];
        n++;
    }
    counters_delta(be->ctx, c->feature, &before, r);
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    r->reps = n;
    r->median_s = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    r->min_s = t[0];
    r->max_s = t[n - 1];
    r->spread = r->median_s > 0 ? (r->max_s - r->min_s) / r->median_s : 0;
    free(t);
    r->gflops = r->cost.flops * r->sampled / r->median_s / 1e9;
    r->gbps = r->cost.bytes * r->sampled / r->median_s / 1e9;
    r->ceiling_frac = r->cost.compute ? (ceil->fma_gflops > 0 ? r->gflops / ceil->fma_gflops : 0)
                                      : (ceil->read_gbps > 0 ? r->gbps / ceil->read_gbps : 0);
    r->state = KB_OK;
    if (r->accelerated == 0 && !be->is_ref && !r->note[0])
        snprintf(r->note, sizeof r->note, "not accelerated: %s",
                 r->last_reason[0] ? r->last_reason : "the reference served every call");
    /* the whole-case time this measurement predicts, for the next estimate */
    be->prev_cost = work;
    be->prev_time = r->median_s / r->sampled;
}

/* A result that could not be measured, with the reason. */
static void failed_result(kb_result *r, const kb_shape *s, const char *backend, const char *fmt,
                          ...) __attribute__((format(printf, 4, 5)));
static void failed_result(kb_result *r, const kb_shape *s, const char *backend, const char *fmt,
                          ...) {
    memset(r, 0, sizeof *r);
    r->shape = *s;
    r->cost = kb_case_cost(s);
    snprintf(r->backend, sizeof r->backend, "%s", backend);
    r->state = KB_FAILED;
    r->speedup = r->error = NAN;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->note, sizeof r->note, fmt, ap);
    va_end(ap);
}

/* ---- the run ------------------------------------------------------------------ */

static int push_result(kb_report *rep, const kb_result *r) {
    if (rep->n_results == rep->cap_results) {
        const int cap = rep->cap_results ? 2 * rep->cap_results : 64;
        kb_result *p = realloc(rep->results, (size_t)cap * sizeof *p);
        if (!p) return -1;
        rep->results = p;
        rep->cap_results = cap;
    }
    rep->results[rep->n_results++] = *r;
    return 0;
}

void kb_report_free(kb_report *rep) {
    free(rep->results);
    rep->results = NULL;
    rep->n_results = rep->cap_results = 0;
}

/* The series of one sub-benchmark: every dtype x kv dtype x causal mode. */
typedef struct kb_series {
    kb_kind kind;
    kr_dtype dtype, kv_dtype;
    bool causal;
} kb_series;

static int list_series(const kb_options *o, kb_series *out, int cap) {
    int n = 0;
    for (int k = 0; k < KB_KIND_COUNT_; k++) {
        if (!o->kinds[k]) continue;
        for (int d = 0; d < o->n_dtypes; d++) {
            const bool uses_kv = k == KB_DECODE || k == KB_KV_APPEND;
            const int n_kv = uses_kv ? o->n_kv_dtypes : 1;
            const int n_c = k == KB_ATTENTION ? o->n_causal : 1;
            for (int kv = 0; kv < n_kv; kv++)
                for (int cm = 0; cm < n_c; cm++) {
                    if (n == cap) return n;
                    out[n].kind = (kb_kind)k;
                    out[n].dtype = o->dtypes[d];
                    out[n].kv_dtype = uses_kv ? o->kv_dtypes[kv] : o->dtypes[d];
                    out[n].causal = k == KB_ATTENTION ? o->causal_modes[cm] != 0 : k == KB_DECODE;
                    n++;
                }
        }
    }
    return n;
}

int kb_run(const kb_options *o, kb_report *rep, char *err, size_t err_len) {
    memset(rep, 0, sizeof *rep);
    rep->opt = *o;
    const double t_start = kb_now();
    snprintf(rep->version, sizeof rep->version, "%s", kr_version());
    const time_t now = time(NULL);
    struct tm tmv;
    gmtime_r(&now, &tmv);
    strftime(rep->date, sizeof rep->date, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    kr_cpu_info cpu;
    kr_cpu_info_get(&cpu);
    snprintf(rep->cpu_model, sizeof rep->cpu_model, "%s", cpu.model);

    kr_context_options po = kr_context_options_default();
    po.config_path = o->config;
    po.n_threads = o->threads;
    po.log_level = KR_LOG_ERROR;
    kr_context *probe = NULL;
    if (kr_context_create(&po, &probe, err, err_len) != KR_OK) return -1;
    rep->threads = kr_context_threads(probe);

    kb_be be[KB_MAX_BACKENDS];
    memset(be, 0, sizeof be);
    int n_be = 0;
    if (open_backends(o, probe, be, &n_be, err, err_len)) {
        for (int i = 0; i < n_be; i++) kr_context_free(be[i].ctx);
        kr_context_free(probe);
        return -1;
    }
    kr_context_free(probe);

    kb_measure_ceilings(rep->threads, o->tiny_ceilings, &rep->ceil);

    kb_series series[64];
    const int n_series = list_series(o, series, 64);
    kb_progress prog;
    kb_progress_start(&prog, n_series * o->n_contexts * n_be, o->progress);
    int rc = 0;
    for (int si = 0; si < n_series && !rc; si++) {
        for (int b = 0; b < n_be; b++) be[b].prev_cost = be[b].prev_time = 0;
        double ref_rate = 0; /* ref FLOP/s from its check run */
        for (int ci = 0; ci < o->n_contexts && !rc; ci++) {
            kb_shape s = {series[si].kind,     o->batch,         o->heads, o->kv_heads,
                          o->head_dim,         o->contexts[ci],  o->q_len, series[si].dtype,
                          series[si].kv_dtype, series[si].causal};
            kb_case c;
            char what[128];
            snprintf(what, sizeof what, "%s ctx %lld", kb_kind_name(s.kind), (long long)s.context);
            const uint64_t seed = o->seed ^ ((uint64_t)si << 32) ^ (uint64_t)s.context;
            kb_result r;
            if (case_build(&c, &s, seed, be[0].ctx, err, err_len)) {
                /* a case that cannot be built (memory) is reported, not fatal */
                for (int b = 0; b < n_be; b++) {
                    failed_result(&r, &s, be[b].name, "failed: %s", err);
                    if (push_result(rep, &r)) rc = -1;
                    kb_progress_step(&prog, what);
                }
                err[0] = 0;
                continue;
            }
            double t_ref = 0;
            const kr_status st = case_reference(&c, be[0].ctx, &t_ref);
            if (s.kind == KB_ATTENTION && st == KR_OK && t_ref > 0) {
                const kb_shape cs = s;
                const double f = 4.0 * (double)cs.batch * (double)check_heads(&cs) *
                                 (double)cs.head_dim *
                                 kb_attention_pairs(c.check_rows, cs.context, cs.causal);
                ref_rate = f / t_ref;
            }
            const int first = rep->n_results;
            for (int b = 0; b < n_be && !rc; b++) {
                if (st != KR_OK) {
                    failed_result(&r, &s, be[b].name, "failed: the reference failed: %s: %s",
                                  kr_status_string(st), kr_context_last_error(be[0].ctx));
                } else {
                    case_backend(&c, &be[b], o, &rep->ceil, ref_rate, &r);
                }
                if (push_result(rep, &r)) rc = -1;
                if (!o->quiet && !rc) {
                    kb_progress_end(&prog);
                    kb_print_case(stdout, &rep->results[rep->n_results - 1]);
                    fflush(stdout);
                }
                kb_progress_step(&prog, what);
            }
            /* speed-ups over the reference of this case */
            const kb_result *ref = &rep->results[first];
            for (int i = first; i < rep->n_results && !rc; i++) {
                kb_result *x = &rep->results[i];
                if (ref->state != KB_OK || x->state != KB_OK) continue;
                const double a = x->cost.compute ? x->gflops : x->gbps;
                const double bref = ref->cost.compute ? ref->gflops : ref->gbps;
                x->speedup = bref > 0 ? a / bref : NAN;
            }
            case_free(&c);
        }
    }
    kb_progress_end(&prog);
    for (int i = 0; i < n_be; i++) kr_context_free(be[i].ctx);
    rep->wall_s = kb_now() - t_start;
    if (rc) snprintf(err, err_len, "out of memory for the results");
    return rc;
}
