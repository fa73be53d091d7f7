"""The decoding settings a cascade runs with: explicit config, else the models' manifest, else code.

A models directory records how its LMS was trained to decode (`hyfunc.json` → `decoding`:
extractive values, distinct spans, the retriever prior, the template limits, the number of soft
tokens, the order the candidates were listed in the prompt). Those are what inference should use, so the matching `cascade.*` config keys default to
None, meaning "from the manifest"; a config that sets a key explicitly still wins.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from hyfunc.cascade.template import MachineLimits
from hyfunc.config import CascadeConfig

RETRIEVER_PRIOR_DEFAULT = 1.0
# Candidates by content hash: the same set always shares a token prefix (the prefix cache reuses
# it); what training renders (hyfunc/training/lms.py).
PROMPT_ORDER_DEFAULT = "canonical"

# Code defaults of the keys a manifest may set: the template machine's own defaults, the prior and
# the prompt order.
CODE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(MachineLimits)} | {
    "retriever_prior": RETRIEVER_PRIOR_DEFAULT,
    "prompt_order": PROMPT_ORDER_DEFAULT,
}


def resolve_decoding(config: CascadeConfig, manifest_decoding: dict[str, Any] | None) -> CascadeConfig:
    """A copy of ``config`` with every decoding key that it leaves unset (None) filled from the
    manifest, or else from the code default."""
    manifest_decoding = manifest_decoding or {}
    updates = {
        key: manifest_decoding.get(key, default)
        for key, default in CODE_DEFAULTS.items()
        if getattr(config, key) is None
    }
    return config.model_copy(update=updates)


def decoding_sources(config: CascadeConfig, manifest_decoding: dict[str, Any] | None) -> dict[str, str]:
    """Where each resolved setting came from ("config", "manifest" or "default"), for reports."""
    manifest_decoding = manifest_decoding or {}
    return {
        key: "config" if getattr(config, key) is not None else "manifest" if key in manifest_decoding else "default"
        for key in CODE_DEFAULTS
    }
