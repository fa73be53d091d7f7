"""A worker SIGKILLed mid-batch loses nothing, and its jobs run again within seconds:
the new worker's sweeper sees the dead worker's heartbeat stop and re-queues its running
jobs (the 300 s lease is not waited out); every job is finished exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import WEATHER, WorkerProcess, wait_for, write_config
from sqlalchemy import select, text

from hyfunc.store.db import session_factory
from hyfunc.store.jobs import NewJob
from hyfunc.store.keys import get_or_create_tenant
from hyfunc.store.models import FINAL_STATUSES, Job
from producer import create_celery, submit_jobs

pytestmark = pytest.mark.service


def test_sigkill_mid_batch_then_new_worker_finishes_every_job_once(
    pg_url: str, redis_url: str, queue_name: str, tiny_models: Path, tmp_path: Path
) -> None:
    config, config_path = write_config(
        tmp_path / "config.yaml",
        models={"dir": str(tiny_models)},
        store={"url": pg_url},
        worker={"broker_url": redis_url, "queue": queue_name + "-kill", "flush_every": 4, "flush_interval": 0.1,
                "lease_seconds": 300, "sweep_interval": 1.0, "heartbeat_interval": 0.5, "heartbeat_misses": 3,
                "requeue_grace_seconds": 2},
    )
    sessions = session_factory(pg_url)
    with sessions() as s:
        tenant = get_or_create_tenant(s, f"kill-{queue_name}")
        s.commit()
        ids = submit_jobs(create_celery(config), s, tenant.id,
                          [NewJob(query=f"weather in place {i}", tools=[WEATHER]) for i in range(24)]).ids

    def statuses() -> dict[str, str]:
        with sessions() as s:
            return {str(i): st for i, st in s.execute(select(Job.id, Job.status).where(Job.id.in_(ids)))}

    def workers() -> dict[str, str | None]:
        with sessions() as s:
            return {str(i): w for i, w in s.execute(select(Job.id, Job.worker).where(Job.id.in_(ids)))}

    # Each batch sleeps 2 s in this worker, so the kill lands while a batch is in flight.
    slow = WorkerProcess(config_path, tmp_path / "slow.log", env={"HYFUNC_TEST_BATCH_DELAY": "2"})
    try:
        wait_for(lambda: "running" in statuses().values(), 60, "the first worker to claim a batch",
                 on_timeout=slow.tail)
        slow.kill()
    finally:
        slow.stop()
    at_kill, killed_workers = statuses(), workers()
    running = [i for i, st in at_kill.items() if st == "running"]
    assert running, at_kill
    assert sum(st in FINAL_STATUSES for st in at_kill.values()) < len(ids)

    fresh = WorkerProcess(config_path, tmp_path / "fresh.log", beat=True)
    try:
        t0 = time.monotonic()
        # Well inside the 300 s lease: the heartbeat, not the lease, brings them back.
        wait_for(lambda: all(st in FINAL_STATUSES for st in statuses().values()), 60,
                 "every job to finish after the restart", interval=0.25,
                 on_timeout=lambda: fresh.tail() + f"\n{statuses()}")
        print(f"\nall {len(ids)} jobs final {time.monotonic() - t0:.1f}s after the new worker started")
        assert "missed their heartbeats" in fresh.log_path.read_text()
    finally:
        fresh.stop()

    with sessions() as s:
        rows = {str(r.id): r for r in s.scalars(select(Job).where(Job.id.in_(ids)))}
        finals = s.execute(
            text("SELECT job_id, count(*) FROM job_audit WHERE job_id = ANY(:ids) "
                 "AND new_status IN ('succeeded', 'failed', 'cancelled') "
                 "AND old_status NOT IN ('succeeded', 'failed', 'cancelled') GROUP BY job_id"),
            {"ids": [str(i) for i in ids]},
        ).all()
    assert all(r.status == "succeeded" for r in rows.values()), {i: (r.status, r.error) for i, r in rows.items()}
    # Exactly once: one transition into a final state per job, never a second write.
    assert {str(job_id): n for job_id, n in finals} == {str(i): 1 for i in ids}
    # The jobs the killed worker held were re-queued and run again, as second attempts.
    assert all(rows[i].attempts == 2 for i in running)
    assert all(rows[i].worker != killed_workers[i] for i in running)
