/*
 * tokenizer.c — tokenizer.json BPE, the two families Llama-style models use:
 *
 *   byte-level      text -> pieces (GPT-2 regex, or the Split regex of
 *                   Llama-3 / Qwen2, run with PCRE2 in UTF + UCP mode) ->
 *                   each byte mapped to a printable code point (GPT-2's
 *                   bytes_to_unicode, `Ġ` for space) -> BPE by merge rank
 *                   (with ignore_merges, a piece already in the vocabulary is
 *                   one token);
 *   SentencePiece   spaces become `▁` (and one is prepended) -> BPE over the
 *                   characters -> symbols missing from the vocabulary fall
 *                   back to <0xNN> byte tokens.
 *
 * Added tokens (special or not) are matched in the text first, longest
 * first, and never split. Decoding reverses the byte mapping (or `▁` and
 * <0xNN>); the streaming decoder holds back incomplete UTF-8.
 */
#include "../core/internal.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#define GPT2_PATTERN                                                                               \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define SP_SPACE "\xe2\x96\x81" /* U+2581 ▁ */

typedef struct added_tok {
    char *text;
    size_t len;
    int32_t id;
} added_tok;

struct kr_tokenizer {
    int64_t n_vocab;
    char **piece;              /* [n_vocab] token strings (vocab and added) */
    struct hsearch_data vocab; /* piece -> id + 1 */
    struct hsearch_data ranks; /* "a\x01b" -> rank + 1 */
    char **rank_keys;
    int64_t n_ranks;
    added_tok *added;
    int32_t n_added;
    bool byte_level, byte_fallback, ignore_merges, sp_prepend;
    pcre2_code *re; /* byte-level pre-tokenizer; NULL: no split */
    int32_t bos;    /* added at the start with add_special, or -1 */
    int32_t unk;
    uint16_t byte_to_cp[256];
    int16_t cp_to_byte[324]; /* inverse of byte_to_cp (code points < 324) */
};

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to 256 + k. */
static void byte_map(kr_tokenizer *t) {
    int k = 0;
    for (int b = 0; b < 324; b++) t->cp_to_byte[b] = -1;
    for (int b = 0; b < 256; b++) {
        const bool keep = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        t->byte_to_cp[b] = (uint16_t)(keep ? b : 256 + k++);
        t->cp_to_byte[t->byte_to_cp[b]] = (int16_t)b;
    }
}

static size_t put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    o[0] = (char)(0xe0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

/* Length of the UTF-8 character at s (1 for a stray byte). */
static size_t utf8_len(const unsigned char *s, size_t left) {
    size_t n = *s < 0x80 ? 1 : (*s >> 5) == 6 ? 2 : (*s >> 4) == 14 ? 3 : (*s >> 3) == 30 ? 4 : 1;
    return n <= left ? n : 1;
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF), or 0 where the byte at s does not start one. */
static size_t utf8_valid(const unsigned char *s, size_t avail) {
    const unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t l;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        l = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        l = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        l = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else
        return 0;
    if (avail < l || s[1] < lo || s[1] > hi) return 0;
    for (size_t k = 2; k < l; k++)
        if ((s[k] & 0xc0) != 0x80) return 0;
    return l;
}

static int64_t lookup(struct hsearch_data *h, const char *key) {
    ENTRY e = {(char *)key, NULL}, *r = NULL;
    return hsearch_r(e, FIND, &r, h) && r ? (int64_t)(intptr_t)r->data - 1 : -1;
}

void kr_tokenizer_free(kr_tokenizer *t) {
    if (!t) return;
    hdestroy_r(&t->vocab);
    hdestroy_r(&t->ranks);
    for (int64_t i = 0; i < t->n_vocab; i++) free(t->piece[i]);
    free(t->piece);
    for (int64_t i = 0; i < t->n_ranks; i++) free(t->rank_keys[i]);
    free(t->rank_keys);
    for (int32_t i = 0; i < t->n_added; i++) free(t->added[i].text);
    free(t->added);
    pcre2_code_free(t->re);
    free(t);
}

static cJSON *read_json(kr_context *ctx, const char *dir, const char *name, bool required,
                        kr_status *s) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    *s = KR_OK;
    if (!f) {
        if (required) *s = kr_fail(ctx, KR_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = len >= 0 ? malloc((size_t)len + 1) : NULL;
    const size_t got = text ? fread(text, 1, (size_t)len, f) : 0;
    fclose(f);
    if (!text || got != (size_t)len) {
        free(text);
        *s = kr_fail(ctx, KR_ERR_IO, "%s: cannot read", path);
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(text, (size_t)len);
    free(text);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        *s = kr_fail(ctx, KR_ERR_FORMAT, "%s: not a JSON object", name);
        return NULL;
    }
    return j;
}

static kr_status set_piece(kr_context *ctx, kr_tokenizer *t, int64_t id, const char *s) {
    if (id < 0 || id >= t->n_vocab)
        return kr_fail(ctx, KR_ERR_FORMAT, "tokenizer.json: token id %lld outside [0, %lld)",
                       (long long)id, (long long)t->n_vocab);
    if (t->piece[id]) return KR_OK; /* an added token repeating a vocab entry */
    t->piece[id] = strdup(s);
    ENTRY e = {t->piece[id], (void *)(intptr_t)(id + 1)}, *r = NULL;
    if (!t->piece[id] || !hsearch_r(e, ENTER, &r, &t->vocab))
        return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "tokenizer.json: out of memory");
    return KR_OK;
}

/* The pre-tokenizer: ByteLevel (GPT-2 regex unless use_regex is false), a
 * Split regex before ByteLevel, or Metaspace. */
static kr_status pre_tokenizer(kr_context *ctx, kr_tokenizer *t, const cJSON *pt) {
    if (!pt || cJSON_IsNull(pt)) return KR_OK;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : "";
    const char *pattern = NULL;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
        const cJSON *e;
        cJSON_ArrayForEach(e, list) {
            kr_status s = pre_tokenizer(ctx, t, e);
            if (s) return s;
        }
        return KR_OK;
    }
    if (!strcmp(ty, "Split")) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const cJSON *rx = p ? cJSON_GetObjectItemCaseSensitive(p, "Regex") : NULL;
        if (!rx || !cJSON_IsString(rx))
            return kr_fail(ctx, KR_ERR_UNSUPPORTED,
                           "tokenizer.json: a Split pre-tokenizer without a Regex pattern");
        pattern = rx->valuestring;
    } else if (!strcmp(ty, "ByteLevel")) {
        t->byte_level = true;
        const cJSON *ur = cJSON_GetObjectItemCaseSensitive(pt, "use_regex");
        if (!cJSON_IsFalse(ur) && !t->re) pattern = GPT2_PATTERN;
    } else if (!strcmp(ty, "Metaspace")) {
        t->sp_prepend = true;
    } else if (strcmp(ty, "Digits") != 0 && strcmp(ty, "Punctuation") != 0) {
        return kr_fail(ctx, KR_ERR_UNSUPPORTED, "tokenizer.json: pre_tokenizer type '%s'", ty);
    }
    if (pattern) {
        int code;
        PCRE2_SIZE at;
        pcre2_code_free(t->re);
        t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                              &code, &at, NULL);
        if (!t->re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(code, msg, sizeof msg);
            return kr_fail(ctx, KR_ERR_FORMAT, "tokenizer.json: pre-tokenizer regex: %s at %zu",
                           (const char *)msg, (size_t)at);
        }
    }
    return KR_OK;
}

kr_status kr_tokenizer_load(kr_context *ctx, const char *dir, kr_tokenizer **out) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!dir || !out) return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_tokenizer_load: NULL");
    *out = NULL;
    kr_status s;
    cJSON *root = read_json(ctx, dir, "tokenizer.json", true, &s);
    if (!root) return s;
    cJSON *cfg = read_json(ctx, dir, "tokenizer_config.json", false, &s);
    kr_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        s = kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "kr_tokenizer_load: out of memory");
        goto done;
    }
    t->bos = t->unk = -1;
    byte_map(t);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *mtype = model ? cJSON_GetObjectItemCaseSensitive(model, "type") : NULL;
    const cJSON *vocab = model ? cJSON_GetObjectItemCaseSensitive(model, "vocab") : NULL;
    const cJSON *merges = model ? cJSON_GetObjectItemCaseSensitive(model, "merges") : NULL;
    if (!mtype || !cJSON_IsString(mtype) || strcmp(mtype->valuestring, "BPE") != 0 ||
        !cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        s = kr_fail(ctx, KR_ERR_UNSUPPORTED,
                    "tokenizer.json: model must be {\"type\": \"BPE\", \"vocab\": {...}, "
                    "\"merges\": [...]}");
        goto done;
    }
    /* the vocabulary: the largest id of vocab and added tokens */
    int64_t max_id = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0) {
            s = kr_fail(ctx, KR_ERR_FORMAT, "tokenizer.json: vocab['%s'] is not a token id",
                        e->string);
            goto done;
        }
        if ((int64_t)e->valuedouble > max_id) max_id = (int64_t)e->valuedouble;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (cJSON_IsNumber(id) && (int64_t)id->valuedouble > max_id)
            max_id = (int64_t)id->valuedouble;
    }
    t->n_vocab = max_id + 1;
    t->piece = calloc((size_t)(t->n_vocab > 0 ? t->n_vocab : 1), sizeof *t->piece);
    const size_t n_merges = (size_t)cJSON_GetArraySize(merges);
    t->rank_keys = calloc(n_merges + 1, sizeof *t->rank_keys);
    if (!t->piece || !t->rank_keys || !hcreate_r((size_t)t->n_vocab * 2 + 16, &t->vocab) ||
        !hcreate_r(n_merges * 2 + 16, &t->ranks)) {
        s = kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "tokenizer.json: out of memory");
        goto done;
    }
    cJSON_ArrayForEach(e, vocab) {
        s = set_piece(ctx, t, (int64_t)e->valuedouble, e->string);
        if (s) goto done;
    }
    /* merges: "a b" strings or ["a", "b"] pairs, in rank order */
    cJSON_ArrayForEach(e, merges) {
        const char *a = NULL, *b = NULL;
        char tmp[512];
        if (cJSON_IsString(e)) {
            snprintf(tmp, sizeof tmp, "%s", e->valuestring);
            char *sp = strchr(tmp, ' ');
            if (sp) *sp = '\0', a = tmp, b = sp + 1;
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2) {
            a = cJSON_GetStringValue(cJSON_GetArrayItem(e, 0));
            b = cJSON_GetStringValue(cJSON_GetArrayItem(e, 1));
        }
        if (!a || !b) {
            s = kr_fail(ctx, KR_ERR_FORMAT, "tokenizer.json: merge %lld is not \"a b\" or [a, b]",
                        (long long)t->n_ranks);
            goto done;
        }
        const size_t la = strlen(a), lb = strlen(b);
        char *key = malloc(la + lb + 2);
        if (!key) {
            s = kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "tokenizer.json: out of memory");
            goto done;
        }
        memcpy(key, a, la); /* NOLINT(bugprone-not-null-terminated-result): terminated below */
        key[la] = '\x01';
        memcpy(key + la + 1, b, lb + 1);
        t->rank_keys[t->n_ranks] = key;
        ENTRY en = {key, (void *)(intptr_t)(t->n_ranks + 1)}, *r = NULL;
        t->n_ranks++;
        if (!hsearch_r(en, ENTER, &r, &t->ranks)) {
            s = kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "tokenizer.json: out of memory");
            goto done;
        }
    }
    t->byte_fallback = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    t->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    /* added tokens, longest first so the longest match wins */
    t->n_added = cJSON_GetArraySize(added);
    t->added = calloc((size_t)(t->n_added > 0 ? t->n_added : 1), sizeof *t->added);
    int32_t k = 0;
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const char *content = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "content"));
        if (!cJSON_IsNumber(id) || !content || !*content) {
            s = kr_fail(ctx, KR_ERR_FORMAT, "tokenizer.json: added_tokens[%d] needs id and content",
                        (int)k);
            goto done;
        }
        s = set_piece(ctx, t, (int64_t)id->valuedouble, content);
        if (s) goto done;
        t->added[k].text = strdup(content);
        t->added[k].len = strlen(content);
        t->added[k].id = (int32_t)id->valuedouble;
        k++;
    }
    for (int32_t i = 1; i < t->n_added; i++) /* insertion sort by length, longest first */
        for (int32_t j = i; j > 0 && t->added[j].len > t->added[j - 1].len; j--) {
            const added_tok x = t->added[j];
            t->added[j] = t->added[j - 1];
            t->added[j - 1] = x;
        }
    /* SentencePiece style: a normalizer prepending ▁ and replacing spaces */
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    char *ns = norm ? cJSON_PrintUnformatted(norm) : NULL;
    if (ns && strstr(ns, SP_SPACE)) t->sp_prepend = true;
    free(ns);
    s = pre_tokenizer(ctx, t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"));
    if (s) goto done;
    const char *unk = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(model, "unk_token"));
    if (unk) t->unk = (int32_t)lookup(&t->vocab, unk);
    /* BOS: a TemplateProcessing post-processor that starts with a special
     * token is what transformers' fast tokenizers apply; without one,
     * tokenizer_config.json's add_bos_token + bos_token. */
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    const cJSON *single = pp ? cJSON_GetObjectItemCaseSensitive(pp, "single") : NULL;
    const cJSON *first = single ? cJSON_GetArrayItem(single, 0) : NULL;
    const cJSON *spt = first ? cJSON_GetObjectItemCaseSensitive(first, "SpecialToken") : NULL;
    const char *spid =
        spt ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(spt, "id")) : NULL;
    const cJSON *ab = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token") : NULL;
    const cJSON *bt = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "bos_token") : NULL;
    const char *bos = cJSON_GetStringValue(bt);
    if (!bos && cJSON_IsObject(bt))
        bos = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(bt, "content"));
    if (spid)
        t->bos = (int32_t)lookup(&t->vocab, spid);
    else if (cJSON_IsTrue(ab) && bos)
        t->bos = (int32_t)lookup(&t->vocab, bos);
done:
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    if (s) {
        kr_tokenizer_free(t);
        return s;
    }
    *out = t;
    return KR_OK;
}

int64_t kr_tokenizer_vocab_size(const kr_tokenizer *t) { return t ? t->n_vocab : 0; }

typedef struct out_ids {
    int32_t *ids;
    int64_t cap, n;
} out_ids;

static void emit(out_ids *o, int32_t id) {
    if (o->n < o->cap) o->ids[o->n] = id;
    o->n++;
}

/* BPE over one piece (already mapped: byte-level code points or ▁ text). */
static kr_status bpe(kr_context *ctx, const kr_tokenizer *t, const char *p, size_t len,
                     out_ids *o) {
    char *word = malloc(len + 1);
    if (!word) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "tokenize: out of memory");
    memcpy(word, p, len);
    word[len] = '\0';
    const int64_t whole = t->ignore_merges ? lookup((struct hsearch_data *)&t->vocab, word) : -1;
    if (whole >= 0) {
        emit(o, (int32_t)whole);
        free(word);
        return KR_OK;
    }
    /* symbols: start offset and length of each, merged in place */
    size_t *st = malloc(sizeof(size_t) * (len + 1)), *ln = malloc(sizeof(size_t) * (len + 1));
    char *key = malloc(len * 2 + 2);
    if (!st || !ln || !key) {
        free(word), free(st), free(ln), free(key);
        return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "tokenize: out of memory");
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        const size_t l = utf8_len((const unsigned char *)word + i, len - i);
        st[n] = i, ln[n] = l, n++;
        i += l;
    }
    for (;;) { /* merge the best-ranked adjacent pair */
        int64_t best = -1;
        size_t at = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            memcpy(key, word + st[i], ln[i]);
            key[ln[i]] = '\x01';
            memcpy(key + ln[i] + 1, word + st[i + 1], ln[i + 1]);
            key[ln[i] + 1 + ln[i + 1]] = '\0';
            const int64_t r = lookup((struct hsearch_data *)&t->ranks, key);
            if (r >= 0 && (best < 0 || r < best)) best = r, at = i;
        }
        if (best < 0) break;
        ln[at] += ln[at + 1];
        memmove(st + at + 1, st + at + 2, sizeof(size_t) * (n - at - 2));
        memmove(ln + at + 1, ln + at + 2, sizeof(size_t) * (n - at - 2));
        n--;
    }
    for (size_t i = 0; i < n; i++) {
        memcpy(key, word + st[i], ln[i]);
        key[ln[i]] = '\0';
        const int64_t id = lookup((struct hsearch_data *)&t->vocab, key);
        if (id >= 0) {
            emit(o, (int32_t)id);
        } else if (t->byte_fallback) {
            for (size_t b = 0; b < ln[i]; b++) {
                char bt[8];
                snprintf(bt, sizeof bt, "<0x%02X>", (unsigned char)key[b]);
                const int64_t bid = lookup((struct hsearch_data *)&t->vocab, bt);
                emit(o, (int32_t)(bid >= 0 ? bid : t->unk));
            }
        } else {
            emit(o, t->unk);
        }
    }
    free(word), free(st), free(ln), free(key);
    return KR_OK;
}

/* One stretch of ordinary text (no added tokens in it). */
static kr_status encode_text(kr_context *ctx, const kr_tokenizer *t, const char *s, size_t len,
                             bool at_start, out_ids *o) {
    if (!len) return KR_OK;
    if (!t->byte_level) { /* SentencePiece: ▁ for spaces, one prepended at the start */
        char *m = malloc(len * 3 + 4);
        if (!m) return kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "tokenize: out of memory");
        size_t n = 0;
        /* m is a byte buffer with a length, not a C string */
        if (t->sp_prepend && at_start)
            memcpy(m, SP_SPACE, 3), n = 3; /* NOLINT(bugprone-not-null-terminated-result) */
        for (size_t i = 0; i < len; i++) {
            if (s[i] != ' ') {
                m[n++] = s[i];
                continue;
            }
            memcpy(m + n, SP_SPACE, 3); /* NOLINT(bugprone-not-null-terminated-result) */
            n += 3;
        }
        kr_status st = bpe(ctx, t, m, n, o);
        free(m);
        return st;
    }
    /* byte level: regex pieces, each byte mapped to its code point */
    pcre2_match_data *md = t->re ? pcre2_match_data_create_from_pattern(t->re, NULL) : NULL;
    size_t pos = 0;
    kr_status st = KR_OK;
    while (pos < len && !st) {
        size_t b = pos, e = len;
        if (md) {
            const int rc = pcre2_match(t->re, (PCRE2_SPTR)s, len, pos, 0, md, NULL);
            if (rc < 0) { /* no further match: the rest is one piece */
                b = pos, e = len;
            } else {
                const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                if (ov[0] > pos) { /* an unmatched gap is a piece of its own */
                    b = pos, e = ov[0];
                } else {
                    b = ov[0],
                    e = ov[1] > ov[0]
                            ? ov[1]
                            : ov[0] + utf8_len((const unsigned char *)s + ov[0], len - ov[0]);
                }
            }
        }
        char *m = malloc((e - b) * 2 + 1);
        if (!m) {
            st = kr_fail(ctx, KR_ERR_OUT_OF_MEMORY, "tokenize: out of memory");
            break;
        }
        size_t n = 0;
        for (size_t i = b; i < e; i++) n += put_utf8(m + n, t->byte_to_cp[(unsigned char)s[i]]);
        st = bpe(ctx, t, m, n, o);
        free(m);
        pos = e;
    }
    pcre2_match_data_free(md);
    return st;
}

kr_status kr_tokenizer_encode(kr_context *ctx, const kr_tokenizer *t, const char *text,
                              int32_t add_special, int32_t *ids, int64_t cap, int64_t *n) {
    if (!ctx) return KR_ERR_INVALID_ARGUMENT;
    kr_clear_error(ctx);
    if (!t || !text || !n || cap < 0 || (cap && !ids))
        return kr_fail(ctx, KR_ERR_INVALID_ARGUMENT, "kr_tokenizer_encode: bad arguments");
    out_ids o = {ids, cap, 0};
    if (add_special && t->bos >= 0) emit(&o, t->bos);
    const size_t len = strlen(text);
    size_t i = 0, seg = 0;
    kr_status s = KR_OK;
    while (i < len && !s) {
        int32_t hit = -1;
        for (int32_t a = 0; a < t->n_added && hit < 0; a++)
            if (t->added[a].len <= len - i && !memcmp(text + i, t->added[a].text, t->added[a].len))
                hit = a;
        if (hit < 0) {
            i++;
            continue;
        }
        s = encode_text(ctx, t, text + seg, i - seg, seg == 0, &o);
        emit(&o, t->added[hit].id);
        i += t->added[hit].len;
        seg = i;
    }
    if (!s) s = encode_text(ctx, t, text + seg, len - seg, seg == 0, &o);
    if (s) return s;
    *n = o.n;
    if (o.n > cap)
        return kr_fail(ctx, KR_ERR_CAPACITY, "kr_tokenizer_encode: %lld tokens, room for %lld",
                       (long long)o.n, (long long)cap);
    return KR_OK;
}

int64_t kr_tokenizer_decode(const kr_tokenizer *t, kr_detok *st, int32_t id, char *out,
                            size_t cap) {
    if (!t || !st || !out || cap == 0 || id < 0 || id >= t->n_vocab || !t->piece[id]) return -1;
    const char *p = t->piece[id];
    char bytes[1024];
    size_t n = 0;
    memcpy(bytes, st->pending, (size_t)st->n_pending);
    n = (size_t)st->n_pending;
    bool special = false;
    for (int32_t a = 0; a < t->n_added; a++) special |= t->added[a].id == id;
    const size_t pl = strlen(p);
    /* <0xNN> is a byte wherever it comes from (the vocabulary or an added token), as
     * tokenizers' ByteFallback decoder has it; other added tokens are their text. */
    const bool byte_tok = t->byte_fallback && pl == 6 && !strncmp(p, "<0x", 3) && p[5] == '>' &&
                          isxdigit((unsigned char)p[3]) && isxdigit((unsigned char)p[4]);
    if (byte_tok) {
        bytes[n++] = (char)strtol(p + 3, NULL, 16);
    } else if (special) {
        if (n + pl > sizeof bytes) return -1;
        memcpy(bytes + n, p, pl), n += pl; /* NOLINT(bugprone-not-null-terminated-result) */
    } else {
        for (size_t i = 0; i < pl && n + 4 < sizeof bytes;) {
            const size_t l = utf8_len((const unsigned char *)p + i, pl - i);
            uint32_t cp = (unsigned char)p[i];
            if (l == 2) cp = ((cp & 0x1f) << 6) | ((unsigned char)p[i + 1] & 0x3f);
            if (l == 3)
                cp = ((cp & 0x0f) << 12) | (((unsigned char)p[i + 1] & 0x3f) << 6) |
                     ((unsigned char)p[i + 2] & 0x3f);
            if (t->byte_level && cp < 324 && t->cp_to_byte[cp] >= 0) {
                bytes[n++] = (char)t->cp_to_byte[cp];
            } else if (!t->byte_level && l == 3 && !memcmp(p + i, SP_SPACE, 3)) {
                if (st->started || !t->sp_prepend || n > 0) bytes[n++] = ' ';
            } else {
                memcpy(bytes + n, p + i, l), n += l;
            }
            i += l;
        }
    }
    st->started = 1;
    /* hold back an incomplete UTF-8 sequence at the end */
    size_t keep = n, back = 0;
    while (back < 4 && back < n && ((unsigned char)bytes[n - 1 - back] & 0xc0) == 0x80) back++;
    if (back < n) {
        const unsigned char lead = (unsigned char)bytes[n - 1 - back];
        const size_t need = lead < 0x80         ? 1
                            : (lead >> 5) == 6  ? 2
                            : (lead >> 4) == 14 ? 3
                            : (lead >> 3) == 30 ? 4
                                                : 1;
        if (need > back + 1) keep = n - 1 - back;
    }
    /* bytes that are not well-formed UTF-8 (a stray continuation byte, an overlong or
     * cut-short sequence) come out as U+FFFD, as tokenizers' decoders write them */
    size_t w = 0;
    for (size_t i = 0; i < keep;) {
        const size_t l = utf8_valid((const unsigned char *)bytes + i, keep - i);
        if (w + (l ? l : 3) + 1 > cap) return -1;
        if (l) {
            memcpy(out + w, bytes + i, l), w += l, i += l;
        } else {
            memcpy(out + w, "\xef\xbf\xbd", 3), w += 3, i++;
        }
    }
    out[w] = '\0';
    st->n_pending = (int32_t)(n - keep);
    memcpy(st->pending, bytes + keep, n - keep);
    return (int64_t)w;
}
