/*
 * internal.h — what the library's own files share and nothing outside sees:
 * the context structure, the error and log helpers, tensor element access,
 * and the resolved argument structs that the op front-ends (ops.c,
 * kv_cache.c) hand to a backend after validating everything.
 */
#ifndef KR_CORE_INTERNAL_H
#define KR_CORE_INTERNAL_H

#include "krserve/krserve.h"

#include <stdarg.h>
#include <stdbool.h>

#if defined(__GNUC__)
#define KR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define KR_PRINTF(a, b)
#endif

#define KR_ERRMSG_LEN 512
#define KR_MAX_BACKENDS 8
#define KR_MAX_FAULTS 8
#define KR_MAX_DEVICES 16

struct kr_backend;
struct kr_device_ops;

/* One backend the registry found (or a plugin it refused: be == NULL). */
typedef struct kr_backend_slot {
    const struct kr_backend *be;
    void *dl; /* dlopen handle of a plugin */
    char name[32];
    char version[32];
    bool available;
    bool denied;
    int score;
    char reason[512];
    char path[512];
    int64_t calls[KR_FEATURE_COUNT_];
    bool warned[KR_FEATURE_COUNT_];
} kr_backend_slot;

/* KRSERVE_FAULT=op:backend[:n] — fail on purpose (n-th call, or every call). */
typedef struct kr_fault {
    char op[32];
    char backend[32];
    int64_t nth; /* 0 = every call */
    int64_t seen;
} kr_fault;

#include "config.h"

struct kr_context {
    kr_context_options opts;
    int32_t n_threads;
    char last_error[KR_ERRMSG_LEN];
    kr_config cfg;
    kr_backend_slot slots[KR_MAX_BACKENDS]; /* dispatch order, ref last */
    int n_slots;
    kr_feature_counters counters[KR_FEATURE_COUNT_];
    bool sticky_off[KR_FEATURE_COUNT_]; /* switched off after a failure */
    kr_fault faults[KR_MAX_FAULTS];
    int n_faults;
    char model[128]; /* current model for per-model switches, "" = none */
    /* CUDA: the plugin's device operations (NULL when no plugin is usable),
     * why not, and this context's state per device (stream, scratch),
     * opened on first use. */
    const struct kr_device_ops *dev_ops;
    char dev_reason[256];
    char dev_plugin_path[512];
    void *dev_state[KR_MAX_DEVICES];
};

/* Registry (registry.c): loads and orders the backends of a new context,
 * and releases them. */
kr_status kr_registry_init(kr_context *ctx, char *err, size_t err_len);
void kr_registry_free(kr_context *ctx);

/* Records `status` and a formatted message on ctx (ctx may be NULL) and
 * returns `status`, so callers write `return kr_fail(ctx, KR_ERR_SHAPE, ...)`. */
kr_status kr_fail(kr_context *ctx, kr_status status, const char *fmt, ...) KR_PRINTF(3, 4);
void kr_clear_error(kr_context *ctx);
void kr_log(const kr_context *ctx, kr_log_level level, const char *fmt, ...) KR_PRINTF(3, 4);

/* ---- tensors ----------------------------------------------------------- */

static inline int64_t kr_offset(const kr_tensor *t, int64_t i0, int64_t i1, int64_t i2,
                                int64_t i3) {
    return i0 * t->stride[0] + i1 * t->stride[1] + i2 * t->stride[2] + i3 * t->stride[3];
}

static inline float kr_load(const kr_tensor *t, int64_t off) {
    switch (t->dtype) {
    case KR_F32: return ((const float *)t->data)[off];
    case KR_F16: return kr_f16_to_f32(((const uint16_t *)t->data)[off]);
    case KR_BF16: return kr_bf16_to_f32(((const uint16_t *)t->data)[off]);
    case KR_I8: return (float)((const int8_t *)t->data)[off];
    default: return 0.0f;
    }
}

static inline void kr_store(const kr_tensor *t, int64_t off, float x) {
    switch (t->dtype) {
    case KR_F32: ((float *)t->data)[off] = x; break;
    case KR_F16: ((uint16_t *)t->data)[off] = kr_f32_to_f16(x); break;
    case KR_BF16: ((uint16_t *)t->data)[off] = kr_f32_to_bf16(x); break;
    default: break;
    }
}

/* Checks the parts of a view every op needs: non-NULL data, a known dtype,
 * extents >= 1, strides >= 0. `name` names the argument in the message. */
kr_status kr_check_tensor(kr_context *ctx, const char *op, const char *name, const kr_tensor *t);
bool kr_dtype_is_float(kr_dtype dt);

/* ---- devices (device.c) -------------------------------------------------- */

/* This context's state on device `dev` (opened on first use), or a
 * KR_ERR_DEVICE naming why CUDA is not served. For the CPU: *state = NULL. */
kr_status kr_device_state(kr_context *ctx, const char *op, kr_device dev, void **state);
/* Checks that t lives on `dev`; for CUDA, that t->data is device memory of
 * that device (a host pointer tagged CUDA is refused, never dereferenced). */
kr_status kr_check_on_device(kr_context *ctx, const char *op, const char *name, const kr_tensor *t,
                             kr_device dev);
/* Whether p is device memory (of any device) by the plugin's account. */
bool kr_is_device_pointer(const kr_context *ctx, const void *p);

/* ---- resolved op arguments (validated; what a backend receives) --------- */

/* K/V rows stored as int8 with two-level scales and per-channel factors
 * (the layout kv_cache.h draws). Row r = (b * capacity + t) * Hkv + h has
 * its values at data[r * D] and its metadata at meta[r * M]. */
typedef struct kr_kv_int8_view {
    const int8_t *data;
    const uint8_t *meta; /* [B][capacity][Hkv][M], M = KR_KV_INT8_META_BYTES(D) */
    const float *chan;   /* [Hkv][D] */
    int64_t capacity;
} kr_kv_int8_view;

/* The scale of group g of an int8 row, from its metadata. */
static inline float kr_kv_int8_group_scale(const uint8_t *meta, int64_t g) {
    const uint16_t h = (uint16_t)(meta[0] | (meta[1] << 8));
    return kr_f16_to_f32(h) * ((float)meta[2 + g] * (1.0f / 255.0f));
}

/* Dequantises one int8 row of D values (chan: that kv head's factors). */
static inline void kr_kv_int8_dequant_row(const int8_t *q, const uint8_t *meta, const float *chan,
                                          int64_t D, float *out) {
    for (int64_t c = 0; c < D; c++)
        out[c] = (float)q[c] * kr_kv_int8_group_scale(meta, c / KR_KV_INT8_GROUP) * chan[c];
}

typedef struct kr_attention_args {
    const kr_tensor *q; /* [B, Sq, H, D] */
    const kr_tensor *k; /* [B, Skv, Hkv, D]; unused when k8 is set */
    const kr_tensor *v;
    const kr_kv_int8_view *k8; /* int8 cache storage, or NULL */
    const kr_kv_int8_view *v8;
    kr_tensor *out;
    int64_t B, Sq, Skv, H, Hkv, D;
    float scale;
    bool causal;
    int64_t window_left, window_right;
    const kr_tensor *mask;  /* shape [Bm, Hm, Sq, >= Skv] */
    kr_tensor *lse;         /* [B, H, Sq, 1] */
    const int64_t *kv_lens; /* host memory */
    int32_t n_threads;      /* worker threads the context allows */
    void *dev_state;        /* device tensors: the context's state on their device */
} kr_attention_args;

typedef struct kr_rope_args {
    kr_tensor *x; /* [B, S, H, D] */
    const int64_t *positions;
    int64_t rotary_dim;
    kr_rope_layout layout;
    const double *inv_freq; /* rotary_dim / 2 */
    double attention_factor;
    int32_t n_threads;
    void *dev_state;
    bool positions_on_device; /* device x only: positions is device memory */
} kr_rope_args;

/* ---- KV cache internals (the layout kv_cache.h draws) ------------------- */

typedef struct kr_kv_append_args kr_kv_append_args;

typedef struct kr_kv_layer {
    void *k, *v;              /* [B][capacity][Hkv][D], storage dtype */
    uint8_t *k_meta, *v_meta; /* int8 only: [B][capacity][Hkv][M] row scales */
    float *k_chan, *v_chan;   /* int8 only: [Hkv][D], fixed at the first append */
    bool chan_set;
    /* int8 only, set with the factors by backends that keep them on a device:
     * bit h when every factor of K (V) head h < 64 is 1 */
    uint64_t k_ones, v_ones;
} kr_kv_layer;

struct kr_kv_cache {
    kr_kv_cache_options o;
    int64_t *len;        /* [n_layers][B] tokens held (host memory) */
    kr_kv_layer *layers; /* [n_layers] */
    /* A device cache: the plugin's memory operations, and a handle that
     * keeps the plugin loaded until the cache is freed. */
    const struct kr_device_ops *dev_ops;
    void *dev_dl;
};

/* Turns per-channel amax into int8 channel factors (the rule of
 * kr_ref_chan_factors, which the front-end hands to every backend). */
typedef void (*kr_chan_factors_fn)(const kr_kv_append_args *a, bool is_k, float *amax, float *tmp);

struct kr_kv_append_args {
    struct kr_kv_cache *cache;
    int64_t layer;
    const kr_tensor *k, *v;   /* [B, S, Hkv, D] */
    const int64_t *n_new;     /* [B], resolved */
    const int64_t *positions; /* [B*S], resolved */
    const double *inv_freq;   /* rotary_dim / 2 values, or NULL: no RoPE */
    int64_t rotary_dim;
    kr_rope_layout layout;
    double attention_factor;
    int32_t n_threads;
    void *dev_state;
    bool positions_implicit; /* positions were not given: len[b] + t */
    kr_chan_factors_fn chan_factors;
};

/* Resolves a kr_rope_params into frequencies; inv_freq has room for D/2. */
kr_status kr_rope_resolve(kr_context *ctx, const kr_rope_params *p, int64_t head_dim,
                          double *inv_freq, double *attention_factor, int64_t *rotary_dim);

/* The visible-key range [lo, hi) of query row i of a sequence with L keys. */
static inline void kr_attention_row_range(const kr_attention_args *a, int64_t L, int64_t i,
                                          int64_t *lo, int64_t *hi) {
    int64_t p = L - a->Sq + i;
    int64_t l = 0, h = L;
    if (a->causal && p + 1 < h) h = p + 1;
    if (a->window_right >= 0 && p + a->window_right + 1 < h) h = p + a->window_right + 1;
    if (a->window_left >= 0 && p - a->window_left > l) l = p - a->window_left;
    if (h < l) h = l;
    *lo = l;
    *hi = h;
}

#endif /* KR_CORE_INTERNAL_H */
