/*
 * common.cuh — what the package's kernels share: element loads and stores
 * for every dtype through a strided kr_tensor, the per-sequence length
 * lookup, launch checking, and NaN-propagating reductions.
 */
#ifndef KR_CUDA_COMMON_CUH
#define KR_CUDA_COMMON_CUH

#include "kernels.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>

/* A [B][S][H][D] f16/bf16/i8 view (unit inner stride) as a 4-d TMA map {D,
 * S, H, B}, boxes of 128 bytes of channels x rows, 128-byte swizzle
 * (attention_hopper.cu);
 * false where the driver has no encoder or the strides do not fit a map. */
bool cu_tensor_map(CUtensorMap *map, const kr_tensor *t, int64_t B, int64_t S, int64_t H, int64_t D,
                   int rows);

__device__ __forceinline__ int64_t cu_off(const kr_tensor &t, int64_t i0, int64_t i1, int64_t i2,
                                          int64_t i3) {
    return i0 * t.stride[0] + i1 * t.stride[1] + i2 * t.stride[2] + i3 * t.stride[3];
}

__device__ __forceinline__ float cu_load(const void *p, int dt, int64_t off) {
    switch (dt) {
    case KR_F32: return ((const float *)p)[off];
    case KR_F16: return __half2float(((const __half *)p)[off]);
    case KR_BF16: return __bfloat162float(((const __nv_bfloat16 *)p)[off]);
    case KR_I8: return (float)((const int8_t *)p)[off];
    default: return 0.0f;
    }
}

__device__ __forceinline__ void cu_store(void *p, int dt, int64_t off, float x) {
    switch (dt) {
    case KR_F32: ((float *)p)[off] = x; break;
    case KR_F16: ((__half *)p)[off] = __float2half_rn(x); break;
    case KR_BF16: ((__nv_bfloat16 *)p)[off] = __float2bfloat16_rn(x); break;
    default: break;
    }
}

__device__ __forceinline__ int64_t cu_len(const kr_cu_lens &l, int64_t b) {
    return l.dev ? l.dev[b] : l.v[b];
}

/* The scale of group g of an int8 row (kv_cache.h), as the reference
 * computes it: f16 row scale times u8 / 255. */
__device__ __forceinline__ float cu_int8_group_scale(const uint8_t *meta, int64_t g) {
    const unsigned short h = (unsigned short)(meta[0] | (meta[1] << 8));
    return __fmul_rn(__half2float(__ushort_as_half(h)),
                     __fmul_rn((float)meta[2 + g], 1.0f / 255.0f));
}

/* max that lets a NaN through (fmaxf would drop it): one max.NaN (sm_80+). */
__device__ __forceinline__ float cu_nanmax(float a, float b) {
    float y;
    asm("max.NaN.f32 %0, %1, %2;\n" : "=f"(y) : "f"(a), "f"(b));
    return y;
}

/* The visible key range [lo, hi) of query row i (ops.h's rules). */
__device__ __forceinline__ void cu_row_range(const kr_cu_attention &a, int64_t L, int64_t i,
                                             int64_t *lo, int64_t *hi) {
    const int64_t p = L - a.Sq + i;
    int64_t l = 0, h = L;
    if (a.causal && p + 1 < h) h = p + 1;
    if (a.window_right >= 0 && p + a.window_right + 1 < h) h = p + a.window_right + 1;
    if (a.window_left >= 0 && p - a.window_left > l) l = p - a.window_left;
    if (h < l) h = l;
    *lo = l;
    *hi = h;
}

/* Rows of a 2-byte [B, S, H, D] tensor start 16-byte aligned and are
 * contiguous (what 16-byte cp.async copies of its rows need). */
static inline bool cu_rows_aligned16(const kr_tensor *t) {
    if ((uintptr_t)t->data % 16) return false;
    for (int i = 0; i < 3; i++)
        if (t->stride[i] % 8) return false;
    return t->stride[3] == 1;
}

/* Lets kernel fn take smem bytes of dynamic shared memory (past the 48 KiB
 * every kernel may use); a refusal becomes a status and a message. */
static inline kr_status cu_allow_smem(const void *fn, size_t smem, const char *what, char *err,
                                      size_t n) {
    if (smem <= 48 * 1024) return KR_OK;
    const cudaError_t e =
        cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e == cudaSuccess) return KR_OK;
    snprintf(err, n, "%s: %zu bytes of shared memory: %s", what, smem, cudaGetErrorString(e));
    return KR_ERR_BACKEND;
}

/* Blocks of kernel fn (threads each, smem bytes of dynamic shared memory)
 * one SM holds, after allowing it that memory; 1 when the runtime cannot say. */
static inline int cu_blocks_per_sm(const void *fn, int threads, size_t smem) {
    int n = 0;
    if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, fn, threads, smem) != cudaSuccess) {
        (void)cudaGetLastError();
        return 1;
    }
    return n < 1 ? 1 : n;
}

/* After a launch: a configuration error becomes a status and a message. */
static inline kr_status cu_launched(const char *what, char *err, size_t n) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return KR_OK;
    snprintf(err, n, "%s: launch failed: %s", what, cudaGetErrorString(e));
    return KR_ERR_BACKEND;
}

#endif /* KR_CUDA_COMMON_CUH */
