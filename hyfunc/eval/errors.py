"""Why a BFCL answer was wrong: one class per wrong row, from the cascade's own result (gate
refusal, the LMS's no-call, a decoding error) and the official checker's ``error_type``.

The classes are the ones the quality work tracks (README / docs/training.md error table):
refused by the gate, no call chosen by the LMS, too few or too many calls, a repeated call,
wrong function, missing or extra parameter, wrong type, wrong value."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

ERROR_CLASSES = (
    "refused by the gate",
    "no call (LMS)",
    "decoding error",
    "too few calls",
    "too many calls",
    "repeated call",
    "wrong function",
    "missing parameter",
    "extra parameter",
    "wrong type",
    "wrong value",
    "call made on irrelevance",
    "other",
)

_CHECKER = {
    "wrong_func_name": "wrong function",
    "missing_optional": "missing parameter",
    "missing_required": "missing parameter",
    "unexpected_param": "extra parameter",
    "type_error": "wrong type",
    "value_error": "wrong value",
    # the parallel checker reports only that some call matched no gold call
    "cannot_find_match": "wrong value",
}


def classify(row: dict[str, Any]) -> str | None:
    """The error class of one raw BFCL row (`hyfunc eval bfcl --out` writes them); None if right."""
    if row.get("valid"):
        return None
    output = row.get("result") or []
    if not output:
        reason = row.get("no_call_reason") or ""
        if row.get("error"):
            return "decoding error"
        if reason.startswith("no tool is relevant"):
            return "refused by the gate"
        return "no call (LMS)" if reason else "other"
    if str(row.get("detail") or "").startswith("irrelevance_error"):
        return "call made on irrelevance"
    calls = [json.dumps(call, sort_keys=True, default=str) for call in output]
    if len(set(calls)) < len(calls):
        return "repeated call"
    error_type = str(row.get("error_type") or "")
    gold = row.get("gold_calls")
    if error_type.endswith("wrong_count") and isinstance(gold, int):
        return "too few calls" if len(output) < gold else "too many calls"
    for key, label in _CHECKER.items():
        if key in error_type:
            return label
    return "other"


def error_table(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Counts per class over a category's rows (classes with no row are left out)."""
    counts = Counter(c for c in (classify(r) for r in rows) if c is not None)
    return {name: counts[name] for name in ERROR_CLASSES if counts[name]}
