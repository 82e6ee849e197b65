/*
 * common.h — what every test program shares: the seeded PRNG (so a failure
 * can be re-run exactly), buffers in any dtype with poisoning, error norms,
 * and the float64 attention and RoPE oracles (common.c), which are written
 * here independently of the library's own code.
 */
#ifndef KR_TESTS_COMMON_H
#define KR_TESTS_COMMON_H

#include <krserve/krserve.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

/* ---- PRNG: splitmix64, seeded from KR_TEST_SEED (default below) --------- */
typedef struct kt_rng {
    uint64_t s;
} kt_rng;

uint64_t kt_base_seed(void); /* KR_TEST_SEED or 20261126; printed once */
kt_rng kt_rng_for(uint64_t case_id);
uint64_t kt_next(kt_rng *r);
double kt_uniform(kt_rng *r);         /* [0, 1) */
double kt_normal(kt_rng *r);          /* N(0, 1) */
int64_t kt_int(kt_rng *r, int64_t n); /* [0, n) */
bool kt_quick(void);                  /* KR_TEST_QUICK set: smaller grids (valgrind) */

/* ---- buffers ------------------------------------------------------------ */
/* A host buffer of n elements of dtype dt. */
typedef struct kt_buf {
    void *data;
    kr_dtype dt;
    int64_t n;
} kt_buf;

kt_buf kt_buf_new(kr_dtype dt, int64_t n);
void kt_buf_free(kt_buf *b);
void kt_poison(kt_buf *b); /* NaN in every element */
double kt_get(const kt_buf *b, int64_t i);
void kt_set(kt_buf *b, int64_t i, double x); /* rounds to the dtype */
double kt_round(kr_dtype dt, double x);      /* x rounded to dt and back */
/* Tokens [0, n) of sequence b of a cache layer read back as f32 into new
 * buffers k and v (n * n_kv_heads * head_dim each); the read's status. */
kr_status kt_read_seq(kr_context *ctx, const kr_kv_cache *c, int64_t layer, int64_t b, int64_t n,
                      int64_t Hkv, int64_t D, kt_buf *k, kt_buf *v);

/* ---- norms -------------------------------------------------------------- */
/* ||got - want|| / ||want||; 0 when both are zero; +inf if got has NaN/inf
 * where want is finite. */
double kt_rel_err(const double *got, const double *want, int64_t n);

/* ---- float64 oracle ----------------------------------------------------- */
typedef struct kt_attn_case {
    int64_t B, Sq, Skv, H, Hkv, D;
    double scale;
    int causal;
    int64_t wl, wr;
    const double *mask; /* [Bm][Hm][Sq][Skv] or NULL */
    int64_t mask_b, mask_h;
    const int64_t *kv_lens;
} kt_attn_case;

/* q [B][Sq][H][D], k/v [B][Skv][Hkv][D], out [B][Sq][H][D], lse [B][H][Sq]. */
void kt_oracle_attention(const kt_attn_case *c, const double *q, const double *k, const double *v,
                         double *out, double *lse);

/* Rotates x [n_tok][H][D] in place with float64 cos/sin. */
void kt_oracle_rope(double *x, int64_t n_tok, int64_t H, int64_t D, const int64_t *pos,
                    const double *inv_freq, int64_t rotary_dim, kr_rope_layout layout,
                    double attention_factor);

/* A context with default options; fails the test if it cannot be made. */
kr_context *kt_context(void);
/* cmocka group fixtures: *state is such a context. */
int kt_setup_context(void **state);
int kt_teardown_context(void **state);

/* ---- files ------------------------------------------------------------- */
/* A fresh directory /tmp/<stem>_XXXXXX into dir (256 bytes); 0 on success. */
int kt_tmpdir(const char *stem, char *dir);
/* Removes a directory made by kt_tmpdir with everything in it; 0 on success. */
int kt_tmpdir_remove(const char *dir);
/* Writes text to dir/name (fails the test if it cannot). */
void kt_write_text(const char *dir, const char *name, const char *text);

#endif /* KR_TESTS_COMMON_H */
