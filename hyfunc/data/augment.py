"""Value randomisation: training copies of examples whose copied values are replaced by random
strings and numbers of the same shape, in the query and in the gold calls alike.

A small LMS trained from scratch would otherwise memorise the demo task's value pools instead
of learning to copy values from the query; with random values, copying is the only way to
lower the loss. Enum values are left alone (they are choices, not copies), and a value is only
replaced when it occurs exactly once in the query, so the gold stays recoverable.
"""

from __future__ import annotations

import random
import re
import string
from typing import Any

from hyfunc.data.loaders import Example
from hyfunc.schema import Call, ParamSchema


def _shape_like(text: str, rng: random.Random) -> str:
    out = []
    for ch in text:
        if ch.isdigit():
            out.append(rng.choice(string.digits))
        elif ch.isalpha() and ch.isascii():
            pool = string.ascii_uppercase if ch.isupper() else string.ascii_lowercase
            out.append(rng.choice(pool))
        else:
            out.append(ch)
    return "".join(out)


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w.])" + re.escape(text) + r"(?![\w])")


class _Rewriter:
    def __init__(self, query: str, rng: random.Random):
        self.query = query
        self.rng = rng

    def _swap(self, old: str, new: str) -> bool:
        pattern = _pattern(old)
        if len(pattern.findall(self.query)) != 1 or _pattern(new).search(self.query):
            return False
        self.query = pattern.sub(lambda _: new, self.query)
        return True

    def value(self, schema: ParamSchema | None, value: Any) -> Any:
        if schema is not None and schema.enum is not None:
            return value
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, str):
            new = _shape_like(value, self.rng)
            return new if new != value and self._swap(value, new) else value
        if isinstance(value, int):
            digits = len(str(abs(value)))
            new = self.rng.randint(10 ** (digits - 1) if digits > 1 else 1, 10**digits - 1) * (1 if value >= 0 else -1)
            return new if new != value and self._swap(str(value), str(new)) else value
        if isinstance(value, float):
            text = repr(value)
            new_text = _shape_like(text, self.rng).lstrip("0") or "1"
            if new_text.startswith("."):
                new_text = "1" + new_text
            try:
                new = float(new_text)
            except ValueError:
                return value
            return new if repr(new) == new_text and self._swap(text, new_text) else value
        if isinstance(value, list):
            items = schema.items if schema is not None else None
            return [self.value(items, v) for v in value]
        if isinstance(value, dict):
            props = (schema.properties or {}) if schema is not None else {}
            return {k: self.value(props.get(k), v) for k, v in value.items()}
        return value


def randomize_values(example: Example, rng: random.Random) -> Example | None:
    """A copy with fresh random values, or None when nothing could be replaced."""
    if not example.answers:
        return None
    rewriter = _Rewriter(example.query, rng)
    by_name = {t.name: t for t in example.tools}
    answers = [
        Call(name=call.name, arguments=rewriter.value(by_name[call.name].function.parameters, call.arguments))
        for call in example.answers
    ]
    if rewriter.query == example.query:
        return None
    return Example(query=rewriter.query, tools=example.tools, answers=answers, source="augmented", position=example.position)
