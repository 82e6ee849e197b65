/*
 * backend.h — the backend interface: one function table per backend,
 * carrying an API version. Built-in backends (ref, later cpu) and plugins
 * (libkrserve-cuda.so) fill the same table; a plugin exports
 *
 *     const kr_backend *krserve_backend_entry(void);
 *
 * and the loader refuses it unless api_version == KR_BACKEND_API_VERSION.
 * Kernels report failure as a status plus a message written into err.
 */
#ifndef KR_CORE_BACKEND_H
#define KR_CORE_BACKEND_H

#include "internal.h"

/* 2: the args structs carry n_threads.
 * 3: device backends: device memory and streams (kr_device_ops), the args
 *    structs carry the context's per-device state, a backend may be its
 *    device's reference (the in-device fallback). */
#define KR_BACKEND_API_VERSION 3u
#define KR_BACKEND_ENTRY_SYMBOL "krserve_backend_entry"

typedef enum kr_op { KR_OP_ATTENTION = 0, KR_OP_ROPE = 1, KR_OP_KV_APPEND = 2, KR_OP_COUNT_ } kr_op;

/*
 * What a device backend (device_type != CPU) adds: per-(context, device)
 * state holding the stream and scratch memory, device memory, copies, and
 * the question "is this pointer device memory, and on which device".
 * Every call reports failure as a status plus a message in err.
 */
typedef struct kr_device_ops {
    /* Opens the state of one context on one device (creates its stream). */
    kr_status (*open)(int32_t device, void **state, char *err, size_t n);
    void (*close)(void *state);
    /* Makes later work of this state run on a caller's stream (NULL: its own). */
    kr_status (*set_stream)(void *state, void *stream, char *err, size_t n);
    void *(*stream)(void *state);
    /* Waits for the state's stream; reports errors of earlier asynchronous work. */
    kr_status (*sync)(void *state, char *err, size_t n);
    kr_status (*alloc)(int32_t device, size_t bytes, void **out, char *err, size_t n);
    void (*free)(int32_t device, void *p);
    /* Copies in any direction (host or device on either side), ordered on
     * the state's stream and finished before it returns. */
    kr_status (*copy)(void *state, void *dst, const void *src, size_t bytes, char *err, size_t n);
    kr_status (*fill)(void *state, void *dst, int value, size_t bytes, char *err, size_t n);
    /* The device ordinal p lives on, or -1 for host (or unknown) memory. */
    int32_t (*pointer_device)(const void *p);
} kr_device_ops;

typedef struct kr_backend {
    uint32_t api_version; /* KR_BACKEND_API_VERSION at build time */
    const char *name;     /* "ref", "cpu", "cuda", ... */
    const char *version;
    kr_device_type device_type;
    /* > 0: usable, higher is preferred; 0: not on this system, `reason` says why. */
    int (*probe)(char *reason, size_t reason_len);
    int (*device_count)(void);
    kr_status (*device_info)(int device, kr_device_info *out);
    /* Whether this backend can run this call (`args` is the op's args struct);
     * false with a reason for cases it leaves to the next backend. */
    bool (*supports)(kr_op op, const void *args, char *reason, size_t reason_len);
    kr_status (*attention)(const kr_attention_args *a, char *err, size_t err_len);
    kr_status (*rope)(const kr_rope_args *a, char *err, size_t err_len);
    kr_status (*kv_append)(const kr_kv_append_args *a, char *err, size_t err_len);
    /* true for a device's reference: always allowed, never counted as
     * accelerated, never switched off (ref for the CPU; the plugin's
     * unfused path for CUDA). */
    bool reference;
    const kr_device_ops *dev; /* device backends only; NULL for the CPU */
    /* A plugin's in-device fallback (its reference for that device), or NULL. */
    const struct kr_backend *device_reference;
} kr_backend;

typedef const kr_backend *(*kr_backend_entry_fn)(void);

/* Runs op (whose feature is f, on device type dev) on the first backend
 * that serves it, with counting and fallback (registry.c). */
kr_status kr_dispatch(kr_context *ctx, kr_op op, kr_feature f, kr_device_type dev,
                      const void *args);

/* The built-in reference backend. */
const kr_backend *kr_ref_backend(void);
/* The built-in CPU SIMD backend (src/backends/cpu), or NULL in a build
 * without one (its probe says why when the CPU lacks the features). */
const kr_backend *kr_cpu_backend(void);

#endif /* KR_CORE_BACKEND_H */
