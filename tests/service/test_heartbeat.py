"""Worker processes against the real PostgreSQL and Redis: the heartbeat row, an embedded
beat that dies with its worker, and a database outage during which the worker acks
nothing it could not claim and then resumes by itself."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
from conftest import WEATHER, WorkerProcess, queue_length, wait_for, write_config
from sqlalchemy import select, text

from hyfunc.chaos.tcp_proxy import TcpProxy
from hyfunc.store.db import session_factory, transaction
from hyfunc.store.jobs import NewJob, create_jobs
from hyfunc.store.keys import get_or_create_tenant
from hyfunc.store.models import Job, Worker
from hyfunc.store.status import FINAL_STATUSES
from producer import create_celery, enqueue

pytestmark = pytest.mark.service


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")  # a zombie is dead, waiting for a reaper


def test_heartbeat_row_and_beat_dies_with_its_worker(pg_url: str, redis_url: str, tiny_models: Path,
                                                     tmp_path: Path) -> None:
    queue = f"hyfunc-test-beat-{uuid.uuid4().hex[:8]}"
    _, config_path = write_config(
        tmp_path / "config.yaml", models={"dir": str(tiny_models)}, store={"url": pg_url},
        worker={"broker_url": redis_url, "queue": queue, "heartbeat_interval": 0.5, "sweep_interval": 1.0},
    )
    sessions = session_factory(pg_url)
    worker = WorkerProcess(config_path, tmp_path / "beat.log", beat=True)
    try:
        name = f"{socket.gethostname()}:{worker.proc.pid}"

        def row() -> Worker | None:
            with sessions() as s:
                return s.get(Worker, name)

        first = wait_for(row, 60, "the worker's heartbeat row", on_timeout=worker.tail)
        assert first.status == "alive" and first.pid == worker.proc.pid and first.queue == queue
        wait_for(lambda: row().last_heartbeat > first.last_heartbeat, 10, "a second beat")
        beat = wait_for(lambda: _children(worker.proc.pid), 60, "the embedded beat process", on_timeout=worker.tail)
        # SIGKILL the worker alone (not its process group): its beat must not survive it.
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)
        wait_for(lambda: all(_gone(p) for p in beat), 10, f"beat {beat} to die with its worker")
    finally:
        for pid in _children(worker.proc.pid):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        worker.stop()


def test_database_outage_acks_nothing_unclaimed_and_resumes_by_itself(
    pg_url: str, redis_url: str, tiny_models: Path, tmp_path: Path
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    via_proxy = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert via_proxy != pg_url
    queue = f"hyfunc-test-dbdown-{uuid.uuid4().hex[:8]}"
    config, config_path = write_config(
        tmp_path / "config.yaml", models={"dir": str(tiny_models)}, store={"url": via_proxy},
        worker={"broker_url": redis_url, "queue": queue, "flush_every": 4, "flush_interval": 0.1,
                "heartbeat_interval": 0.5, "db_retry_seconds": 60},
    )
    sessions = session_factory(pg_url)  # the test's own view: always reachable
    with transaction(sessions) as s:
        tenant = get_or_create_tenant(s, queue)
        ids = [j.id for j in create_jobs(s, tenant.id, [NewJob(query=f"weather in {i}", tools=[WEATHER])
                                                         for i in range(12)])]
    worker = WorkerProcess(config_path, tmp_path / "dbdown.log")
    try:
        wait_for(lambda: "ready" in worker.log_path.read_text(), 60, "the worker to start", on_timeout=worker.tail)
        proxy.stop()
        enqueue(create_celery(config), ids, queue)  # messages arrive while the database is down
        wait_for(lambda: "no longer consuming" in worker.log_path.read_text(), 15, "the worker to pause",
                 on_timeout=worker.tail)
        time.sleep(3)
        # Every message is still in the broker: none was acked without a claim.
        assert queue_length(redis_url, queue) == len(ids), worker.tail()
        with sessions() as s:
            assert {st for (st,) in s.execute(select(Job.status).where(Job.id.in_(ids)))} == {"queued"}
        assert worker.alive()
        proxy.start()

        def finished() -> bool:
            with sessions() as s:
                return all(st in FINAL_STATUSES for (st,) in s.execute(select(Job.status).where(Job.id.in_(ids))))

        t0 = time.monotonic()
        wait_for(finished, 60, "the jobs to run once the database is back", interval=0.25, on_timeout=worker.tail)
        print(f"\nresumed and finished {len(ids)} jobs {time.monotonic() - t0:.1f}s after the database came back")
        assert "consuming" in worker.log_path.read_text().split("no longer consuming", 1)[1]
        with sessions() as s:
            rows = list(s.scalars(select(Job).where(Job.id.in_(ids))))
            finals = s.execute(text(
                "SELECT count(*) FROM job_audit WHERE job_id = ANY(:ids) AND new_status IN "
                "('succeeded', 'failed', 'cancelled') AND old_status NOT IN ('succeeded', 'failed', 'cancelled')"),
                {"ids": [str(i) for i in ids]}).scalar()
        assert all(r.status == "succeeded" and r.attempts == 1 for r in rows), [(r.status, r.error) for r in rows]
        assert finals == len(ids)
    finally:
        worker.stop()
        proxy.stop()
