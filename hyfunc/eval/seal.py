"""`hyfunc eval seal`: the configured cascade on a Seal-Tools split (hyfunc.data.seal_tools).

Each question runs with the five candidate tools the Seal-Tools authors give it. Scores:

- exact match: the predicted calls equal the gold calls as a multiset (order-free), function
  names and every argument; values compare after one canonical form: numbers (and strings that
  are a plain number) as floats, strings stripped — the gold stores "2" where the schema says
  integer, and the cascade writes 2;
- function precision / recall / F1, micro-averaged: per question the multiset intersection of
  predicted and gold function names;
- parameter F1, micro-averaged, over (function, parameter, value) triples;
- per difficulty (`easy`: one call, `difficult`: several) and without the questions whose gold
  takes an earlier call's output ("API_call_0"), which the cascade cannot express.

Raw outputs: one JSON line per question (`seal_<split>_result.jsonl`) and `results.json`.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hyfunc.eval.batches import run_examples
from hyfunc.schema import Call

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def canonical(value: Any) -> Any:
    """The form values are compared in (see the module docstring)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        return float(text) if _NUMBER.fullmatch(text) else text
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value


def _call_key(call: Call) -> str:
    return json.dumps({"name": call.name, "arguments": canonical(call.arguments)}, sort_keys=True, default=str)


def _triples(calls: list[Call]) -> Counter:
    return Counter((c.name, k, json.dumps(canonical(v), sort_keys=True, default=str)) for c in calls for k, v in c.arguments.items())


class SealScore:
    """Running counts for one group of questions."""

    def __init__(self) -> None:
        self.n = self.exact = 0
        self.fn_tp = self.fn_pred = self.fn_gold = 0
        self.arg_tp = self.arg_pred = self.arg_gold = 0

    def add(self, predicted: list[Call], gold: list[Call]) -> bool:
        self.n += 1
        ok = Counter(map(_call_key, predicted)) == Counter(map(_call_key, gold))
        self.exact += ok
        pred_names, gold_names = Counter(c.name for c in predicted), Counter(c.name for c in gold)
        self.fn_tp += sum((pred_names & gold_names).values())
        self.fn_pred += sum(pred_names.values())
        self.fn_gold += sum(gold_names.values())
        pred_args, gold_args = _triples(predicted), _triples(gold)
        self.arg_tp += sum((pred_args & gold_args).values())
        self.arg_pred += sum(pred_args.values())
        self.arg_gold += sum(gold_args.values())
        return ok

    def metrics(self) -> dict[str, Any]:
        def f1(tp: int, pred: int, gold: int) -> tuple[float, float, float]:
            p = tp / pred if pred else 0.0
            r = tp / gold if gold else 0.0
            return round(p, 4), round(r, 4), round(2 * p * r / (p + r), 4) if p + r else 0.0

        fp, fr, ff = f1(self.fn_tp, self.fn_pred, self.fn_gold)
        ap, ar, af = f1(self.arg_tp, self.arg_pred, self.arg_gold)
        return {
            "n": self.n,
            "exact_match": round(self.exact / self.n, 4) if self.n else None,
            "function_precision": fp, "function_recall": fr, "function_f1": ff,
            "parameter_precision": ap, "parameter_recall": ar, "parameter_f1": af,
        }


def evaluate_seal(
    cascade,
    split: str = "test_in_domain",
    data: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    out_dir: Path | None = None,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:

    from hyfunc.data.seal_tools import load_seal_split, seal_data_dir

    directory = seal_data_dir(data, split)
    examples, report = load_seal_split(split, directory, check_answers=False)
    if limit:
        examples = examples[:limit]
    groups = {name: SealScore() for name in ("all", "easy", "difficult", "without_nested")}
    rows: list[dict[str, Any]] = [
        {"position": position, "valid": False, "error": f"not loadable: {reason}"} for position, reason in report.errors
    ]
    errors = no_call = 0
    start = time.perf_counter()
    for ex, res in run_examples(cascade, examples, batch_size, f"seal {split}", progress):
        ok = groups["all"].add(res.calls, ex.answers)
        groups[ex.difficulty].add(res.calls, ex.answers)
        if not ex.nested:
            groups["without_nested"].add(res.calls, ex.answers)
        errors += res.error is not None
        no_call += not res.calls
        rows.append({
            "id": ex.id, "valid": ok, "query": ex.query, "gold": [c.model_dump() for c in ex.answers],
            "result": [c.model_dump() for c in res.calls], "candidates": [c.model_dump() for c in res.candidates],
            "error": res.error, "no_call_reason": res.no_call_reason, "warnings": res.warnings,
            "nested": ex.nested, "gold_in_candidates": ex.gold_in_candidates,
            "tokens": res.tokens.model_dump(), "timings_ms": res.timings_ms.model_dump(),
        })
    # A record the loader rejected counts as a wrong answer with no output.
    for _ in report.errors:
        groups["all"].n += 1
    results: dict[str, Any] = {
        "split": split,
        "data": str(directory),
        "model_versions": cascade.model_versions,
        **groups["all"].metrics(),
        "not_loadable": len(report.errors),
        "errors": errors,
        "no_call": no_call,
        "seconds": round(time.perf_counter() - start, 1),
        "by_difficulty": {k: groups[k].metrics() for k in ("easy", "difficult")},
        "without_nested": groups["without_nested"].metrics(),
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"seal_{split}_result.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"seal {split}: exact {results['exact_match']}, function F1 {results['function_f1']}, "
        f"parameter F1 {results['parameter_f1']} (n={results['n']}, errors {errors}, no-call {no_call})")
    return results
