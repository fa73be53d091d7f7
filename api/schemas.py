"""Request and response bodies of the API (pydantic; they make the OpenAPI document)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from hyfunc.store.status import JobStatus
from hyfunc.store.submissions import (
    CONTROL_FREE_PATTERN,
    MAX_AUTHOR_CHARS,
    MAX_CLIENT_ID_CHARS,
    MAX_MODEL_VERSION_CHARS,
    MAX_TOOLSET_NAME_CHARS,
    MAX_TOOLSET_VERSION,
    TOOLSET_NAME_PATTERN,
    text_problem,
    toolset_ref_problem,
)

# `name` or `name@version` (the version's range is checked when the job is validated).
TOOLSET_REF_PATTERN = r"^[A-Za-z0-9_.\-]+(@[0-9]{1,10})?$"


def _single_line(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _id_text(value: Any) -> Any:
    # JSONL logs number their lines: an integer id is taken as its decimal string (as the batch
    # route and `hyfunc submit` do); true/false and other types stay what they are (refused).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_text(value: Any) -> Any:
    # pydantic would read a number (or a numeric string) as a Unix timestamp; the API
    # documents ISO 8601 date-times and takes nothing else.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date-time with a timezone, e.g. 2026-01-01T00:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must include a timezone, e.g. 2026-01-01T00:00:00Z")
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


def _toolset_ref(value: str) -> str:
    problem = toolset_ref_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def single_line(max_chars: int) -> Any:
    """A line of text for a column of max_chars: no control characters, no lone surrogates."""
    return Annotated[str, Field(max_length=max_chars), AfterValidator(_single_line),
                     Field(json_schema_extra={"pattern": CONTROL_FREE_PATTERN})]


# `name` or `name@version`, the version within the column's range.
ToolsetRef = Annotated[str, AfterValidator(_toolset_ref),
                       Field(json_schema_extra={"pattern": TOOLSET_REF_PATTERN, "maxLength": MAX_TOOLSET_NAME_CHARS + 11})]
# An aware datetime that exists in UTC (naive values and years that fall out of 1..9999 are 422s).
UtcDatetime = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_utc)]
ToolsetName = Annotated[str, Field(min_length=1, max_length=MAX_TOOLSET_NAME_CHARS, pattern=TOOLSET_NAME_PATTERN)]
ToolsetVersion = Annotated[int, Field(ge=1, le=MAX_TOOLSET_VERSION)]


class ErrorOut(BaseModel):
    """Every 4xx: what was wrong, naming the field or limit."""

    detail: str


class ServerErrorOut(BaseModel):
    """A 500 (a bug, logged with its stack) or 503 (the store is unreachable)."""

    detail: str
    request_id: str = Field(description="also in the X-Request-ID header and the server log")


_DESCRIPTIONS = {
    400: "malformed JSON, a body that is not UTF-8, or a cursor this API did not issue",
    401: "missing or invalid API key",
    404: "not found (another tenant's objects are indistinguishable from missing ones)",
    409: "a concurrent change won every retry; send the request again",
    413: "body or batch over its limit (limits.max_body_bytes, limits.max_batch_size)",
    422: "a value the API refuses: the detail names the field and the problem",
    500: "internal error",
    503: "store unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the errors a route can answer, with their real bodies."""
    return {
        code: {"model": ServerErrorOut if code >= 500 else ErrorOut, "description": _DESCRIPTIONS[code]}
        for code in codes
    }


_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}


class JobIn(BaseModel):
    """One intent-to-call request: inline `tools`, or the name of a registered `toolset`
    (`name` for the latest version, `name@3` for a fixed one)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"id": "req-1", "query": "What is the weather in Lyon in celsius?", "tools": [_WEATHER_TOOL]},
        {"query": "What is the weather in Oslo?", "toolset": "weather@1"},
    ]})

    id: Annotated[single_line(MAX_CLIENT_ID_CHARS) | None, BeforeValidator(_id_text), WithJsonSchema({"anyOf": [
        {"type": "string", "maxLength": MAX_CLIENT_ID_CHARS, "pattern": CONTROL_FREE_PATTERN},
        {"type": "integer"}, {"type": "null"}]})] = Field(
        default=None, description="the client's own id, echoed back (an integer is taken as its decimal string)")
    query: str = Field(min_length=1, json_schema_extra={"pattern": "^[^\\x00]*$"},
                       description="limits.max_query_chars at most; no NUL")
    tools: list[dict[str, Any]] | None = Field(default=None, description="limits.max_tools_per_request at most")
    toolset: ToolsetRef | None = None


class JobAccepted(BaseModel):
    id: str
    status: str = "queued"
    # "unavailable": stored as queued while the broker is down; sent when it is back.
    broker: Literal["ok", "unavailable"] = "ok"


class BatchAccepted(BaseModel):
    ids: list[str]
    count: int
    status: str = "queued"
    broker: Literal["ok", "unavailable"] = "ok"


class JobOut(BaseModel):
    """A job: its request, status, result and where its time went. Clients should ignore
    keys they do not know; new ones may be added."""

    model_config = ConfigDict(extra="allow")

    id: str
    client_id: str | None
    status: JobStatus
    query: str | None
    toolset: str | None = Field(description="`name@version` when the job named a toolset")
    calls: list[dict[str, Any]] | None
    candidates: list[dict[str, Any]] | None
    no_call_reason: str | None
    error: str | None
    attempts: int
    worker: str | None
    batch_id: str | None
    batch_size: int | None
    model_versions: dict[str, Any] | None
    replay_of: str | None
    replay_id: str | None
    created_at: str | None
    enqueued_at: str | None
    started_at: str | None
    finished_at: str | None
    timings_ms: dict[str, float | None]
    tokens: dict[str, int | None] = Field(description="every counter of hyfunc.stages.TOKEN_COUNTERS")
    forward_passes: dict[str, int | None]
    warnings: list[str] = Field(default_factory=list, description="schema changes the request was run with")


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class ToolsetIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "weather", "tools": [_WEATHER_TOOL]}]})
    name: ToolsetName
    tools: list[dict[str, Any]]


class ToolsetOut(BaseModel):
    name: str
    version: int
    content_hash: str
    tools: list[dict[str, Any]]
    created_at: datetime


class CallIn(BaseModel):
    name: str = Field(max_length=128)
    arguments: dict[str, Any] = Field(default_factory=dict)


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"verdict": "correct", "author": "ann"},
        {"verdict": "incorrect", "calls": [{"name": "get_weather", "arguments": {"city": "Lyon"}}]}]})
    verdict: Literal["correct", "incorrect"]
    calls: list[CallIn] | None = Field(default=None, description="corrected calls; they win over the job's own in exports")
    author: single_line(MAX_AUTHOR_CHARS) | None = None


class FeedbackOut(BaseModel):
    id: int
    job_id: str
    verdict: str
    calls: list[dict[str, Any]] | None
    author: str | None
    created_at: datetime


class ReplayFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: JobStatus | None = None
    since: UtcDatetime | None = None
    until: UtcDatetime | None = None
    toolset: ToolsetName | None = None


class ReplayIn(BaseModel):
    """Replay jobs given by id, or every job matching a filter (oldest first, up to `limit`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"filter": {"status": "succeeded", "since": "2026-11-01T00:00:00Z"}, "model_version": "lms-v2", "limit": 100}]})
    job_ids: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None, description="job ids; unknown and other tenants' ids are skipped")
    filter: ReplayFilter | None = None
    model_version: single_line(MAX_MODEL_VERSION_CHARS) | None = Field(
        default=None, description="the model version the replay is meant to run on")
    limit: int | None = Field(default=None, ge=1)


class ReplayAccepted(BaseModel):
    id: str
    job_count: int
    job_ids: list[str]


class ReplayReport(BaseModel):
    """What a replay changed: counts, the changed calls (before/after) and accuracy against
    feedback on the originals. Clients should ignore keys they do not know."""

    model_config = ConfigDict(extra="allow")

    id: str
    created_at: str
    selector: dict[str, Any]
    model_version: str | None
    model_versions: list[dict[str, Any]]
    model_version_matched: bool | None
    total: int
    finished: int
    succeeded: int
    failed: int
    pending: int
    changed: int
    unchanged: int
    changes: list[dict[str, Any]]
    accuracy: dict[str, float | int | None]
