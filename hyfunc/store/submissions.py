"""Validating submissions before anything is stored: schema, toolset references, limits.

Shared by every producer (API, `hyfunc submit`, Python code) so they reject the same
things with the same messages. Each limit violation names the config key it broke.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from hyfunc.config import LimitsConfig
from hyfunc.schema import RequestError, Tool, parse_request, schema_depth
from hyfunc.schema_limits import CompileLimits
from hyfunc.schema_limits import tools_problem as compile_problem
from hyfunc.store.jobs import NewJob
from hyfunc.store.models import Feedback, Job, Replay, Toolset
from hyfunc.store.toolsets import get_toolset, parse_toolset_ref

JOB_KEYS = {"id", "query", "tools", "toolset"}

# Text limits are the columns' own, so a value that passes always fits its column.
MAX_CLIENT_ID_CHARS: int = Job.__table__.c.client_id.type.length
MAX_AUTHOR_CHARS: int = Feedback.__table__.c.author.type.length
MAX_MODEL_VERSION_CHARS: int = Replay.__table__.c.model_version.type.length
MAX_TOOLSET_NAME_CHARS: int = Toolset.__table__.c.name.type.length
MAX_TOOLSET_VERSION = 2**31 - 1  # toolsets.version is a 32-bit integer
TOOLSET_NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
# The same rule as a regular expression, for the OpenAPI document: no C0/C1 controls.
CONTROL_FREE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
_TOOLSET_NAME = re.compile(TOOLSET_NAME_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class SubmissionError(ValueError):
    """A rejected submission: the message names the field or the limit. Free of HTTP: the
    API maps it (422, or 413 for SubmissionTooLarge); the CLI prints it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SubmissionTooLarge(SubmissionError):
    """Over a size limit of the whole submission (limits.max_batch_size)."""


def text_problem(value: str, max_chars: int | None = None, *, controls: bool = False) -> str | None:
    """Why a string cannot be stored as given: too long, a NUL (PostgreSQL text cannot hold
    one), another control character (single-line fields only, unless `controls`), or a lone
    surrogate (not encodable as UTF-8)."""
    if max_chars is not None and len(value) > max_chars:
        return f"is {len(value)} characters; at most {max_chars}"
    if "\x00" in value:
        return "contains a NUL character"
    bad = _SURROGATE.search(value) or (None if controls else _CONTROL.search(value))
    if bad:
        kind = "a lone surrogate" if _SURROGATE.match(bad.group()) else "the control character"
        return f"contains {kind} U+{ord(bad.group()):04X}"
    return None


def query_problem(query: Any, limits: LimitsConfig) -> str | None:
    if isinstance(query, str) and len(query) > limits.max_query_chars:
        return f"query is {len(query)} characters; limit limits.max_query_chars is {limits.max_query_chars}"
    if isinstance(query, str):
        problem = text_problem(query, controls=True)  # newlines and tabs are fine in a query
        if problem:
            return f"query {problem}"
    return None


def client_id_problem(client_id: Any) -> str | None:
    # JSONL logs often number their lines: an integer id is taken as its decimal string.
    if isinstance(client_id, bool) or not isinstance(client_id, (str, int)):
        return f"id must be a string, got {type(client_id).__name__}"
    problem = text_problem(str(client_id), MAX_CLIENT_ID_CHARS)
    return f"id {problem}" if problem else None


def toolset_ref_problem(ref: Any) -> str | None:
    """A toolset reference must be `name` or `name@version` with a version that fits."""
    if not isinstance(ref, str):
        return f"toolset must be a name string, got {type(ref).__name__}"
    name, sep, version = ref.rpartition("@")
    if not sep:
        name, version = ref, ""
    if not _TOOLSET_NAME.match(name) or len(name) > MAX_TOOLSET_NAME_CHARS:
        return (f"toolset name must be 1-{MAX_TOOLSET_NAME_CHARS} characters of letters, digits, '_', '.', '-' "
                f"(optionally @version), got {ref[:80]!r}")
    digits = len(str(MAX_TOOLSET_VERSION))
    if sep and not (version.isascii() and version.isdigit() and len(version) <= digits
                    and 1 <= int(version) <= MAX_TOOLSET_VERSION):
        return f"toolset version must be an integer from 1 to {MAX_TOOLSET_VERSION}, got {version[:40]!r}"
    return None


def schema_depth_problem(tools: Any, limits: LimitsConfig) -> str | None:
    """Tools whose parameters nest deeper than limits.max_schema_depth (read on the raw dicts)."""
    if not isinstance(tools, list):
        return None
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        function = tool.get("function", tool)
        params = function.get("parameters") if isinstance(function, dict) else None
        depth = schema_depth(params)
        if depth > limits.max_schema_depth:
            return (f"tools[{i}].parameters nest {depth} levels deep; "
                    f"limit limits.max_schema_depth is {limits.max_schema_depth}")
    return None


def nul_problem(value: Any, where: str) -> str | None:
    """The path of a NUL character anywhere in a JSON value (keys too): PostgreSQL text and jsonb
    cannot hold one, and a NUL in a tool's description or enum value would be exported as is."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str) and "\x00" in node:
            return f"{path} contains a NUL character"
        if isinstance(node, dict):
            for key, sub in node.items():
                if isinstance(key, str) and "\x00" in key:
                    return f"{path} has a key that contains a NUL character"
                stack.append((sub, f"{path}.{key}"))
        elif isinstance(node, list):
            stack.extend((sub, f"{path}[{i}]") for i, sub in enumerate(node))
    return None


def compiled_tools_problem(tools: list[Tool], limits: LimitsConfig, where: str = "tools") -> str | None:
    """A tool whose schema compiles to more than the limits allow (hyfunc/schema_limits.py)."""
    return compile_problem(tools, CompileLimits.from_config(limits), where)


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
        raise SubmissionError(f"{where}a job must be a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - JOB_KEYS)
    if unknown:
        raise SubmissionError(f"{where}unknown fields {unknown}; a job has {sorted(JOB_KEYS)}")
    problem = query_problem(item.get("query"), limits)
    if problem:
        raise SubmissionError(where + problem)
    toolset_ref, inline = item.get("toolset"), item.get("tools")
    if toolset_ref is not None and inline is not None:
        raise SubmissionError(f"{where}give either tools or toolset, not both")
    toolset_id = None
    if toolset_ref is not None:
        problem = toolset_ref_problem(toolset_ref)
        if problem:
            raise SubmissionError(where + problem)
        name, version = parse_toolset_ref(toolset_ref)
        toolset = get_toolset(session, tenant_id, name, version)
        if toolset is None:
            raise SubmissionError(f"{where}toolset {toolset_ref!r} is not registered")
        tools, toolset_id = toolset.tools, toolset.id
    else:
        tools = inline
    if isinstance(tools, list):
        problem = tools_problem(len(tools), limits) or schema_depth_problem(tools, limits)
        if problem:
            raise SubmissionError(where + problem)
    if toolset_id is None:  # a registered toolset was checked when it was registered
        problem = nul_problem(tools, "tools")
        if problem:
            raise SubmissionError(where + problem)
    client_id = item.get("id")
    if client_id is not None:
        problem = client_id_problem(client_id)
        if problem:
            raise SubmissionError(where + problem)
        client_id = str(client_id)
    try:
        request = parse_request({"id": client_id, "query": item.get("query"), "tools": tools})
    except RequestError as err:
        raise SubmissionError(f"{where}{err}") from None
    problem = compiled_tools_problem(request.tools, limits, "toolset tools" if toolset_id is not None else "tools")
    if problem:
        raise SubmissionError(where + problem)
    return NewJob(
        query=request.query,
        tools=[t.to_json() for t in request.tools] if toolset_id is None else None,
        toolset_id=toolset_id,
        client_id=request.id,
    )


def validate_batch(session: Session, tenant_id: int, items: Sequence[Any], limits: LimitsConfig) -> list[NewJob]:
    problem = batch_problem(len(items), limits)
    if problem:
        raise SubmissionTooLarge(problem)
    if not items:
        raise SubmissionError("batch is empty")
    return [validate_item(session, tenant_id, item, limits, f"jobs[{i}]: ") for i, item in enumerate(items)]
