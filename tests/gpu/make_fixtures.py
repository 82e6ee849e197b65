#!/usr/bin/env python3
"""make_fixtures.py - the engine's test fixtures, made with Hugging Face transformers and
tokenizers where they are installed (the GPU machine); nothing is downloaded.

For each of three tiny random-weight models (Llama with llama3 rope scaling and a byte-level BPE
tokenizer; Mistral with a sliding window and a SentencePiece-style BPE tokenizer with byte
fallback; Qwen2 with q/k/v biases and the byte-level tokenizer), it writes under OUT/<name>/:

  config.json, generation_config.json, model.safetensors (fp32), tokenizer.json,
  tokenizer_config.json                           - the model directory, as save_pretrained writes it
  reference.json                                  - prompts, their token ids (tokenizer(..)),
                                                    transformers' fp32 logits of every prompt position,
                                                    32 greedy ids (generate, do_sample=False) and the
                                                    tokenisation of TEXTS

The tokenizers are trained here on text at hand (this file plus TEXTS). tests/test_fixtures.c
reads these directories (tests/fixtures) and checks logits within 1e-4, identical greedy ids and
identical tokenisations, on ref and on every accelerated backend.

Usage: make_fixtures.py OUT        (then copy OUT/* to tests/fixtures/)
"""
import json
import os
import sys

import torch
from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                        trainers)
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

TF_MAJOR = int(transformers.__version__.split(".")[0])

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\tand\nnewlines\n\n  and   runs   of   spaces  ",
    "digits 0123456789 and 3.14159, 1,000,000 and 2026-11-26",
    "accents: café, naïve, Ångström, crème brûlée, Ærø",
    "CJK: 日本語のテキスト、中文文本，한국어 텍스트",
    "emoji: 🙂 👍🏽 🇫🇷 👨‍👩‍👧 and symbols ∑ ∫ √ ≠ ≤",
    "code: def f(x):\n    return x ** 2  # square\n",
]
PROMPTS = ["The quick brown fox", "café 日本 🙂 123", "def f(x):\n    return",
           # longer than the Mistral fixture's sliding window of 8
           "Hello world! The quick brown fox jumps over the lazy dog, twice: 1,000,000 times."]
GREEDY = 32
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def corpus():
    with open(__file__, encoding="utf-8") as f:
        here = f.read()
    return [here] * 4 + TEXTS * 20


def byte_level_tokenizer(vocab_size=600):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|begin|>", "<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    bos = tok.token_to_id("<|begin|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin|> $A",
                                                       special_tokens=[("<|begin|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin|>",
                                   eos_token="<|end|>")


def sentencepiece_tokenizer(vocab_size=600):
    byte_tokens = ["<0x%02X>" % b for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def perturb(model):
    """Random biases and norm weights: transformers initialises them to 0 and 1, which would
    let a loader that drops them pass."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in n:
                p.uniform_(0.5, 1.5)
    return model


def save(name, model, tokenizer, out):
    perturb(model)
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    ref = {"prompts": [], "texts": []}
    model.eval()
    for p in PROMPTS:
        ids = tokenizer(p)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
            # an explicit attention mask: with pad_token_id equal to BOS, generate would
            # otherwise infer one that masks the BOS position out
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                                                               dtype=torch.long),
                                 max_new_tokens=GREEDY, do_sample=False, min_new_tokens=GREEDY,
                                 pad_token_id=tokenizer.eos_token_id)[0][len(ids):]
            # the first greedy id must be the forward pass's argmax (eos masked)
            last = logits[-1].clone()
            last[tokenizer.eos_token_id] = -float("inf")
            assert int(last.argmax()) == int(gen[0]), (name, p, int(last.argmax()), int(gen[0]))
        ref["prompts"].append({"text": p, "ids": ids, "logits": logits.tolist(),
                               "greedy": gen.tolist()})
    for t in TEXTS:
        ref["texts"].append({"text": t, "ids": tokenizer(t)["input_ids"]})
    with open(os.path.join(d, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False)
    print(name, "vocab", len(tokenizer), "->", d)


def rope(theta, scaling=None):
    """rope_theta + rope_scaling before transformers 5, rope_parameters from 5 on."""
    if TF_MAJOR >= 5:
        p = {"rope_type": "default", "rope_theta": theta}
        p.update(scaling or {})
        return {"rope_parameters": p}
    return {"rope_theta": theta, "rope_scaling": scaling}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
    print("torch", torch.__version__, "transformers", transformers.__version__)
    torch.manual_seed(20261126)
    bl = byte_level_tokenizer()
    sp = sentencepiece_tokenizer()
    # initializer_range 0.1 (not 0.02) so attention is far from uniform and RoPE errors show
    common = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, rms_norm_eps=1e-5, initializer_range=0.1)
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    # head_dim 64 given explicitly (q_proj is 128 -> 256), GQA 4:2
    llama = LlamaConfig(vocab_size=len(bl), max_position_embeddings=131072, head_dim=64,
                        num_key_value_heads=2, bos_token_id=bl.bos_token_id,
                        eos_token_id=bl.eos_token_id, tie_word_embeddings=False,
                        **rope(500000.0, llama3), **common)
    save("llama", LlamaForCausalLM(llama).float(), bl, out)
    # head_dim 32, GQA 4:1, a sliding window shorter than prompt + 32 generated tokens
    mistral = MistralConfig(vocab_size=len(sp), sliding_window=8, max_position_embeddings=4096,
                            num_key_value_heads=1, bos_token_id=sp.bos_token_id,
                            eos_token_id=sp.eos_token_id, tie_word_embeddings=False,
                            **rope(10000.0), **common)
    save("mistral", MistralForCausalLM(mistral).float(), sp, out)
    # head_dim 32, GQA 4:2, q/k/v biases, tied embeddings
    qwen2 = Qwen2Config(vocab_size=len(bl), max_position_embeddings=4096, num_key_value_heads=2,
                        bos_token_id=bl.bos_token_id, eos_token_id=bl.eos_token_id,
                        tie_word_embeddings=True, **rope(1000000.0), **common)
    save("qwen2", Qwen2ForCausalLM(qwen2).float(), bl, out)


if __name__ == "__main__":
    main()
