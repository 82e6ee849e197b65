/*
 * kernels.h — the CUDA package's launchers, in plain C: the host side
 * (cuda_backend.c) fills these structs from the validated op arguments and
 * the .cu files launch on the given stream. Every launcher returns a
 * kr_status and writes a message into err; nothing exits.
 *
 * Small per-sequence arrays (kv lengths, n_new) travel inside the kernel
 * parameters when there are at most KR_CU_INLINE of them, else through a
 * device copy (kr_cu_lens.dev).
 */
#ifndef KR_CUDA_KERNELS_H
#define KR_CUDA_KERNELS_H

#include "krserve/krserve.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KR_CU_INLINE 64
/* Query rows (heads of one GQA group x Sq) one decode block carries. */
#define KR_CU_DECODE_ROWS 8
/* Warps of one decode block. */
#define KR_CU_DECODE_WARPS 4

typedef struct kr_cu_lens {
    const int32_t *dev; /* device array, or NULL: use v */
    int32_t v[KR_CU_INLINE];
} kr_cu_lens;

/* int8 cache storage of one layer, K or V (kv_cache.h draws it). */
typedef struct kr_cu_int8 {
    const int8_t *data;
    const uint8_t *meta;
    const float *chan;
    int64_t capacity;
} kr_cu_int8;

typedef struct kr_cu_attention {
    kr_tensor q, k, v, out; /* k, v unused when int8 is set */
    kr_cu_int8 k8, v8;
    bool int8;
    bool has_mask, has_lse, has_lens;
    kr_tensor mask, lse;
    kr_cu_lens lens; /* when has_lens; else every sequence has Skv keys */
    int64_t B, Sq, Skv, H, Hkv, D;
    float scale;
    bool causal;
    int64_t window_left, window_right;
    int cc; /* the device's compute capability, 10 major + minor; 0: take the sm_80 kernels */
} kr_cu_attention;

/* The split-K decode kernel's scratch: partial outputs and LSEs per split,
 * and one arrival counter per (sequence, kv head, row chunk), kept zero
 * between calls (the last block to arrive resets it). */
typedef struct kr_cu_decode_ws {
    float *part_o;      /* [units][splits][ROWS][D] */
    float *part_lse;    /* [units][splits][ROWS] */
    uint32_t *counters; /* [units] */
} kr_cu_decode_ws;

/* Decode (Sq <= 16) over f16 / bf16 tensors or an int8 cache: blocks of
 * (split, kv head x row chunk, sequence). */
int kr_cu_decode_supported(const kr_cu_attention *a, char *why, size_t n);
/* How many splits along kv_len, and how much scratch they need. */
int64_t kr_cu_decode_splits(const kr_cu_attention *a, int n_sm);
size_t kr_cu_decode_ws_bytes(const kr_cu_attention *a, int64_t splits, size_t *counter_bytes);
kr_status kr_cu_decode(const kr_cu_attention *a, int64_t splits, const kr_cu_decode_ws *ws,
                       void *stream, char *err, size_t n);

/* Prefill / chunked prefill (any Sq) over f16 / bf16 K/V on tensor cores:
 * blocks of (row block, head, sequence x split). With splits > 1 (a grid too
 * small to fill the GPU) each split of the keys writes its rows' partial
 * output and LSE into the scratch and a second kernel merges them. */
#define KR_CU_PREFILL_MAX_SPLITS 16
typedef struct kr_cu_prefill_ws {
    int splits;
    float *part_o;   /* [splits][B][H][Sq][D] */
    float *part_lse; /* [splits][B][H][Sq], log2 domain */
    int hopper;      /* the Hopper kernel runs this call (kr_cu_prefill_splits decides) */
    /* The Hopper kernel's work counter: one device uint32 that is 0 between
     * calls (the kernel's last fetch puts it back), so its persistent blocks
     * take items as they free up; NULL: one block per item. */
    uint32_t *sched;
} kr_cu_prefill_ws;

int kr_cu_prefill_supported(const kr_cu_attention *a, char *why, size_t n);
/* The splits for this call, and which kernel runs it (*hopper: 1 for the
 * Hopper kernel, which takes only calls it would not split; its split path
 * is not exercised yet, so calls too small to fill the GPU keep the sm_80
 * kernel and its tested split-KV). */
int64_t kr_cu_prefill_splits(const kr_cu_attention *a, int n_sm, int *hopper);
size_t kr_cu_prefill_ws_bytes(const kr_cu_attention *a, int64_t splits);
kr_status kr_cu_prefill(const kr_cu_attention *a, const kr_cu_prefill_ws *ws, void *stream,
                        char *err, size_t n);

/* The Hopper prefill kernel (attention_hopper.cu, sm_90a: wgmma, TMA, a
 * producer warpgroup and two consumers), which kr_cu_prefill_splits picks on
 * compute capability 9.0 for every case it supports and would not split;
 * the others stay on the sm_80 kernel (why: the reason). */
int kr_cu_hopper_supported(const kr_cu_attention *a, char *why, size_t n);
int64_t kr_cu_hopper_splits(const kr_cu_attention *a, int n_sm);
kr_status kr_cu_hopper_prefill(const kr_cu_attention *a, const kr_cu_prefill_ws *ws, void *stream,
                               char *err, size_t n);
/* Prefill calls served by each kernel since the plugin was loaded:
 * [0] sm_80 (mma.sync), [1] Hopper (wgmma). */
void kr_cu_prefill_counts(int64_t counts[2]);

/* The int8 cache for the Hopper kernel: bytes of the f16/bf16 staging
 * buffers (0 when the call cannot be staged: not int8, head_dim not a
 * multiple of 16, q not f16/bf16), the f16/bf16 view of a call over a
 * buffer of that size, and the dequantisation into it. */
size_t kr_cu_int8_stage_bytes(const kr_cu_attention *a);
void kr_cu_int8_stage_view(const kr_cu_attention *a, void *buf, kr_cu_attention *out);
kr_status kr_cu_int8_stage(const kr_cu_attention *a, const kr_cu_attention *view, void *stream,
                           char *err, size_t n);

/* The unfused path: one block per (query row, head, sequence), keys in
 * chunks with an online softmax. Serves every case, slowly. */
kr_status kr_cu_attention_unfused(const kr_cu_attention *a, void *stream, char *err, size_t n);

/* RoPE in place. positions: device, B*S values. inv_freq: device, half. */
typedef struct kr_cu_rope {
    kr_tensor x;
    const int64_t *positions;
    const double *inv_freq;
    int64_t half; /* rotary_dim / 2 */
    kr_rope_layout layout;
    double attention_factor;
} kr_cu_rope;

kr_status kr_cu_rope_run(const kr_cu_rope *r, bool vector_path, void *stream, char *err, size_t n);

/* RoPE (optional) + conversion or int8 quantisation + store into a cache
 * layer, one pass. With positions NULL, token t of sequence b sits at
 * len[b] + t. */
typedef struct kr_cu_append {
    kr_tensor k, v; /* [B, S, Hkv, D] */
    void *k_dst, *v_dst;
    uint8_t *k_meta, *v_meta; /* int8 */
    float *k_chan, *v_chan;   /* int8 */
    kr_dtype dtype;           /* storage */
    int64_t B, S, Hkv, D, capacity;
    kr_cu_lens len, n_new;
    const int64_t *positions; /* device, or NULL */
    const double *inv_freq;   /* device, or NULL: no RoPE */
    int64_t half;
    kr_rope_layout layout;
    double attention_factor;
    bool vec; /* D % 4 == 0 and half % 4 == 0: the staged rows are read 4 channels at a time */
    /* int8: bit h set when every channel factor of K (V) head h < 64 is 1
     * (then no division is needed); 0 bits mean "check the factors" */
    uint64_t k_ones, v_ones;
} kr_cu_append;

/* Per-channel amax of the rows an append brings (K after RoPE): amax_k and
 * amax_v are [Hkv][D] floats, zeroed here first. */
kr_status kr_cu_append_amax(const kr_cu_append *a, float *amax_k, float *amax_v, void *stream,
                            char *err, size_t n);
kr_status kr_cu_append_run(const kr_cu_append *a, void *stream, char *err, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* KR_CUDA_KERNELS_H */
