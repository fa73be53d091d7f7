"""Service throughput and per-job overhead at saturation: API → Redis → Celery → PostgreSQL.

The run: a fresh PostgreSQL database (migrated with Alembic), a private Redis queue, one
`hyfunc worker` (solo pool, models loaded once) and one `hyfunc api` as subprocesses. After a
warm-up batch, all N jobs are posted in one batch request, so the queue is full from the
start (saturation); we wait until every job is final and read the job rows.

- jobs/s: N / (last finished_at − first created_at);
- queue wait per job: the stored queue_wait_ms (created → claimed);
- per-job overhead: per batch, (last finished_at − first started_at) − the batch's model time
  (max total_ms: LML + retrieve + LMS prefill + decode), i.e. claim, request rebuild and the
  result transaction, divided over the batch's jobs;
- the cascade's own time: the same requests through `Cascade.run` in this process, in batches
  of the worker's flush size, after the service is stopped (no contention).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from hyfunc.bench.procs import free_port, stop_group
from hyfunc.bench.stats import mean, percentile, r
from hyfunc.bench.workload import BenchInput
from hyfunc.store.status import SUCCEEDED

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"


def _check_backends(pg_admin: str, redis_url: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(pg_admin, connect_timeout=3):
            pass
    except Exception as err:  # noqa: BLE001 - any failure means: skip with the reason
        return f"PostgreSQL at {pg_admin} unreachable ({type(err).__name__}: {err})"
    try:
        import redis

        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except Exception as err:  # noqa: BLE001
        return f"Redis at {redis_url} unreachable ({type(err).__name__}: {err})"
    return None


class _Proc:
    def __init__(self, cmd: list[str], log: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for key in ("HYFUNC_DATABASE_URL", "HYFUNC_BROKER_URL", "HYFUNC_QUEUE", "HYFUNC_MODELS_DIR", "HYFUNC_WORKER_RUNNER"):
            env.pop(key, None)  # the bench's config file is the only source
        self.log_path = log
        self.log = open(log, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _wait(predicate, timeout: float, what: str, procs: list[_Proc]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{what}: a service process exited\n{p.tail()}")
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n" + "\n".join(p.tail() for p in procs))


def bench_service(
    models_dir: Path,
    items: list[BenchInput],
    *,
    jobs: int = 64,
    flush_every: int = 32,
    rows: int = 8,
    device: str = "cpu",
    dtype: str = "float32",
    pg_admin: str | None = None,
    redis_url: str | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """The service run twice in one bench: static batches of `rows` decoder rows per worker batch
    of `flush_every` jobs (cascade.continuous false), then continuous batching (rows refilled as
    jobs finish). The continuous run's full report is returned, with the static run's jobs/s and
    the ratio beside it."""
    pg_admin = pg_admin or os.environ.get("HYFUNC_BENCH_PG", DEFAULT_PG_ADMIN)
    redis_url = redis_url or os.environ.get("HYFUNC_BENCH_REDIS", DEFAULT_REDIS)
    problem = _check_backends(pg_admin, redis_url)
    if problem:
        return {"skipped": problem}
    runs = {}
    # static: each worker batch decodes in static batches of `rows`; within a batch: rows refilled
    # as jobs finish, but a batch still ends with its longest job; fed: the worker's feeder keeps
    # one decoder session running across batches, and a thread pool lets the next batch be
    # claimed (and the last written) while it decodes.
    plans = (
        ("static", {"batch_size": rows, "continuous": False}, False, "solo"),
        ("continuous within a batch", {"batch_size": rows, "continuous": True}, False, "solo"),
        ("continuous", {"batch_size": rows, "continuous": True}, True, "threads"),
    )
    for label, cascade_keys, feed, pool in plans:
        runs[label] = _service_run(models_dir, items, jobs=jobs, flush_every=flush_every, device=device, dtype=dtype,
                                   pg_admin=pg_admin, redis_url=redis_url, timeout=timeout, cascade=cascade_keys,
                                   feed=feed, pool=pool)
    out = dict(runs["continuous"])
    static_rate, cont_rate = runs["static"]["service_jobs_per_s"], runs["continuous"]["service_jobs_per_s"]
    within = runs["continuous within a batch"]["service_jobs_per_s"]
    out["decoder_rows"] = rows
    out["continuous_worker"] = f"feeder (worker.continuous_feed), --pool threads --concurrency {FEED_THREADS}"
    out["static_service_jobs_per_s"] = static_rate
    out["static_service_ms_per_job"] = runs["static"]["service_ms_per_job"]
    out["within_batch_service_jobs_per_s"] = within
    out["within_batch_over_static"] = r(within / static_rate, 3) if static_rate and within else None
    out["continuous_over_static"] = r(cont_rate / static_rate, 3) if static_rate and cont_rate else None
    out["target_continuous_over_static"] = 1.3
    return out


FEED_THREADS = 2  # worker threads (message batches in flight) for the fed run


def _service_run(
    models_dir: Path,
    items: list[BenchInput],
    *,
    jobs: int,
    flush_every: int,
    device: str,
    dtype: str,
    pg_admin: str,
    redis_url: str,
    timeout: float,
    cascade: dict[str, Any],
    feed: bool = False,
    pool: str = "solo",
) -> dict[str, Any]:
    import httpx
    import psycopg
    import yaml

    from hyfunc.store import migrate
    from hyfunc.store.db import dispose_engines, session_factory, transaction
    from hyfunc.store.keys import create_key

    db_name = f"hyfunc_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    db_url = pg_admin.rsplit("/", 1)[0] + "/" + db_name
    queue = f"hyfunc-bench-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="hyfunc-bench-service-"))
    procs: list[_Proc] = []
    try:
        migrate.upgrade(db_url)
        with transaction(session_factory(db_url)) as session:
            key, _ = create_key(session, "bench")
        port = free_port()
        config = {
            "models": {"dir": str(models_dir), "device": device, "dtype": dtype},
            "cascade": cascade,
            "store": {"url": db_url, "record_runs": False},
            "worker": {"broker_url": redis_url, "queue": queue, "flush_every": flush_every, "flush_interval": 0.05,
                       "continuous_feed": feed},
            "limits": {"max_batch_size": max(1000, jobs)},
            "api": {"host": "127.0.0.1", "port": port},
        }
        config_path = work / "bench.yaml"
        config_path.write_text(yaml.safe_dump(config))
        hyfunc = [sys.executable, "-m", "hyfunc.cli"]
        procs.append(_Proc(hyfunc + ["worker", "--config", str(config_path), "--loglevel", "warning",
                                     "--pool", pool, "--concurrency", str(FEED_THREADS if pool == "threads" else 1),
                                     "--name", f"bench-{uuid.uuid4().hex[:6]}@%h"], work / "worker.log"))
        procs.append(_Proc(hyfunc + ["api", "--config", str(config_path), "--loglevel", "warning"], work / "api.log"))
        base = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60)

        def api_up() -> bool:
            try:
                return client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        _wait(api_up, 120, "the API", procs)
        payload = [{"id": f"{i}", "query": it.query, "tools": [t.to_json() for t in it.tools]}
                   for i, it in enumerate(items[i % len(items)] for i in range(jobs))]

        def post(batch: list[dict[str, Any]]) -> list[str]:
            resp = client.post("/v1/jobs/batch", json=batch)
            resp.raise_for_status()
            body = resp.json()
            return [j if isinstance(j, str) else j["id"] for j in body.get("ids", body.get("jobs", []))]

        def finished(ids: list[str]) -> bool:
            with psycopg.connect(db_url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status IN ('succeeded','failed','cancelled')",
                    (ids,),
                ).fetchone()
            return bool(row and row[0] == len(ids))

        warm = post(payload[:flush_every])
        _wait(lambda: finished(warm), timeout, "the warm-up jobs", procs)
        t0 = time.perf_counter()
        ids = post(payload)
        post_ms = (time.perf_counter() - t0) * 1000
        _wait(lambda: finished(ids), timeout, f"{jobs} jobs", procs)
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT batch_id, batch_size, created_at, started_at, finished_at, queue_wait_ms, total_ms, status "
                "FROM jobs WHERE id = ANY(%s::uuid[])", (ids,),
            ).fetchall()
    finally:
        for p in procs:
            p.stop()
        dispose_engines()
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        try:
            import redis

            client_r = redis.Redis.from_url(redis_url)
            for k in client_r.scan_iter(f"*{queue}*"):
                client_r.delete(k)
        except Exception:  # noqa: BLE001 - cleanup only
            pass

    import shutil

    shutil.rmtree(work, ignore_errors=True)  # logs are kept only when the run failed
    created = min(row[2] for row in rows)
    last = max(row[4] for row in rows)
    wall_s = (last - created).total_seconds()
    batches: dict[Any, list[Any]] = {}
    for row in rows:
        batches.setdefault(row[0], []).append(row)
    overhead_ms = 0.0
    model_ms = 0.0
    for batch in batches.values():
        span = (max(x[4] for x in batch) - min(x[3] for x in batch)).total_seconds() * 1000
        model = max(x[6] or 0.0 for x in batch)
        model_ms += model
        overhead_ms += max(0.0, span - model)
    queue_waits = [row[5] for row in rows if row[5] is not None]

    # The cascade's own time for the same jobs, same batch size, no service around it.
    from hyfunc.bench.runs import load_cascade, run_cascade_free

    in_process = load_cascade(models_dir, device, dtype)
    for key, value in cascade.items():
        setattr(in_process.config, key, value)
    same = [items[i % len(items)] for i in range(jobs)]
    run_cascade_free(in_process, same[:flush_every])
    cascade_ms = sum(run_cascade_free(in_process, same[s : s + flush_every])[0] for s in range(0, jobs, flush_every))
    service_per_job = wall_s * 1000 / jobs
    cascade_per_job = cascade_ms / jobs
    return {
        "jobs": jobs,
        "flush_every": flush_every,
        "batches": len(batches),
        "mean_batch_size": r(mean([float(len(b)) for b in batches.values()])),
        "succeeded": sum(1 for row in rows if row[7] == SUCCEEDED),
        "post_ms": r(post_ms),
        "service_jobs_per_s": r(jobs / wall_s, 3) if wall_s > 0 else None,
        "cascade_jobs_per_s": r(jobs / (cascade_ms / 1000), 3) if cascade_ms > 0 else None,
        "service_ms_per_job": r(service_per_job),
        "cascade_ms_per_job": r(cascade_per_job),
        "overhead_fraction": r((service_per_job - cascade_per_job) / cascade_per_job, 4) if cascade_per_job else None,
        "worker_overhead_ms_per_job": r(overhead_ms / jobs, 3),
        "worker_overhead_fraction_of_model": r(overhead_ms / model_ms, 4) if model_ms else None,
        "queue_wait_p50_ms": r(percentile(queue_waits, 50)),
        "queue_wait_p95_ms": r(percentile(queue_waits, 95)),
        "target_overhead_fraction": 0.10,
        "models": str(models_dir),
        "note": "worker_overhead = per batch (last finished - first started) - model time: claim, read, result "
        "transaction; overhead_fraction = service wall per job vs the cascade's own per job",
    }


if __name__ == "__main__":  # python -m hyfunc.bench.service MODELS_DIR [JOBS]
    from hyfunc.bench.workload import demo_inputs

    print(json.dumps(bench_service(Path(sys.argv[1]), demo_inputs(32), jobs=int(sys.argv[2]) if len(sys.argv) > 2 else 32), indent=2))
