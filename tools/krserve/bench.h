/*
 * bench.h — `krserve bench`: the accelerated-vs-reference benchmark suite.
 *
 * The pieces, one file each:
 *   bench_options.c  command-line parsing into kb_options (errors name the option)
 *   bench_cost.c     the minimal FLOP and byte counts of every case
 *   bench_ceiling.c  this machine's ceilings, measured in the run (FMA peak,
 *                    memory read bandwidth)
 *   bench_run.c      building inputs, checking each backend against the
 *                    reference, timing with warm-up, counters
 *   bench_report.c   progress bar, per-case lines, summary table, JSON, CSV,
 *                    gnuplot plot
 * They are linked into the CLI and into tests/test_bench.c.
 */
#ifndef KR_TOOLS_BENCH_H
#define KR_TOOLS_BENCH_H

#include <krserve/krserve.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define KB_MAX_LIST 16
#define KB_MAX_BACKENDS 8
#define KB_SCHEMA_VERSION 1

/* The sub-benchmarks, in the order they run. */
typedef enum kb_kind {
    KB_ATTENTION = 0, /* prefill: Sq = Skv = context */
    KB_DECODE = 1,    /* attention of q_len new rows over a KV cache of `context` tokens */
    KB_ROPE = 2,      /* RoPE in place on `context` tokens */
    KB_KV_APPEND = 3, /* RoPE on K + (quantise +) append of `context` tokens */
    KB_KIND_COUNT_
} kb_kind;

const char *kb_kind_name(kb_kind k);

typedef struct kb_options {
    bool kinds[KB_KIND_COUNT_];
    int64_t contexts[KB_MAX_LIST];
    int n_contexts;
    int64_t batch;
    int64_t heads, kv_heads;
    int64_t head_dim;
    int64_t q_len; /* decode rows per sequence (1..16) */
    kr_dtype dtypes[KR_DTYPE_COUNT_];
    int n_dtypes;
    kr_dtype kv_dtypes[KR_DTYPE_COUNT_];
    int n_kv_dtypes;
    int causal_modes[2]; /* attention: 1 = causal, 0 = not */
    int n_causal;
    char backends[KB_MAX_BACKENDS][32]; /* named backends; empty with all_backends */
    int n_backends;
    bool all_backends;
    int reps, warmup;
    int threads;         /* 0 = the context's default (all online cores) */
    double budget_s;     /* time cap per case and backend */
    double ref_budget_s; /* the same for ref; 0 = budget_s */
    const char *json;    /* output files, NULL = none */
    const char *csv;
    const char *plot;
    const char *config; /* --config, NULL = default */
    uint64_t seed;
    bool progress;      /* false: never draw the progress bar */
    bool quiet;         /* no per-case lines, only the summary */
    bool tiny_ceilings; /* tests: measure the ceilings in milliseconds (meaningless values) */
} kb_options;

/* Defaults: every sub-benchmark, contexts 512..32768, batch 1, heads 32:8,
 * head_dim 128, q_len 1, f16, kv f16 and int8, causal, all backends, 5 reps
 * after 1 warm-up, budget 2 s. */
void kb_options_default(kb_options *o);

/* Parses argv (the words after `bench`). Returns 0 on success, 1 when --help
 * was asked (usage printed to `out`), -1 on a bad option with a message in
 * err naming the option, the value and what was expected. */
int kb_parse_args(int argc, char **argv, kb_options *o, FILE *out, char *err, size_t err_len);
void kb_usage(FILE *f);

/* ---- costs (bench_cost.c) ------------------------------------------------ */

/* (query, key) pairs attention must visit: Sq rows over Skv keys, causal
 * aligned bottom-right (row i sees keys j <= Skv - Sq + i). */
double kb_attention_pairs(int64_t Sq, int64_t Skv, bool causal);

typedef struct kb_shape {
    kb_kind kind;
    int64_t batch, heads, kv_heads, head_dim;
    int64_t context; /* Skv for attention/decode, tokens for rope/kv-append */
    int64_t q_len;   /* decode only */
    kr_dtype dtype;  /* q/k/v (and the appended k/v) */
    kr_dtype kv_dtype;
    bool causal;
} kb_shape;

typedef struct kb_cost {
    double flops; /* minimal floating-point operations (0 where not counted) */
    double bytes; /* minimal bytes moved to and from memory */
    bool compute; /* bound by compute (FLOP/s) or by memory (GB/s) */
} kb_cost;

/* Decode from this many query rows per sequence on (chunked prefill) is
 * judged against the FMA ceiling: 4 q-len H / Hkv FLOP per cached element
 * (64 at q-len 16 over 32:8 heads and an fp16 cache, 4 bytes a K/V pair)
 * is far above a CPU's FMA-to-read ratio (~7 on the development VM). */
#define KB_DECODE_COMPUTE_Q_LEN 4

/* The minimal counts `krserve bench --help` states. */
kb_cost kb_case_cost(const kb_shape *s);
/* Bytes of one token of one layer in a KV cache of that dtype (K and V). */
double kb_kv_token_bytes(int64_t kv_heads, int64_t head_dim, kr_dtype kv_dtype);

/* ---- ceilings (bench_ceiling.c) ------------------------------------------ */

typedef struct kb_ceilings {
    double fma_gflops;   /* fp32 FMA peak, all threads, GFLOP/s */
    double read_gbps;    /* streaming read bandwidth, GB/s (1e9 bytes) */
    double stream_bytes; /* size of the buffer read */
    char fma_kernel[32]; /* "avx512f", "avx2-fma" or "scalar" */
    int threads;
} kb_ceilings;

/* `tiny`: a few milliseconds of work, for the tests (the values mean nothing). */
void kb_measure_ceilings(int threads, bool tiny, kb_ceilings *c);

/* ---- results -------------------------------------------------------------- */

typedef enum kb_state { KB_OK = 0, KB_SKIPPED, KB_WRONG, KB_FAILED } kb_state;
const char *kb_state_name(kb_state s);

typedef struct kb_result {
    kb_shape shape;
    char backend[32];   /* as asked */
    char served_by[32]; /* the backend that served most calls */
    kb_state state;
    char note[256]; /* why skipped / wrong / failed, or how it was measured */
    int reps;
    double median_s, min_s, max_s;
    double spread;       /* (max - min) / median */
    double sampled;      /* fraction of the work timed (1 = the whole case) */
    kb_cost cost;        /* of the whole case */
    double gflops, gbps; /* throughput of the timed work */
    double ceiling_frac; /* of the FMA ceiling (compute) or the read ceiling (memory) */
    double speedup;      /* over ref's throughput in the same run; NAN if none */
    double error;        /* normwise relative error against ref; NAN if not checked */
    double tolerance;
    int64_t calls, accelerated, fallbacks;
    char last_reason[256];
} kb_result;

typedef struct kb_report {
    kb_options opt;
    kb_ceilings ceil;
    char cpu_model[128];
    char version[32];
    char date[32];
    int threads;
    kb_result *results;
    int n_results, cap_results;
    double wall_s;
} kb_report;

/* Runs everything opt asks for; returns 0, or non-zero with err set when the
 * run could not start (no context, unknown backend). */
int kb_run(const kb_options *opt, kb_report *rep, char *err, size_t err_len);
void kb_report_free(kb_report *rep);

/* ---- output (bench_report.c) ---------------------------------------------- */

void kb_print_case(FILE *f, const kb_result *r);
void kb_print_summary(FILE *f, const kb_report *rep);
/* Each returns 0, or -1 with err set. */
int kb_write_json(const kb_report *rep, const char *path, char *err, size_t err_len);
int kb_write_csv(const kb_report *rep, const char *path, char *err, size_t err_len);
int kb_write_plot(const kb_report *rep, const char *path, char *err, size_t err_len);
/* The JSON document as a string (caller frees), for the tests. */
char *kb_json_string(const kb_report *rep);

/* Progress bar on stderr: drawn only when stderr is a terminal and the run
 * has lasted more than two seconds. */
typedef struct kb_progress {
    bool enabled;
    int total, done;
    double t0;
    bool drawn;
} kb_progress;
void kb_progress_start(kb_progress *p, int total, bool allowed);
void kb_progress_step(kb_progress *p, const char *what);
void kb_progress_end(kb_progress *p);

double kb_now(void); /* seconds, monotonic */

#endif /* KR_TOOLS_BENCH_H */
