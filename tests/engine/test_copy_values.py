"""Extractive values (cascade.copy_values): string and number values are whole-word spans of the query."""

from __future__ import annotations

import re

import pytest

from hyfunc.cascade.engine import Cascade
from hyfunc.config import CascadeConfig
from hyfunc.models.bundle import ModelBundle
from hyfunc.schema import CallRequest, Tool

TOOLS = [
    Tool.model_validate(
        {
            "name": "book_table",
            "description": "Book a table",
            "parameters": {
                "type": "object",
                "properties": {
                    "restaurant": {"type": "string"},
                    "people": {"type": "integer"},
                    "budget": {"type": "number"},
                    "notes": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["restaurant", "people", "budget"],
            },
        }
    )
]

QUERIES = [
    "Book Chez Panisse for 4 people, budget 120.5 dollars, window seat",
    "Table at Noma for 12 tonight with a budget of 300",
    "reserve Sushi Saito, 2 guests, 95.25 max, birthday cake",
]


@pytest.fixture(scope="module")
def bundle(tiny_models_dir):
    return ModelBundle.load(tiny_models_dir)


def _words(query: str) -> str:
    return " " + re.sub(r"[^\w.-]", " ", query) + " "


@pytest.mark.parametrize("seed_query", QUERIES)
def test_values_are_whole_word_spans(bundle, tmp_path, seed_query):
    cascade = Cascade(bundle, CascadeConfig(copy_values=True, top_k=1), tmp_path / "index")
    result = cascade.run([CallRequest(id="x", query=seed_query, tools=TOOLS)])[0]
    assert result.error is None and result.calls
    padded = _words(seed_query)
    for call in result.calls:
        args = call.arguments
        assert f" {args['restaurant']} " in padded, args
        assert f" {args['people']} " in padded or str(args["people"]) not in seed_query, args
        budget = args["budget"]
        text = str(int(budget)) if float(budget).is_integer() and str(int(budget)) in seed_query else str(budget)
        assert f" {text} " in padded, args
        for note in args.get("notes", []):
            assert f" {note} " in padded, args


def test_copy_mode_off_by_default_and_teacher_unaffected(bundle):
    from hyfunc.cascade.template import MachineLimits, TemplateMachine
    from hyfunc.schema import Call

    assert CascadeConfig().copy_values is False
    machine = TemplateMachine(bundle.lms_tokenizer, MachineLimits(copy_values=True))
    gold = [Call(name="book_table", arguments={"restaurant": "Not In Query", "people": 3, "budget": 9.5})]
    record = machine.teacher(TOOLS, gold)  # training sequences never depend on the query
    generated = [t for t, g in zip(record.ids, record.generated, strict=True) if g]
    assert machine.replay(TOOLS, generated) == gold
