/*
 * test_model_files.c — reading model directories: config.json for the three
 * architectures (defaults, rope_scaling, eos lists, generation_config.json),
 * safetensors files and shards, and every malformed case the engine must
 * turn into a status plus a message naming the file and the problem (run
 * under ASan too, so "no crash" is checked, not assumed).
 */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];
static kr_context *ctx;

static int setup(void **state) {
    (void)state;
    if (kt_tmpdir("kr_model", tmp)) return -1;
    ctx = kt_context();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    if (kt_tmpdir_remove(tmp)) return -1;
    kr_context_free(ctx);
    return 0;
}

/* A fresh, empty model directory under tmp. */
static const char *fresh_dir(const char *name) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmp, name);
    mkdir(dir, 0755);
    return dir;
}

static void write_file(const char *dir, const char *name, const void *data, size_t n) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* A safetensors file with `header` and `data_bytes` bytes of data (value i & 0xff). */
static void write_st(const char *dir, const char *name, const char *header, size_t data_bytes,
                     int64_t claim_len) {
    const size_t hl = strlen(header);
    unsigned char *buf = malloc(8 + hl + data_bytes);
    const uint64_t L = claim_len >= 0 ? (uint64_t)claim_len : hl;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(L >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_bytes; i++) buf[8 + hl + i] = (unsigned char)i;
    write_file(dir, name, buf, 8 + hl + data_bytes);
    free(buf);
}

#define GOOD_HEADER                                                                                \
    "{\"__metadata__\":{\"format\":\"pt\"},"                                                       \
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"                           \
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]}}"

static void test_safetensors_good(void **state) {
    (void)state;
    const char *dir = fresh_dir("good");
    write_st(dir, "model.safetensors", GOOD_HEADER, 32, -1);
    kr_weights *w = NULL;
    assert_int_equal(kr_weights_open(ctx, dir, &w), KR_OK);
    assert_int_equal(kr_weights_count(w), 2);
    assert_string_equal(kr_weights_name(w, 0), "a");
    kr_tensor t;
    const int64_t want[2] = {2, 3};
    assert_int_equal(kr_weights_get(ctx, w, "a", want, 2, &t), KR_OK);
    assert_int_equal(t.dtype, KR_F32);
    assert_int_equal(t.shape[2], 2);
    assert_int_equal(t.shape[3], 3);
    assert_int_equal(((const unsigned char *)t.data)[5], 5); /* the data section's byte 5 */
    assert_int_equal(kr_weights_get(ctx, w, "b", NULL, 0, &t), KR_OK);
    assert_int_equal(((const unsigned char *)t.data)[0], 24);
    const int64_t wrong[2] = {3, 2};
    assert_int_equal(kr_weights_get(ctx, w, "a", wrong, 2, &t), KR_ERR_SHAPE);
    assert_non_null(strstr(kr_context_last_error(ctx), "shape [2, 3], expected [3, 2]"));
    assert_int_equal(kr_weights_get(ctx, w, "lm_head.weight", NULL, 0, &t), KR_ERR_FORMAT);
    assert_non_null(strstr(kr_context_last_error(ctx), "'lm_head.weight' is missing"));
    kr_weights_free(w);
    kr_weights_free(NULL);
}

typedef struct bad_case {
    const char *name;
    const char *header;
    size_t data;
    int64_t claim;      /* header length written; -1 = the real one */
    size_t truncate_to; /* 0 = whole file */
    kr_status want;
    const char *msg;
} bad_case;

static void test_safetensors_bad(void **state) {
    (void)state;
    static const bad_case cases[] = {
        {"tiny", "", 0, 0, 5, KR_ERR_FORMAT, "8-byte header length"},
        {"hl_past_end", GOOD_HEADER, 32, 1 << 20, 0, KR_ERR_FORMAT, "runs past the end"},
        {"bad_json", "{\"a\":{\"dtype\":\"F32\",", 0, -1, 0, KR_ERR_FORMAT, "not a JSON object"},
        {"not_object", "[1,2,3]", 0, -1, 0, KR_ERR_FORMAT, "not a JSON object"},
        {"no_dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, 0, KR_ERR_FORMAT,
         "needs \"dtype\""},
        {"dtype_i64", "{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, -1, 0,
         KR_ERR_UNSUPPORTED, "dtype I64 is not supported"},
        {"neg_shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, -1, 0,
         KR_ERR_FORMAT, "shape[0] is not a non-negative integer"},
        {"five_dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         -1, 0, KR_ERR_FORMAT, "5 dimensions"},
        {"offset_past_end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
         -1, 0, KR_ERR_FORMAT, "end past the data"},
        {"size_mismatch", "{\"a\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16,
         -1, 0, KR_ERR_FORMAT, "needs 8"},
        {"reversed", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, -1, 0,
         KR_ERR_FORMAT, "begin <= end"},
        {"overlap",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, -1, 0, KR_ERR_FORMAT, "overlap"},
        {"duplicate",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, -1, 0, KR_ERR_FORMAT, "appears twice"},
        {"truncated", GOOD_HEADER, 32, -1, 8 + 60, KR_ERR_FORMAT, "header length"},
        {"truncated_data", GOOD_HEADER, 32, -1, 0, KR_ERR_FORMAT, "end past the data"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        const char *dir = fresh_dir(c->name);
        const size_t data = !strcmp(c->name, "truncated_data") ? 20 : c->data;
        write_st(dir, "model.safetensors", c->header, data, c->claim);
        if (c->truncate_to) {
            char path[700];
            snprintf(path, sizeof path, "%s/model.safetensors", dir);
            assert_int_equal(truncate(path, (off_t)c->truncate_to), 0);
        }
        kr_weights *w = (kr_weights *)1;
        const kr_status s = kr_weights_open(ctx, dir, &w);
        printf("# %-16s -> %s: %s\n", c->name, kr_status_name(s), kr_context_last_error(ctx));
        if (s != c->want || !strstr(kr_context_last_error(ctx), c->msg) ||
            !strstr(kr_context_last_error(ctx), "model.safetensors"))
            fail_msg("case %s: got %s '%s', want %s with '%s'", c->name, kr_status_name(s),
                     kr_context_last_error(ctx), kr_status_name(c->want), c->msg);
        assert_null(w);
    }
    const char *empty = fresh_dir("empty");
    kr_weights *w = NULL;
    assert_int_equal(kr_weights_open(ctx, empty, &w), KR_ERR_IO);
    assert_non_null(strstr(kr_context_last_error(ctx), "no model.safetensors"));
}

static void test_shards(void **state) {
    (void)state;
    const char *dir = fresh_dir("sharded");
    write_st(dir, "model-00001-of-00002.safetensors",
             "{\"x\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, -1);
    write_st(dir, "model-00002-of-00002.safetensors",
             "{\"y\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]}}", 8, -1);
    kt_write_text(dir, "model.safetensors.index.json",
                  "{\"metadata\":{},\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
                  "\"y\":\"model-00002-of-00002.safetensors\"}}");
    kr_weights *w = NULL;
    assert_int_equal(kr_weights_open(ctx, dir, &w), KR_OK);
    assert_int_equal(kr_weights_count(w), 2);
    kr_tensor t;
    assert_int_equal(kr_weights_get(ctx, w, "y", NULL, 0, &t), KR_OK);
    assert_int_equal(t.dtype, KR_F32);
    kr_weights_free(w);
    /* the index names a tensor its shard lacks; a shard that is missing */
    kt_write_text(dir, "model.safetensors.index.json",
                  "{\"weight_map\":{\"x\":\"model-00002-of-00002.safetensors\"}}");
    assert_int_equal(kr_weights_open(ctx, dir, &w), KR_ERR_FORMAT);
    assert_non_null(strstr(kr_context_last_error(ctx), "'x' is mapped to"));
    kt_write_text(dir, "model.safetensors.index.json",
                  "{\"weight_map\":{\"x\":\"model-00003-of-00002.safetensors\"}}");
    assert_int_equal(kr_weights_open(ctx, dir, &w), KR_ERR_IO);
    assert_non_null(strstr(kr_context_last_error(ctx), "model-00003-of-00002.safetensors"));
    kt_write_text(dir, "model.safetensors.index.json", "{\"weight_map\":[]}");
    assert_int_equal(kr_weights_open(ctx, dir, &w), KR_ERR_FORMAT);
    assert_non_null(strstr(kr_context_last_error(ctx), "weight_map"));
}

static const char *LLAMA3 =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":64,"
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
    "\"intermediate_size\":128,\"vocab_size\":300,\"max_position_embeddings\":131072,"
    "\"rms_norm_eps\":1e-5,\"rope_theta\":500000.0,\"rope_scaling\":{\"rope_type\":\"llama3\","
    "\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
    "\"original_max_position_embeddings\":8192},\"tie_word_embeddings\":true,"
    "\"bos_token_id\":1,\"eos_token_id\":[2,3],\"torch_dtype\":\"bfloat16\"}";

static void test_config(void **state) {
    (void)state;
    const char *dir = fresh_dir("llama3");
    kt_write_text(dir, "config.json", LLAMA3);
    kr_model_config c;
    assert_int_equal(kr_model_config_load(ctx, dir, &c), KR_OK);
    assert_int_equal(c.arch, KR_ARCH_LLAMA);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.rope.scaling, KR_ROPE_SCALING_LLAMA3);
    assert_int_equal(c.rope.original_max_position_embeddings, 8192);
    assert_true(c.rope.theta == 500000.0 && c.rope.factor == 8.0);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(c.qkv_bias, 0);
    assert_int_equal(c.n_eos, 2);
    assert_int_equal(c.eos_token_ids[1], 3);
    assert_int_equal(c.torch_dtype, KR_BF16);
    /* generation_config.json overrides bos/eos */
    kt_write_text(dir, "generation_config.json", "{\"bos_token_id\":7,\"eos_token_id\":9}");
    assert_int_equal(kr_model_config_load(ctx, dir, &c), KR_OK);
    assert_int_equal(c.bos_token_id, 7);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos_token_ids[0], 9);
    /* Qwen2: biases; a window only with use_sliding_window; yarn factor derived */
    const char *q = fresh_dir("qwen2");
    kt_write_text(q, "config.json",
                  "{\"model_type\":\"qwen2\",\"hidden_size\":32,\"num_hidden_layers\":1,"
                  "\"num_attention_heads\":2,\"intermediate_size\":64,\"vocab_size\":100,"
                  "\"max_position_embeddings\":32768,\"sliding_window\":4096,"
                  "\"use_sliding_window\":false,\"rope_scaling\":{\"type\":\"yarn\","
                  "\"original_max_position_embeddings\":4096}}");
    assert_int_equal(kr_model_config_load(ctx, q, &c), KR_OK);
    assert_int_equal(c.arch, KR_ARCH_QWEN2);
    assert_int_equal(c.qkv_bias, 1);
    assert_int_equal(c.sliding_window, -1);
    assert_int_equal(c.n_kv_heads, 2);
    assert_true(c.rope.scaling == KR_ROPE_SCALING_YARN && c.rope.factor == 8.0);
    /* Mistral's window */
    const char *m = fresh_dir("mistral");
    kt_write_text(m, "config.json",
                  "{\"model_type\":\"mistral\",\"hidden_size\":32,\"num_hidden_layers\":1,"
                  "\"num_attention_heads\":4,\"num_key_value_heads\":1,\"intermediate_size\":64,"
                  "\"vocab_size\":100,\"sliding_window\":4096,\"rope_scaling\":null}");
    assert_int_equal(kr_model_config_load(ctx, m, &c), KR_OK);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.rope.scaling, KR_ROPE_SCALING_NONE);
}

static void test_config_bad(void **state) {
    (void)state;
    static const struct {
        const char *name, *json;
        kr_status want;
        const char *msg;
    } cases[] = {
        {"gpt2", "{\"model_type\":\"gpt2\"}", KR_ERR_UNSUPPORTED, "model_type 'gpt2'"},
        {"no_type", "{\"hidden_size\":4}", KR_ERR_UNSUPPORTED, "model_type ''"},
        {"json", "{\"model_type\":\"llama\",", KR_ERR_FORMAT, "not a JSON object"},
        {"missing", "{\"model_type\":\"llama\",\"hidden_size\":64}", KR_ERR_FORMAT,
         "\"num_hidden_layers\" is missing"},
        {"type", "{\"model_type\":\"llama\",\"hidden_size\":\"64\",\"num_hidden_layers\":1}",
         KR_ERR_FORMAT, "\"hidden_size\" must be an integer"},
        {"gqa",
         "{\"model_type\":\"llama\",\"hidden_size\":48,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":3,\"num_key_value_heads\":2,\"intermediate_size\":8,"
         "\"vocab_size\":10}",
         KR_ERR_FORMAT, "multiple of num_key_value_heads"},
        {"rope",
         "{\"model_type\":\"llama\",\"hidden_size\":48,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":3,\"intermediate_size\":8,\"vocab_size\":10,"
         "\"rope_scaling\":{\"rope_type\":\"longrope\",\"factor\":2}}",
         KR_ERR_UNSUPPORTED, "rope_type 'longrope'"},
        {"eos",
         "{\"model_type\":\"llama\",\"hidden_size\":48,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":3,\"intermediate_size\":8,\"vocab_size\":10,"
         "\"eos_token_id\":\"</s>\"}",
         KR_ERR_FORMAT, "eos_token_id"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *dir = fresh_dir(cases[i].name);
        kt_write_text(dir, "config.json", cases[i].json);
        kr_model_config c;
        const kr_status s = kr_model_config_load(ctx, dir, &c);
        printf("# config %-8s -> %s: %s\n", cases[i].name, kr_status_name(s),
               kr_context_last_error(ctx));
        if (s != cases[i].want || !strstr(kr_context_last_error(ctx), cases[i].msg) ||
            !strstr(kr_context_last_error(ctx), "config.json"))
            fail_msg("config case %s: got %s '%s'", cases[i].name, kr_status_name(s),
                     kr_context_last_error(ctx));
    }
    kr_model_config c;
    assert_int_equal(kr_model_config_load(ctx, fresh_dir("none"), &c), KR_ERR_IO);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors_good), cmocka_unit_test(test_safetensors_bad),
        cmocka_unit_test(test_shards),           cmocka_unit_test(test_config),
        cmocka_unit_test(test_config_bad),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
