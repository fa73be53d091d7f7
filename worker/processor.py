"""Run one batch of job ids: claim, run through the runner, write results in one transaction.

Kept free of Celery so the mechanics (claiming, poison isolation, deadlines, idempotency,
database outages) are plain functions over a session factory and a runner.

- A claim that cannot reach the database raises StoreUnavailable: nothing was claimed,
  so the caller must requeue the messages, not ack them.
- Once jobs are claimed, reading them and writing their results are retried for up to
  `db_retry_seconds` while the database is unreachable, so a computed batch is written
  when the database is back instead of being thrown away.
- A batch that raises, or runs past `batch_deadline` seconds, is re-run job by job (each
  with the same deadline): a poison or runaway job fails alone and the rest succeed.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hyfunc.schema import CallRequest, CallResult, RequestError
from hyfunc.store import counters
from hyfunc.store.db import transaction
from hyfunc.store.errors import StoreUnavailable, is_unavailable
from hyfunc.store.jobs import as_uuid, claim_jobs, fail_job, finish_job, job_call_request
from hyfunc.store.models import Job
from worker.deadline import DeadlineExceeded, deadline
from worker.runner import BatchRunner

log = logging.getLogger("hyfunc.worker")

T = TypeVar("T")


@dataclass
class BatchOutcome:
    batch_id: uuid.UUID
    received: int = 0
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0  # already finished, running elsewhere, or unknown: nothing written
    isolated: bool = False  # the batch raised or overran and was re-run job by job
    timed_out: int = 0  # jobs that ran past the deadline alone
    failures: dict[str, str] = field(default_factory=dict)


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _run_checked(runner: BatchRunner, requests: list[CallRequest], seconds: float | None) -> list[CallResult]:
    with deadline(seconds):
        results = runner.run(requests)
    if len(results) != len(requests):
        raise RuntimeError(f"runner returned {len(results)} results for {len(requests)} requests")
    return results


def _with_retry(what: str, fn: Callable[[], T], retry_seconds: float, sleep: Callable[[float], None]) -> T:
    """fn(), retried while the database is unreachable (for up to retry_seconds)."""
    give_up = time.monotonic() + retry_seconds
    pause = 0.5
    while True:
        try:
            return fn()
        except Exception as err:
            if not is_unavailable(err) or time.monotonic() >= give_up:
                raise
            log.warning("%s: database unreachable (%s); retrying in %.1f s", what, type(err).__name__, pause)
            sleep(pause)
            pause = min(pause * 2, 5.0)


def process_batch(
    factory: sessionmaker[Session],
    runner: BatchRunner,
    job_ids: Iterable[str | uuid.UUID],
    *,
    worker: str,
    lease_seconds: float,
    max_attempts: int,
    batch_deadline: float | None = None,
    db_retry_seconds: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchOutcome:
    keys = [k for k in (as_uuid(j) for j in job_ids) if k is not None]
    outcome = BatchOutcome(batch_id=uuid.uuid4(), received=len(keys))

    def claim() -> Any:
        with transaction(factory) as session:
            return claim_jobs(session, keys, worker=worker, batch_id=outcome.batch_id,
                              lease_seconds=lease_seconds, max_attempts=max_attempts)

    try:
        claimed = claim()
    except Exception as err:
        if is_unavailable(err):
            raise StoreUnavailable(f"claim of {len(keys)} jobs: {type(err).__name__}") from err
        raise
    outcome.claimed = len(claimed.claimed)
    outcome.failed += len(claimed.gave_up)
    outcome.skipped = len(set(keys)) - len(claimed.claimed) - len(claimed.gave_up)
    if not claimed.claimed:
        return outcome

    # Read the claimed jobs and rebuild their requests; a stored request that no longer
    # validates fails alone here, before it can take the batch down.
    def read() -> tuple[list[Job], list[tuple[Job, CallRequest]], dict[uuid.UUID, str]]:
        with factory() as session:
            jobs = list(session.scalars(select(Job).where(Job.id.in_(claimed.claimed))))
            cache: dict[int, list[dict[str, Any]]] = {}
            runnable: list[tuple[Job, CallRequest]] = []
            invalid: dict[uuid.UUID, str] = {}
            for job in jobs:
                try:
                    runnable.append((job, job_call_request(session, job, cache)))
                except RequestError as err:
                    invalid[job.id] = f"invalid request: {err}"
            return jobs, runnable, invalid

    jobs, runnable, invalid = _with_retry(f"batch {outcome.batch_id} read", read, db_retry_seconds, sleep)
    by_id = {job.id: job for job in jobs}

    results: dict[uuid.UUID, CallResult | str] = {}
    sizes: dict[uuid.UUID, int] = {}
    try:
        out = _run_checked(runner, [req for _, req in runnable], batch_deadline) if runnable else []
        for (job, _), result in zip(runnable, out, strict=True):
            results[job.id] = result
            sizes[job.id] = len(runnable)
    except (Exception, DeadlineExceeded) as err:
        # A batch that raises or overruns is re-run job by job, so one poison or runaway
        # job fails alone and the rest of the batch still succeeds.
        why = "ran past its deadline" if isinstance(err, DeadlineExceeded) else "raised"
        log.warning("batch %s of %d %s; retrying job by job\n%s", outcome.batch_id, len(runnable), why,
                    "" if isinstance(err, DeadlineExceeded) else traceback.format_exc())
        outcome.isolated = True
        for job, req in runnable:
            sizes[job.id] = 1
            try:
                results[job.id] = _run_checked(runner, [req], batch_deadline)[0]
            except DeadlineExceeded as exceeded:
                outcome.timed_out += 1
                results[job.id] = (f"deadline exceeded: the job ran for more than worker.batch_deadline_seconds "
                                   f"({exceeded.seconds:g} s) on its own and was stopped")
            except Exception as job_err:  # noqa: BLE001 - any failure is this job's error
                results[job.id] = _error_text(job_err)
    for job_id, message in invalid.items():
        results[job_id] = message
        sizes[job_id] = 0

    versions = dict(getattr(runner, "model_versions", {}) or {})

    def write() -> tuple[int, int, int, dict[str, str]]:
        # One transaction for the whole batch: results, timings and statuses land together.
        succeeded = failed = skipped = 0
        failures: dict[str, str] = {}
        with transaction(factory) as session:
            # The batch-size histogram: one observation per cascade call that ran.
            for size in ([1] * len(runnable) if outcome.isolated else [len(runnable)] if runnable else []):
                counters.observe(session, "batch_size", size, counters.BATCH_BUCKETS)
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
                    skipped += 1  # released (dead-worker sweep) or taken over after the lease
                elif ok:
                    succeeded += 1
                else:
                    failed += 1
                    failures[str(job_id)] = result if isinstance(result, str) else str(result.error)
        return succeeded, failed, skipped, failures

    succeeded, failed, skipped, failures = _with_retry(f"batch {outcome.batch_id} write", write,
                                                       db_retry_seconds, sleep)
    outcome.succeeded += succeeded
    outcome.failed += failed
    outcome.skipped += skipped
    outcome.failures.update(failures)
    return outcome
