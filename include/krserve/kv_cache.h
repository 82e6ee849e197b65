/*
 * kv_cache.h — the KV cache: per-layer K/V storage with a fixed capacity,
 * appended to token by token (optionally rotating K with RoPE on the way in)
 * and read by attention directly, whatever the storage dtype.
 * Included by krserve.h.
 *
 * Storage, per layer, for K and for V alike:
 *
 *   f32 / f16 / bf16:  data[B][capacity][Hkv][D]
 *
 *   int8:              data[B][capacity][Hkv][D]     int8, symmetric, in [-127, 127]
 *                      meta[B][capacity][Hkv][M]     M = 2 + ceil(D / 32) bytes:
 *                                                    f16 row scale, then one u8 per group
 *                      chan[Hkv][D]                  f32, outlier-channel factors
 *
 *     group g = channels [32g, 32g + 32);  s_g = row_scale * u8[g] / 255
 *     value(b, t, h, c) = data[b][t][h][c] * s_{c / 32} * chan[h][c]
 *
 *   One row, head_dim 128:
 *     | 128 x int8 ..................................... | f16 row | u8 u8 u8 u8 |
 *     134 bytes against 256 for f16 (52.3 %).
 *
 * The two-level scale lets each 32-channel group use the full int8 range
 * (its own max, not the row's) for 6 bytes instead of 16 for f32 per-group
 * scales.
 *
 * `chan` is fixed by the first append to a layer after create/reset: 1 for
 * ordinary channels, and amax(channel) / median(amax) for channels whose
 * magnitude stands out (the outlier channels LLM keys are known for), so the
 * per-token scale is not dictated by a few large channels. With RoPE applied
 * on append, both channels of a rotated pair share one factor.
 */
#ifndef KRSERVE_KV_CACHE_H
#define KRSERVE_KV_CACHE_H

#ifdef __cplusplus
extern "C" {
#endif

/** Channels per int8 scale group; the row metadata is 2 + ceil(D / 32) bytes
 *  (pinned by static assertions in the library). */
#define KR_KV_INT8_GROUP 32
#define KR_KV_INT8_META_BYTES(head_dim) (2 + ((head_dim) + KR_KV_INT8_GROUP - 1) / KR_KV_INT8_GROUP)

typedef struct kr_kv_cache kr_kv_cache;

typedef struct kr_kv_cache_options {
    int64_t n_layers;
    int64_t batch;    /* sequences */
    int64_t capacity; /* tokens per sequence */
    int64_t n_kv_heads;
    int64_t head_dim;
    kr_dtype dtype; /* storage: KR_F32, KR_F16, KR_BF16 or KR_I8 */
    kr_device device;
} kr_kv_cache_options;

/** Allocates an empty cache (every sequence length 0). */
KR_API kr_status kr_kv_cache_create(kr_context *ctx, const kr_kv_cache_options *opts,
                                    kr_kv_cache **out);
/** Frees a cache; kr_kv_cache_free(NULL) is a no-op. */
KR_API void kr_kv_cache_free(kr_kv_cache *cache);
/** Empties every sequence of every layer (and the int8 channel factors). */
KR_API kr_status kr_kv_cache_reset(kr_context *ctx, kr_kv_cache *cache);

/**
 * Appends new tokens to `layer`, after each sequence's current length.
 *   k, v       [B, S, Hkv, D], f32 | f16 | bf16 (same dtype)
 *   n_new      [B] tokens to take from each sequence's S rows (ragged), or NULL = S
 *   positions  [B*S] absolute positions for RoPE, or NULL = current length + i
 *   rope       RoPE to apply to K before storing, or NULL for none
 * Fails with KR_ERR_CAPACITY, writing nothing, if any sequence would overflow.
 */
KR_API kr_status kr_kv_cache_append(kr_context *ctx, kr_kv_cache *cache, int64_t layer,
                                    const kr_tensor *k, const kr_tensor *v, const int64_t *n_new,
                                    const int64_t *positions, const kr_rope_params *rope);

/**
 * Attention of q over the cached K/V of `layer`:
 *   q [B, Sq, H, D], out [B, Sq, H, D]; H % Hkv == 0.
 * kv lengths are the cache's; params->kv_lens must be NULL. A mask's last
 * extent must be at least the longest sequence. Sq == 1 is decode; Sq > 1 is
 * chunked prefill (causal aligned bottom-right: the chunk is the newest Sq).
 */
KR_API kr_status kr_kv_cache_attention(kr_context *ctx, const kr_kv_cache *cache, int64_t layer,
                                       const kr_tensor *q, kr_tensor *out,
                                       const kr_attention_params *params);

/**
 * Copies tokens [start, start + n) of sequence b of `layer` out as f32,
 * dequantised: k_out and v_out are [1, n, Hkv, D] f32 views.
 */
KR_API kr_status kr_kv_cache_read(kr_context *ctx, const kr_kv_cache *cache, int64_t layer,
                                  int64_t b, int64_t start, int64_t n, kr_tensor *k_out,
                                  kr_tensor *v_out);

/** Tokens held by sequence b of `layer`; -1 if the arguments are out of range. */
KR_API int64_t kr_kv_cache_seq_len(const kr_kv_cache *cache, int64_t layer, int64_t b);
/** Bytes of storage the cache allocated (K and V, all layers, scales included). */
KR_API size_t kr_kv_cache_bytes(const kr_kv_cache *cache);
/** Bytes the stored tokens occupy (scales included). */
KR_API size_t kr_kv_cache_bytes_used(const kr_kv_cache *cache);
/** Bytes one token takes in one layer (K and V, all kv heads, scales included). */
KR_API size_t kr_kv_cache_bytes_per_token(const kr_kv_cache *cache);

#ifdef __cplusplus
}
#endif

#endif /* KRSERVE_KV_CACHE_H */
