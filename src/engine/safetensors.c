/*
 * safetensors.c — the weights of a model directory: one model.safetensors,
 * or the shards model.safetensors.index.json maps tensor names to. Each file
 * is memory-mapped read-only and its header checked field by field before
 * any tensor is handed out:
 *
 *   | u64 LE header length N | N bytes of JSON header | data ... |
 *   header: { "name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [b, e]}, ...,
 *             "__metadata__": {...} }
 *
 * offsets are relative to the data section; e - b must equal the element
 * count times the dtype size, e must lie inside the file, and no two tensors
 * of a file may overlap.
 */
#include "../core/internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define KR_ST_MAX_HEADER (100u << 20) /* the format's own limit */
#define KR_ST_MAX_FILES 256

typedef struct st_tensor {
    char *name;
    kr_dtype dt;
    int32_t ndim;
    int64_t shape[4];
    size_t begin, end; /* within the data section */
    int32_t file;
} st_tensor;

typedef struct st_file {
    char path[1024];
    const char *map;
    size_t size;
    size_t data_start; /* 8 + header length */
} st_file;

struct kr_weights {
    st_file files[KR_ST_MAX_FILES];
    int32_t n_files;
    st_tensor *t; /* sorted by name */
    int64_t n, cap;
};

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_begin(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

/* A JSON number that is a whole number in [0, 2^53). */
static bool as_count(const cJSON *j, int64_t *out) {
    if (!cJSON_IsNumber(j)) return false;
    const double d = j->valuedouble;
    if (!(d >= 0 && d < 9007199254740992.0) || d != floor(d)) return false;
    *out = (int64_t)d;
    return true;
}

static bool dtype_of(const char *s, kr_dtype *dt) {
    if (!strcmp(s, "F32"))
        *dt = KR_F32;
    else if (!strcmp(s, "F16"))
        *dt = KR_F16;
    else if (!strcmp(s, "BF16"))
        *dt = KR_BF16;
    else
        return false;
    return true;
}

/* Checks one header entry and appends it to w->t. */
static kr_status add_tensor(kr_context *ctx, kr_weights *w, int32_t fi, const cJSON *e,
                            size_t data_size) {
    const char *file = base_name(w->files[fi].path), *name = e->string;
    if (!cJSON_IsObject(e))
        return kr_fail(ctx, KR_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", file,
                       name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo))
        return kr_fail(ctx, KR_ERR_FORMAT,
                       "%s: tensor '%s': needs \"dtype\" (string), \"shape\" and \"data_offsets\" "
                       "(arrays)",
                       file, name);
    st_tensor t = {0};
    if (!dtype_of(jd->valuestring, &t.dt))
        return kr_fail(ctx, KR_ERR_UNSUPPORTED,
                       "%s: tensor '%s': dtype %s is not supported (F32, F16, BF16)", file, name,
                       jd->valuestring);
    const int nd = cJSON_GetArraySize(js);
    if (nd > 4)
        return kr_fail(ctx, KR_ERR_FORMAT, "%s: tensor '%s': %d dimensions (at most 4)", file, name,
                       nd);
    t.ndim = nd;
    double numel = 1;
    for (int i = 0; i < nd; i++) {
        if (!as_count(cJSON_GetArrayItem(js, i), &t.shape[i]))
            return kr_fail(ctx, KR_ERR_FORMAT,
                           "%s: tensor '%s': shape[%d] is not a non-negative integer", file, name,
                           i);
        numel *= (double)t.shape[i];
    }
    int64_t b = 0, en = 0;
    if (cJSON_GetArraySize(jo) != 2 || !as_count(cJSON_GetArrayItem(jo, 0), &b) ||
        !as_count(cJSON_GetArrayItem(jo, 1), &en) || en < b)
        return kr_fail(ctx, KR_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets must be [begin, end] integers with begin <= "
                       "end",
                       file, name);
    if ((size_t)en > data_size)
        return kr_fail(ctx, KR_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%lld, %lld) end past the data (%zu bytes; "
                       "file truncated?)",
                       file, name, (long long)b, (long long)en, data_size);
    if ((double)(en - b) != numel * (double)kr_dtype_size(t.dt))
        return kr_fail(ctx, KR_ERR_FORMAT,
                       "%s: tensor '%s': %lld bytes at data_offsets but shape x %s needs %.0f",
                       file, name, (long long)(en - b), jd->valuestring,
                       numel * (double)kr_dtype_size(t.dt));
    t.begin = (size_t)b;
    t.end = (size_t)en;
    t.file = fi;
    if (w->n == w->cap) {
        const int64_t cap = w->cap ? 2 * w->cap : 256;
        st_tensor *nt = realloc(w->t, sizeof *nt * (size_t)cap);
        if (!nt) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", file);
        w->t = nt;
        w->cap = cap;
    }
    t.name = strdup(name);
    if (!t.name) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", file);
    w->t[w->n++] = t;
    return KR_OK;
}

/* Maps one file and checks its header; its tensors join w->t. */
static kr_status open_file(kr_context *ctx, kr_weights *w, const char *path) {
    if (w->n_files == KR_ST_MAX_FILES)
        return kr_fail(ctx, KR_ERR_UNSUPPORTED, "%s: more than %d safetensors shards", path,
                       KR_ST_MAX_FILES);
    const char *file = base_name(path);
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kr_fail(ctx, KR_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kr_fail(ctx, KR_ERR_IO, "%s: not a regular file", path);
    }
    const size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return kr_fail(ctx, KR_ERR_FORMAT,
                       "%s: %zu bytes; a safetensors file starts with an 8-byte header length",
                       file, size);
    }
    const char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return kr_fail(ctx, KR_ERR_IO, "%s: mmap: %s", path, strerror(errno));
    st_file *f = &w->files[w->n_files++];
    snprintf(f->path, sizeof f->path, "%s", path);
    f->map = map;
    f->size = size;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (uint8_t)map[i];
    if (hl > KR_ST_MAX_HEADER || hl > size - 8)
        return kr_fail(ctx, KR_ERR_FORMAT,
                       "%s: header length %llu runs past the end of the file (%zu bytes)", file,
                       (unsigned long long)hl, size);
    f->data_start = 8 + (size_t)hl;
    cJSON *root = cJSON_ParseWithLength(map + 8, (size_t)hl);
    if (!root || !cJSON_IsObject(root)) {
        if (root) {
            cJSON_Delete(root);
            return kr_fail(ctx, KR_ERR_FORMAT, "%s: the header is JSON but not a JSON object",
                           file);
        }
        const char *at = cJSON_GetErrorPtr();
        const long off = at && at >= map + 8 && at <= map + 8 + hl ? (long)(at - (map + 8)) : -1;
        return kr_fail(ctx, KR_ERR_FORMAT,
                       "%s: the header is not a JSON object (parse error near byte %ld)", file,
                       off);
    }
    const int64_t first = w->n;
    kr_status s = KR_OK;
    for (const cJSON *e = root->child; e && !s; e = e->next)
        if (strcmp(e->string, "__metadata__") != 0)
            s = add_tensor(ctx, w, w->n_files - 1, e, size - f->data_start);
    cJSON_Delete(root);
    if (s) return s;
    /* No two tensors of this file may share bytes. */
    const int64_t n = w->n - first;
    st_tensor **by = malloc(sizeof(st_tensor *) * (size_t)(n > 0 ? n : 1));
    if (!by) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "%s: out of memory", file);
    for (int64_t i = 0; i < n; i++) by[i] = &w->t[first + i];
    qsort(by, (size_t)n, sizeof(st_tensor *), cmp_begin);
    for (int64_t i = 1; i < n && !s; i++)
        if (by[i]->begin < by[i - 1]->end && by[i]->end > by[i]->begin)
            s = kr_fail(ctx, KR_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", file,
                        by[i - 1]->name, by[i]->name);
    free(by);
    return s;
}

void kr_weights_free(kr_weights *w) {
    if (!w) return;
    for (int32_t i = 0; i < w->n_files; i++) munmap((void *)w->files[i].map, w->files[i].size);
    for (int64_t i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    free(w);
}

/* model.safetensors.index.json: opens each shard its weight_map names once
 * and checks that every mapped tensor is in its shard. */
static kr_status open_index(kr_context *ctx, kr_weights *w, const char *dir, const char *index) {
    static const char file[] = "model.safetensors.index.json";
    FILE *fp = fopen(index, "rb");
    if (!fp) return kr_fail(ctx, KR_ERR_IO, "%s: cannot open: %s", index, strerror(errno));
    fseek(fp, 0, SEEK_END);
    const long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *text = len > 0 ? malloc((size_t)len + 1) : NULL;
    const size_t got = text ? fread(text, 1, (size_t)len, fp) : 0;
    fclose(fp);
    if (!text || got != (size_t)len) {
        free(text);
        return kr_fail(ctx, KR_ERR_IO, "%s: cannot read", index);
    }
    text[len] = '\0';
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!map || !cJSON_IsObject(map)) {
        cJSON_Delete(root);
        return kr_fail(ctx, KR_ERR_FORMAT, "%s: needs a \"weight_map\" object of name -> shard",
                       file);
    }
    kr_status s = KR_OK;
    for (const cJSON *e = map->child; e && !s; e = e->next) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
            s = kr_fail(ctx, KR_ERR_FORMAT, "%s: weight_map['%s'] must be a file name in %s", file,
                        e->string, dir);
            break;
        }
        int32_t fi = -1;
        for (int32_t i = 0; i < w->n_files; i++)
            if (!strcmp(base_name(w->files[i].path), e->valuestring)) fi = i;
        if (fi < 0) {
            char path[1024];
            snprintf(path, sizeof path, "%s/%s", dir, e->valuestring);
            s = open_file(ctx, w, path);
        }
    }
    if (!s && w->n) {
        qsort(w->t, (size_t)w->n, sizeof *w->t, cmp_name);
        for (const cJSON *e = map->child; e && !s; e = e->next) {
            st_tensor key = {.name = e->string};
            const st_tensor *t = bsearch(&key, w->t, (size_t)w->n, sizeof *w->t, cmp_name);
            if (!t || strcmp(base_name(w->files[t->file].path), e->valuestring) != 0)
                s = kr_fail(ctx, KR_ERR_FORMAT, "%s: tensor '%s' is mapped to %s but is not in it",
                            file, e->string, e->valuestring);
        }
    }
    cJSON_Delete(root);
    return s;
}

kr_status kr_weights_open(kr_context *ctx, const char *dir, kr_weights **out) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!out) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_weights_open: out is NULL");
    *out = NULL;
    if (!dir) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_weights_open: dir is NULL");
    kr_weights *w = calloc(1, sizeof *w);
    if (!w) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "kr_weights_open: out of memory");
    char index[1024], single[1024];
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    kr_status s;
    if (access(index, F_OK) == 0)
        s = open_index(ctx, w, dir, index);
    else if (access(single, F_OK) == 0)
        s = open_file(ctx, w, single);
    else
        s = kr_fail(ctx, KR_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json",
                    dir);
    if (!s && w->n) {
        qsort(w->t, (size_t)w->n, sizeof *w->t, cmp_name);
        for (int64_t i = 1; i < w->n && !s; i++)
            if (!strcmp(w->t[i].name, w->t[i - 1].name))
                s = kr_fail(ctx, KR_ERR_FORMAT, "%s: tensor '%s' appears twice",
                            base_name(w->files[w->t[i].file].path), w->t[i].name);
    }
    if (s) {
        kr_weights_free(w);
        return s;
    }
    *out = w;
    return KR_OK;
}

int64_t kr_weights_count(const kr_weights *w) { return w ? w->n : 0; }

const char *kr_weights_name(const kr_weights *w, int64_t i) {
    return w && i >= 0 && i < w->n ? w->t[i].name : NULL;
}

kr_status kr_weights_get(kr_context *ctx, const kr_weights *w, const char *name,
                         const int64_t *expect, int32_t n_expect, kr_tensor *out) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!w || !name || !out || n_expect < 0 || n_expect > 4 || (n_expect && !expect))
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_weights_get: bad arguments");
    st_tensor key = {.name = (char *)name};
    const st_tensor *t = w->n ? bsearch(&key, w->t, (size_t)w->n, sizeof *w->t, cmp_name) : NULL;
    if (!t) return kr_fail(ctx, KR_ERR_FORMAT, "weights: tensor '%s' is missing", name);
    const char *file = base_name(w->files[t->file].path);
    bool same = n_expect == 0 || n_expect == t->ndim;
    for (int32_t i = 0; same && i < n_expect; i++) same = expect[i] == t->shape[i];
    if (!same) {
        char want[96] = "", have[96] = "";
        for (int32_t i = 0; i < n_expect; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "",
                     (long long)expect[i]);
        for (int32_t i = 0; i < t->ndim; i++)
            snprintf(have + strlen(have), sizeof have - strlen(have), "%s%lld", i ? ", " : "",
                     (long long)t->shape[i]);
        return kr_fail(ctx, KR_ERR_SHAPE, "%s: tensor '%s' has shape [%s], expected [%s]", file,
                       name, have, want);
    }
    int64_t shape[4] = {1, 1, 1, 1};
    for (int32_t i = 0; i < t->ndim; i++) shape[4 - t->ndim + i] = t->shape[i];
    const st_file *f = &w->files[t->file];
    *out = kr_tensor_contiguous((void *)(f->map + f->data_start + t->begin), t->dt, shape[0],
                                shape[1], shape[2], shape[3]);
    return KR_OK;
}
