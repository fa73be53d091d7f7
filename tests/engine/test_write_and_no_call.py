"""The LMS's own decisions beyond copying: write a value that is not in the query (the write
marker), copy whole numbers as people write them, and answer "no call" as its first decision."""

from __future__ import annotations

import copy

import pytest

from hyfunc.cascade.template import (
    WRITE_MARKER,
    MachineLimits,
    TemplateError,
    TemplateMachine,
    number_literals,
)
from hyfunc.models.soft_slot import ensure_write_marker
from hyfunc.schema import Call, Tool

STOCK = Tool.model_validate({
    "name": "get_quote",
    "description": "Latest quote for a stock",
    "parameters": {
        "type": "object",
        "properties": {"ticker": {"type": "string"}, "amount": {"type": "number"}, "rate": {"type": "number"}},
        "required": ["ticker"],
    },
})


@pytest.fixture(scope="module")
def marked_tokenizer(tiny_bundle):
    tokenizer = copy.deepcopy(tiny_bundle.lms_tokenizer)
    ensure_write_marker(tokenizer)
    return tokenizer


def _machine(tokenizer, **limits) -> TemplateMachine:
    return TemplateMachine(tokenizer, MachineLimits(copy_values=True, **limits))


def _generated(record):
    return [t for t, g in zip(record.ids, record.generated, strict=True) if g]


def test_a_value_missing_from_the_query_is_written_after_the_marker(marked_tokenizer):
    machine = _machine(marked_tokenizer, write_values=True)
    marker = machine.write_id
    query = "What is Apple Inc trading at today?"
    written = [Call(name="get_quote", arguments={"ticker": "AAPL"})]
    record = machine.teacher([STOCK], written, source=query)
    assert marker in _generated(record)
    # where the marker was chosen, the model could have copied instead: both were on offer
    step = record.allowed[_generated(record).index(marker)]
    assert step is not None and marker in step and len(step) > 1
    assert machine.replay([STOCK], _generated(record), source=query) == written

    copied = [Call(name="get_quote", arguments={"ticker": "Apple"})]
    record = machine.teacher([STOCK], copied, source=query)
    assert marker not in _generated(record)
    assert machine.replay([STOCK], _generated(record), source=query) == copied


def test_without_write_values_a_value_is_copy_only(marked_tokenizer):
    machine = _machine(marked_tokenizer)
    assert machine.write_id is None
    program = machine.program([STOCK], source="What is Apple trading at?")
    step = next(s for s in program if hasattr(s, "allowed") and isinstance(s.allowed, list) and len(s.allowed) > 1
                and int(marked_tokenizer.convert_tokens_to_ids(WRITE_MARKER)) not in s.allowed)
    assert step is not None


def test_write_values_needs_the_marker_in_the_tokenizer(tiny_bundle):
    with pytest.raises(ValueError, match="write"):
        TemplateMachine(tiny_bundle.lms_tokenizer, MachineLimits(copy_values=True, write_values=True))


@pytest.mark.parametrize(
    ("text", "literals"),
    [
        ("a loan of $200,000 at 5%", {"200000", "5"}),
        ("1.5M users and 3 billion views", {"1.5", "1500000", "3", "3000000000"}),
        ("a 10k run", {"10", "10000"}),
        ("pick 1,2,3", {"1", "2", "3"}),
        ("on 2026-04-18 at pm2.5 in 5m", set()),
        ("between -3 and 12.5 degrees", {"-3", "12.5"}),
    ],
)
def test_number_literals_are_whole_numbers(text, literals):
    assert set(number_literals(text)) == literals


def test_a_thousands_number_is_copied_whole_or_written(marked_tokenizer):
    machine = _machine(marked_tokenizer, write_values=True)
    query = "Quote AAPL for a position of $200,000 at 5%"
    whole = [Call(name="get_quote", arguments={"ticker": "AAPL", "amount": 200000, "rate": 0.05})]
    record = machine.teacher([STOCK], whole, source=query)
    generated = _generated(record)
    # 200000 is a literal of the query (copied); 0.05 is not (written after the marker)
    assert generated.count(machine.write_id) == 1
    assert machine.replay([STOCK], generated, source=query) == whole
    # "200" is no literal of the query any more (only 200000 is): a gold 200 is written, not copied
    part = [Call(name="get_quote", arguments={"ticker": "AAPL", "amount": 200})]
    assert _generated(machine.teacher([STOCK], part, source=query)).count(machine.write_id) == 1


def test_no_call_is_the_first_decision(tiny_bundle):
    machine = TemplateMachine(tiny_bundle.lms_tokenizer, MachineLimits(no_call=True))
    record = machine.teacher([STOCK], [])
    assert sum(record.generated) == 1 and record.allowed[0] is not None and len(record.allowed[0]) == 2
    assert machine.replay([STOCK], _generated(record)) == []
    gold = [Call(name="get_quote", arguments={"ticker": "MSFT"})]
    record = machine.teacher([STOCK], gold)
    assert machine.replay([STOCK], _generated(record)) == gold
    # without the setting, an empty gold is refused and the answer always opens a call
    plain = TemplateMachine(tiny_bundle.lms_tokenizer, MachineLimits())
    with pytest.raises(TemplateError, match="no_call"):
        plain.teacher([STOCK], [])
    assert sum(plain.teacher([STOCK], gold).generated) < sum(record.generated)



def _first_decision(program):
    from hyfunc.cascade.template import Generate

    step = next(program)
    while not isinstance(step, Generate):
        step = program.send(None)
    return step


def test_above_the_ceiling_the_answer_must_be_a_call(tiny_bundle):
    """`allow_no_call=False` (the retriever's best score at or above cascade.no_call_ceiling): the
    first decision no longer offers the end of the answer."""
    machine = TemplateMachine(tiny_bundle.lms_tokenizer, MachineLimits(no_call=True))
    end = machine.encode(machine.end_text)[0]
    assert _first_decision(machine.program([STOCK])).permits(end)
    assert not _first_decision(machine.program([STOCK], allow_no_call=False)).permits(end)


def test_the_ceiling_is_calibrated_on_held_out_no_call_queries(monkeypatch):
    import hyfunc.training.retriever as retriever_module
    from hyfunc.data.loaders import Example

    gold = [Call(name="get_quote", arguments={"ticker": "X"})]
    examples = [Example(query=f"q{i}", tools=[STOCK], answers=[] if i < 5 else gold) for i in range(8)]
    best = {f"q{i}": score for i, score in enumerate([0.1, 0.5, 0.3, 0.2, 0.4, 0.9, 0.8, 0.7])}
    monkeypatch.setattr(retriever_module, "best_scores", lambda _model, exs, _cache: [[best[ex.query]] for ex in exs])
    ceiling = retriever_module.no_call_ceiling(None, examples, None, 0.0)
    assert 0.5 < ceiling < 0.5 + 1e-5  # just above every no-call query
    ceiling = retriever_module.no_call_ceiling(None, examples, None, 0.2)
    assert 0.4 < ceiling < 0.4 + 1e-5  # one of the five (0.5) may reach it
    assert retriever_module.no_call_ceiling(None, examples[5:], None, 0.0) is None  # no held-out no-call queries
