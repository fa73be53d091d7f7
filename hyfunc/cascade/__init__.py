"""The HyFunc cascade: intent (LML) -> function index + retriever -> templated LMS decoding."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hyfunc.cascade.engine import Cascade

__all__ = ["Cascade"]


def __getattr__(name: str):
    # Lazy: importing hyfunc.cascade must not load torch/transformers until a Cascade is needed.
    if name == "Cascade":
        from hyfunc.cascade.engine import Cascade

        return Cascade
    raise AttributeError(name)
