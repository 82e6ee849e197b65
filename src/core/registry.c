/*
 * registry.c — the backends of a context: the acceleration plugin
 * (libkrserve-cuda.so, found by dlopen along a search path and checked for
 * its API version), built-in backends, and ref last; configuration order
 * and deny-list; fault injection; and the public acceleration queries.
 */
#include "backend.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef KR_INSTALL_LIBDIR
#define KR_INSTALL_LIBDIR "/usr/local/lib"
#endif
#define KR_PLUGIN_FILE "libkrserve-cuda.so"

const char *kr_feature_name(kr_feature f) {
    switch (f) {
    case KR_FEATURE_FLASH_ATTENTION: return "flash_attention";
    case KR_FEATURE_FUSED_ROPE: return "fused_rope";
    case KR_FEATURE_KV_QUANTIZATION: return "kv_quantization";
    default: return "?";
    }
}

/* ---- fault injection ----------------------------------------------------- */

static kr_status parse_faults(kr_context *ctx, char *err, size_t err_len) {
    const char *env = getenv("KRSERVE_FAULT");
    if (!env || !*env) return KR_OK;
    static const char *const ops[] = {"attention", "rope", "kv_append", "probe", "load"};
    char buf[512];
    snprintf(buf, sizeof buf, "%s", env);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        kr_fault f = {0};
        /* op:backend[:n] */
        char *colon1 = strchr(tok, ':');
        char *colon2 = colon1 ? strchr(colon1 + 1, ':') : NULL;
        long long nth = 0;
        bool ok = colon1 && colon1 > tok && (size_t)(colon1 - tok) < sizeof f.op;
        if (ok) {
            memcpy(f.op, tok, (size_t)(colon1 - tok));
            const char *be = colon1 + 1;
            const size_t be_len = colon2 ? (size_t)(colon2 - be) : strlen(be);
            ok = be_len > 0 && be_len < sizeof f.backend;
            if (ok) memcpy(f.backend, be, be_len);
            if (ok && colon2) {
                char *end = NULL;
                nth = strtoll(colon2 + 1, &end, 10);
                ok = end != colon2 + 1 && *end == '\0' && nth > 0;
            }
        }
        bool op_ok = false;
        for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) op_ok |= !strcmp(f.op, ops[i]);
        if (!ok || !op_ok || ctx->n_faults == KR_MAX_FAULTS) {
            snprintf(err, err_len,
                     "environment KRSERVE_FAULT=%s: '%s' is not op:backend[:n] with op one of "
                     "attention, rope, kv_append, probe, load",
                     env, tok);
            return KR_ERR_CONFIG;
        }
        f.nth = nth;
        ctx->faults[ctx->n_faults++] = f;
    }
    return KR_OK;
}

/* Whether the fault list says this call of `op` on `backend` must fail. */
static bool fault_hit(kr_context *ctx, const char *op, const char *backend) {
    for (int i = 0; i < ctx->n_faults; i++) {
        kr_fault *f = &ctx->faults[i];
        if (strcmp(f->op, op) != 0 || strcmp(f->backend, backend) != 0) continue;
        f->seen++;
        if (f->nth == 0 || f->seen == f->nth) return true;
    }
    return false;
}

/* ---- plugin loading ------------------------------------------------------ */

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* A plugin candidate: a file, or a directory holding KR_PLUGIN_FILE. */
static void candidate_file(const char *where, char *out, size_t n) {
    if (is_dir(where))
        snprintf(out, n, "%s/%s", where, KR_PLUGIN_FILE);
    else
        snprintf(out, n, "%s", where);
}

/* Opens the plugin at `path` into `slot`, or records why not. */
static void load_plugin(kr_context *ctx, const char *path, kr_backend_slot *slot) {
    snprintf(slot->path, sizeof slot->path, "%s", path);
    snprintf(slot->name, sizeof slot->name, "cuda");
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *e = dlerror();
        snprintf(slot->reason, sizeof slot->reason, "cannot load %s: %s", path, e ? e : "unknown");
        return;
    }
    kr_backend_entry_fn entry;
    *(void **)&entry = dlsym(dl, KR_BACKEND_ENTRY_SYMBOL);
    if (!entry) {
        snprintf(slot->reason, sizeof slot->reason, "%s has no %s symbol: not a krserve plugin",
                 path, KR_BACKEND_ENTRY_SYMBOL);
        dlclose(dl);
        return;
    }
    const kr_backend *be = entry();
    if (!be || be->api_version != KR_BACKEND_API_VERSION) {
        snprintf(slot->reason, sizeof slot->reason,
                 "%s speaks backend API version %u; this libkrserve needs %u", path,
                 be ? be->api_version : 0u, KR_BACKEND_API_VERSION);
        dlclose(dl);
        return;
    }
    snprintf(slot->name, sizeof slot->name, "%s", be->name);
    snprintf(slot->version, sizeof slot->version, "%s", be->version ? be->version : "");
    if (fault_hit(ctx, "load", be->name)) {
        snprintf(slot->reason, sizeof slot->reason, "injected fault at load (KRSERVE_FAULT)");
        dlclose(dl);
        return;
    }
    slot->dl = dl;
    slot->be = be;
}

/* Where libkrserve itself was loaded from. */
static void own_dir(char *out, size_t n) {
    Dl_info info;
    out[0] = '\0';
    if (dladdr((void *)&kr_registry_init, &info) && info.dli_fname) {
        snprintf(out, n, "%s", info.dli_fname);
        char *slash = strrchr(out, '/');
        if (slash)
            *slash = '\0';
        else
            out[0] = '\0';
    }
}

/* A configured path (API > KRSERVE_PLUGIN_PATH > file) is the only place
 * looked at; otherwise libkrserve's own directory, then the install libdir. */
static void find_plugin(kr_context *ctx, kr_backend_slot *slot) {
    char dirs[2][512];
    int n = 0;
    if (ctx->cfg.plugin_path[0]) {
        snprintf(dirs[n++], 512, "%s", ctx->cfg.plugin_path);
    } else {
        own_dir(dirs[n], 512);
        if (dirs[n][0]) n++;
        snprintf(dirs[n++], 512, "%s", KR_INSTALL_LIBDIR);
    }
    char looked[400] = "";
    for (int i = 0; i < n; i++) {
        char file[600];
        candidate_file(dirs[i], file, sizeof file);
        if (!is_file(file)) {
            size_t l = strlen(looked);
            snprintf(looked + l, sizeof looked - l, "%s%s", l ? ", " : "", dirs[i]);
            continue;
        }
        load_plugin(ctx, file, slot);
        return;
    }
    snprintf(slot->name, sizeof slot->name, "cuda");
    snprintf(slot->reason, sizeof slot->reason, "%s not found (looked in %s)", KR_PLUGIN_FILE,
             looked);
}

/* ---- the registry -------------------------------------------------------- */

static int order_rank(const kr_config *c, const char *name, int dflt) {
    for (int i = 0; i < c->n_order; i++)
        if (!strcmp(c->order[i], name)) return i;
    return c->n_order + dflt;
}

static void probe_slot(kr_context *ctx, kr_backend_slot *s) {
    if (!s->be) return;
    if (fault_hit(ctx, "probe", s->be->name)) {
        snprintf(s->reason, sizeof s->reason, "injected fault at probe (KRSERVE_FAULT)");
        return;
    }
    s->score = s->be->probe(s->reason, sizeof s->reason);
    s->available = s->score > 0;
    for (int i = 0; i < ctx->cfg.n_deny; i++)
        if (!strcmp(ctx->cfg.deny[i], s->name)) s->denied = true;
}

kr_status kr_registry_init(kr_context *ctx, char *err, size_t err_len) {
    kr_status s = parse_faults(ctx, err, err_len);
    if (s) return s;
    /* The plugin slot exists even when nothing was found, to carry the reason. */
    kr_backend_slot *plugin = &ctx->slots[ctx->n_slots++];
    find_plugin(ctx, plugin);
    probe_slot(ctx, plugin);
    /* A device plugin brings its memory operations and its in-device
     * reference (the unfused path), which sits in its own slot. */
    const char *why = plugin->reason[0] ? plugin->reason : "no CUDA plugin";
    memcpy(ctx->dev_reason, why, strnlen(why, sizeof ctx->dev_reason - 1));
    if (plugin->be && plugin->available && plugin->be->dev) {
        ctx->dev_ops = plugin->be->dev;
        memcpy(ctx->dev_plugin_path, plugin->path, sizeof ctx->dev_plugin_path);
    }
    if (plugin->be && plugin->be->device_reference) {
        const kr_backend *r = plugin->be->device_reference;
        kr_backend_slot *rs = &ctx->slots[ctx->n_slots++];
        rs->be = r;
        snprintf(rs->name, sizeof rs->name, "%s", r->name);
        snprintf(rs->version, sizeof rs->version, "%s", r->version);
        memcpy(rs->path, plugin->path, sizeof rs->path);
        probe_slot(ctx, rs);
        rs->available = rs->available && plugin->available;
        if (!plugin->available) memcpy(rs->reason, plugin->reason, sizeof rs->reason);
        rs->denied = false;
    }
    /* The built-in CPU backend sits before ref; its probe says whether this
     * CPU runs it. */
    const kr_backend *cpu = kr_cpu_backend();
    if (cpu) {
        kr_backend_slot *cs = &ctx->slots[ctx->n_slots++];
        cs->be = cpu;
        snprintf(cs->name, sizeof cs->name, "%s", cpu->name);
        snprintf(cs->version, sizeof cs->version, "%s", cpu->version);
        probe_slot(ctx, cs);
    }
    kr_backend_slot *ref = &ctx->slots[ctx->n_slots++];
    ref->be = kr_ref_backend();
    snprintf(ref->name, sizeof ref->name, "ref");
    snprintf(ref->version, sizeof ref->version, "%s", KR_VERSION_STRING);
    probe_slot(ctx, ref);
    ref->denied = false;
    /* Configured order, ref always last (config.c guarantees it is never
     * denied or listed before another backend). Insertion sort: few slots. */
    for (int i = 1; i < ctx->n_slots - 1; i++)
        for (int j = i; j > 0 && order_rank(&ctx->cfg, ctx->slots[j].name, j) <
                                     order_rank(&ctx->cfg, ctx->slots[j - 1].name, j - 1);
             j--) {
            kr_backend_slot t = ctx->slots[j];
            ctx->slots[j] = ctx->slots[j - 1];
            ctx->slots[j - 1] = t;
        }
    return KR_OK;
}

void kr_registry_free(kr_context *ctx) {
    for (int d = 0; d < KR_MAX_DEVICES; d++)
        if (ctx->dev_state[d]) ctx->dev_ops->close(ctx->dev_state[d]);
    memset(ctx->dev_state, 0, sizeof ctx->dev_state);
    ctx->dev_ops = NULL;
    for (int i = 0; i < ctx->n_slots; i++)
        if (ctx->slots[i].dl) dlclose(ctx->slots[i].dl);
    ctx->n_slots = 0;
}

/* ---- dispatch -------------------------------------------------------------- */

static bool feature_on(const kr_context *ctx, kr_feature f) {
    if (!ctx->cfg.features[f]) return false;
    if (ctx->model[0]) {
        for (int i = 0; i < ctx->cfg.n_models; i++)
            if (!strcmp(ctx->cfg.models[i].model, ctx->model) &&
                ctx->cfg.models[i].features[f] != KR_UNSET)
                return ctx->cfg.models[i].features[f] != 0;
    }
    return true;
}

/* Why accelerated backends are not tried for feature f ("" if they are). */
static const char *accel_blocked(const kr_context *ctx, kr_feature f) {
    if (!ctx->cfg.enabled) return "acceleration disabled by configuration";
    if (ctx->cfg.prefer_reference) return "prefer_reference is set";
    if (ctx->sticky_off[f]) return "switched off after an accelerated call failed";
    if (!feature_on(ctx, f))
        return ctx->cfg.features[f] ? "disabled for the current model"
                                    : "disabled by configuration";
    return "";
}

static const char *op_name(kr_op op) {
    static const char *const names[] = {"attention", "rope", "kv_append"};
    return (unsigned)op < KR_OP_COUNT_ ? names[op] : "?";
}

static kr_status call_backend(const kr_backend *be, kr_op op, const void *args, char *err,
                              size_t n) {
    switch (op) {
    case KR_OP_ATTENTION: return be->attention(args, err, n);
    case KR_OP_ROPE: return be->rope(args, err, n);
    case KR_OP_KV_APPEND: return be->kv_append(args, err, n);
    default: snprintf(err, n, "unknown op"); return KR_ERR_INTERNAL;
    }
}

static bool is_reference(const kr_backend_slot *s) { return s->be && s->be->reference; }

/* One call on one backend, or the injected fault that replaces it. */
static kr_status try_backend(kr_context *ctx, const kr_backend_slot *s, kr_op op, const void *args,
                             char *err, size_t n) {
    err[0] = '\0';
    kr_status st = fault_hit(ctx, op_name(op), s->name) ? KR_ERR_FAULT_INJECTED
                                                        : call_backend(s->be, op, args, err, n);
    if (st == KR_ERR_FAULT_INJECTED && !err[0]) snprintf(err, n, "injected fault (KRSERVE_FAULT)");
    return st;
}

/* Runs the call on the reference of device type `dev` (ref for the CPU,
 * the plugin's unfused path for CUDA): it serves every case. */
static kr_status run_reference(kr_context *ctx, kr_op op, kr_feature f, kr_device_type dev,
                               const void *args) {
    char err[KR_ERRMSG_LEN];
    for (int i = 0; i < ctx->n_slots; i++) {
        kr_backend_slot *s = &ctx->slots[i];
        if (!is_reference(s) || !s->available || s->be->device_type != dev) continue;
        const kr_status st = try_backend(ctx, s, op, args, err, sizeof err);
        if (st) return kr_fail(ctx, st, "%s on %s failed: %s", op_name(op), s->name, err);
        s->calls[f]++;
        return KR_OK;
    }
    return kr_fail(ctx, KR_ERR_DEVICE, "%s: no backend serves device type %d: %s", op_name(op),
                   (int)dev, ctx->dev_reason);
}

kr_status kr_dispatch(kr_context *ctx, kr_op op, kr_feature f, kr_device_type dev,
                      const void *args) {
    kr_feature_counters *cnt = &ctx->counters[f];
    cnt->calls++;
    char err[KR_ERRMSG_LEN];
    for (int i = 0; i < ctx->n_slots && !accel_blocked(ctx, f)[0]; i++) {
        kr_backend_slot *s = &ctx->slots[i];
        if (!s->be || is_reference(s) || !s->available || s->denied || s->be->device_type != dev)
            continue;
        char why[256] = "";
        if (!s->be->supports(op, args, why, sizeof why)) {
            snprintf(cnt->last_reason, sizeof cnt->last_reason, "%s: %s", s->name, why);
            continue;
        }
        const kr_status st = try_backend(ctx, s, op, args, err, sizeof err);
        if (st == KR_OK) {
            s->calls[f]++;
            cnt->accelerated++;
            return KR_OK;
        }
        /* An accelerated call failed: count it, warn once, then either
         * return the error or switch the feature off and fall through. */
        cnt->fallbacks++;
        snprintf(cnt->last_reason, sizeof cnt->last_reason, "%s on %s failed: %s (%s)", op_name(op),
                 s->name, err, kr_status_name(st));
        if (!ctx->cfg.fallback_to_reference)
            return kr_fail(ctx, st, "%s on %s failed: %s; fallback_to_reference is off",
                           op_name(op), s->name, err);
        if (!s->warned[f]) {
            s->warned[f] = true;
            kr_log(ctx, ctx->cfg.fallback_log_level,
                   "%s on backend %s failed (%s); %s switched off for this context, falling back",
                   op_name(op), s->name, err, kr_feature_name(f));
        }
        ctx->sticky_off[f] = true;
    }
    return run_reference(ctx, op, f, dev, args);
}

/* ---- public queries -------------------------------------------------------- */

kr_status kr_accel_feature_info(kr_context *ctx, kr_feature f, kr_feature_info *out) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    if (!out || (unsigned)f >= KR_FEATURE_COUNT_)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "kr_accel_feature_info: bad feature %d or NULL out", (int)f);
    memset(out, 0, sizeof *out);
    out->enabled = ctx->cfg.features[f];
    out->counters = ctx->counters[f];
    snprintf(out->backend, sizeof out->backend, "ref");
    const char *blocked = accel_blocked(ctx, f);
    if (blocked[0]) {
        snprintf(out->reason, sizeof out->reason, "%s", blocked);
        return KR_OK;
    }
    static const kr_op op_of[KR_FEATURE_COUNT_] = {KR_OP_ATTENTION, KR_OP_ROPE, KR_OP_KV_APPEND};
    size_t len = 0;
    for (int i = 0; i < ctx->n_slots; i++) {
        const kr_backend_slot *s = &ctx->slots[i];
        if (is_reference(s)) continue;
        char why[256] = "";
        if (!s->be || !s->available)
            snprintf(why, sizeof why, "%s unavailable", s->name);
        else if (s->denied)
            snprintf(why, sizeof why, "%s denied by configuration", s->name);
        else if (!s->be->supports(op_of[f], NULL, why, sizeof why)) {
        } else {
            out->available = 1;
            snprintf(out->backend, sizeof out->backend, "%s", s->name);
            return KR_OK;
        }
        len += (size_t)snprintf(out->reason + len,
                                len < sizeof out->reason ? sizeof out->reason - len : 0, "%s%s",
                                len ? "; " : "", why);
        if (len >= sizeof out->reason) len = sizeof out->reason - 1;
    }
    if (!out->reason[0]) snprintf(out->reason, sizeof out->reason, "no accelerated backend");
    return KR_OK;
}

kr_status kr_accel_set_feature(kr_context *ctx, kr_feature f, int32_t enabled) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    if ((unsigned)f >= KR_FEATURE_COUNT_ || (enabled != 0 && enabled != 1))
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "kr_accel_set_feature: feature %d / value %d invalid", (int)f, (int)enabled);
    ctx->cfg.features[f] = enabled;
    if (enabled) ctx->sticky_off[f] = false;
    return KR_OK;
}

kr_status kr_accel_set_model_feature(kr_context *ctx, const char *model, kr_feature f,
                                     int32_t enabled) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    if (!model || !*model || strlen(model) >= 128)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "kr_accel_set_model_feature: model id must be 1..127 characters");
    if ((unsigned)f >= KR_FEATURE_COUNT_ || (enabled != 0 && enabled != 1 && enabled != KR_UNSET))
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "kr_accel_set_model_feature: feature %d / value %d invalid", (int)f,
                       (int)enabled);
    kr_model_switch *m = kr_config_model(&ctx->cfg, model, true);
    if (!m)
        return kr_fail(ctx, KR_ERR_CAPACITY, "kr_accel_set_model_feature: at most %d models",
                       KR_MAX_MODELS);
    m->features[f] = enabled;
    return KR_OK;
}

kr_status kr_context_set_model(kr_context *ctx, const char *model) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    if (model && strlen(model) >= sizeof ctx->model)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "kr_context_set_model: model id longer than 127 characters");
    snprintf(ctx->model, sizeof ctx->model, "%s", model ? model : "");
    return KR_OK;
}

int32_t kr_accel_backend_count(const kr_context *ctx) { return ctx ? ctx->n_slots : 0; }

kr_status kr_accel_backend_info(kr_context *ctx, int32_t i, kr_backend_info *out) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    if (!out || i < 0 || i >= ctx->n_slots)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "kr_accel_backend_info: index %d outside [0, %d)", (int)i, ctx->n_slots);
    const kr_backend_slot *s = &ctx->slots[i];
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", s->name);
    snprintf(out->version, sizeof out->version, "%s", s->version);
    out->available = s->available;
    out->denied = s->denied;
    out->score = s->score;
    out->device_type = s->be ? s->be->device_type : KR_DEVICE_CUDA;
    out->n_devices = s->be && s->available ? s->be->device_count() : 0;
    snprintf(out->reason, sizeof out->reason, "%s", s->reason);
    snprintf(out->path, sizeof out->path, "%s", s->path);
    memcpy(out->calls, s->calls, sizeof out->calls);
    return KR_OK;
}

kr_status kr_accel_device_info(kr_context *ctx, int32_t b, int32_t d, kr_device_info *out) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    if (!out || b < 0 || b >= ctx->n_slots || !ctx->slots[b].be || !ctx->slots[b].available)
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "kr_accel_device_info: backend %d is not available", (int)b);
    const kr_backend *be = ctx->slots[b].be;
    if (d < 0 || d >= be->device_count())
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT,
                       "kr_accel_device_info: device %d outside [0, %d)", (int)d,
                       be->device_count());
    memset(out, 0, sizeof *out);
    return be->device_info(d, out);
}

int32_t kr_accel_enabled(const kr_context *ctx, const char **reason) {
    const char *r = "";
    int32_t on = 0;
    if (!ctx)
        r = "no context";
    else if (!ctx->cfg.enabled)
        r = "acceleration.enabled is false";
    else if (ctx->cfg.prefer_reference)
        r = "acceleration.prefer_reference is true";
    else {
        for (int i = 0; i < ctx->n_slots; i++)
            if (ctx->slots[i].be && !is_reference(&ctx->slots[i]) && ctx->slots[i].available &&
                !ctx->slots[i].denied)
                on = 1;
        if (!on) r = "no accelerated backend is available";
    }
    if (reason) *reason = r;
    return on;
}

const char *kr_accel_config_path(const kr_context *ctx) { return ctx ? ctx->cfg.file : ""; }
