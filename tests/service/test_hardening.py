"""Issue 17 against the real PostgreSQL and Redis: schema compile limits at submission (parts 1
and 4), results written as jobs finish and a job past its own deadline failing alone (part 2),
and the API findings (part 4): NUL inside tool schemas, UTF-16 bodies, integer ids, /healthz's
shape during a database outage and on HEAD, /metrics under configs/service.yaml."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, WEATHER, queue_length, write_config
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hyfunc.config import load_config
from hyfunc.schema import CallRequest, CallResult
from hyfunc.store.db import session_factory, transaction
from hyfunc.store.jobs import NewJob, create_jobs
from hyfunc.store.keys import create_key
from hyfunc.store.models import Job, Toolset, utcnow
from hyfunc.store.workers import heartbeat
from worker.processor import process_batch

pytestmark = pytest.mark.service

UNREACHABLE_PG = "postgresql://hyfunc:pw@127.0.0.1:1/nowhere"


@pytest.fixture(scope="module")
def env(pg_url: str, redis_url: str, queue_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from api.app import create_app

    config, _ = write_config(tmp_path_factory.mktemp("hardening") / "config.yaml", store={"url": pg_url},
                             worker={"broker_url": redis_url, "queue": queue_name, "heartbeat_interval": 1})
    sessions = session_factory(pg_url)
    with transaction(sessions) as s:
        key, row = create_key(s, f"hardening-{uuid.uuid4().hex[:6]}")
    with TestClient(create_app(config)) as client:
        yield {"client": client, "h": {"X-API-Key": key}, "tenant": row.tenant_id, "sessions": sessions,
               "redis": redis_url, "queue": queue_name, "pg": pg_url}


def stored(env: dict) -> tuple[int, int, int]:
    with env["sessions"]() as s:
        jobs = s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == env["tenant"]))
        toolsets = s.scalar(select(func.count()).select_from(Toolset).where(Toolset.tenant_id == env["tenant"]))
    return jobs, toolsets, queue_length(env["redis"], env["queue"])


def enum_tool(values: int, width: int = 0) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "pick", "description": "Pick one", "parameters": {
        "type": "object", "required": ["x"],
        "properties": {"x": {"type": "string", "enum": [f"v{i:05d}" + "x" * width for i in range(values)]}}}}}


BOMB_FIELD = "tools[0].function.parameters.properties.x.enum has 10000 values; limit limits.max_enum_values is 1024"


@pytest.mark.parametrize("route", ["job", "batch", "jsonl", "toolset"])
def test_the_memory_bomb_is_refused_at_submission_naming_the_field(env: dict, route: str) -> None:
    c, h = env["client"], env["h"]
    before = stored(env)
    body = {"query": "pick v00042", "tools": [enum_tool(10_000)]}
    if route == "job":
        r = c.post("/v1/jobs", json=body, headers=h)
    elif route == "batch":
        r = c.post("/v1/jobs/batch", json=[{"query": "fine", "tools": [WEATHER]}, body], headers=h)
    elif route == "jsonl":
        r = c.post("/v1/jobs/batch", content=json.dumps(body) + "\n",
                   headers={**h, "content-type": "application/x-ndjson"})
    else:
        r = c.post("/v1/toolsets", json={"name": "bomb", "tools": body["tools"]}, headers=h)
    assert r.status_code == 422, r.text
    assert BOMB_FIELD in r.json()["detail"]
    if route == "batch":
        assert r.json()["detail"].startswith("jobs[1]: ")
    assert stored(env) == before


def test_compile_limits_are_config_keys(env: dict, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    from api.app import create_app

    config, _ = write_config(tmp_path / "c.yaml", store={"url": pg_url}, worker={"broker_url": redis_url},
                             limits={"max_enum_values": 20000, "max_choice_bytes": 50_000})
    with TestClient(create_app(config)) as c:
        r = c.post("/v1/jobs", json={"query": "q", "tools": [enum_tool(10_000)]}, headers=env["h"])
    assert r.status_code == 422 and "limit limits.max_choice_bytes is 50000" in r.json()["detail"], r.text


@pytest.mark.parametrize(("where", "tool"), [
    ("tools[0].function.description", {"name": "f", "description": "a\x00b", "parameters": {"type": "object"}}),
    ("tools[0].function.parameters.properties.x.enum[1]",
     {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "string", "enum": ["a", "b\x00"]}}}}),
    ("tools[0].function.parameters.properties.x.description",
     {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "string", "description": "\x00"}}}}),
])
def test_nul_inside_a_tool_schema_is_refused(env: dict, where: str, tool: dict) -> None:
    c, h = env["client"], env["h"]
    before = stored(env)
    for r in (c.post("/v1/jobs", json={"query": "q", "tools": [tool]}, headers=h),
              c.post("/v1/jobs/batch", json=[{"query": "q", "tools": [tool]}], headers=h),
              c.post("/v1/toolsets", json={"name": "nul", "tools": [tool]}, headers=h)):
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "NUL" in detail and where.replace("tools[0].function.", "") in detail, detail
    assert stored(env) == before


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_utf16_body_is_a_400(env: dict, encoding: str) -> None:
    c, h = env["client"], env["h"]
    before = stored(env)
    body = json.dumps({"query": "weather in Lyon", "tools": [WEATHER]}).encode(encoding)
    for path in ("/v1/jobs", "/v1/jobs/batch", "/v1/toolsets"):
        r = c.post(path, content=body, headers={**h, "content-type": "application/json"})
        assert r.status_code == 400 and "not UTF-8" in r.json()["detail"], (path, r.text)
    assert stored(env) == before


def test_an_integer_id_is_taken_as_its_decimal_string(env: dict) -> None:
    c, h = env["client"], env["h"]
    one = c.post("/v1/jobs", json={"id": 12, "query": "weather in Lyon", "tools": [WEATHER]}, headers=h)
    batch = c.post("/v1/jobs/batch", json=[{"id": 13, "query": "weather in Lyon", "tools": [WEATHER]}], headers=h)
    assert one.status_code == 202 and batch.status_code == 202, (one.text, batch.text)
    assert c.get(f"/v1/jobs/{one.json()['id']}", headers=h).json()["client_id"] == "12"
    assert c.get(f"/v1/jobs/{batch.json()['ids'][0]}", headers=h).json()["client_id"] == "13"
    for bad in (True, 1.5):
        r = c.post("/v1/jobs", json={"id": bad, "query": "q", "tools": [WEATHER]}, headers=h)
        assert r.status_code == 422 and "id" in r.json()["detail"], r.text


def test_healthz_has_one_shape_and_answers_head(env: dict, tmp_path: Path) -> None:
    from api.app import create_app

    c = env["client"]
    with transaction(env["sessions"]) as s:
        heartbeat(s, name=f"hz-{env['queue']}", host="h", pid=1, queue=env["queue"], started_at=utcnow())
    up = c.get("/healthz")
    assert up.status_code == 200, up.text
    head = c.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    down_config, _ = write_config(tmp_path / "down.yaml", store={"url": UNREACHABLE_PG},
                                  worker={"broker_url": env["redis"]})
    with TestClient(create_app(down_config)) as d:
        down = d.get("/healthz")
        assert d.head("/healthz").status_code == 503
    assert down.status_code == 503

    def shape(value: Any) -> Any:
        return {k: shape(v) for k, v in value.items()} if isinstance(value, dict) else None

    body = down.json()
    assert shape(body) == shape(up.json()), (body, up.json())
    assert body["workers"] == {"alive": None, "list": []} and body["database"] == "unreachable"


def test_service_yaml_never_leaves_metrics_open(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.app import create_app
    from api.metrics import create_metrics_app

    monkeypatch.delenv("HYFUNC_METRICS_TOKEN", raising=False)
    overrides = {"store.url": env["pg"], "worker.broker_url": env["redis"]}
    config = load_config(ROOT / "configs" / "service.yaml", overrides)
    assert config.api.metrics_token is None and config.api.metrics_open is False
    app = create_app(config)
    with TestClient(app) as c:
        r = c.get("/metrics")
        assert r.status_code == 403 and "api.metrics_token" in r.json()["detail"]
    with TestClient(create_metrics_app(app.state.hyfunc)) as m:
        assert m.get("/metrics").status_code == 403
    monkeypatch.setenv("HYFUNC_METRICS_TOKEN", "scrape-me")
    with TestClient(create_app(load_config(ROOT / "configs" / "service.yaml", overrides))) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


# -- part 2: results written as jobs finish --------------------------------------------------------


class StreamingRunner:
    """A streaming runner (as the CascadeFeeder is): every job finishes at once except 'slow'
    ones, which never do by themselves — only the per-job deadline ends them."""

    model_versions = {"runner": "streaming"}
    streams_results = True

    def __init__(self) -> None:
        self.written_while_running: list[str] = []

    def run(self, requests: list[CallRequest], on_results=None, job_seconds=None,
            deadline_message: str = "deadline exceeded") -> list[CallResult]:
        results = {i: CallResult(id=r.id, no_call_reason="none fits") for i, r in enumerate(requests)
                   if "slow" not in r.query}
        on_results(list(results.items()))
        time.sleep(job_seconds)
        late = {i: CallResult(id=r.id, error=f"{deadline_message} ({job_seconds:g} s)")
                for i, r in enumerate(requests) if i not in results}
        on_results(list(late.items()))
        return [{**results, **late}[i] for i in range(len(requests))]


def test_results_are_written_as_jobs_finish_and_a_late_job_fails_alone(env: dict) -> None:
    sessions = env["sessions"]
    with transaction(sessions) as s:
        jobs = create_jobs(s, env["tenant"], [NewJob(query=q, tools=[WEATHER]) for q in ("a", "slow one", "b", "c")])
    ids = [j.id for j in jobs]
    seen: dict[str, float] = {}
    stop = threading.Event()
    t0 = time.monotonic()

    def watch() -> None:  # what a client polling the API would see, while the batch runs
        while not stop.is_set():
            with sessions() as s:
                for job in s.scalars(select(Job).where(Job.id.in_(ids))):
                    if job.status in ("succeeded", "failed") and job.request["query"] not in seen:
                        seen[job.request["query"]] = time.monotonic() - t0
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = process_batch(sessions, StreamingRunner(), ids, worker="t:s", lease_seconds=300, max_attempts=3,
                            batch_deadline=30, job_deadline=3.0)
    finally:
        time.sleep(0.2)
        stop.set()
        watcher.join()
    assert not out.isolated and out.succeeded == 3 and out.failed == 1, out
    assert max(seen[q] for q in "abc") < 2.0 and seen["slow one"] >= 3.0, seen
    with sessions() as s:
        rows = {r.request["query"]: r for r in s.scalars(select(Job).where(Job.id.in_(ids)))}
    assert rows["slow one"].status == "failed" and "worker.job_deadline_seconds" in rows["slow one"].error
    assert all(rows[q].status == "succeeded" and rows[q].batch_size == 4 for q in "abc")


def test_the_default_worker_runs_a_batch_beside_one_held_by_a_slow_job(env: dict, tiny_models: Path,
                                                                       tmp_path: Path) -> None:
    """`hyfunc worker` with its default pool (threads, worker.pool): while one message batch is
    held by a slow job, the next batch is claimed and run at once — its jobs join the same decoder
    session — instead of waiting in the broker until the slow one ends (the solo pool's one batch
    at a time: 28.5 s p95 behind 12 runaway jobs in docs/reliability/issue17/pathological-before.md)."""
    from conftest import WorkerProcess, wait_for
    from runners import SLOW_MARK

    from producer import create_celery, enqueue

    queue = f"overlap-{uuid.uuid4().hex[:6]}"
    config, path = write_config(tmp_path / "w.yaml", models={"dir": str(tiny_models)}, store={"url": env["pg"]},
                                cascade={"relevance_threshold": -1.0},
                                worker={"broker_url": env["redis"], "queue": queue, "flush_interval": 0.1,
                                        "heartbeat_interval": 1})
    sessions = env["sessions"]
    worker = WorkerProcess(path, tmp_path / "worker.log", env={"HYFUNC_TEST_SLOW_SECONDS": "40"})
    try:
        def make(queries: list[str]) -> list[uuid.UUID]:
            with transaction(sessions) as s:
                ids = [j.id for j in create_jobs(s, env["tenant"], [NewJob(query=q, tools=[WEATHER]) for q in queries])]
            enqueue(create_celery(config), ids, queue)
            return ids

        def statuses(ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
            assert worker.alive(), worker.tail()
            with sessions() as s:
                return {j.id: j.status for j in s.scalars(select(Job).where(Job.id.in_(ids)))}

        slow = make([f"weather in Paris {SLOW_MARK}"])
        wait_for(lambda: statuses(slow)[slow[0]] == "running", 120, "the slow batch to start", on_timeout=worker.tail)
        t0 = time.monotonic()
        normal = make(["weather in Lyon", "weather in Oslo", "weather in Rome"])
        wait_for(lambda: set(statuses(normal).values()) == {"succeeded"}, 20,
                 "the next batch to run beside the slow one", on_timeout=worker.tail)
        took = time.monotonic() - t0
        assert statuses(slow)[slow[0]] == "running", "the slow batch ended first: nothing was shown"
        assert "concurrency: 4 (thread)" in worker.log_path.read_text()  # Celery's banner: the default pool
        print(f"\nthe next batch succeeded {took:.1f}s after it was enqueued, beside a batch held for 40 s")
    finally:
        worker.stop()


def test_the_worker_refuses_a_stored_job_over_a_limit_before_the_batch(env: dict) -> None:
    """A job stored before a limit was lowered (or written around the API) fails alone, named."""
    from hyfunc.schema_limits import CompileLimits

    sessions = env["sessions"]
    with transaction(sessions) as s:
        jobs = create_jobs(s, env["tenant"], [NewJob(query="pick", tools=[enum_tool(300)]),
                                              NewJob(query="fine", tools=[WEATHER])])
    runner = StreamingRunner()
    out = process_batch(sessions, runner, [j.id for j in jobs], worker="t:l", lease_seconds=300, max_attempts=3,
                        job_deadline=0.1, compile_limits=CompileLimits(max_enum_values=100))
    assert out.succeeded == 1 and out.failed == 1
    with sessions() as s:
        bomb = s.get(Job, jobs[0].id)
    assert bomb.status == "failed" and "properties.x.enum has 300 values; limit limits.max_enum_values is 100" \
        in bomb.error
