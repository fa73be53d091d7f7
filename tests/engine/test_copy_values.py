"""Extractive values (cascade.copy_values): string and number values are whole-word spans of the query."""

from __future__ import annotations

import re

import pytest
from engine_support import drive_tokens

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
    from hyfunc.cascade.decoding import resolve_decoding
    from hyfunc.cascade.template import MachineLimits, TemplateMachine
    from hyfunc.schema import Call

    # Off unless the config or the models' manifest turns it on.
    assert resolve_decoding(CascadeConfig(), {}).copy_values is False
    machine = TemplateMachine(bundle.lms_tokenizer, MachineLimits(copy_values=True))
    gold = [Call(name="book_table", arguments={"restaurant": "Not In Query", "people": 3, "budget": 9.5})]
    record = machine.teacher(TOOLS, gold)  # training sequences never depend on the query
    generated = [t for t, g in zip(record.ids, record.generated, strict=True) if g]
    assert machine.replay(TOOLS, generated) == gold


def _inference_allowed(machine, candidates, query: str, generated: list[int]) -> list[list[int]]:
    """Drive the inference program (copy mode, no gold) with the given tokens; each step's allowed ids."""
    seen: list[list[int]] = []

    def see(step) -> None:
        allowed = step.allowed
        seen.append(allowed.nonzero().flatten().tolist() if hasattr(allowed, "nonzero") else sorted(allowed))

    drive_tokens(machine.program(candidates, source=query), generated, see)
    return seen


@pytest.mark.parametrize(
    ("query", "arguments"),
    [
        ("Book Chez Panisse for 4 people, budget 120.5 dollars, window seat",
         {"restaurant": "Chez Panisse", "people": 4, "budget": 120.5, "notes": ["window seat"]}),
        ("Table at Noma for 12 tonight with a budget of 300", {"restaurant": "Noma", "people": 12, "budget": 300}),
        # No number in the query: numbers are written freely, in training as at inference.
        ("reserve Sushi Saito please", {"restaurant": "Sushi Saito", "people": 3, "budget": 9.5}),
    ],
)
def test_teacher_records_the_choices_inference_offers(bundle, query, arguments):
    """With the query, teacher mode records at each generated token exactly the ids extractive
    inference would allow there (None only where nearly the whole vocabulary is allowed); the
    token sequence itself is the one teacher mode writes without the query, and a token it no
    longer generates is one the copy left no choice about (jump-forward: injected)."""
    from hyfunc.cascade.template import RECORD_ALLOWED_MAX, MachineLimits, TemplateMachine
    from hyfunc.schema import Call

    machine = TemplateMachine(bundle.lms_tokenizer, MachineLimits(copy_values=True))
    gold = [Call(name="book_table", arguments=arguments)]
    plain = machine.teacher(TOOLS, gold)
    record = machine.teacher(TOOLS, gold, source=query)
    assert record.ids == plain.ids
    assert all(p or not g for p, g in zip(plain.generated, record.generated, strict=True))
    forced = [i for i, (p, g) in enumerate(zip(plain.generated, record.generated, strict=True)) if p and not g]
    if any(ch.isdigit() for ch in query) or "Chez" in query:
        assert forced, "a copied value should leave at least one forced token"
    generated = [t for t, g in zip(record.ids, record.generated, strict=True) if g]
    assert len(record.allowed) == len(generated)
    for token, expected, allowed in zip(generated, _inference_allowed(machine, TOOLS, query, generated), record.allowed, strict=True):
        if allowed is None:
            assert len(expected) > RECORD_ALLOWED_MAX
        else:
            assert allowed == expected
            assert token in allowed


def test_constrained_loss_never_exceeds_the_full_softmax_loss(bundle):
    import torch

    from hyfunc.cascade.template import TemplateMachine
    from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
    from hyfunc.schema import Call
    from hyfunc.training.lms import build_sequence, selective_loss

    machine = TemplateMachine(bundle.lms_tokenizer)
    torch.manual_seed(0)
    projector = SoftTokenProjector(ProjectorConfig(input_dim=bundle.intent_dim, output_dim=bundle.lms_dim, hidden_dim=16))
    gold = [Call(name="book_table", arguments={"restaurant": "Noma", "people": 12, "budget": 300})]
    query = "Table at Noma for 12 tonight with a budget of 300"
    soft = torch.randn(bundle.intent_dim)
    full = build_sequence(machine, bundle.lms_tokenizer, query, TOOLS, gold, soft, 1)
    narrow = build_sequence(machine, bundle.lms_tokenizer, query, TOOLS, gold, soft, 1, constrained=True)
    assert full.allowed is None and narrow.allowed is not None and full.ids == narrow.ids
    soft_id = bundle.lms_tokenizer.convert_tokens_to_ids("<|soft|>")
    with torch.no_grad():
        a = float(selective_loss(bundle.lms, projector, [full], soft_id, 0, "cpu"))
        b = float(selective_loss(bundle.lms, projector, [narrow], soft_id, 0, "cpu"))
    assert b < a


def test_teacher_writes_a_value_missing_from_the_query_freely(bundle):
    """A gold string that is no span of the query (inference could not copy it) is recorded with
    the free string choices, not with a copy set that excludes the gold token."""
    from hyfunc.cascade.template import MachineLimits, TemplateMachine
    from hyfunc.schema import Call

    machine = TemplateMachine(bundle.lms_tokenizer, MachineLimits(copy_values=True))
    gold = [Call(name="book_table", arguments={"restaurant": "Sushi Saito", "people": 2, "budget": 80.5})]
    record = machine.teacher(TOOLS, gold, source="reserve a table, 2 guests, 80.5 max")
    assert record.ids == machine.teacher(TOOLS, gold).ids
    generated = [t for t, g in zip(record.ids, record.generated, strict=True) if g]
    for token, allowed in zip(generated, record.allowed, strict=True):
        assert allowed is None or token in allowed
    assert None in record.allowed  # the restaurant name, written freely


TRIP = Tool.model_validate(
    {
        "name": "trip",
        "description": "Plan a trip",
        "parameters": {
            "type": "object",
            "properties": {
                "origin": {"type": "string"},
                "destination": {"type": "string"},
                "adults": {"type": "integer"},
                "rooms": {"type": "integer"},
            },
            "required": ["origin", "destination", "adults", "rooms"],
        },
    }
)


def _value_steps(machine, query: str, arguments: dict) -> list[list[int] | None]:
    """The allowed sets teacher mode records (== what inference offers) for one trip call."""
    from hyfunc.schema import Call

    record = machine.teacher([TRIP], [Call(name="trip", arguments=arguments)], source=query)
    return record.allowed


@pytest.mark.parametrize("distinct", [True, False])
def test_one_mention_feeds_one_value_per_call(bundle, distinct):
    """copy_distinct: once "Paris" fed the origin, the destination may not copy that mention
    again (it may copy a second one); a number mentioned once feeds one value."""
    from hyfunc.cascade.template import MachineLimits, TemplateMachine

    machine = TemplateMachine(bundle.lms_tokenizer, MachineLimits(copy_values=True, copy_distinct=distinct))
    paris = machine.encode("Paris")[0]
    rome = machine.encode("Rome")[0]
    args = {"origin": "Paris", "destination": "Rome", "adults": 2, "rooms": 3}
    steps = [a for a in _value_steps(machine, "Paris or Rome, 2 adults, 3 rooms", args) if a is not None]
    # The origin's and then the destination's first steps are the allowed sets offering Rome.
    destination_first = [a for a in steps if rome in a][1]
    assert (paris in destination_first) is (not distinct)

    # Two mentions: the destination may copy the second "Paris".
    twice = {"origin": "Paris", "destination": "Paris", "adults": 2, "rooms": 2}
    steps = _value_steps(machine, "Paris to Paris, 2 adults, 2 rooms", twice)
    assert sum(1 for a in steps if a is not None and paris in a) >= 2
    # "2" written twice feeds two integers; written once, the second integer is no copy.
    two = machine.encode("2")[0]
    steps = [a for a in _value_steps(machine, "Paris to Paris, 2 adults, 2 rooms", twice) if a is not None and two in a]
    assert len(steps) >= 2
    once = {"origin": "Paris", "destination": "Rome", "adults": 2, "rooms": 2}
    # A copy with one way to go is forced: the machine injects that "2" (jump-forward).
    from hyfunc.schema import Call

    record = machine.teacher([TRIP], [Call(name="trip", arguments=once)], source="Paris or Rome for 2 adults")
    forced_twos = sum(1 for t, g in zip(record.ids, record.generated, strict=True) if t == two and not g)
    assert forced_twos == (1 if distinct else 2)


def test_a_new_call_may_copy_the_same_mention_again(bundle):
    """Distinctness is per call: "check the weather in Paris and book a hotel there" needs Paris twice."""
    from hyfunc.cascade.template import MachineLimits, TemplateMachine
    from hyfunc.schema import Call

    machine = TemplateMachine(bundle.lms_tokenizer, MachineLimits(copy_values=True))
    paris = machine.encode("Paris")[0]
    gold = [Call(name="book_table", arguments={"restaurant": "Paris", "people": 2, "budget": 10}) for _ in range(2)]
    record = machine.teacher(TOOLS, gold, source="Paris, 2 people, 10 dollars")
    restaurant_steps = [a for a in record.allowed if a is not None and paris in a]
    assert len(restaurant_steps) == 2
