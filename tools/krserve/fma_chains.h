/*
 * fma_chains.h — the FMA ceiling's loop at 16 lanes, shared by the bench
 * (bench_ceiling.c) and the hand-run probe of the tile kernels
 * (bench/gemm_probe.c), so the two always measure the same loop.
 *
 * 12 independent chains in named registers, one FMA each a step: 12 x 16
 * lanes x 2 FLOP a step. Every chain starts from its own value: chains that
 * start equal and step alike are one value to the compiler, which kept two
 * of them, and the loop ran 2 FMAs where 12 were counted (session 8's
 * ceiling, 1.5x the true peak). The sum of all of them is returned, so none
 * is dead.
 */
#ifndef KB_FMA_CHAINS_H
#define KB_FMA_CHAINS_H

#include <immintrin.h>
#include <stdint.h>

__attribute__((target("avx512f"))) static inline float kb_fma_chains_avx512(int64_t iters) {
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(0.10f), a1 = _mm512_set1_ps(0.11f), a2 = _mm512_set1_ps(0.12f),
           a3 = _mm512_set1_ps(0.13f), a4 = _mm512_set1_ps(0.14f), a5 = _mm512_set1_ps(0.15f),
           a6 = _mm512_set1_ps(0.16f), a7 = _mm512_set1_ps(0.17f), a8 = _mm512_set1_ps(0.18f),
           a9 = _mm512_set1_ps(0.19f), a10 = _mm512_set1_ps(0.20f), a11 = _mm512_set1_ps(0.21f);
    for (int64_t it = 0; it < iters; it++) {
        a0 = _mm512_fmadd_ps(a0, x, y), a1 = _mm512_fmadd_ps(a1, x, y);
        a2 = _mm512_fmadd_ps(a2, x, y), a3 = _mm512_fmadd_ps(a3, x, y);
        a4 = _mm512_fmadd_ps(a4, x, y), a5 = _mm512_fmadd_ps(a5, x, y);
        a6 = _mm512_fmadd_ps(a6, x, y), a7 = _mm512_fmadd_ps(a7, x, y);
        a8 = _mm512_fmadd_ps(a8, x, y), a9 = _mm512_fmadd_ps(a9, x, y);
        a10 = _mm512_fmadd_ps(a10, x, y), a11 = _mm512_fmadd_ps(a11, x, y);
    }
    const __m512 s =
        _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                    _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
                      _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}

#endif /* KB_FMA_CHAINS_H */
