/*
 * krserve.h — the public C API of krserve, an LLM inference core.
 *
 * This header is the contract. It defines: the status codes and their strings,
 * version macros, the context handle, tensor views, the attention and RoPE
 * operations, and the KV cache. Everything the library exports is declared
 * here (or in the headers it includes); everything else is hidden.
 *
 * Conventions:
 *   - Every fallible call returns kr_status; KR_OK is 0. On failure the
 *     context's detail message (kr_context_last_error) says what was wrong and
 *     nothing has been written to any output.
 *   - Every extent, offset and stride is int64_t. Strides are in elements.
 *   - create/free pairs; free(NULL) is a no-op.
 *   - The library never calls exit() or abort().
 */
#ifndef KRSERVE_KRSERVE_H
#define KRSERVE_KRSERVE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- export macro ------------------------------------------------------ */
#if defined(KR_STATIC)
#define KR_API
#elif defined(_WIN32)
#ifdef KR_BUILDING
#define KR_API __declspec(dllexport)
#else
#define KR_API __declspec(dllimport)
#endif
#else
#define KR_API __attribute__((visibility("default")))
#endif

/* ---- version ----------------------------------------------------------- */
#define KR_VERSION_MAJOR 0
#define KR_VERSION_MINOR 1
#define KR_VERSION_PATCH 0
#define KR_VERSION_NUMBER (KR_VERSION_MAJOR * 10000 + KR_VERSION_MINOR * 100 + KR_VERSION_PATCH)
#define KR_VERSION_STRING "0.1.0"

/** Run-time version: "MAJOR.MINOR.PATCH". Compare with KR_VERSION_STRING to
 *  detect a header/library mismatch. */
KR_API const char *kr_version(void);
/** Run-time version as KR_VERSION_NUMBER. */
KR_API int kr_version_number(void);

/* ---- status ------------------------------------------------------------ */
/* One list generates the enum and its strings (kr_status_string). New values
 * are only ever added at the end. */
#define KR_STATUS_LIST(X)                                                                          \
    X(KR_OK, "ok")                                                                                 \
    X(KR_ERR_INVALID_ARGUMENT, "invalid argument")                                                 \
    X(KR_ERR_SHAPE, "shape mismatch")                                                              \
    X(KR_ERR_DTYPE, "unsupported or mismatched dtype")                                             \
    X(KR_ERR_DEVICE, "unsupported device")                                                         \
    X(KR_ERR_UNSUPPORTED, "unsupported case")                                                      \
    X(KR_ERR_CAPACITY, "capacity exceeded")                                                        \
    X(KR_ERR_OUT_OF_MEMORY, "out of memory")                                                       \
    X(KR_ERR_IO, "input/output error")                                                             \
    X(KR_ERR_FORMAT, "malformed file")                                                             \
    X(KR_ERR_CONFIG, "invalid configuration")                                                      \
    X(KR_ERR_BACKEND, "backend failure")                                                           \
    X(KR_ERR_FAULT_INJECTED, "injected fault")                                                     \
    X(KR_ERR_INTERNAL, "internal error")

#define KR_STATUS_ENUM_(name, str) name,
typedef enum kr_status { KR_STATUS_LIST(KR_STATUS_ENUM_) KR_STATUS_COUNT_ } kr_status;
#undef KR_STATUS_ENUM_

/** A short constant string for a status ("shape mismatch"); never NULL. */
KR_API const char *kr_status_string(kr_status s);
/** The enum's name for a status ("KR_ERR_SHAPE"); never NULL. */
KR_API const char *kr_status_name(kr_status s);

/* ---- context ----------------------------------------------------------- */
typedef enum kr_log_level {
    KR_LOG_DEBUG = 0,
    KR_LOG_INFO = 1,
    KR_LOG_WARN = 2,
    KR_LOG_ERROR = 3,
    KR_LOG_OFF = 4
} kr_log_level;

/** An embedder's log sink; msg has no trailing newline. */
typedef void (*kr_log_fn)(void *user, kr_log_level level, const char *msg);

/** "Not set here": the next level of the precedence decides. */
#define KR_UNSET (-1)

/** Options for kr_context_create. Start from kr_context_options_default()
 *  (every switch KR_UNSET), then set what you need. Settings here override
 *  the environment and the configuration file (accel.h). */
typedef struct kr_context_options {
    int32_t n_threads;       /* worker threads for CPU kernels; 0 = all online cores */
    kr_log_level log_level;  /* messages below this level are dropped; default WARN */
    const char *config_path; /* YAML file; NULL = KRSERVE_CONFIG, then ./krserve.yaml */
    kr_log_fn log_fn;        /* NULL = stderr */
    void *log_user;
    /* acceleration switches: 1, 0 or KR_UNSET */
    int32_t acceleration;          /* acceleration.enabled */
    int32_t fallback_to_reference; /* acceleration.fallback_to_reference */
    int32_t prefer_reference;      /* acceleration.prefer_reference */
    int32_t features[3];           /* acceleration.features, indexed by kr_feature */
    const char *plugin_path;       /* acceleration.plugin_path (file or directory) */
    const char *backends;          /* acceleration.backends.order, comma-separated */
    const char *deny_backends;     /* acceleration.backends.deny, comma-separated */
} kr_context_options;

typedef struct kr_context kr_context;

KR_API kr_context_options kr_context_options_default(void);
/** Creates a context. `opts` may be NULL (defaults). On failure *out is NULL;
 *  if `err` is not NULL, a message is written there (up to err_len bytes). */
KR_API kr_status kr_context_create(const kr_context_options *opts, kr_context **out, char *err,
                                   size_t err_len);
/** Frees a context; kr_context_free(NULL) is a no-op. */
KR_API void kr_context_free(kr_context *ctx);
/** The detail message of the last failed call on this context ("" if none). */
KR_API const char *kr_context_last_error(const kr_context *ctx);
/** Number of worker threads the context uses. */
KR_API int32_t kr_context_threads(const kr_context *ctx);

/* ---- tensors ----------------------------------------------------------- */
typedef enum kr_dtype { KR_F32 = 0, KR_F16 = 1, KR_BF16 = 2, KR_I8 = 3, KR_DTYPE_COUNT_ } kr_dtype;

typedef enum kr_device_type { KR_DEVICE_CPU = 0, KR_DEVICE_CUDA = 1 } kr_device_type;
typedef struct kr_device {
    kr_device_type type;
    int32_t index; /* 0 for the CPU; the CUDA ordinal otherwise */
} kr_device;

/**
 * A strided 4-D view of memory the caller owns. Dimensions are logical; the
 * strides (in elements, all int64_t) say where they live in memory, so the
 * same [batch, seq, heads, head_dim] view can describe either layout:
 *
 *   BSHD memory:  stride = { S*H*D, H*D, D, 1 }   (kr_tensor_bshd)
 *   BHSD memory:  stride = { H*S*D, D, S*D, 1 }   (kr_tensor_bhsd)
 *
 * Unused trailing dimensions have extent 1.
 */
typedef struct kr_tensor {
    void *data;
    kr_dtype dtype;
    kr_device device;
    int64_t shape[4];
    int64_t stride[4];
} kr_tensor;

/** Bytes per element of a dtype (0 for an invalid dtype). */
KR_API size_t kr_dtype_size(kr_dtype dt);
/** "f32", "f16", "bf16", "i8"; "?" for an invalid value. */
KR_API const char *kr_dtype_name(kr_dtype dt);
/** A contiguous [b, s, h, d] view of BSHD memory on the CPU. */
KR_API kr_tensor kr_tensor_bshd(void *data, kr_dtype dt, int64_t b, int64_t s, int64_t h,
                                int64_t d);
/** A [b, s, h, d] view of memory laid out as [b, h, s, d] (BHSD), on the CPU. */
KR_API kr_tensor kr_tensor_bhsd(void *data, kr_dtype dt, int64_t b, int64_t s, int64_t h,
                                int64_t d);
/** A contiguous row-major view with the given 4 extents, on the CPU. */
KR_API kr_tensor kr_tensor_contiguous(void *data, kr_dtype dt, int64_t d0, int64_t d1, int64_t d2,
                                      int64_t d3);

/* Scalar conversions used by every backend (round to nearest even). */
KR_API float kr_f16_to_f32(uint16_t h);
KR_API uint16_t kr_f32_to_f16(float f);
KR_API float kr_bf16_to_f32(uint16_t h);
KR_API uint16_t kr_f32_to_bf16(float f);

/* ---- system information -------------------------------------------------- */

/** What the CPU offers, as detected at run time (libcpuid on x86). A field
 *  is 1 when present, 0 when absent, -1 when this build cannot tell. */
typedef struct kr_cpu_info {
    char model[128];
    char vendor[32];
    int32_t cores;        /* physical cores of one package (as reported) */
    int32_t logical_cpus; /* online logical processors */
    int32_t avx2, fma, f16c, avx512f, avx512bw, avx512_vnni, amx, neon;
    char detail[128]; /* how it was detected, or why it could not be */
} kr_cpu_info;

/** Fills *out; never fails on a supported OS (fields it cannot read are -1). */
KR_API kr_status kr_cpu_info_get(kr_cpu_info *out);

/** How this library was built: compiler, build type, options, backends. */
KR_API const char *kr_build_info(void);

#ifdef __cplusplus
}
#endif

#include "krserve/device.h"
#include "krserve/ops.h"
#include "krserve/kv_cache.h"
#include "krserve/accel.h"
#include "krserve/model.h"

#endif /* KRSERVE_KRSERVE_H */
