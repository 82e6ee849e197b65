/*
 * dispatch.c — routes validated op calls to a backend. Today the reference
 * backend serves everything; the backend registry plugs in here.
 */
#include "dispatch.h"
#include "../backends/ref/ref.h"

kr_status kr_dispatch_attention(kr_context *ctx, const kr_attention_args *a) {
    return kr_ref_attention(ctx, a);
}

kr_status kr_dispatch_rope(kr_context *ctx, const kr_rope_args *a) { return kr_ref_rope(ctx, a); }

kr_status kr_dispatch_kv_append(kr_context *ctx, const kr_kv_append_args *a) {
    return kr_ref_kv_append(ctx, a);
}
