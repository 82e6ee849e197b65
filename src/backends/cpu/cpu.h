/*
 * cpu.h — the CPU SIMD backend's shared declarations. The backend table
 * (cpu_backend.c) picks one instruction-set variant at probe time; each
 * variant lives in its own sub-folder (x86_avx2/ today; x86_avx512/ and
 * arm_neon/ would sit beside it) and fills a kr_cpu_kernels table, so the
 * dispatch never changes when a variant is added.
 *
 * Every variant serves the same cases (cpu_backend.c's supports() decides,
 * once, for all of them) and must agree with the reference backend within
 * the conformance tolerances.
 */
#ifndef KR_BACKENDS_CPU_H
#define KR_BACKENDS_CPU_H

#include "../../core/backend.h"

typedef struct kr_cpu_kernels {
    const char *isa; /* "avx2+fma+f16c" */
    kr_status (*attention)(const kr_attention_args *a, char *err, size_t err_len);
    kr_status (*rope)(const kr_rope_args *a, char *err, size_t err_len);
    kr_status (*kv_append)(const kr_kv_append_args *a, char *err, size_t err_len);
} kr_cpu_kernels;

/* An append whose rows written by one thread reach this many bytes (a
 * prefill chunk, not a decode step's token) stores them past the caches
 * (non-temporal stores: no read for ownership of lines written whole); a
 * shorter one keeps write-back stores, so the attention after it finds its
 * rows in cache (CPU history 27). The float append driver and the wide
 * int8 quantiser both decide by it. */
#define KR_CPU_STREAM_BYTES ((int64_t)1 << 20)

/* The AVX2 + FMA + F16C variant (x86_avx2/), or NULL when the build has no
 * such variant (not x86-64). Call only when the CPU has the features. */
const kr_cpu_kernels *kr_cpu_avx2_kernels(void);

/* Micro-kernels a wider ISA can give the tiled driver (x86_avx2/); the
 * decode ones:
 * qk: S[r * 64 + j] = q[r] . K[j] for R rows and the n cache rows krow[j]
 *     (int8: codes times the group scales gk[j * ng + g]);
 * pv: O[r] = O[r] * corr[r] + sum_{j_lo <= j < j_hi} P[r * 64 + j] V[j]
 *     (int8: codes times gv[j * ng + g]).
 * R is 1, 4 or 6; head_dim a multiple of 16.
 * pf (NULL: none): bytes of the next tile to prefetch while the kernel
 * works, spread over its keys (CPU history 20). */
typedef struct kr_cpu_pf {
    const char *p, *end; /* prefetch [p, end) ... */
    int64_t step;        /* ... step bytes (a multiple of 64) with each key the kernel takes */
} kr_cpu_pf;

/* pf's share of keys [j, j + nk) of a kernel call, in address order, not
 * past pf->end (into L2: prefetcht1 on x86). */
static inline void kr_cpu_pf_keys(const kr_cpu_pf *pf, int64_t j, int nk) {
    const char *x = pf->p + j * pf->step, *e = x + nk * pf->step;
    if (e > pf->end) e = pf->end;
    for (; x < e; x += 64) __builtin_prefetch(x, 0, 2);
}

typedef struct kr_cpu_decode_kernels {
    /* qs: this head's q_state_bytes of state for the unit (its rows of q are
     * the same in every tile), for qk to keep what it derives from q across
     * the unit's tiles; its first 64 bytes are zero when the unit starts (a
     * "not yet" flag belongs there); NULL when q_state_bytes is 0. */
    void (*qk)(const float *q, int64_t D, const char *const *krow, const float *gk, int64_t ng,
               int64_t n, float *S, kr_dtype dt, int R, const kr_cpu_pf *pf, void *qs);
    void (*pv)(const float *P, int64_t j_lo, int64_t j_hi, const char *const *vrow, const float *gv,
               int64_t ng, int64_t D, float *O, const float *corr, kr_dtype dt, int R,
               const kr_cpu_pf *pf);
    /* The tiled (prefill) path's register kernel at 32 columns, or NULL:
     * C[r][0..32) = (scale ? C[r][0..32) * scale[r] : 0) + sum_{k < K} A[r][k] B[k][0..32)
     * for 6 rows (the driver's block). */
    void (*gemm6x32)(const float *A, int64_t lda, const float *B, int64_t ldb, int64_t K, float *C,
                     int64_t ldc, const float *scale);
    /* The same at 64 columns (24 accumulators), or NULL. */
    void (*gemm6x64)(const float *A, int64_t lda, const float *B, int64_t ldb, int64_t K, float *C,
                     int64_t ldc, const float *scale);
    /* The online-softmax step of one row over a tile it sees whole (n <= 64
     * scores in s, log2 units, no mask): folds them into (*m, *l), leaves
     * P = 2^(s - m) in s, returns the factor for the row's earlier output;
     * a NaN score makes the row NaN. NULL: the driver's own. */
    float (*softmax)(float *s, int64_t n, float *m, float *l);
    /* One int8 cache row of D values (D a multiple of 32) dequantised into
     * out: code x group scale x chan[c], rounded as kr_kv_int8_dequant_row
     * does; or NULL. */
    void (*dequant_row)(const int8_t *q, const uint8_t *meta, const float *chan, int64_t D,
                        float *out);
    size_t q_state_bytes; /* a multiple of 64, or 0: qk keeps no state */
} kr_cpu_decode_kernels;

/* The tiled attention driver (x86_avx2/) with its own decode kernels (dk
 * NULL) or a wider variant's. */
kr_status kr_cpu_tiled_attention(const kr_attention_args *a, const kr_cpu_decode_kernels *dk,
                                 char *err, size_t err_len);

/* A run of consecutive tokens of one sequence for the int8 cache, every kv
 * head's K and V row, as the append driver (x86_avx2/rope_avx2.c) hands it
 * to a wider variant's quantiser. */
typedef struct kr_cpu_i8_run {
    const char *k, *v;        /* the first token's head-0 K / V input row (last dim contiguous) */
    int64_t k_hs, v_hs;       /* bytes from one head's input row to the next */
    int64_t k_ts, v_ts;       /* bytes from one token's input rows to the next */
    kr_dtype k_dt, v_dt;      /* f32, f16 or bf16 */
    int64_t n_tok, Hkv, D;    /* D a multiple of KR_KV_INT8_GROUP, at most KR_CPU_MAX_HEAD_DIM */
    const int64_t *positions; /* the tokens' RoPE positions, or NULL: no RoPE */
    const double *inv_freq;
    double attention_factor;
    int64_t half;                 /* rotary_dim / 2 */
    kr_rope_layout layout;        /* half-split: half % 16 == 0; interleaved: half % 8 == 0 */
    const float *k_chan, *v_chan; /* the layer's channel factors, [Hkv][D] */
    const bool *ones;             /* [2 Hkv]: K heads then V heads whose factors are all 1 */
    int8_t *kq, *vq;  /* the first token's cache slot, head 0; token i head h at + (i Hkv + h) D */
    uint8_t *km, *vm; /* its metadata; token i head h at + (i Hkv + h) M */
} kr_cpu_i8_run;

/* What a wider variant gives the append driver; any member may be NULL.
 * rope_table: kr_avx2_rope_table's values, bit for bit;
 * i8_run: kr_ref_quantize_row's codes and metadata for every row of the
 *     run, bit for bit, K rotated first as ref rotates it. */
typedef struct kr_cpu_append_kernels {
    void (*rope_table)(double pos, const double *inv_freq, int64_t half, double attention_factor,
                       float *cosv, float *sinv);
    /* scratch: i8_scratch bytes, 64-byte aligned, the calling thread's own */
    void (*i8_run)(const kr_cpu_i8_run *t, void *scratch);
    size_t i8_scratch;
} kr_cpu_append_kernels;

/* The append driver (x86_avx2/) with its own kernels (ak NULL) or a wider
 * variant's. */
kr_status kr_cpu_kv_append(const kr_kv_append_args *a, const kr_cpu_append_kernels *ak, char *err,
                           size_t err_len);

/* The AVX-512 variant's append kernels (x86_avx512/append_avx512.c). */
const kr_cpu_append_kernels *kr_cpu_avx512_append_kernels(void);

/* The AVX-512 variant (x86_avx512/): the AVX2 kernels with AVX-512 decode
 * micro-kernels; NULL when the build has none. Call only when the CPU has
 * AVX-512 F, BW and VL besides the AVX2 variant's features; int8_dot only
 * when it also has AVX512_VNNI (the int8 decode then takes integer dot
 * products: x86_avx512/decode_vnni.c). */
const kr_cpu_kernels *kr_cpu_avx512_kernels(bool int8_dot);

/* decode_vnni.c: kr_cpu_decode_kernels.qk / .pv for int8 rows by integer
 * dot products (q quantised once a unit when qs is given, else per call; P
 * per call); false when the case is not theirs (head_dim not a multiple of
 * 64, ng not head_dim / 32, R not 1, 4 or 6, more than 64 keys, no keys) or
 * an input is not finite; nothing is written to S or O then. qs: NULL, or
 * KR_CPU_VNNI_Q_STATE_BYTES as kr_cpu_decode_kernels.qk describes. */
#define KR_CPU_VNNI_Q_STATE_BYTES 3712
bool kr_cpu_vnni_qk(const float *q, int64_t D, const char *const *krow, const float *gk, int64_t ng,
                    int64_t n, float *S, int R, const kr_cpu_pf *pf, void *qs);
bool kr_cpu_vnni_pv(const float *P, int64_t j_lo, int64_t j_hi, const char *const *vrow,
                    const float *gv, int64_t ng, int64_t D, float *O, const float *corr, int R,
                    const kr_cpu_pf *pf);

/* Largest head_dim the tiled kernels hold in their scratch tiles. */
#define KR_CPU_MAX_HEAD_DIM 256

#endif /* KR_BACKENDS_CPU_H */
