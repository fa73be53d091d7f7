"""Differences between the transformers releases the project supports (5.16 up to 5.40).

The KV-cache argument of a model's forward was renamed from ``past_key_values`` to ``cache`` during
5.x (5.19 knows only the old name and silently ignores ``cache=``; 5.25 deprecates the old one,
removal announced for 5.40). vLLM's CPU wheel pins transformers below 5.20, so both occur: every
forward that passes a cache uses ``cache_kwargs``.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def cache_argument() -> str:
    """The name this transformers release gives a decoder's KV-cache argument."""
    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for a model forward, under this release's name for the argument."""
    return {cache_argument(): cache}
