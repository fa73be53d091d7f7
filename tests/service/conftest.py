"""Fixtures for the service tests: a fresh PostgreSQL database per session, a private
Redis db + queue per test module, tiny models, and real worker subprocesses."""

from __future__ import annotations

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


# -- databases ---------------------------------------------------------------------------------


def create_database(prefix: str = "hyfunc_test") -> str:
    import psycopg

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

    db = 1 + uuid.uuid4().int % 15
    url = f"{REDIS_HOST}/{db}"
    yield url
    client = redis.Redis.from_url(url)
    client.close()


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
        full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{Path(__file__).parent}", "HYFUNC_WORKER_RUNNER": RUNNER, **(env or {})}
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


def jsonl(items: list[Any]) -> str:
    return "\n".join(json.dumps(i) for i in items) + "\n"
