"""Tiny random-init models vLLM can load: Llama in HF layout, head size 32 (vLLM's CPU attention
takes head sizes 32, 64, 80, ...; the Qwen3 tiny models' 16 and 24 are not among them)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hyfunc.models.bundle import stamp_versions
from hyfunc.models.tiny import write_tiny_models

HIDDEN = 128


def tiny_llama(vocab: int, eos: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HIDDEN // 4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=eos,
    )
    return LlamaForCausalLM(config)


def write_tiny_llama_models(directory: Path, seed: int = 0) -> Path:
    """The tiny models directory (hyfunc.models.tiny) with a Llama LML and LMS of width 128."""
    directory = write_tiny_models(directory, seed=seed, lml_hidden=HIDDEN, lms_hidden=HIDDEN)
    for offset, part in enumerate(("intent", "lms")):
        tokenizer = AutoTokenizer.from_pretrained(str(directory / part))
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        tiny_llama(len(tokenizer), eos, seed + 1 + offset).save_pretrained(str(directory / part))
    stamp_versions(directory)
    return directory
