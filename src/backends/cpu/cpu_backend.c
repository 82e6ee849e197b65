/*
 * cpu_backend.c — the "cpu" backend's function table: probe (which SIMD
 * variant this CPU and this build can run, and why not), supports (the
 * cases the tiled kernels cover; the rest go to ref with the reason), and
 * the calls, forwarded to the chosen variant's kernels.
 */
#include "cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const kr_cpu_kernels *chosen;

#if !KR_CPU_HAVE_AVX2
const kr_cpu_kernels *kr_cpu_avx2_kernels(void) { return NULL; }
const kr_cpu_kernels *kr_cpu_avx512_kernels(bool int8_dot) {
    (void)int8_dot;
    return NULL;
}
#endif

static int cpu_probe(char *reason, size_t n) {
    chosen = NULL;
#if defined(__x86_64__)
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2"), fma = __builtin_cpu_supports("fma");
    /* F16C has no __builtin_cpu_supports name in every compiler: ask the CPU
     * info (libcpuid) the library already reads. */
    kr_cpu_info ci;
    kr_cpu_info_get(&ci);
    const bool f16c = ci.f16c > 0;
    const kr_cpu_kernels *avx2_kernels = kr_cpu_avx2_kernels();
    if (!avx2_kernels) {
        snprintf(reason, n, "this build has no AVX2 kernels");
        return 0;
    }
    if (!avx2 || !fma || !f16c) {
        snprintf(reason, n, "CPU lacks %s%s%s(the AVX2 kernels need AVX2, FMA and F16C)",
                 avx2 ? "" : "AVX2 ", fma ? "" : "FMA ", f16c ? "" : "F16C ");
        return 0;
    }
    chosen = avx2_kernels;
    /* AVX-512 (F, BW, VL) adds wider decode kernels; KRSERVE_CPU_ISA=avx2 keeps
     * the AVX2 ones (for comparisons on one machine) */
    const char *isa = getenv("KRSERVE_CPU_ISA");
    /* AVX512_VNNI adds integer dot products to the int8 decode (q and P
     * quantised per call: decode_vnni.c); KRSERVE_CPU_INT8_DOT=0 keeps the
     * float kernels on the same codes */
    const char *dot = getenv("KRSERVE_CPU_INT8_DOT");
    const bool int8_dot = __builtin_cpu_supports("avx512vnni") && !(dot && strcmp(dot, "0") == 0);
    if (!(isa && strcmp(isa, "avx2") == 0) && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        const kr_cpu_kernels *avx512_kernels = kr_cpu_avx512_kernels(int8_dot);
        if (avx512_kernels) chosen = avx512_kernels;
    }
    snprintf(reason, n,
             "%s kernels: tiled flash attention, decode over fp16/bf16/fp32/int8 caches, "
             "fused RoPE (+ quantise + append)",
             chosen->isa);
    return 50;
#else
    snprintf(reason, n, "no SIMD variant for this architecture yet (x86-64 AVX2 only)");
    return 0;
#endif
}

static int cpu_device_count(void) { return 1; }

/* The same CPU the reference runs on: ask it. */
static kr_status cpu_device_info(int device, kr_device_info *out) {
    return kr_ref_backend()->device_info(device, out);
}

static bool inner_contiguous(const kr_tensor *t) { return !t || t->stride[3] == 1; }

static bool cpu_supports(kr_op op, const void *args, char *reason, size_t n) {
    if (!chosen) {
        snprintf(reason, n, "no usable CPU SIMD variant");
        return false;
    }
    if (!args) return true; /* "in general": every op */
    switch (op) {
    case KR_OP_ATTENTION: {
        const kr_attention_args *a = args;
        if (a->D % 16 || a->D > KR_CPU_MAX_HEAD_DIM) {
            snprintf(reason, n,
                     "head_dim %lld not served by the cpu kernels (multiples of 16 up "
                     "to %d)",
                     (long long)a->D, KR_CPU_MAX_HEAD_DIM);
            return false;
        }
        if (!inner_contiguous(a->q) || !inner_contiguous(a->k) || !inner_contiguous(a->v) ||
            !inner_contiguous(a->out)) {
            snprintf(reason, n, "head_dim not contiguous (stride[3] != 1)");
            return false;
        }
        return true;
    }
    case KR_OP_ROPE: {
        const kr_rope_args *a = args;
        if (!inner_contiguous(a->x) || a->x->shape[3] > 1024) {
            snprintf(reason, n, "rope: head_dim not contiguous or above 1024");
            return false;
        }
        return true;
    }
    case KR_OP_KV_APPEND: {
        const kr_kv_append_args *a = args;
        const int64_t D = a->cache->o.head_dim;
        if (D % 16 || D > KR_CPU_MAX_HEAD_DIM || !inner_contiguous(a->k) ||
            !inner_contiguous(a->v)) {
            snprintf(reason, n,
                     "kv append: head_dim %lld not a multiple of 16 up to %d, or not "
                     "contiguous",
                     (long long)D, KR_CPU_MAX_HEAD_DIM);
            return false;
        }
        return true;
    }
    default: snprintf(reason, n, "unknown op"); return false;
    }
}

static kr_status cpu_attention(const kr_attention_args *a, char *err, size_t n) {
    return chosen->attention(a, err, n);
}
static kr_status cpu_rope(const kr_rope_args *a, char *err, size_t n) {
    return chosen->rope(a, err, n);
}
static kr_status cpu_kv_append(const kr_kv_append_args *a, char *err, size_t n) {
    return chosen->kv_append(a, err, n);
}

static const kr_backend cpu_table = {
    .api_version = KR_BACKEND_API_VERSION,
    .name = "cpu",
    .version = KR_VERSION_STRING,
    .device_type = KR_DEVICE_CPU,
    .probe = cpu_probe,
    .device_count = cpu_device_count,
    .device_info = cpu_device_info,
    .supports = cpu_supports,
    .attention = cpu_attention,
    .rope = cpu_rope,
    .kv_append = cpu_kv_append,
};

const kr_backend *kr_cpu_backend(void) { return &cpu_table; }
