/*
 * ref_kv.c — reference KV append: per new token and kv head, load K and V
 * rows as f32, rotate K with RoPE when asked, then store them in the cache's
 * dtype (int8 rows quantised with kr_ref_quantize_row).
 *
 * For an int8 cache the layer's first append also fixes the outlier-channel
 * factors (kv_cache.h): per kv head, amax of each channel over the appended
 * tokens; a channel (or rotated pair) whose amax exceeds 8x the median is
 * divided by amax / median before per-token quantisation.
 */
#include "ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KR_CHAN_OUTLIER_RATIO 8.0f

static int cmp_float(const void *x, const void *y) {
    float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

/* Loads row (b, t, h) of `src`, rotated when the append carries RoPE. */
static void load_row(const kr_kv_append_args *a, const kr_tensor *src, bool is_k, int64_t b,
                     int64_t t, int64_t h, float *row) {
    const int64_t D = a->cache->o.head_dim;
    for (int64_t c = 0; c < D; c++) row[c] = kr_load(src, kr_offset(src, b, t, h, c));
    if (is_k && a->inv_freq)
        kr_ref_rope_row(row, (double)a->positions[b * src->shape[1] + t], a->inv_freq,
                        a->rotary_dim / 2, a->layout, a->attention_factor);
}

/* Fixes chan[Hkv][D] from the rows this append brings. */
static void fix_channel_factors(const kr_kv_append_args *a, const kr_tensor *src, bool is_k,
                                float *chan, float *row, float *tmp) {
    const kr_kv_cache_options *o = &a->cache->o;
    const int64_t D = o->head_dim;
    for (int64_t h = 0; h < o->n_kv_heads; h++) {
        float *amax = chan + h * D;
        for (int64_t c = 0; c < D; c++) amax[c] = 0.0f;
        for (int64_t b = 0; b < o->batch; b++)
            for (int64_t t = 0; t < a->n_new[b]; t++) {
                load_row(a, src, is_k, b, t, h, row);
                for (int64_t c = 0; c < D; c++)
                    if (fabsf(row[c]) > amax[c]) amax[c] = fabsf(row[c]);
            }
        kr_ref_chan_factors(a, is_k, amax, tmp);
    }
}

void kr_ref_chan_factors(const kr_kv_append_args *a, bool is_k, float *amax, float *tmp) {
    const int64_t D = a->cache->o.head_dim;
    if (is_k && a->inv_freq) { /* a rotated pair shares one factor */
        const int64_t half = a->rotary_dim / 2;
        for (int64_t i = 0; i < half; i++) {
            const int64_t ix = a->layout == KR_ROPE_INTERLEAVED ? 2 * i : i;
            const int64_t iy = a->layout == KR_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
            const float m = fmaxf(amax[ix], amax[iy]);
            amax[ix] = amax[iy] = m;
        }
    }
    memcpy(tmp, amax, sizeof(float) * (size_t)D);
    qsort(tmp, (size_t)D, sizeof(float), cmp_float);
    const float median = tmp[D / 2];
    for (int64_t c = 0; c < D; c++)
        amax[c] =
            (median > 0.0f && amax[c] > KR_CHAN_OUTLIER_RATIO * median) ? amax[c] / median : 1.0f;
}

kr_status kr_ref_kv_append(const kr_kv_append_args *a, char *err, size_t err_len) {
    kr_kv_cache *c = a->cache;
    const kr_kv_cache_options *o = &c->o;
    const int64_t D = o->head_dim, Hkv = o->n_kv_heads;
    kr_kv_layer *ly = &c->layers[a->layer];
    const int64_t *len = c->len + a->layer * o->batch;
    float *row = calloc((size_t)D, sizeof(float));
    float *tmp = malloc(sizeof(float) * (size_t)D);
    if (!row || !tmp) {
        free(row);
        free(tmp);
        snprintf(err, err_len, "reference kv append: out of memory");
        return KR_ERR_OUT_OF_MEMORY;
    }
    bool any_new = false;
    for (int64_t b = 0; b < o->batch; b++) any_new |= a->n_new[b] > 0;
    if (o->dtype == KR_I8 && !ly->chan_set && any_new) {
        fix_channel_factors(a, a->k, true, ly->k_chan, row, tmp);
        fix_channel_factors(a, a->v, false, ly->v_chan, row, tmp);
        ly->chan_set = true;
    }
    for (int w = 0; w < 2; w++) {
        const bool is_k = w == 0;
        const kr_tensor *src = is_k ? a->k : a->v;
        void *data = is_k ? ly->k : ly->v;
        kr_tensor dst = kr_tensor_bshd(data, o->dtype, o->batch, o->capacity, Hkv, D);
        for (int64_t b = 0; b < o->batch; b++)
            for (int64_t t = 0; t < a->n_new[b]; t++)
                for (int64_t h = 0; h < Hkv; h++) {
                    load_row(a, src, is_k, b, t, h, row);
                    const int64_t slot = len[b] + t;
                    if (o->dtype == KR_I8) {
                        const int64_t r = (b * o->capacity + slot) * Hkv + h;
                        kr_ref_quantize_row(row, (is_k ? ly->k_chan : ly->v_chan) + h * D, D,
                                            (int8_t *)data + r * D,
                                            (is_k ? ly->k_meta : ly->v_meta) +
                                                r * KR_KV_INT8_META_BYTES(D));
                    } else {
                        for (int64_t d = 0; d < D; d++)
                            kr_store(&dst, kr_offset(&dst, b, slot, h, d), row[d]);
                    }
                }
    }
    free(row);
    free(tmp);
    return KR_OK;
}
