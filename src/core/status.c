/*
 * status.c — version, status strings, dtype names and sizes: the small
 * constant tables of the public API, generated from the lists in krserve.h.
 */
#include "internal.h"

#include <stdio.h>

_Static_assert(sizeof(uint16_t) == 2, "the int8 KV row scale is one f16");
_Static_assert(KR_KV_INT8_META_BYTES(128) == 6, "head_dim 128: f16 row scale + 4 group bytes");
_Static_assert(KR_KV_INT8_META_BYTES(80) == 5, "a partial last group still gets its byte");
_Static_assert(sizeof(int64_t) == 8, "extents are 64-bit");

const char *kr_version(void) { return KR_VERSION_STRING; }
int kr_version_number(void) { return KR_VERSION_NUMBER; }

#define KR_STATUS_STR_(name, str) str,
#define KR_STATUS_NAME_(name, str) #name,
static const char *const status_strings[] = {KR_STATUS_LIST(KR_STATUS_STR_)};
static const char *const status_names[] = {KR_STATUS_LIST(KR_STATUS_NAME_)};
#undef KR_STATUS_STR_
#undef KR_STATUS_NAME_

const char *kr_status_string(kr_status s) {
    if ((int)s < 0 || s >= KR_STATUS_COUNT_) return "unknown status";
    return status_strings[s];
}

const char *kr_status_name(kr_status s) {
    if ((int)s < 0 || s >= KR_STATUS_COUNT_) return "KR_ERR_UNKNOWN";
    return status_names[s];
}

size_t kr_dtype_size(kr_dtype dt) {
    switch (dt) {
    case KR_F32: return 4;
    case KR_F16:
    case KR_BF16: return 2;
    case KR_I8: return 1;
    default: return 0;
    }
}

const char *kr_dtype_name(kr_dtype dt) {
    switch (dt) {
    case KR_F32: return "f32";
    case KR_F16: return "f16";
    case KR_BF16: return "bf16";
    case KR_I8: return "i8";
    default: return "?";
    }
}

bool kr_dtype_is_float(kr_dtype dt) { return dt == KR_F32 || dt == KR_F16 || dt == KR_BF16; }
