/*
 * bench_options.c — `krserve bench` options: defaults, the --help text (which
 * states the FLOP and byte formulas), and a parser whose every error names
 * the option, the value it got and what it expected.
 */
#include "bench.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[KB_KIND_COUNT_] = {"attention", "decode", "rope", "kv-append"};

const char *kb_kind_name(kb_kind k) { return (unsigned)k < KB_KIND_COUNT_ ? kind_names[k] : "?"; }

void kb_options_default(kb_options *o) {
    memset(o, 0, sizeof *o);
    for (int k = 0; k < KB_KIND_COUNT_; k++) o->kinds[k] = true;
    const int64_t ctx[] = {512, 2048, 8192, 16384, 32768};
    for (size_t i = 0; i < sizeof ctx / sizeof ctx[0]; i++) o->contexts[o->n_contexts++] = ctx[i];
    o->batch = 1;
    o->heads = 32;
    o->kv_heads = 8;
    o->head_dim = 128;
    o->q_len = 1;
    o->dtypes[o->n_dtypes++] = KR_F16;
    o->kv_dtypes[o->n_kv_dtypes++] = KR_F16;
    o->kv_dtypes[o->n_kv_dtypes++] = KR_I8;
    o->causal_modes[o->n_causal++] = 1;
    o->all_backends = true;
    o->reps = 5;
    o->warmup = 1;
    o->threads = 0;
    o->budget_s = 2.0;
    o->seed = 20261126;
    o->progress = true;
}

void kb_usage(FILE *f) {
    fprintf(
        f,
        "usage: krserve bench [SUB-BENCHMARK...] [options]\n"
        "\n"
        "Runs each case on every chosen backend in one process, on the same inputs:\n"
        "checks the result against the reference backend first (a wrong answer is\n"
        "reported, never timed), then times warm-up + repetitions and prints the\n"
        "median, the spread, the throughput, its fraction of this machine's ceiling\n"
        "(measured at the start of the run), the speed-up over the reference and the\n"
        "counters that show which backend ran.\n"
        "\n"
        "sub-benchmarks (default: all of them)\n"
        "  attention   prefill: Sq = Skv = context, q/k/v [B, S, H|Hkv, D]\n"
        "  decode      attention of q-len new rows over a KV cache holding `context` tokens\n"
        "  rope        RoPE (half-split, theta 500000) in place on `context` tokens\n"
        "  kv-append   RoPE on K, then store (quantise for int8) `context` tokens into a cache\n"
        "              (steady state: an untimed one-token append fixes int8 channel factors)\n"
        "  generate    comes with the engine (not in this build)\n"
        "\n"
        "options (lists are comma-separated)\n"
        "  --context LIST        contexts in tokens; 4k = 4096   [512,2048,8192,16384,32768]\n"
        "  --batch N             sequences                         [1]\n"
        "  --heads H[:Hkv]       query heads and kv heads (GQA)    [32:8]\n"
        "  --head-dim D          head dimension                    [128]\n"
        "  --q-len N             decode rows per sequence, 1..16   [1]\n"
        "  --dtype LIST          f32, f16, bf16 (q, k, v, out)     [f16]\n"
        "  --kv-dtype LIST       cache storage: f32, f16, bf16, int8 [f16,int8]\n"
        "  --causal [yes|no|both]  attention masking; --no-causal = no   [yes]\n"
        "  --backend LIST|all    backends to run side by side; ref always joins [all]\n"
        "  --reps N              timed repetitions                 [5]\n"
        "  --warmup N            untimed runs first (the first one is checked) [1]\n"
        "  --threads N           worker threads (0 = all online cores) [0]\n"
        "  --budget SECONDS      time cap per case and backend: repetitions stop when it\n"
        "                        is spent; a case estimated to take longer is skipped with\n"
        "                        the reason, except the reference attention, which is\n"
        "                        timed on its last query rows instead   [2]\n"
        "  --ref-budget SECONDS  the same cap for the reference alone  [= --budget]\n"
        "  --seed N              inputs' PRNG seed                 [20261126]\n"
        "  --json FILE           every result, schema in docs/BENCH.md\n"
        "  --csv FILE            every result, one row each\n"
        "  --plot FILE.png|.svg  speed-up and throughput against context (gnuplot)\n"
        "  --config FILE         YAML configuration (as for `krserve info`)\n"
        "  --no-progress         never draw the progress bar\n"
        "  --quiet               print only the summary\n"
        "\n"
        "minimal counts (B batch, H/Hkv heads, D head_dim, e bytes per element):\n"
        "  attention  FLOP  = 4 B H D P, P = visible (query, key) pairs\n"
        "                     (S^2 non-causal, S(S+1)/2 causal)\n"
        "             bytes = e B S D (2 H + 2 Hkv)          q and out, k and v once\n"
        "  decode     FLOP  = 4 B H D P (P = q-len x context, causal within the chunk)\n"
        "             bytes = B context T + 2 e B q-len H D  T = cached bytes per token\n"
        "                     (K and V, all kv heads, int8 scales included): each cached\n"
        "                     byte counted once, however many query heads read it\n"
        "  rope       bytes = 2 e B S H D + 8 B S            x read and written, positions\n"
        "  kv-append  bytes = 2 e B S Hkv D + B S T          k and v read, the cache rows written\n"
        "Attention, and decode with q-len >= 4 (chunked prefill: 4 q-len H / Hkv FLOP\n"
        "per cached element, above any CPU's FMA-to-read ratio), are compute-bound\n"
        "(fraction of the FMA ceiling); the others are memory-bound (fraction of the\n"
        "read-bandwidth ceiling).\n");
}

/* ---- parsing helpers ----------------------------------------------------- */

static int fail(char *err, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* A whole decimal integer in [lo, hi], with an optional k (x1024) suffix
 * when allow_k. */
static bool parse_int(const char *s, int64_t lo, int64_t hi, bool allow_k, int64_t *out) {
    if (!s || !*s) return false;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s) return false;
    if (allow_k && (*end == 'k' || *end == 'K')) {
        if (v > INT64_MAX / 1024) return false;
        v *= 1024;
        end++;
    }
    if (*end) return false;
    if (v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_dtype(const char *s, size_t n, bool allow_int8, kr_dtype *out) {
    static const struct {
        const char *name;
        kr_dtype dt;
    } names[] = {{"f32", KR_F32},   {"fp32", KR_F32}, {"f16", KR_F16}, {"fp16", KR_F16},
                 {"bf16", KR_BF16}, {"int8", KR_I8},  {"i8", KR_I8}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strlen(names[i].name) == n && !strncmp(s, names[i].name, n)) {
            if (names[i].dt == KR_I8 && !allow_int8) return false;
            *out = names[i].dt;
            return true;
        }
    }
    return false;
}

/* Splits a comma list; calls item() on each piece (not NUL-terminated). */
typedef int (*item_fn)(const char *s, size_t n, void *user, char *err, size_t err_len);

static int each_item(const char *opt, const char *list, item_fn fn, void *user, char *err,
                     size_t err_len) {
    if (!list || !*list) return fail(err, err_len, "%s: empty list", opt);
    const char *p = list;
    for (;;) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n == 0) return fail(err, err_len, "%s: empty item in '%s'", opt, list);
        if (fn(p, n, user, err, err_len)) return -1;
        if (!c) return 0;
        p = c + 1;
    }
}

static int context_item(const char *s, size_t n, void *user, char *err, size_t err_len) {
    kb_options *o = user;
    char buf[32];
    if (n >= sizeof buf) return fail(err, err_len, "--context: '%.*s' is too long", (int)n, s);
    memcpy(buf, s, n);
    buf[n] = 0;
    int64_t v;
    if (!parse_int(buf, 1, (int64_t)1 << 24, true, &v))
        return fail(err, err_len,
                    "--context: '%s' is not a token count in [1, 16777216] (e.g. 512, 4k)", buf);
    if (o->n_contexts == KB_MAX_LIST)
        return fail(err, err_len, "--context: at most %d contexts", KB_MAX_LIST);
    o->contexts[o->n_contexts++] = v;
    return 0;
}

static int dtype_item(const char *s, size_t n, void *user, char *err, size_t err_len) {
    kb_options *o = user;
    kr_dtype dt;
    if (!parse_dtype(s, n, false, &dt))
        return fail(err, err_len, "--dtype: '%.*s' is not one of f32, f16, bf16", (int)n, s);
    for (int i = 0; i < o->n_dtypes; i++)
        if (o->dtypes[i] == dt) return 0;
    o->dtypes[o->n_dtypes++] = dt;
    return 0;
}

static int kv_dtype_item(const char *s, size_t n, void *user, char *err, size_t err_len) {
    kb_options *o = user;
    kr_dtype dt;
    if (!parse_dtype(s, n, true, &dt))
        return fail(err, err_len, "--kv-dtype: '%.*s' is not one of f32, f16, bf16, int8", (int)n,
                    s);
    for (int i = 0; i < o->n_kv_dtypes; i++)
        if (o->kv_dtypes[i] == dt) return 0;
    o->kv_dtypes[o->n_kv_dtypes++] = dt;
    return 0;
}

static int backend_item(const char *s, size_t n, void *user, char *err, size_t err_len) {
    kb_options *o = user;
    if (n == 3 && !strncmp(s, "all", 3)) {
        o->all_backends = true;
        return 0;
    }
    if (n >= sizeof o->backends[0])
        return fail(err, err_len, "--backend: name '%.*s' is too long", (int)n, s);
    for (size_t i = 0; i < n; i++) {
        const char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return fail(err, err_len, "--backend: '%.*s' is not a backend name", (int)n, s);
    }
    for (int i = 0; i < o->n_backends; i++)
        if (strlen(o->backends[i]) == n && !strncmp(o->backends[i], s, n)) return 0;
    if (o->n_backends == KB_MAX_BACKENDS)
        return fail(err, err_len, "--backend: at most %d backends", KB_MAX_BACKENDS);
    memcpy(o->backends[o->n_backends], s, n);
    o->backends[o->n_backends][n] = 0;
    o->n_backends++;
    return 0;
}

static bool has_suffix(const char *s, const char *suf) {
    const size_t a = strlen(s), b = strlen(suf);
    return a > b && !strcmp(s + a - b, suf);
}

/* ---- the parser ---------------------------------------------------------- */

int kb_parse_args(int argc, char **argv, kb_options *o, FILE *out, char *err, size_t err_len) {
    bool kinds_named = false, contexts_set = false, dtypes_set = false, kv_set = false;
    bool backends_set = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        char name[64];
        const char *val = NULL;
        /* --opt=value or --opt value */
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        if (eq && (size_t)(eq - a) < sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = 0;
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
        }
#define NEED_VALUE()                                                                               \
    do {                                                                                           \
        if (!val) {                                                                                \
            if (i + 1 >= argc) return fail(err, err_len, "%s: missing value", name);               \
            val = argv[++i];                                                                       \
        }                                                                                          \
    } while (0)
        int64_t v = 0;
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
            kb_usage(out);
            return 1;
        } else if (a[0] != '-') {
            if (!kinds_named) {
                for (int k = 0; k < KB_KIND_COUNT_; k++) o->kinds[k] = false;
                kinds_named = true;
            }
            bool found = false;
            if (!strcmp(a, "all")) {
                for (int k = 0; k < KB_KIND_COUNT_; k++) o->kinds[k] = true;
                found = true;
            }
            for (int k = 0; k < KB_KIND_COUNT_ && !found; k++) {
                if (!strcmp(a, kind_names[k])) {
                    o->kinds[k] = true;
                    found = true;
                }
            }
            if (!found && !strcmp(a, "generate"))
                return fail(err, err_len,
                            "sub-benchmark 'generate' needs the engine, which this build does "
                            "not have yet");
            if (!found)
                return fail(err, err_len,
                            "unknown sub-benchmark '%s' (attention, decode, rope, kv-append, all)",
                            a);
        } else if (!strcmp(name, "--context")) {
            NEED_VALUE();
            if (!contexts_set) o->n_contexts = 0;
            contexts_set = true;
            if (each_item(name, val, context_item, o, err, err_len)) return -1;
        } else if (!strcmp(name, "--batch")) {
            NEED_VALUE();
            if (!parse_int(val, 1, 4096, false, &o->batch))
                return fail(err, err_len, "--batch: '%s' is not an integer in [1, 4096]", val);
        } else if (!strcmp(name, "--heads")) {
            NEED_VALUE();
            char buf[64];
            snprintf(buf, sizeof buf, "%s", val);
            char *colon = strchr(buf, ':');
            if (colon) *colon = 0;
            int64_t h = 0, hkv = 0;
            if (!parse_int(buf, 1, 1024, false, &h) ||
                (colon && !parse_int(colon + 1, 1, 1024, false, &hkv)))
                return fail(err, err_len,
                            "--heads: '%s' is not H or H:Hkv with integers in [1, 1024]", val);
            if (!colon) hkv = h;
            if (h % hkv)
                return fail(err, err_len,
                            "--heads: %lld query heads are not a multiple of %lld kv heads",
                            (long long)h, (long long)hkv);
            o->heads = h;
            o->kv_heads = hkv;
        } else if (!strcmp(name, "--head-dim")) {
            NEED_VALUE();
            if (!parse_int(val, 2, 1024, false, &o->head_dim) || (o->head_dim & 1))
                return fail(err, err_len, "--head-dim: '%s' is not an even integer in [2, 1024]",
                            val);
        } else if (!strcmp(name, "--q-len")) {
            NEED_VALUE();
            if (!parse_int(val, 1, 16, false, &o->q_len))
                return fail(err, err_len, "--q-len: '%s' is not an integer in [1, 16]", val);
        } else if (!strcmp(name, "--dtype")) {
            NEED_VALUE();
            if (!dtypes_set) o->n_dtypes = 0;
            dtypes_set = true;
            if (each_item(name, val, dtype_item, o, err, err_len)) return -1;
        } else if (!strcmp(name, "--kv-dtype")) {
            NEED_VALUE();
            if (!kv_set) o->n_kv_dtypes = 0;
            kv_set = true;
            if (each_item(name, val, kv_dtype_item, o, err, err_len)) return -1;
        } else if (!strcmp(name, "--causal")) {
            /* a bare --causal means yes; a value may follow */
            if (!val && i + 1 < argc && argv[i + 1][0] != '-' &&
                (!strcmp(argv[i + 1], "yes") || !strcmp(argv[i + 1], "no") ||
                 !strcmp(argv[i + 1], "both")))
                val = argv[++i];
            o->n_causal = 0;
            if (!val || !strcmp(val, "yes")) {
                o->causal_modes[o->n_causal++] = 1;
            } else if (!strcmp(val, "no")) {
                o->causal_modes[o->n_causal++] = 0;
            } else if (!strcmp(val, "both")) {
                o->causal_modes[o->n_causal++] = 0;
                o->causal_modes[o->n_causal++] = 1;
            } else {
                return fail(err, err_len, "--causal: '%s' is not yes, no or both", val);
            }
        } else if (!strcmp(name, "--no-causal")) {
            o->n_causal = 1;
            o->causal_modes[0] = 0;
        } else if (!strcmp(name, "--backend") || !strcmp(name, "--backends")) {
            NEED_VALUE();
            if (!backends_set) {
                o->n_backends = 0;
                o->all_backends = false;
            }
            backends_set = true;
            if (each_item("--backend", val, backend_item, o, err, err_len)) return -1;
        } else if (!strcmp(name, "--reps")) {
            NEED_VALUE();
            if (!parse_int(val, 1, 100000, false, &v))
                return fail(err, err_len, "--reps: '%s' is not an integer in [1, 100000]", val);
            o->reps = (int)v;
        } else if (!strcmp(name, "--warmup")) {
            NEED_VALUE();
            if (!parse_int(val, 0, 1000, false, &v))
                return fail(err, err_len, "--warmup: '%s' is not an integer in [0, 1000]", val);
            o->warmup = (int)v;
        } else if (!strcmp(name, "--threads")) {
            NEED_VALUE();
            if (!parse_int(val, 0, 1024, false, &v))
                return fail(err, err_len, "--threads: '%s' is not an integer in [0, 1024]", val);
            o->threads = (int)v;
        } else if (!strcmp(name, "--budget")) {
            NEED_VALUE();
            char *end = NULL;
            errno = 0;
            const double b = strtod(val, &end);
            if (errno || end == val || *end || !(b > 0) || b > 86400)
                return fail(err, err_len, "--budget: '%s' is not a number of seconds in (0, 86400]",
                            val);
            o->budget_s = b;
        } else if (!strcmp(name, "--ref-budget")) {
            NEED_VALUE();
            char *end = NULL;
            errno = 0;
            const double b = strtod(val, &end);
            if (errno || end == val || *end || !(b > 0) || b > 86400)
                return fail(err, err_len,
                            "--ref-budget: '%s' is not a number of seconds in (0, 86400]", val);
            o->ref_budget_s = b;
        } else if (!strcmp(name, "--seed")) {
            NEED_VALUE();
            if (!parse_int(val, 0, INT64_MAX, false, &v))
                return fail(err, err_len, "--seed: '%s' is not a non-negative integer", val);
            o->seed = (uint64_t)v;
        } else if (!strcmp(name, "--json")) {
            NEED_VALUE();
            o->json = val;
        } else if (!strcmp(name, "--csv")) {
            NEED_VALUE();
            o->csv = val;
        } else if (!strcmp(name, "--plot")) {
            NEED_VALUE();
            if (!has_suffix(val, ".png") && !has_suffix(val, ".svg"))
                return fail(err, err_len, "--plot: '%s' must end in .png or .svg", val);
            o->plot = val;
        } else if (!strcmp(name, "--config")) {
            NEED_VALUE();
            o->config = val;
        } else if (!strcmp(name, "--no-progress")) {
            o->progress = false;
        } else if (!strcmp(name, "--quiet") || !strcmp(name, "-q")) {
            o->quiet = true;
        } else {
            return fail(err, err_len, "unknown option '%s' (try krserve bench --help)", a);
        }
#undef NEED_VALUE
    }
    if (o->kinds[KB_DECODE] || o->kinds[KB_KV_APPEND]) {
        if (o->n_kv_dtypes == 0) return fail(err, err_len, "--kv-dtype: no storage dtype given");
    }
    return 0;
}
