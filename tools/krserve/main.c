/*
 * main.c — the `krserve` command line: `info` (what this build and machine
 * offer), `bench` (bench_*.c), `generate` and `tokenize` (generate.c), with
 * `--version` and `--help`. Each sub-command is one function;
 * main() only picks it.
 */
#include "bench.h"
#include "generate.h"

#include <krserve/krserve.h>

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: krserve [--version] [--help] [--config FILE] <command> [options]\n"
            "\n"
            "commands:\n"
            "  info [--json]   version, acceleration and why, features and the backend serving\n"
            "                  each, backends and their devices, CPU model and SIMD features,\n"
            "                  counters\n"
            "  bench [SUB...]  accelerated vs reference benchmarks: attention, decode, rope,\n"
            "                  kv-append (krserve bench --help)\n"
            "  generate        text from a Hugging Face model directory (krserve generate --help)\n"
            "  tokenize        --model DIR TEXT: token ids and pieces\n"
            "\n"
            "--config FILE     the YAML configuration (default: KRSERVE_CONFIG, ./krserve.yaml)\n"
            "\n"
            "krserve %s — LLM inference core: attention, RoPE and KV cache with optional\n"
            "acceleration backends and a portable reference fallback.\n",
            kr_version());
}

/* A feature flag as text: tick, cross or question mark on a terminal. */
static const char *flag(int v, bool tty) {
    if (v < 0) return tty ? "❔" : "unknown";
    if (tty) return v ? "✅" : "❌";
    return v ? "yes" : "no";
}

static const char *device_type_name(kr_device_type t) {
    return t == KR_DEVICE_CUDA ? "cuda" : "cpu";
}

static kr_context *open_context(const char *config, char *err, size_t err_len) {
    kr_context_options o = kr_context_options_default();
    o.config_path = config;
    kr_context *ctx = NULL;
    if (kr_context_create(&o, &ctx, err, err_len) != KR_OK) return NULL;
    return ctx;
}

static cJSON *info_json(kr_context *ctx, const kr_cpu_info *cpu) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", kr_version());
    cJSON_AddStringToObject(root, "build", kr_build_info());
    cJSON_AddStringToObject(root, "config_file", kr_accel_config_path(ctx));
    const char *why = "";
    cJSON *acc = cJSON_AddObjectToObject(root, "acceleration");
    cJSON_AddBoolToObject(acc, "available", kr_accel_enabled(ctx, &why));
    cJSON_AddStringToObject(acc, "reason", why);
    cJSON *feats = cJSON_AddObjectToObject(root, "features");
    for (int f = 0; f < KR_FEATURE_COUNT_; f++) {
        kr_feature_info fi;
        kr_accel_feature_info(ctx, (kr_feature)f, &fi);
        cJSON *o = cJSON_AddObjectToObject(feats, kr_feature_name((kr_feature)f));
        cJSON_AddBoolToObject(o, "enabled", fi.enabled);
        cJSON_AddBoolToObject(o, "accelerated", fi.available);
        cJSON_AddStringToObject(o, "backend", fi.backend);
        cJSON_AddStringToObject(o, "reason", fi.reason);
        cJSON *c = cJSON_AddObjectToObject(o, "counters");
        cJSON_AddNumberToObject(c, "calls", (double)fi.counters.calls);
        cJSON_AddNumberToObject(c, "accelerated", (double)fi.counters.accelerated);
        cJSON_AddNumberToObject(c, "fallbacks", (double)fi.counters.fallbacks);
        cJSON_AddStringToObject(c, "last_reason", fi.counters.last_reason);
    }
    cJSON *backends = cJSON_AddArrayToObject(root, "backends");
    for (int i = 0; i < kr_accel_backend_count(ctx); i++) {
        kr_backend_info bi;
        kr_accel_backend_info(ctx, i, &bi);
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "name", bi.name);
        cJSON_AddStringToObject(b, "version", bi.version);
        cJSON_AddBoolToObject(b, "available", bi.available);
        cJSON_AddBoolToObject(b, "denied", bi.denied);
        cJSON_AddNumberToObject(b, "score", bi.score);
        cJSON_AddStringToObject(b, "device_type", device_type_name(bi.device_type));
        cJSON_AddStringToObject(b, "reason", bi.reason);
        cJSON_AddStringToObject(b, "path", bi.path);
        cJSON *devs = cJSON_AddArrayToObject(b, "devices");
        for (int d = 0; bi.device_type == KR_DEVICE_CUDA && d < bi.n_devices; d++) {
            kr_device_info di;
            if (kr_accel_device_info(ctx, i, d, &di) != KR_OK) continue;
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", di.name);
            cJSON_AddNumberToObject(o, "memory_bytes", (double)di.memory_bytes);
            char cc[16];
            snprintf(cc, sizeof cc, "%d.%d", (int)di.cc_major, (int)di.cc_minor);
            cJSON_AddStringToObject(o, "compute_capability", cc);
            cJSON_AddNumberToObject(o, "multiprocessors", di.multiprocessors);
            cJSON_AddStringToObject(o, "driver_version", di.driver_version);
            cJSON_AddStringToObject(o, "runtime_version", di.runtime_version);
            cJSON_AddItemToArray(devs, o);
        }
        cJSON_AddItemToArray(backends, b);
    }
    cJSON *c = cJSON_AddObjectToObject(root, "cpu");
    cJSON_AddStringToObject(c, "model", cpu->model);
    cJSON_AddStringToObject(c, "vendor", cpu->vendor);
    cJSON_AddNumberToObject(c, "cores", cpu->cores);
    cJSON_AddNumberToObject(c, "logical_cpus", cpu->logical_cpus);
    const struct {
        const char *n;
        int v;
    } f[] = {{"avx2", cpu->avx2},         {"fma", cpu->fma},
             {"f16c", cpu->f16c},         {"avx512f", cpu->avx512f},
             {"avx512bw", cpu->avx512bw}, {"avx512_vnni", cpu->avx512_vnni},
             {"amx", cpu->amx},           {"neon", cpu->neon}};
    cJSON *feat = cJSON_AddObjectToObject(c, "features");
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (f[i].v < 0)
            cJSON_AddNullToObject(feat, f[i].n);
        else
            cJSON_AddBoolToObject(feat, f[i].n, f[i].v);
    }
    cJSON_AddStringToObject(c, "detection", cpu->detail);
    return root;
}

static void info_text(kr_context *ctx, const kr_cpu_info *cpu, bool tty) {
    printf("krserve %s\n", kr_version());
    printf("build:        %s\n", kr_build_info());
    const char *cfg = kr_accel_config_path(ctx);
    printf("config file:  %s\n", cfg[0] ? cfg : "(none; defaults, KRSERVE_* variables)");
    const char *why = "";
    const int on = kr_accel_enabled(ctx, &why);
    printf("\nacceleration: %s %s%s%s\n", flag(on, tty), on ? "available" : "not available",
           on ? "" : " — ", on ? "" : why);
    printf("\nfeatures:\n");
    for (int f = 0; f < KR_FEATURE_COUNT_; f++) {
        kr_feature_info fi;
        kr_accel_feature_info(ctx, (kr_feature)f, &fi);
        printf("  %s %-16s %s, served by %s%s%s\n", flag(fi.available, tty),
               kr_feature_name((kr_feature)f), fi.enabled ? "enabled" : "disabled", fi.backend,
               fi.available ? "" : " — ", fi.available ? "" : fi.reason);
        printf("     calls %lld, accelerated %lld, fallbacks %lld%s%s\n",
               (long long)fi.counters.calls, (long long)fi.counters.accelerated,
               (long long)fi.counters.fallbacks, fi.counters.last_reason[0] ? "; last: " : "",
               fi.counters.last_reason);
    }
    printf("\nbackends (dispatch order):\n");
    for (int i = 0; i < kr_accel_backend_count(ctx); i++) {
        kr_backend_info bi;
        kr_accel_backend_info(ctx, i, &bi);
        printf("  %s %-5s %s%s %s\n", flag(bi.available && !bi.denied, tty), bi.name, bi.version,
               bi.denied ? " (denied by configuration)" : "", bi.reason);
        if (bi.path[0]) printf("        plugin: %s\n", bi.path);
        for (int d = 0; bi.device_type == KR_DEVICE_CUDA && d < bi.n_devices; d++) {
            kr_device_info di;
            if (kr_accel_device_info(ctx, i, d, &di) != KR_OK) continue;
            printf("        gpu %d: %s, compute capability %d.%d, %d SMs, %.1f GiB, driver %s, "
                   "runtime %s\n",
                   d, di.name, (int)di.cc_major, (int)di.cc_minor, (int)di.multiprocessors,
                   (double)di.memory_bytes / 1073741824.0, di.driver_version, di.runtime_version);
        }
    }
    printf("\ncpu: %s (%d cores, %d logical)\n", cpu->model, (int)cpu->cores,
           (int)cpu->logical_cpus);
    printf(
        "  AVX2 %s  FMA %s  F16C %s  AVX-512F %s  AVX-512BW %s  AVX-512VNNI %s  AMX %s  NEON %s\n",
        flag(cpu->avx2, tty), flag(cpu->fma, tty), flag(cpu->f16c, tty), flag(cpu->avx512f, tty),
        flag(cpu->avx512bw, tty), flag(cpu->avx512_vnni, tty), flag(cpu->amx, tty),
        flag(cpu->neon, tty));
    printf("  detected with %s\n", cpu->detail);
}

static int cmd_info(int argc, char **argv, const char *config) {
    bool json = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            config = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: krserve info [--json] [--config FILE]\n");
            return 0;
        } else {
            fprintf(stderr, "krserve info: unknown option '%s' (try --help)\n", argv[i]);
            return 2;
        }
    }
    char err[512];
    kr_context *ctx = open_context(config, err, sizeof err);
    if (!ctx) {
        fprintf(stderr, "krserve info: %s\n", err);
        return 1;
    }
    kr_cpu_info cpu;
    kr_cpu_info_get(&cpu);
    if (json) {
        cJSON *root = info_json(ctx, &cpu);
        char *s = cJSON_Print(root);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(root);
    } else {
        info_text(ctx, &cpu, isatty(STDOUT_FILENO));
    }
    kr_context_free(ctx);
    return 0;
}

static int cmd_bench(int argc, char **argv, const char *config) {
    if (argc > 0 && !strcmp(argv[0], "generate"))
        return kr_cmd_bench_generate(argc - 1, argv + 1, config);
    kb_options o;
    kb_options_default(&o);
    o.config = config;
    char err[512] = "";
    const int p = kb_parse_args(argc, argv, &o, stdout, err, sizeof err);
    if (p > 0) return 0;
    if (p < 0) {
        fprintf(stderr, "krserve bench: %s\n", err);
        return 2;
    }
    kb_report rep;
    if (kb_run(&o, &rep, err, sizeof err)) {
        fprintf(stderr, "krserve bench: %s\n", err);
        kb_report_free(&rep);
        return 1;
    }
    kb_print_summary(stdout, &rep);
    int rc = 0;
    if (o.json && kb_write_json(&rep, o.json, err, sizeof err)) rc = 1;
    if (!rc && o.csv && kb_write_csv(&rep, o.csv, err, sizeof err)) rc = 1;
    if (!rc && o.plot && kb_write_plot(&rep, o.plot, err, sizeof err)) rc = 1;
    if (rc) fprintf(stderr, "krserve bench: %s\n", err);
    for (int i = 0; i < rep.n_results && !rc; i++)
        if (rep.results[i].state == KB_WRONG || rep.results[i].state == KB_FAILED) rc = 3;
    kb_report_free(&rep);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *config = NULL;
    int first = 1;
    if (argc > 2 && !strcmp(argv[1], "--config")) {
        config = argv[2];
        first = 3;
    }
    if (first >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[first];
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("krserve %s\n", kr_version());
        return 0;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "info")) return cmd_info(argc - first - 1, argv + first + 1, config);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - first - 1, argv + first + 1, config);
    if (!strcmp(cmd, "generate"))
        return kr_cmd_generate(argc - first - 1, argv + first + 1, config);
    if (!strcmp(cmd, "tokenize"))
        return kr_cmd_tokenize(argc - first - 1, argv + first + 1, config);
    fprintf(stderr, "krserve: unknown command '%s' (try --help)\n", cmd);
    return 2;
}
