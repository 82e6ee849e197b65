/*
 * common.c — the shared test helpers declared in common.h: PRNG, buffers,
 * norms and the float64 oracles.
 */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t kt_base_seed(void) {
    static uint64_t seed;
    static bool done;
    if (!done) {
        const char *e = getenv("KR_TEST_SEED");
        seed = e ? strtoull(e, NULL, 0) : 20261126ull;
        done = true;
        printf("# KR_TEST_SEED=%llu\n", (unsigned long long)seed);
    }
    return seed;
}

uint64_t kt_next(kt_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

kt_rng kt_rng_for(uint64_t case_id) {
    kt_rng r = {kt_base_seed() ^ (case_id * 0xd1342543de82ef95ull)};
    kt_next(&r);
    return r;
}

double kt_uniform(kt_rng *r) { return (double)(kt_next(r) >> 11) * 0x1.0p-53; }

double kt_normal(kt_rng *r) {
    double u1 = kt_uniform(r), u2 = kt_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

int64_t kt_int(kt_rng *r, int64_t n) { return (int64_t)(kt_next(r) % (uint64_t)n); }

bool kt_quick(void) { return getenv("KR_TEST_QUICK") != NULL; }

kt_buf kt_buf_new(kr_dtype dt, int64_t n) {
    kt_buf b = {calloc((size_t)n, kr_dtype_size(dt)), dt, n};
    assert_non_null(b.data);
    return b;
}

void kt_buf_free(kt_buf *b) {
    free(b->data);
    b->data = NULL;
}

kr_status kt_read_seq(kr_context *ctx, const kr_kv_cache *c, int64_t layer, int64_t b, int64_t n,
                      int64_t Hkv, int64_t D, kt_buf *k, kt_buf *v) {
    *k = kt_buf_new(KR_F32, n * Hkv * D);
    *v = kt_buf_new(KR_F32, k->n);
    kr_tensor tk = kr_tensor_bshd(k->data, KR_F32, 1, n, Hkv, D);
    kr_tensor tv = kr_tensor_bshd(v->data, KR_F32, 1, n, Hkv, D);
    return kr_kv_cache_read(ctx, c, layer, b, 0, n, &tk, &tv);
}

void kt_poison(kt_buf *b) {
    for (int64_t i = 0; i < b->n; i++) kt_set(b, i, NAN);
}

double kt_get(const kt_buf *b, int64_t i) {
    switch (b->dt) {
    case KR_F32: return ((const float *)b->data)[i];
    case KR_F16: return kr_f16_to_f32(((const uint16_t *)b->data)[i]);
    case KR_BF16: return kr_bf16_to_f32(((const uint16_t *)b->data)[i]);
    case KR_I8: return ((const int8_t *)b->data)[i];
    default: return NAN;
    }
}

void kt_set(kt_buf *b, int64_t i, double x) {
    switch (b->dt) {
    case KR_F32: ((float *)b->data)[i] = (float)x; break;
    case KR_F16: ((uint16_t *)b->data)[i] = kr_f32_to_f16((float)x); break;
    case KR_BF16: ((uint16_t *)b->data)[i] = kr_f32_to_bf16((float)x); break;
    case KR_I8: ((int8_t *)b->data)[i] = (int8_t)x; break;
    default: break;
    }
}

double kt_round(kr_dtype dt, double x) {
    switch (dt) {
    case KR_F32: return (float)x;
    case KR_F16: return kr_f16_to_f32(kr_f32_to_f16((float)x));
    case KR_BF16: return kr_bf16_to_f32(kr_f32_to_bf16((float)x));
    default: return x;
    }
}

double kt_rel_err(const double *got, const double *want, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) && isfinite(want[i])) return INFINITY;
        double d = got[i] - want[i];
        num += d * d;
        den += want[i] * want[i];
    }
    if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
    return sqrt(num / den);
}

/* Is key j visible to query row i? Written from the rules in ops.h, apart
 * from the library's own range computation. */
static bool oracle_visible(const kt_attn_case *c, int64_t L, int64_t i, int64_t j) {
    const int64_t p = L - c->Sq + i;
    if (j >= L) return false;
    if (c->causal && j > p) return false;
    if (c->wl >= 0 && j < p - c->wl) return false;
    if (c->wr >= 0 && j > p + c->wr) return false;
    return true;
}

void kt_oracle_attention(const kt_attn_case *c, const double *q, const double *k, const double *v,
                         double *out, double *lse) {
    const int64_t D = c->D, group = c->H / c->Hkv;
    double *s = malloc(sizeof(double) * (size_t)c->Skv);
    assert_non_null(s);
    for (int64_t b = 0; b < c->B; b++) {
        const int64_t L = c->kv_lens ? c->kv_lens[b] : c->Skv;
        for (int64_t h = 0; h < c->H; h++) {
            const int64_t hk = h / group;
            for (int64_t i = 0; i < c->Sq; i++) {
                const double *qr = q + ((b * c->Sq + i) * c->H + h) * D;
                double mx = -INFINITY;
                for (int64_t j = 0; j < c->Skv; j++) {
                    s[j] = -INFINITY;
                    if (!oracle_visible(c, L, i, j)) continue;
                    const double *kr = k + ((b * c->Skv + j) * c->Hkv + hk) * D;
                    double dot = 0.0;
                    for (int64_t d = 0; d < D; d++) dot += qr[d] * kr[d];
                    s[j] = dot * c->scale;
                    if (c->mask) {
                        int64_t mb = c->mask_b == 1 ? 0 : b, mh = c->mask_h == 1 ? 0 : h;
                        s[j] += c->mask[((mb * c->mask_h + mh) * c->Sq + i) * c->Skv + j];
                    }
                    if (s[j] > mx) mx = s[j];
                }
                double *o = out + ((b * c->Sq + i) * c->H + h) * D;
                if (mx == -INFINITY) {
                    for (int64_t d = 0; d < D; d++) o[d] = 0.0;
                    if (lse) lse[(b * c->H + h) * c->Sq + i] = -INFINITY;
                    continue;
                }
                double sum = 0.0;
                for (int64_t d = 0; d < D; d++) o[d] = 0.0;
                for (int64_t j = 0; j < c->Skv; j++) {
                    if (s[j] == -INFINITY) continue;
                    const double p = exp(s[j] - mx);
                    sum += p;
                    const double *vr = v + ((b * c->Skv + j) * c->Hkv + hk) * D;
                    for (int64_t d = 0; d < D; d++) o[d] += p * vr[d];
                }
                for (int64_t d = 0; d < D; d++) o[d] /= sum;
                if (lse) lse[(b * c->H + h) * c->Sq + i] = mx + log(sum);
            }
        }
    }
    free(s);
}

void kt_oracle_rope(double *x, int64_t n_tok, int64_t H, int64_t D, const int64_t *pos,
                    const double *inv_freq, int64_t rotary_dim, kr_rope_layout layout,
                    double attention_factor) {
    const int64_t half = rotary_dim / 2;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t h = 0; h < H; h++) {
            double *r = x + (t * H + h) * D;
            for (int64_t i = 0; i < half; i++) {
                const int64_t a = layout == KR_ROPE_INTERLEAVED ? 2 * i : i;
                const int64_t b = layout == KR_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
                const double ang = (double)pos[t] * inv_freq[i];
                const double c = cos(ang) * attention_factor, s = sin(ang) * attention_factor;
                const double xa = r[a], xb = r[b];
                r[a] = xa * c - xb * s;
                r[b] = xa * s + xb * c;
            }
        }
}

kr_context *kt_context(void) {
    kr_context *ctx = NULL;
    char err[256];
    kr_status s = kr_context_create(NULL, &ctx, err, sizeof err);
    if (s != KR_OK) fail_msg("kr_context_create: %s", err);
    return ctx;
}

int kt_setup_context(void **state) {
    *state = kt_context();
    return 0;
}

int kt_teardown_context(void **state) {
    kr_context_free(*state);
    return 0;
}

int kt_tmpdir(const char *stem, char *dir) {
    snprintf(dir, 256, "/tmp/%s_XXXXXX", stem);
    return mkdtemp(dir) ? 0 : -1;
}

int kt_tmpdir_remove(const char *dir) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

void kt_write_text(const char *dir, const char *name, const char *text) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) fail_msg("cannot write %s", path);
    fputs(text, f);
    fclose(f);
}
