/*
 * stream_probe.c — how the CPU decode's memory stream could be fed, measured
 * without the attention around it.
 *
 * The decode reads a cache laid out [position][kv head][head_dim] (fp16, 8 kv
 * heads x 128 = 2 KiB a position) one tile of 64 positions at a time, head by
 * head, so a head's rows sit 2 KiB apart: the hardware prefetchers do not
 * follow that, and the driver prefetches the next tile line by line
 * (prefetcht1, 4096 lines a tile of K and V). CPU history 14 and 19 found the
 * compute and that stream adding up instead of overlapping. This probe runs
 * the same walk with stand-in compute (per row: 8 conversions and 32 FMAs,
 * as q.k and p.V of four query heads cost) under several ways of bringing
 * the next tile in, two threads each over its half of the positions, and
 * prints GB/s of cache bytes, next to a plain sequential read of the same
 * bytes (the bench's read ceiling). Modes:
 *
 *   seq     sequential read of the buffers (sum of the lines), no compute
 *   l1      the walk's compute alone (every row within the first 32 positions)
 *   none    the walk, no software prefetch
 *   burst   every line of the next tile, prefetcht1, before the tile (the driver today)
 *   spread  the same lines spread over the tile's heads (1/8 before each head)
 *   pages   only the first two lines of each 4 KiB page of the next tile,
 *           leaving the rest of the page to the L2 streamer
 *   pages2  as pages, two tiles ahead
 *   walk    the next tile in address order spread evenly over this tile's
 *           steps (head x position): one line in four, the rest left to the
 *           L2 streamer
 *   fine    as walk, every line (K's and V's during the K rows)
 *   finekv  as fine, K's lines during the K rows and V's during the V rows
 *   rows    with each row, the same head's row one tile ahead (K with K, V
 *           with V): the same lines as finekv, in the heads' order
 *
 *   gcc -O3 -mavx512f -mfma -mf16c -fopenmp -o /tmp/stream_probe bench/stream_probe.c
 *   /tmp/stream_probe [positions] [rounds]      (default 32768, 5)
 *
 * Not part of the build or the tests; the figures are in docs/PERFORMANCE.md
 * (CPU history).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HKV 8
#define D 128
#define TK 64
#define ROW_BYTES (D * 2)
#define POS_BYTES (HKV * ROW_BYTES)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Stand-in for one row's q.k or p.V over four query heads: 8 conversions and
 * 32 FMAs into eight independent accumulators (four heads x two halves). */
typedef struct {
    __m512 a[8];
} accs;

static inline void row_work(const uint16_t *row, accs *acc, const __m512 *q) {
    for (int c = 0; c < D; c += 16) {
        const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + c)));
        const int half = (c / 16) & 1;
        for (int h = 0; h < 4; h++)
            acc->a[2 * h + half] = _mm512_fmadd_ps(x, q[h], acc->a[2 * h + half]);
    }
}

static void pf_lines(const char *p, size_t n) {
    for (size_t o = 0; o < n; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
}

static void pf_pages(const char *p, size_t n) {
    for (size_t o = 0; o < n; o += 4096) {
        _mm_prefetch(p + o, _MM_HINT_T1);
        _mm_prefetch(p + o + 64, _MM_HINT_T1);
    }
}

enum {
    M_SEQ,
    M_L1,
    M_NONE,
    M_BURST,
    M_SPREAD,
    M_PAGES,
    M_PAGES2,
    M_WALK,
    M_FINE,
    M_FINEKV,
    M_ROWS,
    M_COUNT
};
static const char *names[M_COUNT] = {"seq",    "l1",   "none", "burst",  "spread", "pages",
                                     "pages2", "walk", "fine", "finekv", "rows"};

/* Where row (position j, head h) is; mode l1 keeps every row in the first
 * 32 positions (pure compute). */
static inline size_t koff(int mode, int64_t j, int h) {
    if (mode == M_L1) j &= 31;
    return (size_t)j * POS_BYTES + (size_t)h * ROW_BYTES;
}

static float run(int mode, const char *K, const char *V, int64_t lo, int64_t hi) {
    accs acc;
    __m512 q[4];
    for (int i = 0; i < 8; i++) acc.a[i] = _mm512_setzero_ps();
    for (int h = 0; h < 4; h++) q[h] = _mm512_set1_ps(1e-3f * (float)(h + 1));
    if (mode == M_SEQ) {
        __m512i s = _mm512_setzero_si512();
        for (const char *base = K;; base = V) {
            for (int64_t o = lo * POS_BYTES; o < hi * POS_BYTES; o += 64)
                s = _mm512_xor_si512(s, _mm512_load_si512((const void *)(base + o)));
            if (base == V) break;
        }
        return (float)_mm512_reduce_add_epi32(s);
    }
    for (int64_t j0 = lo; j0 < hi; j0 += TK) {
        const int64_t n = hi - j0 < TK ? hi - j0 : TK;
        const int64_t nx = hi - j0 - n < TK ? hi - j0 - n : TK; /* next tile's positions */
        const size_t tile_off = (size_t)(j0 + n) * POS_BYTES, tile_len = (size_t)nx * POS_BYTES;
        if (nx > 0 && mode == M_BURST) {
            pf_lines(K + tile_off, tile_len);
            pf_lines(V + tile_off, tile_len);
        }
        if (nx > 0 && mode == M_PAGES) {
            pf_pages(K + tile_off, tile_len);
            pf_pages(V + tile_off, tile_len);
        }
        if (mode == M_PAGES2 && j0 + n + TK < hi) {
            const int64_t n2 = hi - j0 - n - TK < TK ? hi - j0 - n - TK : TK;
            pf_pages(K + tile_off + (size_t)TK * POS_BYTES, (size_t)n2 * POS_BYTES);
            pf_pages(V + tile_off + (size_t)TK * POS_BYTES, (size_t)n2 * POS_BYTES);
            if (j0 == lo) { /* the first tiles */
                pf_pages(K + (size_t)j0 * POS_BYTES, (size_t)(n + nx) * POS_BYTES);
                pf_pages(V + (size_t)j0 * POS_BYTES, (size_t)(n + nx) * POS_BYTES);
            }
        }
        for (int h = 0; h < HKV; h++) {
            if (nx > 0 && mode == M_SPREAD) {
                const size_t part = tile_len / HKV;
                pf_lines(K + tile_off + (size_t)h * part, part);
                pf_lines(V + tile_off + (size_t)h * part, part);
            }
            for (int64_t j = 0; j < n; j++) {
                /* the next tile in address order, evenly over this tile's
                 * h x j steps: one line in four (walk) or every line (fine) */
                const size_t o = tile_off + (size_t)(h * n + j) * (tile_len / (size_t)(HKV * n));
                if (mode == M_WALK && nx > 0) {
                    _mm_prefetch(K + o, _MM_HINT_T1);
                    _mm_prefetch(V + o, _MM_HINT_T1);
                }
                if (mode == M_FINE && nx > 0)
                    for (size_t l = 0; l < tile_len / (size_t)(HKV * n); l += 64) {
                        _mm_prefetch(K + o + l, _MM_HINT_T1);
                        _mm_prefetch(V + o + l, _MM_HINT_T1);
                    }
                if (mode == M_ROWS && j < nx)
                    for (size_t l = 0; l < ROW_BYTES; l += 64)
                        _mm_prefetch(K + tile_off + (size_t)j * POS_BYTES + (size_t)h * ROW_BYTES +
                                         l,
                                     _MM_HINT_T1);
                if (mode == M_FINEKV && nx > 0)
                    for (size_t l = 0; l < tile_len / (size_t)(HKV * n); l += 64)
                        _mm_prefetch(K + o + l, _MM_HINT_T1);
                row_work((const uint16_t *)(K + koff(mode, j0 + j, h)), &acc, q);
            }
            for (int64_t j = 0; j < n; j++) {
                if (mode == M_ROWS && j < nx)
                    for (size_t l = 0; l < ROW_BYTES; l += 64)
                        _mm_prefetch(V + tile_off + (size_t)j * POS_BYTES + (size_t)h * ROW_BYTES +
                                         l,
                                     _MM_HINT_T1);
                if (mode == M_FINEKV && nx > 0) { /* V's half of the lines here */
                    const size_t step = tile_len / (size_t)(HKV * n);
                    const size_t o = tile_off + (size_t)(h * n + j) * step;
                    for (size_t l = 0; l < step; l += 64) _mm_prefetch(V + o + l, _MM_HINT_T1);
                }
                row_work((const uint16_t *)(V + koff(mode, j0 + j, h)), &acc, q);
            }
        }
    }
    __m512 t = acc.a[0];
    for (int i = 1; i < 8; i++) t = _mm512_add_ps(t, acc.a[i]);
    return _mm512_reduce_add_ps(t);
}

int main(int argc, char **argv) {
    const int64_t npos = argc > 1 ? atoll(argv[1]) : 32768;
    const int rounds = argc > 2 ? atoi(argv[2]) : 5;
    const size_t bytes = (size_t)npos * POS_BYTES;
    char *K = aligned_alloc(4096, bytes), *V = aligned_alloc(4096, bytes);
    /* a buffer to evict both between repetitions */
    const size_t flush_bytes = (size_t)256 << 20;
    char *F = aligned_alloc(4096, flush_bytes);
    if (!K || !V || !F) return 1;
    for (size_t i = 0; i < bytes; i += 2) {
        K[i] = (char)(i * 7);
        K[i + 1] = 0x20;
        V[i] = (char)(i * 13);
        V[i + 1] = 0x21;
    }
    memset(F, 1, flush_bytes);
    printf("positions %lld, K+V %.1f MiB, %d threads\n", (long long)npos,
           2.0 * (double)bytes / (1 << 20), omp_get_max_threads());
    double best[M_COUNT], sum[M_COUNT];
    for (int m = 0; m < M_COUNT; m++) best[m] = 1e30, sum[m] = 0;
    volatile float sink = 0;
    for (int r = 0; r < rounds; r++)
        for (int m = 0; m < M_COUNT; m++) {
            for (size_t i = 0; i < flush_bytes; i += 64) F[i]++;
            const double t0 = now();
#pragma omp parallel
            {
                const int nt = omp_get_num_threads(), t = omp_get_thread_num();
                const int64_t per = (npos / nt + TK - 1) / TK * TK;
                const int64_t lo = t * per, hi = lo + per < npos ? lo + per : npos;
                const float s = run(m, K, V, lo, hi);
#pragma omp atomic
                sink += s;
            }
            const double dt = now() - t0;
            if (dt < best[m]) best[m] = dt;
            sum[m] += dt;
        }
    printf("%-8s %10s %10s %10s\n", "mode", "best ms", "mean ms", "best GB/s");
    for (int m = 0; m < M_COUNT; m++)
        printf("%-8s %10.2f %10.2f %10.1f\n", names[m], 1e3 * best[m], 1e3 * sum[m] / rounds,
               2.0 * (double)bytes / best[m] / 1e9);
    free(K);
    free(V);
    free(F);
    return sink == 12345.0f;
}
