"""Job data access: create, read, page, and the worker's claim / finish / sweep steps.

Exactly-once is enforced here, in SQL: a worker *claims* jobs with a conditional UPDATE
(only queued jobs, or running jobs whose lease ran out), stamping its own batch id; it
writes a result with an UPDATE conditioned on status='running' AND that batch id. A
duplicate delivery therefore matches no row and writes nothing, and a job taken over
after a lease expiry can be finished by only one of the two workers.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from hyfunc.schema import CallRequest, CallResult, parse_request
from hyfunc.store.models import FINAL_STATUSES, Job, Toolset, utcnow


@dataclass(frozen=True)
class NewJob:
    """One job to create: the request as the client sent it (tools inline or a toolset)."""

    query: str
    tools: list[dict[str, Any]] | None = None
    toolset_id: int | None = None
    client_id: str | None = None
    replay_of: uuid.UUID | None = None
    replay_id: uuid.UUID | None = None


def create_jobs(session: Session, tenant_id: int, new_jobs: Sequence[NewJob]) -> list[Job]:
    """Insert queued jobs (the caller enqueues their ids after the commit)."""
    now = utcnow()
    rows = [
        Job(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            client_id=spec.client_id,
            request={"query": spec.query, "tools": spec.tools},
            toolset_id=spec.toolset_id,
            status="queued",
            attempts=0,
            replay_of=spec.replay_of,
            replay_id=spec.replay_id,
            created_at=now,
            enqueued_at=now,
        )
        for spec in new_jobs
    ]
    session.add_all(rows)
    session.flush()
    return rows


def as_uuid(value: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def get_job(session: Session, tenant_id: int, job_id: str | uuid.UUID) -> Job | None:
    """A tenant's job; another tenant's job is indistinguishable from a missing one."""
    key = as_uuid(job_id)
    if key is None:
        return None
    job = session.get(Job, key)
    if job is None or job.tenant_id != tenant_id:
        return None
    return job


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id.hex}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError for a cursor this API did not produce."""
    padded = cursor + "=" * (-len(cursor) % 4)
    created, _, hex_id = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
    return datetime.fromisoformat(created), uuid.UUID(hex_id)


def list_jobs(
    session: Session,
    tenant_id: int,
    *,
    status: str | None = None,
    since: datetime | None = None,
    toolset: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first, keyset-paged on (created_at, id); returns (jobs, next cursor or None)."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        query = query.where(Job.status == status)
    if since:
        query = query.where(Job.created_at >= since)
    if toolset:
        query = query.join(Toolset, Job.toolset_id == Toolset.id).where(Toolset.name == toolset)
    if cursor:
        created, last_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def job_tools(session: Session, job: Job, cache: dict[int, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """The tools a job runs against: inline, or its (immutable) toolset version's."""
    if job.request.get("tools") is not None:
        return job.request["tools"]
    if job.toolset_id is None:
        return []
    if cache is not None and job.toolset_id in cache:
        return cache[job.toolset_id]
    toolset = session.get(Toolset, job.toolset_id)
    tools = toolset.tools if toolset else []
    if cache is not None:
        cache[job.toolset_id] = tools
    return tools


def job_call_request(session: Session, job: Job, cache: dict[int, list[dict[str, Any]]] | None = None) -> CallRequest:
    """Rebuild the CallRequest; raises RequestError if the stored request is not valid."""
    return parse_request({"id": str(job.id), "query": job.request["query"], "tools": job_tools(session, job, cache)})


# --- worker side --------------------------------------------------------------------


@dataclass
class Claim:
    claimed: list[uuid.UUID]
    gave_up: list[uuid.UUID]  # claimable but out of attempts: failed without running


def claim_jobs(
    session: Session,
    job_ids: Iterable[uuid.UUID],
    *,
    worker: str,
    batch_id: uuid.UUID,
    lease_seconds: float,
    max_attempts: int,
) -> Claim:
    """Mark the claimable jobs among job_ids running under batch_id (one conditional UPDATE)."""
    ids = list(dict.fromkeys(job_ids))
    now = utcnow()
    claimable = and_(
        Job.id.in_(ids),
        or_(
            Job.status == "queued",
            and_(Job.status == "running", Job.lease_expires_at < now),
        ),
    )
    # A job that keeps losing its worker (e.g. one that crashes the process) is given up
    # rather than retried forever.
    gave_up = list(
        session.scalars(
            update(Job)
            .where(claimable, Job.attempts >= max_attempts)
            .values(
                status="failed",
                error=f"gave up after {max_attempts} attempts: the worker was lost or the lease expired each time",
                finished_at=now,
                lease_expires_at=None,
            )
            .returning(Job.id)
        )
    )
    claimed = list(
        session.scalars(
            update(Job)
            .where(claimable, Job.attempts < max_attempts)
            .values(
                status="running",
                worker=worker,
                batch_id=batch_id,
                started_at=now,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1,
            )
            .returning(Job.id)
        )
    )
    size = len(claimed)
    if claimed:
        session.execute(update(Job).where(Job.id.in_(claimed)).values(batch_size=size))
    return Claim(claimed=claimed, gave_up=gave_up)


def _ms_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds() * 1000.0


def _owned(job_id: uuid.UUID, batch_id: uuid.UUID) -> Any:
    return and_(Job.id == job_id, Job.status == "running", Job.batch_id == batch_id)


def finish_job(
    session: Session,
    job: Job,
    batch_id: uuid.UUID,
    result: CallResult,
    *,
    model_versions: dict[str, str],
    batch_size: int,
) -> bool:
    """Write a result if this batch still owns the job; False means someone else finished it."""
    now = utcnow()
    status = "failed" if result.error else "succeeded"
    t, tok, passes = result.timings_ms, result.tokens, result.forward_passes
    values: dict[str, Any] = dict(
        status=status,
        calls=[c.model_dump(mode="json") for c in result.calls],
        candidates=[c.model_dump(mode="json") for c in result.candidates],
        no_call_reason=result.no_call_reason,
        error=result.error,
        batch_size=batch_size,
        model_versions=model_versions,
        finished_at=now,
        lease_expires_at=None,
        queue_wait_ms=_ms_between(job.created_at, job.started_at),
        lml_ms=t.lml,
        retrieve_ms=t.retrieve,
        lms_prefill_ms=t.lms_prefill,
        lms_decode_ms=t.lms_decode,
        total_ms=t.total,
        tokens_lml_prompt=tok.lml_prompt,
        tokens_lms_prompt=tok.lms_prompt,
        tokens_injected=tok.injected,
        tokens_generated=tok.generated,
        tokens_shared_prefix=tok.shared_prefix,
        passes_lml=passes.lml,
        passes_lms=passes.lms,
    )
    res = session.execute(update(Job).where(_owned(job.id, batch_id)).values(**values))
    return res.rowcount == 1


def fail_job(
    session: Session, job: Job, batch_id: uuid.UUID, error: str, *, model_versions: dict[str, str] | None, batch_size: int
) -> bool:
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(_owned(job.id, batch_id))
        .values(
            status="failed",
            error=error,
            finished_at=now,
            lease_expires_at=None,
            batch_size=batch_size,
            model_versions=model_versions,
            queue_wait_ms=_ms_between(job.created_at, job.started_at),
        )
    )
    return res.rowcount == 1


def stale_jobs(session: Session, *, lease_seconds: float, limit: int = 1000) -> list[uuid.UUID]:
    """Jobs to re-enqueue: queued but not picked up within a lease (lost message), or
    running past their lease (lost worker). Their enqueued_at is bumped so one sweep
    re-enqueues a job once per lease, not on every tick."""
    now = utcnow()
    cutoff = now - timedelta(seconds=lease_seconds)
    ids = list(
        session.scalars(
            select(Job.id)
            .where(
                or_(
                    and_(Job.status == "queued", Job.enqueued_at < cutoff),
                    and_(Job.status == "running", Job.lease_expires_at < now, Job.enqueued_at < cutoff),
                )
            )
            .order_by(Job.enqueued_at)
            .limit(limit)
        )
    )
    if ids:
        session.execute(update(Job).where(Job.id.in_(ids)).values(enqueued_at=now))
    return ids


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES


def job_to_dict(job: Job, *, tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The API's view of a job."""
    data: dict[str, Any] = {
        "id": str(job.id),
        "client_id": job.client_id,
        "status": job.status,
        "query": job.request.get("query"),
        "toolset": None,
        "calls": job.calls,
        "candidates": job.candidates,
        "no_call_reason": job.no_call_reason,
        "error": job.error,
        "attempts": job.attempts,
        "worker": job.worker,
        "batch_id": str(job.batch_id) if job.batch_id else None,
        "batch_size": job.batch_size,
        "model_versions": job.model_versions,
        "replay_of": str(job.replay_of) if job.replay_of else None,
        "replay_id": str(job.replay_id) if job.replay_id else None,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "timings_ms": {
            "queue_wait": job.queue_wait_ms,
            "lml": job.lml_ms,
            "retrieve": job.retrieve_ms,
            "lms_prefill": job.lms_prefill_ms,
            "lms_decode": job.lms_decode_ms,
            "total": job.total_ms,
        },
        "tokens": {
            "lml_prompt": job.tokens_lml_prompt,
            "lms_prompt": job.tokens_lms_prompt,
            "injected": job.tokens_injected,
            "generated": job.tokens_generated,
            "shared_prefix": job.tokens_shared_prefix,
        },
        "forward_passes": {"lml": job.passes_lml, "lms": job.passes_lms},
    }
    if job.toolset is not None:
        data["toolset"] = f"{job.toolset.name}@{job.toolset.version}"
    if tools is not None:
        data["tools"] = tools
    return data
