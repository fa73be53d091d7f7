"""The shipped models on the shipped examples: `hyfunc run examples/requests.jsonl` compared call
for call with examples/expected.jsonl — the demo-task models (models/demo, `--models`) and the
general models the default config serves (configs/default.yaml -> models/general).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hyfunc.eval.scoring import calls_match
from hyfunc.schema import Call

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models" / "demo"
TARGET = 0.90


def recorded_heldout() -> dict:
    """What training measured on the held-out split and wrote next to the models."""
    return json.loads((MODELS / "training_report.json").read_text())["heldout"]


def floor_for(n: int) -> float:
    """The lowest exact match over `n` examples that is still consistent (99 %, normal
    approximation of the binomial) with the held-out rate the models recorded at training. Not a
    number tuned to today's run: it follows the models' own report, and catches a served path that
    no longer reproduces what the models were measured to do."""
    p = float(recorded_heldout()["exact_match"])
    return p - 2.576 * math.sqrt(p * (1 - p) / n)


pytestmark = pytest.mark.skipif(not (MODELS / "hyfunc.json").exists(), reason="models/demo not present")


def examples_exact(tmp_path: Path, models: Path | None) -> float:
    """Exact match of `hyfunc run examples/requests.jsonl` (the default config; ``models`` overrides its models)."""
    out = tmp_path / "results.jsonl"
    flags = ["--models", str(models)] if models is not None else []
    proc = subprocess.run(
        [sys.executable, "-m", "hyfunc.cli", "run", "examples/requests.jsonl", *flags, "--out", str(out), "--no-record", "--quiet"],
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


@pytest.fixture(scope="module")
def exact_match(tmp_path_factory) -> float:
    return examples_exact(tmp_path_factory.mktemp("demo-run"), MODELS)


def test_demo_models_above_floor(exact_match):
    assert exact_match >= floor_for(30), (exact_match, floor_for(30))


@pytest.mark.slow  # the whole held-out split: minutes on a CPU
def test_eval_demo_reproduces_the_recorded_heldout_score():
    """`hyfunc eval demo` on the split training scored (same size and seed) gives the recorded
    exact match: greedy decoding, same models, same examples."""
    recorded = recorded_heldout()
    proc = subprocess.run(
        [sys.executable, "-m", "hyfunc.cli", "eval", "demo", "--json", "-n", str(recorded["n"]), "--models", str(MODELS)],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["exact_match"] == pytest.approx(recorded["exact_match"], abs=1 / recorded["n"]), metrics
    assert metrics["function_accuracy"] == pytest.approx(recorded["function_accuracy"], abs=1 / recorded["n"]), metrics


@pytest.mark.xfail(reason="issue 3 target (0.90 exact match) not reached by the 2-CPU demo models yet", strict=True)
def test_demo_models_reach_the_target(exact_match):
    assert exact_match >= TARGET, exact_match


@pytest.mark.slow  # loads the models in a subprocess and decodes 40 examples: about a minute on a CPU
def test_eval_demo_json_keys():
    proc = subprocess.run(
        [sys.executable, "-m", "hyfunc.cli", "eval", "demo", "--json", "-n", "40"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"exact_match", "function_accuracy", "no_call_accuracy", "schema_valid", "n"} <= set(metrics)
    assert metrics["n"] == 40 and metrics["schema_valid"] == 1.0


GENERAL = ROOT / "models" / "general"
GENERAL_TARGET = 27 / 30  # issue 15's target for the default models on the shipped examples


@pytest.fixture(scope="module")
def default_exact(tmp_path_factory) -> float:
    from hyfunc.models.cache import base_dir, read_marker

    manifest = json.loads((GENERAL / "hyfunc.json").read_text())
    base = manifest["lms_path"].removeprefix("base:")
    if read_marker(base_dir(base)) is None and not _index_reachable():
        pytest.skip(f"the default models' base {base} is not pulled and the package index is not reachable")
    return examples_exact(tmp_path_factory.mktemp("default-run"), None)


def _index_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_default_config_serves_the_general_models():
    from hyfunc.config import load_config

    assert Path(load_config().models_dir()).resolve() == GENERAL.resolve()


def test_general_default_models_beat_the_demo_models_on_their_own_examples(default_exact, exact_match):
    """The general models were trained for tools in general (the demo task one source among
    several) and still do at least as well as the demo-only models on the demo's examples."""
    assert default_exact >= exact_match, (default_exact, exact_match)


@pytest.mark.xfail(reason="issue 15 target (27/30 exact on the shipped examples) not reached yet", strict=True)
def test_general_default_models_reach_the_target(default_exact):
    assert default_exact >= GENERAL_TARGET, default_exact
