/*
 * tensor.c — tensor view constructors and the checks every op runs on its
 * tensor arguments before touching memory.
 */
#include "internal.h"

#include <string.h>

static kr_tensor make_view(void *data, kr_dtype dt, const int64_t shape[4],
                           const int64_t stride[4]) {
    kr_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dt;
    t.device.type = KR_DEVICE_CPU;
    t.device.index = 0;
    memcpy(t.shape, shape, sizeof t.shape);
    memcpy(t.stride, stride, sizeof t.stride);
    return t;
}

kr_tensor kr_tensor_bshd(void *data, kr_dtype dt, int64_t b, int64_t s, int64_t h, int64_t d) {
    const int64_t shape[4] = {b, s, h, d};
    const int64_t stride[4] = {s * h * d, h * d, d, 1};
    return make_view(data, dt, shape, stride);
}

kr_tensor kr_tensor_bhsd(void *data, kr_dtype dt, int64_t b, int64_t s, int64_t h, int64_t d) {
    const int64_t shape[4] = {b, s, h, d};
    const int64_t stride[4] = {h * s * d, d, s * d, 1};
    return make_view(data, dt, shape, stride);
}

kr_tensor kr_tensor_contiguous(void *data, kr_dtype dt, int64_t d0, int64_t d1, int64_t d2,
                               int64_t d3) {
    const int64_t shape[4] = {d0, d1, d2, d3};
    const int64_t stride[4] = {d1 * d2 * d3, d2 * d3, d3, 1};
    return make_view(data, dt, shape, stride);
}

kr_status kr_check_tensor(kr_context *ctx, const char *op, const char *name, const kr_tensor *t) {
    if (!t) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: %s is NULL", op, name);
    if (!t->data) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "%s: %s.data is NULL", op, name);
    if ((int)t->dtype < 0 || t->dtype >= KR_DTYPE_COUNT_)
        return kr_fail(ctx, KR_ERR_DTYPE, "%s: %s.dtype %d is not a kr_dtype", op, name,
                       (int)t->dtype);
    if (t->device.type != KR_DEVICE_CPU && t->device.type != KR_DEVICE_CUDA)
        return kr_fail(ctx, KR_ERR_DEVICE, "%s: %s.device.type %d is not a kr_device_type", op,
                       name, (int)t->device.type);
    for (int i = 0; i < 4; i++) {
        if (t->shape[i] < 1)
            return kr_fail(ctx, KR_ERR_SHAPE, "%s: %s.shape[%d] must be >= 1, got %lld", op, name,
                           i, (long long)t->shape[i]);
        if (t->stride[i] < 0)
            return kr_fail(ctx, KR_ERR_SHAPE, "%s: %s.stride[%d] must be >= 0, got %lld", op, name,
                           i, (long long)t->stride[i]);
    }
    return KR_OK;
}
