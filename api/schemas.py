"""Request and response bodies of the API (pydantic; they make the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobIn(BaseModel):
    """One intent-to-call request: inline `tools`, or the name of a registered `toolset`
    (`name` for the latest version, `name@3` for a fixed one)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=256, description="the client's own id, echoed back")
    query: str
    tools: list[dict[str, Any]] | None = None
    toolset: str | None = None


class JobAccepted(BaseModel):
    id: str
    status: str = "queued"


class BatchAccepted(BaseModel):
    ids: list[str]
    count: int


class JobList(BaseModel):
    jobs: list[dict[str, Any]]
    next_cursor: str | None


class ToolsetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    tools: list[dict[str, Any]]


class ToolsetOut(BaseModel):
    name: str
    version: int
    content_hash: str
    tools: list[dict[str, Any]]
    created_at: datetime


class CallIn(BaseModel):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["correct", "incorrect"]
    calls: list[CallIn] | None = Field(default=None, description="corrected calls; they win over the job's own in exports")
    author: str | None = Field(default=None, max_length=256)


class FeedbackOut(BaseModel):
    id: int
    job_id: str
    verdict: str
    calls: list[dict[str, Any]] | None
    author: str | None
    created_at: datetime


class ReplayFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None
    since: datetime | None = None
    until: datetime | None = None
    toolset: str | None = None


class ReplayIn(BaseModel):
    """Replay jobs given by id, or every job matching a filter (oldest first, up to `limit`)."""

    model_config = ConfigDict(extra="forbid")
    job_ids: list[str] | None = None
    filter: ReplayFilter | None = None
    model_version: str | None = Field(default=None, description="the model version the replay is meant to run on")
    limit: int | None = Field(default=None, ge=1)


class ReplayAccepted(BaseModel):
    id: str
    job_count: int
    job_ids: list[str]
