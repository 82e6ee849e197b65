/*
 * ref_rope.c — reference RoPE and the reference int8 row quantiser.
 *
 * RoPE: the angle of pair i is position * inv_freq[i] (double); cos and sin
 * (times the attention factor) are rounded to fp32 and the pair is rotated
 * in fp32:
 *     x' = x cos - y sin,   y' = x sin + y cos.
 */
#include "ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void kr_ref_rope_row(float *row, double pos, const double *inv_freq, int64_t half,
                     kr_rope_layout layout, double attention_factor) {
    for (int64_t i = 0; i < half; i++) {
        const double ang = pos * inv_freq[i];
        const float c = (float)(cos(ang) * attention_factor);
        const float sn = (float)(sin(ang) * attention_factor);
        /* interleaved pairs (2i, 2i+1); half-split pairs (i, i+half) */
        const int64_t ix = layout == KR_ROPE_INTERLEAVED ? 2 * i : i;
        const int64_t iy = layout == KR_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
        const float xv = row[ix], yv = row[iy];
        row[ix] = xv * c - yv * sn;
        row[iy] = xv * sn + yv * c;
    }
}

kr_status kr_ref_rope(const kr_rope_args *a, char *err, size_t err_len) {
    const kr_tensor *x = a->x;
    const int64_t D = x->shape[3];
    float *row = calloc((size_t)D, sizeof(float));
    if (!row) {
        snprintf(err, err_len, "reference rope: out of memory");
        return KR_ERR_OUT_OF_MEMORY;
    }
    for (int64_t b = 0; b < x->shape[0]; b++)
        for (int64_t s = 0; s < x->shape[1]; s++)
            for (int64_t h = 0; h < x->shape[2]; h++) {
                const double pos = (double)a->positions[b * x->shape[1] + s];
                /* The whole row is read; only rotated channels are written back. */
                for (int64_t c = 0; c < D; c++) row[c] = kr_load(x, kr_offset(x, b, s, h, c));
                kr_ref_rope_row(row, pos, a->inv_freq, a->rotary_dim / 2, a->layout,
                                a->attention_factor);
                for (int64_t c = 0; c < a->rotary_dim; c++)
                    kr_store(x, kr_offset(x, b, s, h, c), row[c]);
            }
    free(row);
    return KR_OK;
}

void kr_ref_quantize_row(const float *x, const float *chan, int64_t n, int8_t *q, uint8_t *meta) {
    /* Pass 1: the row's and each group's largest magnitude. */
    float amax = 0.0f;
    float gmax[256 / KR_KV_INT8_GROUP + 1] = {0};
    const int64_t groups = (n + KR_KV_INT8_GROUP - 1) / KR_KV_INT8_GROUP;
    for (int64_t c = 0; c < n; c++) {
        const float av = fabsf(x[c] / chan[c]);
        if (amax == amax && !(av <= amax)) amax = av; /* a NaN sticks in amax */
        if (av > gmax[c / KR_KV_INT8_GROUP]) gmax[c / KR_KV_INT8_GROUP] = av;
    }
    /* Pass 2: the f16 row scale (amax / 127, rounded up so no group needs
     * more than 255/255 of it) and each group's u8 share of it. */
    uint16_t rh = kr_f32_to_f16(isfinite(amax) ? amax / 127.0f : NAN);
    if (isfinite(amax) && kr_f16_to_f32(rh) * 127.0f < amax) rh++;
    meta[0] = (uint8_t)(rh & 0xff);
    meta[1] = (uint8_t)(rh >> 8);
    const float row_scale = kr_f16_to_f32(rh);
    for (int64_t g = 0; g < groups; g++) {
        float u = row_scale > 0.0f ? ceilf(255.0f * gmax[g] / (127.0f * row_scale)) : 0.0f;
        if (!(u <= 255.0f)) u = 255.0f;
        meta[2 + g] = (uint8_t)u;
    }
    /* Pass 3: round each value to its group's step (times the step's
     * reciprocal, one division per group rather than per value). */
    for (int64_t c = 0; c < n; c++) {
        const float s = kr_kv_int8_group_scale(meta, c / KR_KV_INT8_GROUP);
        const float inv = s > 0.0f && isfinite(s) ? 1.0f / s : 0.0f;
        float r = inv > 0.0f ? rintf((x[c] / chan[c]) * inv) : 0.0f;
        if (r > 127.0f) r = 127.0f;
        if (r < -127.0f) r = -127.0f;
        q[c] = r == r ? (int8_t)r : 0; /* NaN input: code 0 (its row scale is NaN) */
    }
}
