/*
 * wgmma.cuh — the warpgroup MMAs (sm_90a) the Hopper prefill kernel issues,
 * as inline PTX: fp32 accumulators d[N / 8][4] in the m64nNk16 accumulator
 * layout (warp w of the warpgroup holds rows 16 w .. 16 w + 15, laid out per
 * 8-column block like mma.sync's m16n8 C fragment), B from a shared-memory
 * descriptor, A from a descriptor (SS) or from four f16x2 / bf16x2 registers
 * in the m16n8k16 A-fragment layout (RS). The PTX names the shape and the
 * type in the opcode and takes one operand per accumulator, so each shape is
 * one macro (HP_WGMMA_*) instantiated for f16 and bf16.
 *
 * Every call is asynchronous: the accumulators may be read only after
 * hp_wgmma_commit() and hp_wgmma_wait(), and hp_wgmma_fence() must precede the
 * first MMA after the registers were written by ordinary instructions.
 */
#ifndef KR_CUDA_WGMMA_CUH
#define KR_CUDA_WGMMA_CUH

#include "common.cuh"

#include <stdint.h>

__device__ __forceinline__ void hp_wgmma_fence(void) {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void hp_wgmma_commit(void) {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
/* Wait until at most n (0 or 1) committed groups are in flight. */
__device__ __forceinline__ void hp_wgmma_wait(const int n) {
    if (n <= 0)
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    else
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
}

/* Accumulator operands: 8 per two 8-column blocks; 32 (n64), 64 (n128) or 88 (n176). */
#define HP_ACC8(d, i)                                                                              \
    "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3]), "+f"(d[i + 1][0]),                 \
        "+f"(d[i + 1][1]), "+f"(d[i + 1][2]), "+f"(d[i + 1][3])
#define HP_ACC32(d) HP_ACC8(d, 0), HP_ACC8(d, 2), HP_ACC8(d, 4), HP_ACC8(d, 6)
#define HP_ACC64(d) HP_ACC32(d), HP_ACC8(d, 8), HP_ACC8(d, 10), HP_ACC8(d, 12), HP_ACC8(d, 14)
#define HP_ACC88(d) HP_ACC64(d), HP_ACC8(d, 16), HP_ACC8(d, 18), HP_ACC8(d, 20)
/* Their placeholders in the PTX text. */
#define HP_REGS32                                                                                  \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                      \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define HP_REGS64                                                                                  \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                      \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "             \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "             \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define HP_REGS88                                                                                  \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                      \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "             \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "             \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "             \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "             \
    "%80, %81, %82, %83, %84, %85, %86, %87}"

/* d (64 x N) = A B^T (acc 0) or d + A B^T (acc 1); A and B K-major, by
 * descriptor. REGS / ACC: the accumulators' placeholders and operands; DA,
 * DB, ACC_ON: the placeholders of the two descriptors and the flag after them. */
#define HP_WGMMA_SS(TY, N, REGS, ACC, DA, DB, ACC_ON)                                              \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " ACC_ON ", 0;\n"                               \
                 "wgmma.mma_async.sync.aligned.m64n" N "k16.f32." TY "." TY " " REGS ", " DA       \
                 ", " DB ", p, 1, 1, 0, 0;\n}\n"                                                   \
                 : ACC                                                                             \
                 : "l"(da), "l"(db), "r"(acc))
__device__ __forceinline__ void hp_wgmma_ss_n128(float (*d)[4], uint64_t da, uint64_t db, int acc,
                                                 const int DT) {
    if (DT == KR_F16)
        HP_WGMMA_SS("f16", "128", HP_REGS64, HP_ACC64(d), "%64", "%65", "%66");
    else
        HP_WGMMA_SS("bf16", "128", HP_REGS64, HP_ACC64(d), "%64", "%65", "%66");
}
/* The same with 176 keys (the wide tiles). */
__device__ __forceinline__ void hp_wgmma_ss_n176(float (*d)[4], uint64_t da, uint64_t db, int acc,
                                                 const int DT) {
    if (DT == KR_F16)
        HP_WGMMA_SS("f16", "176", HP_REGS88, HP_ACC88(d), "%88", "%89", "%90");
    else
        HP_WGMMA_SS("bf16", "176", HP_REGS88, HP_ACC88(d), "%88", "%89", "%90");
}

/* d (64 x 128) += A B; A (64 x 16) from registers, B (16 x 128) N-major by descriptor. */
#define HP_WGMMA_RS_N128(TY)                                                                       \
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " HP_REGS64            \
                 ", {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"                                      \
                 : HP_ACC64(d)                                                                     \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db))
__device__ __forceinline__ void hp_wgmma_rs_n128(float (*d)[4], const unsigned *a, uint64_t db,
                                                 const int DT) {
    if (DT == KR_F16)
        HP_WGMMA_RS_N128("f16");
    else
        HP_WGMMA_RS_N128("bf16");
}

/* d (64 x 64) += A B; A (64 x 16) from registers, B (16 x 64) N-major by descriptor. */
#define HP_WGMMA_RS_N64(TY)                                                                        \
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " HP_REGS32             \
                 ", {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"                                      \
                 : HP_ACC32(d)                                                                     \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db))
__device__ __forceinline__ void hp_wgmma_rs_n64(float (*d)[4], const unsigned *a, uint64_t db,
                                                const int DT) {
    if (DT == KR_F16)
        HP_WGMMA_RS_N64("f16");
    else
        HP_WGMMA_RS_N64("bf16");
}

/* Keeps the compiler from moving reads or writes of an accumulator across
 * the asynchronous MMAs (an empty asm that "changes" it). */
__device__ __forceinline__ void hp_touch(float (*d)[4], const int n8) {
#pragma unroll
    for (int i = 0; i < n8; i++)
        asm volatile("" : "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])::"memory");
}
__device__ __forceinline__ void hp_touch_u(unsigned (*r)[4], const int n) {
#pragma unroll
    for (int i = 0; i < n; i++)
        asm volatile("" : "+r"(r[i][0]), "+r"(r[i][1]), "+r"(r[i][2]), "+r"(r[i][3])::"memory");
}

#endif /* KR_CUDA_WGMMA_CUH */
