"""No single point of recovery (issue 17, part 3), against the real PostgreSQL and Redis.

- every worker runs the sweep in a thread of its own, in turns (one sweep per interval for the
  fleet, a lock row in maintenance_locks), so a crashed worker's jobs are re-queued with no
  `--beat` process alive, and a sweep never waits for a batch;
- a sweeper judges no worker dead until its own beats have landed for a whole staleness window
  (after a database outage every beat is old), and never judges its own worker;
- prefork children beat for themselves: a killed child's jobs are released, not left to the lease.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    RUNNER,
    WEATHER,
    WorkerProcess,
    create_database,
    drop_database,
    wait_for,
    write_config,
)
from sqlalchemy import select, update

from hyfunc.bench.procs import stop_group
from hyfunc.store import migrate
from hyfunc.store.db import session_factory, transaction
from hyfunc.store.jobs import NewJob, claim_jobs, create_jobs
from hyfunc.store.keys import get_or_create_tenant
from hyfunc.store.models import Job, MaintenanceLock, Worker, utcnow
from hyfunc.store.workers import heartbeat, take_turn
from producer import create_celery, enqueue
from worker.maintenance import Maintenance

pytestmark = pytest.mark.service


def _jobs(sessions, queue: str, n: int, query: str = "weather in town") -> list[uuid.UUID]:
    with transaction(sessions) as s:
        tenant = get_or_create_tenant(s, queue)
        return [j.id for j in create_jobs(s, tenant.id, [NewJob(query=f"{query} {i}", tools=[WEATHER])
                                                          for i in range(n)])]


def _statuses(sessions, ids) -> dict[uuid.UUID, tuple[str, str | None, int]]:
    with sessions() as s:
        return {r.id: (r.status, r.worker, r.attempts) for r in s.scalars(select(Job).where(Job.id.in_(ids)))}


def _stale(sessions, name: str, seconds: float = 60) -> None:
    with transaction(sessions) as s:
        heartbeat(s, name=name, host="ghost", pid=1, queue="q", started_at=utcnow())
        s.execute(update(Worker).where(Worker.name == name)
                  .values(last_heartbeat=utcnow() - timedelta(seconds=seconds)))


def test_turns_and_judging(tmp_path: Path, redis_url: str) -> None:
    url = create_database("hyfunc_turns")
    try:
        migrate.upgrade(url)
        sessions = session_factory(url)
        with transaction(sessions) as s:  # the migration's row: due at once, then once per interval
            assert take_turn(s, "sweep", "a", 60) is True
            assert take_turn(s, "sweep", "b", 60) is False
            assert take_turn(s, "other", "b", 60) is True  # a task without a seeded row
            s.execute(update(MaintenanceLock).values(due_at=utcnow() - timedelta(seconds=1)))  # due again
        config, _ = write_config(tmp_path / "c.yaml", store={"url": url},
                                 worker={"broker_url": redis_url, "queue": f"turns-{uuid.uuid4().hex[:6]}",
                                         "heartbeat_interval": 1, "heartbeat_misses": 3, "sweep_interval": 3})
        celery = create_celery(config)
        _stale(sessions, "ghost:1")
        _stale(sessions, "me:2")  # the sweeping worker's own row, as old as the ghost's after an outage
        just_back = Maintenance(config, sessions, "me:2", healthy_for=lambda: 1.0, celery=celery)
        steady = Maintenance(config, sessions, "me:2", healthy_for=lambda: 10.0, celery=celery)
        down = Maintenance(config, sessions, "me:2", healthy_for=lambda: 0.0, celery=celery)
        assert down.run_if_due() is None  # its database is away: it takes no turn
        report = just_back.run_if_due()
        assert report is not None and report.dead_workers == []  # too soon to judge anyone
        assert just_back.run_if_due() is None  # not due again within the interval
        time.sleep(3.1)
        report = steady.run_if_due()
        assert report is not None and report.dead_workers == ["ghost:1"]  # never itself
        with sessions() as s:
            assert s.get(Worker, "me:2").status == "alive"
    finally:
        drop_database(url)


@pytest.fixture
def own_db() -> Iterator[str]:
    """A database of its own: the workers' sweepers act on everything queued in their store."""
    url = create_database("hyfunc_sweep")
    migrate.upgrade(url)
    yield url
    drop_database(url)


SWEEPING = {"HYFUNC_SWEEP_IN_WORKERS": "true"}


def _config(tmp_path: Path, name: str, pg_url: str, redis_url: str, tiny_models: Path, **worker):
    queue = f"hyfunc-test-{name}-{uuid.uuid4().hex[:8]}"
    config, path = write_config(
        tmp_path / f"{name}.yaml", models={"dir": str(tiny_models)}, store={"url": pg_url},
        worker={"broker_url": redis_url, "queue": queue, "flush_every": 16, "flush_interval": 0.1,
                "heartbeat_interval": 1, "heartbeat_misses": 3, "sweep_interval": 2, "lease_seconds": 300, **worker})
    return config, path, queue


def test_crashed_jobs_are_requeued_with_no_beat_process(own_db: str, redis_url: str, tiny_models: Path,
                                                        tmp_path: Path) -> None:
    config, path, queue = _config(tmp_path, "nobeat", own_db, redis_url, tiny_models)
    sessions = session_factory(own_db)
    ids = _jobs(sessions, queue, 16)
    slow = WorkerProcess(path, tmp_path / "slow.log", env={**SWEEPING, "HYFUNC_TEST_BATCH_DELAY": "120"})
    other = None
    try:
        enqueue(create_celery(config), ids, queue)
        name = f"{socket.gethostname()}:{slow.proc.pid}"
        wait_for(lambda: all(st == ("running", name, 1) for st in _statuses(sessions, ids).values()), 90,
                 "the 16 jobs to run on the first worker", on_timeout=slow.tail)
        other = WorkerProcess(path, tmp_path / "other.log", env=SWEEPING)  # no --beat anywhere
        wait_for(lambda: "ready" in other.log_path.read_text(), 90, "the second worker", on_timeout=other.tail)
        slow.kill()
        killed = time.monotonic()
        wait_for(lambda: all(st[0] != "running" or st[1] != name for st in _statuses(sessions, ids).values()), 30,
                 "every crashed job to be re-queued within 30 s", interval=0.1, on_timeout=other.tail)
        requeued = time.monotonic() - killed
        wait_for(lambda: all(st[0] == "succeeded" for st in _statuses(sessions, ids).values()), 90,
                 "the re-queued jobs to finish on the second worker", on_timeout=other.tail)
        print(f"\n16 crashed jobs re-queued {requeued:.1f}s after the kill, with no beat process")
        assert all(st[2] == 2 for st in _statuses(sessions, ids).values())
    finally:
        slow.stop()
        if other is not None:
            other.stop()


def test_the_sweep_runs_beside_a_long_batch(own_db: str, redis_url: str, tiny_models: Path, tmp_path: Path) -> None:
    config, path, queue = _config(tmp_path, "beside", own_db, redis_url, tiny_models)
    sessions = session_factory(own_db)
    busy = _jobs(sessions, queue, 4, "busy")
    worker = WorkerProcess(path, tmp_path / "beside.log", env={**SWEEPING, "HYFUNC_TEST_BATCH_DELAY": "40"})
    try:
        enqueue(create_celery(config), busy, queue)
        wait_for(lambda: all(st[0] == "running" for st in _statuses(sessions, busy).values()), 90,
                 "the worker to be inside a 40 s batch", on_timeout=worker.tail)
        # A dead worker's job, found while the only worker is busy with that batch.
        orphan = _jobs(sessions, queue, 1, "orphan")
        with transaction(sessions) as s:
            claim_jobs(s, orphan, worker="ghost:9", batch_id=uuid.uuid4(), lease_seconds=300, max_attempts=3)
        _stale(sessions, "ghost:9", seconds=30)
        t0 = time.monotonic()
        wait_for(lambda: _statuses(sessions, orphan)[orphan[0]][0] == "queued", 5,
                 "the sweep to release the dead worker's job within 5 s", interval=0.05, on_timeout=worker.tail)
        delay = time.monotonic() - t0
        assert all(st[0] == "running" for st in _statuses(sessions, busy).values())  # the batch still runs
        print(f"\nsweep released a dead worker's job {delay:.2f}s after it was due, behind a 40 s batch")
    finally:
        worker.stop()


def test_prefork_children_beat_for_themselves(own_db: str, redis_url: str, tiny_models: Path, tmp_path: Path) -> None:
    config, path, queue = _config(tmp_path, "prefork", own_db, redis_url, tiny_models)
    sessions = session_factory(own_db)
    ids = _jobs(sessions, queue, 4)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{Path(__file__).parent}", "HYFUNC_WORKER_RUNNER": RUNNER,
           "HYFUNC_TEST_BATCH_DELAY": "120", **SWEEPING}
    for key in ("HYFUNC_DATABASE_URL", "HYFUNC_BROKER_URL", "HYFUNC_QUEUE", "HYFUNC_MODELS_DIR"):
        env.pop(key, None)
    log_path = tmp_path / "prefork.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hyfunc.cli", "worker", "--config", str(path), "--pool",
                                 "prefork", "--concurrency", "1", "--loglevel", "info"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def tail() -> str:
            return log_path.read_text(errors="replace")[-3000:]

        def child() -> int | None:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            return int(kids[0]) if kids else None

        pid = wait_for(child, 60, "the prefork child", on_timeout=tail)
        child_name = f"{socket.gethostname()}:{pid}"
        with sessions() as s:
            wait_for(lambda: s.get(Worker, child_name) is not None, 30, "the child's own heartbeat row",
                     on_timeout=tail)
        enqueue(create_celery(config), ids, queue)
        wait_for(lambda: all(st == ("running", child_name, 1) for st in _statuses(sessions, ids).values()), 60,
                 "the child to claim the jobs under its own name", on_timeout=tail)
        os.kill(pid, signal.SIGKILL)  # the child alone: its parent lives on and beats
        killed = time.monotonic()
        wait_for(lambda: all(st[1] != child_name or st[0] != "running" for st in _statuses(sessions, ids).values()),
                 30, "the dead child's jobs to be released (not the 300 s lease)", interval=0.1, on_timeout=tail)
        print(f"\nkilled prefork child's jobs released {time.monotonic() - killed:.1f}s after the kill")
        with sessions() as s:
            assert s.get(Worker, child_name).status == "dead"
    finally:
        stop_group(proc)
