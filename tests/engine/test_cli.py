"""`hyfunc run` and `hyfunc models tiny`, in process (same code as the console script)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_support import PING, WEATHER

from hyfunc.cli import main
from hyfunc.models.bundle import ModelBundle

FAST_CONFIG = """
cascade:
  max_string_tokens: 6
  max_array_items: 2
  max_number_tokens: 4
store:
  url: sqlite:///{db}
"""


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HYFUNC_CONFIG", "HYFUNC_MODELS_DIR", "HYFUNC_DATABASE_URL", "HYFUNC_DEVICE"):
        monkeypatch.delenv(name, raising=False)


def write_requests(path: Path) -> None:
    good = {"query": "weather in Paris", "tools": [WEATHER.to_json()]}
    lines = [
        json.dumps({**good, "id": "first"}),
        "{not json",
        "",  # blank lines are skipped, not errors
        json.dumps({"query": "ping it", "tools": [PING.to_json(), WEATHER.to_json()]}),
        json.dumps({"query": "q", "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "str"}}}}}]}),
        json.dumps({"query": "   ", "tools": [PING.to_json()]}),
        json.dumps(good),
    ]
    path.write_text("\n".join(lines) + "\n")


def test_models_tiny_then_run_with_good_and_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    assert main(["models", "tiny", str(models), "--seed", "3"]) == 0
    bundle = ModelBundle.load(models)  # a loadable models directory, with stamped versions
    assert set(bundle.versions()) >= {"intent", "lms", "retriever", "projector"}

    requests, out, config = tmp_path / "requests.jsonl", tmp_path / "out.jsonl", tmp_path / "fast.yaml"
    write_requests(requests)
    config.write_text(FAST_CONFIG.format(db=tmp_path / "unused.sqlite"))
    code = main(["run", str(requests), "--models", str(models), "--config", str(config), "--no-record",
                 "--out", str(out), "--batch-size", "2", "--quiet"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6  # one per non-blank line, in input order
    assert [r["id"] for r in records] == ["first", "line-2", "line-4", "line-5", "line-6", "line-7"]
    ok = [records[i] for i in (0, 2, 5)]
    for record in ok:
        assert record["error"] is None and record["calls"], record
        assert record["forward_passes"]["lml"] == 1
    assert records[1]["error"].startswith("line 2: not valid JSON")
    assert records[3]["error"].startswith("line 5: ") and "unsupported type 'str'" in records[3]["error"]
    assert records[4]["error"].startswith("line 6: ") and "query" in records[4]["error"]
    assert not (tmp_path / "unused.sqlite").exists()  # --no-record: the store was not touched
    summary = capsys.readouterr().err
    assert "requests" in summary and "errors" in summary and "6" in summary


def test_run_without_models_says_how_to_get_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = tmp_path / "requests.jsonl"
    write_requests(requests)
    config = tmp_path / "no-models.yaml"
    config.write_text("models:\n  dir: null\n")  # a config that names no models directory
    assert main(["run", str(requests), "--config", str(config), "--no-record"]) == 2
    err = capsys.readouterr().err
    assert "hyfunc models tiny" in err and "--models" in err
    assert "Traceback" not in err


def test_run_with_missing_models_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = tmp_path / "requests.jsonl"
    write_requests(requests)
    assert main(["run", str(requests), "--models", str(tmp_path / "nowhere"), "--no-record"]) == 2
    assert "hyfunc models tiny" in capsys.readouterr().err


def test_run_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "none.jsonl"), "--models", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_run_summary_has_a_row_for_every_cascade_stage() -> None:
    import io

    from hyfunc.cli import summarize
    from hyfunc.stages import CASCADE_STAGES

    timings = {stage: float(i + 1) for i, stage in enumerate(CASCADE_STAGES)}
    out = io.StringIO()
    summary = summarize([{"calls": [], "timings_ms": timings}], out)
    assert {"lms_wait", "program", "sample"} <= set(CASCADE_STAGES)
    for stage in CASCADE_STAGES:
        assert summary[f"{stage}_ms_p50"] == summary[f"{stage}_ms_p95"] == timings[stage]
        assert f"{stage} ms p50 / p95" in out.getvalue()
