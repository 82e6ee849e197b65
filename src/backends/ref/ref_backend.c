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
    KR_BACKEND_API_VERSION, "ref",           KR_VERSION_STRING, KR_DEVICE_CPU,    ref_probe,
    ref_device_count,       ref_device_info, ref_supports,      kr_ref_attention, kr_ref_rope,
    kr_ref_kv_append,
};

const kr_backend *kr_ref_backend(void) { return &ref_table; }
