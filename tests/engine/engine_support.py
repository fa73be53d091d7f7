"""Helpers shared by the engine tests: example tools, program drivers, and a strict output parser."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from hyfunc.cascade.template import (
    CALL_CLOSE,
    CALL_NEXT,
    CALL_OPEN,
    END_OF_ANSWER,
    Generate,
    Inject,
    Program,
)
from hyfunc.schema import Call, CallRequest, Tool, parse_request


def tool(name: str, properties: dict[str, Any], required: list[str] | None = None, description: str = "") -> Tool:
    params: dict[str, Any] = {"type": "object", "properties": properties}
    if required is not None:
        params["required"] = required
    return Tool.model_validate(
        {"type": "function", "function": {"name": name, "description": description, "parameters": params}}
    )


WEATHER = tool(
    "get_weather",
    {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    ["city"],
    "Current weather or forecast for a city.",
)
EMAIL = tool(
    "send_email",
    {
        "to": {"type": "array", "items": {"type": "string"}},
        "subject": {"type": "string"},
        "body": {"type": "string"},
        "urgent": {"type": "boolean"},
    },
    ["to", "subject"],
    "Send an email.",
)
THERMOSTAT = tool(
    "set_thermostat",
    {"room": {"type": "string"}, "celsius": {"type": "number"}, "mode": {"type": "integer", "enum": [0, 1, 2]}},
    ["room", "celsius"],
    "Set a room's target temperature.",
)
FLIGHTS = tool(
    "search_flights",
    {
        "route": {
            "type": "object",
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
            "required": ["from", "to"],
        },
        "date": {"type": "string"},
        "passengers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"age": {"type": "integer"}, "name": {"type": "string"}},
                "required": ["age"],
            },
        },
        "filters": {"type": "object"},
        "cabin": {"type": "string", "enum": ["economy", "business", "first"]},
    },
    ["route", "date"],
    "Search flights between two airports.",
)
PING = tool("ping", {}, None, "Check that the service is up.")
CONVERT = tool(
    "convert_currency",
    {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}, "show_rate": {"type": "boolean"}},
    ["amount", "from", "to"],
    "Convert money between currencies.",
)

ALL_TOOLS = [WEATHER, EMAIL, THERMOSTAT, FLIGHTS, PING, CONVERT]


def request(query: str, tools: list[Tool], rid: str | None = None) -> CallRequest:
    return parse_request({"id": rid, "query": query, "tools": [t.to_json() for t in tools]})


# -- driving programs ----------------------------------------------------------------------------


@dataclass
class Trace:
    """Everything a program emitted: all ids in order, which were generated, and its result."""

    ids: list[int] = field(default_factory=list)
    generated: list[bool] = field(default_factory=list)
    calls: list[Call] | None = None

    @property
    def generated_ids(self) -> list[int]:
        return [t for t, g in zip(self.ids, self.generated, strict=True) if g]

    @property
    def tail_injected(self) -> int:
        """Tokens injected after the last decision (e.g. the </tool_call><|im_end|> forced at max_calls)."""
        n = 0
        for g in reversed(self.generated):
            if g:
                break
            n += 1
        return n


def recording(program: Program, trace: Trace) -> Program:
    """Wrap a program so every step it yields (and every token sent back) lands in ``trace``."""

    def run() -> Generator[Any, int | None, list[Call]]:
        send: int | None = None
        try:
            while True:
                step = program.send(send)
                if isinstance(step, Inject):
                    trace.ids.extend(step.ids)
                    trace.generated.extend([False] * len(step.ids))
                send = yield step
                if isinstance(step, Generate):
                    assert send is not None and step.permits(send), "the decoder picked a token the step forbids"
                    trace.ids.append(send)
                    trace.generated.append(True)
        except StopIteration as stop:
            trace.calls = stop.value
            return stop.value

    return run()


def allowed_ids(step: Generate) -> list[int]:
    if isinstance(step.allowed, list):
        return list(step.allowed)
    return step.allowed.nonzero().flatten().tolist()


def drive(program: Program, pick: Callable[[Generate], int]) -> Trace:
    """Run a program to the end with a picker; returns the full trace."""
    trace = Trace()
    wrapped = recording(program, trace)
    send: int | None = None
    try:
        while True:
            step = wrapped.send(send)
            send = pick(step) if isinstance(step, Generate) else None
    except StopIteration:
        pass
    return trace


def drive_tokens(program: Program, tokens: list[int], see: Callable[[Generate], None] | None = None) -> Trace:
    """Run a program to the end with ``tokens`` as its decisions, in order (each must be one the
    step permits, and all must be used); ``see`` is shown each decision step before its token."""
    queue = list(tokens)

    def pick(step: Generate) -> int:
        assert queue, "the program asks for more decisions than were given"
        if see is not None:
            see(step)
        return queue.pop(0)

    trace = drive(program, pick)
    assert not queue, "the program ended with decisions left over"
    return trace


def random_picker(rng: random.Random, quote_id: int, stop_bias: float = 0.3) -> Callable[[Generate], int]:
    """A uniformly random choice among the allowed tokens, with a bias towards closing strings
    (the quote) so random strings stay short and most programs reach their later branches."""

    def pick(step: Generate) -> int:
        ids = allowed_ids(step)
        if quote_id in ids and len(ids) > 20 and rng.random() < stop_bias:
            return quote_id
        return rng.choice(ids)

    return pick


# -- strict parsing of the rendered answer --------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


STRICT = json.JSONDecoder(parse_constant=_no_constants)  # strict=True: raw control characters fail too


def parse_answer(text: str) -> list[dict[str, Any]]:
    """Parse ``<tool_call>\\n{json}\\n</tool_call>`` blocks joined by newlines and ended by <|im_end|>,
    exactly as the template grammar writes them; anything else raises."""
    calls = []
    pos = 0
    opener = CALL_OPEN.split("{")[0]  # "<tool_call>\n"
    sep = CALL_NEXT.split("{")[0]  # "\n<tool_call>\n"
    close = CALL_CLOSE[1:]  # "\n</tool_call>" (the "}" closes the call object)
    assert text.startswith(opener), text
    pos = len(opener)
    while True:
        obj, pos = STRICT.raw_decode(text, pos)
        assert isinstance(obj, dict) and set(obj) == {"name", "arguments"}, obj
        calls.append(obj)
        assert text.startswith(close, pos), text[pos:]
        pos += len(close)
        if text.startswith(sep, pos):
            pos += len(sep)
            continue
        assert text[pos:] == END_OF_ANSWER, text[pos:]
        return calls


def render(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
