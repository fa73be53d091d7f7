"""The shipped demo models (models/demo) on the shipped examples, through the default config.

A real accuracy test of the trained models: `hyfunc run examples/requests.jsonl` with no flags
(configs/default.yaml -> models/demo), compared call for call with examples/expected.jsonl.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hyfunc.eval.scoring import calls_match
from hyfunc.schema import Call

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models" / "demo"
# The target is 0.90 exact match; the shipped models measure below it (see the model
# card). The floor guards against regressions of what the models do reach today; the target
# test below records the gap instead of hiding it.
FLOOR = 0.40
TARGET = 0.90

pytestmark = pytest.mark.skipif(not (MODELS / "hyfunc.json").exists(), reason="models/demo not present")


@pytest.fixture(scope="module")
def exact_match(tmp_path_factory) -> float:
    out = tmp_path_factory.mktemp("demo-run") / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "hyfunc.cli", "run", "examples/requests.jsonl", "--out", str(out), "--no-record", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    results = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    expected = {e["id"]: e for e in map(json.loads, (ROOT / "examples" / "expected.jsonl").read_text().splitlines())}
    assert set(results) == set(expected)
    assert all(r["error"] is None for r in results.values())
    hits = sum(
        calls_match([Call(**c) for c in results[i]["calls"]], [Call(**c) for c in expected[i]["calls"]]) for i in expected
    )
    return hits / len(expected)


def test_default_config_runs_the_demo_models_above_floor(exact_match):
    assert exact_match >= FLOOR, exact_match


@pytest.mark.xfail(reason="issue 3 target (0.90 exact match) not reached by the 2-CPU demo models yet", strict=True)
def test_demo_models_reach_the_target(exact_match):
    assert exact_match >= TARGET, exact_match


def test_eval_demo_json_keys():
    proc = subprocess.run(
        [sys.executable, "-m", "hyfunc.cli", "eval", "demo", "--json", "-n", "40"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"exact_match", "function_accuracy", "no_call_accuracy", "schema_valid", "n"} <= set(metrics)
    assert metrics["n"] == 40 and metrics["schema_valid"] == 1.0
