"""Seal-Tools: loader, `hyfunc eval seal` scoring, generated training data (BFCL kept out)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from hyfunc.data.seal_tools import (
    _JOINERS,
    BfclExclusions,
    SealDataMissing,
    generate_examples,
    generate_listed_calls,
    load_seal_library,
    load_seal_split,
    seal_data_dir,
    seal_training_examples,
    write_training_data,
)
from hyfunc.schema import Call, CallResult, validate_call

# A handful of records written for these tests in the Seal-Tools format (not copied from it).
TOOLS = [
    {"api_name": "getTideTimes", "api_description": "Retrieve high and low tide times for a harbour",
     "field": "Oceanography/Tides", "parameters": {
         "harbour": {"type": "str", "description": "Name of the harbour (e.g., Brest, Dover)"},
         "days": {"type": "int", "description": "How many days ahead (e.g., 1, 3)"}},
     "required": ["harbour"], "responses": {"times": {"type": "str", "description": "Tide table"}}},
    {"api_name": "getWaveHeight", "api_description": "Get the significant wave height at a buoy",
     "field": "Oceanography/Waves", "parameters": {
         "buoy_id": {"type": "str", "description": "Identifier of the buoy"},
         "metric": {"type": "bool", "description": "Report in metres"}},
     "required": ["buoy_id"], "responses": {"height": {"type": "float", "description": "Wave height"}}},
    {"api_name": "bookFerry", "api_description": "Book a ferry crossing",
     "field": "Travel/Ferries", "parameters": {
         "route": {"type": "str", "description": "Crossing (e.g., Dover-Calais)"},
         "passengers": {"type": "int", "description": "Number of passengers"},
         "price_limit": {"type": "float", "description": "Highest fare accepted"}},
     "required": ["route", "passengers"], "responses": {"booking": {"type": "str", "description": "Reference"}}},
    {"api_name": "getLighthouseInfo", "api_description": "Information about a lighthouse",
     "field": "Oceanography/Tides", "parameters": {"name": {"type": "str", "description": "Lighthouse name"}},
     "required": ["name"], "responses": {}},
    {"api_name": "findMarina", "api_description": "Find a marina near a town", "field": "Travel/Ferries",
     "parameters": {"town": {"type": "str", "description": "Town (e.g., Cowes)"}}, "required": ["town"], "responses": {}},
    {"api_name": "getSeaTemperature", "api_description": "Sea surface temperature", "field": "Oceanography/Waves",
     "parameters": {"location": {"type": "str", "description": "Place (e.g., Biarritz)"}}, "required": ["location"],
     "responses": {}},
]
RECORDS = [
    {"id": "test_in_domain-easy-0", "query": "When are the tides in Brest for the next 3 days?",
     "calling": [{"api": "getTideTimes", "parameters": {"harbour": "Brest", "days": "3"}, "responses": ["API_call_0"]}]},
    {"id": "test_in_domain-easy-1", "query": "Wave height at buoy 62029 in metres please.",
     "calling": [{"api": "getWaveHeight", "parameters": {"buoy_id": "62029", "metric": "True"}, "responses": ["API_call_0"]}]},
    {"id": "test_in_domain-difficult-2", "query": "Book Dover-Calais for 2 people under 80.5 and tell me the tides at Dover.",
     "calling": [{"api": "bookFerry", "parameters": {"route": "Dover-Calais", "passengers": "2", "price_limit": "80.5"},
                  "responses": ["API_call_0"]},
                 {"api": "getTideTimes", "parameters": {"harbour": "Dover"}, "responses": ["API_call_1"]}]},
    {"id": "test_in_domain-difficult-3", "query": "Find the wave height at the buoy near the lighthouse Ar-Men.",
     "calling": [{"api": "getLighthouseInfo", "parameters": {"name": "Ar-Men"}, "responses": ["API_call_0"]},
                 {"api": "getWaveHeight", "parameters": {"buoy_id": "API_call_0"}, "responses": ["API_call_1"]}]},
]


def write_lines(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def seal_dir(tmp_path: Path) -> Path:
    write_lines(tmp_path / "tool.jsonl", TOOLS)
    write_lines(tmp_path / "test_in_domain.jsonl", RECORDS)
    write_lines(tmp_path / "dev.jsonl", [dict(r, id=r["id"].replace("test_in_domain", "dev"), query="Dev: " + r["query"])
                                         for r in RECORDS[:3]])
    write_lines(tmp_path / "test_out_domain.jsonl", [OUT_OF_DOMAIN])
    return tmp_path


# The out-of-domain test split's tool (getSeaTemperature) must never reach training data.
OUT_OF_DOMAIN = {"id": "test_out_domain-easy-0", "query": "Sea temperature in Biarritz?",
                 "calling": [{"api": "getSeaTemperature", "parameters": {"location": "Biarritz"}, "responses": []}]}


def test_library_converts_tools(seal_dir):
    library = load_seal_library(seal_dir)
    assert library.report.errors == [] and len(library.tools) == len(TOOLS)
    params = library.tools["getTideTimes"].function.parameters
    assert params.required == ["harbour"]
    assert params.properties["days"].type == "integer" and params.properties["harbour"].type == "string"
    assert library.tools["getWaveHeight"].function.parameters.properties["metric"].type == "boolean"
    assert library.tools["bookFerry"].function.parameters.properties["price_limit"].type == "number"


def test_split_coerces_gold_and_flags_nested(seal_dir):
    examples, report = load_seal_split("test_in_domain", seal_dir, check_answers=False)
    assert report.errors == [] and [e.id for e in examples] == [r["id"] for r in RECORDS]
    assert examples[0].answers == [Call(name="getTideTimes", arguments={"harbour": "Brest", "days": 3})]
    assert examples[1].answers[0].arguments == {"buoy_id": "62029", "metric": True}
    assert examples[2].answers[0].arguments == {"route": "Dover-Calais", "passengers": 2, "price_limit": 80.5}
    assert [e.nested for e in examples] == [False, False, False, True]
    assert [e.difficulty for e in examples] == ["easy", "easy", "difficult", "difficult"]
    for ex in examples:
        assert len(ex.tools) == 5 and {c.name for c in ex.answers} <= {t.name for t in ex.tools}
        # same-field tools come first among the distractors
        gold_fields = {TOOLS[[t["api_name"] for t in TOOLS].index(c.name)]["field"] for c in ex.answers}
        assert any(t["field"] in gold_fields for t in TOOLS if t["api_name"] in {x.name for x in ex.tools} - {c.name for c in ex.answers})
    again, _ = load_seal_split("test_in_domain", seal_dir, check_answers=False)
    assert [[t.name for t in e.tools] for e in again] == [[t.name for t in e.tools] for e in examples]  # deterministic


def test_given_candidate_lists_win_and_bad_records_are_reported(seal_dir):
    (seal_dir / "candidates_test_in_domain.json").write_text(json.dumps({"test_in_domain-easy-0": ["findMarina", "getTideTimes"]}))
    write_lines(seal_dir / "test_in_domain.jsonl", [RECORDS[0], {"id": "x-1", "query": "hi", "calling": [{"api": "nope"}]}, "{broken"])
    (seal_dir / "test_in_domain.jsonl").write_text((seal_dir / "test_in_domain.jsonl").read_text().replace('"{broken"', "{broken"))
    examples, report = load_seal_split("test_in_domain", seal_dir)
    assert [t.name for t in examples[0].tools] == ["findMarina", "getTideTimes"]
    assert [pos for pos, _ in report.errors] == [2, 3]
    assert "unknown api 'nope'" in report.errors[0][1] and "invalid JSON" in report.errors[1][1]


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HYFUNC_SEAL_DIR", raising=False)
    with pytest.raises(SealDataMissing, match="git clone https://github.com/fairyshine/Seal-Tools"):
        seal_data_dir(tmp_path / "nowhere")
    with pytest.raises(SealDataMissing, match="no dev.jsonl"):
        seal_data_dir(tmp_path, "dev")
    monkeypatch.setenv("HYFUNC_SEAL_DIR", str(tmp_path))
    assert seal_data_dir() == tmp_path


def test_vendored_test_split_loads():
    examples, report = load_seal_split("test_in_domain", check_answers=False)
    assert report.errors == [] and len(examples) == 700
    assert all(len(e.tools) == 5 for e in examples)
    assert sum(not e.gold_in_candidates for e in examples) == 2  # the authors' lists miss a gold tool twice


class Oracle:
    model_versions = {"name": "oracle"}

    def __init__(self, examples, wrong_ids=()):
        self.gold = {ex.id: ex.answers for ex in examples}
        self.wrong = set(wrong_ids)

    def run(self, requests):
        out = []
        for r in requests:
            calls = [Call(name=c.name, arguments=dict(c.arguments)) for c in self.gold[r.id]]
            if r.id in self.wrong:
                calls = calls[:1]
                calls[0].arguments = {k: "zzz" for k in calls[0].arguments}
            out.append(CallResult(id=r.id, calls=calls))
        return out


def test_eval_seal_scores_and_writes_raw_outputs(seal_dir, tmp_path):
    from hyfunc.eval.seal import evaluate_seal

    examples, _ = load_seal_split("test_in_domain", seal_dir, check_answers=False)
    res = evaluate_seal(Oracle(examples), data=seal_dir, out_dir=tmp_path / "out", progress=False, log=lambda _m: None)
    assert res["exact_match"] == 1.0 and res["function_f1"] == 1.0 and res["parameter_f1"] == 1.0 and res["n"] == 4
    lines = (tmp_path / "out" / "seal_test_in_domain_result.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["valid"] for line in lines)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["exact_match"] == 1.0

    # the two-call question answered with one call of wrong values: function P 1, R 1/2
    res = evaluate_seal(Oracle(examples, ["test_in_domain-difficult-2"]), data=seal_dir, progress=False, log=lambda _m: None)
    assert res["exact_match"] == 0.75
    assert res["function_precision"] == 1.0 and res["function_recall"] == round(5 / 6, 4)
    assert res["by_difficulty"]["easy"]["exact_match"] == 1.0 and res["by_difficulty"]["difficult"]["exact_match"] == 0.5
    assert res["without_nested"]["n"] == 3


def test_canonical_values_compare_types_leniently():
    from hyfunc.eval.seal import canonical

    assert canonical("2") == canonical(2) == canonical(2.0)
    assert canonical(" Brest ") == "Brest" and canonical(True) is True and canonical("True") == "True"


def test_generated_training_data_is_valid_xlam_with_provenance(seal_dir, tmp_path):
    from hyfunc.data.loaders import load_xlam

    library = load_seal_library(seal_dir)
    generated = generate_examples(library, per_tool=4, seed=3, no_call_share=0.2, two_call_share=0.3)
    assert generated and any(not ex.answers for ex in generated) and any(len(ex.answers) == 2 for ex in generated)
    for ex in generated:
        for call in ex.answers:
            assert validate_call(call, ex.tools) == []
            for value in call.arguments.values():  # extractive: every value is written in the query
                words = ("on", "off", "true", "false") if isinstance(value, bool) else (str(value).lower(),)
                assert any(w in ex.query.lower() for w in words), (value, ex.query)
    pytest.importorskip("bfcl_eval")  # writing training data excludes BFCL, which needs its files
    info = write_training_data(tmp_path / "seal.jsonl", seal_dir, per_tool=2)
    loaded, report = load_xlam(tmp_path / "seal.jsonl")
    assert report.errors == [] and len(loaded) == info["records"] > 0
    card = json.loads((tmp_path / "seal.jsonl.provenance.json").read_text())
    assert card["licence"] == "Apache-2.0" and card["url"] == "https://github.com/fairyshine/Seal-Tools"
    assert card["dev_examples"] == 3 and card["bfcl_excluded"] is True  # the nested dev record is never trained on


def test_bfcl_function_or_question_never_reaches_training_data(seal_dir):
    """BFCL is evaluation only: a Seal tool sharing a BFCL function's name and a record repeating a
    BFCL question are dropped; on the vendored library, no generated record names a BFCL function
    or repeats a BFCL question (compared against every data file bfcl_eval ships)."""
    pytest.importorskip("bfcl_eval")
    from hyfunc.data.loaders import bfcl_data_dir

    exclusions = BfclExclusions.load()
    first = json.loads((bfcl_data_dir() / "BFCL_v4_simple_python.json").open().readline())
    bfcl_name, bfcl_question = first["function"][0]["name"], first["question"][0][-1]["content"]
    clash = {"api_name": bfcl_name, "api_description": "Clashes with BFCL", "field": "Oceanography/Tides",
             "parameters": {}, "required": [], "responses": {}}
    write_lines(seal_dir / "tool.jsonl", [*TOOLS, clash])
    write_lines(seal_dir / "dev.jsonl", [{"id": "dev-easy-9", "query": bfcl_question,
                                          "calling": [{"api": "findMarina", "parameters": {"town": "Cowes"}}]}])
    examples, info = seal_training_examples(seal_dir, per_tool=3, exclusions=exclusions)
    assert examples and info["dev_examples"] == 0
    assert all(t.name != bfcl_name for ex in examples for t in ex.tools)

    # the comparison itself is not vacuous: BFCL's names and questions are in the exclusion sets
    assert not exclusions.tool_allowed(bfcl_name) and not exclusions.query_allowed(bfcl_question)
    assert len(exclusions.names) > 1500 and len(exclusions.questions) > 3000


def test_training_never_reads_an_evaluation_split(seal_dir, monkeypatch):
    """No silent fallback to the vendored test_in_domain split, its queries never trained on, and
    the out-of-domain test split's tools never seen (as gold or as candidate)."""
    from hyfunc.data.seal_tools import VENDORED_DIR, SealDataMissing

    monkeypatch.delenv("HYFUNC_SEAL_DIR", raising=False)
    with pytest.raises(SealDataMissing, match="needs --data"):
        seal_training_examples(per_tool=1, exclusions=BfclExclusions(set(), set()))
    with pytest.raises(SealDataMissing, match="evaluation split"):
        seal_training_examples(VENDORED_DIR, per_tool=1, exclusions=BfclExclusions(set(), set()))
    (seal_dir / "test_out_domain.jsonl").unlink()
    with pytest.raises(SealDataMissing, match="test_out_domain"):
        seal_training_examples(seal_dir, per_tool=1, exclusions=BfclExclusions(set(), set()))
    write_lines(seal_dir / "test_out_domain.jsonl", [OUT_OF_DOMAIN])
    # a dev record that repeats a test question is dropped
    write_lines(seal_dir / "dev.jsonl", [dict(RECORDS[0], id="dev-easy-0")])
    examples, info = seal_training_examples(seal_dir, per_tool=6, exclusions=BfclExclusions(set(), set()))
    assert info["dev_examples"] == 0 and info["excluded_out_of_domain_tools"] == 1 and examples
    assert all(t.name != "getSeaTemperature" for ex in examples for t in ex.tools)
    tests = {r["query"] for r in RECORDS} | {OUT_OF_DOMAIN["query"]}
    assert not any(ex.query in tests for ex in examples)


def test_generated_queries_ask_for_several_calls_of_one_tool_or_many(seal_dir):
    library = load_seal_library(seal_dir)
    generated = generate_examples(library, per_tool=30, seed=1, no_call_share=0.1)
    counts = [len(ex.answers) for ex in generated if ex.answers]
    assert max(counts) >= 3 and 1 in counts
    repeated = [ex for ex in generated if len(ex.answers) > 1 and len({c.name for c in ex.answers}) == 1]
    mixed = [ex for ex in generated if len({c.name for c in ex.answers}) > 1]
    assert repeated and mixed
    for ex in repeated:  # the same tool with other values: never the same call twice
        assert len({json.dumps(c.model_dump(), sort_keys=True) for c in ex.answers}) == len(ex.answers)
    # some repeat one tool in one sentence that lists the values ("for 3, 5 and 7"), no joined clauses
    assert any(not any(j.strip(" ,") in ex.query for j in _JOINERS) for ex in repeated)


def test_a_listed_query_names_each_call_value_once_in_one_sentence(seal_dir):
    library = load_seal_library(seal_dir)
    rng = random.Random(0)
    made = []
    for _ in range(40):
        for tool in library.tools.values():
            wanted = rng.choice([2, 3, 4])
            listed = generate_listed_calls(tool, wanted, {}, rng)
            if listed is not None:
                made.append((wanted, *listed))
    assert made
    for wanted, query, calls in made:
        assert len(calls) == wanted and len({c.name for c in calls}) == 1
        varying = [k for k in calls[0].arguments if len({json.dumps(c.arguments[k]) for c in calls}) > 1]
        assert len(varying) == 1 and all(c.arguments.keys() == calls[0].arguments.keys() for c in calls)
        for call in calls:
            assert str(call.arguments[varying[0]]) in query, (query, call)
        assert not any(j.strip(" ,") in query for j in _JOINERS), query


def test_cli_registers_eval_seal():
    from hyfunc.cli import build_parser

    args = build_parser().parse_args(["eval", "seal", "--split", "test_in_domain", "--limit", "5", "--data", "d", "--out", "o"])
    assert args.split == "test_in_domain" and args.limit == 5 and args.data == "d" and args.out == "o"
