"""The demo task: library shape, determinism, gold validity, copyable values, split disjointness."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hyfunc.data.demo_task import (
    _SLOT,
    SPLITS,
    _phrasings,
    _Sampler,
    demo_domains,
    demo_tools,
    generate_demo_examples,
    generate_demo_traces,
    render_call,
    split_pool,
    tool_phrases,
    write_examples,
)
from hyfunc.schema import Call, ParamSchema, Tool, parse_request, validate_call

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def traces():
    return {split: generate_demo_traces(split, 1500, seed=7) for split in SPLITS}


def is_bare_slot(text: str) -> bool:
    # A phrase that is only an enum slot ("{sort_by}") carries no wording of its own: its
    # words come from the fixed enum phrase mapping, shared by design. Anything else is split.
    return _SLOT.fullmatch(text.strip()) is not None


def leaves(schema: ParamSchema, value: Any, path: str = ""):
    """(path, schema, value) for every scalar in a gold argument tree."""
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from leaves(schema.properties[key], sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(schema.items, item, f"{path}[]")
    else:
        yield path, schema, value


def test_library_size_and_domains():
    tools = demo_tools()
    assert len(tools) >= 40
    assert len({t.name for t in tools}) == len(tools)
    domains = Counter(demo_domains().values())
    assert len(domains) >= 8 and min(domains.values()) >= 3
    text = json.dumps([t.to_json() for t in tools])
    for feature in ('"enum"', '"integer"', '"number"', '"boolean"', '"array"', '"object"'):
        assert text.count(feature) >= 3, feature
    assert all(Tool.model_validate(t.to_json()) == t for t in tools)


def test_every_tool_has_phrasings_in_both_splits():
    names = {t.name for t in demo_tools()}
    assert set(_phrasings()["tools"]) == names
    for name in names:
        train, train_groups = tool_phrases(name, "train")
        held, held_groups = tool_phrases(name, "heldout")
        assert len(train) + len(held) >= 6 and len(train) >= 4 and held, name
        assert not {p.text for p in train} & {p.text for p in held}, name
        assert len(train_groups) == len(held_groups), name
        for tg, hg in zip(train_groups, held_groups, strict=True):
            assert tg and hg, name
            shared = {p.text for p in tg} & {p.text for p in hg}
            assert all(is_bare_slot(text) for text in shared), (name, shared)


@pytest.mark.parametrize("split", SPLITS)
def test_every_template_and_optional_phrase_renders_valid_gold(split):
    tools = {t.name: t for t in demo_tools()}
    rng = random.Random(0)
    for name, tool in tools.items():
        templates, groups = tool_phrases(name, split)
        cases = [(t, []) for t in templates] + [(templates[0], [p]) for g in groups for p in g]
        cases.append((templates[-1], [g[-1] for g in groups]))
        for template, optional in cases:
            rendered = render_call(name, template, optional, _Sampler(rng, split))
            assert validate_call(rendered.call, [tool]) == [], (name, rendered.text, rendered.call)
            assert "{" not in rendered.text, rendered.text
            assert_copyable(rendered.text, tool, rendered.call.arguments)


def assert_copyable(query: str, tool: Tool, arguments: dict) -> None:
    for path, schema, value in leaves(tool.function.parameters, arguments):
        if schema.enum is not None or isinstance(value, bool):
            continue  # chosen among the enum / implied by a fixed phrase
        shown = json.dumps(value) if isinstance(value, (int, float)) else value
        assert shown in query, (path, value, query)


def test_generator_is_deterministic():
    a = generate_demo_examples("train", 200, seed=3)
    b = generate_demo_examples("train", 200, seed=3)
    c = generate_demo_examples("train", 200, seed=4)
    assert [e.to_xlam() for e in a] == [e.to_xlam() for e in b]
    assert [e.query for e in a] != [e.query for e in c]
    with pytest.raises(ValueError):
        generate_demo_examples("test", 1, seed=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("split", SPLITS)
def test_examples_are_valid_and_mixed(traces, split):
    kinds = Counter()
    for trace in traces[split]:
        example = trace.example
        kinds[trace.kind] += 1
        names = [t.name for t in example.tools]
        assert len(set(names)) == len(names)
        gold = {c.name for c in example.answers}
        assert gold <= set(names)
        distractors = len(names) - len(gold)
        assert (3 <= distractors <= 5) if not gold else (2 <= distractors <= 4)
        assert len(example.answers) == {"single": 1, "double": 2, "no_call": 0}[trace.kind]
        for call in example.answers:
            assert validate_call(call, example.tools) == []
            tool = next(t for t in example.tools if t.name == call.name)
            assert_copyable(example.query, tool, call.arguments)
        parse_request({"query": example.query, "tools": [t.to_json() for t in example.tools]})
    total = sum(kinds.values())
    assert 0.08 < kinds["no_call"] / total < 0.16
    assert 0.15 < kinds["double"] / total < 0.25
    doubles = [t.example for t in traces[split] if t.kind == "double"]
    assert any(e.answers[0].name == e.answers[1].name for e in doubles)
    assert any(e.answers[0].name != e.answers[1].name for e in doubles)


def test_pools_split_disjoint():
    for name, values in _phrasings()["pools"].items():
        train, held = split_pool(values, "train"), split_pool(values, "heldout")
        assert held and train, name
        assert not {json.dumps(v) for v in train} & {json.dumps(v) for v in held}, name


def test_heldout_phrases_and_values_never_seen_in_train(traces):
    train_phrases = {p for t in traces["train"] for p in t.phrases}
    held_phrases = {p for t in traces["heldout"] for p in t.phrases}
    shared = {p for p in train_phrases & held_phrases if not is_bare_slot(p)}
    assert not shared, shared

    def values(split):
        seen = set()
        for trace in traces[split]:
            for call in trace.example.answers:
                tool = next(t for t in trace.example.tools if t.name == call.name)
                for path, schema, value in leaves(tool.function.parameters, call.arguments):
                    if schema.enum is None and not isinstance(value, bool):
                        seen.add((call.name, path, json.dumps(value)))
        return seen

    train_values, held_values = values("train"), values("heldout")
    assert held_values and not train_values & held_values
    train_queries = {t.example.query for t in traces["train"]}
    assert not train_queries & {t.example.query for t in traces["heldout"]}


def test_example_files_are_current_and_valid(tmp_path):
    requests_path, expected_path = write_examples(tmp_path)
    for path in (requests_path, expected_path):
        assert path.read_text() == (REPO / "examples" / path.name).read_text(), f"regenerate examples/{path.name}"
    requests = [json.loads(line) for line in requests_path.read_text().splitlines()]
    expected = {e["id"]: e["calls"] for e in map(json.loads, expected_path.read_text().splitlines())}
    assert len(requests) >= 24 and [r["id"] for r in requests] == list(expected)
    counts = Counter(len(expected[r["id"]]) for r in requests)
    assert counts[0] >= 3 and counts[2] >= 4
    for request in requests:
        parsed = parse_request(request)
        for call in expected[request["id"]]:
            assert validate_call(Call(**call), parsed.tools) == []
