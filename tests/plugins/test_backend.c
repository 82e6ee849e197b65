/*
 * test_backend.c — a test-only acceleration plugin standing in for an
 * accelerated backend until real ones land: it runs the reference kernels
 * (compiled into it) under the name "test", so tests can prove plugin
 * loading, API-version refusal, fault injection, fallback and counters
 * without a GPU. TEST_API_VERSION builds a deliberately mismatched copy;
 * TEST_NO_ENTRY builds a library that is not a plugin at all. It declines
 * head_dim 80 attention, to show a supported-case refusal. With
 * KRSERVE_TEST_WRONG=1 in the environment its attention is deliberately
 * wrong (twice the score scale), so `krserve bench` can show it refuses to
 * time a wrong answer; with KRSERVE_TEST_WRONG=append its KV append reports
 * success and writes nothing (the bench must see the unwritten slots).
 */
#include "../../src/backends/ref/ref.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TEST_API_VERSION
#define TEST_API_VERSION KR_BACKEND_API_VERSION
#endif

static int test_probe(char *reason, size_t n) {
    snprintf(reason, n, "test plugin running the reference kernels");
    return 10;
}

static int test_device_count(void) { return 1; }

static kr_status test_device_info(int device, kr_device_info *out) {
    (void)device;
    snprintf(out->name, sizeof out->name, "test device");
    return KR_OK;
}

static bool test_supports(kr_op op, const void *args, char *reason, size_t n) {
    if (op == KR_OP_ATTENTION && args && ((const kr_attention_args *)args)->D == 80) {
        snprintf(reason, n, "head_dim 80 not supported by the test backend");
        return false;
    }
    return true;
}

static kr_status test_attention(const kr_attention_args *a, char *err, size_t n) {
    const char *wrong = getenv("KRSERVE_TEST_WRONG");
    if (!wrong || wrong[0] != '1') return kr_ref_attention(a, err, n);
    kr_attention_args w = *a;
    w.scale *= 2;
    return kr_ref_attention(&w, err, n);
}

static kr_status test_kv_append(const kr_kv_append_args *a, char *err, size_t n) {
    const char *wrong = getenv("KRSERVE_TEST_WRONG");
    if (wrong && !strcmp(wrong, "append")) return KR_OK; /* nothing written */
    return kr_ref_kv_append(a, err, n);
}

static const kr_backend test_table = {
    .api_version = TEST_API_VERSION,
    .name = "test",
    .version = "0.0-test",
    .device_type = KR_DEVICE_CPU,
    .probe = test_probe,
    .device_count = test_device_count,
    .device_info = test_device_info,
    .supports = test_supports,
    .attention = test_attention,
    .rope = kr_ref_rope,
    .kv_append = test_kv_append,
};

#ifndef TEST_NO_ENTRY
__attribute__((visibility("default"))) const kr_backend *krserve_backend_entry(void);
const kr_backend *krserve_backend_entry(void) { return &test_table; }
#else
__attribute__((visibility("default"))) const kr_backend *not_the_entry(void);
const kr_backend *not_the_entry(void) { return &test_table; }
#endif
