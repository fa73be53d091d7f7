"""The general recipe's plumbing: mixed sources with weights, loud config errors, LoRA-only
checkpoints kept as a history, and the BFCL error classes."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from hyfunc.data.demo_task import generate_demo_examples
from hyfunc.data.loaders import write_xlam
from hyfunc.eval.errors import classify, error_table
from hyfunc.training.lms import (
    LMSTrainConfig,
    apply_lora,
    latest_checkpoint,
    load_trained_weights,
    save_checkpoint,
)
from hyfunc.training.pipeline import DataSource, Recipe, _weighted, load_data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"data": "mix"}, "needs a list of sources"),
        ({"data": "mix", "sources": [{"kind": "bfcl"}]}, "kind must be one of"),
        ({"data": "mix", "sources": [{"kind": "demo", "weight": -1}]}, "weight must be >= 0"),
        ({"data": "mix", "sources": [{"kind": "xlam"}]}, "needs path"),
        ({"data": "mix", "sources": [{"kind": "demo", "heldout_share": 1.5}]}, "heldout_share"),
        ({"data": "mix", "sources": [{"kind": "seal", "heldout_by": "field"}]}, "heldout_by must be"),
        ({"reuse": {"lms": "models/demo"}}, "reuse takes 'retriever'"),
    ],
)
def test_bad_recipes_fail_with_the_reason(data, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(data)


def test_weights_scale_a_source_share():
    items = list(range(1000))
    rng = random.Random(0)
    assert len(_weighted(items, 2.0, rng)) == 2000
    assert 400 < len(_weighted(items, 0.5, rng)) < 600
    assert _weighted(items, 0.0, rng) == []


def test_mix_loads_each_source_with_its_weight_and_provenance(tmp_path):
    extra = generate_demo_examples("train", 40, 9)
    write_xlam(tmp_path / "extra.jsonl", extra)
    recipe = Recipe.from_dict({
        "data": "mix", "n_heldout": 10, "augment": 0,
        "sources": [{"kind": "demo", "n": 30, "weight": 1.0},
                    {"kind": "xlam", "path": str(tmp_path / "extra.jsonl"), "weight": 2.0, "heldout_share": 0.25}],
    })
    provenance: list[dict] = []
    train, heldout = load_data(recipe, provenance)
    assert len(train) == 30 + 2 * 30 and len(heldout) == 10 + 10
    assert [p["kind"] for p in provenance] == ["demo", "xlam"] and provenance[1]["records"] == 40
    queries = {ex.query for ex in extra}
    # a held-out xlam example is never also a training one
    held_xlam = {ex.query for ex in heldout if ex.query in queries}
    assert held_xlam and not held_xlam & {ex.query for ex in train}


def test_a_source_held_out_by_tool_keeps_those_tools_out_of_training(tmp_path):
    """heldout_by: tool -- the gate and the no-call ceiling are calibrated on tools never trained on."""
    extra = generate_demo_examples("train", 300, 5)
    write_xlam(tmp_path / "extra.jsonl", extra)
    recipe = Recipe.from_dict({
        "data": "mix", "augment": 0,
        "sources": [{"kind": "xlam", "path": str(tmp_path / "extra.jsonl"), "heldout_share": 0.2, "heldout_by": "tool"}],
    })
    train, heldout = load_data(recipe)
    assert len(train) + len(heldout) == len(extra)
    trained_tools = {c.name for ex in train for c in ex.answers}
    held_calls = [ex for ex in heldout if ex.answers]
    # each held-out call query asks for a tool that no training query asks for
    assert held_calls and all(any(c.name not in trained_tools for c in ex.answers) for ex in held_calls)


def test_lora_checkpoints_hold_the_adapter_only_and_resume_the_newest(tiny_models_dir, tmp_path):
    from hyfunc.models.bundle import ModelBundle
    from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector

    tiny_bundle = ModelBundle.load(tiny_models_dir)
    model = apply_lora(copy.deepcopy(tiny_bundle.lms).float(), LMSTrainConfig(lora=True, lora_rank=4))
    projector = SoftTokenProjector(ProjectorConfig(input_dim=tiny_bundle.intent_dim, output_dim=tiny_bundle.lms_dim, hidden_dim=8))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rng = random.Random(0)
    for step in (1, 2, 3, 4):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(step / 100)
        save_checkpoint(model, projector, optimizer, step, [0.1] * step, rng, tmp_path, keep=2)
    kept = sorted(d.name for d in tmp_path.glob("step-*"))
    assert kept == ["step-000003", "step-000004"] and latest_checkpoint(tmp_path).name == "step-000004"
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "step-000004" / "trained.safetensors"))
    assert saved and all("lora_" in name for name in saved)  # never the frozen base weights
    fresh = apply_lora(copy.deepcopy(tiny_bundle.lms).float(), LMSTrainConfig(lora=True, lora_rank=4))
    load_trained_weights(fresh, projector, tmp_path / "step-000003")
    b = next(p for n, p in fresh.named_parameters() if "lora_B" in n)
    assert torch.allclose(b, torch.full_like(b, 0.03))


def test_error_classes_follow_the_cascade_and_the_checker():
    rows = [
        {"valid": True, "result": [{"f": {"a": 1}}]},
        {"valid": False, "result": [], "no_call_reason": "no tool is relevant enough: best score 0.1 < threshold 0.2"},
        {"valid": False, "result": [], "no_call_reason": "the LMS chose no call (none of the candidates fits the query)"},
        {"valid": False, "result": [], "error": "LMS output failed schema validation: x"},
        {"valid": False, "result": [{"f": {"a": 1}}], "error_type": "parallel_function_checker_no_order:wrong_count", "gold_calls": 3},
        {"valid": False, "result": [{"f": {"a": 1}}, {"f": {"a": 2}}], "error_type": "multiple_function_checker:wrong_count", "gold_calls": 1},
        {"valid": False, "result": [{"f": {"a": 1}}, {"f": {"a": 1}}], "error_type": "x:wrong_count", "gold_calls": 3},
        {"valid": False, "result": [{"g": {}}], "error_type": "simple_function_checker:wrong_func_name"},
        {"valid": False, "result": [{"f": {}}], "error_type": "simple_function_checker:missing_optional"},
        {"valid": False, "result": [{"f": {"a": "x"}}], "error_type": "type_error:simple"},
        {"valid": False, "result": [{"f": {"a": 2}}], "error_type": "value_error:others"},
        {"valid": False, "result": [{"f": {"a": 2}}], "detail": "irrelevance_error: a call was made"},
    ]
    assert [classify(r) for r in rows] == [
        None, "refused by the gate", "no call (LMS)", "decoding error", "too few calls", "too many calls",
        "repeated call", "wrong function", "missing parameter", "wrong type", "wrong value", "call made on irrelevance",
    ]
    assert sum(error_table(rows).values()) == len(rows) - 1


def test_data_source_defaults_read_the_seal_directory_from_the_environment():
    source = DataSource(kind="seal")
    assert source.path is None and source.per_tool == 2
