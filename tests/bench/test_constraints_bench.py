"""`hyfunc bench constraints` on the tiny models: every part runs and reports exact counts
(no timing assertions: timings are only reported)."""

from __future__ import annotations

import importlib.util

import pytest

from hyfunc.bench.constraints import (
    bench_constraints,
    markdown_section,
    measure_library,
    measure_sampler,
    measure_tables,
    workload,
)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_models_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_models_dir / "lms"))


def test_tables_and_sampler_parts(tiny_tokenizer) -> None:
    items = workload(4)
    assert len(items) == 4 and all(item.gold for item in items)
    tables = measure_tables(tiny_tokenizer, items)
    steps = tables.pop("_steps")
    # Every decision of every job was driven (teacher picks replayed through inference programs).
    assert len(steps) == round(tables["decisions_per_job"] * len(items))
    assert tables["vocab"] == len(tiny_tokenizer) and tables["setup_p50_ms"] > 0
    sampler = measure_sampler(len(tiny_tokenizer), steps, repeats=1)
    assert set(sampler) == {"batch 1", "batch 32"}
    assert {"sampler ms", "old per-row ms", "full head argmax ms", "old / sampler"} <= set(sampler["batch 1"])


@pytest.mark.parametrize("library", ["llguidance", "xgrammar"])
def test_libraries_accept_the_gold_json(tiny_tokenizer, library) -> None:
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed (it is only benchmarked, never a dependency)")
    from hyfunc.bench import constraints

    make = {"llguidance": constraints._LLGuidance, "xgrammar": constraints._XGrammar}[library]
    result = measure_library(make, tiny_tokenizer, workload(3))
    assert result["gold_rejected_jobs"] == 0  # the call schema admits every gold answer
    assert result["steps_per_job"] > 0


def test_whole_bench_and_its_markdown(tiny_models_dir, monkeypatch, tmp_path) -> None:
    import hyfunc.bench.constraints as bench

    monkeypatch.setenv("HYFUNC_CACHE", str(tmp_path / "cache"))  # no pulled bases: reported as skipped
    monkeypatch.setattr(bench, "LIBRARIES", ())  # measured in their own test above
    monkeypatch.setattr(
        bench, "bench_vocabularies", lambda demo_dir, extra: ({"tiny": _tiny(tiny_models_dir)}, {"qwen (151k)": "skipped"})
    )
    result = bench_constraints(tiny_models_dir, n=3, log=lambda _m: None)
    assert result["jobs"] == 3 and "tiny" in result["vocabularies"]
    assert result["share"]["batch"] == 32 and 0 < result["share"]["share"] < 1
    text = "\n".join(markdown_section(result))
    assert "| tiny |" in text and "share" in text


def _tiny(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory / "lms"))


def test_cli_parses_bench_constraints() -> None:
    from hyfunc.cli import build_parser
    from hyfunc.cli.eval import _named_dirs

    args = build_parser().parse_args(["bench", "constraints", "--tokenizer", "gemma=/x/y", "--tokenizer", "b=c"])
    assert args.kind == "constraints" and _named_dirs(args.tokenizer) == {"gemma": "/x/y", "b": "c"}
    with pytest.raises(SystemExit, match="NAME=DIR"):
        _named_dirs(["no-equals-sign"])
