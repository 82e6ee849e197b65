/*
 * bench_report.c — what `krserve bench` shows: the progress bar (stderr,
 * terminals only), one line per measured case, the one-screen summary in the
 * plan's shape ("accelerated X / reference Y / speed-up Z×"), and the files:
 * JSON (schema in docs/BENCH.md), CSV, and a gnuplot PNG or SVG.
 */
#include "bench.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *kb_state_name(kb_state s) {
    switch (s) {
    case KB_OK: return "ok";
    case KB_SKIPPED: return "skipped";
    case KB_WRONG: return "wrong";
    case KB_FAILED: return "failed";
    default: return "?";
    }
}

/* ---- progress ------------------------------------------------------------------ */

void kb_progress_start(kb_progress *p, int total, bool allowed) {
    memset(p, 0, sizeof *p);
    p->enabled = allowed && isatty(STDERR_FILENO);
    p->total = total;
    p->t0 = kb_now();
}

void kb_progress_step(kb_progress *p, const char *what) {
    p->done++;
    if (!p->enabled || kb_now() - p->t0 < 2.0 || p->total <= 0) return;
    const int width = 30, fill = p->done * width / p->total;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '-';
    bar[width] = 0;
    fprintf(stderr, "\r\033[K[%s] %d/%d  %.0f s  %s", bar, p->done, p->total, kb_now() - p->t0,
            what);
    fflush(stderr);
    p->drawn = true;
}

void kb_progress_end(kb_progress *p) {
    if (p->drawn) {
        fprintf(stderr, "\r\033[K");
        fflush(stderr);
    }
    p->drawn = false;
}

/* ---- text ------------------------------------------------------------------------ */

static const char *fmt_time(double s, char *buf, size_t n) {
    if (s >= 1)
        snprintf(buf, n, "%.2f s", s);
    else if (s >= 1e-3)
        snprintf(buf, n, "%.2f ms", s * 1e3);
    else
        snprintf(buf, n, "%.1f us", s * 1e6);
    return buf;
}

static const char *fmt_rate(const kb_result *r, char *buf, size_t n) {
    if (r->cost.compute)
        snprintf(buf, n, "%.1f GFLOP/s", r->gflops);
    else
        snprintf(buf, n, "%.1f GB/s", r->gbps);
    return buf;
}

static void series_label(const kb_shape *s, char *buf, size_t n) {
    switch (s->kind) {
    case KB_ATTENTION:
        snprintf(buf, n, "attention %s %s", kr_dtype_name(s->dtype),
                 s->causal ? "causal" : "non-causal");
        break;
    case KB_DECODE:
        snprintf(buf, n, "decode %s kv-%s q%lld", kr_dtype_name(s->dtype),
                 s->kv_dtype == KR_I8 ? "int8" : kr_dtype_name(s->kv_dtype), (long long)s->q_len);
        break;
    case KB_ROPE: snprintf(buf, n, "rope %s", kr_dtype_name(s->dtype)); break;
    case KB_KV_APPEND:
        snprintf(buf, n, "kv-append %s -> %s", kr_dtype_name(s->dtype),
                 s->kv_dtype == KR_I8 ? "int8" : kr_dtype_name(s->kv_dtype));
        break;
    default: snprintf(buf, n, "?"); break;
    }
}

void kb_print_case(FILE *f, const kb_result *r) {
    char label[96], t[32], rate[32];
    series_label(&r->shape, label, sizeof label);
    fprintf(f, "%-28s ctx %6lld  %-5s ", label, (long long)r->shape.context, r->backend);
    if (r->state != KB_OK) {
        fprintf(f, "%s\n", r->note);
        return;
    }
    fprintf(f, "%9s ±%4.1f%% (%d) %16s %5.1f%% of %s", fmt_time(r->median_s, t, sizeof t),
            100 * r->spread, r->reps, fmt_rate(r, rate, sizeof rate), 100 * r->ceiling_frac,
            r->cost.compute ? "FMA" : "read BW");
    if (!isnan(r->speedup)) fprintf(f, "  %6.2fx", r->speedup);
    if (!isnan(r->error)) fprintf(f, "  err %.1e", r->error);
    fprintf(f, "  [%s: calls %lld accel %lld fallback %lld]", r->served_by[0] ? r->served_by : "-",
            (long long)r->calls, (long long)r->accelerated, (long long)r->fallbacks);
    if (r->sampled < 1) fprintf(f, "  (%.2g%% of rows)", 100 * r->sampled);
    fprintf(f, "\n");
}

static bool same_series(const kb_shape *a, const kb_shape *b) {
    return a->kind == b->kind && a->dtype == b->dtype && a->kv_dtype == b->kv_dtype &&
           a->causal == b->causal;
}

void kb_print_summary(FILE *f, const kb_report *rep) {
    const kb_options *o = &rep->opt;
    fprintf(f, "\n== krserve bench summary — %s, %d threads, %s ==\n", rep->cpu_model, rep->threads,
            rep->date);
    fprintf(f, "ceilings measured in this run: FMA %.1f GFLOP/s (%s), read %.1f GB/s (%.0f MiB)\n",
            rep->ceil.fma_gflops, rep->ceil.fma_kernel, rep->ceil.read_gbps,
            rep->ceil.stream_bytes / 1048576.0);
    fprintf(f, "shape: batch %lld, heads %lld:%lld, head_dim %lld; budget %.1f s per case\n",
            (long long)o->batch, (long long)o->heads, (long long)o->kv_heads,
            (long long)o->head_dim, o->budget_s);
    for (int i = 0; i < rep->n_results; i++) {
        const kb_result *r = &rep->results[i];
        bool seen = false;
        for (int j = 0; j < i && !seen; j++) seen = same_series(&rep->results[j].shape, &r->shape);
        if (seen) continue;
        char label[96];
        series_label(&r->shape, label, sizeof label);
        fprintf(f, "\n%s\n", label);
        /* every context of this series, in order; one line per accelerated backend */
        for (int j = i; j < rep->n_results; j++) {
            const kb_result *ref = &rep->results[j];
            if (!same_series(&ref->shape, &r->shape) || strcmp(ref->backend, "ref") != 0) continue;
            char rt[32], rr[32];
            const char *ref_txt = ref->state == KB_OK ? fmt_time(ref->median_s, rt, sizeof rt) : "";
            if (ref->state == KB_OK) fmt_rate(ref, rr, sizeof rr);
            bool any = false;
            for (int k = j + 1; k < rep->n_results; k++) {
                const kb_result *x = &rep->results[k];
                if (!same_series(&x->shape, &r->shape) || x->shape.context != ref->shape.context)
                    continue;
                if (!strcmp(x->backend, "ref")) break;
                any = true;
                char xt[32], xr[32];
                fprintf(f, "  ctx %6lld  ", (long long)x->shape.context);
                if (x->state == KB_OK)
                    fprintf(f, "%s %s (%s, %.0f%%)", x->backend,
                            fmt_time(x->median_s, xt, sizeof xt), fmt_rate(x, xr, sizeof xr),
                            100 * x->ceiling_frac);
                else
                    fprintf(f, "%s %s", x->backend, kb_state_name(x->state));
                if (ref->state == KB_OK)
                    fprintf(f, " / ref %s%s (%s)", ref_txt, ref->sampled < 1 ? "*" : "", rr);
                else
                    fprintf(f, " / ref %s", kb_state_name(ref->state));
                if (!isnan(x->speedup))
                    fprintf(f, " / speed-up %.1fx", x->speedup);
                else
                    fprintf(f, " / speed-up n/a");
                if (x->state == KB_OK && x->accelerated == 0) fprintf(f, "  (not accelerated!)");
                fprintf(f, "\n");
            }
            if (!any) {
                fprintf(f, "  ctx %6lld  ref ", (long long)ref->shape.context);
                if (ref->state == KB_OK)
                    fprintf(f, "%s%s (%s, %.0f%%)", ref_txt, ref->sampled < 1 ? "*" : "", rr,
                            100 * ref->ceiling_frac);
                else
                    fprintf(f, "%s", kb_state_name(ref->state));
                fprintf(f, "  — no accelerated backend here\n");
            }
        }
    }
    int wrong = 0, failed = 0, skipped = 0, sampled = 0;
    for (int i = 0; i < rep->n_results; i++) {
        wrong += rep->results[i].state == KB_WRONG;
        failed += rep->results[i].state == KB_FAILED;
        skipped += rep->results[i].state == KB_SKIPPED;
        sampled += rep->results[i].state == KB_OK && rep->results[i].sampled < 1;
    }
    if (sampled) fprintf(f, "\n* reference timed on its last query rows (see the JSON's note)\n");
    fprintf(f, "\n%d results: %d wrong, %d failed, %d skipped (budget); %.0f s\n", rep->n_results,
            wrong, failed, skipped, rep->wall_s);
}

/* ---- JSON ------------------------------------------------------------------------- */

static void add_num(cJSON *o, const char *k, double v) {
    if (isfinite(v))
        cJSON_AddNumberToObject(o, k, v);
    else
        cJSON_AddNullToObject(o, k);
}

static const char *kv_name(kr_dtype d) { return d == KR_I8 ? "int8" : kr_dtype_name(d); }

static cJSON *result_json(const kb_result *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "sub_benchmark", kb_kind_name(r->shape.kind));
    cJSON *p = cJSON_AddObjectToObject(o, "params");
    cJSON_AddNumberToObject(p, "batch", (double)r->shape.batch);
    cJSON_AddNumberToObject(p, "heads", (double)r->shape.heads);
    cJSON_AddNumberToObject(p, "kv_heads", (double)r->shape.kv_heads);
    cJSON_AddNumberToObject(p, "head_dim", (double)r->shape.head_dim);
    cJSON_AddNumberToObject(p, "context", (double)r->shape.context);
    cJSON_AddNumberToObject(p, "q_len",
                            (double)(r->shape.kind == KB_DECODE      ? r->shape.q_len
                                     : r->shape.kind == KB_ATTENTION ? r->shape.context
                                                                     : 0));
    cJSON_AddStringToObject(p, "dtype", kr_dtype_name(r->shape.dtype));
    if (r->shape.kind == KB_DECODE || r->shape.kind == KB_KV_APPEND)
        cJSON_AddStringToObject(p, "kv_dtype", kv_name(r->shape.kv_dtype));
    else
        cJSON_AddNullToObject(p, "kv_dtype");
    cJSON_AddBoolToObject(p, "causal", r->shape.causal);
    cJSON_AddStringToObject(o, "backend", r->backend);
    cJSON_AddStringToObject(o, "served_by", r->served_by);
    cJSON_AddStringToObject(o, "state", kb_state_name(r->state));
    cJSON_AddStringToObject(o, "note", r->note);
    cJSON_AddNumberToObject(o, "reps", r->reps);
    const bool ok = r->state == KB_OK;
    add_num(o, "median_s", ok ? r->median_s : NAN);
    add_num(o, "min_s", ok ? r->min_s : NAN);
    add_num(o, "max_s", ok ? r->max_s : NAN);
    add_num(o, "spread", ok ? r->spread : NAN);
    add_num(o, "sampled", r->sampled);
    add_num(o, "flops", r->cost.flops);
    add_num(o, "bytes", r->cost.bytes);
    cJSON_AddStringToObject(o, "bound", r->cost.compute ? "compute" : "memory");
    cJSON *t = cJSON_AddObjectToObject(o, "throughput");
    add_num(t, "gflops", ok && r->cost.flops > 0 ? r->gflops : NAN);
    add_num(t, "gbps", ok ? r->gbps : NAN);
    add_num(o, "ceiling_fraction", ok ? r->ceiling_frac : NAN);
    add_num(o, "speedup", r->speedup);
    add_num(o, "error", r->error);
    add_num(o, "tolerance", r->tolerance);
    cJSON *c = cJSON_AddObjectToObject(o, "counters");
    cJSON_AddNumberToObject(c, "calls", (double)r->calls);
    cJSON_AddNumberToObject(c, "accelerated", (double)r->accelerated);
    cJSON_AddNumberToObject(c, "fallbacks", (double)r->fallbacks);
    cJSON_AddStringToObject(c, "last_reason", r->last_reason);
    return o;
}

char *kb_json_string(const kb_report *rep) {
    const kb_options *o = &rep->opt;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "schema", "krserve-bench");
    cJSON_AddNumberToObject(root, "schema_version", KB_SCHEMA_VERSION);
    cJSON_AddStringToObject(root, "krserve_version", rep->version);
    cJSON_AddStringToObject(root, "date", rep->date);
    cJSON *m = cJSON_AddObjectToObject(root, "machine");
    cJSON_AddStringToObject(m, "cpu", rep->cpu_model);
    cJSON_AddNumberToObject(m, "threads", rep->threads);
    cJSON *ce = cJSON_AddObjectToObject(root, "ceilings");
    add_num(ce, "fma_gflops", rep->ceil.fma_gflops);
    cJSON_AddStringToObject(ce, "fma_kernel", rep->ceil.fma_kernel);
    add_num(ce, "read_gbps", rep->ceil.read_gbps);
    add_num(ce, "stream_bytes", rep->ceil.stream_bytes);
    cJSON *op = cJSON_AddObjectToObject(root, "options");
    cJSON *ks = cJSON_AddArrayToObject(op, "sub_benchmarks");
    for (int k = 0; k < KB_KIND_COUNT_; k++)
        if (o->kinds[k]) cJSON_AddItemToArray(ks, cJSON_CreateString(kb_kind_name((kb_kind)k)));
    cJSON *cs = cJSON_AddArrayToObject(op, "contexts");
    for (int i = 0; i < o->n_contexts; i++)
        cJSON_AddItemToArray(cs, cJSON_CreateNumber((double)o->contexts[i]));
    cJSON_AddNumberToObject(op, "batch", (double)o->batch);
    cJSON_AddNumberToObject(op, "heads", (double)o->heads);
    cJSON_AddNumberToObject(op, "kv_heads", (double)o->kv_heads);
    cJSON_AddNumberToObject(op, "head_dim", (double)o->head_dim);
    cJSON_AddNumberToObject(op, "q_len", (double)o->q_len);
    cJSON_AddNumberToObject(op, "reps", o->reps);
    cJSON_AddNumberToObject(op, "warmup", o->warmup);
    cJSON_AddNumberToObject(op, "budget_s", o->budget_s);
    cJSON_AddNumberToObject(op, "ref_budget_s",
                            o->ref_budget_s > 0 ? o->ref_budget_s : o->budget_s);
    cJSON_AddNumberToObject(op, "seed", (double)o->seed);
    cJSON *rs = cJSON_AddArrayToObject(root, "results");
    for (int i = 0; i < rep->n_results; i++)
        cJSON_AddItemToArray(rs, result_json(&rep->results[i]));
    add_num(root, "wall_s", rep->wall_s);
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    return s;
}

int kb_write_json(const kb_report *rep, const char *path, char *err, size_t err_len) {
    char *s = kb_json_string(rep);
    FILE *f = s ? fopen(path, "w") : NULL;
    if (!f) {
        snprintf(err, err_len, "--json: cannot write '%s'", path);
        free(s);
        return -1;
    }
    fprintf(f, "%s\n", s);
    free(s);
    if (fclose(f)) {
        snprintf(err, err_len, "--json: error writing '%s'", path);
        return -1;
    }
    return 0;
}

/* ---- CSV --------------------------------------------------------------------------- */

int kb_write_csv(const kb_report *rep, const char *path, char *err, size_t err_len) {
    FILE *f = fopen(path, "w");
    if (!f) {
        snprintf(err, err_len, "--csv: cannot write '%s'", path);
        return -1;
    }
    fprintf(f, "sub_benchmark,batch,heads,kv_heads,head_dim,context,q_len,dtype,kv_dtype,causal,"
               "backend,served_by,state,reps,median_s,min_s,max_s,spread,sampled,flops,bytes,"
               "bound,gflops,gbps,ceiling_fraction,speedup,error,calls,accelerated,fallbacks,"
               "note\n");
    for (int i = 0; i < rep->n_results; i++) {
        const kb_result *r = &rep->results[i];
        const bool ok = r->state == KB_OK;
        /* notes never hold double quotes; commas are quoted */
        fprintf(f, "%s,%lld,%lld,%lld,%lld,%lld,%lld,%s,%s,%d,%s,%s,%s,%d,",
                kb_kind_name(r->shape.kind), (long long)r->shape.batch, (long long)r->shape.heads,
                (long long)r->shape.kv_heads, (long long)r->shape.head_dim,
                (long long)r->shape.context,
                (long long)(r->shape.kind == KB_DECODE ? r->shape.q_len : 0),
                kr_dtype_name(r->shape.dtype), kv_name(r->shape.kv_dtype), r->shape.causal,
                r->backend, r->served_by, kb_state_name(r->state), r->reps);
        if (ok)
            fprintf(f, "%.9g,%.9g,%.9g,%.4g,", r->median_s, r->min_s, r->max_s, r->spread);
        else
            fprintf(f, ",,,,");
        fprintf(f, "%.6g,%.6g,%.6g,%s,", r->sampled, r->cost.flops, r->cost.bytes,
                r->cost.compute ? "compute" : "memory");
        if (ok)
            fprintf(f, "%.6g,%.6g,%.4g,", r->gflops, r->gbps, r->ceiling_frac);
        else
            fprintf(f, ",,,");
        if (!isnan(r->speedup)) fprintf(f, "%.4g", r->speedup);
        fprintf(f, ",");
        if (!isnan(r->error)) fprintf(f, "%.3g", r->error);
        fprintf(f, ",%lld,%lld,%lld,\"", (long long)r->calls, (long long)r->accelerated,
                (long long)r->fallbacks);
        for (const char *c = r->note; *c; c++) fputc(*c == '"' ? '\'' : *c, f);
        fprintf(f, "\"\n");
    }
    if (fclose(f)) {
        snprintf(err, err_len, "--csv: error writing '%s'", path);
        return -1;
    }
    return 0;
}

/* ---- plot -------------------------------------------------------------------------- */

int kb_write_plot(const kb_report *rep, const char *path, char *err, size_t err_len) {
    if (strchr(path, '\'') || strchr(path, '\n')) {
        snprintf(err, err_len, "--plot: the path may not hold quotes or newlines");
        return -1;
    }
    char dir[] = "/tmp/krserve-plot-XXXXXX";
    if (!mkdtemp(dir)) {
        snprintf(err, err_len, "--plot: cannot make a temporary directory");
        return -1;
    }
    /* one data file per (series, backend): "context speedup throughput" */
    typedef struct line {
        kb_shape s;
        char backend[32];
        char file[64];
    } line;
    line lines[128];
    int n_lines = 0;
    for (int i = 0; i < rep->n_results && n_lines < 128; i++) {
        const kb_result *r = &rep->results[i];
        if (r->state != KB_OK) continue;
        bool seen = false;
        for (int j = 0; j < n_lines && !seen; j++)
            seen = same_series(&lines[j].s, &r->shape) && !strcmp(lines[j].backend, r->backend);
        if (seen) continue;
        line *l = &lines[n_lines];
        l->s = r->shape;
        snprintf(l->backend, sizeof l->backend, "%s", r->backend);
        snprintf(l->file, sizeof l->file, "%s/%d.dat", dir, n_lines);
        FILE *f = fopen(l->file, "w");
        if (!f) continue;
        for (int j = i; j < rep->n_results; j++) {
            const kb_result *x = &rep->results[j];
            if (x->state != KB_OK || !same_series(&x->shape, &r->shape) ||
                strcmp(x->backend, r->backend) != 0)
                continue;
            fprintf(f, "%lld %.6g %.6g\n", (long long)x->shape.context,
                    isnan(x->speedup) ? 0.0 : x->speedup, x->cost.compute ? x->gflops : x->gbps);
        }
        fclose(f);
        n_lines++;
    }
    int rows = 0;
    bool kind_used[KB_KIND_COUNT_] = {false};
    for (int j = 0; j < n_lines; j++) kind_used[lines[j].s.kind] = true;
    for (int k = 0; k < KB_KIND_COUNT_; k++) rows += kind_used[k];
    int rc = 0;
    if (rows == 0) {
        snprintf(err, err_len, "--plot: no measured result to plot");
        rc = -1;
    }
    char script[96];
    snprintf(script, sizeof script, "%s/plot.gp", dir);
    FILE *g = rc ? NULL : fopen(script, "w");
    if (!rc && !g) {
        snprintf(err, err_len, "--plot: cannot write the gnuplot script");
        rc = -1;
    }
    if (g) {
        const bool svg = strlen(path) > 4 && !strcmp(path + strlen(path) - 4, ".svg");
        fprintf(g, "set terminal %s size 1400,%d font 'Sans,10'\n", svg ? "svg" : "pngcairo",
                360 * rows + 60);
        fprintf(g, "set output '%s'\n", path);
        fprintf(g,
                "set multiplot layout %d,2 title \"krserve bench %s — %s, %d threads — %s\\n"
                "ceilings: FMA %.0f GFLOP/s, read %.1f GB/s\"\n",
                rows, rep->version, rep->cpu_model, rep->threads, rep->date, rep->ceil.fma_gflops,
                rep->ceil.read_gbps);
        fprintf(g,
                "set logscale x 2\nset logscale y 10\nset grid\nset key bottom right opaque box\n"
                "set xlabel 'context (tokens)'\nset format x '%%g'\nset format y '%%g'\n");
        for (int k = 0; k < KB_KIND_COUNT_; k++) {
            if (!kind_used[k]) continue;
            bool compute = k == KB_ATTENTION; /* decode: as its lines' q-len says */
            for (int j = 0; j < n_lines; j++)
                if ((int)lines[j].s.kind == k && k == KB_DECODE)
                    compute = lines[j].s.q_len >= KB_DECODE_COMPUTE_Q_LEN;
            for (int panel = 0; panel < 2; panel++) {
                if (panel == 0)
                    fprintf(g, "set title '%s: speed-up over ref'\nset ylabel 'x ref'\n",
                            kb_kind_name((kb_kind)k));
                else
                    fprintf(g, "set title '%s: throughput'\nset ylabel '%s'\n",
                            kb_kind_name((kb_kind)k), compute ? "GFLOP/s" : "GB/s");
                fprintf(g, "plot ");
                bool first = true;
                for (int j = 0; j < n_lines; j++) {
                    if ((int)lines[j].s.kind != k) continue;
                    char label[96];
                    series_label(&lines[j].s, label, sizeof label);
                    fprintf(g, "%s'%s' using 1:%d with linespoints lw 2 title '%s: %s'",
                            first ? "" : ", ", lines[j].file, panel == 0 ? 2 : 3, lines[j].backend,
                            label);
                    first = false;
                }
                if (panel == 1)
                    fprintf(g, ", %.6g with lines dt 2 lc rgb 'black' title '%s ceiling'",
                            compute ? rep->ceil.fma_gflops : rep->ceil.read_gbps,
                            compute ? "FMA" : "read");
                fprintf(g, "\n");
            }
        }
        fprintf(g, "unset multiplot\n");
        fclose(g);
        char cmd[256];
        snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>&1", script);
        FILE *p = popen(cmd, "r");
        char out[512] = "";
        size_t got = 0;
        if (p) {
            got = fread(out, 1, sizeof out - 1, p);
            out[got] = 0;
        }
        const int status = p ? pclose(p) : -1;
        if (status != 0) {
            const bool missing = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 127;
            snprintf(err, err_len, "--plot: %s%s",
                     missing ? "gnuplot not found (Debian: "
                               "apt-get install gnuplot-nox)"
                             : "gnuplot failed: ",
                     missing ? "" : out);
            rc = -1;
        }
    }
    for (int j = 0; j < n_lines; j++) remove(lines[j].file);
    remove(script);
    rmdir(dir);
    return rc;
}
