"""The Celery app every process shares: names, queues and the beat schedule (no tasks).

Workers register the task bodies on top (worker/app.py); producers only send by name,
so building this app is cheap (no models, no database).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from amqp.exceptions import NotFound
from celery import Celery
from kombu.exceptions import ChannelError

from hyfunc.config import HyFuncConfig, load_config

RUN_TASK = "hyfunc.run_jobs"
SWEEP_TASK = "hyfunc.sweep"

log = logging.getLogger("hyfunc.producer")


def control_queue(queue: str) -> str:
    """The sweeper's own queue: a backlog of job messages cannot delay a sweep."""
    return f"{queue}.control"


def retry_queue(queue: str) -> str:
    """Where the sweeper re-sends a dead worker's jobs.

    Workers consume it beside the job queue, and the broker serves the queues in turn, so a
    re-sent job runs within a few batches instead of behind the whole backlog.
    """
    return f"{queue}.retry"


def job_queues(queue: str) -> list[str]:
    """Every queue a worker consumes job messages from (the gate pauses all of them)."""
    return [queue, retry_queue(queue)]


def create_celery(config: HyFuncConfig | None = None) -> Celery:
    config = config or load_config()
    wc = config.worker
    app = Celery("hyfunc", broker=wc.broker_url, backend=None)
    app.conf.update(
        task_default_queue=wc.queue,
        task_routes={SWEEP_TASK: {"queue": control_queue(wc.queue)}},
        task_acks_late=True,  # a message is acked only after its batch is written
        task_ignore_result=True,  # results live in the jobs table, not the backend
        # celery-batches buffers unacked messages: the prefetch window must hold a full
        # batch (plus the next one, so the consumer fills it while a batch runs).
        worker_prefetch_multiplier=2 * wc.flush_every,
        # Redis redelivers unacked messages after this; the sweeper covers the same case,
        # and a redelivered finished job is a no-op, so it only needs to outlast a batch.
        broker_transport_options={"visibility_timeout": max(wc.lease_seconds, 60)},
        broker_connection_retry_on_startup=True,
        # A producer must not hang on a dead broker: fail fast, store the job as queued
        # and let the sweeper send it (see producer.submit).
        broker_connection_timeout=2,
        broker_connection_max_retries=None,
        beat_schedule={
            "hyfunc-sweep": {
                "task": SWEEP_TASK,
                "schedule": wc.sweep_interval,
                # A sweep that waited longer than an interval is stale; the next one is due.
                "options": {"queue": control_queue(wc.queue), "expires": max(wc.sweep_interval, 1.0)},
            },
        },
        beat_schedule_filename=os.path.join(tempfile.gettempdir(), f"hyfunc-beat-{wc.queue}"),
    )
    app.hyfunc_config = config  # type: ignore[attr-defined]
    return app


def enqueue(app: Celery, job_ids: Iterable[Any], queue: str | None = None) -> int:
    """Send one message per job id (celery-batches groups them again on the worker).

    Raises the broker's error when it is unreachable (one attempt, no retry loop), so the
    caller can record the ids as unsent.
    """
    queue = queue or app.conf.task_default_queue
    n = 0
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task(RUN_TASK, args=[str(job_id)], queue=queue, producer=producer, retry=False)
            n += 1
    return n


def broker_depth(app: Celery, queue: str) -> int | None:
    """Messages waiting in the broker queue, or None when the broker cannot say."""
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            try:
                return int(conn.default_channel.queue_declare(queue, passive=True).message_count)
            except (ChannelError, NotFound):
                return 0  # never declared: nobody has sent to it yet
    except Exception as err:  # noqa: BLE001 - unknown depth is an answer too
        log.debug("broker depth of %s unavailable: %s", queue, err)
        return None
