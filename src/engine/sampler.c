/*
 * sampler.c — the next token from a row of logits: repetition penalty,
 * temperature, top-k, top-p, min-p (Hugging Face's order and definitions),
 * then a draw from the renormalised distribution with a seeded PRNG
 * (splitmix64), so a seed reproduces a generation.
 */
#include "../core/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct cand {
    float logit;
    int32_t id;
} cand;

struct kr_sampler {
    kr_sampler_params p;
    uint64_t state;
    cand *c; /* scratch, n_vocab */
    int64_t cap;
};

kr_sampler_params kr_sampler_params_default(void) {
    kr_sampler_params p = {1.0f, 0, 1.0f, 0.0f, 1.0f, 0};
    return p;
}

static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

kr_status kr_sampler_create(kr_context *ctx, const kr_sampler_params *p, kr_sampler **out) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!out) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_sampler_create: out is NULL");
    *out = NULL;
    const kr_sampler_params d = kr_sampler_params_default();
    if (!p) p = &d;
    if (!(p->temperature >= 0 && isfinite(p->temperature)) || p->top_k < 0 ||
        !(p->top_p > 0 && p->top_p <= 1) || !(p->min_p >= 0 && p->min_p < 1) ||
        !(p->repetition_penalty > 0 && isfinite(p->repetition_penalty)))
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "kr_sampler_create: temperature %g (>= 0), top_k %d (>= 0), top_p %g "
                       "((0, 1]), min_p %g ([0, 1)), repetition_penalty %g (> 0): out of range",
                       (double)p->temperature, (int)p->top_k, (double)p->top_p, (double)p->min_p,
                       (double)p->repetition_penalty);
    kr_sampler *s = calloc(1, sizeof *s);
    if (!s) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "kr_sampler_create: out of memory");
    s->p = *p;
    s->state = p->seed;
    *out = s;
    return KR_OK;
}

void kr_sampler_free(kr_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s);
}

static int by_logit_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id); /* ties: the lower id first, like argmax */
}

kr_status kr_sampler_sample(kr_context *ctx, kr_sampler *s, const float *logits, int64_t n_vocab,
                            const int32_t *history, int64_t n_history, int32_t *token) {
    static const char op[] = "kr_sampler_sample";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!s || !logits || !token || n_vocab < 1 || n_vocab > INT32_MAX || n_history < 0 ||
        (n_history && !history))
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: bad arguments", op);
    if (n_vocab > s->cap) {
        cand *c = realloc(s->c, sizeof *c * (size_t)n_vocab);
        if (!c) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
        s->c = c;
        s->cap = n_vocab;
    }
    cand *c = s->c;
    for (int64_t i = 0; i < n_vocab; i++) {
        if (isnan(logits[i]))
            return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: logits[%lld] is NaN", op,
                           (long long)i);
        c[i].logit = logits[i];
        c[i].id = (int32_t)i;
    }
    /* 1. repetition penalty, once per distinct token seen (HF: divide positive
     *    logits, multiply negative ones) */
    if (s->p.repetition_penalty != 1.0f)
        for (int64_t h = 0; h < n_history; h++) {
            const int32_t t = history[h];
            if (t < 0 || t >= n_vocab)
                return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                               "%s: history[%lld] = %d outside the "
                               "vocabulary",
                               op, (long long)h, (int)t);
            bool seen = false;
            for (int64_t g = 0; g < h && !seen; g++) seen = history[g] == t;
            if (seen) continue;
            const float l = c[t].logit;
            c[t].logit = l > 0 ? l / s->p.repetition_penalty : l * s->p.repetition_penalty;
        }
    if (s->p.temperature == 0.0f) { /* greedy: the first maximum */
        int64_t best = 0;
        for (int64_t i = 1; i < n_vocab; i++)
            if (c[i].logit > c[best].logit) best = i;
        *token = c[best].id;
        return KR_OK;
    }
    /* 2. temperature, 3. top-k (sorted candidates), 4. top-p, 5. min-p */
    for (int64_t i = 0; i < n_vocab; i++) c[i].logit /= s->p.temperature;
    qsort(c, (size_t)n_vocab, sizeof *c, by_logit_desc);
    int64_t n = s->p.top_k > 0 && s->p.top_k < n_vocab ? s->p.top_k : n_vocab;
    if (c[0].logit == -INFINITY)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: every logit is -inf", op);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)c[i].logit - (double)c[0].logit);
    if (s->p.top_p < 1.0f) { /* the smallest prefix reaching top_p; at least one */
        double acc = 0;
        int64_t keep = n;
        for (int64_t i = 0; i < n; i++) {
            acc += exp((double)c[i].logit - (double)c[0].logit) / sum;
            if (acc >= s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (s->p.min_p > 0.0f) { /* p_i >= min_p * p_max  <=>  logit_i >= logit_max + ln(min_p) */
        const double floor_logit = (double)c[0].logit + log((double)s->p.min_p);
        int64_t keep = 1;
        while (keep < n && (double)c[keep].logit >= floor_logit) keep++;
        n = keep;
    }
    sum = 0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)c[i].logit - (double)c[0].logit);
    const double u = (double)(next_u64(&s->state) >> 11) * 0x1.0p-53 * sum;
    double acc = 0;
    *token = c[n - 1].id;
    for (int64_t i = 0; i < n; i++) {
        acc += exp((double)c[i].logit - (double)c[0].logit);
        if (u < acc) {
            *token = c[i].id;
            break;
        }
    }
    return KR_OK;
}
