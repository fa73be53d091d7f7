"""End to end: API -> Redis -> a real Celery worker process (real Cascade, tiny models)
-> PostgreSQL. Batching, timings, poison isolation, idempotent redelivery, replay."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import STOCK, WEATHER, WorkerProcess, wait_finished, write_config
from fastapi.testclient import TestClient
from runners import POISON_MARK
from sqlalchemy import func, select, text, update

from hyfunc.store.db import session_factory, transaction
from hyfunc.store.jobs import NewJob, create_jobs
from hyfunc.store.keys import create_key
from hyfunc.store.models import Job
from producer import create_celery, enqueue

pytestmark = pytest.mark.service

FLUSH_EVERY = 8
COLUMNS = [c.key for c in Job.__table__.columns]


@pytest.fixture(scope="module")
def env(pg_url: str, redis_url: str, queue_name: str, tiny_models: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from api.app import create_app

    tmp = tmp_path_factory.mktemp("worker")
    config, config_path = write_config(
        tmp / "config.yaml",
        models={"dir": str(tiny_models)},
        store={"url": pg_url},
        worker={"broker_url": redis_url, "queue": queue_name, "flush_every": FLUSH_EVERY,
                "flush_interval": 0.1, "lease_seconds": 120},
    )
    sessions = session_factory(pg_url)
    with transaction(sessions) as s:
        key, row = create_key(s, f"worker-{queue_name}")
    worker = WorkerProcess(config_path, tmp / "worker.log")
    try:
        with TestClient(create_app(config)) as client:
            yield {"client": client, "h": {"X-API-Key": key}, "tenant": row.tenant_id, "sessions": sessions,
                   "config": config, "worker": worker}
    finally:
        worker.stop()



def audit_rows(env: dict[str, Any], job_ids: list[str]) -> list[tuple[str, str, str]]:
    with env["sessions"]() as s:
        return [tuple(map(str, r)) for r in s.execute(
            text("SELECT job_id, old_status, new_status FROM job_audit WHERE job_id = ANY(:ids)"),
            {"ids": job_ids})]


def test_end_to_end_200_jobs_batched(env: dict[str, Any]) -> None:
    c, h = env["client"], env["h"]
    jobs = [{"id": f"e2e-{i}", "query": f"what is the weather in city number {i}" if i % 2 else f"stock price of T{i}",
             "tools": [WEATHER, STOCK]} for i in range(200)]
    t0 = time.monotonic()
    r = c.post("/v1/jobs/batch", json=jobs, headers=h)
    assert r.status_code == 202, r.text
    ids = r.json()["ids"]
    rows = wait_finished(env, ids)
    elapsed = time.monotonic() - t0
    assert [r.status for r in rows].count("succeeded") == 200, {r.status: r.error for r in rows}
    for row in rows:
        assert row.lml_ms and row.lml_ms > 0 and row.total_ms and row.total_ms >= row.lml_ms
        assert row.retrieve_ms is not None and row.queue_wait_ms is not None and row.queue_wait_ms >= 0
        assert row.tokens_lml_prompt and row.tokens_lml_prompt > 0
        assert row.attempts == 1 and row.worker and row.model_versions and row.started_at <= row.finished_at
    sizes = {row.batch_id: row.batch_size for row in rows}
    assert max(sizes.values()) > 1 and max(sizes.values()) <= 2 * FLUSH_EVERY
    assert sum(sizes.values()) == 200  # every job in exactly one batch, sizes consistent
    got = c.get(f"/v1/jobs/{ids[0]}", headers=h).json()
    assert got["status"] == "succeeded" and got["timings_ms"]["lml"] > 0 and got["batch_size"] > 0
    assert got["calls"] or got["no_call_reason"]
    metrics = c.get("/metrics").text
    assert 'hyfunc_stage_latency_ms_count{stage="lml"}' in metrics
    print(f"\n200 jobs end to end in {elapsed:.1f}s; {len(sizes)} batches, sizes {sorted(sizes.values())}")


def test_poison_job_fails_alone(env: dict[str, Any]) -> None:
    c, h = env["client"], env["h"]
    jobs = [{"query": f"weather in town {i}", "tools": [WEATHER]} for i in range(5)]
    jobs.insert(2, {"query": f"weather {POISON_MARK}", "tools": [WEATHER]})
    ids = c.post("/v1/jobs/batch", json=jobs, headers=h).json()["ids"]
    rows = {str(r.id): r for r in wait_finished(env, ids, timeout=60)}
    poison = rows.pop(ids[2])
    assert poison.status == "failed" and "poison job" in poison.error and poison.batch_size == 1
    assert all(r.status == "succeeded" and r.error is None for r in rows.values()), [r.error for r in rows.values()]
    # The poison job shared a batch with others, and they were re-run one by one.
    assert any(r.batch_id == poison.batch_id for r in rows.values())
    assert all(r.batch_size == 1 for r in rows.values() if r.batch_id == poison.batch_id)


def test_invalid_stored_request_fails_alone_on_the_worker(env: dict[str, Any]) -> None:
    """A producer that bypassed validation: the worker's own check fails that job only."""
    with transaction(env["sessions"]) as s:
        bad, good = create_jobs(s, env["tenant"], [
            NewJob(query="weather please", tools=[{"name": "f", "parameters": {"type": "string"}}]),
            NewJob(query="weather please", tools=[WEATHER]),
        ])
        ids = [str(bad.id), str(good.id)]
    enqueue(create_celery(env["config"]), ids)
    rows = {str(r.id): r for r in wait_finished(env, ids, timeout=60)}
    assert rows[ids[0]].status == "failed" and "invalid request" in rows[ids[0]].error
    assert rows[ids[1]].status == "succeeded"


def test_duplicate_delivery_of_finished_job_writes_nothing(env: dict[str, Any]) -> None:
    c, h = env["client"], env["h"]
    first = c.post("/v1/jobs", json={"query": "weather in Rome", "tools": [WEATHER]}, headers=h).json()["id"]
    [done] = wait_finished(env, [first], timeout=60)
    before = {col: getattr(done, col) for col in COLUMNS}
    audited_before = audit_rows(env, [first])
    celery = create_celery(env["config"])
    enqueue(celery, [first, first])  # redelivered twice
    marker = c.post("/v1/jobs", json={"query": "weather in Turin", "tools": [WEATHER]}, headers=h).json()["id"]
    # Messages are consumed in order, so once the later job is finished the duplicates were handled.
    wait_finished(env, [marker], timeout=60)
    with env["sessions"]() as s:
        after = s.get(Job, done.id)
        assert {col: getattr(after, col) for col in COLUMNS} == before
    assert audit_rows(env, [first]) == audited_before  # not even a no-op UPDATE touched the row
    # The worker did receive them: its batch log reports skipped (already finished) jobs.
    assert re.search(r"\b[1-9]\d* skipped", env["worker"].log_path.read_text())


def test_replay_report_counts_changes(env: dict[str, Any]) -> None:
    c, h = env["client"], env["h"]
    jobs = [{"query": f"weather in village {i}", "tools": [WEATHER, STOCK]} for i in range(6)]
    ids = c.post("/v1/jobs/batch", json=jobs, headers=h).json()["ids"]
    originals = {str(r.id): r for r in wait_finished(env, ids, timeout=60)}
    assert all(r.status == "succeeded" for r in originals.values())
    # Pretend an older model answered jobs 0-2 differently; 3-5 keep what today's model says.
    old_calls = [{"name": "get_stock_price", "arguments": {"ticker": f"OLD{i}"}} for i in range(3)]
    with transaction(env["sessions"]) as s:
        for i in range(3):
            s.execute(update(Job).where(Job.id == originals[ids[i]].id).values(calls=[old_calls[i]]))
    # Feedback: job 0's old answer was right (the replay broke it); job 3 is confirmed
    # correct; job 1 is corrected to what today's model answers (the replay fixed it).
    today_1 = originals[ids[1]].calls
    for job_id, body in ((ids[0], {"verdict": "correct"}), (ids[3], {"verdict": "correct"}),
                         (ids[1], {"verdict": "incorrect", "calls": today_1})):
        assert c.post(f"/v1/jobs/{job_id}/feedback", json=body, headers=h).status_code == 201

    r = c.post("/v1/replays", json={"job_ids": ids, "model_version": "tiny-random-0"}, headers=h)
    assert r.status_code == 202, r.text
    replay = r.json()
    assert replay["job_count"] == 6
    new_rows = wait_finished(env, replay["job_ids"], timeout=60)
    assert {str(r.replay_of) for r in new_rows} == set(ids)
    report = c.get(f"/v1/replays/{replay['id']}", headers=h).json()
    assert (report["total"], report["finished"], report["succeeded"], report["pending"]) == (6, 6, 6, 0)
    assert report["changed"] == 3 and report["unchanged"] == 3
    assert {ch["replay_of"] for ch in report["changes"]} == set(ids[:3])
    assert report["accuracy"] == {"judged": 3, "before_correct": 2, "after_correct": 2,
                                  "before": 2 / 3, "after": 2 / 3}
    assert report["model_version_matched"] is True
    other = c.post("/v1/toolsets", json={"name": "x", "tools": [WEATHER]}, headers=h)
    assert other.status_code in (200, 201)
    with env["sessions"]() as s:
        assert s.scalar(select(func.count()).where(Job.replay_id == replay["id"])) == 6
