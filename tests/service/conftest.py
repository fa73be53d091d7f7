"""Fixtures for the service tests: a fresh PostgreSQL database per session, a private
Redis db + queue per test module, tiny models, and real worker subprocesses.

The services are found at HYFUNC_TEST_PG (an admin URL whose database exists; default
postgresql://postgres@127.0.0.1:5432/test), HYFUNC_TEST_REDIS (default redis://127.0.0.1:6379) and
HYFUNC_TEST_AMQP (default amqp://guest:guest@127.0.0.1:5672//). They are probed once, the first
time a test asks for one; a test whose service is not there is skipped (one summary line says
what to start), or fails when CI=true or HYFUNC_REQUIRE_SERVICES=1 (CI has them all, and a
silently skipped service test would hide a broken one).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the subprocesses get it through PYTHONPATH
    sys.path.insert(0, str(ROOT))

from hyfunc.chaos.audit import AUDIT_SQL  # noqa: E402 - the same job_audit trigger as the reliability suite
from hyfunc.config import HyFuncConfig, load_config  # noqa: E402

PG_ADMIN_URL = os.environ.get("HYFUNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_HOST = os.environ.get("HYFUNC_TEST_REDIS", "redis://127.0.0.1:6379")
RABBIT_URL = os.environ.get("HYFUNC_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REQUIRE_SERVICES = os.environ.get("CI", "").lower() == "true" or os.environ.get("HYFUNC_REQUIRE_SERVICES") == "1"
RUNNER = "runners:fault_injecting_cascade"  # tests/service is on the worker's PYTHONPATH

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
STOCK = {
    "type": "function",
    "function": {
        "name": "get_stock_price",
        "description": "Latest price of a stock ticker",
        "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]},
    },
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/service" in str(item.fspath):
            item.add_marker(pytest.mark.service)


# -- the services: probed once, skipped (or failed in CI) when absent ----------------------------

SERVICE_URLS = {"PostgreSQL": ("HYFUNC_TEST_PG", PG_ADMIN_URL), "Redis": ("HYFUNC_TEST_REDIS", REDIS_HOST),
                "RabbitMQ": ("HYFUNC_TEST_AMQP", RABBIT_URL)}
_missing_asked: set[str] = set()  # services some test needed and did not find, for the summary line


def _probe_postgres() -> None:
    import psycopg

    # The admin database itself must exist: every test database is created from this connection.
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute("SELECT 1")


def _probe_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_HOST, socket_connect_timeout=3)
    try:
        client.ping()
    finally:
        client.close()


def _probe_rabbitmq() -> None:
    from kombu import Connection

    with Connection(RABBIT_URL, connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)


@functools.cache
def service_problems() -> dict[str, str]:
    """Each service that cannot be used, with why (probed once per session)."""
    problems = {}
    for name, probe in (("PostgreSQL", _probe_postgres), ("Redis", _probe_redis), ("RabbitMQ", _probe_rabbitmq)):
        try:
            probe()
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"; the reason is shown
            problems[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return problems


def require(service: str) -> None:
    """Skip the calling test (fail it under CI=true / HYFUNC_REQUIRE_SERVICES=1) when `service` is absent."""
    problem = service_problems().get(service)
    if problem is None:
        return
    env, url = SERVICE_URLS[service]
    message = f"{service} not reachable at {url} (set {env}): {problem}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " - CI=true/HYFUNC_REQUIRE_SERVICES=1: service tests may not skip", pytrace=False)
    _missing_asked.add(service)
    pytest.skip(message)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _missing_asked:
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "not reachable at" in str(r.longrepr)]
    # Every service that is down, not only those the skipped tests reached first.
    where = ", ".join(f"{name} ({SERVICE_URLS[name][0]}={SERVICE_URLS[name][1]})" for name in sorted(service_problems()))
    terminalreporter.write_line(
        f"{len(skipped)} service tests skipped: start {where}, or point those variables at running ones "
        "(README.md, Tests); CI=true makes a missing service a failure")



# -- databases ---------------------------------------------------------------------------------


def create_database(prefix: str = "hyfunc_test") -> str:
    import psycopg

    require("PostgreSQL")

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str) -> None:
    import psycopg

    from hyfunc.store.db import dispose_engines

    dispose_engines()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated database for the session, with a test-only audit trigger that
    records every UPDATE of a job row (to prove exactly-once writes)."""
    import psycopg

    from hyfunc.store import migrate

    url = create_database()
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(AUDIT_SQL)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hyfunc.models.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    import redis

    require("Redis")
    db = 1 + uuid.uuid4().int % 15
    url = f"{REDIS_HOST}/{db}"
    yield url
    client = redis.Redis.from_url(url)
    client.close()


@pytest.fixture
def rabbitmq_url() -> str:
    require("RabbitMQ")
    return RABBIT_URL


@pytest.fixture(scope="module")
def queue_name(redis_url: str) -> Iterator[str]:
    import redis

    name = f"hyfunc-test-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"*{name}*"):
        client.delete(key)
    client.close()


def queue_length(redis_url: str, queue: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


def write_config(path: Path, **sections: dict[str, Any]) -> tuple[HyFuncConfig, Path]:
    path.write_text(yaml.safe_dump(sections))
    return load_config(path), path


# -- processes ----------------------------------------------------------------------------------


class WorkerProcess:
    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None, beat: bool = False):
        self.log_path = log_path
        # Workers sweep the store they use (worker/maintenance.py); the session's database is shared
        # by every module, each with its own queue, and a sweeper would send other modules' queued
        # jobs into its own queue. Tests of the sweep turn it on (with a database of their own).
        full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{Path(__file__).parent}", "HYFUNC_WORKER_RUNNER": RUNNER,
                    "HYFUNC_SWEEP_IN_WORKERS": "false", **(env or {})}
        for key in ("HYFUNC_DATABASE_URL", "HYFUNC_BROKER_URL", "HYFUNC_QUEUE", "HYFUNC_MODELS_DIR"):
            full_env.pop(key, None)  # the test's config file is the only source
        cmd = [sys.executable, "-m", "hyfunc.cli", "worker", "--config", str(config_path), "--loglevel", "info",
               "--name", f"test-{uuid.uuid4().hex[:6]}@%h"]
        if beat:
            cmd.append("--beat")
        self.log = open(log_path, "w")  # noqa: SIM115 - lives as long as the process
        # Own process group: a SIGKILL reaches the embedded beat process too.
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1,
             on_timeout: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{extra}")


def wait_finished(env: dict[str, Any], ids: list[str], timeout: float = 90, interval: float = 0.2) -> list[Any]:
    """The jobs ``ids`` once all are final, from ``env["sessions"]``, while ``env["worker"]`` (a
    WorkerProcess) stays alive; its log tail on failure."""
    from sqlalchemy import select

    from hyfunc.store.models import FINAL_STATUSES, Job

    def done() -> list[Job] | None:
        assert env["worker"].alive(), "worker exited:\n" + env["worker"].tail()
        with env["sessions"]() as s:
            rows = list(s.scalars(select(Job).where(Job.id.in_(ids))))
        return rows if len(rows) == len(ids) and all(r.status in FINAL_STATUSES for r in rows) else None

    return wait_for(done, timeout, f"{len(ids)} jobs to finish", interval=interval, on_timeout=env["worker"].tail)


def jsonl(items: list[Any]) -> str:
    return "\n".join(json.dumps(i) for i in items) + "\n"
