"""Every answer the template machine lets a model write is valid JSON that validates against the
candidate's schema, whatever the model picks.

Two drivers over hypothesis-generated schemas (nested objects, arrays, string and integer
enums, optionals, integers, numbers, booleans, strings, untyped values, free-form objects) and
queries:

- a random picker (uniform among the allowed tokens, seeded by hypothesis) on the program
  itself — many cases, cheap, explores far more branches than a model would;
- the real batched decoder with the random-init tiny LMS, a few jobs per case.

For each output: the rendered token sequence parses strictly (no NaN/Infinity, no raw control
characters) as ``<tool_call>`` blocks equal to the returned calls, each call passes
``validate_call``, and replaying the generated tokens reproduces the calls.
"""

from __future__ import annotations

import json
import random
from typing import Any

import torch
from engine_support import Trace, drive, parse_answer, random_picker, recording, render
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyfunc.cascade.decoder import DecodeJob
from hyfunc.cascade.prompts import lms_job_prompt
from hyfunc.schema import Tool, validate_call

# -- schema strategies ------------------------------------------------------------------------------

SPECIAL = st.sampled_from(["<|soft|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<|endoftext|>"])
ANY_TEXT = st.one_of(  # quotes, backslashes, controls, unicode, and text that looks like special tokens
    st.text(st.characters(exclude_categories=["Cs"]), max_size=6),
    st.lists(st.one_of(SPECIAL, st.text("a\\\" ", max_size=2)), max_size=3).map("".join),
)
KEYS = st.one_of(st.text("abcxyz_", min_size=1, max_size=4), ANY_TEXT)
FUNCTION_NAMES = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
    # anything the schema accepts: control characters, unicode, spaces inside
    st.text(st.sampled_from(list("ab_-. é東🚀\x01\x1f\x7f")), min_size=1, max_size=6),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters='"\\\n\r\t'), min_size=1, max_size=10),
).filter(lambda s: s == s.strip())
INTS = st.integers(-10**6, 10**6)
FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, ANY_TEXT)


def _described(node: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just(node), st.builds(lambda d: {**node, "description": d}, ANY_TEXT))


LEAVES = st.one_of(
    st.just({"type": "string"}).flatmap(_described),
    st.lists(ANY_TEXT, min_size=1, max_size=4).map(lambda e: {"type": "string", "enum": e}),
    st.just({"type": "integer"}),
    st.lists(INTS, min_size=1, max_size=4).map(lambda e: {"type": "integer", "enum": e}),
    st.just({"type": "number"}),
    st.lists(FLOATS, min_size=1, max_size=3).map(lambda e: {"type": "number", "enum": e}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.just({}),  # no type: a free JSON string
    st.lists(SCALARS, min_size=1, max_size=4).map(lambda e: {"enum": e}),  # untyped enum of mixed literals
    st.just({"type": "object"}),  # free-form object: string keys, string values
    st.just({"type": ["string", "null"]}),
)


@st.composite
def object_schema(draw: st.DrawFn, children: st.SearchStrategy[dict[str, Any]], max_props: int = 4) -> dict[str, Any]:
    props = draw(st.dictionaries(KEYS, children, max_size=max_props))
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if props:
        schema["required"] = draw(st.lists(st.sampled_from(sorted(props)), unique=True))
    return schema


SCHEMAS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.builds(lambda items: {"type": "array", "items": items}, children),
        object_schema(children),
    ),
    max_leaves=6,
)


@st.composite
def toolsets(draw: st.DrawFn, max_tools: int = 3) -> list[Tool]:
    names = draw(st.lists(FUNCTION_NAMES, min_size=1, max_size=max_tools, unique=True))
    tools = []
    for name in names:
        params = draw(object_schema(SCHEMAS, max_props=5))
        description = draw(ANY_TEXT)
        tools.append(
            Tool.model_validate(
                {"type": "function", "function": {"name": name, "description": description, "parameters": params}}
            )
        )
    return tools


# -- the property ---------------------------------------------------------------------------------

SMALL = {"max_calls": 3, "max_string_tokens": 6, "max_number_tokens": 5, "max_array_items": 3}
TINY = {"max_calls": 2, "max_string_tokens": 4, "max_number_tokens": 4, "max_array_items": 2}


def check_output(tokenizer: Any, machine: Any, candidates: list[Tool], trace: Trace) -> None:
    assert trace.calls is not None and 1 <= len(trace.calls) <= machine.limits.max_calls
    for call in trace.calls:
        assert validate_call(call, candidates) == [], call
    dumped = [c.model_dump() for c in trace.calls]
    json.dumps(dumped, allow_nan=False)  # finite numbers only: "1e999" would parse to inf, which is not JSON
    parsed = parse_answer(render(tokenizer, trace.ids))
    assert parsed == dumped
    assert machine.replay(candidates, trace.generated_ids) == trace.calls


@settings(max_examples=400, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tools=toolsets(), seed=st.integers(0, 2**32 - 1), limits=st.sampled_from([SMALL, {}]))
def test_random_picker_outputs_are_valid_json_for_their_schema(lms_tokenizer, make_machine, tools, seed, limits) -> None:
    machine = make_machine(**limits)
    rng = random.Random(seed)
    trace = drive(machine.program(tools), random_picker(rng, machine.vocab.quote_id))
    check_output(lms_tokenizer, machine, tools, trace)


@settings(max_examples=25, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    jobs=st.lists(st.tuples(toolsets(max_tools=2), st.one_of(st.text(min_size=1, max_size=40), ANY_TEXT)), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_tiny_model_outputs_are_valid_json_for_their_schema(
    tiny_bundle, tiny_decoder, lms_tokenizer, make_machine, jobs, seed
) -> None:
    """The random-init LMS, batched, greedy: every row's answer is valid and validates."""
    machine = make_machine(**TINY)
    gen = torch.Generator().manual_seed(seed)
    traces, decode_jobs = [], []
    for tools, query in jobs:
        trace = Trace()
        soft = torch.randn(1, tiny_bundle.lms_dim, generator=gen)
        prompt = lms_tokenizer.encode(lms_job_prompt(query, tools, 1), add_special_tokens=False)
        decode_jobs.append(DecodeJob(prompt, soft, recording(machine.program(tools), trace)))
        traces.append(trace)
    results = tiny_decoder.decode(decode_jobs)
    for (tools, _), trace, result in zip(jobs, traces, results, strict=True):
        assert result.error is None
        assert result.calls == trace.calls
        assert result.stats.generated == len(trace.generated_ids)
        check_output(lms_tokenizer, machine, tools, trace)
