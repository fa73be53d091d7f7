"""JSONL, read one way everywhere: requests, training records, BFCL files, uploaded batches.

Only "\n" ends a line. `str.splitlines` would also split on U+2028, U+2029, U+0085 and other
separators that a JSON string may hold raw, cutting a valid record in two. Blank lines are
skipped; line numbers count from 1 and include them, so an error names the line an editor shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _records(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            yield number, err


def jsonl_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) per non-blank line of a JSONL file; a line that is not valid
    JSON gives its `json.JSONDecodeError` as the value, so the caller decides what a bad line means."""
    # A text file iterates on "\n" (and "\r\n"), never on U+2028.
    with Path(path).open(encoding="utf-8") as handle:
        yield from _records(handle)


def jsonl_text_records(text: str) -> Iterator[tuple[int, Any]]:
    """`jsonl_records` for JSONL already in memory (an uploaded body)."""
    return _records(text.split("\n"))
