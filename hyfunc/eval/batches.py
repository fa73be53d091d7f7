"""Run evaluation examples through a cascade in batches: the loop every benchmark shares."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tqdm import tqdm

from hyfunc.schema import CallRequest, CallResult


def run_examples(
    cascade: Any,
    examples: Sequence[Any],
    batch_size: int,
    desc: str,
    progress: bool = True,
    request_id: Callable[[int, Any], str] | None = None,
) -> Iterator[tuple[Any, CallResult]]:
    """Yield (example, result) in order. Examples carry `query` and `tools`, and `id` unless
    `request_id(position, example)` names them."""
    name = request_id or (lambda _position, ex: ex.id)
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = examples[start : start + batch_size]
        requests = [
            CallRequest(id=name(start + i, ex), query=ex.query, tools=ex.tools) for i, ex in enumerate(chunk)
        ]
        yield from zip(chunk, cascade.run(requests), strict=True)
