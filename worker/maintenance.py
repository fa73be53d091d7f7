"""Recovery in every worker: a sweeper thread beside the model work, so no process is special.

Each worker process that beats (worker/heartbeat.py) also runs a sweeper thread. Every
``tick`` seconds it asks the store whether the fleet's sweep is due and whether it takes this
turn (hyfunc.store.workers.take_turn: one conditional UPDATE of the ``maintenance_locks`` row,
atomic on PostgreSQL and SQLite), and the one that does runs worker.sweeper.sweep. So:

- recovery needs no ``--beat`` process: any live worker re-queues a dead worker's jobs;
- the sweep runs in its own thread, never behind a batch (the solo pool's main thread and the
  model thread stay busy with batches; this one only waits on the database and the broker);
- a sweeper marks no worker dead unless its own process's beats have been landing for a whole
  staleness window (heartbeat_misses x heartbeat_interval): right after a database outage every
  beat is old, its own worker's included, and none of them is dead;
- it never marks its own worker dead.

``--beat`` may still run: its sweep task takes the same turn (worker/app.py), so a sweep still
happens about once per ``worker.sweep_interval``, not once per process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from hyfunc.config import HyFuncConfig
from hyfunc.store.db import transaction
from hyfunc.store.workers import take_turn
from worker.sweeper import SweepReport, sweep

log = logging.getLogger("hyfunc.worker")

SWEEP_TASK_NAME = "sweep"  # its row in maintenance_locks


class Maintenance:
    """The fleet-wide sweep, taken in turns. ``healthy_for()``: seconds this process's database
    beats have been landing (Heartbeat.healthy_for)."""

    def __init__(self, config: HyFuncConfig, sessions: sessionmaker[Session], worker: str,
                 healthy_for: Callable[[], float], celery: Celery | None = None):
        self.config = config
        self.sessions = sessions
        self.worker = worker
        self.healthy_for = healthy_for
        self._celery = celery
        self.sweeps = 0  # sweeps this process ran

    @property
    def stale_after(self) -> float:
        wc = self.config.worker
        return wc.heartbeat_interval * wc.heartbeat_misses

    def celery(self) -> Celery:
        if self._celery is None:
            # Its own app (its own broker connections): kombu connections are not shared across threads.
            from producer.broker import create_celery

            self._celery = create_celery(self.config)
        return self._celery

    def run_if_due(self) -> SweepReport | None:
        """Sweep if the fleet's sweep is due and this worker takes the turn; None otherwise."""
        healthy = self.healthy_for()
        if healthy <= 0:
            return None  # this process cannot reach the database: it judges nothing
        with transaction(self.sessions) as session:
            mine = take_turn(session, SWEEP_TASK_NAME, self.worker, self.config.worker.sweep_interval)
        if not mine:
            return None
        judge = healthy >= self.stale_after
        if not judge:
            log.info("sweep without the dead-worker step: the database answered this worker for %.1f s only "
                     "(< %.1f s, the staleness window)", healthy, self.stale_after)
        self.sweeps += 1
        return sweep(self.sessions, self.celery(), self.config, exclude=[self.worker], judge_workers=judge)


class SweeperThread(threading.Thread):
    def __init__(self, maintenance: Maintenance, tick: float):
        super().__init__(name="hyfunc-sweeper", daemon=True)
        self.maintenance = maintenance
        self.tick = tick
        self._stop_event = threading.Event()

    def run(self) -> None:
        failing = False
        while not self._stop_event.wait(self.tick):
            try:
                self.maintenance.run_if_due()
                failing = False
            except Exception as err:  # noqa: BLE001 - the next tick tries again (a database or broker away)
                if not failing:
                    log.warning("sweep failed (%s); trying again every %.1f s", type(err).__name__, self.tick)
                failing = True

    def stop(self) -> None:
        self._stop_event.set()
