/*
 * config.c — reads krserve.yaml with libyaml's document API, validating
 * every key and value (errors name the file, the line and the key), then
 * applies KRSERVE_* environment variables and the API options on top.
 *
 * The file's shape:
 *   acceleration:
 *     enabled: true
 *     fallback_to_reference: true
 *     prefer_reference: false
 *     fallback_log_level: warn          # debug | info | warn | error | off
 *     plugin_path: /opt/krserve/lib     # a file or a directory
 *     features: {flash_attention: true, fused_rope: true, kv_quantization: true}
 *     backends: {order: [cuda, cpu, ref], deny: [cpu]}
 *     models:
 *       llama-3-8b: {flash_attention: false}
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

static const char *const known_backends[] = {"cuda", "cpu", "ref", "test"};

static bool parse_bool(const char *s, int32_t *out) {
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i])) {
            *out = 1;
            return true;
        }
        if (!strcasecmp(s, no[i])) {
            *out = 0;
            return true;
        }
    }
    return false;
}

static bool parse_level(const char *s, kr_log_level *out) {
    static const char *const names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i < 5; i++)
        if (!strcasecmp(s, names[i])) {
            *out = (kr_log_level)i;
            return true;
        }
    if (!strcasecmp(s, "warning")) {
        *out = KR_LOG_WARN;
        return true;
    }
    return false;
}

static int feature_index(const char *s) {
    for (int f = 0; f < KR_FEATURE_COUNT_; f++)
        if (!strcmp(s, kr_feature_name((kr_feature)f))) return f;
    return -1;
}

static bool known_backend(const char *s) {
    for (size_t i = 0; i < sizeof known_backends / sizeof known_backends[0]; i++)
        if (!strcmp(s, known_backends[i])) return true;
    return false;
}

kr_model_switch *kr_config_model(kr_config *cfg, const char *model, bool create) {
    for (int i = 0; i < cfg->n_models; i++)
        if (!strcmp(cfg->models[i].model, model)) return &cfg->models[i];
    if (!create || cfg->n_models == KR_MAX_MODELS) return NULL;
    kr_model_switch *m = &cfg->models[cfg->n_models++];
    snprintf(m->model, sizeof m->model, "%s", model);
    for (int f = 0; f < KR_FEATURE_COUNT_; f++) m->features[f] = KR_UNSET;
    return m;
}

/* Checks an order / deny list: known names, no duplicates, ref last and
 * never denied. `what` names the source for the message. */
static kr_status check_names(char names[][32], int n, bool is_deny, const char *what, char *err,
                             size_t err_len) {
    for (int i = 0; i < n; i++) {
        if (!known_backend(names[i])) {
            snprintf(err, err_len, "%s: unknown backend '%s' (known: cuda, cpu, ref, test)", what,
                     names[i]);
            return KR_ERR_CONFIG;
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(names[i], names[j])) {
                snprintf(err, err_len, "%s: backend '%s' listed twice", what, names[i]);
                return KR_ERR_CONFIG;
            }
        if (!strcmp(names[i], "ref") && (is_deny || i != n - 1)) {
            snprintf(err, err_len,
                     "%s: 'ref' is the fallback: it cannot be denied and must be last", what);
            return KR_ERR_CONFIG;
        }
    }
    return KR_OK;
}

/* Splits "a, b,c" into names. */
static kr_status split_names(const char *list, char names[][32], int *n, const char *what,
                             char *err, size_t err_len) {
    *n = 0;
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        size_t len = strcspn(p, ", ");
        if (*n == KR_MAX_NAMES || len >= 32) {
            snprintf(err, err_len, "%s: too many or too long backend names in '%s'", what, list);
            return KR_ERR_CONFIG;
        }
        memcpy(names[*n], p, len);
        names[*n][len] = '\0';
        (*n)++;
        p += len;
    }
    return KR_OK;
}

/* ---- YAML --------------------------------------------------------------- */

typedef struct yctx {
    yaml_document_t *doc;
    const char *file;
    char *err;
    size_t err_len;
} yctx;

static kr_status yfail(const yctx *y, const yaml_node_t *n, const char *key, const char *msg) {
    snprintf(y->err, y->err_len, "%s:%zu: %s: %s", y->file, n->start_mark.line + 1, key, msg);
    return KR_ERR_CONFIG;
}

static kr_status ybool(const yctx *y, const yaml_node_t *n, const char *key, int32_t *out) {
    if (n->type != YAML_SCALAR_NODE || !parse_bool((const char *)n->data.scalar.value, out))
        return yfail(y, n, key, "expected true or false");
    return KR_OK;
}

static kr_status yfeatures(const yctx *y, const yaml_node_t *map, const char *key, int32_t *feat) {
    if (map->type != YAML_MAPPING_NODE)
        return yfail(y, map, key,
                     "expected a mapping of flash_attention, fused_rope, kv_quantization");
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key),
                    *v = yaml_document_get_node(y->doc, p->value);
        char full[256];
        snprintf(full, sizeof full, "%s.%s", key,
                 k->type == YAML_SCALAR_NODE ? (const char *)k->data.scalar.value : "?");
        const int f =
            k->type == YAML_SCALAR_NODE ? feature_index((const char *)k->data.scalar.value) : -1;
        if (f < 0)
            return yfail(y, k, full,
                         "unknown key (expected flash_attention, fused_rope or kv_quantization)");
        kr_status s = ybool(y, v, full, &feat[f]);
        if (s) return s;
    }
    return KR_OK;
}

static kr_status ynames(const yctx *y, const yaml_node_t *seq, const char *key, char names[][32],
                        int *n) {
    if (seq->type != YAML_SEQUENCE_NODE)
        return yfail(y, seq, key, "expected a list of backend names");
    *n = 0;
    for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top;
         it++) {
        yaml_node_t *v = yaml_document_get_node(y->doc, *it);
        if (v->type != YAML_SCALAR_NODE || *n == KR_MAX_NAMES ||
            strlen((const char *)v->data.scalar.value) >= 32)
            return yfail(y, v, key, "expected at most 8 short backend names");
        snprintf(names[(*n)++], 32, "%s", (const char *)v->data.scalar.value);
    }
    return KR_OK;
}

static kr_status yacceleration(const yctx *y, const yaml_node_t *map, kr_config *c) {
    if (map->type != YAML_MAPPING_NODE) return yfail(y, map, "acceleration", "expected a mapping");
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key),
                    *v = yaml_document_get_node(y->doc, p->value);
        if (k->type != YAML_SCALAR_NODE)
            return yfail(y, k, "acceleration", "keys must be plain names");
        const char *name = (const char *)k->data.scalar.value;
        char key[256];
        snprintf(key, sizeof key, "acceleration.%s", name);
        kr_status s = KR_OK;
        if (!strcmp(name, "enabled"))
            s = ybool(y, v, key, &c->enabled);
        else if (!strcmp(name, "fallback_to_reference"))
            s = ybool(y, v, key, &c->fallback_to_reference);
        else if (!strcmp(name, "prefer_reference"))
            s = ybool(y, v, key, &c->prefer_reference);
        else if (!strcmp(name, "fallback_log_level")) {
            if (v->type != YAML_SCALAR_NODE ||
                !parse_level((const char *)v->data.scalar.value, &c->fallback_log_level))
                s = yfail(y, v, key, "expected debug, info, warn, error or off");
        } else if (!strcmp(name, "plugin_path")) {
            if (v->type != YAML_SCALAR_NODE)
                s = yfail(y, v, key, "expected a path");
            else
                snprintf(c->plugin_path, sizeof c->plugin_path, "%s",
                         (const char *)v->data.scalar.value);
        } else if (!strcmp(name, "features")) {
            s = yfeatures(y, v, key, c->features);
        } else if (!strcmp(name, "backends")) {
            if (v->type != YAML_MAPPING_NODE)
                return yfail(y, v, key, "expected a mapping with order and/or deny");
            for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
                 !s && q < v->data.mapping.pairs.top; q++) {
                yaml_node_t *bk = yaml_document_get_node(y->doc, q->key),
                            *bv = yaml_document_get_node(y->doc, q->value);
                const char *bn =
                    bk->type == YAML_SCALAR_NODE ? (const char *)bk->data.scalar.value : "?";
                char bkey[300];
                snprintf(bkey, sizeof bkey, "%s.%s", key, bn);
                const bool deny = !strcmp(bn, "deny");
                if (deny || !strcmp(bn, "order")) {
                    char why[256];
                    s = ynames(y, bv, bkey, deny ? c->deny : c->order,
                               deny ? &c->n_deny : &c->n_order);
                    if (!s && check_names(deny ? c->deny : c->order, deny ? c->n_deny : c->n_order,
                                          deny, "list", why, sizeof why))
                        s = yfail(y, bv, bkey, why);
                } else {
                    s = yfail(y, bk, bkey, "unknown key (expected order or deny)");
                }
            }
        } else if (!strcmp(name, "models")) {
            if (v->type != YAML_MAPPING_NODE)
                return yfail(y, v, key, "expected a mapping of model id to features");
            for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
                 !s && q < v->data.mapping.pairs.top; q++) {
                yaml_node_t *mk = yaml_document_get_node(y->doc, q->key),
                            *mv = yaml_document_get_node(y->doc, q->value);
                if (mk->type != YAML_SCALAR_NODE)
                    return yfail(y, mk, key, "model ids must be plain names");
                kr_model_switch *m = kr_config_model(c, (const char *)mk->data.scalar.value, true);
                if (!m) return yfail(y, mk, key, "too many models (at most 32)");
                char mkey[400];
                snprintf(mkey, sizeof mkey, "%s.%s", key, m->model);
                s = yfeatures(y, mv, mkey, m->features);
            }
        } else {
            s = yfail(y, k, key,
                      "unknown key (expected enabled, fallback_to_reference, prefer_reference, "
                      "fallback_log_level, plugin_path, features, backends or models)");
        }
        if (s) return s;
    }
    return KR_OK;
}

static kr_status load_file(const char *path, kr_config *c, char *err, size_t err_len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "%s: cannot open configuration file", path);
        return KR_ERR_IO;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    kr_status s = KR_OK;
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, err_len, "%s:%zu: YAML syntax error: %s", path, parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "unknown");
        yaml_parser_delete(&parser);
        fclose(f);
        return KR_ERR_CONFIG;
    }
    yctx y = {&doc, path, err, err_len};
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root) { /* an empty file is an empty configuration */
        if (root->type != YAML_MAPPING_NODE) {
            s = yfail(&y, root, "(top level)", "expected a mapping with an 'acceleration' key");
        } else {
            for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
                 !s && p < root->data.mapping.pairs.top; p++) {
                yaml_node_t *k = yaml_document_get_node(&doc, p->key),
                            *v = yaml_document_get_node(&doc, p->value);
                if (k->type == YAML_SCALAR_NODE &&
                    !strcmp((const char *)k->data.scalar.value, "acceleration"))
                    s = yacceleration(&y, v, c);
                else
                    s = yfail(&y, k,
                              k->type == YAML_SCALAR_NODE ? (const char *)k->data.scalar.value
                                                          : "?",
                              "unknown top-level key (expected acceleration)");
            }
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    if (!s) snprintf(c->file, sizeof c->file, "%s", path);
    return s;
}

/* ---- environment and API ------------------------------------------------ */

static kr_status env_bool(const char *var, int32_t *out, char *err, size_t err_len) {
    const char *v = getenv(var);
    if (!v || !*v) return KR_OK;
    if (!parse_bool(v, out)) {
        snprintf(err, err_len, "environment %s=%s: expected 1/0, true/false, yes/no or on/off", var,
                 v);
        return KR_ERR_CONFIG;
    }
    return KR_OK;
}

kr_status kr_config_load(const kr_context_options *o, kr_config *c, char *err, size_t err_len) {
    memset(c, 0, sizeof *c);
    c->enabled = 1;
    c->fallback_to_reference = 1;
    c->prefer_reference = 0;
    c->fallback_log_level = KR_LOG_WARN;
    for (int f = 0; f < KR_FEATURE_COUNT_; f++) c->features[f] = 1;

    /* 1. the file */
    const char *path = o->config_path;
    if (!path || !*path) path = getenv("KRSERVE_CONFIG");
    kr_status s = KR_OK;
    if (path && *path) {
        s = load_file(path, c, err, err_len);
    } else {
        FILE *f = fopen("krserve.yaml", "rb");
        if (f) {
            fclose(f);
            s = load_file("krserve.yaml", c, err, err_len);
        }
    }
    if (s) return s;

    /* 2. the environment */
    static const char *const feature_vars[KR_FEATURE_COUNT_] = {
        "KRSERVE_FLASH_ATTENTION", "KRSERVE_FUSED_ROPE", "KRSERVE_KV_QUANTIZATION"};
    if ((s = env_bool("KRSERVE_ACCELERATION", &c->enabled, err, err_len)) ||
        (s = env_bool("KRSERVE_FALLBACK_TO_REFERENCE", &c->fallback_to_reference, err, err_len)) ||
        (s = env_bool("KRSERVE_PREFER_REFERENCE", &c->prefer_reference, err, err_len)))
        return s;
    for (int f = 0; f < KR_FEATURE_COUNT_; f++)
        if ((s = env_bool(feature_vars[f], &c->features[f], err, err_len))) return s;
    const char *v = getenv("KRSERVE_FALLBACK_LOG_LEVEL");
    if (v && *v && !parse_level(v, &c->fallback_log_level)) {
        snprintf(
            err, err_len,
            "environment KRSERVE_FALLBACK_LOG_LEVEL=%s: expected debug, info, warn, error or off",
            v);
        return KR_ERR_CONFIG;
    }
    v = getenv("KRSERVE_PLUGIN_PATH");
    if (v && *v) snprintf(c->plugin_path, sizeof c->plugin_path, "%s", v);
    v = getenv("KRSERVE_BACKENDS");
    if (v && *v &&
        ((s = split_names(v, c->order, &c->n_order, "environment KRSERVE_BACKENDS", err,
                          err_len)) ||
         (s = check_names(c->order, c->n_order, false, "environment KRSERVE_BACKENDS", err,
                          err_len))))
        return s;
    v = getenv("KRSERVE_DENY_BACKENDS");
    if (v && *v &&
        ((s = split_names(v, c->deny, &c->n_deny, "environment KRSERVE_DENY_BACKENDS", err,
                          err_len)) ||
         (s = check_names(c->deny, c->n_deny, true, "environment KRSERVE_DENY_BACKENDS", err,
                          err_len))))
        return s;

    /* 3. the API */
    const int32_t *api[] = {&o->acceleration, &o->fallback_to_reference, &o->prefer_reference};
    int32_t *dst[] = {&c->enabled, &c->fallback_to_reference, &c->prefer_reference};
    static const char *const api_names[] = {"acceleration", "fallback_to_reference",
                                            "prefer_reference"};
    for (int i = 0; i < 3; i++) {
        if (*api[i] == KR_UNSET) continue;
        if (*api[i] != 0 && *api[i] != 1) {
            snprintf(err, err_len, "kr_context_options.%s = %d: expected 1, 0 or KR_UNSET",
                     api_names[i], (int)*api[i]);
            return KR_ERR_CONFIG;
        }
        *dst[i] = *api[i];
    }
    for (int f = 0; f < KR_FEATURE_COUNT_; f++) {
        if (o->features[f] == KR_UNSET) continue;
        if (o->features[f] != 0 && o->features[f] != 1) {
            snprintf(err, err_len,
                     "kr_context_options.features[%s] = %d: expected 1, 0 or KR_UNSET",
                     kr_feature_name((kr_feature)f), (int)o->features[f]);
            return KR_ERR_CONFIG;
        }
        c->features[f] = o->features[f];
    }
    if (o->plugin_path) snprintf(c->plugin_path, sizeof c->plugin_path, "%s", o->plugin_path);
    if (o->backends && ((s = split_names(o->backends, c->order, &c->n_order,
                                         "kr_context_options.backends", err, err_len)) ||
                        (s = check_names(c->order, c->n_order, false, "kr_context_options.backends",
                                         err, err_len))))
        return s;
    if (o->deny_backends && ((s = split_names(o->deny_backends, c->deny, &c->n_deny,
                                              "kr_context_options.deny_backends", err, err_len)) ||
                             (s = check_names(c->deny, c->n_deny, true,
                                              "kr_context_options.deny_backends", err, err_len))))
        return s;
    return KR_OK;
}
