"""Scoring predicted calls against gold calls (order-insensitive, exact values)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hyfunc.schema import Call, Tool, validate_call


def _key(call: Call | dict[str, Any]) -> str:
    data = call.model_dump() if isinstance(call, Call) else call
    return json.dumps({"name": data["name"], "arguments": data.get("arguments", {})}, sort_keys=True)


def calls_match(predicted: list[Call], gold: list[Call]) -> bool:
    """Same calls with the same arguments, in any order (parallel calls are a multiset)."""
    return Counter(map(_key, predicted)) == Counter(map(_key, gold))


def functions_match(predicted: list[Call], gold: list[Call]) -> bool:
    return Counter(c.name for c in predicted) == Counter(c.name for c in gold)


@dataclass
class Scoreboard:
    n: int = 0
    exact: int = 0
    function: int = 0
    valid: int = 0
    outputs: int = 0
    no_call_total: int = 0
    no_call_correct: int = 0
    false_no_call: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def add(self, query: str, tools: list[Tool], gold: list[Call], predicted: list[Call], error: str | None) -> bool:
        self.n += 1
        if error is None:
            self.outputs += 1
            if all(not validate_call(c, tools) for c in predicted):
                self.valid += 1
        ok = error is None and calls_match(predicted, gold)
        self.exact += ok
        self.function += error is None and functions_match(predicted, gold)
        if not gold:
            self.no_call_total += 1
            self.no_call_correct += error is None and not predicted
        elif error is None and not predicted:
            self.false_no_call += 1
        if not ok and len(self.mismatches) < 50:
            self.mismatches.append(
                {"query": query, "gold": [c.model_dump() for c in gold], "predicted": [c.model_dump() for c in predicted], "error": error}
            )
        return ok

    def metrics(self) -> dict[str, Any]:
        def ratio(a: int, b: int) -> float:
            return round(a / b, 4) if b else 1.0

        return {
            "exact_match": ratio(self.exact, self.n),
            "function_accuracy": ratio(self.function, self.n),
            "no_call_accuracy": ratio(self.no_call_correct, self.no_call_total),
            "schema_valid": ratio(self.valid, self.outputs),
            "false_no_call": self.false_no_call,
            "n": self.n,
        }
