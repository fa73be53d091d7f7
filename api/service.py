"""What the job routes do, out of the routes: validate, store, then enqueue.

Every item of a submission is validated (schema and limits) before the first row is
written, so a rejected submission stores and enqueues nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from api.deps import AppState
from api.errors import ApiError
from api.limits import batch_problem, query_problem, tools_problem
from hyfunc.config import LimitsConfig
from hyfunc.schema import RequestError, parse_request
from hyfunc.store.jobs import NewJob, create_jobs
from hyfunc.store.toolsets import get_toolset, parse_toolset_ref
from worker.app import enqueue

log = logging.getLogger("hyfunc.api")

JOB_KEYS = {"id", "query", "tools", "toolset"}


def validate_item(session: Session, tenant_id: int, item: Any, limits: LimitsConfig, where: str = "") -> NewJob:
    if not isinstance(item, dict):
        raise ApiError(422, f"{where}a job must be a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - JOB_KEYS)
    if unknown:
        raise ApiError(422, f"{where}unknown fields {unknown}; a job has {sorted(JOB_KEYS)}")
    problem = query_problem(item.get("query"), limits)
    if problem:
        raise ApiError(422, where + problem)
    toolset_ref, inline = item.get("toolset"), item.get("tools")
    if toolset_ref is not None and inline is not None:
        raise ApiError(422, f"{where}give either tools or toolset, not both")
    toolset_id = None
    if toolset_ref is not None:
        if not isinstance(toolset_ref, str):
            raise ApiError(422, f"{where}toolset must be a name string")
        name, version = parse_toolset_ref(toolset_ref)
        toolset = get_toolset(session, tenant_id, name, version)
        if toolset is None:
            raise ApiError(422, f"{where}toolset {toolset_ref!r} is not registered")
        tools, toolset_id = toolset.tools, toolset.id
    else:
        tools = inline
    if isinstance(tools, list):
        problem = tools_problem(len(tools), limits)
        if problem:
            raise ApiError(422, where + problem)
    try:
        request = parse_request({"id": item.get("id"), "query": item.get("query"), "tools": tools})
    except RequestError as err:
        raise ApiError(422, f"{where}{err}") from None
    return NewJob(
        query=request.query,
        tools=[t.to_json() for t in request.tools] if toolset_id is None else None,
        toolset_id=toolset_id,
        client_id=request.id,
    )


def validate_batch(session: Session, tenant_id: int, items: Sequence[Any], limits: LimitsConfig) -> list[NewJob]:
    problem = batch_problem(len(items), limits)
    if problem:
        raise ApiError(413, problem)
    if not items:
        raise ApiError(422, "batch is empty")
    return [validate_item(session, tenant_id, item, limits, f"jobs[{i}]: ") for i, item in enumerate(items)]


def submit(state: AppState, session: Session, tenant_id: int, new_jobs: Sequence[NewJob]) -> list[str]:
    """Store the jobs (one transaction), then enqueue their ids.

    The rows are committed before the messages go out, so a worker never receives an id
    it cannot find; if the broker is down the jobs stay queued and the sweeper sends them.
    """
    jobs = create_jobs(session, tenant_id, new_jobs)
    ids = [str(j.id) for j in jobs]
    session.commit()
    try:
        enqueue(state.celery, ids, state.config.worker.queue)
    except Exception:  # noqa: BLE001 - the sweeper re-enqueues; the client still gets its ids
        log.exception("enqueue of %d jobs failed; the sweeper will send them after the lease", len(ids))
    return ids


def parse_jsonl(text: str) -> list[Any]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ApiError(400, f"malformed JSON on line {n}: {err}") from None
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
