/*
 * dispatch.h — where a validated op call goes to find the backend that runs
 * it. The front-ends (ops.c, kv_cache.c) call these and nothing else.
 */
#ifndef KR_CORE_DISPATCH_H
#define KR_CORE_DISPATCH_H

#include "internal.h"

kr_status kr_dispatch_attention(kr_context *ctx, const kr_attention_args *a);
kr_status kr_dispatch_rope(kr_context *ctx, const kr_rope_args *a);
kr_status kr_dispatch_kv_append(kr_context *ctx, const kr_kv_append_args *a);

/* Shared validation of attention parameters (ops.c). */
kr_status kr_attention_resolve_params(kr_context *ctx, const char *op, const kr_attention_params *p,
                                      int64_t max_keys, kr_attention_args *a);
kr_status kr_attention_check_q_out(kr_context *ctx, const char *op, const kr_tensor *q,
                                   const kr_tensor *out, int64_t hkv, int64_t d);

/* Opens the context's state on `dev` and checks that each non-NULL t[i]
 * lives there (names[i] names it in the message). */
kr_status kr_check_devices(kr_context *ctx, const char *op, kr_device dev,
                           const kr_tensor *const *t, const char *const *names, int n,
                           void **state);

#endif /* KR_CORE_DISPATCH_H */
