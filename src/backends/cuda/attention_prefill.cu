/*
 * attention_prefill.cu — flash attention for many query rows (prefill and
 * chunked prefill) on tensor cores, sm_80+: FlashAttention-2's scheme in
 * mma.sync.
 *
 * Grid: (head x sequence, row block). A block of PF_NW warps owns BM =
 * 16 PF_NW query rows of one head, 16 per warp; it walks the keys its rows
 * can see in tiles of PF_BN, K and V tiles brought into shared memory by
 * cp.async PF_STAGES - 1 tiles ahead. Per tile a warp computes S = Q K^T
 * (m16n8k16, K by ldmatrix), an online softmax on S in registers (exp2,
 * scale * log2 e folded into one FMA), and O += P V with S's accumulators
 * reused as P's A operand and V by ldmatrix.trans; O stays in registers
 * until the end. Q's fragments are loaded once into registers (any dtype,
 * rounded to the K/V type: q enters the MMA unscaled).
 *
 * Shared-memory tiles are [key][channel] rows of 2 D bytes with 16-byte
 * chunks XOR-swizzled by the row (chunk c of row r at c ^ (r % 8)), so the
 * 8 row addresses of every ldmatrix (plain or .trans) and the cp.async
 * writes fall in 8 different bank groups without padding.
 *
 * Masks: the row ranges (ops.h: causal aligned bottom-right, windows,
 * ragged lengths) are monotone in the row, so a block's tiles run from the
 * first row's lo to the last row's hi and nothing outside is loaded; a
 * tile that every row of a warp sees whole skips the per-key test, and a
 * warp none of whose rows sees the tile skips its MMAs. Causal row blocks
 * are scheduled heaviest first (the grid's row-block index runs backwards)
 * so the short ones fill the last wave.
 *
 *   q rows --(regs)--> S = Q K^T --(mask, online softmax)--> P --> O += P V
 *                        ^ K tile (smem, ldmatrix)              ^ V tile (.trans)
 */
#include "tc.cuh"

#define PF_LOG2E 1.4426950408889634f
#define PF_LN2 0.6931471805599453f
#ifndef PF_NW
#define PF_NW 4 /* warps per block: BM = 16 PF_NW rows */
#endif
#ifndef PF_BN
#define PF_BN 64 /* keys per tile */
#endif
#ifndef PF_STAGES
#define PF_STAGES 2 /* shared-memory tile buffers (loads run PF_STAGES - 1 ahead) */
#endif
#define PF_THREADS (PF_NW * 32)
#define PF_BM (16 * PF_NW)

/* Issue the copies of the K and V tile of keys [j0, j0 + PF_BN) into one
 * stage; keys at or past ke are zero-filled (a masked key's V must be a
 * finite 0, since its P of 0 still meets it in the MMA). */
__device__ __forceinline__ void pf_load_tile(const kr_cu_attention &a, char *ks, char *vs,
                                             int64_t b, int64_t hk, int64_t j0, int64_t ke,
                                             const int D) {
    const int CH = D / 8, RPP = PF_THREADS / CH;
    const int c = threadIdx.x % CH;
    for (int r = threadIdx.x / CH; r < PF_BN; r += RPP) {
        const int64_t j = j0 + r;
        const bool ok = j < ke;
        const int off = r * 2 * D + ((c ^ (r % 8)) * 16);
        const char *kp = ok ? (const char *)a.k.data + 2 * cu_off(a.k, b, j, hk, 8 * c)
                            : (const char *)a.k.data;
        const char *vp = ok ? (const char *)a.v.data + 2 * cu_off(a.v, b, j, hk, 8 * c)
                            : (const char *)a.v.data;
        tc_cp16(ks + off, kp, ok);
        tc_cp16(vs + off, vp, ok);
    }
}

/* This lane's A fragments of its warp's 16 q rows (row r0 and r0 + 8),
 * every 16-channel step; rows past Sq are zero. */
__device__ __forceinline__ void pf_q_frags(const kr_cu_attention &a, int64_t b, int64_t h,
                                           int64_t r0, unsigned (*qa)[4], const int DT,
                                           const int D) {
    const int q4 = threadIdx.x % 4;
#pragma unroll
    for (int k = 0; k < D / 16; k++)
#pragma unroll
        for (int x = 0; x < 4; x++) {
            const int64_t r = r0 + (x % 2) * 8, c = 16 * k + (x / 2) * 8 + 2 * q4;
            float lo = 0.0f, hi = 0.0f;
            if (r < a.Sq) {
                lo = cu_load(a.q.data, a.q.dtype, cu_off(a.q, b, r, h, c));
                hi = cu_load(a.q.data, a.q.dtype, cu_off(a.q, b, r, h, c + 1));
            }
            qa[k][x] = tc_pack(lo, hi, DT);
        }
}

/* One row's output and LSE: o / l, or zeros and -inf when the row saw no key
 * (m stays -inf; a NaN score makes m NaN and passes through). */
__device__ __forceinline__ void pf_store_row(const kr_cu_attention &a, int64_t b, int64_t h,
                                             int64_t r, float m, float l, float (*o)[4], int half,
                                             const int D) {
    const int q4 = threadIdx.x % 4;
    if (r >= a.Sq) return;
    const bool empty = m == -INFINITY;
    const float inv = empty ? 0.0f : 1.0f / l;
    const bool packed = (a.out.dtype == KR_F16 || a.out.dtype == KR_BF16) && a.out.stride[3] == 1 &&
                        (uintptr_t)a.out.data % 4 == 0;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        const float x = o[n][2 * half] * inv, y = o[n][2 * half + 1] * inv;
        const int64_t off = cu_off(a.out, b, r, h, 8 * n + 2 * q4);
        if (packed && off % 2 == 0)
            *(unsigned *)((char *)a.out.data + 2 * off) = tc_pack(x, y, a.out.dtype);
        else {
            cu_store(a.out.data, a.out.dtype, off, x);
            cu_store(a.out.data, a.out.dtype, off + a.out.stride[3], y);
        }
    }
    if (a.has_lse && q4 == 0)
        ((float *)a.lse.data)[cu_off(a.lse, b, h, r, 0)] =
            empty ? -INFINITY : (m + log2f(l)) * PF_LN2;
}

__device__ __forceinline__ void pf_body(const kr_cu_attention &a, const int DT, const int D) {
    extern __shared__ __align__(128) char smem_raw[];
    /* 1024-aligned, so a row's swizzle bits are free for XOR in addresses */
    char *smem = smem_raw + ((1024 - (unsigned)__cvta_generic_to_shared(smem_raw) % 1024) % 1024);
    const int NT = PF_BN / 8; /* 8-key blocks of a tile */
    const int NC = D / 8;     /* 8-channel blocks of the output */
    const int TILE = PF_BN * 2 * D;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, q4 = lane % 4;
    const int64_t h = blockIdx.x % a.H, b = blockIdx.x / a.H, hk = h / (a.H / a.Hkv);
    const int64_t i0 = (int64_t)(gridDim.y - 1 - blockIdx.y) * PF_BM;
    const int64_t L = a.has_lens ? cu_len(a.lens, b) : a.Skv;
    int64_t kmin, kmax, y0, y1;
    cu_row_range(a, L, i0, &kmin, &y0);
    cu_row_range(a, L, min(i0 + PF_BM, a.Sq) - 1, &y1, &kmax);
    if (kmax < kmin) kmax = kmin;
    /* this warp's rows: first and last real one; this lane's two */
    const int64_t w0 = i0 + warp * 16, w1 = min(w0 + 15, a.Sq - 1);
    const int64_t r0 = w0 + lane / 4, r1 = r0 + 8;
    /* key indices from here on fit 32 bits (kv lengths are int32 in kr_cu_lens) */
    int64_t x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (w0 < a.Sq) {
        cu_row_range(a, L, w0, &x[0], &x[1]);
        cu_row_range(a, L, w1, &x[2], &x[3]);
    }
    if (r0 < a.Sq) cu_row_range(a, L, r0, &x[4], &x[5]);
    if (r1 < a.Sq) cu_row_range(a, L, r1, &x[6], &x[7]);
    const int wlo = (int)x[0], hi_first = (int)x[1], lo_last = (int)x[2], whi = (int)x[3];
    const int lo0 = (int)x[4], hi0 = (int)x[5], lo1 = (int)x[6], hi1 = (int)x[7];
    const bool warp_live = w0 < a.Sq && whi > wlo;

    const int64_t nt = (kmax - kmin + PF_BN - 1) / PF_BN;
    for (int s = 0; s < PF_STAGES - 1; s++) {
        if (s < nt)
            pf_load_tile(a, smem + s * 2 * TILE, smem + s * 2 * TILE + TILE, b, hk,
                         kmin + (int64_t)s * PF_BN, kmax, D);
        tc_commit();
    }
    unsigned qa[8][4]; /* D / 16 <= 8 used */
    pf_q_frags(a, b, h, r0, qa, DT, D);
    const float c = a.scale * PF_LOG2E;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f, o[16][4]; /* NC <= 16 used */
#pragma unroll
    for (int n = 0; n < NC; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    /* ldmatrix row addresses: K row (key) 8 (n + lane / 16) + lane % 8, channel
     * chunk (2 k + (lane / 8) % 2) ^ (lane % 8); V row 16 k + lane % 8 +
     * 8 ((lane / 8) % 2), chunk (n + lane / 16) ^ (lane % 8). 2 k and n are
     * even, so chunk = lane's part ^ (2 k or n): the lane's base address
     * carries its part and each step XORs in the rest (rows are 2 D bytes,
     * stages 1024-aligned: the chunk bits of the row offsets are zero). */
    const unsigned sbase = (unsigned)__cvta_generic_to_shared(smem);
    const unsigned klane = (unsigned)(((lane / 16) * 8 + lane % 8) * 2 * D) +
                           (unsigned)((((lane / 8) % 2) ^ (lane % 8)) * 16);
    const unsigned vlane = (unsigned)((lane % 8 + 8 * ((lane / 8) % 2)) * 2 * D) +
                           (unsigned)(((lane / 16) ^ (lane % 8)) * 16);

    for (int64_t t = 0; t < nt; t++) {
        tc_wait(PF_STAGES - 2);
        __syncthreads();
        {
            const int64_t tn = t + PF_STAGES - 1;
            char *st = smem + (tn % PF_STAGES) * 2 * TILE;
            if (tn < nt) pf_load_tile(a, st, st + TILE, b, hk, kmin + tn * PF_BN, kmax, D);
            tc_commit();
        }
        const int j0 = (int)(kmin + t * PF_BN);
        if (!warp_live || j0 >= whi || j0 + PF_BN <= wlo) continue;
        const unsigned kt = sbase + (unsigned)((t % PF_STAGES) * 2 * TILE), vt = kt + TILE;

        float s[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int k = 0; k < D / 16; k++)
#pragma unroll
            for (int n = 0; n < NT; n += 2) {
                unsigned f[4];
                tc_ldsm4_at(((kt + klane) ^ (32 * k)) + 8 * n * 2 * D, f);
                tc_mma(s[n], qa[k], f[0], f[1], DT);
                tc_mma(s[n + 1], qa[k], f[2], f[3], DT);
            }

        /* mask (unless every row of the warp sees the whole tile) and row maxima */
        const bool full = j0 >= lo_last && j0 + PF_BN <= hi_first;
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                if (!full) {
                    const int j = j0 + 8 * n + 2 * q4 + (e % 2);
                    const bool hidden = e < 2 ? (j < lo0 || j >= hi0) : (j < lo1 || j >= hi1);
                    if (hidden) s[n][e] = -INFINITY;
                }
                if (e < 2)
                    mx0 = cu_nanmax(mx0, s[n][e]);
                else
                    mx1 = cu_nanmax(mx1, s[n][e]);
            }
        mx0 = cu_nanmax(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = cu_nanmax(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = cu_nanmax(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = cu_nanmax(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        /* online softmax in the log2 domain: m is the running max of s * c */
        const float mn0 = cu_nanmax(m0, mx0 * c), mn1 = cu_nanmax(m1, mx1 * c);
        const float al0 = mn0 == -INFINITY ? 1.0f : exp2f(m0 - mn0);
        const float al1 = mn1 == -INFINITY ? 1.0f : exp2f(m1 - mn1);
        const float sub0 = mn0 == -INFINITY ? 0.0f : mn0, sub1 = mn1 == -INFINITY ? 0.0f : mn1;
        m0 = mn0, m1 = mn1;
        l0 *= al0, l1 *= al1;
#pragma unroll
        for (int n = 0; n < NC; n++) o[n][0] *= al0, o[n][1] *= al0, o[n][2] *= al1, o[n][3] *= al1;
#pragma unroll
        for (int n = 0; n < NT; n++) {
            s[n][0] = exp2f(fmaf(s[n][0], c, -sub0));
            s[n][1] = exp2f(fmaf(s[n][1], c, -sub0));
            s[n][2] = exp2f(fmaf(s[n][2], c, -sub1));
            s[n][3] = exp2f(fmaf(s[n][3], c, -sub1));
            l0 += s[n][0] + s[n][1];
            l1 += s[n][2] + s[n][3];
        }
        /* O += P V, 16 keys a step: P's A fragment from two 8-key blocks of S */
#pragma unroll
        for (int k = 0; k < PF_BN / 16; k++) {
            const unsigned pa[4] = {
                tc_pack(s[2 * k][0], s[2 * k][1], DT), tc_pack(s[2 * k][2], s[2 * k][3], DT),
                tc_pack(s[2 * k + 1][0], s[2 * k + 1][1], DT),
                tc_pack(s[2 * k + 1][2], s[2 * k + 1][3], DT)};
#pragma unroll
            for (int n = 0; n < NC; n += 2) {
                unsigned f[4];
                tc_ldsm4_t_at(((vt + vlane) ^ (16 * n)) + 16 * k * 2 * D, f);
                tc_mma(o[n], pa, f[0], f[1], DT);
                tc_mma(o[n + 1], pa, f[2], f[3], DT);
            }
        }
    }
    tc_wait(0);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    pf_store_row(a, b, h, r0, m0, l0, o, 0, D);
    pf_store_row(a, b, h, r1, m1, l1, o, 1, D);
}

#define PF_KERNEL(name, DT, D)                                                                     \
    __global__ void __launch_bounds__(PF_THREADS) name(kr_cu_attention a) { pf_body(a, DT, D); }
PF_KERNEL(pf_f16_d64, KR_F16, 64)
PF_KERNEL(pf_f16_d128, KR_F16, 128)
PF_KERNEL(pf_bf16_d64, KR_BF16, 64)
PF_KERNEL(pf_bf16_d128, KR_BF16, 128)

static bool pf_aligned16(const kr_tensor *t) {
    if ((uintptr_t)t->data % 16) return false;
    for (int i = 0; i < 3; i++)
        if (t->stride[i] % 8) return false;
    return t->stride[3] == 1;
}

extern "C" int kr_cu_prefill_supported(const kr_cu_attention *a, char *why, size_t n) {
    if (a->D != 64 && a->D != 128) {
        snprintf(why, n, "prefill kernel takes head_dim 64 or 128, got %lld", (long long)a->D);
        return 0;
    }
    if (a->int8) {
        snprintf(why, n, "prefill kernel does not read the int8 cache yet");
        return 0;
    }
    if (a->has_mask) {
        snprintf(why, n, "prefill kernel takes no additive mask");
        return 0;
    }
    if (a->k.dtype != a->v.dtype || (a->k.dtype != KR_F16 && a->k.dtype != KR_BF16)) {
        snprintf(why, n, "prefill kernel takes f16 or bf16 K/V of one type, got %s/%s",
                 kr_dtype_name(a->k.dtype), kr_dtype_name(a->v.dtype));
        return 0;
    }
    if (!pf_aligned16(&a->k) || !pf_aligned16(&a->v)) {
        snprintf(why, n, "prefill kernel needs K/V rows 16-byte aligned with unit inner stride");
        return 0;
    }
    if (!(a->scale > 0.0f)) {
        snprintf(why, n, "prefill kernel takes a positive scale, got %g", (double)a->scale);
        return 0;
    }
    if (a->Skv > 0x7fffffff - 2 * PF_BN) {
        snprintf(why, n, "prefill kernel: kv length %lld past 32-bit key indices",
                 (long long)a->Skv);
        return 0;
    }
    if (a->B * a->H > 0x7fffffff || (a->Sq + PF_BM - 1) / PF_BM > 65535) {
        snprintf(why, n, "prefill kernel grid: batch x heads %lld or Sq %lld too large",
                 (long long)(a->B * a->H), (long long)a->Sq);
        return 0;
    }
    return 1;
}

extern "C" kr_status kr_cu_prefill(const kr_cu_attention *a, void *stream, char *err, size_t n) {
    typedef void (*fn_t)(kr_cu_attention);
    const fn_t fns[2][2] = {{pf_f16_d64, pf_f16_d128}, {pf_bf16_d64, pf_bf16_d128}};
    const fn_t fn = fns[a->k.dtype == KR_BF16][a->D == 128];
    const size_t smem = (size_t)PF_STAGES * 2 * PF_BN * 2 * (size_t)a->D + 1024;
    if (smem > 48 * 1024) {
        const cudaError_t e = cudaFuncSetAttribute(
            (const void *)fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) {
            snprintf(err, n, "prefill attention: %zu bytes of shared memory: %s", smem,
                     cudaGetErrorString(e));
            return KR_ERR_BACKEND;
        }
    }
    if (a->Sq == 0 || a->B == 0 || a->H == 0) return KR_OK;
    dim3 grid((unsigned)(a->B * a->H), (unsigned)((a->Sq + PF_BM - 1) / PF_BM));
    fn<<<grid, PF_THREADS, smem, (cudaStream_t)stream>>>(*a);
    return cu_launched("prefill attention", err, n);
}
