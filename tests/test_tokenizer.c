/*
 * test_tokenizer.c — tokenizer.json BPE on small hand-made tokenizers whose
 * expected ids follow from their merges by hand: byte-level (GPT-2 regex,
 * Ġ for space, merge ranks, ignore_merges, added tokens, UTF-8 held back
 * while streaming) and SentencePiece-style (▁, byte fallback, add_bos).
 * The check against transformers' tokenisations needs the fixture
 * files from the GPU machine, not made yet.
 */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char tmp[256];
static kr_context *ctx;

static int setup(void **state) {
    (void)state;
    if (kt_tmpdir("kr_tok", tmp)) return -1;
    ctx = kt_context();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    if (kt_tmpdir_remove(tmp)) return -1;
    kr_context_free(ctx);
    return 0;
}

/* GPT-2's byte -> code point map, to write the byte-level vocabulary. */
static int byte_cp(int b) {
    int k = 0;
    for (int x = 0; x < 256; x++) {
        const int keep = (x >= '!' && x <= '~') || (x >= 0xa1 && x <= 0xac) || x >= 0xae;
        if (x == b) return keep ? x : 256 + k;
        if (!keep) k++;
    }
    return -1;
}

static void json_cp(char **p, int cp) { /* a code point as a JSON string's content */
    if (cp == '"' || cp == '\\')
        *p += sprintf(*p, "\\%c", cp);
    else if (cp < 0x80)
        *p += sprintf(*p, "%c", cp);
    else
        *p += sprintf(*p, "\\u%04x", cp);
}

static const char *byte_level_dir(bool ignore_merges) {
    static char dir[400];
    snprintf(dir, sizeof dir, "%s/bl%d", tmp, ignore_merges);
    mkdir(dir, 0755);
    char *buf = malloc(1 << 16), *p = buf;
    p += sprintf(p,
                 "{\"added_tokens\":[{\"id\":300,\"content\":\"<|end|>\",\"special\":true}],"
                 "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\","
                 "\"add_prefix_space\":false,\"use_regex\":true},"
                 "\"post_processor\":null,\"model\":{\"type\":\"BPE\",\"ignore_merges\":%s,"
                 "\"vocab\":{",
                 ignore_merges ? "true" : "false");
    for (int b = 0; b < 256; b++) {
        p += sprintf(p, "%s\"", b ? "," : "");
        json_cp(&p, byte_cp(b));
        p += sprintf(p, "\":%d", b);
    }
    /* 256 Ġt, 257 he, 258 Ġthe, 259 Ġthere (reachable only whole) */
    p += sprintf(p, ",\"\\u0120t\":256,\"he\":257,\"\\u0120the\":258,\"\\u0120there\":259},"
                    "\"merges\":[\"\\u0120 t\",\"h e\",\"\\u0120t he\"]}}");
    kt_write_text(dir, "tokenizer.json", buf);
    free(buf);
    return dir;
}

static int64_t enc(const kr_tokenizer *t, const char *s, int32_t add, int32_t *ids) {
    int64_t n = 0;
    if (kr_tokenizer_encode(ctx, t, s, add, ids, 64, &n) != KR_OK)
        fail_msg("encode '%s': %s", s, kr_context_last_error(ctx));
    return n;
}

static void dec_all(const kr_tokenizer *t, const int32_t *ids, int64_t n, char *out, size_t cap) {
    kr_detok st = {0};
    size_t len = 0;
    out[0] = '\0';
    for (int64_t i = 0; i < n; i++) {
        const int64_t w = kr_tokenizer_decode(t, &st, ids[i], out + len, cap - len);
        assert_true(w >= 0);
        len += (size_t)w;
    }
}

static void test_byte_level(void **state) {
    (void)state;
    kr_tokenizer *t = NULL;
    assert_int_equal(kr_tokenizer_load(ctx, byte_level_dir(false), &t), KR_OK);
    int32_t ids[64];
    /* "the" -> t + he ; " the" -> Ġt (rank 0), he (rank 1), Ġthe (rank 2) */
    int64_t n = enc(t, "the the", 0, ids);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 't');
    assert_int_equal(ids[1], 257);
    assert_int_equal(ids[2], 258);
    char out[256];
    dec_all(t, ids, n, out, sizeof out);
    assert_string_equal(out, "the the");
    /* an added token is matched whole; digits split from letters by the regex */
    n = enc(t, "ab12<|end|> x", 0, ids);
    const int32_t want[] = {'a', 'b', '1', '2', 300, ' ', 'x'}; /* byte b has id b here */
    assert_int_equal(n, 7);
    for (int i = 0; i < 7; i++) assert_int_equal(ids[i], want[i]);
    dec_all(t, ids, n, out, sizeof out);
    assert_string_equal(out, "ab12<|end|> x");
    /* é is two bytes: the first token's byte is held back until the second */
    n = enc(t, "\xc3\xa9", 0, ids);
    assert_int_equal(n, 2);
    kr_detok st = {0};
    assert_int_equal(kr_tokenizer_decode(t, &st, ids[0], out, sizeof out), 0);
    assert_int_equal(kr_tokenizer_decode(t, &st, ids[1], out, sizeof out), 2);
    assert_string_equal(out, "\xc3\xa9");
    /* bytes that cannot be UTF-8 come out as U+FFFD each: a lead byte followed by a
     * non-continuation, a stray continuation, an overlong 0xc1 lead */
    const int32_t bad[] = {0xc3, 'a', 0x80, 0xc1, 0xbf, 'b'};
    dec_all(t, bad, 6, out, sizeof out);
    assert_string_equal(out, "\xef\xbf\xbd"
                             "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                             "b");
    /* " there": no merge reaches Ġthere ... */
    n = enc(t, " there", 0, ids);
    assert_int_equal(n, 3); /* Ġthe r e */
    kr_tokenizer_free(t);
    /* ... but with ignore_merges a piece already in the vocabulary is one token */
    assert_int_equal(kr_tokenizer_load(ctx, byte_level_dir(true), &t), KR_OK);
    n = enc(t, " there", 0, ids);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 259);
    assert_int_equal(kr_tokenizer_encode(ctx, t, "abcdef", 0, ids, 3, &n), KR_ERR_CAPACITY);
    assert_int_equal(n, 6);
    kr_tokenizer_free(t);
}

static void test_sentencepiece(void **state) {
    (void)state;
    char dir[400];
    snprintf(dir, sizeof dir, "%s/sp", tmp);
    mkdir(dir, 0755);
    char *buf = malloc(1 << 16), *p = buf;
    p += sprintf(p, "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
                    "{\"id\":1,\"content\":\"<s>\",\"special\":true}],"
                    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\","
                    "\"prepend\":\"\\u2581\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},"
                    "\"content\":\"\\u2581\"}]},\"pre_tokenizer\":null,"
                    "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"unk_token\":\"<unk>\","
                    "\"vocab\":{\"<unk>\":0,\"<s>\":1");
    for (int b = 0; b < 256; b++) p += sprintf(p, ",\"<0x%02X>\":%d", b, 2 + b);
    p += sprintf(p, ",\"\\u2581\":258,\"h\":259,\"e\":260,\"l\":261,\"o\":262,\"\\u2581h\":263,"
                    "\"\\u2581he\":264,\"ll\":265,\"llo\":266},"
                    "\"merges\":[[\"\\u2581\",\"h\"],[\"\\u2581h\",\"e\"],[\"l\",\"l\"],"
                    "[\"ll\",\"o\"]]}}");
    kt_write_text(dir, "tokenizer.json", buf);
    free(buf);
    kt_write_text(dir, "tokenizer_config.json", "{\"add_bos_token\":true,\"bos_token\":\"<s>\"}");
    kr_tokenizer *t = NULL;
    assert_int_equal(kr_tokenizer_load(ctx, dir, &t), KR_OK);
    int32_t ids[64];
    int64_t n = enc(t, "hello", 1, ids);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 264);
    assert_int_equal(ids[2], 266);
    char out[256];
    dec_all(t, ids + 1, n - 1, out, sizeof out);
    assert_string_equal(out, "hello"); /* the prepended ▁ is not printed */
    /* é is not in the vocabulary: its two bytes fall back to <0xC3> <0xA9> */
    n = enc(t, "h\xc3\xa9 lo", 0, ids);
    const int32_t want[] = {263, 2 + 0xc3, 2 + 0xa9, 258, 261, 262};
    assert_int_equal(n, 6);
    for (int i = 0; i < 6; i++) assert_int_equal(ids[i], want[i]);
    dec_all(t, ids, n, out, sizeof out);
    assert_string_equal(out, "h\xc3\xa9 lo");
    assert_int_equal(kr_tokenizer_vocab_size(t), 267);
    kr_tokenizer_free(t);
}

static void test_bad_tokenizers(void **state) {
    (void)state;
    static const struct {
        const char *name, *json;
        kr_status want;
        const char *msg;
    } cases[] = {
        {"json", "{\"model\":", KR_ERR_FORMAT, "not a JSON object"},
        {"unigram", "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", KR_ERR_UNSUPPORTED, "BPE"},
        {"merge", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[7]}}",
         KR_ERR_FORMAT, "merge 0"},
        {"regex",
         "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"}},"
         "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
         KR_ERR_FORMAT, "regex"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[400];
        snprintf(dir, sizeof dir, "%s/bad_%s", tmp, cases[i].name);
        mkdir(dir, 0755);
        kt_write_text(dir, "tokenizer.json", cases[i].json);
        kr_tokenizer *t = NULL;
        const kr_status s = kr_tokenizer_load(ctx, dir, &t);
        printf("# tokenizer %-8s -> %s: %s\n", cases[i].name, kr_status_name(s),
               kr_context_last_error(ctx));
        if (s != cases[i].want || !strstr(kr_context_last_error(ctx), cases[i].msg) ||
            !strstr(kr_context_last_error(ctx), "tokenizer.json"))
            fail_msg("case %s", cases[i].name);
        assert_null(t);
    }
    kr_tokenizer *t = NULL;
    char dir[400];
    snprintf(dir, sizeof dir, "%s/none", tmp);
    mkdir(dir, 0755);
    assert_int_equal(kr_tokenizer_load(ctx, dir, &t), KR_ERR_IO);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_level),
        cmocka_unit_test(test_sentencepiece),
        cmocka_unit_test(test_bad_tokenizers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
