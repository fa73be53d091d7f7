"""Where pulled base checkpoints live: `$HYFUNC_CACHE` (default `~/.cache/hyfunc`).

    <cache>/bases/<name>/            an HF checkpoint directory (config.json, model.safetensors,
                                     tokenizer files) converted once from the GGUF
    <cache>/bases/<name>/hyfunc_base.json   written last: the registry pins it was made from

A directory without the marker (an interrupted conversion) is never used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MARKER = "hyfunc_base.json"


def cache_root() -> Path:
    value = os.environ.get("HYFUNC_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "hyfunc"


def base_dir(name: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "bases" / name


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a complete checkpoint directory, or None when it is missing or unreadable."""
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_marker(directory: Path, data: dict[str, Any]) -> None:
    tmp = directory / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(directory / MARKER)
