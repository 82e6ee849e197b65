/*
 * config.h — the acceleration configuration after merging defaults, the
 * YAML file, the environment and the API options (in rising precedence).
 */
#ifndef KR_CORE_CONFIG_H
#define KR_CORE_CONFIG_H

#include "krserve/krserve.h"

#include <stdbool.h>
#include <stddef.h>

#define KR_MAX_NAMES 8
#define KR_MAX_MODELS 32

typedef struct kr_model_switch {
    char model[128];
    int32_t features[KR_FEATURE_COUNT_]; /* 1, 0 or KR_UNSET */
} kr_model_switch;

typedef struct kr_config {
    int32_t enabled;
    int32_t fallback_to_reference;
    int32_t prefer_reference;
    kr_log_level fallback_log_level;
    int32_t features[KR_FEATURE_COUNT_];
    char plugin_path[512];
    char order[KR_MAX_NAMES][32];
    int n_order; /* 0 = default order */
    char deny[KR_MAX_NAMES][32];
    int n_deny;
    kr_model_switch models[KR_MAX_MODELS];
    int n_models;
    char file[512]; /* the file that was read, "" if none */
} kr_config;

/* Builds the configuration for a context: defaults, then the file named by
 * opts->config_path / KRSERVE_CONFIG / ./krserve.yaml, then KRSERVE_*
 * variables, then opts. Errors name the file and line, or the variable. */
kr_status kr_config_load(const kr_context_options *opts, kr_config *cfg, char *err, size_t err_len);

/* Finds or adds the switch row of a model; NULL when the table is full. */
kr_model_switch *kr_config_model(kr_config *cfg, const char *model, bool create);

#endif /* KR_CORE_CONFIG_H */
