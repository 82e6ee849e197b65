/*
 * cuda_backend.c — the CUDA acceleration package's entry point
 * (libkrserve-cuda.so): the backend table, the probe (driver, devices,
 * compute capability) and device descriptions. Every CUDA error becomes a
 * reason or a kr_status, never an exit. The kernels (fused RoPE + append,
 * split-K decode, tensor-core prefill) plug into this table; until they
 * land, supports() declines every op with that reason, so calls stay on
 * the next backend and the counters say why.
 */
#include "../../core/backend.h"

#include <cuda_runtime_api.h>
#include <stdio.h>

#define KR_CUDA_MIN_MAJOR 8

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
    snprintf(reason, n, "%d device(s); device 0: %s, compute capability %d.%d", count, p.name,
             p.major, p.minor);
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

static bool cuda_supports(kr_op op, const void *args, char *reason, size_t n) {
    (void)op;
    (void)args;
    snprintf(reason, n, "the CUDA package has no kernels in this build yet");
    return false;
}

static kr_status cuda_attention(const kr_attention_args *a, char *err, size_t n) {
    (void)a;
    snprintf(err, n, "cuda attention not built");
    return KR_ERR_UNSUPPORTED;
}

static kr_status cuda_rope(const kr_rope_args *a, char *err, size_t n) {
    (void)a;
    snprintf(err, n, "cuda rope not built");
    return KR_ERR_UNSUPPORTED;
}

static kr_status cuda_kv_append(const kr_kv_append_args *a, char *err, size_t n) {
    (void)a;
    snprintf(err, n, "cuda kv append not built");
    return KR_ERR_UNSUPPORTED;
}

static const kr_backend cuda_table = {
    KR_BACKEND_API_VERSION, "cuda",           KR_VERSION_STRING, KR_DEVICE_CUDA, cuda_probe,
    cuda_device_count,      cuda_device_info, cuda_supports,     cuda_attention, cuda_rope,
    cuda_kv_append,
};

__attribute__((visibility("default"))) const kr_backend *krserve_backend_entry(void);
const kr_backend *krserve_backend_entry(void) { return &cuda_table; }
