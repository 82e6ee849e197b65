/*
 * model.h — reading a Hugging Face model directory: config.json (Llama,
 * Mistral, Qwen2) and the safetensors weights (one file or shards with
 * model.safetensors.index.json), memory-mapped and validated field by field.
 * Included by krserve.h.
 *
 * Every failure names the file and what was wrong in it ("model.safetensors:
 * tensor 'lm_head.weight': data_offsets [0, 96) end past the data (64 bytes)").
 */
#ifndef KRSERVE_MODEL_H
#define KRSERVE_MODEL_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kr_arch { KR_ARCH_LLAMA = 0, KR_ARCH_MISTRAL = 1, KR_ARCH_QWEN2 = 2 } kr_arch;

#define KR_MAX_EOS 8

/** The fields of config.json (and generation_config.json) the engine uses,
 *  with Hugging Face's names. */
typedef struct kr_model_config {
    kr_arch arch;
    char model_type[32];
    int64_t hidden_size;
    int64_t n_layers;          /* num_hidden_layers */
    int64_t n_heads;           /* num_attention_heads */
    int64_t n_kv_heads;        /* num_key_value_heads (= n_heads when absent) */
    int64_t head_dim;          /* head_dim, or hidden_size / n_heads */
    int64_t intermediate_size; /* the SwiGLU width */
    int64_t vocab_size;
    int64_t max_position_embeddings;
    double rms_norm_eps;
    kr_rope_params rope; /* rope_theta, rope_scaling, partial_rotary_factor */
    int32_t tie_word_embeddings;
    int32_t qkv_bias;       /* Qwen2: q/k/v projections carry biases */
    int64_t sliding_window; /* Mistral; -1 = none */
    int64_t bos_token_id;   /* -1 = none */
    int64_t eos_token_ids[KR_MAX_EOS];
    int32_t n_eos;
    kr_dtype torch_dtype; /* as declared; the weights' own dtypes rule */
} kr_model_config;

/** Reads DIR/config.json (and DIR/generation_config.json when present). */
KR_API kr_status kr_model_config_load(kr_context *ctx, const char *dir, kr_model_config *out);

/** The weights of a model directory: DIR/model.safetensors, or the shards
 *  DIR/model.safetensors.index.json names. Memory-mapped read-only. */
typedef struct kr_weights kr_weights;

KR_API kr_status kr_weights_open(kr_context *ctx, const char *dir, kr_weights **out);
/** Frees the weights (unmaps the files); NULL is a no-op. */
KR_API void kr_weights_free(kr_weights *w);
/** Number of tensors, and the name of tensor i (NULL when out of range). */
KR_API int64_t kr_weights_count(const kr_weights *w);
KR_API const char *kr_weights_name(const kr_weights *w, int64_t i);
/**
 * A read-only view of tensor `name` (its data must not be written). The view
 * is contiguous with the tensor's shape right-aligned in the 4 dimensions
 * ([1, 1, rows, cols] for a matrix). KR_ERR_FORMAT when absent, or when its
 * shape differs from `expect` (n_expect extents; n_expect 0 checks nothing).
 */
KR_API kr_status kr_weights_get(kr_context *ctx, const kr_weights *w, const char *name,
                                const int64_t *expect, int32_t n_expect, kr_tensor *out);

/* ---- the model: weights + KV cache + forward pass (src/engine/model.c) ---- */

typedef struct kr_model kr_model;

typedef struct kr_model_options {
    kr_dtype kv_dtype;   /* KV cache storage: KR_F16 (the default), KR_BF16, KR_F32 or KR_I8 */
    int64_t max_context; /* tokens the KV cache holds; 0 = min(max_position_embeddings, 4096) */
} kr_model_options;

/** kv_dtype f16, max_context 0. */
KR_API kr_model_options kr_model_options_default(void);

/**
 * Loads a model directory (config.json + safetensors): every tensor the
 * architecture needs must be present with its shape, and no other tensor may
 * be there. Weights are converted to f32 for the matrix products (OpenBLAS).
 */
KR_API kr_status kr_model_load(kr_context *ctx, const char *dir, const kr_model_options *opts,
                               kr_model **out);
KR_API void kr_model_free(kr_model *m);
KR_API const kr_model_config *kr_model_get_config(const kr_model *m);
/** Tokens already in the model's KV cache (the next token's position). */
KR_API int64_t kr_model_position(const kr_model *m);
/** A model with the given configuration and random weights (normal, scaled
 *  like an initialised model): for benchmarks and tests, no files needed. */
KR_API kr_status kr_model_create_random(kr_context *ctx, const kr_model_config *c,
                                        const kr_model_options *opts, uint64_t seed,
                                        kr_model **out);
/** The model's KV cache (layer l of the model is layer l of the cache), e.g.
 *  to inspect it or to fill it for a benchmark; the model keeps owning it. */
KR_API kr_kv_cache *kr_model_kv_cache(kr_model *m);
/** Bytes the model's KV cache holds for the tokens in it. */
KR_API size_t kr_model_kv_bytes(const kr_model *m);
/** Empties the KV cache (a new sequence). */
KR_API kr_status kr_model_reset(kr_context *ctx, kr_model *m);

/**
 * Runs tokens[0..n) at positions position() .. position() + n - 1, appending
 * them to the KV cache. logits (may be NULL) receives the last token's
 * vocab_size logits, or all n rows ([n][vocab_size]) when all_logits is
 * non-zero. Attention goes through kr_kv_cache_attention, so the context's
 * acceleration settings choose the backend.
 */
KR_API kr_status kr_model_forward(kr_context *ctx, kr_model *m, const int32_t *tokens, int64_t n,
                                  float *logits, int32_t all_logits);

/* ---- tokenizer (src/engine/tokenizer.c) ---- */

/**
 * A Hugging Face tokenizer.json BPE: byte-level (GPT-2, Llama-3, Qwen2:
 * ByteLevel / Split-regex pre-tokenizers, ignore_merges) or SentencePiece-
 * style (the `▁` metaspace, <0xNN> byte fallback); added and special tokens
 * matched first; add_bos from tokenizer_config.json or the post-processor.
 */
typedef struct kr_tokenizer kr_tokenizer;

KR_API kr_status kr_tokenizer_load(kr_context *ctx, const char *dir, kr_tokenizer **out);
KR_API void kr_tokenizer_free(kr_tokenizer *t);
KR_API int64_t kr_tokenizer_vocab_size(const kr_tokenizer *t);
/** Encodes text (UTF-8); with add_special, the BOS the tokenizer asks for.
 *  ids has room for cap ids; *n gets the count (KR_ERR_CAPACITY if more). */
KR_API kr_status kr_tokenizer_encode(kr_context *ctx, const kr_tokenizer *t, const char *text,
                                     int32_t add_special, int32_t *ids, int64_t cap, int64_t *n);

/** Streaming detokenisation: bytes of each token as it comes, holding back
 *  an incomplete UTF-8 sequence until the token that completes it. */
typedef struct kr_detok {
    char pending[8];
    int32_t n_pending;
    int32_t started; /* a SentencePiece decoder drops the first leading space */
} kr_detok;

/** Appends token id's text to out (NUL-terminated, cap bytes); returns the
 *  bytes written, or -1 if id is out of range or out is too small. */
KR_API int64_t kr_tokenizer_decode(const kr_tokenizer *t, kr_detok *st, int32_t id, char *out,
                                   size_t cap);

/* ---- sampling (src/engine/sampler.c) ---- */

/** Applied in Hugging Face's order: repetition penalty, temperature, top-k,
 *  top-p, min-p; temperature 0 is greedy (argmax after the penalty). */
typedef struct kr_sampler_params {
    float temperature;        /* 0 = greedy */
    int32_t top_k;            /* 0 = off */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off; > 1 discourages tokens already seen */
    uint64_t seed;
} kr_sampler_params;

/** temperature 1, top_k 0, top_p 1, min_p 0, repetition_penalty 1, seed 0. */
KR_API kr_sampler_params kr_sampler_params_default(void);

typedef struct kr_sampler kr_sampler;
KR_API kr_status kr_sampler_create(kr_context *ctx, const kr_sampler_params *p, kr_sampler **out);
KR_API void kr_sampler_free(kr_sampler *s);
/** Picks the next token from logits[n_vocab] given the tokens so far. */
KR_API kr_status kr_sampler_sample(kr_context *ctx, kr_sampler *s, const float *logits,
                                   int64_t n_vocab, const int32_t *history, int64_t n_history,
                                   int32_t *token);

#ifdef __cplusplus
}
#endif

#endif /* KRSERVE_MODEL_H */
