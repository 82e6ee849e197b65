/*
 * cuda_backend.c — the CUDA acceleration package's host side
 * (libkrserve-cuda.so): the probe and device descriptions, the per-context
 * device state (stream, upload scratch, decode scratch), device memory, and
 * the two function tables the plugin exports:
 *
 *   "cuda"          the fast kernels: split-K decode attention (Sq <= 16,
 *                   f16/bf16 or int8 cache), tensor-core prefill attention
 *                   (any Sq, f16/bf16 K/V, head_dim 64/128), fused RoPE,
 *                   fused RoPE + quantise + append; supports() declines the
 *                   rest with the reason;
 *   "cuda-unfused"  the in-device reference: a simple attention kernel that
 *                   serves every case, scalar RoPE, the same general append.
 *                   The framework falls back to it, so a CUDA tensor never
 *                   falls off the device.
 *
 * Every CUDA error becomes a kr_status and a message; nothing exits.
 */
#include "../../core/backend.h"
#include "kernels.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KR_CUDA_MIN_MAJOR 8
#define CU_ALIGN 256

/* ---- probe and device description ------------------------------------------ */

/* The prefill kernel family for a device of compute capability cc: the
 * Hopper kernel on 9.0 unless KRSERVE_CUDA_PREFILL=sm80 asks for the sm_80
 * one (the lab and the benchmark compare them on one card). */
static int cu_prefill_arch(int cc) {
    const char *e = getenv("KRSERVE_CUDA_PREFILL");
    if (e && strcmp(e, "sm80") == 0) return 80;
    return cc == 90 ? 90 : 80;
}

static int cuda_probe(char *reason, size_t n) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(reason, n, "no usable CUDA device: %s", cudaGetErrorString(e));
        return 0;
    }
    if (count == 0) {
        snprintf(reason, n, "no CUDA device present");
        return 0;
    }
    struct cudaDeviceProp p;
    if ((e = cudaGetDeviceProperties(&p, 0)) != cudaSuccess) {
        snprintf(reason, n, "cannot read device 0 properties: %s", cudaGetErrorString(e));
        return 0;
    }
    if (p.major < KR_CUDA_MIN_MAJOR) {
        snprintf(reason, n, "%s has compute capability %d.%d; the CUDA package needs %d.0 or newer",
                 p.name, p.major, p.minor, KR_CUDA_MIN_MAJOR);
        return 0;
    }
    snprintf(reason, n, "%d device(s); device 0: %s, compute capability %d.%d; prefill kernel %s",
             count, p.name, p.major, p.minor,
             cu_prefill_arch(p.major * 10 + p.minor) == 90 ? "sm_90a (wgmma, TMA)"
                                                           : "sm_80 (mma.sync)");
    return 100;
}

static int cuda_device_count(void) {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

static void version_string(int v, char *out, size_t n) {
    snprintf(out, n, "%d.%d", v / 1000, (v % 1000) / 10);
}

static kr_status cuda_device_info(int device, kr_device_info *out) {
    struct cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return KR_ERR_BACKEND;
    snprintf(out->name, sizeof out->name, "%s", p.name);
    out->memory_bytes = (int64_t)p.totalGlobalMem;
    out->cc_major = p.major;
    out->cc_minor = p.minor;
    out->multiprocessors = p.multiProcessorCount;
    int v = 0;
    if (cudaDriverGetVersion(&v) == cudaSuccess)
        version_string(v, out->driver_version, sizeof out->driver_version);
    if (cudaRuntimeGetVersion(&v) == cudaSuccess)
        version_string(v, out->runtime_version, sizeof out->runtime_version);
    return KR_OK;
}

/* ---- per-context device state ---------------------------------------------- */

typedef struct cu_state {
    int device;
    int n_sm;
    int cc; /* kr_cu_attention.cc: 90 picks the Hopper prefill kernel */
    cudaStream_t own, cur;
    char *scratch; /* uploads of one call (positions, lengths, frequencies) */
    size_t scratch_cap, scratch_used;
    void *ws; /* decode partials */
    size_t ws_cap;
    uint32_t *counters; /* decode arrival counters, kept zero */
    size_t counters_cap;
    void *stage; /* the int8 cache dequantised for the Hopper prefill kernel */
    size_t stage_cap;
    uint32_t *sched; /* the Hopper prefill kernel's work counter, kept zero */
    size_t sched_cap;
} cu_state;

static kr_status cu_fail(cudaError_t e, const char *what, char *err, size_t n) {
    snprintf(err, n, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
    return e == cudaErrorMemoryAllocation ? KR_ERR_OUT_OF_MEMORY : KR_ERR_BACKEND;
}

#define CU_TRY(call, what)                                                                         \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) return cu_fail(e_, what, err, n);                                   \
    } while (0)

static kr_status st_open(int32_t device, void **out, char *err, size_t n) {
    int count = 0;
    CU_TRY(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    if (device < 0 || device >= count) {
        snprintf(err, n, "cuda:%d does not exist (%d device(s))", (int)device, count);
        return KR_ERR_DEVICE;
    }
    CU_TRY(cudaSetDevice(device), "cudaSetDevice");
    cu_state *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, n, "out of host memory");
        return KR_ERR_OUT_OF_MEMORY;
    }
    s->device = device;
    int major = 0, minor = 0;
    cudaError_t e = cudaDeviceGetAttribute(&s->n_sm, cudaDevAttrMultiProcessorCount, device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    s->cc = cu_prefill_arch(major * 10 + minor) == 90 ? 90 : 0;
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&s->own, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        free(s);
        return cu_fail(e, "opening the device", err, n);
    }
    s->cur = s->own;
    *out = s;
    return KR_OK;
}

static void st_close(void *state) {
    cu_state *s = state;
    if (!s) return;
    cudaSetDevice(s->device);
    cudaStreamSynchronize(s->cur);
    cudaFree(s->scratch);
    cudaFree(s->ws);
    cudaFree(s->counters);
    cudaFree(s->sched);
    cudaFree(s->stage);
    cudaStreamDestroy(s->own);
    cudaGetLastError(); /* a failed close leaves nothing behind */
    free(s);
}

static kr_status st_set_stream(void *state, void *stream, char *err, size_t n) {
    cu_state *s = state;
    CU_TRY(cudaSetDevice(s->device), "cudaSetDevice");
    /* The scratch is reused call after call: let the old stream finish. */
    CU_TRY(cudaStreamSynchronize(s->cur), "synchronising the previous stream");
    s->cur = stream ? (cudaStream_t)stream : s->own;
    return KR_OK;
}

static void *st_stream(void *state) { return ((cu_state *)state)->cur; }

static kr_status st_sync(void *state, char *err, size_t n) {
    cu_state *s = state;
    CU_TRY(cudaSetDevice(s->device), "cudaSetDevice");
    CU_TRY(cudaStreamSynchronize(s->cur), "queued CUDA work failed");
    return KR_OK;
}

static kr_status mem_alloc(int32_t device, size_t bytes, void **out, char *err, size_t n) {
    CU_TRY(cudaSetDevice(device), "cudaSetDevice");
    CU_TRY(cudaMalloc(out, bytes), "cudaMalloc");
    return KR_OK;
}

static void mem_free(int32_t device, void *p) {
    if (cudaSetDevice(device) == cudaSuccess) cudaFree(p);
    cudaGetLastError();
}

static kr_status mem_copy(void *state, void *dst, const void *src, size_t bytes, char *err,
                          size_t n) {
    cu_state *s = state;
    CU_TRY(cudaSetDevice(s->device), "cudaSetDevice");
    CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s->cur), "cudaMemcpyAsync");
    CU_TRY(cudaStreamSynchronize(s->cur), "copy");
    return KR_OK;
}

static kr_status mem_fill(void *state, void *dst, int value, size_t bytes, char *err, size_t n) {
    cu_state *s = state;
    CU_TRY(cudaSetDevice(s->device), "cudaSetDevice");
    CU_TRY(cudaMemsetAsync(dst, value, bytes, s->cur), "cudaMemsetAsync");
    CU_TRY(cudaStreamSynchronize(s->cur), "fill");
    return KR_OK;
}

static int32_t pointer_device(const void *p) {
    struct cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged ? at.device : -1;
}

static const kr_device_ops cuda_dev_ops = {
    .open = st_open,
    .close = st_close,
    .set_stream = st_set_stream,
    .stream = st_stream,
    .sync = st_sync,
    .alloc = mem_alloc,
    .free = mem_free,
    .copy = mem_copy,
    .fill = mem_fill,
    .pointer_device = pointer_device,
};

/* Makes room for `bytes` of uploads in this call (before any upload). */
static kr_status scratch_begin(cu_state *s, size_t bytes, char *err, size_t n) {
    CU_TRY(cudaSetDevice(s->device), "cudaSetDevice");
    s->scratch_used = 0;
    if (bytes <= s->scratch_cap) return KR_OK;
    CU_TRY(cudaStreamSynchronize(s->cur), "before growing the scratch");
    cudaFree(s->scratch);
    s->scratch = NULL;
    s->scratch_cap = 0;
    const size_t cap = bytes < (1u << 20) ? (1u << 20) : bytes;
    CU_TRY(cudaMalloc((void **)&s->scratch, cap), "cudaMalloc (scratch)");
    s->scratch_cap = cap;
    return KR_OK;
}

/* Copies `bytes` of host memory into the call's scratch; *dev gets its address. */
static kr_status upload(cu_state *s, const void *host, size_t bytes, void **dev, char *err,
                        size_t n) {
    const size_t at = (s->scratch_used + CU_ALIGN - 1) / CU_ALIGN * CU_ALIGN;
    if (at + bytes > s->scratch_cap) {
        snprintf(err, n, "internal: upload of %zu bytes overruns the scratch", bytes);
        return KR_ERR_INTERNAL;
    }
    *dev = s->scratch + at;
    s->scratch_used = at + bytes;
    CU_TRY(cudaMemcpyAsync(*dev, host, bytes, cudaMemcpyHostToDevice, s->cur), "upload");
    return KR_OK;
}

static size_t up_size(size_t bytes) { return (bytes + CU_ALIGN - 1) / CU_ALIGN * CU_ALIGN; }

/* Per-sequence int64 host values as kernel lengths: inline when few. */
static kr_status lens_of(cu_state *s, const int64_t *v, int64_t B, kr_cu_lens *out, char *err,
                         size_t n) {
    memset(out, 0, sizeof *out);
    if (B <= KR_CU_INLINE) {
        for (int64_t b = 0; b < B; b++) out->v[b] = (int32_t)v[b];
        return KR_OK;
    }
    int32_t *tmp = malloc(sizeof(int32_t) * (size_t)B);
    if (!tmp) {
        snprintf(err, n, "out of host memory");
        return KR_ERR_OUT_OF_MEMORY;
    }
    for (int64_t b = 0; b < B; b++) tmp[b] = (int32_t)v[b];
    void *d = NULL;
    kr_status st = upload(s, tmp, sizeof(int32_t) * (size_t)B, &d, err, n);
    free(tmp);
    out->dev = d;
    return st;
}

static size_t lens_bytes(int64_t B) {
    return B <= KR_CU_INLINE ? 0 : up_size(sizeof(int32_t) * (size_t)B);
}

/* ---- attention ------------------------------------------------------------------ */

static void attention_view(const kr_attention_args *a, kr_cu_attention *c) {
    memset(c, 0, sizeof *c);
    c->q = *a->q;
    c->out = *a->out;
    if (a->k8) {
        c->int8 = true;
        c->k8 = (kr_cu_int8){a->k8->data, a->k8->meta, a->k8->chan, a->k8->capacity};
        c->v8 = (kr_cu_int8){a->v8->data, a->v8->meta, a->v8->chan, a->v8->capacity};
    } else {
        c->k = *a->k;
        c->v = *a->v;
    }
    if (a->mask) {
        c->has_mask = true;
        c->mask = *a->mask;
    }
    if (a->lse) {
        c->has_lse = true;
        c->lse = *a->lse;
    }
    c->has_lens = a->kv_lens != NULL;
    if (c->has_lens && a->B <= KR_CU_INLINE)
        for (int64_t b = 0; b < a->B; b++) c->lens.v[b] = (int32_t)a->kv_lens[b];
    c->B = a->B, c->Sq = a->Sq, c->Skv = a->Skv, c->H = a->H, c->Hkv = a->Hkv, c->D = a->D;
    c->scale = a->scale;
    c->causal = a->causal;
    c->window_left = a->window_left, c->window_right = a->window_right;
}

/* Grows a zero-kept buffer (the decode counters) or a plain one. */
static kr_status grow(cu_state *s, void **buf, size_t *cap, size_t bytes, bool zero, char *err,
                      size_t n) {
    if (bytes <= *cap) return KR_OK;
    CU_TRY(cudaStreamSynchronize(s->cur), "before growing the decode scratch");
    cudaFree(*buf);
    *buf = NULL;
    *cap = 0;
    CU_TRY(cudaMalloc(buf, bytes), "cudaMalloc (decode scratch)");
    *cap = bytes;
    if (zero) CU_TRY(cudaMemsetAsync(*buf, 0, bytes, s->cur), "cudaMemsetAsync");
    return KR_OK;
}

/* Prefill over the int8 cache on Hopper: the sm_80 kernel dequantises every
 * tile inside its loop (a quarter of its own f16 speed); the Hopper kernel
 * reads f16/bf16 through TMA. So when q is f16/bf16 and the staged K/V fit
 * KR_CU_INT8_STAGE_MAX, the rows are dequantised once into a buffer in q's
 * type and the Hopper kernel runs over that (when it would take the call
 * unsplit); anything else, or a failed allocation, keeps the sm_80 kernel. */
#define KR_CU_INT8_STAGE_MAX ((size_t)512 << 20)

/* Whether the call goes that way; then *h is the Hopper kernel's call over
 * the buffer (built once, used by st_staged). */
static bool int8_staged(cu_state *s, const kr_cu_attention *c, kr_cu_attention *h, char *err,
                        size_t n) {
    const size_t bytes = kr_cu_int8_stage_bytes(c);
    if (c->cc != 90 || bytes == 0 || bytes > KR_CU_INT8_STAGE_MAX) return false;
    if (grow(s, &s->stage, &s->stage_cap, bytes, false, err, n) != KR_OK) {
        (void)cudaGetLastError(); /* no room: the sm_80 kernel needs none */
        err[0] = 0;
        return false;
    }
    kr_cu_int8_stage_view(c, s->stage, h);
    int hopper = 0;
    (void)kr_cu_prefill_splits(h, s->n_sm, &hopper);
    return hopper;
}

/* The Hopper kernel's work counter (kr_cu_prefill_ws.sched). */
static kr_status sched_of(cu_state *s, kr_cu_prefill_ws *pw, char *err, size_t n) {
    kr_status st = grow(s, (void **)&s->sched, &s->sched_cap, sizeof(uint32_t), true, err, n);
    pw->sched = st ? NULL : s->sched;
    return st;
}

/* Dequantises the call's cache rows into the staging buffer, then runs the
 * Hopper kernel over them (h: int8_staged's view of the buffer). */
static kr_status st_staged(cu_state *s, const kr_cu_attention *c, const kr_cu_attention *h,
                           char *err, size_t n) {
    kr_cu_prefill_ws pw = {1, NULL, NULL, 1, NULL};
    kr_status st = sched_of(s, &pw, err, n);
    if (!st) st = kr_cu_int8_stage(c, h, s->cur, err, n);
    return st ? st : kr_cu_prefill(h, &pw, s->cur, err, n);
}

static kr_status cuda_attention(const kr_attention_args *a, char *err, size_t n) {
    cu_state *s = a->dev_state;
    kr_cu_attention c;
    attention_view(a, &c);
    c.cc = s->cc;
    kr_status st = scratch_begin(s, a->kv_lens ? lens_bytes(a->B) : 0, err, n);
    if (!st && a->kv_lens && a->B > KR_CU_INLINE)
        st = lens_of(s, a->kv_lens, a->B, &c.lens, err, n);
    if (st) return st;
    char why[160];
    if (c.Sq > 16 || !kr_cu_decode_supported(&c, why, sizeof why)) {
        kr_cu_prefill_ws pw = {1, NULL, NULL, 0, NULL};
        kr_cu_attention h;
        if (int8_staged(s, &c, &h, err, n)) return st_staged(s, &c, &h, err, n);
        pw.splits = (int)kr_cu_prefill_splits(&c, s->n_sm, &pw.hopper);
        if (pw.hopper && (st = sched_of(s, &pw, err, n)) != KR_OK) return st;
        if (pw.splits > 1) {
            const size_t bytes = kr_cu_prefill_ws_bytes(&c, pw.splits);
            st = grow(s, &s->ws, &s->ws_cap, bytes, false, err, n);
            if (st) return st;
            pw.part_o = s->ws;
            pw.part_lse = pw.part_o + bytes / sizeof(float) / (size_t)(c.D + 1) * (size_t)c.D;
        }
        return kr_cu_prefill(&c, &pw, s->cur, err, n);
    }
    const int64_t splits = kr_cu_decode_splits(&c, s->n_sm);
    size_t counter_bytes = 0;
    const size_t ws_bytes = kr_cu_decode_ws_bytes(&c, splits, &counter_bytes);
    if (splits > 1) {
        st = grow(s, &s->ws, &s->ws_cap, ws_bytes, false, err, n);
        if (!st) st = grow(s, (void **)&s->counters, &s->counters_cap, counter_bytes, true, err, n);
        if (st) return st;
    }
    kr_cu_decode_ws ws = {(float *)s->ws, NULL, s->counters};
    if (splits > 1) {
        const size_t rows = (size_t)(ws_bytes / sizeof(float) / (size_t)(c.D + 1));
        ws.part_lse = ws.part_o + rows * (size_t)c.D;
    }
    return kr_cu_decode(&c, splits, &ws, s->cur, err, n);
}

static kr_status unfused_attention(const kr_attention_args *a, char *err, size_t n) {
    cu_state *s = a->dev_state;
    kr_cu_attention c;
    attention_view(a, &c);
    kr_status st = scratch_begin(s, a->kv_lens ? lens_bytes(a->B) : 0, err, n);
    if (!st && a->kv_lens && a->B > KR_CU_INLINE)
        st = lens_of(s, a->kv_lens, a->B, &c.lens, err, n);
    if (st) return st;
    return kr_cu_attention_unfused(&c, s->cur, err, n);
}

/* ---- RoPE ------------------------------------------------------------------------ */

static bool rope_vector_ok(const kr_rope_args *a) {
    const kr_tensor *x = a->x;
    if (x->stride[3] != 1 || (a->rotary_dim / 2) % 4 || (uintptr_t)x->data % 16) return false;
    for (int i = 0; i < 3; i++)
        if (x->stride[i] % 8) return false;
    return true;
}

static kr_status rope_common(const kr_rope_args *a, bool vector, char *err, size_t n) {
    cu_state *s = a->dev_state;
    const int64_t half = a->rotary_dim / 2, tokens = a->x->shape[0] * a->x->shape[1];
    if (half == 0) return KR_OK;
    const size_t pos_bytes = a->positions_on_device ? 0 : sizeof(int64_t) * (size_t)tokens;
    kr_status st =
        scratch_begin(s, up_size(pos_bytes) + up_size(sizeof(double) * (size_t)half), err, n);
    kr_cu_rope r = {*a->x, a->positions, NULL, half, a->layout, a->attention_factor};
    void *d = NULL;
    if (!st && !a->positions_on_device) {
        st = upload(s, a->positions, pos_bytes, &d, err, n);
        r.positions = d;
    }
    if (!st) st = upload(s, a->inv_freq, sizeof(double) * (size_t)half, &d, err, n);
    if (st) return st;
    r.inv_freq = d;
    return kr_cu_rope_run(&r, vector, s->cur, err, n);
}

static kr_status cuda_rope(const kr_rope_args *a, char *err, size_t n) {
    return rope_common(a, rope_vector_ok(a), err, n);
}

static kr_status unfused_rope(const kr_rope_args *a, char *err, size_t n) {
    return rope_common(a, false, err, n);
}

/* ---- KV append ------------------------------------------------------------------- */

/* Fixes the int8 channel factors at a layer's first append: amax on the
 * device, the factor rule on the host (the same function every backend
 * uses), the factors back into the cache. */
static kr_status fix_channel_factors(const kr_kv_append_args *a, const kr_cu_append *c, cu_state *s,
                                     char *err, size_t n) {
    kr_kv_layer *ly = &a->cache->layers[a->layer];
    const size_t per = (size_t)(c->Hkv * c->D);
    float *host = malloc(sizeof(float) * (2 * per + (size_t)c->D));
    if (!host) {
        snprintf(err, n, "out of host memory");
        return KR_ERR_OUT_OF_MEMORY;
    }
    /* ly->k_chan / v_chan are free to hold amax until the factors replace it. */
    kr_status st = kr_cu_append_amax(c, ly->k_chan, ly->v_chan, s->cur, err, n);
    cudaError_t e = cudaSuccess;
    if (!st)
        e = cudaMemcpyAsync(host, ly->k_chan, sizeof(float) * per, cudaMemcpyDeviceToHost, s->cur);
    if (!st && e == cudaSuccess)
        e = cudaMemcpyAsync(host + per, ly->v_chan, sizeof(float) * per, cudaMemcpyDeviceToHost,
                            s->cur);
    if (!st && e == cudaSuccess) e = cudaStreamSynchronize(s->cur);
    if (!st && e != cudaSuccess) st = cu_fail(e, "channel amax", err, n);
    if (!st) {
        ly->k_ones = ly->v_ones = 0;
        for (int64_t h = 0; h < c->Hkv; h++) {
            a->chan_factors(a, true, host + h * c->D, host + 2 * per);
            a->chan_factors(a, false, host + per + h * c->D, host + 2 * per);
            bool k1 = h < 64, v1 = h < 64;
            for (int64_t d = 0; d < c->D; d++) {
                k1 = k1 && host[h * c->D + d] == 1.0f;
                v1 = v1 && host[per + h * c->D + d] == 1.0f;
            }
            ly->k_ones |= (uint64_t)k1 << (h & 63);
            ly->v_ones |= (uint64_t)v1 << (h & 63);
        }
        e = cudaMemcpyAsync(ly->k_chan, host, sizeof(float) * per, cudaMemcpyHostToDevice, s->cur);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(ly->v_chan, host + per, sizeof(float) * per, cudaMemcpyHostToDevice,
                                s->cur);
        if (e == cudaSuccess) e = cudaStreamSynchronize(s->cur);
        if (e != cudaSuccess) st = cu_fail(e, "channel factors", err, n);
    }
    free(host);
    if (!st) ly->chan_set = true;
    return st;
}

static kr_status cuda_kv_append(const kr_kv_append_args *a, char *err, size_t n) {
    cu_state *s = a->dev_state;
    kr_kv_cache *kc = a->cache;
    const kr_kv_cache_options *o = &kc->o;
    kr_kv_layer *ly = &kc->layers[a->layer];
    const int64_t B = o->batch, S = a->k->shape[1], half = a->inv_freq ? a->rotary_dim / 2 : 0;
    const size_t pos_bytes = a->positions_implicit ? 0 : sizeof(int64_t) * (size_t)(B * S);
    kr_status st = scratch_begin(
        s, 2 * lens_bytes(B) + up_size(pos_bytes) + up_size(sizeof(double) * (size_t)(half + 1)),
        err, n);
    if (st) return st;
    kr_cu_append c;
    memset(&c, 0, sizeof c);
    c.k = *a->k;
    c.v = *a->v;
    c.k_dst = ly->k;
    c.v_dst = ly->v;
    c.k_meta = ly->k_meta;
    c.v_meta = ly->v_meta;
    c.k_chan = ly->k_chan;
    c.v_chan = ly->v_chan;
    c.dtype = o->dtype;
    c.B = B, c.S = S, c.Hkv = o->n_kv_heads, c.D = o->head_dim, c.capacity = o->capacity;
    c.half = half;
    c.layout = a->layout;
    c.attention_factor = a->attention_factor;
    c.vec = c.D % 4 == 0 && half % 4 == 0;
    st = lens_of(s, kc->len + a->layer * B, B, &c.len, err, n);
    if (!st) st = lens_of(s, a->n_new, B, &c.n_new, err, n);
    void *d = NULL;
    if (!st && pos_bytes) {
        st = upload(s, a->positions, pos_bytes, &d, err, n);
        c.positions = d;
    }
    if (!st && half) {
        st = upload(s, a->inv_freq, sizeof(double) * (size_t)half, &d, err, n);
        c.inv_freq = d;
    }
    if (st) return st;
    bool any_new = false;
    for (int64_t b = 0; b < B; b++) any_new |= a->n_new[b] > 0;
    if (!any_new) return KR_OK;
    if (o->dtype == KR_I8 && !ly->chan_set) {
        st = fix_channel_factors(a, &c, s, err, n);
        if (st) return st;
    }
    c.k_ones = ly->k_ones;
    c.v_ones = ly->v_ones;
    return kr_cu_append_run(&c, s->cur, err, n);
}

/* ---- the tables -------------------------------------------------------------------- */

static bool cuda_supports(kr_op op, const void *args, char *reason, size_t n) {
    if (op != KR_OP_ATTENTION || !args) return true;
    kr_cu_attention c;
    attention_view(args, &c);
    char why_decode[160];
    if (c.Sq <= 16 && kr_cu_decode_supported(&c, why_decode, sizeof why_decode)) return true;
    if (kr_cu_prefill_supported(&c, reason, n)) return true;
    if (c.Sq <= 16) {
        char why_prefill[160];
        snprintf(why_prefill, sizeof why_prefill, "%s", reason);
        snprintf(reason, n, "%s; %s", why_decode, why_prefill);
    }
    return false;
}

static bool unfused_supports(kr_op op, const void *args, char *reason, size_t n) {
    (void)op;
    (void)args;
    (void)reason;
    (void)n;
    return true;
}

static const kr_backend unfused_table = {
    .api_version = KR_BACKEND_API_VERSION,
    .name = "cuda-unfused",
    .version = KR_VERSION_STRING,
    .device_type = KR_DEVICE_CUDA,
    .probe = cuda_probe,
    .device_count = cuda_device_count,
    .device_info = cuda_device_info,
    .supports = unfused_supports,
    .attention = unfused_attention,
    .rope = unfused_rope,
    .kv_append = cuda_kv_append,
    .reference = true,
    .dev = &cuda_dev_ops,
};

static const kr_backend cuda_table = {
    .api_version = KR_BACKEND_API_VERSION,
    .name = "cuda",
    .version = KR_VERSION_STRING,
    .device_type = KR_DEVICE_CUDA,
    .probe = cuda_probe,
    .device_count = cuda_device_count,
    .device_info = cuda_device_info,
    .supports = cuda_supports,
    .attention = cuda_attention,
    .rope = cuda_rope,
    .kv_append = cuda_kv_append,
    .reference = false,
    .dev = &cuda_dev_ops,
    .device_reference = &unfused_table,
};

__attribute__((visibility("default"))) const kr_backend *krserve_backend_entry(void);
const kr_backend *krserve_backend_entry(void) { return &cuda_table; }
