"""The worker's Celery app: the shared producer wiring plus the task bodies.

- `hyfunc.run_jobs` (job queue): celery-batches groups messages; one batch is claimed,
  run and written by worker.processor. Messages are acked after the batch is written,
  or rejected back to the queue when the database could not be reached for the claim.
- `hyfunc.sweep` (control queue `<queue>.control`, sent by an optional beat): worker.sweeper,
  in the same turns as the sweeper threads (worker.maintenance).
- a heartbeat thread per worker process (worker.heartbeat) — prefork children beat for
  themselves, under their own names, so a dead child's jobs are released like a dead worker's —,
  a sweeper thread in every worker's main process (worker.maintenance: recovery needs no beat),
  and the consumer gate (worker.gate) that stops job consumption while the database is down.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Collection
from typing import Any

from celery import Celery, signals
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from hyfunc.config import HyFuncConfig, load_config
from hyfunc.schema_limits import CompileLimits
from hyfunc.store.db import session_factory
from hyfunc.store.errors import StoreUnavailable
from producer.broker import RUN_TASK, SWEEP_TASK, create_celery
from producer.broker import enqueue as enqueue  # re-exported: tests and older callers
from producer.submit import submit_jobs as submit_jobs
from worker import beat_guard as _beat_guard  # noqa: F401 - connects the embedded beat's guard
from worker.gate import GATE, GateStep
from worker.heartbeat import Heartbeat
from worker.maintenance import Maintenance, SweeperThread

log = logging.getLogger("hyfunc.worker")

_MAIN_PID = os.getpid()
_heartbeat: Heartbeat | None = None
_sweeper: SweeperThread | None = None


def worker_name() -> str:
    """The name a worker process stamps on its jobs and beats under: host and its pid (the
    worker's main pid; a prefork child's own, since it beats for itself)."""
    return f"{socket.gethostname()}:{_MAIN_PID}"


def _maintenance(config: HyFuncConfig) -> Maintenance | None:
    """This process's sweep, taken in turns with every other worker (None: it does not beat)."""
    if _heartbeat is None or _heartbeat.pid != os.getpid():
        return None
    return Maintenance(config, _heartbeat.sessions, worker_name(), _heartbeat.healthy_for)


class JobBatches(Batches):
    """celery-batches, but a batch whose claim found the database unreachable rejects its
    messages back to the queue (after pausing the consumer) instead of acking them."""

    def flush(self, requests: Collection[Any]) -> Any:
        requests = list(requests)

        def on_return(result: Any) -> None:
            if isinstance(result, dict) and result.get("requeue"):
                GATE.pause()
                for req in requests:
                    req.reject(requeue=True)
                log.warning("database unreachable: %d messages returned to the queue unclaimed", len(requests))
                return
            for req in requests:
                req.acknowledge()

        return self._pool.apply_async(
            apply_batches_task,
            (self, ([SimpleRequest.from_request(r) for r in requests],), 0, None),
            callback=on_return,
        )


def create_app(config: HyFuncConfig | None = None) -> Celery:
    config = config or load_config()
    app = create_celery(config)
    app.steps["consumer"].add(GateStep)
    _register_tasks(app, config)
    return app


def _register_tasks(app: Celery, config: HyFuncConfig) -> None:
    wc = config.worker

    @app.task(name=RUN_TASK, base=JobBatches, flush_every=wc.flush_every, flush_interval=wc.flush_interval,
              acks_late=True, ignore_result=True)
    def run_jobs(requests: list[SimpleRequest]) -> dict[str, Any]:
        from worker.processor import process_batch
        from worker.runner import get_runner

        job_ids = [r.args[0] for r in requests if r.args]
        try:
            outcome = process_batch(
                session_factory(config.store.url), get_runner(config), job_ids,
                worker=worker_name(), lease_seconds=wc.lease_seconds, max_attempts=wc.max_attempts,
                batch_deadline=wc.batch_deadline_seconds, db_retry_seconds=wc.db_retry_seconds,
                job_deadline=wc.job_deadline_seconds, compile_limits=CompileLimits.from_config(config.limits),
            )
        except StoreUnavailable as err:
            log.warning("%s: database unreachable, nothing claimed; requeueing the messages", err)
            return {"requeue": True}
        log.info(
            "batch %s: %d messages, %d claimed, %d succeeded, %d failed, %d skipped%s%s",
            outcome.batch_id, outcome.received, outcome.claimed, outcome.succeeded,
            outcome.failed, outcome.skipped, " (isolated job by job)" if outcome.isolated else "",
            f", {outcome.timed_out} past the deadline" if outcome.timed_out else "",
        )
        return {"claimed": outcome.claimed, "succeeded": outcome.succeeded, "failed": outcome.failed}

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def sweep() -> dict[str, Any]:
        from worker.sweeper import sweep as run_sweep

        maintenance = (_sweeper.maintenance if _sweeper is not None else None) or _maintenance(config)
        if maintenance is None:  # a process without a heartbeat (not a worker's): sweep as told
            report = run_sweep(session_factory(config.store.url), app, config)
        else:  # beat's sweep takes the same turn as the sweeper threads: once per interval in all
            taken = maintenance.run_if_due()
            if taken is None:
                return {"skipped": "not due, or another worker took this turn"}
            report = taken
        return {"dead_workers": report.dead_workers, "released": report.released, "sent": report.sent}


@signals.worker_init.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    global _MAIN_PID, _heartbeat
    _MAIN_PID = os.getpid()
    app = getattr(sender, "app", None)
    config: HyFuncConfig = getattr(app, "hyfunc_config", None) or load_config()
    _heartbeat = Heartbeat(config.store.url, worker_name(), config.worker.queue, config.worker.heartbeat_interval,
                           on_database=GATE.report, reserved=lambda: _reserved(app))
    _heartbeat.beat()  # the row exists (or the gate knows the database is down) before the first message
    _heartbeat.start()
    global _sweeper
    maintenance = _maintenance(config)
    if config.worker.sweep_in_workers and maintenance is not None:
        _sweeper = SweeperThread(maintenance, tick=min(config.worker.heartbeat_interval, config.worker.sweep_interval))
        _sweeper.start()


def _reserved(app: Celery | None) -> int:
    """Job messages buffered by celery-batches and not yet claimed."""
    task = app.tasks.get(RUN_TASK) if app is not None else None
    if not isinstance(task, Batches):
        return 0
    return task._buffer.qsize() + task._pending.qsize()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.worker_process_shutdown.connect
def _stop_child_heartbeat(**_: Any) -> None:
    if _heartbeat is not None and _heartbeat.pid == os.getpid():
        _heartbeat.stop()


@signals.worker_process_init.connect
def _load_models_in_child(**_: Any) -> None:
    # prefork: each child is a model process; load before the first batch arrives.
    from celery import current_app

    from worker.runner import get_runner

    config: HyFuncConfig = getattr(current_app, "hyfunc_config", None) or load_config()
    # The child claims jobs under its own name and beats for itself: if it dies (OOM, a crash)
    # while its parent lives, its jobs are released within seconds, not after the lease.
    global _MAIN_PID, _heartbeat, _sweeper
    _MAIN_PID = os.getpid()
    _sweeper = None  # the parent's thread did not survive the fork; the parent sweeps
    _heartbeat = Heartbeat(config.store.url, worker_name(), config.worker.queue, config.worker.heartbeat_interval)
    _heartbeat.beat()
    _heartbeat.start()
    get_runner(config)
