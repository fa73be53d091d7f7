"""Teacher mode (selective-SFT sequences): exact round trip, canonical text, and rejection of bad gold."""

from __future__ import annotations

import json

import pytest
from engine_support import (
    ALL_TOOLS,
    CONVERT,
    EMAIL,
    FLIGHTS,
    PING,
    THERMOSTAT,
    WEATHER,
    drive_tokens,
    parse_answer,
    render,
)

from hyfunc.cascade.template import END_OF_ANSWER, TemplateError
from hyfunc.schema import Call, validate_call

# Gold answers, arguments in schema property order (so the canonical text is plain json.dumps).
GOLD: dict[str, list[Call]] = {
    "escapes": [Call(name="get_weather", arguments={"city": 'He said "hi" \\ back\nslash\t/ end'})],
    "special_token_text": [
        Call(name="get_weather", arguments={"city": "<|soft|> <|im_end|> <tool_call>", "days": 1})
    ],
    "unicode": [Call(name="get_weather", arguments={"city": "Zürich 東京 🚀 ñ", "unit": "fahrenheit", "days": 3})],
    "negative_int": [Call(name="get_weather", arguments={"city": "Oslo", "days": -12})],
    "big_int": [Call(name="get_weather", arguments={"city": "Rome", "days": 123456789})],
    "optional_absent": [Call(name="get_weather", arguments={"city": "Lima"})],
    "optional_skip_middle": [Call(name="get_weather", arguments={"city": "Lima", "days": 2})],
    "empty_string": [Call(name="set_thermostat", arguments={"room": "", "celsius": 21})],
    "negative_float": [Call(name="set_thermostat", arguments={"room": "hall", "celsius": -12.75, "mode": 0})],
    "small_exponent": [Call(name="set_thermostat", arguments={"room": "lab", "celsius": 1.5e-07, "mode": 2})],
    "big_exponent": [Call(name="convert_currency", arguments={"amount": 6.02e23, "from": "USD", "to": "EUR"})],
    "zero_and_bool": [
        Call(name="convert_currency", arguments={"amount": 0, "from": "a", "to": "b", "show_rate": False})
    ],
    "empty_array": [Call(name="send_email", arguments={"to": [], "subject": "Nothing"})],
    "string_array": [
        Call(
            name="send_email",
            arguments={"to": ["bob@example.com", "al\"ice"], "subject": "Hi", "body": "line1\nline2", "urgent": True},
        )
    ],
    "nested": [
        Call(
            name="search_flights",
            arguments={
                "route": {"from": "BOS", "to": "DEN"},
                "date": "2026-03-14",
                "passengers": [{"age": 34, "name": "Ann"}, {"age": 2}],
                "filters": {"airline": "LH", "stops": "0"},
                "cabin": "business",
            },
        )
    ],
    "nested_empty": [
        Call(name="search_flights", arguments={"route": {"from": "", "to": "x"}, "date": "d", "passengers": [], "filters": {}})
    ],
    "no_params": [Call(name="ping", arguments={})],
    "parallel": [
        Call(name="ping", arguments={}),
        Call(name="get_weather", arguments={"city": "Paris", "unit": "celsius"}),
        Call(name="send_email", arguments={"to": ["x@y.z"], "subject": "s"}),
    ],
    "same_tool_twice": [
        Call(name="get_weather", arguments={"city": "A"}),
        Call(name="get_weather", arguments={"city": "B", "days": 0}),
    ],
}


def canonical_text(calls: list[Call]) -> str:
    blocks = [
        "<tool_call>\n" + json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) + "\n</tool_call>"
        for c in calls
    ]
    return "\n".join(blocks) + END_OF_ANSWER


@pytest.mark.parametrize("case", sorted(GOLD))
def test_teacher_round_trip(machine, lms_tokenizer, case: str) -> None:
    gold = GOLD[case]
    for call in gold:  # the fixtures themselves are valid
        assert validate_call(call, ALL_TOOLS) == []
    record = machine.teacher(ALL_TOOLS, gold)
    assert len(record.ids) == len(record.generated)
    generated = [t for t, g in zip(record.ids, record.generated, strict=True) if g]
    assert generated, "every answer makes at least the end decision"
    # Replaying only the generated tokens through the machine rebuilds the gold exactly.
    replayed = machine.replay(ALL_TOOLS, generated)
    assert [c.model_dump() for c in replayed] == [c.model_dump() for c in gold]
    # The full sequence (injected + generated) decodes to the canonical <tool_call> JSON text.
    text = render(lms_tokenizer, record.ids)
    assert text == canonical_text(gold)
    assert parse_answer(text) == [c.model_dump() for c in gold]
    # The selective-SFT mask marks far fewer tokens than the full answer.
    assert sum(record.generated) < len(record.ids)


def test_teacher_types_survive_round_trip(machine) -> None:
    """Floats stay floats and ints stay ints (1.0 vs 1 matters for an integer field)."""
    gold = [Call(name="set_thermostat", arguments={"room": "r", "celsius": 1.0, "mode": 1})]
    record = machine.teacher(ALL_TOOLS, gold)
    (call,) = machine.replay(ALL_TOOLS, [t for t, g in zip(record.ids, record.generated, strict=True) if g])
    assert type(call.arguments["celsius"]) is float and type(call.arguments["mode"]) is int


def test_single_candidate_name_is_injected(machine) -> None:
    """With one candidate the function name is not a decision: the first generated token comes later."""
    gold = [Call(name="get_weather", arguments={"city": "Paris"})]
    alone = machine.teacher([WEATHER], gold)
    among = machine.teacher(ALL_TOOLS, gold)
    assert sum(among.generated) > sum(alone.generated)
    assert alone.ids == among.ids  # same text either way


@pytest.mark.parametrize(
    "gold, problem",
    [
        ([Call(name="get_weather", arguments={"city": "x", "country": "y"})], "not in the schema"),
        ([Call(name="get_weather", arguments={"unit": "celsius"})], "required"),
        ([Call(name="get_weather", arguments={"city": 3})], "not a string"),
        ([Call(name="get_weather", arguments={"city": "x", "days": "3"})], "not an integer"),
        ([Call(name="get_weather", arguments={"city": "x", "days": 2.5})], "not an integer"),
        ([Call(name="get_weather", arguments={"city": "x", "days": True})], "not an integer"),
        ([Call(name="get_weather", arguments={"city": "x", "unit": "kelvin"})], "not one of"),
        ([Call(name="set_thermostat", arguments={"room": "x", "celsius": "warm"})], "not a number"),
        ([Call(name="set_thermostat", arguments={"room": "x", "celsius": 20, "mode": 7})], "not one of"),
        ([Call(name="send_email", arguments={"to": "bob", "subject": "s"})], "not an array"),
        ([Call(name="send_email", arguments={"to": ["b"], "subject": "s", "urgent": "yes"})], "not one of"),
        ([Call(name="search_flights", arguments={"route": {"from": "A"}, "date": "d"})], "required"),
        ([Call(name="search_flights", arguments={"route": "A-B", "date": "d"})], "not an object"),
        ([Call(name="search_flights", arguments={"route": {"from": "A", "to": "B"}, "date": "d", "filters": {"n": 1}})], "string values"),
        ([Call(name="delete_everything", arguments={})], "not among the candidates"),
        ([Call(name="ping", arguments={})] * 5, "max_calls"),
        ([Call(name="get_weather", arguments={"city": "x" * 400})], "max_string_tokens"),
        ([Call(name="get_weather", arguments={"city": "bell\x07"})], "not allowed"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_teacher_rejects_gold_that_violates_the_schema(machine, gold: list[Call], problem: str) -> None:
    with pytest.raises(TemplateError, match=problem):
        machine.teacher(ALL_TOOLS, gold)


def test_teacher_needs_gold_calls(machine) -> None:
    with pytest.raises(TemplateError):
        machine.teacher(ALL_TOOLS, [])
    with pytest.raises(TemplateError):
        machine.program([])


def test_replay_rejects_forbidden_tokens(machine, lms_tokenizer) -> None:
    quote = lms_tokenizer.encode('"', add_special_tokens=False)[0]
    with pytest.raises(TemplateError):
        # A lone quote cannot choose the function name among several candidates.
        machine.replay([PING, CONVERT, THERMOSTAT, EMAIL, FLIGHTS], [quote] * 3)


def _inference_trace(machine, tools, query: str, generated: list[int]) -> tuple[list[int], list[list[int] | None]]:
    """Drive the inference program (no gold) with the given tokens: every id it emits (injected
    and picked, in order) and each decision's allowed set as teacher mode records it."""
    allowed: list[list[int] | None] = []
    trace = drive_tokens(machine.program(tools, source=query), generated,
                         lambda step: allowed.append(machine.compiled.record(step.allowed)))
    return trace.ids, allowed


@pytest.mark.parametrize("copy_values", [False, True], ids=["free", "copy"])
def test_token_boundaries_identical_in_training_and_inference(make_machine, copy_values) -> None:
    """Over many generated demo jobs (varied tools, queries, values): the sequence teacher mode
    writes for training is, token for token, the one inference emits when it picks the same
    decisions, and each recorded allowed set is what inference offers at that decision."""
    from hyfunc.data.demo_task import generate_demo_examples

    machine = make_machine(copy_values=copy_values)
    checked = 0
    for ex in generate_demo_examples("heldout", 40, 3):
        if not ex.answers:
            continue
        try:
            record = machine.teacher(ex.tools, ex.answers, source=ex.query if copy_values else None)
        except TemplateError:
            continue
        generated = [t for t, g in zip(record.ids, record.generated, strict=True) if g]
        ids, allowed = _inference_trace(machine, ex.tools, ex.query if copy_values else "", generated)
        assert ids == record.ids
        if copy_values:
            assert allowed == record.allowed
        assert machine.teacher(ex.tools, ex.answers).ids == record.ids  # the query never changes the ids
        checked += 1
    assert checked >= 20
