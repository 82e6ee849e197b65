/*
 * cpuinfo.c — CPU model and SIMD features for `krserve info` and for
 * choosing CPU kernels, read with libcpuid on x86 (no hand-written cpuid),
 * and the build description.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if KR_HAVE_CPUID
#include <libcpuid/libcpuid.h>
#endif

kr_status kr_cpu_info_get(kr_cpu_info *out) {
    if (!out) return KR_ERR_INVALID_ARGUMENT;
    memset(out, 0, sizeof *out);
    out->avx2 = out->fma = out->f16c = out->avx512f = out->avx512bw = out->avx512_vnni = -1;
    out->amx = out->neon = -1;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    out->logical_cpus = online > 0 ? (int32_t)online : 1;
    out->cores = -1;
#if KR_HAVE_CPUID
    struct cpu_raw_data_t raw;
    struct cpu_id_t id;
    if (!cpuid_present() || cpuid_get_raw_data(&raw) != 0 || cpu_identify(&raw, &id) != 0) {
        snprintf(out->detail, sizeof out->detail, "libcpuid failed: %s", cpuid_error());
        snprintf(out->model, sizeof out->model, "unknown");
        return KR_OK;
    }
    snprintf(out->model, sizeof out->model, "%s", id.brand_str);
    for (size_t n = strlen(out->model); n > 0 && out->model[n - 1] == ' '; n--)
        out->model[n - 1] = '\0';
    snprintf(out->vendor, sizeof out->vendor, "%s", id.vendor_str);
    out->cores = id.num_cores;
    out->avx2 = id.flags[CPU_FEATURE_AVX2] ? 1 : 0;
    out->fma = id.flags[CPU_FEATURE_FMA3] ? 1 : 0;
    out->f16c = id.flags[CPU_FEATURE_F16C] ? 1 : 0;
    out->avx512f = id.flags[CPU_FEATURE_AVX512F] ? 1 : 0;
    out->avx512bw = id.flags[CPU_FEATURE_AVX512BW] ? 1 : 0;
    out->avx512_vnni = id.flags[CPU_FEATURE_AVX512VNNI] ? 1 : 0;
    out->amx = -1; /* libcpuid 0.6 has no AMX flag */
    out->neon = 0;
    snprintf(out->detail, sizeof out->detail, "libcpuid %s", cpuid_lib_version());
#if defined(__x86_64__) || defined(__i386__)
    /* On the development VM (AMD EPYC, Zen 5) libcpuid 0.6 reports no
     * AVX-512 while the CPU runs it; the compiler's runtime check, which the
     * CPU backend's dispatch uses, sees it. Report what the dispatch sees. */
    __builtin_cpu_init();
    const int f = __builtin_cpu_supports("avx512f") != 0,
              bw = __builtin_cpu_supports("avx512bw") != 0,
              vnni = __builtin_cpu_supports("avx512vnni") != 0;
    if ((f && !out->avx512f) || (bw && !out->avx512bw) || (vnni && !out->avx512_vnni)) {
        out->avx512f |= f;
        out->avx512bw |= bw;
        out->avx512_vnni |= vnni;
        snprintf(out->detail, sizeof out->detail,
                 "libcpuid %s; AVX-512 flags from the compiler's runtime check",
                 cpuid_lib_version());
    }
#endif
#else
    snprintf(out->model, sizeof out->model, "unknown");
    snprintf(out->detail, sizeof out->detail, "no CPU feature library for this architecture");
#endif
    return KR_OK;
}

const char *kr_build_info(void) {
    return "compiler " KR_COMPILER ", build " KR_BUILD_TYPE ", CUDA package "
#if KR_HAVE_CUDA
           "built (libkrserve-cuda.so)"
#else
           "not built (no nvcc)"
#endif
        ;
}
