"""GGUF -> an HF safetensors checkpoint directory, once.

transformers reads GGUF (`from_pretrained(dir, gguf_file=...)`, with the `gguf` package) and
de-quantises every tensor to float. The model it returns is marked as GGUF-quantised and refuses
`save_pretrained`, so its weights are copied into a plain model built from the same config with
the quantisation entry removed, which saves normally; the tokenizer (vocabulary, merges, special
tokens and chat template, all read from the GGUF metadata) is saved next to it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


class ConversionError(RuntimeError):
    """A GGUF file transformers cannot read, or a checkpoint that did not survive the copy."""


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``out_dir`` (config.json, model.safetensors, tokenizer files) from ``gguf_path``.

    The directory is built under a temporary name and renamed into place, so a crash never leaves
    a half-written checkpoint where a complete one is expected."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ConversionError(f"{gguf_path}: no such GGUF file")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (ValueError, KeyError, NotImplementedError, OSError) as err:
        raise ConversionError(f"{gguf_path}: transformers cannot load this GGUF: {err}") from err
    plain = dequantized_copy(loaded)
    tmp = out_dir.with_name(out_dir.name + ".converting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    plain.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return out_dir


def dequantized_copy(loaded: torch.nn.Module) -> torch.nn.Module:
    """A plain (serialisable) model of the same class and config holding ``loaded``'s weights."""
    config = loaded.config.__class__.from_dict(
        {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    )
    plain = loaded.__class__(config).to(next(loaded.parameters()).dtype)
    # Every tensor of the plain model must come from the GGUF, and nothing else may be left over.
    result = plain.load_state_dict(loaded.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(
            f"the GGUF weights do not fit {config.__class__.__name__}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return plain.eval()
