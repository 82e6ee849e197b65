/*
 * ops.h — the operations: scaled-dot-product attention and rotary position
 * embedding (RoPE). Included by krserve.h; not meant to be included alone.
 *
 * Every call goes through the context, which picks the backend that serves
 * it (the portable reference backend when nothing faster applies).
 */
#ifndef KRSERVE_OPS_H
#define KRSERVE_OPS_H

#ifdef __cplusplus
extern "C" {
#endif

/* ---- attention --------------------------------------------------------- */

/**
 * Parameters of kr_attention beyond the tensors. Zero-initialising gives:
 * scale 1/sqrt(D), not causal, no window (use kr_attention_params_default()
 * to get window_left = window_right = -1 explicitly), no mask, no LSE, every
 * sequence using all Skv keys.
 *
 * Masking rules, for sequence b with L = kv_lens ? kv_lens[b] : Skv keys and
 * query row i (0 <= i < Sq). The query sits at absolute position
 *     p = L - Sq + i                       (bottom-right alignment)
 * and key j (0 <= j < L) is visible when
 *     causal:        j <= p
 *     window_left:   j >= p - window_left   (when window_left  >= 0)
 *     window_right:  j <= p + window_right  (when window_right >= 0)
 * Keys j >= L are never visible. The additive mask is added to the scaled
 * score of each visible key; -inf there hides the key too.
 * A row with no visible key yields an output of zeros and LSE = -inf.
 */
typedef struct kr_attention_params {
    float scale;          /* score scale; 0 means 1/sqrt(head_dim) */
    int32_t causal;       /* non-zero: causal, aligned bottom-right */
    int64_t window_left;  /* sliding window: keys at most this far behind; -1 = unbounded */
    int64_t window_right; /* keys at most this far ahead; -1 = unbounded */
    /* Optional additive mask, f32, logical shape [Bm, Hm, Sq, Skv] with
     * Bm in {1, B} and Hm in {1, H}; a stride of 0 also broadcasts. */
    const kr_tensor *mask;
    /* Optional log-sum-exp output (natural log of the sum of exp of the
     * scaled, masked scores), f32, logical shape [B, H, Sq, 1]. */
    kr_tensor *lse;
    /* Optional per-sequence key counts [B], each in [0, Skv]. NULL = Skv. */
    const int64_t *kv_lens;
} kr_attention_params;

KR_API kr_attention_params kr_attention_params_default(void);

/**
 * out = softmax(scale * q k^T + mask) v, per batch and query head.
 *
 *   q   [B, Sq,  H,   D]   f32 | f16 | bf16
 *   k   [B, Skv, Hkv, D]   same dtype as q
 *   v   [B, Skv, Hkv, D]   same dtype as q
 *   out [B, Sq,  H,   D]   f32 | f16 | bf16 (any of them)
 *
 * H % Hkv == 0: query head h reads kv head h / (H / Hkv) (MHA when equal,
 * GQA, MQA when Hkv == 1). Accumulation is in fp32. `params` may be NULL.
 */
KR_API kr_status kr_attention(kr_context *ctx, const kr_tensor *q, const kr_tensor *k,
                              const kr_tensor *v, kr_tensor *out,
                              const kr_attention_params *params);

/* ---- RoPE -------------------------------------------------------------- */

/**
 * Which channels form a rotated pair (x, y), shown for rotary_dim = 8:
 *
 *   KR_ROPE_INTERLEAVED  [x0 y0 x1 y1 x2 y2 x3 y3]   (GPT-J, Meta's original Llama)
 *   KR_ROPE_HALF_SPLIT   [x0 x1 x2 x3 y0 y1 y2 y3]   (GPT-NeoX, Hugging Face Llama/Qwen)
 *
 * Pair i turns by angle position * inv_freq[i]:
 *   x' = x cos - y sin,  y' = x sin + y cos.
 * Channels at and beyond rotary_dim are left untouched.
 */
typedef enum kr_rope_layout { KR_ROPE_INTERLEAVED = 0, KR_ROPE_HALF_SPLIT = 1 } kr_rope_layout;

/** Frequency scaling, named as in Hugging Face's `rope_scaling.rope_type`. */
typedef enum kr_rope_scaling_type {
    KR_ROPE_SCALING_NONE = 0,   /* "default" */
    KR_ROPE_SCALING_LINEAR = 1, /* "linear": inv_freq / factor */
    KR_ROPE_SCALING_LLAMA3 = 2, /* "llama3": wavelength-banded scaling */
    KR_ROPE_SCALING_YARN = 3    /* "yarn": NTK-by-parts blend + attention factor */
} kr_rope_scaling_type;

/**
 * RoPE parameters with Hugging Face config.json names. Fields a scaling
 * type does not use are ignored; 0 means "the Hugging Face default" for the
 * optional ones (beta_fast 32, beta_slow 1, attention_factor from mscale).
 */
typedef struct kr_rope_params {
    double theta;       /* rope_theta, e.g. 10000 or 500000 */
    int64_t rotary_dim; /* channels rotated (even, <= head_dim); 0 = head_dim */
    kr_rope_layout layout;
    kr_rope_scaling_type scaling;
    double factor;                            /* linear, llama3, yarn */
    double low_freq_factor;                   /* llama3 */
    double high_freq_factor;                  /* llama3 */
    int64_t original_max_position_embeddings; /* llama3, yarn */
    double beta_fast;                         /* yarn; 0 = 32 */
    double beta_slow;                         /* yarn; 0 = 1 */
    double mscale;                            /* yarn; 0 = unset */
    double mscale_all_dim;                    /* yarn; 0 = unset */
    double attention_factor;                  /* yarn; 0 = derived (0.1 ln(factor) + 1) */
    int32_t yarn_no_truncate;                 /* yarn; non-zero = HF's truncate: false */
} kr_rope_params;

/** theta 10000, full rotary_dim, half-split, no scaling. */
KR_API kr_rope_params kr_rope_params_default(void);

/**
 * The per-pair inverse frequencies (rotary_dim / 2 values, in double) and the
 * factor that multiplies cos and sin (1 except for yarn), as the op uses them.
 */
KR_API kr_status kr_rope_frequencies(kr_context *ctx, const kr_rope_params *params,
                                     int64_t head_dim, double *inv_freq, double *attention_factor);

/**
 * Rotates x in place. x: [B, S, H, D], f32 | f16 | bf16. positions: B*S
 * non-negative absolute positions, row-major [B][S]. cos/sin are computed in
 * double and applied in fp32.
 */
KR_API kr_status kr_rope(kr_context *ctx, kr_tensor *x, const int64_t *positions,
                         const kr_rope_params *params);

#ifdef __cplusplus
}
#endif

#endif /* KRSERVE_OPS_H */
