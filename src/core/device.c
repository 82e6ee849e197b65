/*
 * device.c — devices behind the public API: the context's per-device state
 * (opened through the CUDA plugin's kr_device_ops on first use), device
 * memory, copies, streams, and the check that a CUDA view really points
 * at memory of its device.
 */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

kr_device kr_device_cpu(void) {
    kr_device d = {KR_DEVICE_CPU, 0};
    return d;
}

kr_device kr_device_cuda(int32_t index) {
    kr_device d = {KR_DEVICE_CUDA, index};
    return d;
}

kr_tensor kr_tensor_on(kr_tensor t, kr_device dev) {
    t.device = dev;
    return t;
}

static const char *type_name(kr_device_type t) {
    return t == KR_DEVICE_CPU ? "cpu" : t == KR_DEVICE_CUDA ? "cuda" : "?";
}

kr_status kr_device_state(kr_context *ctx, const char *op, kr_device dev, void **state) {
    *state = NULL;
    if (dev.type == KR_DEVICE_CPU) {
        if (dev.index != 0)
            return kr_fail(ctx, KR_ERR_DEVICE, "%s: cpu device index must be 0, got %d", op,
                           (int)dev.index);
        return KR_OK;
    }
    if (dev.type != KR_DEVICE_CUDA)
        return kr_fail(ctx, KR_ERR_DEVICE, "%s: device type %d is not a kr_device_type", op,
                       (int)dev.type);
    if (!ctx->dev_ops)
        return kr_fail(ctx, KR_ERR_DEVICE, "%s: CUDA is not available: %s", op, ctx->dev_reason);
    if (dev.index < 0 || dev.index >= KR_MAX_DEVICES)
        return kr_fail(ctx, KR_ERR_DEVICE, "%s: cuda device index %d is outside [0, %d)", op,
                       (int)dev.index, KR_MAX_DEVICES);
    if (!ctx->dev_state[dev.index]) {
        char err[KR_ERRMSG_LEN] = "";
        kr_status s = ctx->dev_ops->open(dev.index, &ctx->dev_state[dev.index], err, sizeof err);
        if (s) {
            ctx->dev_state[dev.index] = NULL;
            return kr_fail(ctx, s, "%s: cannot open cuda:%d: %s", op, (int)dev.index, err);
        }
    }
    *state = ctx->dev_state[dev.index];
    return KR_OK;
}

bool kr_is_device_pointer(const kr_context *ctx, const void *p) {
    return ctx->dev_ops && p && ctx->dev_ops->pointer_device(p) >= 0;
}

kr_status kr_check_on_device(kr_context *ctx, const char *op, const char *name, const kr_tensor *t,
                             kr_device dev) {
    if (t->device.type != dev.type || t->device.index != dev.index)
        return kr_fail(ctx, KR_ERR_DEVICE, "%s: %s is on %s:%d but the op runs on %s:%d", op, name,
                       type_name(t->device.type), (int)t->device.index, type_name(dev.type),
                       (int)dev.index);
    if (dev.type == KR_DEVICE_CPU) return KR_OK;
    void *state = NULL;
    kr_status s = kr_device_state(ctx, op, dev, &state);
    if (s) return s;
    const int32_t where = ctx->dev_ops->pointer_device(t->data);
    if (where != dev.index)
        return where < 0 ? kr_fail(ctx, KR_ERR_DEVICE,
                                   "%s: %s is tagged cuda:%d but its data is host memory", op, name,
                                   (int)dev.index)
                         : kr_fail(ctx, KR_ERR_DEVICE,
                                   "%s: %s is tagged cuda:%d but its data lives on cuda:%d", op,
                                   name, (int)dev.index, (int)where);
    return KR_OK;
}

kr_status kr_device_alloc(kr_context *ctx, kr_device dev, size_t bytes, void **out) {
    static const char op[] = "kr_device_alloc";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!out) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: out is NULL", op);
    *out = NULL;
    if (bytes == 0) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: bytes must be > 0", op);
    void *state = NULL;
    kr_status s = kr_device_state(ctx, op, dev, &state);
    if (s) return s;
    if (dev.type == KR_DEVICE_CPU) {
        const size_t rounded = (bytes + 63) / 64 * 64;
        *out = aligned_alloc(64, rounded);
        return *out ? KR_OK
                    : kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: %zu bytes of host memory", op, bytes);
    }
    char err[KR_ERRMSG_LEN] = "";
    s = ctx->dev_ops->alloc(dev.index, bytes, out, err, sizeof err);
    return s ? kr_fail(ctx, s, "%s: %zu bytes on cuda:%d: %s", op, bytes, (int)dev.index, err)
             : KR_OK;
}

kr_status kr_device_free(kr_context *ctx, kr_device dev, void *p) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!p) return KR_OK;
    void *state = NULL;
    kr_status s = kr_device_state(ctx, "kr_device_free", dev, &state);
    if (s) return s;
    if (dev.type == KR_DEVICE_CPU)
        free(p);
    else
        ctx->dev_ops->free(dev.index, p);
    return KR_OK;
}

/* The state a copy or fill runs on: that of the first CUDA side, opened. */
static kr_status copy_state(kr_context *ctx, const char *op, kr_device a, kr_device b,
                            void **state) {
    kr_status s = kr_device_state(ctx, op, a, state);
    if (!s) {
        void *other = NULL;
        s = kr_device_state(ctx, op, b, &other);
        if (!*state) *state = other;
    }
    return s;
}

kr_status kr_device_copy(kr_context *ctx, void *dst, kr_device dst_dev, const void *src,
                         kr_device src_dev, size_t bytes) {
    static const char op[] = "kr_device_copy";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (bytes == 0) return KR_OK;
    if (!dst || !src) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: dst or src is NULL", op);
    void *state = NULL;
    kr_status s = copy_state(ctx, op, dst_dev, src_dev, &state);
    if (s) return s;
    const void *ptrs[2] = {dst, src};
    const kr_device devs[2] = {dst_dev, src_dev};
    for (int i = 0; i < 2; i++) {
        if (devs[i].type != KR_DEVICE_CUDA) continue;
        const int32_t where = ctx->dev_ops->pointer_device(ptrs[i]);
        if (where != devs[i].index)
            return kr_fail(ctx, KR_ERR_DEVICE, "%s: %s is not device memory of cuda:%d", op,
                           i ? "src" : "dst", (int)devs[i].index);
    }
    if (!state) {
        memmove(dst, src, bytes);
        return KR_OK;
    }
    char err[KR_ERRMSG_LEN] = "";
    s = ctx->dev_ops->copy(state, dst, src, bytes, err, sizeof err);
    return s ? kr_fail(ctx, s, "%s: %zu bytes: %s", op, bytes, err) : KR_OK;
}

kr_status kr_device_fill(kr_context *ctx, kr_device dev, void *dst, int value, size_t bytes) {
    static const char op[] = "kr_device_fill";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (bytes == 0) return KR_OK;
    if (!dst) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: dst is NULL", op);
    void *state = NULL;
    kr_status s = kr_device_state(ctx, op, dev, &state);
    if (s) return s;
    if (!state) {
        memset(dst, value, bytes);
        return KR_OK;
    }
    if (ctx->dev_ops->pointer_device(dst) != dev.index)
        return kr_fail(ctx, KR_ERR_DEVICE, "%s: dst is not device memory of cuda:%d", op,
                       (int)dev.index);
    char err[KR_ERRMSG_LEN] = "";
    s = ctx->dev_ops->fill(state, dst, value, bytes, err, sizeof err);
    return s ? kr_fail(ctx, s, "%s: %zu bytes: %s", op, bytes, err) : KR_OK;
}

kr_status kr_context_set_stream(kr_context *ctx, kr_device dev, void *stream) {
    static const char op[] = "kr_context_set_stream";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (dev.type == KR_DEVICE_CPU)
        return kr_fail(ctx, KR_ERR_DEVICE, "%s: the CPU has no streams", op);
    void *state = NULL;
    kr_status s = kr_device_state(ctx, op, dev, &state);
    if (s) return s;
    char err[KR_ERRMSG_LEN] = "";
    s = ctx->dev_ops->set_stream(state, stream, err, sizeof err);
    return s ? kr_fail(ctx, s, "%s: %s", op, err) : KR_OK;
}

kr_status kr_context_get_stream(kr_context *ctx, kr_device dev, void **stream) {
    static const char op[] = "kr_context_get_stream";
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!stream) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: stream is NULL", op);
    *stream = NULL;
    if (dev.type == KR_DEVICE_CPU)
        return kr_fail(ctx, KR_ERR_DEVICE, "%s: the CPU has no streams", op);
    void *state = NULL;
    kr_status s = kr_device_state(ctx, op, dev, &state);
    if (s) return s;
    *stream = ctx->dev_ops->stream(state);
    return KR_OK;
}

kr_status kr_context_synchronize(kr_context *ctx) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    for (int d = 0; d < KR_MAX_DEVICES; d++) {
        if (!ctx->dev_state[d]) continue;
        char err[KR_ERRMSG_LEN] = "";
        kr_status s = ctx->dev_ops->sync(ctx->dev_state[d], err, sizeof err);
        if (s) return kr_fail(ctx, s, "kr_context_synchronize: cuda:%d: %s", d, err);
    }
    return KR_OK;
}
