"""Validating submissions before anything is stored: schema, toolset references, limits.

Shared by every producer (API, `hyfunc submit`, Python code) so they reject the same
things with the same messages. Each limit violation names the config key it broke.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from hyfunc.config import LimitsConfig
from hyfunc.schema import RequestError, parse_request
from hyfunc.store.jobs import NewJob
from hyfunc.store.toolsets import get_toolset, parse_toolset_ref

JOB_KEYS = {"id", "query", "tools", "toolset"}


class SubmissionError(ValueError):
    """A rejected submission; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def query_problem(query: Any, limits: LimitsConfig) -> str | None:
    if isinstance(query, str) and len(query) > limits.max_query_chars:
        return f"query is {len(query)} characters; limit limits.max_query_chars is {limits.max_query_chars}"
    return None


def tools_problem(count: int, limits: LimitsConfig) -> str | None:
    if count > limits.max_tools_per_request:
        return f"{count} tools; limit limits.max_tools_per_request is {limits.max_tools_per_request}"
    return None


def batch_problem(count: int, limits: LimitsConfig) -> str | None:
    if count > limits.max_batch_size:
        return f"batch has {count} jobs; limit limits.max_batch_size is {limits.max_batch_size}"
    return None


def validate_item(session: Session, tenant_id: int, item: Any, limits: LimitsConfig, where: str = "") -> NewJob:
    """One job dict -> NewJob, or SubmissionError naming the field or limit."""
    if not isinstance(item, dict):
        raise SubmissionError(422, f"{where}a job must be a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - JOB_KEYS)
    if unknown:
        raise SubmissionError(422, f"{where}unknown fields {unknown}; a job has {sorted(JOB_KEYS)}")
    problem = query_problem(item.get("query"), limits)
    if problem:
        raise SubmissionError(422, where + problem)
    toolset_ref, inline = item.get("toolset"), item.get("tools")
    if toolset_ref is not None and inline is not None:
        raise SubmissionError(422, f"{where}give either tools or toolset, not both")
    toolset_id = None
    if toolset_ref is not None:
        if not isinstance(toolset_ref, str):
            raise SubmissionError(422, f"{where}toolset must be a name string")
        name, version = parse_toolset_ref(toolset_ref)
        toolset = get_toolset(session, tenant_id, name, version)
        if toolset is None:
            raise SubmissionError(422, f"{where}toolset {toolset_ref!r} is not registered")
        tools, toolset_id = toolset.tools, toolset.id
    else:
        tools = inline
    if isinstance(tools, list):
        problem = tools_problem(len(tools), limits)
        if problem:
            raise SubmissionError(422, where + problem)
    client_id = item.get("id")
    if client_id is not None and not isinstance(client_id, str):
        client_id = str(client_id)  # JSONL logs often number their lines
    try:
        request = parse_request({"id": client_id, "query": item.get("query"), "tools": tools})
    except RequestError as err:
        raise SubmissionError(422, f"{where}{err}") from None
    return NewJob(
        query=request.query,
        tools=[t.to_json() for t in request.tools] if toolset_id is None else None,
        toolset_id=toolset_id,
        client_id=request.id,
    )


def validate_batch(session: Session, tenant_id: int, items: Sequence[Any], limits: LimitsConfig) -> list[NewJob]:
    problem = batch_problem(len(items), limits)
    if problem:
        raise SubmissionError(413, problem)
    if not items:
        raise SubmissionError(422, "batch is empty")
    return [validate_item(session, tenant_id, item, limits, f"jobs[{i}]: ") for i, item in enumerate(items)]
