"""The sweeper, run about once per worker.sweep_interval fleet-wide: by every worker's sweeper
thread (worker/maintenance.py; whoever takes the turn) and, where one runs, by beat's task on the
control queue (the same turn, so never twice per interval).

1. workers whose heartbeat is older than heartbeat_misses x heartbeat_interval are marked
   dead and their running jobs go back to queued (within seconds, not after the lease);
2. queued jobs without a message in the broker (never sent, released above, or lost with
   the broker) are sent again — never a job whose message is fresh (see
   hyfunc.store.jobs.jobs_to_enqueue), so a backlog does not fill with duplicates. The
   released ones go to the retry queue, which workers serve in turn with the job queue.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from hyfunc.config import HyFuncConfig
from hyfunc.store.db import transaction
from hyfunc.store.jobs import jobs_to_enqueue, mark_enqueued, release_jobs_of
from hyfunc.store.workers import live_workers, mark_dead
from producer.broker import broker_depth, enqueue, job_queues, retry_queue

log = logging.getLogger("hyfunc.worker")


@dataclass
class SweepReport:
    dead_workers: list[str] = field(default_factory=list)
    released: int = 0
    sent: int = 0
    broker_depth: int | None = None


def sweep(factory: sessionmaker[Session], celery: Celery, config: HyFuncConfig, *, exclude: Sequence[str] = (),
          judge_workers: bool = True) -> SweepReport:
    """``exclude``: workers never marked dead here (the sweeping one). ``judge_workers=False``
    skips the dead-worker step: the sweeping process has not seen the database for long enough to
    tell a dead worker from one whose beats could not land either (just after an outage)."""
    wc = config.worker
    stale_after = wc.heartbeat_interval * wc.heartbeat_misses
    report = SweepReport()
    with transaction(factory) as session:
        report.dead_workers = mark_dead(session, stale_after_seconds=stale_after, exclude=exclude) \
            if judge_workers else []
        released = set(release_jobs_of(session, report.dead_workers))
        report.released = len(released)
        # Messages live workers hold unclaimed (their prefetch buffers, as of their last
        # beat) are in neither the broker's count nor lost.
        in_flight = sum(w.reserved for w in live_workers(session, stale_after_seconds=stale_after))
    if report.dead_workers:
        log.warning("sweeper: workers %s missed their heartbeats; %d of their running jobs re-queued",
                    report.dead_workers, report.released)
    depths = [broker_depth(celery, q) for q in job_queues(wc.queue)]
    report.broker_depth = None if None in depths else sum(d for d in depths if d is not None)
    with factory() as session:
        ids = jobs_to_enqueue(session, grace_seconds=wc.requeue_grace_seconds, lease_seconds=wc.lease_seconds,
                              broker_depth=report.broker_depth, in_flight=in_flight)
    if not ids:
        return report
    # A dead worker's jobs go to the retry queue: few, already waited once, they run within
    # a few batches instead of behind the backlog. The rest (never sent, or lost with the
    # broker, possibly thousands) join the job queue as new work does.
    # A broker error propagates: the next sweep tries again.
    enqueue(celery, [i for i in ids if i in released], retry_queue(wc.queue))
    enqueue(celery, [i for i in ids if i not in released], wc.queue)
    with transaction(factory) as session:
        mark_enqueued(session, ids)
    report.sent = len(ids)
    log.warning("sweeper: sent %d queued jobs that had no message in the broker (broker depth %s)",
                report.sent, report.broker_depth)
    return report
