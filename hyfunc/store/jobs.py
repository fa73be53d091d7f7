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
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from hyfunc.schema import CallRequest, CallResult, parse_request
from hyfunc.stages import STAGES, TOKEN_COUNTERS, timing_column, token_column
from hyfunc.store import counters
from hyfunc.store.models import Job, Toolset, utcnow
from hyfunc.store.status import FAILED, QUEUED, RUNNING, SUCCEEDED
from hyfunc.store.status import is_final as is_final  # re-exported for older imports


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
            status=QUEUED,
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
    counters.move(session, None, QUEUED, len(rows))
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
    """Raises ValueError for a cursor this API did not produce (the API also signs its
    cursors; this keeps a forged one from reaching SQL with a time it cannot bind)."""
    padded = cursor + "=" * (-len(cursor) % 4)
    created, _, hex_id = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
    when = datetime.fromisoformat(created)
    if when.tzinfo is None:
        raise ValueError("cursor time has no timezone")
    try:
        when = when.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("cursor time is out of range") from None
    return when, uuid.UUID(hex_id)


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
    """Mark the claimable jobs among job_ids running under batch_id.

    The claimable rows are read FOR UPDATE first (PostgreSQL re-checks the condition
    after a concurrent claim commits), so the counters know which status each one left.
    """
    ids = list(dict.fromkeys(job_ids))
    now = utcnow()
    claimable = and_(
        Job.id.in_(ids),
        or_(Job.status == QUEUED, and_(Job.status == RUNNING, Job.lease_expires_at < now)),
    )
    rows = session.execute(select(Job.id, Job.status, Job.attempts).where(claimable).with_for_update()).all()
    if not rows:
        return Claim(claimed=[], gave_up=[])
    was = {row.id: row.status for row in rows}
    # A job that keeps losing its worker (e.g. one that crashes the process) is given up
    # rather than retried forever.
    out_of_attempts = [row.id for row in rows if row.attempts >= max_attempts]
    runnable = [row.id for row in rows if row.attempts < max_attempts]
    gave_up: list[uuid.UUID] = []
    if out_of_attempts:
        gave_up = list(session.scalars(
            update(Job).where(Job.id.in_(out_of_attempts), claimable)
            .values(status=FAILED, finished_at=now, lease_expires_at=None,
                    error=f"gave up after {max_attempts} attempts: the worker was lost or the lease expired each time")
            .returning(Job.id)
        ))
    claimed: list[uuid.UUID] = []
    if runnable:
        claimed = list(session.scalars(
            update(Job).where(Job.id.in_(runnable), claimable)
            .values(status=RUNNING, worker=worker, batch_id=batch_id, started_at=now, batch_size=len(runnable),
                    lease_expires_at=now + timedelta(seconds=lease_seconds), attempts=Job.attempts + 1)
            .returning(Job.id)
        ))
        if len(claimed) != len(runnable):
            session.execute(update(Job).where(Job.id.in_(claimed)).values(batch_size=len(claimed)))
    for job_id in gave_up:
        counters.move(session, was[job_id], FAILED)
    for job_id in claimed:
        counters.move(session, was[job_id], RUNNING)
    return Claim(claimed=claimed, gave_up=gave_up)


def _ms_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds() * 1000.0


def _owned(job_id: uuid.UUID, batch_id: uuid.UUID) -> Any:
    return and_(Job.id == job_id, Job.status == RUNNING, Job.batch_id == batch_id)


def _count_final(session: Session, status: str, timings: dict[str, float | None]) -> None:
    counters.move(session, RUNNING, status)
    if status != SUCCEEDED:
        return
    for stage in STAGES:
        value = timings.get(timing_column(stage))
        if value is not None:
            counters.observe(session, f"stage_ms.{stage}", value, counters.LATENCY_BUCKETS_MS)


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
    status = FAILED if result.error else SUCCEEDED
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
        warnings=list(result.warnings),
        passes_lml=passes.lml,
        passes_lms=passes.lms,
    )
    for stage in STAGES[1:]:  # the cascade's stages; queue_wait is the store's own
        values[timing_column(stage)] = getattr(t, stage)
    for counter in TOKEN_COUNTERS:
        values[token_column(counter)] = getattr(tok, counter)
    res = session.execute(update(Job).where(_owned(job.id, batch_id)).values(**values))
    if res.rowcount != 1:
        return False
    _count_final(session, status, values)
    return True


def fail_job(
    session: Session, job: Job, batch_id: uuid.UUID, error: str, *, model_versions: dict[str, str] | None, batch_size: int
) -> bool:
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(_owned(job.id, batch_id))
        .values(
            status=FAILED,
            error=error,
            finished_at=now,
            lease_expires_at=None,
            batch_size=batch_size,
            model_versions=model_versions,
            queue_wait_ms=_ms_between(job.created_at, job.started_at),
        )
    )
    if res.rowcount != 1:
        return False
    _count_final(session, FAILED, {})
    return True


def start_jobs(session: Session, jobs: Sequence[Job], *, worker: str, batch_id: uuid.UUID) -> None:
    """Mark freshly created jobs running in one batch without a claim (the embedded path,
    which runs them in this very process)."""
    now = utcnow()
    for job in jobs:
        job.status, job.worker, job.batch_id, job.started_at, job.attempts = RUNNING, worker, batch_id, now, 1
    session.flush()
    counters.move(session, QUEUED, RUNNING, len(jobs))


def release_jobs_of(session: Session, workers: Sequence[str]) -> list[uuid.UUID]:
    """Running jobs of dead workers go back to queued, not yet sent (enqueued_at NULL),
    so the sweeper sends them at once instead of after their lease. A batch that was not
    dead after all can no longer write them: its finish is conditioned on 'running'."""
    if not workers:
        return []
    ids = list(session.scalars(
        update(Job).where(Job.status == RUNNING, Job.worker.in_(list(workers)))
        .values(status=QUEUED, lease_expires_at=None, enqueued_at=None).returning(Job.id)
    ))
    counters.move(session, RUNNING, QUEUED, len(ids))
    counters.count(session, "jobs.requeued.dead_worker", len(ids))
    return ids


def mark_unsent(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """The broker refused these ids: NULL enqueued_at tells the sweeper to send them."""
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(list(job_ids)), Job.status == QUEUED).values(enqueued_at=None))


def mark_enqueued(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(list(job_ids))).values(enqueued_at=utcnow()))


def jobs_to_enqueue(
    session: Session,
    *,
    grace_seconds: float,
    lease_seconds: float,
    broker_depth: int | None,
    in_flight: int,
    limit: int = 2000,
) -> list[uuid.UUID]:
    """Queued jobs without a message in the broker, oldest first (the sweeper sends them).

    - never sent (enqueued_at NULL: the broker was down, or a dead worker's job);
    - lost messages: the broker is first-in first-out, so its `broker_depth` messages
      belong to the newest queued jobs; queued jobs beyond those (and beyond the
      `in_flight` messages workers hold) that were sent more than grace_seconds ago have
      lost their message (e.g. a broker restarted without persistence). A job sent
      recently, or one still covered by the broker's count, is never sent twice;
    - running past its lease (a worker that never sent a heartbeat) or queued past the
      lease: the fallback when the broker's depth is unknown.
    """
    now = utcnow()
    ids = list(session.scalars(
        select(Job.id).where(Job.status == QUEUED, Job.enqueued_at.is_(None)).order_by(Job.created_at).limit(limit)
    ))
    cutoff = now - timedelta(seconds=lease_seconds)
    expired = select(Job.id).where(
        or_(and_(Job.status == QUEUED, Job.enqueued_at < cutoff),
            and_(Job.status == RUNNING, Job.lease_expires_at < now, Job.enqueued_at < cutoff))
    ).order_by(Job.enqueued_at).limit(limit)
    seen = set(ids)
    ids += [i for i in session.scalars(expired) if i not in seen]
    if broker_depth is not None and len(ids) < limit:
        sent = session.scalar(select(func.count()).where(Job.status == QUEUED, Job.enqueued_at.is_not(None))) or 0
        lost = sent - broker_depth - in_flight
        if lost > 0:
            stale = select(Job.id).where(
                Job.status == QUEUED, Job.enqueued_at < now - timedelta(seconds=grace_seconds)
            ).order_by(Job.enqueued_at).limit(min(lost, limit - len(ids)))
            seen = set(ids)
            ids += [i for i in session.scalars(stale) if i not in seen]
    return ids[:limit]


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
        "timings_ms": {stage: getattr(job, timing_column(stage)) for stage in STAGES},
        "tokens": {counter: getattr(job, token_column(counter)) for counter in TOKEN_COUNTERS},
        "warnings": job.warnings or [],
        "forward_passes": {"lml": job.passes_lml, "lms": job.passes_lms},
    }
    if job.toolset is not None:
        data["toolset"] = f"{job.toolset.name}@{job.toolset.version}"
    if tools is not None:
        data["tools"] = tools
    return data
