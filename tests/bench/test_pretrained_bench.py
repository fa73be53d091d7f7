"""`hyfunc bench pretrained`: skips with a reason when it cannot run, and reports every dtype row."""

from __future__ import annotations

from pathlib import Path

from hyfunc.bench.pretrained import bench_pretrained, markdown_section


def test_skips_without_demo_models_or_a_pulled_base(tmp_path, monkeypatch):
    assert "skipped" in bench_pretrained(None)
    monkeypatch.setenv("HYFUNC_CACHE", str(tmp_path / "empty-cache"))
    out = bench_pretrained(Path("models/demo"), base="smollm2-135m-instruct")
    assert out == {"skipped": "smollm2-135m-instruct is not pulled (`hyfunc models pull smollm2-135m-instruct`)"}
    assert markdown_section(out)[-2].startswith("Skipped — smollm2-135m-instruct is not pulled")


def test_markdown_has_a_row_per_dtype():
    point = {"jobs_per_s": 2.0, "lms_passes_per_job": 20.0, "prompt_computed_per_job": 40.0, "generated_per_job": 18.0,
             "injected_per_job": 70.0}
    row = {"batch 1": point | {"p50_ms_per_call": 450.0, "p95_ms_per_call": 900.0}, "batch 32": point | {"jobs_per_s": 4.5},
           "batch_over_batch1": 2.25, "stream 64 jobs, 32 rows": {"jobs_per_s": 5.0}}
    result = {"base": "smollm2-135m-instruct", "jobs": 32, "targets": {"jobs_per_s_at_batch_32": 4.0, "p50_ms_at_batch_1": 500.0},
              "float32": row, "bfloat16": row}
    lines = markdown_section(result)
    table = [line for line in lines if line.startswith("| float32") or line.startswith("| bfloat16")]
    assert len(table) == 2
    assert "| 450.0 | 900.0 | 2.0 | 4.5 | 2.25 | 5.0 |" in table[0]


def test_cli_reports_the_skip_with_the_base_asked_for(tmp_path, capsys):
    import json

    from hyfunc.cli import main

    assert main(["bench", "pretrained", "--base", "no-such-base", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["results"]["pretrained"]["skipped"].startswith("unknown base 'no-such-base'; known: ")
    assert "smollm2-135m-instruct" in report["results"]["pretrained"]["skipped"]
    assert "## Pretrained LMS (speed)" in (tmp_path / "bench.md").read_text()
