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
Status: written 2026-11-26 without a run (no GPU time left that session); run it and commit
its output.
"""
import json
import os
import sys

import torch
from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                        trainers)
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\tand\nnewlines\n\n  and   runs   of   spaces  ",
    "digits 0123456789 and 3.14159, 1,000,000 and 2026-11-26",
    "accents: café, naïve, Ångström, crème brûlée, Ærø",
    "CJK: 日本語のテキスト、中文文本，한국어 텍스트",
    "emoji: 🙂 👍🏽 🇫🇷 👨‍👩‍👧 and symbols ∑ ∫ √ ≠ ≤",
    "code: def f(x):\n    return x ** 2  # square\n",
]
PROMPTS = ["The quick brown fox", "café 日本 🙂 123", "def f(x):\n    return"]
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


def save(name, model, tokenizer, out):
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
            gen = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY, do_sample=False,
                                 min_new_tokens=GREEDY, pad_token_id=0)[0][len(ids):]
        ref["prompts"].append({"text": p, "ids": ids, "logits": logits.tolist(),
                               "greedy": gen.tolist()})
    for t in TEXTS:
        ref["texts"].append({"text": t, "ids": tokenizer(t)["input_ids"]})
    with open(os.path.join(d, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False)
    print(name, "vocab", len(tokenizer), "->", d)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
    torch.manual_seed(20261126)
    bl = byte_level_tokenizer()
    sp = sentencepiece_tokenizer()
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                  torch_dtype="float32")
    llama = LlamaConfig(vocab_size=len(bl), max_position_embeddings=131072, rope_theta=500000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192},
                        bos_token_id=bl.bos_token_id, eos_token_id=bl.eos_token_id,
                        tie_word_embeddings=False, **common)
    save("llama", LlamaForCausalLM(llama).float(), bl, out)
    mistral = MistralConfig(vocab_size=len(sp), sliding_window=8, max_position_embeddings=4096,
                            bos_token_id=sp.bos_token_id, eos_token_id=sp.eos_token_id,
                            tie_word_embeddings=False, **common)
    save("mistral", MistralForCausalLM(mistral).float(), sp, out)
    qwen2 = Qwen2Config(vocab_size=len(bl), max_position_embeddings=4096,
                        bos_token_id=bl.bos_token_id, eos_token_id=bl.eos_token_id,
                        tie_word_embeddings=True, **common)
    save("qwen2", Qwen2ForCausalLM(qwen2).float(), bl, out)


if __name__ == "__main__":
    main()
