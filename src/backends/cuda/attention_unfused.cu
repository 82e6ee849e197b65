/*
 * attention_unfused.cu — the in-device fallback: simple, general, slow.
 * One block per (query row i, head h, sequence b). Keys go by in chunks of
 * UF_THREADS: each thread scores one key (a plain dot product over strided
 * loads of any dtype, or an int8 cache row dequantised), then the block
 * updates an online softmax and every thread accumulates its channels of
 * p * V over the chunk. Masks, windows, LSE, ragged lengths, any strides.
 * This is the GPU twin of ref_attention.c, not a fast kernel.
 */
#include "common.cuh"

#define UF_THREADS 128
#define UF_MAX_CH 4 /* channels per thread: head_dim <= 512 */

__device__ __forceinline__ float uf_kv(const kr_cu_attention &a, int which, int64_t b, int64_t j,
                                       int64_t hk, int64_t c) {
    if (a.int8) {
        const kr_cu_int8 &s = which ? a.v8 : a.k8;
        const int64_t r = (b * s.capacity + j) * a.Hkv + hk;
        const uint8_t *meta = s.meta + r * KR_KV_INT8_META_BYTES(a.D);
        return (float)s.data[r * a.D + c] * cu_int8_group_scale(meta, c / KR_KV_INT8_GROUP) *
               s.chan[hk * a.D + c];
    }
    const kr_tensor &t = which ? a.v : a.k;
    return cu_load(t.data, t.dtype, cu_off(t, b, j, hk, c));
}

__device__ float uf_block_reduce(float x, bool is_max, float *red) {
    for (int o = 16; o > 0; o >>= 1) {
        const float y = __shfl_xor_sync(0xffffffffu, x, o);
        x = is_max ? cu_nanmax(x, y) : x + y;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) red[warp] = x;
    __syncthreads();
    x = red[0];
    for (int w = 1; w < UF_THREADS / 32; w++) x = is_max ? cu_nanmax(x, red[w]) : x + red[w];
    return x;
}

__global__ void __launch_bounds__(UF_THREADS) uf_kernel(kr_cu_attention a) {
    extern __shared__ float sh[]; /* q[D], p[UF_THREADS], red[warps] */
    float *qs = sh, *ps = sh + a.D, *red = ps + UF_THREADS;
    const int64_t i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int64_t hk = h / (a.H / a.Hkv);
    const int tid = threadIdx.x;
    const int64_t L = a.has_lens ? cu_len(a.lens, b) : a.Skv;
    int64_t lo, hi;
    cu_row_range(a, L, i, &lo, &hi);
    for (int64_t c = tid; c < a.D; c += UF_THREADS)
        qs[c] = cu_load(a.q.data, a.q.dtype, cu_off(a.q, b, i, h, c));
    __syncthreads();

    float m = -INFINITY, l = 0.0f, acc[UF_MAX_CH];
    for (int k = 0; k < UF_MAX_CH; k++) acc[k] = 0.0f;
    bool nan_seen = false;
    for (int64_t j0 = lo; j0 < hi; j0 += UF_THREADS) {
        /* Score one key per thread. */
        const int64_t j = j0 + tid;
        float s = -INFINITY;
        if (j < hi) {
            float dot = 0.0f;
            for (int64_t c = 0; c < a.D; c++) dot += qs[c] * uf_kv(a, 0, b, j, hk, c);
            s = dot * a.scale;
            if (a.has_mask) {
                const int64_t mb = a.mask.shape[0] == 1 ? 0 : b, mh = a.mask.shape[1] == 1 ? 0 : h;
                s += ((const float *)a.mask.data)[cu_off(a.mask, mb, mh, i, j)];
            }
        }
        nan_seen |= s != s;
        /* Online softmax over the chunk. */
        const float cm = uf_block_reduce(s, true, red);
        const float m_new = cu_nanmax(m, cm);
        const float alpha = m_new == -INFINITY ? 1.0f : expf(m - m_new);
        const float p = m_new == -INFINITY ? 0.0f : expf(s - m_new);
        ps[tid] = p;
        const float psum = uf_block_reduce(p, false, red);
        l = l * alpha + psum;
        m = m_new;
        const int64_t n = hi - j0 < UF_THREADS ? hi - j0 : UF_THREADS;
        for (int k = 0; k < UF_MAX_CH; k++) {
            const int64_t c = tid + (int64_t)k * UF_THREADS;
            if (c >= a.D) break;
            float v = acc[k] * alpha;
            for (int64_t jj = 0; jj < n; jj++) v += ps[jj] * uf_kv(a, 1, b, j0 + jj, hk, c);
            acc[k] = v;
        }
        __syncthreads(); /* ps is rewritten by the next chunk */
    }
    nan_seen = __syncthreads_or(nan_seen);
    const bool empty = m == -INFINITY && !nan_seen;
    for (int k = 0; k < UF_MAX_CH; k++) {
        const int64_t c = tid + (int64_t)k * UF_THREADS;
        if (c >= a.D) break;
        cu_store(a.out.data, a.out.dtype, cu_off(a.out, b, i, h, c), empty ? 0.0f : acc[k] / l);
    }
    if (a.has_lse && tid == 0)
        ((float *)a.lse.data)[cu_off(a.lse, b, h, i, 0)] = empty ? -INFINITY : m + logf(l);
}

extern "C" kr_status kr_cu_attention_unfused(const kr_cu_attention *a, void *stream, char *err,
                                             size_t n) {
    if (a->D > UF_THREADS * UF_MAX_CH) {
        snprintf(err, n, "unfused attention: head_dim %lld > %d", (long long)a->D,
                 UF_THREADS * UF_MAX_CH);
        return KR_ERR_UNSUPPORTED;
    }
    if (a->Sq > 0x7fffffff || a->H > 65535 || a->B > 65535) {
        snprintf(err, n, "unfused attention: grid (Sq %lld, H %lld, B %lld) too large",
                 (long long)a->Sq, (long long)a->H, (long long)a->B);
        return KR_ERR_UNSUPPORTED;
    }
    const size_t smem = sizeof(float) * (size_t)(a->D + UF_THREADS + UF_THREADS / 32);
    dim3 grid((unsigned)a->Sq, (unsigned)a->H, (unsigned)a->B);
    uf_kernel<<<grid, UF_THREADS, smem, (cudaStream_t)stream>>>(*a);
    return cu_launched("unfused attention", err, n);
}
