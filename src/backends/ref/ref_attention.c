/*
 * ref_attention.c — reference attention: for every (batch, query head,
 * query row) compute the scores of the visible keys, soften them with a
 * max-subtracted softmax and average the values. Three passes over the keys,
 * fp32 throughout, one row at a time.
 */
#include "ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Loads row (b, t, kv head h) of K (which = 0) or V (which = 1) as f32,
 * dequantising the int8 cache layout when that is the storage. */
static void load_kv_row(const kr_attention_args *a, int which, int64_t b, int64_t t, int64_t h,
                        float *row) {
    const kr_kv_int8_view *q8 = which ? a->v8 : a->k8;
    if (q8) {
        const int64_t r = (b * q8->capacity + t) * a->Hkv + h;
        kr_kv_int8_dequant_row(q8->data + r * a->D, q8->meta + r * KR_KV_INT8_META_BYTES(a->D),
                               q8->chan + h * a->D, a->D, row);
        return;
    }
    const kr_tensor *t4 = which ? a->v : a->k;
    for (int64_t c = 0; c < a->D; c++) row[c] = kr_load(t4, kr_offset(t4, b, t, h, c));
}

kr_status kr_ref_attention(const kr_attention_args *a, char *err, size_t err_len) {
    const int64_t D = a->D, group = a->H / a->Hkv;
    float *scores = malloc(sizeof(float) * (size_t)(a->Skv + 1));
    float *qrow = malloc(sizeof(float) * (size_t)D);
    float *kvrow = malloc(sizeof(float) * (size_t)D);
    float *acc = malloc(sizeof(float) * (size_t)D);
    if (!scores || !qrow || !kvrow || !acc) {
        free(scores);
        free(qrow);
        free(kvrow);
        free(acc);
        snprintf(err, err_len, "reference attention: out of memory (Skv %lld)", (long long)a->Skv);
        return KR_ERR_OUT_OF_MEMORY;
    }
    for (int64_t b = 0; b < a->B; b++) {
        const int64_t L = a->kv_lens ? a->kv_lens[b] : a->Skv;
        for (int64_t h = 0; h < a->H; h++) {
            const int64_t hk = h / group; /* GQA: query head h reads kv head h / group */
            for (int64_t i = 0; i < a->Sq; i++) {
                int64_t lo, hi;
                kr_attention_row_range(a, L, i, &lo, &hi);
                for (int64_t c = 0; c < D; c++)
                    qrow[c] = kr_load(a->q, kr_offset(a->q, b, i, h, c));

                /* Pass 1: scaled, masked scores and their maximum. */
                float mx = -INFINITY;
                bool nan_seen = false;
                for (int64_t j = lo; j < hi; j++) {
                    load_kv_row(a, 0, b, j, hk, kvrow);
                    float dot = 0.0f;
                    for (int64_t c = 0; c < D; c++) dot += qrow[c] * kvrow[c];
                    float s = dot * a->scale;
                    if (a->mask) {
                        const kr_tensor *m = a->mask;
                        int64_t mb = m->shape[0] == 1 ? 0 : b, mh = m->shape[1] == 1 ? 0 : h;
                        s += kr_load(m, kr_offset(m, mb, mh, i, j));
                    }
                    scores[j - lo] = s;
                    if (s > mx) mx = s;
                    nan_seen |= isnan(s);
                }

                /* A row with nothing visible (or everything masked to -inf)
                 * is defined as zeros with LSE -inf. */
                if (mx == -INFINITY && !nan_seen) {
                    for (int64_t c = 0; c < D; c++)
                        kr_store(a->out, kr_offset(a->out, b, i, h, c), 0.0f);
                    if (a->lse) kr_store(a->lse, kr_offset(a->lse, b, h, i, 0), -INFINITY);
                    continue;
                }

                /* Pass 2: exponentiate against the maximum and sum. A NaN
                 * score makes the sum (and so the whole row) NaN. */
                float sum = 0.0f;
                for (int64_t j = lo; j < hi; j++) {
                    float p = expf(scores[j - lo] - mx);
                    scores[j - lo] = p;
                    sum += p;
                }

                /* Pass 3: the probability-weighted average of the values. */
                for (int64_t c = 0; c < D; c++) acc[c] = 0.0f;
                for (int64_t j = lo; j < hi; j++) {
                    load_kv_row(a, 1, b, j, hk, kvrow);
                    for (int64_t c = 0; c < D; c++) acc[c] += scores[j - lo] * kvrow[c];
                }
                for (int64_t c = 0; c < D; c++)
                    kr_store(a->out, kr_offset(a->out, b, i, h, c), acc[c] / sum);
                if (a->lse) kr_store(a->lse, kr_offset(a->lse, b, h, i, 0), mx + logf(sum));
            }
        }
    }
    free(scores);
    free(qrow);
    free(kvrow);
    free(acc);
    return KR_OK;
}
