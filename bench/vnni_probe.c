/*
 * vnni_probe.c — how many 512-bit vpdpbusd a core issues a second against
 * 512-bit FMAs, one thread, registers only.
 *
 * The int8 decode's integer kernels (src/backends/cpu/x86_avx512/
 * decode_vnni.c) spend two vpdpbusd (two 8-bit digits of q or P) where the
 * fp16 kernels spend four FMAs on the same 64 products of a key, so they
 * beat the FMA path only where vpdpbusd issues at more than half the FMA
 * rate. This probe times 12 independent vpdpbusd chains (each from its own
 * start value, as the FMA ceiling's chains: tools/krserve/fma_chains.h)
 * against those FMA chains and prints both rates and their ratio.
 *
 *   gcc -O2 -mavx512f -mavx512bw -mavx512vnni -o /tmp/vnni_probe bench/vnni_probe.c &&
 * /tmp/vnni_probe
 *
 * Not part of the build or the tests; the figures are in docs/PERFORMANCE.md
 * (CPU history 25).
 */
#include "../tools/krserve/fma_chains.h"

#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 12 chains a step, one vpdpbusd each; the lanes' sum, so none is dead. */
static int64_t dpbusd_chains(int64_t iters) {
    const __m512i u = _mm512_set1_epi8(3), s = _mm512_set1_epi8(-5);
    __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2),
            a3 = _mm512_set1_epi32(3), a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5),
            a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7), a8 = _mm512_set1_epi32(8),
            a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
    for (int64_t it = 0; it < iters; it++) {
        a0 = _mm512_dpbusd_epi32(a0, u, s), a1 = _mm512_dpbusd_epi32(a1, u, s);
        a2 = _mm512_dpbusd_epi32(a2, u, s), a3 = _mm512_dpbusd_epi32(a3, u, s);
        a4 = _mm512_dpbusd_epi32(a4, u, s), a5 = _mm512_dpbusd_epi32(a5, u, s);
        a6 = _mm512_dpbusd_epi32(a6, u, s), a7 = _mm512_dpbusd_epi32(a7, u, s);
        a8 = _mm512_dpbusd_epi32(a8, u, s), a9 = _mm512_dpbusd_epi32(a9, u, s);
        a10 = _mm512_dpbusd_epi32(a10, u, s), a11 = _mm512_dpbusd_epi32(a11, u, s);
    }
    const __m512i x =
        _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                         _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    const __m512i y = _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11));
    return _mm512_reduce_add_epi32(_mm512_add_epi32(x, y));
}

int main(void) {
    const int64_t iters = 50 * 1000 * 1000; /* 600 M instructions a kind */
    int64_t sink = 0;
    float fsink = 0.0f;
    for (int round = 0; round < 3; round++) {
        const double t0 = now();
        sink += dpbusd_chains(iters);
        const double t1 = now();
        fsink += kb_fma_chains_avx512(iters);
        const double t2 = now();
        const double gd = 12.0 * (double)iters / (t1 - t0) * 1e-9;
        const double gf = 12.0 * (double)iters / (t2 - t1) * 1e-9;
        printf("round %d: vpdpbusd %.2f G/s (%.0f G byte products/s), vfmadd231ps %.2f G/s (%.0f G "
               "fp32 products/s), vpdpbusd / FMA issue %.2f\n",
               round, gd, 64.0 * gd, gf, 16.0 * gf, gd / gf);
    }
    return sink == 42 && fsink == 42.0f; /* keeps both results live */
}
