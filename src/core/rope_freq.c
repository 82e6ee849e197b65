/*
 * rope_freq.c — RoPE inverse frequencies for every scaling variant, computed
 * in double with the definitions (and the config.json parameter names) of
 * Hugging Face transformers' rope initialisation functions.
 */
#include "internal.h"

#include <math.h>

kr_rope_params kr_rope_params_default(void) {
    kr_rope_params p = {0};
    p.theta = 10000.0;
    p.rotary_dim = 0;
    p.layout = KR_ROPE_HALF_SPLIT;
    p.scaling = KR_ROPE_SCALING_NONE;
    return p;
}

/* yarn: the dimension index at which a wavelength makes `rotations` turns
 * over the original context. */
static double yarn_correction_dim(double rotations, int64_t dim, double base, double max_pos) {
    return ((double)dim * log(max_pos / (rotations * 2.0 * M_PI))) / (2.0 * log(base));
}

static double yarn_mscale(double scale, double mscale) {
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

kr_status kr_rope_resolve(kr_context *ctx, const kr_rope_params *p, int64_t head_dim,
                          double *inv_freq, double *attention_factor, int64_t *rotary_dim_out) {
    if (!p) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "rope: params is NULL");
    int64_t dim = p->rotary_dim == 0 ? head_dim : p->rotary_dim;
    if (dim < 2 || dim > head_dim || dim % 2 != 0)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "rope: rotary_dim %lld must be even and in [2, head_dim %lld]",
                       (long long)dim, (long long)head_dim);
    if (!(p->theta > 1.0) || !isfinite(p->theta))
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "rope: theta must be > 1, got %g", p->theta);
    if (p->layout != KR_ROPE_INTERLEAVED && p->layout != KR_ROPE_HALF_SPLIT)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "rope: layout %d is not a kr_rope_layout",
                       (int)p->layout);
    const int64_t half = dim / 2;
    double af = 1.0;

    /* Unscaled frequencies: theta^(-2i/dim). */
    for (int64_t i = 0; i < half; i++)
        inv_freq[i] = 1.0 / pow(p->theta, (double)(2 * i) / (double)dim);

    switch (p->scaling) {
    case KR_ROPE_SCALING_NONE: break;
    case KR_ROPE_SCALING_LINEAR:
        if (!(p->factor > 0.0))
            return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "rope linear: factor must be > 0, got %g",
                           p->factor);
        for (int64_t i = 0; i < half; i++) inv_freq[i] /= p->factor;
        break;
    case KR_ROPE_SCALING_LLAMA3: {
        if (!(p->factor > 0.0) || !(p->low_freq_factor > 0.0) ||
            !(p->high_freq_factor > p->low_freq_factor) || p->original_max_position_embeddings <= 0)
            return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                           "rope llama3: need factor > 0, 0 < low_freq_factor < high_freq_factor "
                           "and original_max_position_embeddings > 0 (got %g, %g, %g, %lld)",
                           p->factor, p->low_freq_factor, p->high_freq_factor,
                           (long long)p->original_max_position_embeddings);
        /* Long wavelengths (beyond original/low) are slowed by `factor`, short
         * ones (under original/high) kept, and the band between blended. */
        const double old_len = (double)p->original_max_position_embeddings;
        const double low_wavelen = old_len / p->low_freq_factor;
        const double high_wavelen = old_len / p->high_freq_factor;
        for (int64_t i = 0; i < half; i++) {
            double f = inv_freq[i];
            double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) {
                inv_freq[i] = f / p->factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (old_len / wavelen - p->low_freq_factor) /
                                (p->high_freq_factor - p->low_freq_factor);
                inv_freq[i] = (1.0 - smooth) * f / p->factor + smooth * f;
            }
        }
        break;
    }
    case KR_ROPE_SCALING_YARN: {
        if (!(p->factor > 0.0) || p->original_max_position_embeddings <= 0)
            return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                           "rope yarn: need factor > 0 and original_max_position_embeddings > 0 "
                           "(got %g, %lld)",
                           p->factor, (long long)p->original_max_position_embeddings);
        const double beta_fast = p->beta_fast != 0.0 ? p->beta_fast : 32.0;
        const double beta_slow = p->beta_slow != 0.0 ? p->beta_slow : 1.0;
        const double max_pos = (double)p->original_max_position_embeddings;
        double low = yarn_correction_dim(beta_fast, dim, p->theta, max_pos);
        double high = yarn_correction_dim(beta_slow, dim, p->theta, max_pos);
        if (!p->yarn_no_truncate) {
            low = floor(low);
            high = ceil(high);
        }
        if (low < 0.0) low = 0.0;
        if (high > (double)(dim - 1)) high = (double)(dim - 1);
        if (low == high) high += 0.001;
        /* Pair i keeps its original frequency (extrapolation) below `low`,
         * takes the interpolated one above `high`, and a linear blend between. */
        for (int64_t i = 0; i < half; i++) {
            double ramp = ((double)i - low) / (high - low);
            if (ramp < 0.0) ramp = 0.0;
            if (ramp > 1.0) ramp = 1.0;
            double extrap_weight = 1.0 - ramp;
            double f = inv_freq[i];
            inv_freq[i] = (f / p->factor) * (1.0 - extrap_weight) + f * extrap_weight;
        }
        if (p->attention_factor != 0.0) {
            af = p->attention_factor;
        } else if (p->mscale != 0.0 && p->mscale_all_dim != 0.0) {
            af = yarn_mscale(p->factor, p->mscale) / yarn_mscale(p->factor, p->mscale_all_dim);
        } else {
            af = yarn_mscale(p->factor, 1.0);
        }
        break;
    }
    default:
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "rope: scaling %d is not a kr_rope_scaling_type", (int)p->scaling);
    }
    *attention_factor = af;
    *rotary_dim_out = dim;
    return KR_OK;
}

kr_status kr_rope_frequencies(kr_context *ctx, const kr_rope_params *params, int64_t head_dim,
                              double *inv_freq, double *attention_factor) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    if (!inv_freq || !attention_factor)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_rope_frequencies: output pointer is NULL");
    if (head_dim < 2)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_rope_frequencies: head_dim %lld < 2",
                       (long long)head_dim);
    int64_t rd = 0;
    kr_clear_error(ctx);
    return kr_rope_resolve(ctx, params, head_dim, inv_freq, attention_factor, &rd);
}
