/*
 * cpu.h — the CPU SIMD backend's shared declarations. The backend table
 * (cpu_backend.c) picks one instruction-set variant at probe time; each
 * variant lives in its own sub-folder (x86_avx2/ today; x86_avx512/ and
 * arm_neon/ would sit beside it) and fills a kr_cpu_kernels table, so the
 * dispatch never changes when a variant is added.
 *
 * Every variant serves the same cases (cpu_backend.c's supports() decides,
 * once, for all of them) and must agree with the reference backend within
 * the conformance tolerances.
 */
#ifndef KR_BACKENDS_CPU_H
#define KR_BACKENDS_CPU_H

#include "../../core/backend.h"

typedef struct kr_cpu_kernels {
    const char *isa; /* "avx2+fma+f16c" */
    kr_status (*attention)(const kr_attention_args *a, char *err, size_t err_len);
    kr_status (*rope)(const kr_rope_args *a, char *err, size_t err_len);
    kr_status (*kv_append)(const kr_kv_append_args *a, char *err, size_t err_len);
} kr_cpu_kernels;

/* The AVX2 + FMA + F16C variant (x86_avx2/), or NULL when the build has no
 * such variant (not x86-64). Call only when the CPU has the features. */
const kr_cpu_kernels *kr_cpu_avx2_kernels(void);

/* Largest head_dim the tiled kernels hold in their scratch tiles. */
#define KR_CPU_MAX_HEAD_DIM 256

#endif /* KR_BACKENDS_CPU_H */
