/*
 * gemm_probe.c — how close an AVX-512 register-blocked tile product can get
 * to the FMA ceiling on this CPU, one thread, operands in L1.
 *
 * The tiled CPU attention spends ~3/4 of its time in 6 x 64 tile products
 * (decode_avx512.c gemm6xv). This probe times that kernel's shape and
 * others with the same structure (M rows x 16 NV columns, A broadcast, NV
 * B vectors loaded per k, M NV accumulators) against 12 independent FMA
 * chains in registers (the ceiling `krserve bench` measures), so the
 * fraction it prints is the most the tile products can give the attention.
 * It is also how the ceiling loop's bug of session 8 showed: with the
 * chains merged by the compiler the "peak" was 3x what any kernel reached.
 *
 *   gcc -O3 -mavx512f -mfma -o /tmp/gemm_probe bench/gemm_probe.c && /tmp/gemm_probe
 *
 * Not part of the build or the tests; the figures are in docs/PERFORMANCE.md
 * (CPU history).
 */
#include "../tools/krserve/fma_chains.h"

#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define KI static inline __attribute__((always_inline))

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* C[M][16 NV] = A[M][K] B[K][16 NV]: gemm6xv's loop at any M, NV. */
KI void tile(const float *A, int64_t lda, const float *B, int64_t ldb, int64_t K, float *C,
             int64_t ldc, const int M, const int NV) {
    __m512 acc[16][6];
    for (int r = 0; r < M; r++)
        for (int x = 0; x < NV; x++) acc[r][x] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        __m512 b[6];
        for (int x = 0; x < NV; x++) b[x] = _mm512_loadu_ps(B + k * ldb + 16 * x);
        for (int r = 0; r < M; r++) {
            const __m512 a = _mm512_set1_ps(A[r * lda + k]);
            for (int x = 0; x < NV; x++) acc[r][x] = _mm512_fmadd_ps(a, b[x], acc[r][x]);
        }
    }
    for (int r = 0; r < M; r++)
        for (int x = 0; x < NV; x++) _mm512_storeu_ps(C + r * ldc + 16 * x, acc[r][x]);
}

typedef void (*tile_fn)(const float *, int64_t, const float *, int64_t, int64_t, float *, int64_t);
#define TILE(M, NV)                                                                                \
    __attribute__((noinline)) static void t_##M##_##NV(const float *A, int64_t lda,                \
                                                       const float *B, int64_t ldb, int64_t K,     \
                                                       float *C, int64_t ldc) {                    \
        tile(A, lda, B, ldb, K, C, ldc, M, NV);                                                    \
    }
TILE(6, 4)
TILE(5, 5)
TILE(8, 3)
TILE(12, 2)
TILE(14, 2)
TILE(4, 6)

/* GFLOP/s of f over 10 row blocks x 2 column blocks of a K = 128 product
 * (A 60-140 rows x 128, B 128 x 2 x 16 NV: ~100 KB at most, L1/L2). */
static double time_tile(tile_fn f, int M, int NV) {
    const int K = 128, N = 16 * NV, ldb = 2 * N, rows = 10 * M;
    float *A = aligned_alloc(64, sizeof(float) * (size_t)(rows * K)),
          *B = aligned_alloc(64, sizeof(float) * (size_t)(K * ldb)),
          *C = aligned_alloc(64, sizeof(float) * (size_t)(rows * ldb));
    if (!A || !B || !C) return 0;
    for (int i = 0; i < rows * K; i++) A[i] = 1e-3f * (float)(i % 7);
    for (int i = 0; i < K * ldb; i++) B[i] = 1e-3f * (float)(i % 5);
    long reps = 0;
    double t0 = now(), t;
    do {
        for (int rb = 0; rb < rows; rb += M)
            for (int j = 0; j < ldb; j += N) f(A + rb * K, K, B + j, ldb, K, C + rb * ldb + j, ldb);
        reps++;
    } while ((t = now()) - t0 < 0.5);
    const double flops = 2.0 * rows * ldb * K * (double)reps;
    free(A);
    free(B);
    free(C);
    return flops / (t - t0) / 1e9;
}

int main(void) {
    double best = 0;
    for (int trial = 0; trial < 3; trial++) {
        const int64_t iters = 40000000;
        const double t0 = now();
        volatile float sink = kb_fma_chains_avx512(iters); /* the bench's ceiling loop */
        (void)sink;
        const double g = 12.0 * 16 * 2 * (double)iters / (now() - t0) / 1e9;
        if (g > best) best = g;
    }
    printf("FMA chains, no loads (the bench's ceiling loop), 1 thread: %.1f GFLOP/s\n", best);
    const struct {
        const char *name;
        tile_fn f;
        int M, NV;
    } t[] = {
        {"6 x 64 (gemm6x64)", t_6_4, 6, 4}, {"5 x 80", t_5_5, 5, 5},    {"8 x 48", t_8_3, 8, 3},
        {"12 x 32", t_12_2, 12, 2},         {"14 x 32", t_14_2, 14, 2}, {"4 x 96", t_4_6, 4, 6}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        const double g = time_tile(t[i].f, t[i].M, t[i].NV);
        printf("tile %-18s %6.1f GFLOP/s  %5.1f %% of the chains\n", t[i].name, g, 100 * g / best);
    }
    return 0;
}
