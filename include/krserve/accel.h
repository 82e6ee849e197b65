/*
 * accel.h — the acceleration framework as the embedder sees it: features
 * that can be switched (globally, per model), the backends that were found
 * or refused (and why), the devices they drive, and the counters that prove
 * which backend did the work. Included by krserve.h.
 *
 * A backend is a table of kernels (the portable `ref` backend is always
 * present and always last; `cuda` is a plugin, libkrserve-cuda.so, loaded
 * with dlopen when present). An op goes to the first backend in the order
 * that is available, not denied, drives the tensors' device, has the op's
 * feature switched on and supports the case; if it fails, the call is run
 * again on the next one (see fallback_to_reference).
 *
 * Configuration precedence: API (kr_context_options, kr_accel_set_*) >
 * environment (KRSERVE_*) > YAML file (--config / KRSERVE_CONFIG /
 * ./krserve.yaml) > defaults. docs/CONFIG.md lists every key.
 */
#ifndef KRSERVE_ACCEL_H
#define KRSERVE_ACCEL_H

#ifdef __cplusplus
extern "C" {
#endif

/** The switchable features, named as in krserve.yaml. */
typedef enum kr_feature {
    KR_FEATURE_FLASH_ATTENTION = 0, /* kr_attention, kr_kv_cache_attention */
    KR_FEATURE_FUSED_ROPE = 1,      /* kr_rope; kr_kv_cache_append into f32/f16/bf16 */
    KR_FEATURE_KV_QUANTIZATION = 2, /* kr_kv_cache_append into an int8 cache */
    KR_FEATURE_COUNT_
} kr_feature;

/** "flash_attention", "fused_rope", "kv_quantization"; "?" otherwise. */
KR_API const char *kr_feature_name(kr_feature f);

/** Counters of one feature in one context since it was created. */
typedef struct kr_feature_counters {
    int64_t calls;         /* op calls that used this feature's op */
    int64_t accelerated;   /* of which a backend other than ref did the work */
    int64_t fallbacks;     /* accelerated attempts that failed and were re-run */
    char last_reason[256]; /* why the last fallback (or refusal) happened; "" if none */
} kr_feature_counters;

/** What one feature does in this context. */
typedef struct kr_feature_info {
    int32_t enabled;   /* switched on by configuration (globally) */
    int32_t available; /* some accelerated backend can serve it now */
    char backend[32];  /* the backend that serves it now ("ref" if none) */
    char reason[256];  /* why it is not accelerated, when it is not */
    kr_feature_counters counters;
} kr_feature_info;

KR_API kr_status kr_accel_feature_info(kr_context *ctx, kr_feature f, kr_feature_info *out);

/** Switches a feature for this context (the API level of the precedence). */
KR_API kr_status kr_accel_set_feature(kr_context *ctx, kr_feature f, int32_t enabled);

/**
 * Per-model switches: kr_accel_set_model_feature(ctx, "llama-3-8b",
 * KR_FEATURE_FLASH_ATTENTION, 0) disables flash attention while that model
 * is current, and leaves every other model as configured.
 * kr_context_set_model names the model whose calls follow (NULL = none).
 */
KR_API kr_status kr_accel_set_model_feature(kr_context *ctx, const char *model_id, kr_feature f,
                                            int32_t enabled);
KR_API kr_status kr_context_set_model(kr_context *ctx, const char *model_id);

/** One backend as the registry saw it. */
typedef struct kr_backend_info {
    char name[32];
    char version[32];
    int32_t available; /* probed usable (score > 0) and not refused */
    int32_t denied;    /* switched off by configuration */
    int32_t score;
    kr_device_type device_type;
    int32_t n_devices;
    char reason[512];                 /* why it is unavailable, or what it is */
    char path[512];                   /* where a plugin was loaded from ("" if built in) */
    int64_t calls[KR_FEATURE_COUNT_]; /* calls this backend served, per feature */
} kr_backend_info;

/** One device a backend drives. */
typedef struct kr_device_info {
    char name[128];
    int64_t memory_bytes;
    int32_t cc_major, cc_minor; /* CUDA compute capability; 0 for CPUs */
    int32_t multiprocessors;
    char driver_version[32];
    char runtime_version[32];
} kr_device_info;

/** Backends known to the context, in dispatch order (ref last), including
 *  refused plugins (so their reasons can be shown). */
KR_API int32_t kr_accel_backend_count(const kr_context *ctx);
KR_API kr_status kr_accel_backend_info(kr_context *ctx, int32_t i, kr_backend_info *out);
KR_API kr_status kr_accel_device_info(kr_context *ctx, int32_t backend, int32_t device,
                                      kr_device_info *out);

/** Whether acceleration is on at all, and why not when it is not. */
KR_API int32_t kr_accel_enabled(const kr_context *ctx, const char **reason);
/** The configuration file actually read ("" if none). */
KR_API const char *kr_accel_config_path(const kr_context *ctx);

#ifdef __cplusplus
}
#endif

#endif /* KRSERVE_ACCEL_H */
