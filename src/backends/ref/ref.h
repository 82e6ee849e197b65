/*
 * ref.h — the portable reference backend: plain C11 kernels that are always
 * present, serve every case, and are the fp32 twin every faster backend is
 * tested against. Nothing here is tuned; everything here is meant to be
 * obviously right.
 */
#ifndef KR_BACKENDS_REF_H
#define KR_BACKENDS_REF_H

#include "../../core/backend.h"

/* Each kernel reports failure as a status and a message in err. */
kr_status kr_ref_attention(const kr_attention_args *a, char *err, size_t err_len);
kr_status kr_ref_rope(const kr_rope_args *a, char *err, size_t err_len);

/* Rotates the first 2*half channels of one f32 row in place. */
void kr_ref_rope_row(float *row, double pos, const double *inv_freq, int64_t half,
                     kr_rope_layout layout, double attention_factor);

/* Appends new K/V rows to a cache layer (RoPE on K, then conversion or
 * quantisation to the storage dtype). */
kr_status kr_ref_kv_append(const kr_kv_append_args *a, char *err, size_t err_len);

/* Turns amax[D] (each channel's largest magnitude over the first append to
 * a layer, after RoPE for K) into the int8 channel factors in place: rotated
 * pairs tied, then amax / median for channels above 8x the median, else 1.
 * tmp: D floats of scratch. Shared with the accelerated backends so every
 * backend fixes the same factors. */
void kr_ref_chan_factors(const kr_kv_append_args *a, bool is_k, float *amax, float *tmp);

/* Quantises one row of n floats to symmetric int8 with the two-level scale
 * of kv_cache.h (meta: KR_KV_INT8_META_BYTES(n) bytes); values are divided
 * by chan[c] first. A non-finite row stores a NaN row scale (so attention
 * over it yields NaN). */
void kr_ref_quantize_row(const float *x, const float *chan, int64_t n, int8_t *q, uint8_t *meta);

#endif /* KR_BACKENDS_REF_H */
