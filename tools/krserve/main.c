/*
 * main.c — the `krserve` command line: `info` (what this build and machine
 * offer), with `--version` and `--help`. Each sub-command is one function;
 * main() only picks it.
 */
#include <krserve/krserve.h>

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: krserve [--version] [--help] <command> [options]\n"
            "\n"
            "commands:\n"
            "  info [--json]   version, build options, backends, CPU model and SIMD features\n"
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

static int cmd_info(int argc, char **argv) {
    bool json = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: krserve info [--json]\n");
            return 0;
        } else {
            fprintf(stderr, "krserve info: unknown option '%s' (try --help)\n", argv[i]);
            return 2;
        }
    }
    kr_cpu_info cpu;
    kr_cpu_info_get(&cpu);
    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "version", kr_version());
        cJSON_AddStringToObject(root, "build", kr_build_info());
        cJSON *backends = cJSON_AddArrayToObject(root, "backends");
        cJSON *ref = cJSON_CreateObject();
        cJSON_AddStringToObject(ref, "name", "ref");
        cJSON_AddBoolToObject(ref, "available", 1);
        cJSON_AddItemToArray(backends, ref);
        cJSON *c = cJSON_AddObjectToObject(root, "cpu");
        cJSON_AddStringToObject(c, "model", cpu.model);
        cJSON_AddStringToObject(c, "vendor", cpu.vendor);
        cJSON_AddNumberToObject(c, "cores", cpu.cores);
        cJSON_AddNumberToObject(c, "logical_cpus", cpu.logical_cpus);
        const struct {
            const char *n;
            int v;
        } f[] = {{"avx2", cpu.avx2},         {"fma", cpu.fma},
                 {"f16c", cpu.f16c},         {"avx512f", cpu.avx512f},
                 {"avx512bw", cpu.avx512bw}, {"avx512_vnni", cpu.avx512_vnni},
                 {"amx", cpu.amx},           {"neon", cpu.neon}};
        cJSON *feat = cJSON_AddObjectToObject(c, "features");
        for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
            if (f[i].v < 0)
                cJSON_AddNullToObject(feat, f[i].n);
            else
                cJSON_AddBoolToObject(feat, f[i].n, f[i].v);
        }
        cJSON_AddStringToObject(c, "detection", cpu.detail);
        char *s = cJSON_Print(root);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(root);
        return 0;
    }
    const bool tty = isatty(STDOUT_FILENO);
    printf("krserve %s\n", kr_version());
    printf("build:    %s\n", kr_build_info());
    printf("backends: ref (portable reference, always present)\n");
    printf("cpu:      %s (%d cores, %d logical)\n", cpu.model, (int)cpu.cores,
           (int)cpu.logical_cpus);
    printf(
        "  AVX2 %s  FMA %s  F16C %s  AVX-512F %s  AVX-512BW %s  AVX-512VNNI %s  AMX %s  NEON %s\n",
        flag(cpu.avx2, tty), flag(cpu.fma, tty), flag(cpu.f16c, tty), flag(cpu.avx512f, tty),
        flag(cpu.avx512bw, tty), flag(cpu.avx512_vnni, tty), flag(cpu.amx, tty),
        flag(cpu.neon, tty));
    printf("  detected with %s\n", cpu.detail);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("krserve %s\n", kr_version());
        return 0;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "info")) return cmd_info(argc - 2, argv + 2);
    fprintf(stderr, "krserve: unknown command '%s' (try --help)\n", cmd);
    return 2;
}
