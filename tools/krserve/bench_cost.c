/*
 * bench_cost.c — the minimal FLOP and byte counts of each case, as
 * `krserve bench --help` states them. Throughput is these counts over the
 * measured time, so a kernel that does extra work (re-reads K/V per query
 * head, computes masked tiles) is not credited for it.
 */
#include "bench.h"

double kb_attention_pairs(int64_t Sq, int64_t Skv, bool causal) {
    if (Sq <= 0 || Skv <= 0) return 0;
    if (!causal) return (double)Sq * (double)Skv;
    /* row i sees keys 0 .. Skv - Sq + i, clipped to [0, Skv] */
    double pairs = 0;
    for (int64_t i = 0; i < Sq; i++) {
        int64_t n = Skv - Sq + i + 1;
        if (n < 0) n = 0;
        if (n > Skv) n = Skv;
        pairs += (double)n;
    }
    return pairs;
}

double kb_kv_token_bytes(int64_t kv_heads, int64_t head_dim, kr_dtype kv_dtype) {
    double row = (double)head_dim * (double)kr_dtype_size(kv_dtype);
    if (kv_dtype == KR_I8) {
        const int64_t meta = KR_KV_INT8_META_BYTES(head_dim);
        row += (double)meta;
    }
    return 2.0 * (double)kv_heads * row;
}

kb_cost kb_case_cost(const kb_shape *s) {
    kb_cost c = {0, 0, false};
    const double B = (double)s->batch, H = (double)s->heads, Hkv = (double)s->kv_heads;
    const double D = (double)s->head_dim, S = (double)s->context;
    const double e = (double)kr_dtype_size(s->dtype);
    switch (s->kind) {
    case KB_ATTENTION:
        c.flops = 4.0 * B * H * D * kb_attention_pairs(s->context, s->context, s->causal);
        c.bytes = e * B * S * D * (2.0 * H + 2.0 * Hkv);
        c.compute = true;
        break;
    case KB_DECODE:
        c.flops = 4.0 * B * H * D * kb_attention_pairs(s->q_len, s->context, true);
        c.bytes = B * S * kb_kv_token_bytes(s->kv_heads, s->head_dim, s->kv_dtype) +
                  2.0 * e * B * (double)s->q_len * H * D;
        c.compute = s->q_len >= KB_DECODE_COMPUTE_Q_LEN; /* chunked prefill */
        break;
    case KB_ROPE: c.bytes = 2.0 * e * B * S * H * D + 8.0 * B * S; break;
    case KB_KV_APPEND:
        c.bytes = 2.0 * e * B * S * Hkv * D +
                  B * S * kb_kv_token_bytes(s->kv_heads, s->head_dim, s->kv_dtype);
        break;
    default: break;
    }
    return c;
}
