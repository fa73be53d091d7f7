"""`hyfunc eval demo`: the shipped models on the demo task's held-out split."""

from __future__ import annotations

import statistics
from typing import Any

from hyfunc.eval.batches import run_examples
from hyfunc.eval.scoring import Scoreboard


def evaluate_demo(cascade, n: int = 400, seed: int = 1, batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    from hyfunc.data.demo_task import generate_demo_examples

    examples = generate_demo_examples("heldout", n, seed)
    board = Scoreboard()
    totals: list[float] = []  # per-call cascade time (timings_ms.total), as each result reports it
    for ex, result in run_examples(
        cascade, examples, batch_size, "eval demo", progress, request_id=lambda position, _ex: str(position)
    ):
        board.add(ex.query, ex.tools, ex.answers, result.calls, result.error)
        totals.append(result.timings_ms.total)
    metrics = board.metrics()
    metrics["batch_size"] = batch_size
    metrics["p50_ms_per_call"] = round(statistics.median(totals), 1) if totals else None
    metrics["mismatches"] = board.mismatches[:10]
    return metrics
