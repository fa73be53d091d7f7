"""SQLAlchemy 2.0 typed models of the job store.

The schema itself lives in migrations/ (Alembic is its only source); these models must
match it, which tests/service/test_migrations.py checks with autogenerate.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from hyfunc.store.status import (
    FINAL_STATUSES,
    JOB_STATUSES,
    QUEUED,
    WORKER_ALIVE,
    WORKER_STATUSES,
    sql_in,
)

__all__ = ["FINAL_STATUSES", "JOB_STATUSES"]  # re-exported: older imports read them from here

VERDICTS = ("correct", "incorrect")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no timezone type and hands back naive values; storing naive UTC and
    re-attaching UTC on the way out keeps comparisons and arithmetic identical on
    SQLite and PostgreSQL.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


# Deterministic constraint names so migrations can drop them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant")


class ApiKey(Base):
    """An API key, stored only as its SHA-256: keys are 256-bit random, so a fast hash
    is as strong as a slow one and keeps the per-request lookup an index probe."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown to operators to tell keys apart
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    tenant: Mapped[Tenant] = relationship(back_populates="keys")


class Toolset(Base):
    """A named, versioned, immutable set of tools; a new version on every content change."""

    __tablename__ = "toolsets"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version", name="uq_toolsets_tenant_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    tools: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Replay(Base):
    """A re-run of historical jobs; its jobs point back to the originals through replay_of."""

    __tablename__ = "replays"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON)  # the filter or job ids it was made from
    model_version: Mapped[str | None] = mapped_column(String(256))  # the version it expects to run on
    job_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_in(JOB_STATUSES)})", name="status"),
        # GET /v1/jobs pages by (created_at, id) within a tenant, optionally by status.
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_tenant_status_created", "tenant_id", "status", "created_at"),
        # The sweeper scans unfinished jobs by age.
        Index("ix_jobs_status_enqueued", "status", "enqueued_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    client_id: Mapped[str | None] = mapped_column(String(256))  # the request's own "id", echoed back
    # {"query": ..., "tools": [...] or null}; tools are null when a toolset is named.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    toolset_id: Mapped[int | None] = mapped_column(ForeignKey("toolsets.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)

    calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    candidates: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    no_call_reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(256))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), index=True)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    model_versions: Mapped[dict[str, str] | None] = mapped_column(JSON)
    warnings: Mapped[list[str] | None] = mapped_column(JSON)  # schema changes the request was run with (0005)
    replay_of: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    replay_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("replays.id"), index=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # Per-stage timings (ms) and token counts as real columns, so SQL can aggregate them.
    queue_wait_ms: Mapped[float | None] = mapped_column(Float)
    lml_ms: Mapped[float | None] = mapped_column(Float)
    retrieve_ms: Mapped[float | None] = mapped_column(Float)
    lms_wait_ms: Mapped[float | None] = mapped_column(Float)  # 0003: null for jobs finished before it
    program_ms: Mapped[float | None] = mapped_column(Float)
    lms_prefill_ms: Mapped[float | None] = mapped_column(Float)
    lms_decode_ms: Mapped[float | None] = mapped_column(Float)
    sample_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    tokens_lml_prompt: Mapped[int | None] = mapped_column(Integer)
    tokens_lms_prompt: Mapped[int | None] = mapped_column(Integer)
    tokens_injected: Mapped[int | None] = mapped_column(Integer)
    tokens_generated: Mapped[int | None] = mapped_column(Integer)
    tokens_shared_prefix: Mapped[int | None] = mapped_column(Integer)
    tokens_prompt_reused: Mapped[int | None] = mapped_column(Integer)  # 0005: null for jobs finished before it
    tokens_prompt_computed: Mapped[int | None] = mapped_column(Integer)
    passes_lml: Mapped[int | None] = mapped_column(Integer)
    passes_lms: Mapped[int | None] = mapped_column(Integer)

    toolset: Mapped[Toolset | None] = relationship(lazy="joined")  # job_to_dict names it
    feedback: Mapped[list[Feedback]] = relationship(back_populates="job", order_by="Feedback.created_at")


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (CheckConstraint("verdict IN ('correct', 'incorrect')", name="verdict"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    corrected_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    author: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="feedback")


class Worker(Base):
    """A worker process's heartbeat row: the sweeper re-enqueues a dead worker's jobs
    within seconds, and /healthz counts the live ones."""

    __tablename__ = "workers"
    __table_args__ = (CheckConstraint(f"status IN ({sql_in(WORKER_STATUSES)})", name="status"),)

    name: Mapped[str] = mapped_column(String(256), primary_key=True)  # the jobs.worker it stamps
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(256))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=WORKER_ALIVE)
    # Messages the worker holds but has not claimed yet (its prefetch buffer), as of its
    # last beat: the sweeper does not take those for lost.
    reserved: Mapped[int] = mapped_column(Integer, default=0)


class MaintenanceLock(Base):
    """One row per fleet-wide periodic task (the sweep). Every worker may run it: whoever moves
    ``due_at`` forward with a conditional UPDATE (only while it is past) runs it this time, so
    it runs about once per interval with no process dedicated to it (hyfunc.store.workers.take_turn)."""

    __tablename__ = "maintenance_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256), default="")  # the worker that took the last turn
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Counter(Base):
    """Incremental counters for /metrics (jobs per status, latency and batch-size buckets),
    bumped in the same transaction as the status changes they count, so a scrape reads a
    few dozen rows instead of aggregating the jobs table."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)
