#!/usr/bin/env python3
"""Prints RoPE inverse frequencies and attention factors as Hugging Face
transformers computes them (LlamaRotaryEmbedding), for the configurations
tests/test_rope.c checks against. Run where transformers is installed (the
GPU machine); nothing is downloaded. Output: a C table to paste into
tests/hf_rope_values.h."""
import math
import sys

import torch
import transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

CASES = [
    # name, head_dim, theta, max_pos, partial_rotary_factor, scaling dict (HF names) or None
    ("default", 128, 10000.0, 4096, 1.0, None),
    ("linear", 128, 10000.0, 16384, 1.0, {"rope_type": "linear", "factor": 4.0}),
    ("llama3", 128, 500000.0, 131072, 1.0,
     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}),
    ("yarn", 128, 1000000.0, 131072, 1.0,
     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
    ("yarn_mscale", 64, 10000.0, 163840, 1.0,
     {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
      "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}),
]
POSITIONS = [0, 1, 4095, 8191, 32767, 131071]


def make_config(hd, theta, max_pos, prf, scaling):
    kw = dict(hidden_size=hd * 4, num_attention_heads=4, num_key_value_heads=4, head_dim=hd,
              max_position_embeddings=max_pos, partial_rotary_factor=prf)
    try:  # transformers 5: rope_parameters holds theta and scaling together
        rp = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            rp.update(scaling)
        cfg = LlamaConfig(rope_parameters=rp, **kw)
        if getattr(cfg, "rope_parameters", None) is None:
            raise TypeError
    except TypeError:
        cfg = LlamaConfig(rope_theta=theta, rope_scaling=scaling, **kw)
    return cfg


print(f"/* transformers {transformers.__version__}, torch {torch.__version__} */")
for name, hd, theta, max_pos, prf, scaling in CASES:
    cfg = make_config(hd, theta, max_pos, prf, scaling)
    emb = LlamaRotaryEmbedding(cfg)
    inv = emb.inv_freq.double().tolist()
    af = float(emb.attention_scaling)
    # cos/sin as the model computes them (fp32 angle), at a few positions
    pos = torch.tensor([POSITIONS], dtype=torch.long)
    x = torch.zeros(1, 1, len(POSITIONS), hd)
    cos, sin = emb(x, pos)
    print(f'{{"{name}", {hd}, {theta!r}, {len(inv)}, {af!r},')
    print("  {" + ", ".join(f"{v!r}" for v in inv) + "},")
    # float64 angles from HF's fp32 inv_freq, for the positions (pair 0, 1, last)
    rows = []
    for p in POSITIONS:
        for i in (0, 1, len(inv) - 1):
            a = p * inv[i]
            rows.append(f"{{{p}, {i}, {math.cos(a) * af!r}, {math.sin(a) * af!r}, "
                        f"{float(cos[0, POSITIONS.index(p), i])!r}}}")
    print("  {" + ", ".join(rows) + "}},")
sys.stdout.flush()
