/*
 * bench_ceiling.c — this machine's ceilings, measured in the same run as the
 * cases they judge:
 *   FMA peak   each thread runs independent chains of fp32 FMAs held in
 *              registers (enough chains to cover the FMA latency), so the
 *              loop is bound by FMA issue alone; 16-wide where the CPU has
 *              AVX-512 (KRSERVE_BENCH_CEILING_AVX2=1: 8-wide anyway), else
 *              8-wide AVX2, else scalar;
 *   read BW    each thread sums its share of a buffer larger than the
 *              last-level cache (twice the LLC the OS reports, 256 MiB at
 *              least, 1 GiB at most), so the bytes come from DRAM.
 * Each is the best of a few trials. Threads are plain pthreads.
 */
#include "bench.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include "fma_chains.h"

#include <immintrin.h>
#define KB_X86 1
#else
#define KB_X86 0
#endif

double kb_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct worker {
    pthread_t tid;
    int64_t iters;
    const float *buf;
    size_t n; /* floats */
    double sink;
    double flops;
} worker;

#if KB_X86
/* 12 independent chains held in named registers (an array of vectors was
 * compiled with a loop and memory traffic around it, and measured ~65 % of
 * the AVX2 peak on a Zen 5 host), one FMA each per iteration:
 * 12 chains x 8 lanes x 2 FLOP per iteration. Every chain starts from its
 * own value: chains that start equal and step alike are one value to the
 * compiler, which then keeps two of them and the loop ran 2 FMAs where 12
 * were counted (the 650 GFLOP/s "ceiling" of session 8; the disassembly
 * showed it). The sum of all of them is kept, so none is dead. */
__attribute__((target("avx2,fma"))) static void *fma_avx2(void *p) {
    worker *w = p;
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0.10f), a1 = _mm256_set1_ps(0.11f), a2 = _mm256_set1_ps(0.12f),
           a3 = _mm256_set1_ps(0.13f), a4 = _mm256_set1_ps(0.14f), a5 = _mm256_set1_ps(0.15f),
           a6 = _mm256_set1_ps(0.16f), a7 = _mm256_set1_ps(0.17f), a8 = _mm256_set1_ps(0.18f),
           a9 = _mm256_set1_ps(0.19f), a10 = _mm256_set1_ps(0.20f), a11 = _mm256_set1_ps(0.21f);
    for (int64_t it = 0; it < w->iters; it++) {
        a0 = _mm256_fmadd_ps(a0, x, y), a1 = _mm256_fmadd_ps(a1, x, y);
        a2 = _mm256_fmadd_ps(a2, x, y), a3 = _mm256_fmadd_ps(a3, x, y);
        a4 = _mm256_fmadd_ps(a4, x, y), a5 = _mm256_fmadd_ps(a5, x, y);
        a6 = _mm256_fmadd_ps(a6, x, y), a7 = _mm256_fmadd_ps(a7, x, y);
        a8 = _mm256_fmadd_ps(a8, x, y), a9 = _mm256_fmadd_ps(a9, x, y);
        a10 = _mm256_fmadd_ps(a10, x, y), a11 = _mm256_fmadd_ps(a11, x, y);
    }
    const __m256 s =
        _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                    _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7))),
                      _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    w->sink = out[0];
    w->flops = (double)w->iters * 12 * 8 * 2;
    return NULL;
}

/* The same with 16 lanes (fma_chains.h), for CPUs with AVX-512 (the widest
 * FMA they have: the CPU backend's AVX-512 kernels run on it). */
__attribute__((target("avx512f"))) static void *fma_avx512(void *p) {
    worker *w = p;
    w->sink = kb_fma_chains_avx512(w->iters);
    w->flops = (double)w->iters * 12 * 16 * 2;
    return NULL;
}

__attribute__((target("avx2"))) static void *read_avx2(void *p) {
    worker *w = p;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 32 <= w->n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(w->buf + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(w->buf + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(w->buf + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(w->buf + i + 24));
    }
    s0 = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    float out[8];
    _mm256_storeu_ps(out, s0);
    w->sink = out[0];
    return NULL;
}
#endif

/* Portable versions: 8 scalar chains; a plain summing loop. */
static void *fma_scalar(void *p) {
    worker *w = p;
    float a[8];
    for (int i = 0; i < 8; i++) a[i] = (float)i;
    for (int64_t it = 0; it < w->iters; it++)
        for (int i = 0; i < 8; i++) a[i] = a[i] * 0.999999f + 1e-7f;
    float sum = 0;
    for (int i = 0; i < 8; i++) sum += a[i]; /* every chain live */
    w->sink = sum;
    w->flops = (double)w->iters * 8 * 2;
    return NULL;
}

static void *read_scalar(void *p) {
    worker *w = p;
    float s[8] = {0};
    for (size_t i = 0; i + 8 <= w->n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += w->buf[i + j];
    w->sink = s[0];
    return NULL;
}

/* Runs fn on `threads` workers; returns the wall time. */
static double run_workers(worker *w, int threads, void *(*fn)(void *)) {
    const double t0 = kb_now();
    int started = 0;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&w[t].tid, NULL, fn, &w[t]) != 0) break;
        started = t;
    }
    fn(&w[0]);
    for (int t = 1; t <= started; t++) pthread_join(w[t].tid, NULL);
    /* threads that could not start did no work: count only what ran */
    for (int t = started + 1; t < threads; t++) w[t].flops = 0;
    return kb_now() - t0;
}

static size_t stream_size(void) {
    long llc = 0;
#ifdef _SC_LEVEL3_CACHE_SIZE
    llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    size_t n = llc > 0 ? 2 * (size_t)llc : 0;
    if (n < ((size_t)256 << 20)) n = (size_t)256 << 20;
    if (n > ((size_t)1 << 30)) n = (size_t)1 << 30;
    return n;
}

void kb_measure_ceilings(int threads, bool tiny, kb_ceilings *c) {
    memset(c, 0, sizeof *c);
    if (threads < 1) threads = 1;
    c->threads = threads;
    worker *w = calloc((size_t)threads, sizeof *w);
    if (!w) return;
    void *(*fma)(void *) = fma_scalar;
    void *(*rd)(void *) = read_scalar;
    snprintf(c->fma_kernel, sizeof c->fma_kernel, "scalar");
#if KB_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        fma = fma_avx2;
        rd = read_avx2;
        snprintf(c->fma_kernel, sizeof c->fma_kernel, "avx2-fma");
    }
    if (__builtin_cpu_supports("avx512f") && !getenv("KRSERVE_BENCH_CEILING_AVX2")) {
        fma = fma_avx512;
        snprintf(c->fma_kernel, sizeof c->fma_kernel, "avx512f");
    }
#endif
    /* FMA: ~0.1 s per trial at 3 GHz, best of 3. */
    for (int trial = 0; trial < 3; trial++) {
        for (int t = 0; t < threads; t++) w[t].iters = tiny ? 1000 : 40000000;
        const double dt = run_workers(w, threads, fma);
        double fl = 0;
        for (int t = 0; t < threads; t++) fl += w[t].flops;
        if (dt > 0 && fl / dt / 1e9 > c->fma_gflops) c->fma_gflops = fl / dt / 1e9;
    }
    /* Read bandwidth: best of 3 passes over the buffer. */
    const size_t bytes = tiny ? (size_t)1 << 20 : stream_size();
    float *buf = aligned_alloc(64, bytes);
    if (buf) {
        memset(buf, 0, bytes); /* touch every page before timing */
        const size_t n = bytes / sizeof(float), per = (n / (size_t)threads) & ~(size_t)31;
        for (int trial = 0; trial < 3; trial++) {
            for (int t = 0; t < threads; t++) {
                w[t].buf = buf + (size_t)t * per;
                w[t].n = per;
            }
            const double dt = run_workers(w, threads, rd);
            const double gbps = (double)per * (double)threads * sizeof(float) / dt / 1e9;
            if (dt > 0 && gbps > c->read_gbps) c->read_gbps = gbps;
        }
        c->stream_bytes = (double)bytes;
        free(buf);
    }
    free(w);
}
