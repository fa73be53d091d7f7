"""What the job routes do, out of the routes: parse bodies, validate, store, enqueue.

Every item of a submission is validated (schema and limits, hyfunc.store.submissions)
before the first row is written, so a rejected submission stores and enqueues nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from api.deps import AppState
from api.errors import ApiError
from hyfunc.jsonl import jsonl_text_records
from hyfunc.store.jobs import NewJob
from hyfunc.store.submissions import validate_batch, validate_item
from producer import submit_jobs

__all__ = ["parse_batch_body", "submit", "validate_batch", "validate_item"]


def submit(state: AppState, session: Session, tenant_id: int, new_jobs: Sequence[NewJob]) -> tuple[list[str], str]:
    """Store and enqueue; returns the ids and the broker's state ("ok", or "unavailable":
    the jobs are stored as queued and the sweeper sends them when the broker is back)."""
    done = submit_jobs(state.celery, session, tenant_id, new_jobs, state.config.worker.queue)
    return [str(i) for i in done.ids], "ok" if done.broker_ok else "unavailable"


def parse_jsonl(text: str) -> list[Any]:
    items = []
    for n, value in jsonl_text_records(text):  # lines end at "\n" only (U+2028 may sit in a string)
        if isinstance(value, json.JSONDecodeError):
            raise ApiError(400, f"malformed JSON on line {n}: {value}")
        items.append(value)
    return items


def parse_batch_body(content_type: str, body: bytes) -> list[Any]:
    """A JSON list (or {"jobs": [...]}) for application/json, else JSON Lines."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "body is not UTF-8") from None
    if content_type.startswith("application/json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ApiError(400, f"malformed JSON: {err}") from None
        if isinstance(data, dict) and isinstance(data.get("jobs"), list):
            data = data["jobs"]
        if not isinstance(data, list):
            raise ApiError(422, "a JSON batch must be a list of jobs (or {\"jobs\": [...]})")
        return data
    return parse_jsonl(text)
