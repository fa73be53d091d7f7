"""The consumer gate: a worker that cannot reach the database stops taking job messages.

The heartbeat thread (and a failed claim) report the database's state here; a timer on
the consumer's own event loop (kombu is not thread-safe) cancels the job-queue consumers
while the database is down and adds it back when it returns. The control queue keeps
being consumed, so the sweeper still runs. Messages already taken that could not be
claimed are rejected with requeue (see worker.app.JobBatches), never acked.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from producer.broker import job_queues

log = logging.getLogger("hyfunc.worker")


class Gate:
    def __init__(self) -> None:
        self.queues: list[str] = []
        self.consumer: Any = None
        self.database_ok = True
        self.paused = False
        self._lock = threading.Lock()

    def report(self, ok: bool) -> None:
        """Called from any thread: the last known database state."""
        with self._lock:
            self.database_ok = ok

    def tick(self) -> None:
        """On the consumer's loop: make consumption match the database's state."""
        with self._lock:
            ok = self.database_ok
        if not ok and not self.paused:
            self.pause()
        elif ok and self.paused:
            self.resume()

    def pause(self) -> None:
        self.report(False)
        if self.paused or self.consumer is None or not self.queues:
            return
        log.warning("database unreachable: no longer consuming %s", ", ".join(self.queues))
        for queue in self.queues:
            self.consumer.cancel_task_queue(queue)
        self.paused = True

    def resume(self) -> None:
        if not self.paused or self.consumer is None or not self.queues:
            return
        log.warning("database reachable: consuming %s again", ", ".join(self.queues))
        for queue in self.queues:
            self.consumer.app.amqp.queues.select_add(queue)  # selected again for later reconnects
            self.consumer.add_task_queue(queue)
        self.paused = False


GATE = Gate()


class GateStep(bootsteps.StartStopStep):
    """Consumer bootstep: attach the gate and tick it every second."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, consumer: Any) -> None:
        # A restarted consumer (broker reconnect) consumes what app.amqp.queues selects;
        # a pause deselected the job queue there, so a paused gate stays paused.
        GATE.consumer = consumer
        GATE.queues = job_queues(consumer.app.conf.task_default_queue)
        self.tref = consumer.timer.call_repeatedly(1.0, GATE.tick)

    def stop(self, consumer: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop
