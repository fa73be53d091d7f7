"""Choosing the LMS fine-tune by measurement (`hyfunc train compare-lms`).

One training recipe, several variants of its LMS stage (another base, LoRA on the top layers
only, float32 instead of bf16 autocast, ...), each trained for the same number of steps on the
same data with the same retriever, then scored on the same held-out sets. The intent vectors
and the retriever are computed once (a shared work directory) and copied into each variant's
work directory, so the variants differ only in what the variant names.

A variant is ``NAME:KEY=VALUE,KEY=VALUE`` where a key is a recipe key (``lms_init``) or an LMS
training key prefixed ``lms.`` (``lms.lora_layers``, ``lms.bf16``); values are YAML scalars.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hyfunc.bench.stats import r

SHARED = "compare-shared"


@dataclass
class LMSVariant:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


def parse_variant(text: str) -> LMSVariant:
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"variant {text!r}: expected NAME:KEY=VALUE,... with a name of letters, digits, - and _")
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"variant {name}: {item!r} is not KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return LMSVariant(name, overrides)


def apply_variant(recipe, variant: LMSVariant, work_root: Path):
    """The recipe with the variant's overrides, writing under ``work_root/compare-NAME``."""
    from hyfunc.training.lms import LMSTrainConfig

    top: dict[str, Any] = {}
    lms: dict[str, Any] = {}
    for key, value in variant.overrides.items():
        if key.startswith("lms."):
            if key[4:] not in LMSTrainConfig.__dataclass_fields__:
                raise ValueError(f"variant {variant.name}: unknown LMS training key {key!r}")
            lms[key[4:]] = value
        elif key in ("lms_init", "projector_hidden"):
            top[key] = value
        else:
            raise ValueError(f"variant {variant.name}: {key!r} cannot vary (lms_init, projector_hidden or lms.<key>)")
    work = work_root / f"compare-{variant.name}"
    return replace(copy.deepcopy(recipe), lms=replace(recipe.lms, **lms), work_dir=str(work),
                   out_dir=str(work / "models"), **top)


def _seed_work_dir(shared: Path, work: Path) -> None:
    """The shared intent vectors and retriever, so that the variant trains only its LMS."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ("embeddings", "retriever"):
        if (shared / name).exists() and not (work / name).exists():
            shutil.copytree(shared / name, work / name)
    for marker in shared.glob("*.done"):
        if marker.stem in ("embed", "retriever"):
            shutil.copy2(marker, work / marker.name)


def compare_lms(
    recipe,
    variants: list[LMSVariant],
    demo_n: int,
    seal_limit: int,
    seal_dir: str | None,
    serve_config: str,
    progress: bool = True,
) -> dict[str, Any]:
    from hyfunc.cascade import Cascade
    from hyfunc.config import load_config
    from hyfunc.eval.demo import evaluate_demo
    from hyfunc.eval.seal import evaluate_seal
    from hyfunc.training.pipeline import train_all

    if not variants:
        raise ValueError("compare-lms needs at least one --variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must differ: {names}")
    root = Path(recipe.work_dir)
    shared = root / SHARED
    planned = [apply_variant(recipe, v, root) for v in variants]  # bad overrides fail before any training
    train_all(replace(recipe, work_dir=str(shared)), progress, stop_after="retriever")
    rows = []
    for variant, varied in zip(variants, planned, strict=True):
        _seed_work_dir(shared, Path(varied.work_dir))
        started = time.time()
        report = train_all(varied, progress)
        lms = report["lms"]
        cascade = Cascade.load(load_config(serve_config, {"models.dir": varied.out_dir}))
        demo = evaluate_demo(cascade, n=demo_n, progress=progress)
        row: dict[str, Any] = {
            "variant": variant.name,
            "overrides": variant.overrides,
            "lms_init": varied.lms_init,
            "steps": lms.get("steps"),
            "lms_seconds": lms.get("seconds"),
            "seconds_per_step": r(lms["seconds"] / lms["steps"]) if lms.get("steps") else None,
            "final_loss": r(lms["final_loss"]),
            "wall_seconds": r(time.time() - started),
            "adapter_mb": r(_size_mb(Path(varied.out_dir) / "lms_adapter")),
            "demo_exact": demo["exact_match"],
            "demo_function": demo["function_accuracy"],
            "demo_false_no_call": demo["false_no_call"],
        }
        if seal_limit > 0:
            seal = evaluate_seal(cascade, "test_in_domain", data=seal_dir, limit=seal_limit, progress=progress,
                                 log=lambda _m: None)
            row["seal_exact"] = seal["exact_match"]
        rows.append(row)
        del cascade
    return {"recipe": str(recipe.name), "steps": recipe.lms.steps, "batch_size": recipe.lms.batch_size,
            "demo_n": demo_n, "seal_limit": seal_limit, "rows": rows}


def _size_mb(path: Path) -> float:
    if not path.exists():
        return 0.0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def markdown(report: dict[str, Any]) -> str:
    seal = report["seal_limit"] > 0
    head = ["variant", "changes", "s/step", "final loss", f"demo exact (n={report['demo_n']})", "demo function",
            "false no-call"] + ([f"Seal in-domain exact (first {report['seal_limit']})"] if seal else []) + ["adapter MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        changes = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "(the recipe)"
        cells = [row["variant"], changes, row["seconds_per_step"], row["final_loss"], row["demo_exact"],
                 row["demo_function"], row["demo_false_no_call"]] + ([row.get("seal_exact")] if seal else []) + [row["adapter_mb"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "lms_choice.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "lms_choice.md").write_text(markdown(report))
