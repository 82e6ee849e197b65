/*
 * context.c — the context handle: options, thread count, the per-context
 * detail message and logging.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

kr_context_options kr_context_options_default(void) {
    kr_context_options o;
    memset(&o, 0, sizeof o);
    o.n_threads = 0;
    o.log_level = KR_LOG_WARN;
    o.config_path = NULL;
    o.acceleration = o.fallback_to_reference = o.prefer_reference = KR_UNSET;
    for (int f = 0; f < KR_FEATURE_COUNT_; f++) o.features[f] = KR_UNSET;
    return o;
}

static void copy_err(char *err, size_t err_len, const char *msg) {
    if (err && err_len > 0) snprintf(err, err_len, "%s", msg);
}

kr_status kr_context_create(const kr_context_options *opts, kr_context **out, char *err,
                            size_t err_len) {
    if (!out) {
        copy_err(err, err_len, "kr_context_create: out is NULL");
        return KR_ERR_INVALID_ARGUMENT;
    }
    *out = NULL;
    kr_context_options o = opts ? *opts : kr_context_options_default();
    if (o.n_threads < 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "kr_context_create: n_threads must be >= 0, got %d",
                 (int)o.n_threads);
        copy_err(err, err_len, msg);
        return KR_ERR_INVALID_ARGUMENT;
    }
    if ((int)o.log_level < KR_LOG_DEBUG || o.log_level > KR_LOG_OFF) {
        char msg[128];
        snprintf(msg, sizeof msg, "kr_context_create: log_level %d is not a kr_log_level",
                 (int)o.log_level);
        copy_err(err, err_len, msg);
        return KR_ERR_INVALID_ARGUMENT;
    }
    kr_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        copy_err(err, err_len, "kr_context_create: out of memory");
        return KR_ERR_OUT_OF_MEMORY;
    }
    ctx->opts = o;
    /* strings are read at create time only and not kept */
    ctx->opts.config_path = ctx->opts.plugin_path = ctx->opts.backends = ctx->opts.deny_backends =
        NULL;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    ctx->n_threads = o.n_threads > 0 ? o.n_threads : (int32_t)(online > 0 ? online : 1);
    char msg[KR_ERRMSG_LEN] = "";
    kr_status s = kr_config_load(&o, &ctx->cfg, msg, sizeof msg);
    if (!s) s = kr_registry_init(ctx, msg, sizeof msg);
    if (s) {
        copy_err(err, err_len, msg);
        kr_context_free(ctx);
        return s;
    }
    *out = ctx;
    copy_err(err, err_len, "");
    return KR_OK;
}

void kr_context_free(kr_context *ctx) {
    if (!ctx) return;
    kr_registry_free(ctx);
    free(ctx);
}

const char *kr_context_last_error(const kr_context *ctx) {
    return ctx ? ctx->last_error : "no context";
}

int32_t kr_context_threads(const kr_context *ctx) { return ctx ? ctx->n_threads : 0; }

kr_status kr_fail(kr_context *ctx, kr_status status, const char *fmt, ...) {
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
        va_end(ap);
    }
    return status;
}

void kr_clear_error(kr_context *ctx) {
    if (ctx) ctx->last_error[0] = '\0';
}

static const char *level_name(kr_log_level l) {
    switch (l) {
    case KR_LOG_DEBUG: return "debug";
    case KR_LOG_INFO: return "info";
    case KR_LOG_WARN: return "warning";
    case KR_LOG_ERROR: return "error";
    default: return "log";
    }
}

void kr_log(const kr_context *ctx, kr_log_level level, const char *fmt, ...) {
    kr_log_level min = ctx ? ctx->opts.log_level : KR_LOG_WARN;
    if (level < min || min == KR_LOG_OFF) return;
    char msg[KR_ERRMSG_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (ctx && ctx->opts.log_fn)
        ctx->opts.log_fn(ctx->opts.log_user, level, msg);
    else
        fprintf(stderr, "krserve %s: %s\n", level_name(level), msg);
}
