/*
 * device.h — device memory and streams: what a caller needs to hand CUDA
 * tensors to the ops. Included by krserve.h.
 *
 * CUDA is served by the acceleration package (libkrserve-cuda.so). Without
 * it, or without a usable GPU, every call here that names a CUDA device
 * fails with KR_ERR_DEVICE and a message saying why (the plugin's reason),
 * and the CPU keeps working.
 *
 * Memory: kr_device_alloc gives device memory; a caller's own device memory
 * (from cudaMalloc, PyTorch, ...) is used by tagging a view with its device:
 *
 *     kr_tensor q = kr_tensor_on(kr_tensor_bshd(ptr, KR_F16, B, S, H, D),
 *                                kr_device_cuda(0));
 *
 * Every op checks that each CUDA view's pointer is device memory of that
 * device (a host pointer tagged CUDA is refused, never dereferenced).
 *
 * Streams: each context has its own stream per device (created on first
 * use). Ops on CUDA tensors are queued on it and return without waiting;
 * kr_context_synchronize waits and reports errors of queued work.
 * kr_context_set_stream makes the context use a caller's cudaStream_t
 * instead (for example PyTorch's current stream). kr_device_copy and
 * kr_device_fill are ordered on that stream and complete before they
 * return. A context, like its stream, is for one thread at a time.
 *
 * Host arrays stay on the host: kv_lens, n_new and the positions of
 * kr_kv_cache_append. kr_rope's positions may be host or device memory
 * for a CUDA x (device positions are used as given, without the
 * non-negative check host positions get).
 */
#ifndef KRSERVE_DEVICE_H
#define KRSERVE_DEVICE_H

#ifdef __cplusplus
extern "C" {
#endif

/** { KR_DEVICE_CPU, 0 }. */
KR_API kr_device kr_device_cpu(void);
/** { KR_DEVICE_CUDA, index }. */
KR_API kr_device kr_device_cuda(int32_t index);
/** The same view with its device set to `dev` (a caller's device pointer). */
KR_API kr_tensor kr_tensor_on(kr_tensor t, kr_device dev);

/** Allocates `bytes` (> 0) on `dev` (CPU: 64-byte aligned host memory). */
KR_API kr_status kr_device_alloc(kr_context *ctx, kr_device dev, size_t bytes, void **out);
/** Frees what kr_device_alloc gave; NULL is a no-op. */
KR_API kr_status kr_device_free(kr_context *ctx, kr_device dev, void *p);
/** Copies `bytes` between any two of host and device memory. */
KR_API kr_status kr_device_copy(kr_context *ctx, void *dst, kr_device dst_dev, const void *src,
                                kr_device src_dev, size_t bytes);
/** Sets `bytes` bytes at dst to the byte `value`. */
KR_API kr_status kr_device_fill(kr_context *ctx, kr_device dev, void *dst, int value, size_t bytes);

/** Makes the context's work on `dev` use `stream` (a cudaStream_t; NULL:
 *  back to the context's own, so the legacy default stream is named by
 *  cudaStreamLegacy, not by 0). The caller keeps the stream alive. */
KR_API kr_status kr_context_set_stream(kr_context *ctx, kr_device dev, void *stream);
/** The stream the context's work on `dev` uses now. */
KR_API kr_status kr_context_get_stream(kr_context *ctx, kr_device dev, void **stream);
/** Waits for the context's queued work on every device it has used;
 *  reports the first asynchronous error. */
KR_API kr_status kr_context_synchronize(kr_context *ctx);

#ifdef __cplusplus
}
#endif

#endif /* KRSERVE_DEVICE_H */
