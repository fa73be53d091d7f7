"""Worker heartbeats: each worker process upserts its row every few seconds; the sweeper
marks workers whose beat is too old dead (and releases their jobs, hyfunc.store.jobs);
/healthz lists the live ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hyfunc.store.models import MaintenanceLock, Worker, utcnow
from hyfunc.store.status import WORKER_ALIVE, WORKER_DEAD, WORKER_STOPPED

# Rows of workers gone for longer than this are deleted, so the table stays small.
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    host: str
    pid: int
    queue: str
    started_at: datetime
    last_heartbeat: datetime
    status: str
    reserved: int


def heartbeat(session: Session, *, name: str, host: str, pid: int, queue: str, started_at: datetime,
              reserved: int = 0) -> None:
    """Upsert this worker's row as alive with a fresh beat (also revives a row the sweeper
    marked dead after a pause: its jobs were already released, nothing else to undo)."""
    now = utcnow()
    res = session.execute(
        update(Worker).where(Worker.name == name).values(last_heartbeat=now, status=WORKER_ALIVE, host=host, pid=pid,
                                                         queue=queue, reserved=reserved)
    )
    if res.rowcount == 0:
        session.add(Worker(name=name, host=host, pid=pid, queue=queue, started_at=started_at, last_heartbeat=now,
                           status=WORKER_ALIVE, reserved=reserved))


def mark_stopped(session: Session, name: str) -> None:
    session.execute(update(Worker).where(Worker.name == name).values(status=WORKER_STOPPED, last_heartbeat=utcnow()))


def mark_dead(session: Session, *, stale_after_seconds: float, exclude: Sequence[str] = ()) -> list[str]:
    """Workers still marked alive whose last beat is older than stale_after_seconds (never the
    ones in ``exclude``: the sweeping worker itself, which knows it is alive)."""
    now = utcnow()
    stale = and_(Worker.status == WORKER_ALIVE, Worker.last_heartbeat < now - timedelta(seconds=stale_after_seconds))
    if exclude:
        stale = and_(stale, Worker.name.not_in(list(exclude)))
    names = list(session.scalars(update(Worker).where(stale).values(status=WORKER_DEAD).returning(Worker.name)))
    session.execute(delete(Worker).where(Worker.status != WORKER_ALIVE, Worker.last_heartbeat < now - FORGET_AFTER))
    return names


def live_workers(session: Session, *, stale_after_seconds: float) -> list[WorkerInfo]:
    """Workers marked alive whose beat is fresh, newest beat first."""
    cutoff = utcnow() - timedelta(seconds=stale_after_seconds)
    rows = session.scalars(
        select(Worker).where(Worker.status == WORKER_ALIVE, Worker.last_heartbeat >= cutoff)
        .order_by(Worker.last_heartbeat.desc())
    )
    return [WorkerInfo(r.name, r.host, r.pid, r.queue, r.started_at, r.last_heartbeat, r.status, r.reserved)
            for r in rows]


def take_turn(session: Session, task: str, holder: str, every_seconds: float) -> bool:
    """Whether ``holder`` runs the fleet-wide ``task`` now: True for exactly one caller per
    ``every_seconds`` — the one whose conditional UPDATE moved the due time forward (atomic on
    PostgreSQL and SQLite alike, so every worker may ask and no beat process is needed)."""
    now = utcnow()
    taken = session.execute(
        update(MaintenanceLock).where(MaintenanceLock.name == task, MaintenanceLock.due_at <= now)
        .values(holder=holder, due_at=now + timedelta(seconds=every_seconds))
    )
    if taken.rowcount == 1:
        return True
    if session.get(MaintenanceLock, task) is not None:
        return False
    try:  # no row for this task yet (the migration seeds "sweep" only): the first insert wins
        with session.begin_nested():
            session.add(MaintenanceLock(name=task, holder=holder, due_at=now + timedelta(seconds=every_seconds)))
    except IntegrityError:
        return False
    return True
