"""Reliability pieces, in-process against the real PostgreSQL and Redis: the status and
stage registries, strict config, store counters, the sweeper, the per-batch deadline, no
claim while the database is down, /healthz, /metrics behind a token, and an export that
fails mid-stream visibly. (Worker processes: test_heartbeat.py and test_recovery.py.)"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import typing
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, WEATHER, create_database, drop_database, queue_length, write_config
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from hyfunc.config import ConfigError
from hyfunc.schema import CallRequest, CallResult, StageTimings, TokenCounts
from hyfunc.stages import CASCADE_STAGES, STAGES, TOKEN_COUNTERS, timing_column, token_column
from hyfunc.store import migrate
from hyfunc.store.counters import read_counters, status_key
from hyfunc.store.db import session_factory, transaction
from hyfunc.store.errors import StoreUnavailable
from hyfunc.store.jobs import NewJob, claim_jobs, create_jobs, finish_job, release_jobs_of
from hyfunc.store.keys import create_key
from hyfunc.store.models import Job, Worker, utcnow
from hyfunc.store.status import JOB_STATUSES, QUEUED, RUNNING, JobStatus
from hyfunc.store.workers import heartbeat
from producer import create_celery, retry_queue
from worker.processor import process_batch
from worker.sweeper import sweep

pytestmark = pytest.mark.service

UNREACHABLE_PG = "postgresql://hyfunc:s3cret-pw@127.0.0.1:1/nowhere"
UNREACHABLE_REDIS = "redis://:s3cret-pw@127.0.0.1:1/0"


@pytest.fixture
def fresh_db() -> Iterator[str]:
    """A database of its own: the counters must equal a full count of its jobs."""
    url = create_database("hyfunc_rel")
    migrate.upgrade(url)
    yield url
    drop_database(url)


def _tenant(url: str) -> tuple[int, str]:
    with transaction(session_factory(url)) as s:
        key, row = create_key(s, f"rel-{uuid.uuid4().hex[:6]}")
    return row.tenant_id, key


class SleepyRunner:
    """A runner that answers at once, except for queries naming 'slow' (it sleeps)."""

    model_versions = {"runner": "sleepy"}

    def __init__(self, sleep_s: float = 30.0):
        self.sleep_s = sleep_s
        self.calls: list[int] = []

    def run(self, requests: list[CallRequest]) -> list[CallResult]:
        self.calls.append(len(requests))
        if any("slow" in r.query for r in requests):
            time.sleep(self.sleep_s)
        return [CallResult(id=r.id, no_call_reason="none fits") for r in requests]


# -- registries and config -------------------------------------------------------------------


def test_one_source_of_truth_for_statuses_and_stages() -> None:
    assert typing.get_args(JobStatus) == JOB_STATUSES
    assert [c.key for c in Job.__table__.columns if c.key.endswith("_ms")] == [timing_column(s) for s in STAGES]
    assert [c.key for c in Job.__table__.columns if c.key.startswith("tokens_")] == [token_column(c) for c in TOKEN_COUNTERS]
    assert tuple(TokenCounts.model_fields) == TOKEN_COUNTERS and set(StageTimings.model_fields) == set(CASCADE_STAGES)
    # The API never imports the worker package (the producer lives in producer/).
    probe = "import sys, api.app, api.service; print(sorted(m for m in sys.modules if m.split('.')[0] == 'worker'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_config_rejects_unknown_keys_at_every_level(tmp_path: Path) -> None:
    for data, bad in (({"bogus": 1}, "bogus"), ({"worker": {"heartbeat_intervall": 1}}, "heartbeat_intervall"),
                      ({"api": {"metrics_tokn": "x"}}, "metrics_tokn"),
                      ({"training": {"lms": {"steps": 3}}}, "training")):  # a recipe is read by `hyfunc train`
        with pytest.raises(ConfigError, match=bad):
            write_config(tmp_path / "c.yaml", **data)
    config, _ = write_config(tmp_path / "ok.yaml", worker={"batch_deadline_seconds": 5, "heartbeat_interval": 1},
                             api={"metrics_token": "t"})
    assert config.worker.batch_deadline_seconds == 5 and config.api.metrics_token == "t"


# -- store counters and the sweeper ------------------------------------------------------------


def _true_counts(url: str) -> dict[str, float]:
    with session_factory(url)() as s:
        counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
    return {st: float(counts.get(st, 0)) for st in JOB_STATUSES}


def _counted(url: str) -> dict[str, float]:
    with session_factory(url)() as s:
        values = read_counters(s)
    return {st: values.get(status_key(st), 0.0) for st in JOB_STATUSES}


def test_counters_follow_every_status_change(fresh_db: str) -> None:
    tenant, _ = _tenant(fresh_db)
    sessions = session_factory(fresh_db)
    with transaction(sessions) as s:
        jobs = create_jobs(s, tenant, [NewJob(query=f"q{i}", tools=[WEATHER]) for i in range(6)])
    ids = [j.id for j in jobs]
    assert _counted(fresh_db) == _true_counts(fresh_db)
    batch = uuid.uuid4()
    with transaction(sessions) as s:
        claim = claim_jobs(s, ids[:4], worker="w1", batch_id=batch, lease_seconds=60, max_attempts=3)
    assert len(claim.claimed) == 4 and _counted(fresh_db) == _true_counts(fresh_db)
    with transaction(sessions) as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
        result = CallResult(no_call_reason="x")
        result.timings_ms.lml, result.timings_ms.total = 3.0, 7.0
        assert finish_job(s, rows[ids[0]], batch, result, model_versions={}, batch_size=4)
        assert not finish_job(s, rows[ids[5]], batch, result, model_versions={}, batch_size=4)  # not ours
    with transaction(sessions) as s:
        released = release_jobs_of(s, ["w1"])
    assert sorted(released) == sorted(ids[1:4])
    with pytest.raises(RuntimeError), transaction(sessions) as s:  # a rolled-back transaction counts nothing
        create_jobs(s, tenant, [NewJob(query="rolled back", tools=[WEATHER])])
        raise RuntimeError("abort")
    assert _counted(fresh_db) == _true_counts(fresh_db) == {"queued": 5.0, "running": 0.0, "succeeded": 1.0,
                                                            "failed": 0.0, "cancelled": 0.0}
    with sessions() as s:
        values = read_counters(s)
    assert values["stage_ms.total.le.10"] == 1 and values["stage_ms.lml.sum"] == 3.0
    assert values["jobs.requeued.dead_worker"] == 3


def test_sweeper_requeues_dead_workers_jobs_and_never_duplicates_fresh_messages(
    fresh_db: str, redis_url: str, tmp_path: Path
) -> None:
    queue = f"hyfunc-test-sweep-{uuid.uuid4().hex[:8]}"
    config, _ = write_config(tmp_path / "c.yaml", store={"url": fresh_db},
                             worker={"broker_url": redis_url, "queue": queue, "heartbeat_interval": 1,
                                     "heartbeat_misses": 3, "requeue_grace_seconds": 5})
    celery = create_celery(config)
    tenant, _ = _tenant(fresh_db)
    sessions = session_factory(fresh_db)
    now = utcnow()
    with transaction(sessions) as s:
        heartbeat(s, name="dead:1", host="h", pid=1, queue=queue, started_at=now)
        heartbeat(s, name="alive:2", host="h", pid=2, queue=queue, started_at=now)
        s.execute(update(Worker).where(Worker.name == "dead:1").values(last_heartbeat=now - timedelta(seconds=10)))
        held = create_jobs(s, tenant, [NewJob(query=f"held {i}", tools=[WEATHER]) for i in range(3)])
        other = create_jobs(s, tenant, [NewJob(query="held by the live one", tools=[WEATHER])])
        fresh = create_jobs(s, tenant, [NewJob(query=f"fresh {i}", tools=[WEATHER]) for i in range(4)])
        unsent = create_jobs(s, tenant, [NewJob(query="broker was down", tools=[WEATHER])])
        lost = create_jobs(s, tenant, [NewJob(query=f"lost {i}", tools=[WEATHER]) for i in range(2)])
    with transaction(sessions) as s:
        claim_jobs(s, [j.id for j in held], worker="dead:1", batch_id=uuid.uuid4(), lease_seconds=300, max_attempts=3)
        claim_jobs(s, [other[0].id], worker="alive:2", batch_id=uuid.uuid4(), lease_seconds=300, max_attempts=3)
        s.execute(update(Job).where(Job.id == unsent[0].id).values(enqueued_at=None))
        # Sent long ago, but their messages are gone (a broker restarted without persistence).
        s.execute(update(Job).where(Job.id.in_([j.id for j in lost])).values(enqueued_at=now - timedelta(seconds=60)))
    # The fresh jobs' 4 messages are in the broker; the lost ones' are not.
    from producer import enqueue

    enqueue(celery, [j.id for j in fresh], queue)
    report = sweep(sessions, celery, config)
    assert report.dead_workers == ["dead:1"] and report.released == 3 and report.broker_depth == 4
    with sessions() as s:
        st = dict(s.execute(select(Job.id, Job.status)).tuples().all())
    assert all(st[j.id] == QUEUED for j in held) and st[other[0].id] == RUNNING
    # Sent: the 3 released (to the retry queue) + the unsent + the 2 lost; never the 4 fresh ones again.
    assert report.sent == 6 and queue_length(redis_url, queue) == 4 + 3
    assert queue_length(redis_url, retry_queue(queue)) == 3
    again = sweep(sessions, celery, config)
    assert again.sent == 0 and again.dead_workers == [] and again.broker_depth == 10
    assert queue_length(redis_url, queue) + queue_length(redis_url, retry_queue(queue)) == 10
    assert _counted(fresh_db) == _true_counts(fresh_db)


# -- the worker's batch: deadline, database outage --------------------------------------------


def test_batch_deadline_fails_only_the_slow_job(pg_url: str) -> None:
    tenant, _ = _tenant(pg_url)
    sessions = session_factory(pg_url)
    with transaction(sessions) as s:
        jobs = create_jobs(s, tenant, [NewJob(query=q, tools=[WEATHER]) for q in ("a", "b", "slow one", "c")])
    runner = SleepyRunner(sleep_s=60)
    t0 = time.monotonic()
    out = process_batch(sessions, runner, [j.id for j in jobs], worker="t:1", lease_seconds=300, max_attempts=3,
                        batch_deadline=1.0)
    elapsed = time.monotonic() - t0
    assert out.isolated and out.timed_out == 1 and out.succeeded == 3 and out.failed == 1
    assert elapsed < 2 * 1.0 + 3, elapsed  # the batch's deadline, then the slow job's own
    assert runner.calls == [4, 1, 1, 1, 1]
    with sessions() as s:
        rows = {r.request["query"]: r for r in s.scalars(select(Job).where(Job.id.in_([j.id for j in jobs])))}
    assert rows["slow one"].status == "failed" and "worker.batch_deadline_seconds" in rows["slow one"].error
    assert all(rows[q].status == "succeeded" for q in "abc")


NESTED = {"type": "function", "function": {"name": "grid", "description": "a nested grid of numbers", "parameters": {
    "type": "object", "required": ["cells"], "properties": {"cells": {}}}}}


def _nested_array(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def test_nested_array_job_is_bounded_by_the_deadline_and_alone(pg_url: str, tiny_models: Path, tmp_path: Path) -> None:
    """The issue's hostile schema (array of arrays ... depth 8) on the real cascade."""
    from hyfunc.cascade import Cascade

    config, _ = write_config(tmp_path / "c.yaml", models={"dir": str(tiny_models)}, store={"url": pg_url},
                             cascade={"relevance_threshold": -1.0})
    tool = {"type": "function", "function": {**NESTED["function"], "parameters": {
        "type": "object", "required": ["cells"], "properties": {"cells": _nested_array(8)}}}}
    tenant, _ = _tenant(pg_url)
    sessions = session_factory(pg_url)
    with transaction(sessions) as s:
        jobs = create_jobs(s, tenant, [NewJob(query="fill the grid with 7", tools=[tool])]
                           + [NewJob(query=f"weather in town {i}", tools=[WEATHER]) for i in range(3)])
    deadline = 5.0
    t0 = time.monotonic()
    out = process_batch(sessions, Cascade.load(config), [j.id for j in jobs], worker="t:2", lease_seconds=300,
                        max_attempts=3, batch_deadline=deadline)
    elapsed = time.monotonic() - t0
    with sessions() as s:
        rows = {r.id: r for r in s.scalars(select(Job).where(Job.id.in_([j.id for j in jobs])))}
    others = [rows[j.id] for j in jobs[1:]]
    assert all(r.status == "succeeded" for r in others), [(r.status, r.error) for r in others]
    nested = rows[jobs[0].id]
    # Bounded either way: a token budget ended it (failed, or succeeded short), or the deadline did.
    assert elapsed < 2 * deadline + 5, elapsed
    assert nested.status in ("succeeded", "failed") and out.claimed == 4
    print(f"\nnested depth-8 job: {nested.status} ({nested.error}); batch {elapsed:.1f}s, isolated={out.isolated}")


def test_claim_with_the_database_unreachable_raises_and_writes_nothing(pg_url: str) -> None:
    unreachable = session_factory(UNREACHABLE_PG)
    runner = SleepyRunner()
    with pytest.raises(StoreUnavailable):
        process_batch(unreachable, runner, [uuid.uuid4()], worker="t:3", lease_seconds=300, max_attempts=3)
    assert runner.calls == []  # nothing ran: there was nothing claimed


class _FakeRequest:
    def __init__(self) -> None:
        self.acked = self.requeued = False

    def acknowledge(self) -> None:
        self.acked = True

    def reject(self, requeue: bool = False) -> None:
        self.requeued = requeue


class _InlinePool:
    def apply_async(self, fn: Any, args: Any, callback: Any = None, **_: Any) -> None:
        callback({"requeue": True} if self.down else {"claimed": 1})

    down = True


def test_unclaimed_messages_are_requeued_not_acked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_batches import SimpleRequest

    from worker.app import JobBatches
    from worker.gate import GATE

    monkeypatch.setattr(SimpleRequest, "from_request", staticmethod(lambda r: r))
    task = JobBatches()
    task._pool = _InlinePool()
    requests = [_FakeRequest() for _ in range(3)]
    paused: list[bool] = []
    monkeypatch.setattr(GATE, "pause", lambda: paused.append(True))
    task.flush(requests)
    assert paused and all(r.requeued and not r.acked for r in requests)
    _InlinePool.down = False
    ok = [_FakeRequest() for _ in range(2)]
    task.flush(ok)
    assert all(r.acked and not r.requeued for r in ok)


# -- the API: health, store down, broker down, metrics, export ---------------------------------


def test_healthz_with_no_worker_or_no_database_is_503_and_leaks_nothing(pg_url: str, redis_url: str,
                                                                        tmp_path: Path) -> None:
    from api.app import create_app

    down, _ = write_config(tmp_path / "down.yaml", store={"url": UNREACHABLE_PG},
                           worker={"broker_url": UNREACHABLE_REDIS})
    with TestClient(create_app(down)) as c:
        r = c.get("/healthz")
        assert r.status_code == 503
        assert r.json() == {"status": "unavailable", "database": "unreachable", "broker": "unreachable",
                            "workers": {"alive": None, "list": []}}
        assert "s3cret" not in r.text and "127.0.0.1" not in r.text
        post = c.post("/v1/jobs", json={"query": "q", "tools": [WEATHER]}, headers={"X-API-Key": "k"})
        assert post.status_code == 503 and post.json()["detail"] == "store unavailable"
        assert "s3cret" not in post.text
    queue = f"hyfunc-test-health-{uuid.uuid4().hex[:6]}"
    up, _ = write_config(tmp_path / "up.yaml", store={"url": pg_url},
                         worker={"broker_url": redis_url, "queue": queue, "heartbeat_interval": 1})
    with TestClient(create_app(up)) as c:
        name = f"health-{queue}"
        body = c.get("/healthz").json()
        assert name not in str(body)
        with transaction(session_factory(pg_url)) as s:
            heartbeat(s, name=name, host="h", pid=1, queue=queue, started_at=utcnow())
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json()["workers"]["alive"] >= 1
        assert name in [w["name"] for w in r.json()["workers"]["list"]]


def test_post_while_the_broker_is_down_is_stored_queued_and_says_so(pg_url: str, redis_url: str,
                                                                    tmp_path: Path) -> None:
    from api.app import create_app

    queue = f"hyfunc-test-brokerdown-{uuid.uuid4().hex[:6]}"
    config, _ = write_config(tmp_path / "c.yaml", store={"url": pg_url},
                             worker={"broker_url": UNREACHABLE_REDIS, "queue": queue})
    _, key = _tenant(pg_url)
    with TestClient(create_app(config)) as c:
        r = c.post("/v1/jobs", json={"query": "weather in Oslo", "tools": [WEATHER]}, headers={"X-API-Key": key})
        assert r.status_code == 202 and r.json()["status"] == "queued" and r.json()["broker"] == "unavailable"
        b = c.post("/v1/jobs/batch", json=[{"query": "weather in Rome", "tools": [WEATHER]}],
                   headers={"X-API-Key": key})
        assert b.status_code == 202 and b.json()["broker"] == "unavailable"
    ids = [uuid.UUID(r.json()["id"]), uuid.UUID(b.json()["ids"][0])]
    sessions = session_factory(pg_url)
    with sessions() as s:
        rows = list(s.scalars(select(Job).where(Job.id.in_(ids))))
    assert [(r.status, r.enqueued_at) for r in rows] == [("queued", None)] * 2
    # The broker is back: the next sweep sends them.
    back, _ = write_config(tmp_path / "back.yaml", store={"url": pg_url}, worker={"broker_url": redis_url, "queue": queue})
    report = sweep(sessions, create_celery(back), back)
    assert report.sent >= 2 and queue_length(redis_url, queue) >= 2


def test_metrics_behind_a_token_and_never_scanning_jobs(pg_url: str, tmp_path: Path) -> None:
    from sqlalchemy import event

    from api.app import create_app
    from hyfunc.store.db import get_engine

    config, _ = write_config(tmp_path / "c.yaml", store={"url": pg_url}, api={"metrics_token": "m-token"},
                             worker={"broker_url": UNREACHABLE_REDIS})
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = get_engine(pg_url)
    with TestClient(create_app(config)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        event.listen(engine, "before_cursor_execute", record)
        try:
            r = c.get("/metrics", headers={"Authorization": "Bearer m-token"})
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert r.status_code == 200 and 'hyfunc_jobs{status="queued"}' in r.text
        for stage in STAGES:  # the decoder's lms_wait / program / sample included
            assert f'hyfunc_stage_latency_ms_bucket{{le="+Inf",stage="{stage}"}}' in r.text
    # A scrape reads the counters table only: never the jobs table, however large.
    assert statements and all("counters" in st and "jobs" not in st.lower() for st in statements), statements


def test_metrics_on_their_own_port(pg_url: str, tmp_path: Path) -> None:
    from api.app import create_app
    from api.metrics import create_metrics_app

    config, _ = write_config(tmp_path / "c.yaml", store={"url": pg_url}, worker={"broker_url": UNREACHABLE_REDIS},
                             api={"metrics_port": 9109, "metrics_token": "t"})
    app = create_app(config)
    with TestClient(app) as c:
        assert c.get("/metrics", headers={"Authorization": "Bearer t"}).status_code == 404
    with TestClient(create_metrics_app(app.state.hyfunc)) as m:
        assert m.get("/metrics").status_code == 401
        r = m.get("/metrics", headers={"Authorization": "Bearer t"})
        assert r.status_code == 200 and "hyfunc_jobs" in r.text
        assert m.get("/v1/jobs").status_code == 404 and m.get("/openapi.json").status_code == 404


def test_sweeps_run_on_their_own_queue(tmp_path: Path) -> None:
    from producer import SWEEP_TASK, control_queue, job_queues

    config, _ = write_config(tmp_path / "c.yaml", worker={"queue": "q1", "broker_url": UNREACHABLE_REDIS})
    app = create_celery(config)
    assert app.amqp.router.route({}, SWEEP_TASK)["queue"].name == control_queue("q1") == "q1.control"
    assert app.conf.beat_schedule["hyfunc-sweep"]["options"]["queue"] == "q1.control"
    assert job_queues("q1") == ["q1", "q1.retry"]


def test_export_failing_mid_stream_is_visible_to_the_client(pg_url: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import uvicorn

    import api.routes.export as export_route
    from api.app import create_app

    def broken(*_: Any, **__: Any) -> Iterator[dict[str, Any]]:
        yield {"id": "1", "query": "q", "tools": [], "answers": []}
        from sqlalchemy.exc import OperationalError

        raise OperationalError("SELECT", {}, Exception("server closed the connection: host db:5432"))

    monkeypatch.setattr(export_route, "export_records", broken)
    config, _ = write_config(tmp_path / "c.yaml", store={"url": pg_url}, worker={"broker_url": UNREACHABLE_REDIS})
    _, key = _tenant(pg_url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        lines: list[str] = []
        # The stream ends without its final chunk: the client sees an incomplete read.
        with pytest.raises(httpx.RemoteProtocolError), httpx.stream(
            "GET", f"http://127.0.0.1:{port}/v1/export", headers={"X-API-Key": key}, timeout=10
        ) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    lines.append(line)
        assert lines[0].startswith('{"id": "1"')
        assert lines[-1].startswith('{"error": "export failed after 1 records: store unavailable')
        assert "5432" not in lines[-1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
