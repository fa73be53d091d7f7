"""The Celery app: a batched run task carrying job ids only, and the lease sweeper.

`create_app(config)` is cheap (no models): producers use it to enqueue, workers to run.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery, signals
from celery_batches import Batches, SimpleRequest
from sqlalchemy.orm import Session

from hyfunc.config import HyFuncConfig, load_config
from hyfunc.store.db import session_factory, transaction
from hyfunc.store.jobs import NewJob, create_jobs, stale_jobs

RUN_TASK = "hyfunc.run_jobs"
SWEEP_TASK = "hyfunc.sweep"

log = logging.getLogger("hyfunc.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def create_app(config: HyFuncConfig | None = None) -> Celery:
    config = config or load_config()
    wc = config.worker
    app = Celery("hyfunc", broker=wc.broker_url, backend=wc.result_backend)
    app.conf.update(
        task_default_queue=wc.queue,
        task_acks_late=True,  # a message is acked only after its batch is written
        task_ignore_result=True,  # results live in the jobs table, not the backend
        # celery-batches buffers unacked messages: the prefetch window must hold a full
        # batch (plus the next one, so the consumer fills it while a batch runs).
        worker_prefetch_multiplier=2 * wc.flush_every,
        # Redis redelivers unacked messages after this; the sweeper covers the same case,
        # and a redelivered finished job is a no-op, so it only needs to outlast a batch.
        broker_transport_options={"visibility_timeout": max(wc.lease_seconds, 60)},
        broker_connection_retry_on_startup=True,
        beat_schedule={
            "hyfunc-sweep": {"task": SWEEP_TASK, "schedule": wc.sweep_interval, "options": {"queue": wc.queue}},
        },
        beat_schedule_filename=os.path.join(tempfile.gettempdir(), f"hyfunc-beat-{wc.queue}"),
    )
    app.hyfunc_config = config  # type: ignore[attr-defined]
    _register_tasks(app, config)
    return app


def enqueue(app: Celery, job_ids: Iterable[Any], queue: str | None = None) -> int:
    """Send one message per job id (celery-batches groups them again on the worker)."""
    queue = queue or app.conf.task_default_queue
    n = 0
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task(RUN_TASK, args=[str(job_id)], queue=queue, producer=producer)
            n += 1
    return n


def submit_jobs(
    app: Celery, session: Session, tenant_id: int, new_jobs: Sequence[NewJob], queue: str | None = None
) -> list[uuid.UUID]:
    """The producer's two steps: store the jobs (one commit), then enqueue their ids.

    The rows are committed before the messages go out, so a worker never receives an id
    it cannot find; if the broker is down the jobs stay queued and the sweeper sends them.
    """
    jobs = create_jobs(session, tenant_id, new_jobs)
    ids = [j.id for j in jobs]
    session.commit()
    try:
        enqueue(app, ids, queue)
    except Exception:  # noqa: BLE001 - stored jobs are not lost: the sweeper re-enqueues them
        log.exception("enqueue of %d jobs failed; the sweeper will send them after the lease", len(ids))
    return ids


def _register_tasks(app: Celery, config: HyFuncConfig) -> None:
    wc = config.worker

    @app.task(
        name=RUN_TASK, base=Batches, flush_every=wc.flush_every, flush_interval=wc.flush_interval,
        acks_late=True, ignore_result=True,
    )
    def run_jobs(requests: list[SimpleRequest]) -> dict[str, Any]:
        from worker.processor import process_batch
        from worker.runner import get_runner

        job_ids = [r.args[0] for r in requests if r.args]
        outcome = process_batch(
            session_factory(config.store.url), get_runner(config), job_ids,
            worker=worker_name(), lease_seconds=wc.lease_seconds, max_attempts=wc.max_attempts,
        )
        log.info(
            "batch %s: %d messages, %d claimed, %d succeeded, %d failed, %d skipped%s",
            outcome.batch_id, outcome.received, outcome.claimed, outcome.succeeded,
            outcome.failed, outcome.skipped, " (isolated job by job)" if outcome.isolated else "",
        )
        return {"claimed": outcome.claimed, "succeeded": outcome.succeeded, "failed": outcome.failed}

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def sweep() -> int:
        """Re-enqueue jobs left queued or running past their lease (lost message or worker)."""
        with transaction(session_factory(config.store.url)) as session:
            ids = stale_jobs(session, lease_seconds=wc.lease_seconds)
        if ids:
            enqueue(app, ids, wc.queue)
            log.warning("sweeper re-enqueued %d jobs past their lease", len(ids))
        return len(ids)


@signals.worker_process_init.connect
def _load_models_in_child(**_: Any) -> None:
    # prefork: each child is a model process; load before the first batch arrives.
    from celery import current_app

    from worker.runner import get_runner

    get_runner(getattr(current_app, "hyfunc_config", None) or load_config())
