"""Run one batch of job ids: claim, run through the runner, write each result as its job finishes.

Kept free of Celery so the mechanics (claiming, poison isolation, deadlines, idempotency,
database outages) are plain functions over a session factory and a runner.

- A claim that cannot reach the database raises StoreUnavailable: nothing was claimed,
  so the caller must requeue the messages, not ack them.
- Once jobs are claimed, reading them and writing their results are retried for up to
  `db_retry_seconds` while the database is unreachable, so a computed batch is written
  when the database is back instead of being thrown away.
- A job whose tools compile to more than the limits allow (hyfunc/schema_limits.py) fails
  alone before the batch runs, naming the field and the limit.
- With a runner that streams results (`streams_results`: the CascadeFeeder), each job's result
  and status are written as soon as its row finishes, while the rest of the batch decodes; a job
  not finished `job_deadline` seconds after the batch started fails alone and the others go on.
- A batch that raises, or runs past `batch_deadline` seconds, is re-run job by job (each
  with the same deadline) — only the jobs not written yet: a poison or runaway job fails alone
  and the rest succeed.
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
from hyfunc.schema_limits import CompileLimits, tools_problem
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


def _run_checked(runner: BatchRunner, requests: list[CallRequest], seconds: float | None,
                 **streaming: Any) -> list[CallResult]:
    with deadline(seconds):
        results = runner.run(requests, **streaming) if streaming else runner.run(requests)
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
    job_deadline: float | None = None,
    compile_limits: CompileLimits | None = None,
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
                    request = job_call_request(session, job, cache)
                except RequestError as err:
                    invalid[job.id] = f"invalid request: {err}"
                    continue
                # Checked at submission too; this covers jobs stored before a limit was lowered.
                problem = tools_problem(request.tools, compile_limits) if compile_limits is not None else None
                if problem:
                    invalid[job.id] = f"over a limit: {problem}"
                else:
                    runnable.append((job, request))
            return jobs, runnable, invalid

    jobs, runnable, invalid = _with_retry(f"batch {outcome.batch_id} read", read, db_retry_seconds, sleep)
    by_id = {job.id: job for job in jobs}

    results: dict[uuid.UUID, CallResult | str] = {}
    sizes: dict[uuid.UUID, int] = {}
    written: set[uuid.UUID] = set()  # results already written as their jobs finished
    versions = dict(getattr(runner, "model_versions", {}) or {})

    def write(items: dict[uuid.UUID, CallResult | str], histogram: list[int]) -> tuple[int, int, int, dict[str, str]]:
        succeeded = failed = skipped = 0
        failures: dict[str, str] = {}
        with transaction(factory) as session:
            # The batch-size histogram: one observation per cascade call that ran.
            for size in histogram:
                counters.observe(session, "batch_size", size, counters.BATCH_BUCKETS)
            for job_id, result in items.items():
                job = by_id[job_id]
                if isinstance(result, str):
                    done = fail_job(session, job, outcome.batch_id, result,
                                    model_versions=versions, batch_size=sizes[job_id])
                    ok = False
                else:
                    done = finish_job(session, job, outcome.batch_id, result,
                                      model_versions=versions, batch_size=sizes[job_id])
                    ok = result.error is None
                if not done:
                    skipped += 1  # released (dead-worker sweep) or taken over after the lease
                elif ok:
                    succeeded += 1
                else:
                    failed += 1
                    failures[str(job_id)] = result if isinstance(result, str) else str(result.error)
        return succeeded, failed, skipped, failures

    def count(totals: tuple[int, int, int, dict[str, str]]) -> None:
        succeeded, failed, skipped, failures = totals
        outcome.succeeded += succeeded
        outcome.failed += failed
        outcome.skipped += skipped
        outcome.failures.update(failures)

    def write_now(finished: list[tuple[int, CallResult]]) -> None:
        """Results of jobs whose rows just finished, written at once in this (the caller's)
        thread while the model thread decodes the rest. One attempt: if the database cannot take
        them they wait for the batch's final write, which retries (a retry loop here would hold
        up the other jobs' deadlines and deliveries)."""
        items: dict[uuid.UUID, CallResult | str] = {}
        for index, result in finished:
            job_id = runnable[index][0].id
            sizes[job_id] = len(runnable)
            items[job_id] = result
        try:
            count(write(items, []))
        except Exception as err:  # noqa: BLE001 - kept for the final write
            log.warning("batch %s: %d finished jobs not written yet (%s)", outcome.batch_id, len(items),
                        type(err).__name__)
            results.update(items)
            return
        written.update(items)

    streaming: dict[str, Any] = {}
    if getattr(runner, "streams_results", False):
        streaming = {"on_results": write_now, "job_seconds": job_deadline,
                     "deadline_message": "deadline exceeded: the job was not finished worker.job_deadline_seconds "
                                         "after its batch started and was stopped; the rest of its batch went on"}
    try:
        reqs = [req for _, req in runnable]
        out = _run_checked(runner, reqs, batch_deadline, **streaming) if runnable else []
        for (job, _), result in zip(runnable, out, strict=True):
            if job.id not in written:
                results[job.id] = result
                sizes[job.id] = len(runnable)
    except (Exception, DeadlineExceeded) as err:
        # A batch that raises or overruns is re-run job by job, so one poison or runaway
        # job fails alone and the rest of the batch still succeeds (those already written stay).
        why = "ran past its deadline" if isinstance(err, DeadlineExceeded) else "raised"
        log.warning("batch %s of %d %s; retrying job by job\n%s", outcome.batch_id, len(runnable), why,
                    "" if isinstance(err, DeadlineExceeded) else traceback.format_exc())
        outcome.isolated = True
        for job, req in runnable:
            if job.id in written or job.id in results:
                continue
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

    # One observation per cascade call that ran to results: the batch's (if it wrote any), and one
    # per job re-run alone.
    histogram = [len(runnable)] if runnable and (written or not outcome.isolated) else []
    histogram += [1] * sum(1 for job, _ in runnable if sizes.get(job.id) == 1)
    # The rest in one transaction: what no streaming write took, and the batch-size histogram.
    count(_with_retry(f"batch {outcome.batch_id} write", lambda: write(results, histogram), db_retry_seconds, sleep))
    return outcome
