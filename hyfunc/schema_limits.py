"""Limits on what a tool's schema compiles to, checked before a job reaches a batch.

Byte and depth limits bound a request's size, not the work it causes: an ``enum`` of 10,000 short
values is 100 KB of JSON, but every value goes into the LMS prompt (the compact schema lists
them) and into the template machine's choice tries, once per continuation the grammar allows
after it (the next optional keys, or the closing brace). The prompt is what blew up: its prefill
attends every prompt token to every other, so memory grew with the square of the enum.

So each tool is measured for what it compiles to:

- ``max_enum_values``: values of one ``enum`` (each is one choice option per continuation);
- ``max_properties``: properties of one object (each is a key choice, and widens its neighbours');
- ``max_template_options``: choice options the machine compiles for the whole tool — every enum
  value (and boolean) times the continuations that may follow it, plus every key option;
- ``max_choice_bytes``: the text of those options (what gets tokenised and kept in tries);
- ``max_schema_chars``: the schema text that can reach an LMS prompt — name, description,
  property names and enum values (an upper bound on the compact schema of
  ``hyfunc.cascade.prompts``).

The same check runs at submission (API, CLI, toolsets: a 422 naming the field and the limit)
and again in the worker before a batch runs (a job over a limit fails alone). The decoder bounds
what a job may still cost while it runs (``cascade.max_prompt_tokens`` and the token budgets).
Here only the types: no torch, no database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hyfunc.schema import ParamSchema, Tool

# The template machine's fixed texts around values (hyfunc/cascade/template.py), by length.
_ARRAY_THEN = (", ", "]")
_CALL_CLOSE_CHARS = len("}\n</tool_call>")


@dataclass(frozen=True)
class CompileLimits:
    """None switches a limit off (the config keys of the same names under ``limits``)."""

    max_enum_values: int | None = 1024
    max_properties: int | None = 256
    max_template_options: int | None = 16_384
    max_choice_bytes: int | None = 262_144
    max_schema_chars: int | None = 16_000

    @classmethod
    def from_config(cls, limits: Any) -> CompileLimits:
        """From a ``LimitsConfig`` (or anything with the same attributes)."""
        return cls(**{name: getattr(limits, name) for name in cls.__dataclass_fields__ if hasattr(limits, name)})


class SchemaTooLarge(ValueError):
    """A tool over a compile limit; the message names the field and the config key."""


@dataclass
class _Count:
    options: int = 0
    choice_bytes: int = 0
    schema_chars: int = 0


def _over(limit: int | None, value: int) -> bool:
    return limit is not None and value > limit


def _key_continuations(names: list[str], required: set[str], position: int) -> list[int]:
    """Lengths of the texts that may follow a value at ``position`` in an object (the machine's
    ``_key_options``): optional keys up to and including the next required one, and the closing
    brace when no required key is left."""
    out: list[int] = []
    for name in names[position:]:
        out.append(len(", ") + len(json.dumps(name, ensure_ascii=False)) + len(": "))
        if name in required:
            break
    if not any(name in required for name in names[position:]):
        out.append(1)
    return out


def _walk(node: ParamSchema, path: str, then: list[int], limits: CompileLimits, count: _Count) -> None:
    """Add ``node``'s options (each followed by one of ``then``, given as text lengths) to ``count``;
    raises SchemaTooLarge at the first node over a per-node limit."""
    if node.enum is not None or node.type in ("boolean", "null"):
        literals = node.enum if node.enum is not None else ([True, False] if node.type == "boolean" else [None])
        if _over(limits.max_enum_values, len(literals)):
            raise SchemaTooLarge(
                f"{path}.enum has {len(literals)} values; limit limits.max_enum_values is {limits.max_enum_values}"
            )
        texts = [len(json.dumps(v, ensure_ascii=False)) for v in literals]
        count.options += len(literals) * len(then)
        count.choice_bytes += sum(texts) * len(then) + len(literals) * sum(then)
        if node.enum is not None:
            count.schema_chars += sum(texts) + len(texts)
        return
    if node.type == "array":
        # An item is followed by ", " or "]" (and the first may be "]" itself: an empty array).
        count.options += 1
        _walk(node.items or ParamSchema(type="string"), f"{path}.items", [len(t) for t in _ARRAY_THEN], limits, count)
        return
    if node.type == "object" and node.properties:
        names = list(node.properties)
        if _over(limits.max_properties, len(names)):
            raise SchemaTooLarge(
                f"{path}.properties has {len(names)} properties; limit limits.max_properties is {limits.max_properties}"
            )
        required = set(node.required or [])
        first = _key_continuations(names, required, 0)
        count.options += len(first)
        count.choice_bytes += sum(first)
        for i, (name, sub) in enumerate(node.properties.items()):
            count.schema_chars += len(name) + 2
            after = _key_continuations(names, required, i + 1)
            _walk(sub, f"{path}.properties.{name}", after, limits, count)
        return
    # A string or number value: its end is one choice among the continuations.
    count.options += len(then)
    count.choice_bytes += sum(then)


def tool_problem(tool: Tool, where: str, limits: CompileLimits) -> str | None:
    """Why ``tool`` compiles to more than ``limits`` allow (naming the field and the limit), or None."""
    function = tool.function
    count = _Count(schema_chars=len(function.name) + len(function.description))
    try:
        _walk(function.parameters, f"{where}.function.parameters", [_CALL_CLOSE_CHARS], limits, count)
    except SchemaTooLarge as err:
        return str(err)
    if _over(limits.max_template_options, count.options):
        return (f"{where} compiles to {count.options} template choice options (enum values and keys times what "
                f"may follow each); limit limits.max_template_options is {limits.max_template_options}")
    if _over(limits.max_choice_bytes, count.choice_bytes):
        return (f"{where} compiles to {count.choice_bytes} bytes of choice options; "
                f"limit limits.max_choice_bytes is {limits.max_choice_bytes}")
    if _over(limits.max_schema_chars, count.schema_chars):
        return (f"{where}: name, description, property names and enum values are {count.schema_chars} characters; "
                f"limit limits.max_schema_chars is {limits.max_schema_chars}")
    return None


def tools_problem(tools: list[Tool], limits: CompileLimits, where: str = "tools") -> str | None:
    """The first tool of a request over a compile limit, or None."""
    for i, tool in enumerate(tools):
        problem = tool_problem(tool, f"{where}[{i}]", limits)
        if problem:
            return problem
    return None


def check_tools(tools: list[Tool], limits: CompileLimits, where: str = "tools") -> None:
    """Raise SchemaTooLarge for the first tool over a compile limit."""
    problem = tools_problem(tools, limits, where)
    if problem:
        raise SchemaTooLarge(problem)
