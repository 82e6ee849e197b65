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

kr_status kr_ref_rope(kr_context *ctx, const kr_rope_args *a) {
    const kr_tensor *x = a->x;
    const int64_t D = x->shape[3];
    float *row = malloc(sizeof(float) * (size_t)D);
    if (!row) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "reference rope: out of memory");
    for (int64_t b = 0; b < x->shape[0]; b++)
        for (int64_t s = 0; s < x->shape[1]; s++)
            for (int64_t h = 0; h < x->shape[2]; h++) {
                const double pos = (double)a->positions[b * x->shape[1] + s];
                /* Only the rotated channels are read and written back. */
                for (int64_t c = 0; c < a->rotary_dim; c++)
                    row[c] = kr_load(x, kr_offset(x, b, s, h, c));
                kr_ref_rope_row(row, pos, a->inv_freq, a->rotary_dim / 2, a->layout,
                                a->attention_factor);
                for (int64_t c = 0; c < a->rotary_dim; c++)
                    kr_store(x, kr_offset(x, b, s, h, c), row[c]);
            }
    free(row);
    return KR_OK;
}

void kr_ref_quantize_row(const float *x, const float *chan, int64_t n, int8_t *q, float *scale) {
    float amax = 0.0f;
    for (int64_t c = 0; c < n; c++) {
        float v = chan ? x[c] / chan[c] : x[c];
        float av = fabsf(v);
        if (!(av <= amax)) amax = av; /* NaN propagates into amax */
    }
    if (!isfinite(amax)) {
        for (int64_t c = 0; c < n; c++) q[c] = 0;
        *scale = NAN;
        return;
    }
    const float s = amax / 127.0f;
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    for (int64_t c = 0; c < n; c++) {
        float v = (chan ? x[c] / chan[c] : x[c]) * inv;
        float r = rintf(v);
        if (r > 127.0f) r = 127.0f;
        if (r < -127.0f) r = -127.0f;
        q[c] = (int8_t)r;
    }
    *scale = s;
}
