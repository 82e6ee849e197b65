/*
 * ref_backend.c — the reference backend's function table: always present,
 * always usable, serves every case; the registry keeps it last.
 */
#include "ref.h"

#include <stdio.h>

static int ref_probe(char *reason, size_t n) {
    snprintf(reason, n, "portable C11 reference kernels");
    return 1;
}

static int ref_device_count(void) { return 1; }

static kr_status ref_device_info(int device, kr_device_info *out) {
    (void)device;
    kr_cpu_info cpu;
    kr_cpu_info_get(&cpu);
    snprintf(out->name, sizeof out->name, "%s", cpu.model);
    out->multiprocessors = cpu.logical_cpus;
    return KR_OK;
}

static bool ref_supports(kr_op op, const void *args, char *reason, size_t n) {
    (void)op;
    (void)args;
    (void)reason;
    (void)n;
    return true;
}

static const kr_backend ref_table = {
    .api_version = KR_BACKEND_API_VERSION,
    .name = "ref",
    .version = KR_VERSION_STRING,
    .device_type = KR_DEVICE_CPU,
    .probe = ref_probe,
    .device_count = ref_device_count,
    .device_info = ref_device_info,
    .supports = ref_supports,
    .attention = kr_ref_attention,
    .rope = kr_ref_rope,
    .kv_append = kr_ref_kv_append,
    .reference = true,
};

const kr_backend *kr_ref_backend(void) { return &ref_table; }
