"""RabbitMQ by URL instead of Redis; the embedded `hyfunc run` path recording into SQLite;
the CLI producer (`hyfunc submit --wait`) against a SQLite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, STOCK, WEATHER, WorkerProcess, wait_for, write_config
from sqlalchemy import select

from hyfunc.store.db import session_factory
from hyfunc.store.jobs import NewJob
from hyfunc.store.keys import get_or_create_tenant
from hyfunc.store.models import FINAL_STATUSES, Job, Tenant
from producer import create_celery, submit_jobs

pytestmark = pytest.mark.service


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "hyfunc.cli", *args], cwd=ROOT, env=full_env, text=True,
                          capture_output=True, timeout=timeout)


def test_worker_runs_jobs_through_rabbitmq(pg_url: str, rabbitmq_url: str, tiny_models: Path, tmp_path: Path) -> None:
    queue = f"hyfunc-test-amqp-{uuid.uuid4().hex[:8]}"
    config, config_path = write_config(
        tmp_path / "config.yaml", models={"dir": str(tiny_models)}, store={"url": pg_url},
        worker={"broker_url": rabbitmq_url, "queue": queue, "flush_every": 4, "flush_interval": 0.1},
    )
    celery = create_celery(config)
    sessions = session_factory(pg_url)
    worker = WorkerProcess(config_path, tmp_path / "amqp.log")
    try:
        with sessions() as s:
            tenant = get_or_create_tenant(s, queue)
            s.commit()
            ids = submit_jobs(celery, s, tenant.id, [NewJob(query=f"weather in {i}", tools=[WEATHER])
                                                     for i in range(10)], queue).ids

        def done() -> list[Job] | None:
            assert worker.alive(), worker.tail()
            with sessions() as s:
                rows = list(s.scalars(select(Job).where(Job.id.in_(ids))))
            return rows if all(r.status in FINAL_STATUSES for r in rows) else None

        rows = wait_for(done, 90, "jobs over RabbitMQ", interval=0.2, on_timeout=worker.tail)
        assert all(r.status == "succeeded" and r.lml_ms for r in rows)
        assert max(r.batch_size for r in rows) > 1
    finally:
        worker.stop()
        with celery.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def test_hyfunc_run_records_jobs_in_sqlite(tiny_models: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'embedded.sqlite'}"
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"id": f"r{i}", "query": f"weather in {i}", "tools": [WEATHER, STOCK]})
                                + "\n" for i in range(5)))
    out = tmp_path / "results.jsonl"
    proc = _cli("run", str(requests), "--models", str(tiny_models), "--out", str(out), "--quiet",
                env={"HYFUNC_DATABASE_URL": url})
    assert proc.returncode == 0, proc.stderr
    assert "not recorded" not in proc.stderr, proc.stderr
    with session_factory(url)() as s:
        local = s.scalar(select(Tenant).where(Tenant.name == "local"))
        rows = list(s.scalars(select(Job).where(Job.tenant_id == local.id).order_by(Job.client_id)))
    assert [r.client_id for r in rows] == [f"r{i}" for i in range(5)]
    results = {json.loads(line)["id"]: json.loads(line) for line in out.read_text().splitlines()}
    for row in rows:
        assert row.status == "succeeded" and row.lml_ms and row.total_ms and row.model_versions
        assert row.calls == results[row.client_id]["calls"]  # the store holds what run printed


def test_submit_wait_cli_with_sqlite_store(redis_url: str, tiny_models: Path, tmp_path: Path) -> None:
    queue = f"hyfunc-test-cli-{uuid.uuid4().hex[:8]}"
    config, config_path = write_config(
        tmp_path / "config.yaml", models={"dir": str(tiny_models)},
        store={"url": f"sqlite:///{tmp_path / 'svc.sqlite'}"},
        worker={"broker_url": redis_url, "queue": queue, "flush_every": 4, "flush_interval": 0.1},
    )
    assert _cli("db", "upgrade", "--config", str(config_path)).returncode == 0
    key = _cli("keys", "create", "--tenant", "cli", "--config", str(config_path))
    assert key.returncode == 0 and key.stdout.startswith("hf_")
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps({"id": f"c{i}", "query": f"price of T{i}", "tools": [STOCK]}) + "\n"
                                for i in range(6)))
    worker = WorkerProcess(config_path, tmp_path / "cli-worker.log")
    try:
        out = tmp_path / "out.jsonl"
        proc = _cli("submit", str(requests), "--wait", "--out", str(out), "--timeout", "90",
                    "--config", str(config_path), "--tenant", "cli")
        assert proc.returncode == 0, proc.stderr + worker.tail()
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [x["id"] for x in lines] == [f"c{i}" for i in range(6)]
        assert all(x["status"] == "succeeded" and x["timings_ms"]["lml"] > 0 for x in lines)
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"query": "x" * 5000, "tools": [STOCK]}) + "\n")
        rejected = _cli("submit", str(bad), "--config", str(config_path), "--tenant", "cli")
        assert rejected.returncode != 0 and "limits.max_query_chars" in rejected.stderr
    finally:
        worker.stop()
