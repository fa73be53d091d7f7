"""The worker's heartbeat thread: upserts its workers row every heartbeat_interval s.

It is also the worker's database probe: when a beat fails, the consumer gate
(worker/gate.py) stops taking job messages; when beats succeed again it resumes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

from hyfunc.store.db import normalize_url, transaction
from hyfunc.store.models import utcnow
from hyfunc.store.workers import heartbeat, mark_stopped

log = logging.getLogger("hyfunc.worker")


def probe_engine(url: str, timeout: int = 3) -> Engine:
    """A pool-less engine that gives up connecting after `timeout` s (the beat must not
    hang for the OS's TCP timeout when the database host is unreachable)."""
    url = normalize_url(url)
    args = {"connect_timeout": timeout} if url.startswith("postgresql") else {}
    return create_engine(url, poolclass=NullPool, connect_args=args)


class Heartbeat(threading.Thread):
    def __init__(self, url: str, name: str, queue: str, interval: float,
                 on_database: Callable[[bool], None] | None = None, reserved: Callable[[], int] | None = None):
        super().__init__(name="hyfunc-heartbeat", daemon=True)
        self.sessions = sessionmaker(probe_engine(url), expire_on_commit=False)
        self.worker_name, self.queue, self.interval = name, queue, interval
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started_at: datetime = utcnow()
        self.on_database = on_database
        self.reserved = reserved or (lambda: 0)
        self.database_ok: bool | None = None
        self.ok_since: float | None = None  # monotonic time of the first beat of the current run of good ones
        self._stop_event = threading.Event()

    def beat(self) -> bool:
        try:
            with transaction(self.sessions) as session:
                heartbeat(session, name=self.worker_name, host=self.host, pid=self.pid, queue=self.queue,
                          started_at=self.started_at, reserved=self.reserved())
        except Exception as err:  # noqa: BLE001 - any failure means: database unreachable for us
            if self.database_ok is not False:
                log.warning("heartbeat failed (%s): pausing job consumption until the database is back",
                            type(err).__name__)
            self._set(False)
            return False
        if self.database_ok is False:
            log.warning("heartbeat ok again: the database is back")
        self._set(True)
        return True

    def healthy_for(self) -> float:
        """Seconds this process's beats have been landing without a failure (0 if the last failed)."""
        return time.monotonic() - self.ok_since if self.database_ok and self.ok_since is not None else 0.0

    def _set(self, ok: bool) -> None:
        if ok and not self.database_ok:
            self.ok_since = time.monotonic()
        self.database_ok = ok
        if self.on_database is not None:
            self.on_database(ok)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.beat()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        try:
            with transaction(self.sessions) as session:
                mark_stopped(session, self.worker_name)
        except Exception as err:  # noqa: BLE001 - the sweeper will mark it dead instead
            log.warning("could not mark worker %s stopped: %s", self.worker_name, type(err).__name__)
