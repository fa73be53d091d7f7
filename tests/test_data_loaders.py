"""Loaders keep good records, report bad ones with position and reason, and convert dialects."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hyfunc.data.loaders import (
    DataError,
    bfcl_data_dir,
    bfcl_to_json_schema,
    load_bfcl,
    load_bfcl_category,
    load_xlam,
    write_xlam,
)

# The tests that read BFCL's shipped data files need the bfcl extra (pip install -e '.[bfcl]').
needs_bfcl = pytest.mark.skipif(importlib.util.find_spec("bfcl_eval") is None, reason="bfcl_eval not installed")

WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


def good_record(**overrides):
    record = {
        "query": "Weather in Paris?",
        "tools": [WEATHER],
        "answers": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
    }
    record.update(overrides)
    return record


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


BAD_RECORDS = [
    (good_record(answers=[{"name": "get_forecast", "arguments": {}}]), "unknown function 'get_forecast'"),
    (good_record(answers=[{"name": "get_weather", "arguments": {"days": 3}}]), "city: required but missing"),
    (good_record(answers=[{"name": "get_weather", "arguments": {"city": 7}}]), "expected string"),
    (good_record(tools=[{"name": "x", "parameters": {"type": "object", "properties": {"a": {"type": "dict"}}}}]), "unsupported type 'dict'"),
    (good_record(query="  "), "query"),
    (good_record(tools=[]), "tools: empty list"),
    ({"query": "hi", "tools": [WEATHER]}, "answers: missing"),
    (good_record(tools=[WEATHER, WEATHER]), "duplicate function names"),
]


def test_jsonl_reports_each_bad_line_and_keeps_the_good(tmp_path):
    lines = [good_record()] + [r for r, _ in BAD_RECORDS] + ["{not json", good_record(answers=[])]
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    examples, report = load_xlam(path, progress=False)
    assert [e.position for e in examples] == [1, len(lines)]
    assert examples[1].answers == []  # a no-call example is kept
    assert report.good == 2 and report.total == len(lines)
    positions = [p for p, _ in report.errors]
    assert positions == list(range(2, len(lines)))
    for (_, reason), (_, expected) in zip(report.errors, BAD_RECORDS, strict=False):
        assert expected in reason, reason
    assert "invalid JSON" in report.errors[-1][1]
    assert "9:" in report.summary()


def test_json_array_positions_are_indices(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([good_record(), BAD_RECORDS[0][0], good_record()]))
    examples, report = load_xlam(path, progress=False)
    assert [e.position for e in examples] == [0, 2]
    assert report.errors[0][0] == 1


def test_strict_raises_listing_bad_records(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [good_record(), BAD_RECORDS[1][0], BAD_RECORDS[2][0]])
    with pytest.raises(DataError) as err:
        load_xlam(path, strict=True, progress=False)
    assert [p for p, _ in err.value.errors] == [2, 3]
    assert "2: answers[0]" in str(err.value)
    load_xlam(write_jsonl(tmp_path / "ok.jsonl", [good_record()]), strict=True, progress=False)


def test_xlam_original_encoding_and_dialect(tmp_path):
    # As published: tools/answers are JSON strings and parameters a flat {name: spec} map.
    tools = [{
        "name": "live_giveaways_by_type",
        "description": "Giveaways by type.",
        "parameters": {
            "type": {"description": "Kind of giveaway.", "type": "str", "default": "game"},
            "ids": {"description": "Ids.", "type": "List[int]"},
            "limit": {"description": "Max.", "type": "int, optional"},
        },
    }]
    answers = [{"name": "live_giveaways_by_type", "arguments": {"type": "beta", "ids": [1, 2]}}]
    record = {"id": 0, "query": "Beta giveaways?", "tools": json.dumps(tools), "answers": json.dumps(answers)}
    examples, report = load_xlam(write_jsonl(tmp_path / "x.jsonl", [record]), progress=False)
    assert report.errors == []
    params = examples[0].tools[0].function.parameters
    assert params.properties["type"].type == "string"
    assert params.properties["ids"].items.type == "integer"
    assert params.required == ["ids"]  # defaulted and optional parameters are not required
    assert examples[0].answers[0].arguments == {"type": "beta", "ids": [1, 2]}


def test_openai_tools_and_round_trip(tmp_path):
    record = good_record(tools=[{"type": "function", "function": WEATHER}])
    examples, _ = load_xlam(write_jsonl(tmp_path / "a.jsonl", [record]), progress=False)
    write_xlam(tmp_path / "b.jsonl", examples)
    again, report = load_xlam(tmp_path / "b.jsonl", progress=False)
    assert report.errors == [] and again[0].to_xlam() == examples[0].to_xlam()


def test_bfcl_dialect_conversion():
    node = {
        "type": "dict",
        "properties": {
            "x": {"type": "float", "default": 1.0},
            "pair": {"type": "tuple", "items": {"type": "float"}},
            "free": {"type": "any", "description": "anything"},
            "inner": {"type": "dict", "properties": {"k": {"type": "string", "enum": ["a", "b"]}}, "required": ["k"]},
            "tags": {"type": "array", "items": {"type": "string"}, "enum": ["u", "v"]},
        },
        "required": ["x"],
    }
    out = bfcl_to_json_schema(node)
    assert out["type"] == "object" and out["required"] == ["x"]
    props = out["properties"]
    assert props["x"] == {"type": "number", "default": 1.0}
    assert props["pair"] == {"type": "array", "items": {"type": "number"}}
    assert props["free"] == {"description": "anything"}
    assert props["inner"]["type"] == "object" and props["inner"]["properties"]["k"]["enum"] == ["a", "b"]
    assert props["tags"] == {"type": "array", "items": {"type": "string", "enum": ["u", "v"]}}


def test_bfcl_gold_takes_first_value_and_skips_omitted(tmp_path):
    function = {"name": "area", "parameters": {"type": "dict", "properties": {
        "base": {"type": "integer"}, "unit": {"type": "string"}, "z": {"type": "integer"},
        "shape": {"type": "dict", "properties": {"kind": {"type": "string"}, "sides": {"type": "integer"}}},
    }, "required": ["base"]}}
    question = {"id": "q1", "question": [[{"role": "user", "content": "Area of base 10?"}]], "function": [function]}
    missing = {"id": "q2", "question": [[{"role": "user", "content": "hi"}]], "function": [function]}
    truth = {"id": "q1", "ground_truth": [{"area": {
        "base": [10, 10.0], "unit": ["units", ""], "z": ["", 0], "shape": [{"kind": ["square"], "sides": ["", 4]}],
    }}]}
    qpath = write_jsonl(tmp_path / "q.json", [question, missing])
    apath = write_jsonl(tmp_path / "a.json", [truth])
    examples, report = load_bfcl(qpath, apath, progress=False)
    assert examples[0].answers[0].arguments == {"base": 10, "unit": "units", "shape": {"kind": "square"}}
    assert examples[0].id == "q1" and examples[0].query == "Area of base 10?"
    assert report.errors == [(2, "id 'q2': no possible answer")]
    with pytest.raises(ValueError):
        load_bfcl(qpath)  # no answers and not declared no-call


@needs_bfcl
def test_bfcl_data_dir_found_without_import():
    assert (bfcl_data_dir() / "BFCL_v4_simple_python.json").is_file()


@needs_bfcl
@pytest.mark.parametrize(
    ("category", "minimum", "no_call"),
    [("simple", 395, False), ("multiple", 195, False), ("parallel", 195, False),
     ("parallel_multiple", 195, False), ("irrelevance", 240, True)],
)
def test_shipped_bfcl_categories_load(category, minimum, no_call):
    examples, report = load_bfcl_category(category, progress=False)
    assert report.good >= minimum, report.summary()
    assert all((e.answers == []) == no_call for e in examples)
    # The few skipped records are data bugs in BFCL itself; each has a reason.
    assert all(reason.startswith("id ") for _, reason in report.errors)


@needs_bfcl
@pytest.mark.parametrize("category", ["simple_java", "simple_javascript"])
def test_java_and_javascript_docs_prepared_as_bfcl_does(category):
    """BFCL turns every Java/JavaScript parameter into a string in that language's syntax; so do we."""
    examples, report = load_bfcl_category(category, progress=False)
    assert report.good >= 0.95 * report.total, report.summary()
    language = "Java" if category == "simple_java" else "JavaScript"
    for ex in examples:
        for name, node in ex.tools[0].function.parameters.properties.items():
            assert node.type == "string", (ex.id, name)
            assert f"{language} object in string representation" in node.description or \
                f"This is {language} " in node.description, node.description
        assert all(isinstance(v, str) for call in ex.answers for v in call.arguments.values())


@needs_bfcl
def test_check_answers_false_keeps_every_question():
    """Evaluation runs BFCL questions whose gold does not fit the schema (the checker judges)."""
    from hyfunc.data.loaders import bfcl_non_live_categories

    categories = bfcl_non_live_categories()
    assert categories[:3] == ["simple_python", "simple_java", "simple_javascript"] and "irrelevance" in categories
    for category in categories:
        examples, report = load_bfcl_category(category, progress=False, check_answers=False)
        lines = sum(1 for line in (bfcl_data_dir() / f"BFCL_v4_{category}.json").open() if line.strip())
        assert report.errors == [] and len(examples) == lines, report.summary()


@needs_bfcl
def test_resolve_categories_defaults_groups_and_errors():
    from hyfunc.data.loaders import bfcl_non_live_categories
    from hyfunc.eval.bfcl import resolve_categories

    assert [stem for _, stem in resolve_categories(None)] == bfcl_non_live_categories()
    assert resolve_categories(["simple", "multiple", "simple_python"]) == [("simple", "simple_python"), ("multiple", "multiple")]
    assert [stem for _, stem in resolve_categories(["non_live"])] == bfcl_non_live_categories()
    with pytest.raises(ValueError, match="unknown or unsupported BFCL category 'multi_turn_base'"):
        resolve_categories(["multi_turn_base"])
