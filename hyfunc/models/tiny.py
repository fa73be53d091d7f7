"""`hyfunc models tiny DIR`: random-init tiny models in the real on-disk layout.

Tests load these through exactly the code path real checkpoints use (AutoModel*.from_pretrained,
AutoTokenizer.from_pretrained, safetensors for the towers), so the engine is exercised end to
end without any model hub.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from hyfunc.models.bundle import Manifest, save_module, stamp_versions
from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
from hyfunc.models.retriever import Retriever, RetrieverConfig
from hyfunc.models.tokenizer import train_bpe_tokenizer

TINY_CORPUS = [
    "What's the weather in Berlin tomorrow in fahrenheit?",
    "Send an email to bob@example.com with subject Lunch saying see you at noon.",
    "Convert 250 US dollars to euros and show the rate.",
    "Set the living room thermostat to 21.5 degrees.",
    "Find flights from Boston to Denver on 2026-03-14 for 2 adults in economy.",
    "Play the album Blue by Joni Mitchell on shuffle.",
    "Create a calendar event called Standup at 09:30 for 15 minutes.",
]


def qwen3_config(vocab_size: int, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=2,
    )


def write_tiny_models(
    directory: str | Path,
    seed: int = 0,
    lml_hidden: int = 96,
    lms_hidden: int = 64,
    layers: int = 2,
    relevance_threshold: float = -1.0,
) -> Path:
    """Write a complete random-init models directory; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(TINY_CORPUS, vocab_size=600)
    vocab = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for name, hidden in (("intent", lml_hidden), ("lms", lms_hidden)):
        config = qwen3_config(vocab, hidden, layers, 4, 2, hidden * 2)
        config.eos_token_id = eos
        model = Qwen3ForCausalLM(config)
        model.save_pretrained(str(directory / name))
        tokenizer.save_pretrained(str(directory / name))
    retriever = Retriever(RetrieverConfig(input_dim=lml_hidden, hidden_dim=64, output_dim=32))
    save_module(retriever, retriever.config_dict(), directory / "retriever")
    projector = SoftTokenProjector(ProjectorConfig(input_dim=lml_hidden, output_dim=lms_hidden, hidden_dim=64))
    save_module(projector, projector.config_dict(), directory / "projector")
    Manifest(intent_kind="causal", relevance_threshold=relevance_threshold, name=f"tiny-random-{seed}").write(directory)
    stamp_versions(directory)
    return directory
