"""Run one batch of job ids: claim, run through the runner, write results in one transaction.

Kept free of Celery so the mechanics (claiming, poison isolation, idempotency) are plain
functions over a session factory and a runner.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hyfunc.schema import CallRequest, CallResult, RequestError
from hyfunc.store.db import transaction
from hyfunc.store.jobs import as_uuid, claim_jobs, fail_job, finish_job, job_call_request
from hyfunc.store.models import Job
from worker.runner import BatchRunner

log = logging.getLogger("hyfunc.worker")


@dataclass
class BatchOutcome:
    batch_id: uuid.UUID
    received: int = 0
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0  # already finished, running elsewhere, or unknown: nothing written
    isolated: bool = False  # the batch raised and was re-run job by job
    failures: dict[str, str] = field(default_factory=dict)


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _run_checked(runner: BatchRunner, requests: list[CallRequest]) -> list[CallResult]:
    results = runner.run(requests)
    if len(results) != len(requests):
        raise RuntimeError(f"runner returned {len(results)} results for {len(requests)} requests")
    return results


def process_batch(
    factory: sessionmaker[Session],
    runner: BatchRunner,
    job_ids: Iterable[str | uuid.UUID],
    *,
    worker: str,
    lease_seconds: float,
    max_attempts: int,
) -> BatchOutcome:
    keys = [k for k in (as_uuid(j) for j in job_ids) if k is not None]
    outcome = BatchOutcome(batch_id=uuid.uuid4(), received=len(keys))
    with transaction(factory) as session:
        claim = claim_jobs(
            session, keys, worker=worker, batch_id=outcome.batch_id,
            lease_seconds=lease_seconds, max_attempts=max_attempts,
        )
    outcome.claimed = len(claim.claimed)
    outcome.failed += len(claim.gave_up)
    outcome.skipped = len(set(keys)) - len(claim.claimed) - len(claim.gave_up)
    if not claim.claimed:
        return outcome

    # Read the claimed jobs and rebuild their requests; a stored request that no longer
    # validates fails alone here, before it can take the batch down.
    with factory() as session:
        jobs = list(session.scalars(select(Job).where(Job.id.in_(claim.claimed))))
        cache: dict[int, list[dict[str, Any]]] = {}
        runnable: list[tuple[Job, CallRequest]] = []
        invalid: dict[uuid.UUID, str] = {}
        for job in jobs:
            try:
                runnable.append((job, job_call_request(session, job, cache)))
            except RequestError as err:
                invalid[job.id] = f"invalid request: {err}"
    by_id = {job.id: job for job in jobs}

    results: dict[uuid.UUID, CallResult | str] = {}
    sizes: dict[uuid.UUID, int] = {}
    try:
        out = _run_checked(runner, [req for _, req in runnable]) if runnable else []
        for (job, _), result in zip(runnable, out, strict=True):
            results[job.id] = result
            sizes[job.id] = len(runnable)
    except Exception:
        # A batch that raises is re-run job by job, so one poison job fails alone and
        # the rest of the batch still succeeds.
        log.warning("batch %s of %d raised; retrying job by job\n%s",
                    outcome.batch_id, len(runnable), traceback.format_exc())
        outcome.isolated = True
        for job, req in runnable:
            sizes[job.id] = 1
            try:
                results[job.id] = _run_checked(runner, [req])[0]
            except Exception as err:  # noqa: BLE001 - any failure is this job's error
                results[job.id] = _error_text(err)
    for job_id, message in invalid.items():
        results[job_id] = message
        sizes[job_id] = 0

    versions = dict(getattr(runner, "model_versions", {}) or {})
    # One transaction for the whole batch: results, timings and statuses land together.
    with transaction(factory) as session:
        for job_id, result in results.items():
            job = by_id[job_id]
            if isinstance(result, str):
                written = fail_job(session, job, outcome.batch_id, result,
                                   model_versions=versions, batch_size=sizes[job_id])
                ok = False
            else:
                written = finish_job(session, job, outcome.batch_id, result,
                                     model_versions=versions, batch_size=sizes[job_id])
                ok = result.error is None
            if not written:
                outcome.skipped += 1  # lease expired and another worker took it over
            elif ok:
                outcome.succeeded += 1
            else:
                outcome.failed += 1
                outcome.failures[str(job_id)] = result if isinstance(result, str) else str(result.error)
    return outcome
