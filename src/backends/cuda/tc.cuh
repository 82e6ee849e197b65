/*
 * tc.cuh — the tensor-core and async-copy building blocks the decode and
 * prefill kernels share (sm_80+ PTX): 16-byte cp.async with zero fill and
 * its group waits, ldmatrix (plain and transposed), the m16n8k16 MMA in
 * f16 and bf16 with fp32 accumulators, and packing two floats into one
 * f16x2 / bf16x2 operand register.
 *
 * Fragment layout of m16n8k16 (PTX ISA, "mma.m16n8k16"), lane = 4 g + q:
 *   A (16 x 16, row): a0 = (row g, cols 2q, 2q+1), a1 = (row g+8, same),
 *                     a2 = (row g, cols 2q+8, 2q+9), a3 = (row g+8, same)
 *   B (16 x 8, col):  b0 = (rows 2q, 2q+1, col g), b1 = (rows 2q+8, 2q+9, col g)
 *   C (16 x 8):       c0, c1 = (row g, cols 2q, 2q+1), c2, c3 = (row g+8, same)
 */
#ifndef KR_CUDA_TC_CUH
#define KR_CUDA_TC_CUH

#include "common.cuh"

/* 16 bytes global -> shared, asynchronously; !valid: zero-filled, nothing read. */
__device__ __forceinline__ void tc_cp16(void *dst, const void *src, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
__device__ __forceinline__ void tc_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
/* Wait until at most n (a compile-time 0, 1 or 2) committed groups are in flight. */
__device__ __forceinline__ void tc_wait(const int n) {
    if (n <= 0)
        asm volatile("cp.async.wait_group 0;\n" ::);
    else if (n == 1)
        asm volatile("cp.async.wait_group 1;\n" ::);
    else
        asm volatile("cp.async.wait_group 2;\n" ::);
}

/* Four 8x8 b16 matrices; lane l gives the row address of matrix l / 8. */
__device__ __forceinline__ void tc_ldsm4(const void *p, unsigned *r) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void tc_ldsm4_t(const void *p, unsigned *r) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* The same from a 32-bit shared-memory address (one that address arithmetic,
 * XOR swizzles included, works on directly). */
__device__ __forceinline__ void tc_ldsm4_at(unsigned a, unsigned *r) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void tc_ldsm4_t_at(unsigned a, unsigned *r) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* c += A B, one m16n8k16 step (DT: KR_F16 or KR_BF16 operands). */
__device__ __forceinline__ void tc_mma(float *c, const unsigned *a, unsigned b0, unsigned b1,
                                       const int DT) {
    if (DT == KR_F16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* 2^x on the special-function unit (ex2.approx.ftz: ~2 ulp, subnormal results
 * flushed to 0 — below any weight a softmax can resolve): 2^-inf = 0, NaN stays. */
__device__ __forceinline__ float tc_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* (lo, hi) rounded to nearest into one f16x2 or bf16x2 register. */
__device__ __forceinline__ unsigned tc_pack(float lo, float hi, const int DT) {
    unsigned u;
    if (DT == KR_F16) {
        const __half2 h = __floats2half2_rn(lo, hi);
        u = *(const unsigned *)&h;
    } else {
        const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        u = *(const unsigned *)&h;
    }
    return u;
}

#endif /* KR_CUDA_TC_CUH */
