/*
 * dispatch.c — maps each validated op call to its feature and device and
 * hands it to the registry's dispatcher (registry.c), which picks the
 * backend, counts, and falls back.
 */
#include "dispatch.h"
#include "backend.h"

kr_status kr_dispatch_attention(kr_context *ctx, const kr_attention_args *a) {
    return kr_dispatch(ctx, KR_OP_ATTENTION, KR_FEATURE_FLASH_ATTENTION, a->q->device.type, a);
}

kr_status kr_dispatch_rope(kr_context *ctx, const kr_rope_args *a) {
    return kr_dispatch(ctx, KR_OP_ROPE, KR_FEATURE_FUSED_ROPE, a->x->device.type, a);
}

kr_status kr_dispatch_kv_append(kr_context *ctx, const kr_kv_append_args *a) {
    const kr_feature f =
        a->cache->o.dtype == KR_I8 ? KR_FEATURE_KV_QUANTIZATION : KR_FEATURE_FUSED_ROPE;
    return kr_dispatch(ctx, KR_OP_KV_APPEND, f, a->cache->o.device.type, a);
}
