/*
 * attention_hopper.cu — flash attention prefill for compute capability 9.0
 * (built for sm_90a only): FlashAttention-3's scheme in inline PTX.
 *
 * A block owns 64 nc query rows of one head (a work item) at a time, with
 * 1 + nc warpgroups (nc = 2, or 3 at head_dim 64 past 1K rows):
 *   - warpgroup 0, the producer, gives up registers (setmaxnreg.dec) and one
 *     thread of it issues bulk tensor copies (TMA): Q once, then the K and V
 *     tiles of BN keys (HP_BN; HP_BN_WIDE for long unmasked head_dim 128)
 *     into a ring of HP_STAGES shared-memory stages, each copy completing on
 *     the stage's "full" mbarrier; before it refills a stage it waits on the
 *     stage's "empty" mbarrier;
 *   - warpgroups 1 .. nc, the consumers, take the registers (setmaxnreg.inc)
 *     and 64 rows each: per tile S = Q K^T by wgmma with both operands in
 *     shared memory, the online softmax on S in registers (exp2 with the scale
 *     folded in, NaN-propagating maxima), then O += P V by wgmma with P taken
 *     straight from S's accumulators as the A operand in registers and V from
 *     shared memory (transposed by the descriptor); each warp then arrives on
 *     the stage's "empty" barrier. O is rescaled only where a row maximum
 *     of the warp moved (HP_LAZY_RESCALE). At the end of an item the short
 *     head_dim-128 kernels (hp_which) put O by stmatrix into a shared-memory
 *     staging tile and out by bulk tensor stores (HP_TMA_STORE); the others,
 *     and calls whose output no tensor map can name, store it from registers.
 * The consumers run the same loop on different rows and take turns at the
 * tensor cores, so one's softmax overlaps another's matrix products. Blocks
 * are persistent (one an SM) and take items from a work counter where items
 * differ in cost (hp_body, kr_cu_hopper_prefill); unmasked head_dim 128 runs
 * a fixed round robin in kernels built without the counter's code.
 *
 * Tiles are in shared memory as TMA's 128-byte swizzle writes them: per 64
 * channels (128 bytes) a [rows][128 B] slab, the 16-byte chunks of row r
 * XORed with r % 8 — the canonical "128B swizzle" layout that wgmma's
 * descriptors name (K-major for Q and K, N-major for V). Head_dim 128 is two
 * such slabs per tile.
 *
 * The row ranges, causal skipping of tiles and stores are those of the sm_80
 * kernel (prefill.cuh). The split-KV arithmetic mirrors the sm_80 kernel's,
 * but kr_cu_prefill_splits sends every call that would split (grids too
 * small to fill the GPU) to the sm_80 kernel, whose split path the tests
 * cover; here ws.splits is 1. Keys past a sequence's length inside the
 * tensor (ragged batches, a cache's unwritten rows) are masked in S and their
 * V rows zeroed in shared memory before P V, so garbage there cannot reach
 * the output; keys past the tensor are zero-filled by the copy engine.
 *
 *   TMA --> [Q | K0 K1 | V0 V1] --> wgmma S = Q K^T --> softmax --> wgmma O += P V
 *   (warpgroup 0)    full/empty mbarriers      (warpgroups 1, 2; P in registers)
 */
#include "prefill.cuh"
#include "wgmma.cuh"

#include <cuda.h>

/* Consumer warpgroups a block (nc): 64 query rows each. At head_dim 64 the
 * softmax costs as much as the two products, so three consumers (192 rows,
 * 160 registers each) keep the tensor cores fed — except on short sequences
 * (hp_consumers), where finer items balance better; at 128, two. */
#ifndef HP_NC64
#define HP_NC64 3
#endif
#ifndef HP_NC64_SHORT
#define HP_NC64_SHORT 1024 /* head_dim 64 with at most this many query rows: two consumers */
#endif
#define HP_BM(nc) (64 * (nc))             /* query rows per block */
#define HP_THREADS(nc) (128 * ((nc) + 1)) /* the producer warpgroup and the consumers */
#define HP_BN 128                         /* keys per K/V tile */
/* Keys per tile of the head_dim-128 kernel for calls without a causal mask
 * or window over at least HP_WIDE_MIN_KEYS keys (FlashAttention-3's 128 x
 * 176): fewer tiles, so fewer softmax reductions, barriers and rescalings of
 * O per key — +7-11 % from 8K keys on the H100 (session 12). Masked calls
 * keep 128 (their diagonal tiles are partly hidden), and so do shorter ones,
 * where the last tile's unused keys and the longer first tile cost more
 * (512-1K keys: 2-5 % slower with 176). */
#ifndef HP_BN_WIDE
#define HP_BN_WIDE 176
#endif
#ifndef HP_WIDE_MIN_KEYS
#define HP_WIDE_MIN_KEYS 2048
#endif
#if HP_BN_WIDE != 128 && HP_BN_WIDE != 176
#error "HP_BN_WIDE: hp_issue_s has wgmma shapes for 128 and 176 keys only"
#endif
#define HP_BN_MAX (HP_BN_WIDE > HP_BN ? HP_BN_WIDE : HP_BN)
#ifndef HP_STAGES
#define HP_STAGES 2
#endif
/* Registers after setmaxnreg, two consumers: 384 threads start at 168; the
 * producer's loop needs 40 without spilling, which leaves the consumers 232.
 * Three consumers (512 threads at 128): 32 and 160. */
#ifndef HP_PRODUCER_REGS
#define HP_PRODUCER_REGS 40
#endif
/* FlashAttention-3's two schedules, switchable for the lab: a warpgroup
 * issues S of tile t before P V of tile t - 1 and runs the softmax while P V
 * runs (HP_PINGPONG 0 or 1: the two consumers also take turns at issuing,
 * by named barriers, so one's softmax overlaps the other's products). */
#ifndef HP_PINGPONG
#define HP_PINGPONG 1
#endif
#ifndef HP_LAZY_RESCALE
#define HP_LAZY_RESCALE 1 /* skip O's rescaling where a warp's maxima did not move (0: always) */
#endif
/* O out through shared memory and bulk tensor stores where the kernel
 * stages it (1; HP_STAGE_O_MAX_KEYS says which), or always from registers by
 * 4-byte global stores (0). Nsight Compute, 32 x 512 causal at head_dim 128
 * (session 13): ~14 % of the stall samples sat in the register epilogue —
 * its 32 scattered stores a thread queue up in the LSU, and the shuffles
 * after them wait on their address registers. */
#ifndef HP_TMA_STORE
#define HP_TMA_STORE 1
#endif
#ifndef HP_PERSISTENT
#define HP_PERSISTENT 1 /* one block per SM walking the work items (0: one block per item) */
#endif
#ifndef HP_DYNAMIC
#define HP_DYNAMIC 1 /* persistent blocks take items from a work counter (0: round robin) */
#endif
#ifndef HP_CONSUMER_REGS
#define HP_CONSUMER_REGS 232
#endif
/* The kernels without a work counter (fixed round robin: non-causal head_dim
 * 128) keep the producer's loop within 24 registers, so the consumers get
 * 240. */
#ifndef HP_PRODUCER_REGS_RR
#define HP_PRODUCER_REGS_RR 24
#endif
#ifndef HP_CONSUMER_REGS_RR
#define HP_CONSUMER_REGS_RR 240
#endif
/* setmaxnreg OP ("dec": the producer, "inc": the consumers) to the count of a
 * kernel with nc consumers, with or without the work counter: n3 with three
 * consumers (512 threads), rr without the counter, dflt with it. */
#define HP_SETMAXNREG(OP, nc, dyn, n3, rr, dflt)                                                   \
    do {                                                                                           \
        if ((nc) == 3)                                                                             \
            asm volatile("setmaxnreg." OP ".sync.aligned.u32 %0;\n" ::"n"(n3));                    \
        else if (!(dyn))                                                                           \
            asm volatile("setmaxnreg." OP ".sync.aligned.u32 %0;\n" ::"n"(rr));                    \
        else                                                                                       \
            asm volatile("setmaxnreg." OP ".sync.aligned.u32 %0;\n" ::"n"(dflt));                  \
    } while (0)
/* mbarriers: Q full, Q empty, then per stage K full, V full, K empty, V empty */
#define HP_NBAR (2 + 4 * HP_STAGES)

typedef struct hp_maps {
    CUtensorMap q, k, v, o; /* o: the output, boxes of 64 channels x 64 rows */
    int o_ok;               /* O is staged and stored through o (hp_stage_o) */
} hp_maps;

/* Which kernels stage O (H100, session 13, each against the same kernel
 * storing from registers): head_dim 128 with 128-key tiles on short calls —
 * 512 keys +6-7 %, 1K +1-2 %, causal or not. Not the wide tiles, whose
 * stages leave no room for the tile; not head_dim 64, where the register
 * epilogue (16 stores a thread) was faster (-4 to -6 % staged at 512-1K) and
 * three consumers' 160 registers spill; and not long causal calls: the
 * counter kernel compiled with the staging code ran 4-15 % slower from 2K
 * keys even where it did not stage, so masked calls over more than
 * HP_STAGE_O_MAX_KEYS keys take a kernel built without it. */
/* With two consumers, the row sums reduced once before the epilogue's
 * branch (1), or in each branch (0, session 13's form); the lab compares
 * them. */
#ifndef HP_LSUM_ONCE
#define HP_LSUM_ONCE 1
#endif
#ifndef HP_STAGE_O_MAX_KEYS
#define HP_STAGE_O_MAX_KEYS 1024
#endif

/* Shared memory: Q (BM x D), the K stages, the V stages (BN x D each), O's
 * staging tile (BM x D, when staged), the barriers, the next item's index;
 * plus slack to align the tiles to 1024 bytes (the swizzle atom). */
static size_t hp_smem_bytes(int64_t D, int nc, int bn, bool stage_o) {
    const int64_t o_rows = stage_o ? HP_BM(nc) : 0;
    return 1024 + (size_t)(HP_BM(nc) + o_rows + 2 * HP_STAGES * bn) * 2 * (size_t)D + 8 * HP_NBAR +
           16;
}

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define HP_DEVICE 1
#else
#define HP_DEVICE 0
#endif

#if HP_DEVICE
__device__ __forceinline__ void hp_bar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void hp_bar_expect(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void hp_bar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
/* Spin until the phase of the given parity has completed. */
__device__ __forceinline__ void hp_bar_wait(unsigned bar, unsigned parity) {
    asm volatile("{\n.reg .pred p;\nHP_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra HP_WAIT;\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}
/* The box at coordinates (c0 channel, c1 row, c2 head, c3 sequence) of a
 * tensor map into shared memory, completing on bar. */
__device__ __forceinline__ void hp_tma4(unsigned dst, const CUtensorMap *map, unsigned bar, int c0,
                                        int c1, int c2, int c3) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
                 : "memory");
}
/* A wgmma shared-memory descriptor with 128-byte swizzle: start address,
 * leading and stride byte offsets (PTX ISA, "matrix descriptor"). */
__device__ __forceinline__ uint64_t hp_desc(unsigned addr, unsigned lbo, unsigned sbo) {
    return (uint64_t)((addr & 0x3ffffu) >> 4) | ((uint64_t)(lbo >> 4) << 16) |
           ((uint64_t)(sbo >> 4) << 32) | (1ull << 62);
}

/* Named barriers, consumer warpgroup w (0 .. nc - 1): 1 + w its own
 * threads; 4 + w the pingpong ring (w waits on it, the one before it in the
 * ring arrives once it has issued); 7 + w the hand-over of the next item's
 * index with the producer's first warp (hp_body). */
__device__ __forceinline__ void hp_named_sync(int id) {
    asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void hp_named_arrive(int id) {
    asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory");
}
#define HP_BAR_TURN(w) (4 + (w))
#define HP_BAR_ITEM(w) (7 + (w))
__device__ __forceinline__ void hp_named_sync_n(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/* Rows of a V stage whose keys lie past the sequence (j0 + r >= L) to zero,
 * by one warpgroup, visible to its next wgmma (generic-proxy stores, then a
 * proxy fence and the warpgroup's barrier). The other consumer may write the
 * same zeros: they cannot differ. */
__device__ __forceinline__ void hp_zero_v(unsigned vt, int j0, int L, int tid, int wg, int halves,
                                          const int BN) {
    for (int x = tid; x < halves * BN * 8; x += 128) {
        const int r = (x / 8) % BN;
        if (j0 + r >= L)
            asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(
                             vt + (x / (8 * BN)) * BN * 128 + r * 128 + (x % 8) * 16),
                         "r"(0u)
                         : "memory");
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
}

/* The online softmax of a thread's two rows (row, row + 8) over one tile of
 * S, in place (S becomes P = 2^(s c - m)): masked keys (unless the whole
 * warpgroup sees the whole tile) to -inf, the running max m (of s c, log2
 * domain, NaN-propagating) and sum l updated; al: the factors O must take. */
__device__ __forceinline__ void hp_softmax(const kr_cu_attention &a, float (*sc)[4], float *m,
                                           float *l, float *al, float c, int j0, int L, int row,
                                           int q4, bool full, const int BN) {
    const int NB = BN / 8; /* 8-key blocks of the tile */
#pragma unroll
    for (int x = 0; x < 2; x++) {
        if (!full) {
            const int r = row + 8 * x;
            int lo = 0, hi = 0;
            if (r < (int)a.Sq) pf_range(a, L, r, &lo, &hi);
#pragma unroll
            for (int n = 0; n < NB; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int j = j0 + 8 * n + 2 * q4 + e;
                    if (j < lo || j >= hi) sc[n][2 * x + e] = -INFINITY;
                }
        }
        float v[8]; /* block n folds into v[n % 8] */
#pragma unroll
        for (int n = 0; n < 8; n++) v[n] = cu_nanmax(sc[n][2 * x], sc[n][2 * x + 1]);
#pragma unroll
        for (int n = 8; n < NB; n++)
            v[n % 8] = cu_nanmax(v[n % 8], cu_nanmax(sc[n][2 * x], sc[n][2 * x + 1]));
        float mx = pf_tree(v, 8, true);
        mx = cu_nanmax(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = cu_nanmax(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = cu_nanmax(m[x], mx * c);
        al[x] = mn == -INFINITY ? 1.0f : tc_exp2(m[x] - mn);
        const float sub = mn == -INFINITY ? 0.0f : mn;
        m[x] = mn;
#pragma unroll
        for (int n = 0; n < NB; n++) {
            sc[n][2 * x] = tc_exp2(fmaf(sc[n][2 * x], c, -sub));
            sc[n][2 * x + 1] = tc_exp2(fmaf(sc[n][2 * x + 1], c, -sub));
            if (n < 8)
                v[n] = sc[n][2 * x] + sc[n][2 * x + 1];
            else
                v[n % 8] += sc[n][2 * x] + sc[n][2 * x + 1];
        }
        l[x] = l[x] * al[x] + pf_tree(v, 8, false);
    }
}

/* Issue S = Q K^T for one tile (D / 16 steps of 16 channels; Q and K are
 * K-major slabs of 64 channels, a step 32 bytes into a slab's rows). */
__device__ __forceinline__ void hp_issue_s(float (*sc)[4], unsigned qa, unsigned kt, const int D,
                                           const int DT, const int BM, const int BN) {
    hp_wgmma_fence();
#pragma unroll
    for (int k = 0; k < D / 16; k++) {
        const unsigned off = (k % 4) * 32; /* 16 channels */
        const uint64_t da = hp_desc(qa + (k / 4) * BM * 128 + off, 16, 1024);
        const uint64_t db = hp_desc(kt + (k / 4) * BN * 128 + off, 16, 1024);
        if (BN == 176)
            hp_wgmma_ss_n176(sc, da, db, k > 0, DT);
        else
            hp_wgmma_ss_n128(sc, da, db, k > 0, DT);
    }
    hp_wgmma_commit();
}

/* Issue O += P V for one tile (BN / 16 steps of 16 keys; V N-major: the
 * slabs of 64 channels BN * 128 bytes apart, 8-key groups 1024). */
__device__ __forceinline__ void hp_issue_pv(float (*o)[4], unsigned (*pa)[4], unsigned vt,
                                            const int D, const int DT, const int BN) {
    hp_wgmma_fence();
#pragma unroll
    for (int k = 0; k < BN / 16; k++) {
        const uint64_t db = hp_desc(vt + k * 16 * 128, BN * 128, 1024);
        if (D == 128)
            hp_wgmma_rs_n128(o, pa[k], db, DT);
        else
            hp_wgmma_rs_n64(o, pa[k], db, DT);
    }
    hp_wgmma_commit();
}

/* P (S after the softmax) as P V's A fragments: 16 keys from two 8-key blocks. */
__device__ __forceinline__ void hp_pack_p(float (*sc)[4], unsigned (*pa)[4], const int DT,
                                          const int BN) {
#pragma unroll
    for (int k = 0; k < BN / 16; k++) {
        pa[k][0] = tc_pack(sc[2 * k][0], sc[2 * k][1], DT);
        pa[k][1] = tc_pack(sc[2 * k][2], sc[2 * k][3], DT);
        pa[k][2] = tc_pack(sc[2 * k + 1][0], sc[2 * k + 1][1], DT);
        pa[k][3] = tc_pack(sc[2 * k + 1][2], sc[2 * k + 1][3], DT);
    }
}

/* This warpgroup's 64 rows of O (times inv, a factor per row half) out
 * through its part of the staging tile: each slab of 64 channels is
 * [BM rows][128 B] with the 128-byte swizzle, like Q's; stmatrix writes
 * four 8 x 8 blocks a step (rows r and r + 8 of two 8-channel blocks, the
 * accumulators' own layout); then thread 0 of the warpgroup stores each
 * slab's 64 x 64 box with one bulk tensor copy (rows past the tensor are
 * clipped by the copy engine). Thread 0 first waits until its previous
 * stores have read the tile. Named barrier 1 + wg: the warpgroup's threads. */
__device__ __forceinline__ void hp_store_o(const hp_maps &mp, float (*o)[4], const float *inv,
                                           unsigned so, int wg, int tid, int r0, int h, int b,
                                           const int D, const int DT, const int BM) {
    const int warp = tid / 32, lane = tid % 32, mat = lane / 8, rr = lane % 8;
    if (tid == 0) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
    const int row = 16 * warp + rr + 8 * (mat & 1); /* the row this lane addresses */
#pragma unroll
    for (int n = 0; n < D / 8; n += 2) {
        const int nb = n + (mat >> 1); /* the 8-channel block it addresses */
        const unsigned at =
            so + (nb / 8) * BM * 128 + wg * 64 * 128 + row * 128 + ((nb % 8) ^ rr) * 16;
        asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(at),
                     "r"(tc_pack(o[n][0] * inv[0], o[n][1] * inv[0], DT)),
                     "r"(tc_pack(o[n][2] * inv[1], o[n][3] * inv[1], DT)),
                     "r"(tc_pack(o[n + 1][0] * inv[0], o[n + 1][1] * inv[0], DT)),
                     "r"(tc_pack(o[n + 1][2] * inv[1], o[n + 1][3] * inv[1], DT))
                     : "memory");
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
    if (tid == 0) {
        for (int x = 0; x < D / 64; x++)
            asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group"
                         " [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"((uint64_t)&mp.o),
                         "r"(so + x * BM * 128 + wg * 64 * 128), "r"(64 * x), "r"(r0), "r"(h),
                         "r"(b)
                         : "memory");
        asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
    }
}
#endif

/* One work item: a row block of one head of one sequence (and split). Items
 * are numbered row block fastest (heaviest causal block first), then head,
 * then sequence x split — the order a plain grid would run them, so the
 * blocks running together share their heads' K/V in L2. */
typedef struct hp_item {
    int h, hk, b, split, i0, L, kmin, nt;
} hp_item;

__device__ __forceinline__ hp_item hp_item_of(const kr_cu_attention &a, const kr_cu_prefill_ws &ws,
                                              int idx, int nrb, const int bm, const int bn) {
    hp_item w;
    const int rest = idx / nrb, H = (int)a.H;
    w.i0 = (nrb - 1 - idx % nrb) * bm;
    w.h = rest % H;
    w.b = rest / H % (int)a.B;
    w.split = rest / H / (int)a.B;
    w.hk = (int)(w.h / (a.H / a.Hkv));
    w.L = a.has_lens ? (int)cu_len(a.lens, w.b) : (int)a.Skv;
    int kmin, kmax, y0, y1;
    pf_range(a, w.L, w.i0, &kmin, &y0);
    pf_range(a, w.L, min(w.i0 + bm, (int)a.Sq) - 1, &y1, &kmax);
    if (kmax < kmin) kmax = kmin;
    if (ws.splits > 1) { /* this split's whole tiles of the block's range */
        const int per = ((kmax - kmin + bn - 1) / bn + ws.splits - 1) / ws.splits;
        kmin = min(kmax, kmin + w.split * per * bn);
        kmax = min(kmax, kmin + per * bn);
    }
    w.kmin = kmin;
    w.nt = (kmax - kmin + bn - 1) / bn;
    return w;
}

__device__ __forceinline__ void hp_body(const hp_maps &mp, const kr_cu_attention &a,
                                        const kr_cu_prefill_ws &ws, int nrb, int items,
                                        const int DT, const int D, const int NC, const int BN,
                                        const bool DYN, const bool SO) {
#if HP_DEVICE
    extern __shared__ __align__(1024) char hp_raw[];
    uint32_t *const sched = DYN ? ws.sched : NULL; /* the work counter, if this kernel takes one */
    const unsigned raw = (unsigned)__cvta_generic_to_shared(hp_raw);
    const unsigned sq = raw + (1024 - raw % 1024) % 1024;
    const int HALVES = D / 64, BM = HP_BM(NC);
    const unsigned TILE = BN * 2 * D, QB = BM * 2 * D;
    /* O staged (the host sized shared memory for it: hp_smem_bytes) */
    const bool STAGE_O = HP_TMA_STORE && SO && mp.o_ok && ws.splits <= 1;
    const unsigned sk = sq + QB, sv = sk + HP_STAGES * TILE, so = sv + HP_STAGES * TILE;
    const unsigned bars = so + (STAGE_O ? QB : 0);
    const unsigned bar_q = bars, bar_q_empty = bars + 8;
    /* the index of the block's item k + 1 in next_item[(k + 1) % 2], written
     * by the producer during item k */
    volatile int *next_item = (volatile int *)(hp_raw + (bars + 8 * HP_NBAR - raw));
#define HP_FULL_K(s) (bars + 8 * (2 + (s)))
#define HP_FULL_V(s) (bars + 8 * (2 + HP_STAGES + (s)))
#define HP_EMPTY_K(s) (bars + 8 * (2 + 2 * HP_STAGES + (s)))
#define HP_EMPTY_V(s) (bars + 8 * (2 + 3 * HP_STAGES + (s)))

    if (threadIdx.x == 0) {
        hp_bar_init(bar_q, 1);
        hp_bar_init(bar_q_empty, 4 * NC); /* one arrival per consumer warp */
        for (int s = 0; s < HP_STAGES; s++) {
            hp_bar_init(HP_FULL_K(s), 1);
            hp_bar_init(HP_FULL_V(s), 1);
            hp_bar_init(HP_EMPTY_K(s), 4 * NC);
            hp_bar_init(HP_EMPTY_V(s), 4 * NC);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    /* Both sides walk the same items and tiles: it counts this block's tiles
     * so far (stage it % HP_STAGES, phase it / HP_STAGES), k its items. The
     * first item is blockIdx.x; with a work counter each later one is fetched
     * (gridDim.x + the counter's old value) once the current one's copies are
     * issued: fetched any earlier, a block would hold on to its next item
     * while still busy, which unbalances causal grids. The producer's first
     * warp writes the index of item k + 1 into next_item[(k + 1) % 2], then
     * meets each consumer warpgroup at its barrier HP_BAR_ITEM once that
     * warpgroup has issued its last S of item k (the producer waits there
     * anyway: Q's buffer is free only then); the warpgroup reads the index
     * after the barrier. The slot is written again only after the next
     * meeting, so every read and write are ordered by a barrier both sides
     * wait on, and the warpgroups still start items as their turns fall. */
    if (threadIdx.x < 128) { /* the producer */
        HP_SETMAXNREG("dec", NC, DYN, 32, HP_PRODUCER_REGS_RR, HP_PRODUCER_REGS);
        /* one thread issues the copies; its warp stays for the hand-over */
        if (threadIdx.x >= (sched ? 32 : 1)) return;
        const unsigned lanes = sched ? 0xffffffffu : 1u;
        const bool leader = threadIdx.x == 0;
        int it = 0, idx = (int)blockIdx.x;
        for (int k = 0; idx < items; k++) {
            int next = sched ? items : idx + (int)gridDim.x;
            if (leader) {
                const hp_item w = hp_item_of(a, ws, idx, nrb, BM, BN);
                if (k > 0) hp_bar_wait(bar_q_empty, (k - 1) & 1); /* the last item's S are done */
                hp_bar_expect(bar_q, QB);
                for (int x = 0; x < HALVES; x++)
                    hp_tma4(sq + x * BM * 128, &mp.q, bar_q, 64 * x, w.i0, w.h, w.b);
                for (int t = 0; t < w.nt; t++, it++) {
                    const int s = it % HP_STAGES, u = it / HP_STAGES, j0 = w.kmin + t * BN;
                    if (u > 0) hp_bar_wait(HP_EMPTY_K(s), (u - 1) & 1);
                    hp_bar_expect(HP_FULL_K(s), TILE);
                    for (int x = 0; x < HALVES; x++)
                        hp_tma4(sk + s * TILE + x * BN * 128, &mp.k, HP_FULL_K(s), 64 * x, j0, w.hk,
                                w.b);
                    if (u > 0) hp_bar_wait(HP_EMPTY_V(s), (u - 1) & 1);
                    hp_bar_expect(HP_FULL_V(s), TILE);
                    for (int x = 0; x < HALVES; x++)
                        hp_tma4(sv + s * TILE + x * BN * 128, &mp.v, HP_FULL_V(s), 64 * x, j0, w.hk,
                                w.b);
                }
                /* items fetches in all, one per item; the last puts the counter back */
                if (sched) {
                    const int c = (int)atomicAdd(sched, 1u);
                    if (c == items - 1) atomicExch(sched, 0u);
                    next = (int)gridDim.x + c;
                    next_item[(k + 1) & 1] = next;
                }
            }
            __syncwarp(lanes);
            if (sched) /* uniform: the block's items are a fixed round robin otherwise */
                for (int c = 0; c < NC; c++) hp_named_sync_n(HP_BAR_ITEM(c), 160);
            idx = __shfl_sync(lanes, next, 0);
        }
        return;
    }

    HP_SETMAXNREG("inc", NC, DYN, 160, HP_CONSUMER_REGS_RR, HP_CONSUMER_REGS);
    const int wg = threadIdx.x / 128 - 1, tid = threadIdx.x % 128;
    const int warp = tid / 32, lane = tid % 32, q4 = lane % 4;
    const int Sq = (int)a.Sq;
    const float c = a.scale * PF_LOG2E;
    const unsigned qa = sq + wg * 64 * 128; /* this warpgroup's rows of each Q slab */
#if HP_PINGPONG
    /* the consumers take turns at issuing, in a ring: warpgroup w waits on
     * its turn barrier, then lets the next go; warpgroup 0 goes first */
#define HP_TURN_BEGIN() hp_named_sync(HP_BAR_TURN(wg))
#define HP_TURN_END() hp_named_arrive(HP_BAR_TURN((wg + 1) % NC))
    if (wg == NC - 1) hp_named_arrive(HP_BAR_TURN(0));
#else
#define HP_TURN_BEGIN() (void)0
#define HP_TURN_END() (void)0
#endif
        /* the hand-over of the next item's index (above), once this warpgroup's
         * last S of item k is done */
#define HP_TAKE_NEXT()                                                                             \
    do {                                                                                           \
        if (sched) hp_named_sync_n(HP_BAR_ITEM(wg), 160), next = next_item[(k + 1) & 1];           \
    } while (0)
    int it = 0, idx = (int)blockIdx.x;
    for (int k = 0; idx < items; k++) {
        int next = idx + (int)gridDim.x; /* without a work counter */
        hp_bar_wait(bar_q, k & 1);
        const hp_item w = hp_item_of(a, ws, idx, nrb, BM, BN);
        const int nt = w.nt, kmin = w.kmin, L = w.L;
        const int r0 = w.i0 + 64 * wg;             /* this warpgroup's first row */
        const int row = r0 + 16 * warp + lane / 4; /* this thread's rows: row, row + 8 */
        /* the warpgroup's key ranges: a tile inside every row's needs no mask. A
         * tile none of its rows sees still goes through the MMAs (all masked, P =
         * 0): a branch around wgmma makes ptxas serialise every wgmma (C7520). */
        int lo_last = 0, hi_first = 0, y2, y3;
        if (r0 < Sq) {
            pf_range(a, L, r0, &y2, &hi_first);
            pf_range(a, L, min(r0 + 63, Sq - 1), &lo_last, &y3);
        }
        float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
        float o[16][4]; /* D / 8 used */
#pragma unroll
        for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
        /* (sized for the widest tile; BN / 8 and BN / 16 used, the rest optimised away) */
        float sc[HP_BN_MAX / 8][4];     /* S of the current tile: 64 x BN (2 rows x BN / 4 keys) */
        unsigned pa[HP_BN_MAX / 16][4]; /* P of the previous tile, as the A operand of P V */
        if (nt == 0) {
            if (lane == 0) hp_bar_arrive(bar_q_empty);
            HP_TAKE_NEXT();
        }
        /* tile 0: S, softmax, P; tiles 1 .. nt - 1: S of t and P V of t - 1 issued
         * together, the softmax of t while P V runs; then the last P V */
        if (nt > 0) {
            const int s = it % HP_STAGES;
            hp_bar_wait(HP_FULL_K(s), (it / HP_STAGES) & 1);
            HP_TURN_BEGIN();
            hp_issue_s(sc, qa, sk + s * TILE, D, DT, BM, BN);
            HP_TURN_END();
            hp_wgmma_wait(0);
            hp_touch(sc, BN / 8);
            if (lane == 0) {
                hp_bar_arrive(HP_EMPTY_K(s));
                if (nt == 1) hp_bar_arrive(bar_q_empty);
            }
            if (nt == 1) HP_TAKE_NEXT();
            float al[2];
            hp_softmax(a, sc, m, l, al, c, kmin, L, row, q4,
                       kmin >= lo_last && kmin + BN <= hi_first, BN);
            hp_pack_p(sc, pa, DT, BN);
        }
        for (int t = 1; t < nt; t++) {
            const int s = (it + t) % HP_STAGES, sp = (it + t - 1) % HP_STAGES;
            const int j0 = kmin + t * BN;
            hp_bar_wait(HP_FULL_K(s), ((it + t) / HP_STAGES) & 1);
            hp_bar_wait(HP_FULL_V(sp), ((it + t - 1) / HP_STAGES) & 1);
            if (j0 > L) hp_zero_v(sv + sp * TILE, j0 - BN, L, tid, wg, HALVES, BN);
            HP_TURN_BEGIN();
            hp_issue_s(sc, qa, sk + s * TILE, D, DT, BM, BN);
            hp_issue_pv(o, pa, sv + sp * TILE, D, DT, BN);
            HP_TURN_END();
            hp_wgmma_wait(1); /* S is in; P V may still run */
            hp_touch(sc, BN / 8);
            if (lane == 0) {
                hp_bar_arrive(HP_EMPTY_K(s));
                if (t == nt - 1) hp_bar_arrive(bar_q_empty); /* Q is free for the next item */
            }
            if (t == nt - 1) HP_TAKE_NEXT();
            float al[2];
            hp_softmax(a, sc, m, l, al, c, j0, L, row, q4, j0 >= lo_last && j0 + BN <= hi_first,
                       BN);
            hp_wgmma_wait(0); /* P V is done: O may be rescaled and P rewritten */
            hp_touch(o, D / 8);
            hp_touch_u(pa, BN / 16);
            if (lane == 0) hp_bar_arrive(HP_EMPTY_V(sp));
            /* O times the factors, skipped by a warp none of whose rows' maxima
             * moved (every factor exactly 1: the product would be O itself) —
             * past the first tiles, most of them on long rows */
            if (!HP_LAZY_RESCALE || __any_sync(0xffffffffu, al[0] != 1.0f || al[1] != 1.0f)) {
#pragma unroll
                for (int n = 0; n < D / 8; n++)
                    o[n][0] *= al[0], o[n][1] *= al[0], o[n][2] *= al[1], o[n][3] *= al[1];
            }
            hp_pack_p(sc, pa, DT, BN);
        }
        if (nt > 0) {
            const int sp = (it + nt - 1) % HP_STAGES, jp = kmin + (nt - 1) * BN;
            hp_bar_wait(HP_FULL_V(sp), ((it + nt - 1) / HP_STAGES) & 1);
            if (jp + BN > L) hp_zero_v(sv + sp * TILE, jp, L, tid, wg, HALVES, BN);
            HP_TURN_BEGIN();
            hp_issue_pv(o, pa, sv + sp * TILE, D, DT, BN);
            HP_TURN_END();
            hp_wgmma_wait(0);
            hp_touch(o, D / 8);
            if (lane == 0) hp_bar_arrive(HP_EMPTY_V(sp));
        }
        it += nt;
        /* The row sums over the 4 lanes of a row: with two consumers reduced
         * once for either epilogue (+2-5 % at head_dim 64, 512-1K rows), with
         * three in each branch (hoisted, head_dim 64 at 32K lost 3-4 %). */
        if (HP_LSUM_ONCE && NC == 2) {
            float ls[2];
#pragma unroll
            for (int x = 0; x < 2; x++) {
                ls[x] = l[x] + __shfl_xor_sync(0xffffffffu, l[x], 1);
                ls[x] += __shfl_xor_sync(0xffffffffu, ls[x], 2);
            }
            if (STAGE_O) {
                float inv[2];
#pragma unroll
                for (int x = 0; x < 2; x++) {
                    inv[x] = m[x] == -INFINITY ? 0.0f : 1.0f / ls[x];
                    if (a.has_lse && q4 == 0 && row + 8 * x < Sq)
                        pf_store_lse(a, w.b, w.h, row + 8 * x, m[x], ls[x]);
                }
                if (r0 < Sq) hp_store_o(mp, o, inv, so, wg, tid, r0, w.h, w.b, D, DT, BM);
            } else {
#pragma unroll
                for (int x = 0; x < 2; x++) {
                    if (ws.splits > 1)
                        pf_store_part(a, ws, w.split, w.b, w.h, row + 8 * x, m[x], ls[x], o, x,
                                      NULL, D);
                    else
                        pf_store_row(a, w.b, w.h, row + 8 * x, m[x], ls[x], o, x, NULL, D);
                }
            }
            idx = next;
            continue;
        }
        if (STAGE_O) {
            float inv[2];
#pragma unroll
            for (int x = 0; x < 2; x++) {
                float lx = l[x];
                lx += __shfl_xor_sync(0xffffffffu, lx, 1);
                lx += __shfl_xor_sync(0xffffffffu, lx, 2);
                inv[x] = m[x] == -INFINITY ? 0.0f : 1.0f / lx;
                if (a.has_lse && q4 == 0 && row + 8 * x < Sq)
                    pf_store_lse(a, w.b, w.h, row + 8 * x, m[x], lx);
            }
            if (r0 < Sq) hp_store_o(mp, o, inv, so, wg, tid, r0, w.h, w.b, D, DT, BM);
            idx = next;
            continue;
        }
#pragma unroll
        for (int x = 0; x < 2; x++) {
            float lx = l[x];
            lx += __shfl_xor_sync(0xffffffffu, lx, 1);
            lx += __shfl_xor_sync(0xffffffffu, lx, 2);
            if (ws.splits > 1)
                pf_store_part(a, ws, w.split, w.b, w.h, row + 8 * x, m[x], lx, o, x, NULL, D);
            else
                pf_store_row(a, w.b, w.h, row + 8 * x, m[x], lx, o, x, NULL, D);
        }
        idx = next;
    }
    /* the staged stores must have read shared memory before the block exits */
    if (STAGE_O && tid == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#undef HP_TAKE_NEXT
#undef HP_TURN_BEGIN
#undef HP_TURN_END
#undef HP_FULL_K
#undef HP_FULL_V
#undef HP_EMPTY_K
#undef HP_EMPTY_V
#endif
}

/* name, type, head_dim, consumers, keys per tile, whether it takes a work
 * counter, whether it can stage O for bulk stores */
#define HP_KERNEL(name, DT, D, NC, BN, DYN, SO)                                                    \
    __global__ void __launch_bounds__(HP_THREADS(NC), 1)                                           \
        name(const __grid_constant__ hp_maps mp, kr_cu_attention a, kr_cu_prefill_ws ws, int nrb,  \
             int items) {                                                                          \
        hp_body(mp, a, ws, nrb, items, DT, D, NC, BN, DYN, SO);                                    \
    }
/* The six kernels of one type t, in hp_which's order: name suffix, type,
 * head_dim, consumers, keys per tile, work counter, O staged (X: what to make
 * of each — the kernel, or its entry in a host table). */
#define HP_KERNEL_TABLE(X, t, DT)                                                                  \
    X(t, d64_nc2, DT, 64, 2, HP_BN, true, false)                                                   \
    X(t, d64, DT, 64, HP_NC64, HP_BN, true, false)                                                 \
    X(t, d128, DT, 128, 2, HP_BN, true, false)                                                     \
    X(t, d128_short, DT, 128, 2, HP_BN, true, true)                                                \
    X(t, d128_rr, DT, 128, 2, HP_BN, false, true)                                                  \
    X(t, d128_wide, DT, 128, 2, HP_BN_WIDE, false, false)
#define HP_DEFINE(t, sfx, DT, D, NC, BN, DYN, SO) HP_KERNEL(hp_##t##_##sfx, DT, D, NC, BN, DYN, SO)
HP_KERNEL_TABLE(HP_DEFINE, f16, KR_F16)
HP_KERNEL_TABLE(HP_DEFINE, bf16, KR_BF16)

typedef void (*hp_fn)(hp_maps, kr_cu_attention, kr_cu_prefill_ws, int, int);

/* Consumer warpgroups for the call (H100 lab, session 11: at head_dim 64
 * three beat two by 5-15 % from 2K rows, two beat three by 10-14 % on causal
 * 512-1K, where 128-row items balance better than 192-row ones). */
static int hp_consumers(const kr_cu_attention *a) {
    return a->D == 64 && a->Sq > HP_NC64_SHORT ? HP_NC64 : 2;
}

/* Whether the call has tiles of unequal cost (a causal mask or a window). */
static bool hp_uneven(const kr_cu_attention *a) {
    return a->causal || a->window_left >= 0 || a->window_right >= 0;
}

/* Whether the call takes the wide-tile kernel (head_dim 128, no mask or
 * window, at least HP_WIDE_MIN_KEYS keys). */
static bool hp_wide(const kr_cu_attention *a) {
    return a->D == 128 && !hp_uneven(a) && a->Skv >= HP_WIDE_MIN_KEYS;
}

/* Keys per K/V tile for the call. */
static int hp_tile_keys(const kr_cu_attention *a) { return hp_wide(a) ? HP_BN_WIDE : HP_BN; }

/* The kernel for the call (an index into hp_kernel's table): head_dim 64
 * with two or three consumers (0, 1); head_dim 128 masked (work counter) over
 * more keys than HP_STAGE_O_MAX_KEYS (2) or fewer (3, O staged), unmasked
 * (fixed round robin, 24 / 240 registers, O staged: 4) or wide (5). */
static int hp_which(const kr_cu_attention *a, int nc) {
    if (a->D != 128) return nc != 2;
    if (hp_uneven(a)) return a->Skv > HP_STAGE_O_MAX_KEYS ? 2 : 3;
    return hp_wide(a) ? 5 : 4;
}
#define HP_FN(t, sfx, DT, D, NC, BN, DYN, SO) hp_##t##_##sfx,
#define HP_SO(t, sfx, DT, D, NC, BN, DYN, SO) SO,
static const bool hp_which_stages_o[] = {HP_KERNEL_TABLE(HP_SO, f16, KR_F16)};

static hp_fn hp_kernel(const kr_cu_attention *a, int nc) {
    static const hp_fn fns[2][6] = {{HP_KERNEL_TABLE(HP_FN, f16, KR_F16)},
                                    {HP_KERNEL_TABLE(HP_FN, bf16, KR_BF16)}};
    return fns[a->k.dtype == KR_BF16][hp_which(a, nc)];
}

/* ---- host side: the tensor maps -------------------------------------------------------- */

typedef CUresult (*hp_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                 const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                 const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/* cuTensorMapEncodeTiled from the driver the runtime loaded (no link to
 * libcuda); NULL when the driver has none. Looked up once. */
static hp_encode_fn hp_encoder(void) {
    static hp_encode_fn fn;
    static int tried;
    if (!tried) {
        void *p = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                             &q) == cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (hp_encode_fn)p;
        tried = 1;
    }
    return fn;
}

/* Byte stride of a dimension for the map: a multiple of 16 below 2^40; a
 * dimension of extent 1 is never stepped, so any valid value does. */
static bool hp_stride(int64_t elems, int64_t es, int64_t extent, cuuint64_t *out) {
    const int64_t bytes = es * elems;
    if (extent == 1) {
        *out = 16;
        return true;
    }
    if (bytes <= 0 || bytes % 16 || bytes >= ((int64_t)1 << 40)) return false;
    *out = (cuuint64_t)bytes;
    return true;
}

/* A [B][S][H][D] view (strides in elements, D unit) as a 4-d map {D, S, H,
 * B} with boxes of 128 bytes of channels (64 f16/bf16, 128 i8) x rows x 1 x
 * 1, 128-byte swizzle (the decode's TMA variant uses it too: common.cuh). */
bool cu_tensor_map(CUtensorMap *map, const kr_tensor *t, int64_t B, int64_t S, int64_t H, int64_t D,
                   int rows) {
    hp_encode_fn enc = hp_encoder();
    const int64_t es = t->dtype == KR_I8 ? 1 : 2;
    if (!enc || t->stride[3] != 1 || (uintptr_t)t->data % 16) return false;
    const cuuint64_t dims[4] = {(cuuint64_t)D, (cuuint64_t)S, (cuuint64_t)H, (cuuint64_t)B};
    cuuint64_t strides[3];
    if (!hp_stride(t->stride[1], es, S, &strides[0]) ||
        !hp_stride(t->stride[2], es, H, &strides[1]) ||
        !hp_stride(t->stride[0], es, B, &strides[2]))
        return false;
    const cuuint32_t box[4] = {(cuuint32_t)(128 / es), (cuuint32_t)rows, 1, 1},
                     one[4] = {1, 1, 1, 1};
    const CUtensorMapDataType dt = t->dtype == KR_I8     ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                   : t->dtype == KR_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                         : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    return enc(map, dt, 4, t->data, dims, strides, box, one, CU_TENSOR_MAP_INTERLEAVE_NONE,
               CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* Whether the call stages O for bulk stores (its kernel can, the call is
 * unsplit, and out is in q's type with a tensor map, which goes to *map);
 * else the kernel stores O from registers. */
static bool hp_stage_o(const kr_cu_attention *a, const kr_cu_prefill_ws *ws, int nc,
                       CUtensorMap *map) {
    return HP_TMA_STORE && hp_which_stages_o[hp_which(a, nc)] && ws->splits <= 1 &&
           a->out.dtype == a->q.dtype && cu_tensor_map(map, &a->out, a->B, a->Sq, a->H, a->D, 64);
}

extern "C" int kr_cu_hopper_supported(const kr_cu_attention *a, char *why, size_t n) {
    if (a->cc != 90) {
        snprintf(why, n, "Hopper prefill kernel needs compute capability 9.0, have %d.%d",
                 a->cc / 10, a->cc % 10);
        return 0;
    }
    if (a->int8) {
        snprintf(why, n, "Hopper prefill kernel reads f16/bf16 K/V (int8 cache: sm_80 kernel)");
        return 0;
    }
    if (a->q.dtype != a->k.dtype || a->q.stride[3] != 1) {
        snprintf(why, n, "Hopper prefill kernel needs q in the K/V type with unit inner stride");
        return 0;
    }
    if (!kr_cu_prefill_supported(a, why, n)) return 0;
    static int image = -1; /* the sm_90a image is in this build and loads */
    if (image < 0) {
        cudaFuncAttributes fa;
        image = cudaFuncGetAttributes(&fa, (const void *)hp_f16_d64) == cudaSuccess;
        cudaGetLastError();
    }
    if (!image) {
        snprintf(why, n, "Hopper prefill kernel: no sm_90a image in this build");
        return 0;
    }
    CUtensorMap m;
    const int bn = hp_tile_keys(a);
    if (!cu_tensor_map(&m, &a->q, a->B, a->Sq, a->H, a->D, HP_BM(hp_consumers(a))) ||
        !cu_tensor_map(&m, &a->k, a->B, a->Skv, a->Hkv, a->D, bn) ||
        !cu_tensor_map(&m, &a->v, a->B, a->Skv, a->Hkv, a->D, bn)) {
        snprintf(why, n,
                 "Hopper prefill kernel: q/K/V not expressible as tensor maps (16-byte aligned "
                 "base and strides needed)");
        return 0;
    }
    return 1;
}

extern "C" int64_t kr_cu_hopper_splits(const kr_cu_attention *a, int n_sm) {
    /* one block per SM: split the keys only when the row blocks leave most of
     * the SMs idle, every split at least 4 tiles long */
    const int64_t bm = HP_BM(hp_consumers(a));
    const int64_t blocks = (a->Sq + bm - 1) / bm * a->H * a->B;
    if (4 * blocks >= 3 * (int64_t)n_sm) return 1;
    int64_t s = (n_sm + blocks - 1) / blocks;
    const int64_t by_len = a->Skv / (4 * hp_tile_keys(a));
    if (s > by_len) s = by_len;
    if (s > KR_CU_PREFILL_MAX_SPLITS) s = KR_CU_PREFILL_MAX_SPLITS;
    if (s * a->B > 65535) s = 65535 / a->B;
    return s < 1 ? 1 : s;
}

extern "C" kr_status kr_cu_hopper_prefill(const kr_cu_attention *a, const kr_cu_prefill_ws *ws,
                                          void *stream, char *err, size_t n) {
    const int nc = hp_consumers(a), bn = hp_tile_keys(a);
    const hp_fn fn = hp_kernel(a, nc);
    hp_maps mp;
    memset(&mp, 0, sizeof mp);
    mp.o_ok = hp_stage_o(a, ws, nc, &mp.o);
    const size_t smem = hp_smem_bytes(a->D, nc, bn, mp.o_ok);
    kr_status st = cu_allow_smem((const void *)fn, smem, "Hopper prefill attention", err, n);
    if (st) return st;
    if (a->Sq == 0 || a->B == 0 || a->H == 0) return KR_OK;
    if (!cu_tensor_map(&mp.q, &a->q, a->B, a->Sq, a->H, a->D, HP_BM(nc)) ||
        !cu_tensor_map(&mp.k, &a->k, a->B, a->Skv, a->Hkv, a->D, bn) ||
        !cu_tensor_map(&mp.v, &a->v, a->B, a->Skv, a->Hkv, a->D, bn)) {
        snprintf(err, n, "Hopper prefill attention: cuTensorMapEncodeTiled refused a map");
        return KR_ERR_BACKEND;
    }
    const int splits = ws->splits > 1 ? ws->splits : 1;
    const int nrb = (int)((a->Sq + HP_BM(nc) - 1) / HP_BM(nc));
    const int64_t items = (int64_t)nrb * a->H * a->B * splits;
    if (items > 0x7fffffff) {
        snprintf(err, n,
                 "Hopper prefill attention: %lld work items (row blocks x heads x batch) "
                 "exceed 2^31 - 1",
                 (long long)items);
        return KR_ERR_UNSUPPORTED;
    }
    /* Persistent: at most one block per SM. Blocks take the next item from
     * the work counter (ws->sched) as they free up where items differ in cost
     * (causal, window) or at head_dim 64; the producer loads the next item's
     * Q and K/V while the consumers finish this one. Causal items of unequal
     * cost so balance themselves (a fixed round robin left SMs idle: 416 vs
     * 627 TFLOP/s causal at 16K in the H100 lab, session 6). Non-causal
     * head_dim 128 keeps the fixed round robin (blockIdx.x + k gridDim.x) in
     * its own kernel (wide tiles, no counter code). Uneven items without a
     * counter, or HP_PERSISTENT 0: one block per item. */
    kr_cu_prefill_ws w = *ws;
    const bool uneven = hp_uneven(a);
    if (!HP_DYNAMIC || (!uneven && a->D != 64)) w.sched = NULL;
    int64_t grid = items;
#if HP_PERSISTENT
    int dev = 0, n_sm = 0;
    if ((w.sched || !uneven) && cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess &&
        n_sm > 0 && grid > n_sm)
        grid = n_sm;
#endif
    if (grid == items) w.sched = NULL; /* an item a block: nothing to fetch */
    fn<<<(unsigned)grid, (unsigned)HP_THREADS(nc), smem, (cudaStream_t)stream>>>(mp, *a, w, nrb,
                                                                                 (int)items);
    return cu_launched("Hopper prefill attention", err, n);
}
