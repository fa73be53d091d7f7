"""The reliability suite: 10,000 jobs over HTTP through worker kills, a broker outage and a
database outage, then SQL proves every job reached exactly one terminal state.

The stack is real and private to the run: a PostgreSQL server of its own (initdb into a
temporary directory, its own port), a Redis server of its own (no persistence, its own
port), `hyfunc api` and `hyfunc worker --beat` as subprocesses serving the demo models.
The worker reaches PostgreSQL through a TCP proxy the harness can cut, so "the database
is unreachable to the worker" while the API still stores jobs.

While jobs are submitted (single POSTs and batches of 50, paced), the harness
- SIGKILLs the worker (its main process only: the embedded beat must die with it) three
  times, restarting it at once;
- stops Redis for 20 s (everything in it is lost: no persistence) and starts it again;
- cuts the worker's PostgreSQL connections for 20 s.
A monitor polls /healthz every second; every API answer is recorded per phase. At the end
a test-only audit trigger (every UPDATE of a job row) proves exactly-once in SQL.

Issue 17's failure modes, by option:
- `--no-beat`: workers run without `--beat`; recovery rests on their own sweeper threads (each
  kill is then a kill of "the beat process" too);
- `--pathological N`: at `pathological_at`, one batch of 16 jobs of which N are pathological among
  normal ones; the report compares the normal ones' end-to-end time with the run's other jobs and
  shows how the pathological ones ended. A pathological job (``runaway_request``) is a demo query
  with its own tool made to run away: 256 required properties (within `limits.max_properties`)
  and its description repeated so the retriever still finds it relevant. The LMS must write a
  value for every property, so the job decodes until `cascade.max_call_tokens` (1,024 generated
  tokens) fails it — or `worker.job_deadline_seconds` does, whichever comes first;
- `--memory-bomb`: at `bomb_at`, a tool with an enum of 10,000 values is submitted over HTTP
  (expected: 422 naming the field) and stored straight into the database and enqueued (what a job
  stored before the limits existed looks like: expected to fail alone, naming the field); the
  worker's resident memory is sampled every 0.1 s around it (peak vs idle).

`--only pathological` runs that scenario alone, with no other fault, so it can be measured: normal
jobs arrive one per POST at `--rate` (low enough for the worker to keep up), a baseline phase of
`--baseline` seconds, then the batch of N pathological + 16 − N normal jobs, and normal jobs keep
arriving for `--after` seconds more. The report gives the normal jobs' end-to-end p50/p95 before
the batch, while its pathological jobs were still running, and after, and the normal ones inside
the batch (`issue17.pathological_only`).

Run: `python -m hyfunc.chaos.reliability`; it takes several
minutes. Writes docs/reliability/latest.json and latest.md (`--out DIR`, `--name NAME` for
NAME.json and NAME.md).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hyfunc.bench.procs import free_port, stop_group
from hyfunc.bench.stats import percentile
from hyfunc.chaos.audit import AUDIT_SQL
from hyfunc.store.status import FINAL_STATUSES

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Options:
    jobs: int = 10_000
    singles: int = 1_000  # submitted one per POST /v1/jobs; the rest in batches
    batch: int = 50
    rate: float = 35.0  # jobs/s offered
    models: Path = ROOT / "models" / "demo"
    out: Path = ROOT / "docs" / "reliability"
    redis_port: int = 6390
    pg_port: int = 5499
    outage_s: float = 20.0
    # Fault times, seconds after the first submission.
    kills_at: tuple[float, ...] = (30.0, 110.0, 190.0)
    redis_at: float = 60.0
    pg_at: float = 140.0
    timeout_s: float = 1800.0
    runner: str = "demo"  # demo: the shipped demo models; fast: FastRunner (no model)
    beat: bool = True  # False: no --beat process anywhere (recovery by the workers' sweeper threads)
    pathological: int = 0  # pathological jobs in one batch of 16 (the rest normal), at pathological_at
    pathological_at: float = 45.0
    memory_bomb: bool = False  # the 10,000-value enum, over HTTP and straight into the store, at bomb_at
    bomb_at: float = 90.0
    job_deadline_s: float = 30.0
    only: str | None = None  # "pathological": that scenario alone (no kills, no outages), singles at `rate`
    after_s: float = 90.0  # --only pathological: normal jobs keep arriving this long after the batch
    pool: str | None = None  # the worker's --pool (None: its default, worker.pool)
    concurrency: int | None = None  # the worker's --concurrency (None: its default)
    command: str = "python -m hyfunc.chaos.reliability"  # as run, for the report


def _log(msg: str) -> None:
    print(f"[reliability {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not found:
        found = [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"PostgreSQL's {name} not found (looked in /usr/lib/postgresql/*/bin and PATH)")
    return found[-1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PrivatePostgres:
    """A PostgreSQL server of the run's own: never the shared one."""

    def __init__(self, port: int):
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="hyfunc-rel-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/hyfunc"

    def start(self) -> None:
        if not self.data.exists():
            subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                                         "-E", "UTF8"]), check=True, capture_output=True)
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"),
                                     "-o", opts, "-w", "start"]), check=True, capture_output=True)

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE hyfunc")

    def stop(self) -> None:
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # no persistence either way: everything in it is gone
            self.proc.wait(timeout=10)
        self.proc = None

    def depth(self, queue: str) -> int | None:
        import redis

        try:
            return int(redis.Redis.from_url(self.url, socket_timeout=1).llen(queue))
        except Exception:  # noqa: BLE001 - down
            return None


class Service:
    """`hyfunc api` or `hyfunc worker` as a subprocess in its own session."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.log = log
        out = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(["nice", "-n", "5", sys.executable, "-m", "hyfunc.cli", *args], cwd=ROOT,
                                     env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        # `nice` execs python, so the pid is the Python process itself.
        return self.proc.pid

    def children(self) -> list[int]:
        try:
            return [int(p) for p in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        stop_group(self.proc)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class Fault:
    kind: str
    start: float  # seconds since the first submission
    end: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Run:
    def __init__(self, opts: Options):
        self.opts = opts
        self.work = Path(tempfile.mkdtemp(prefix="hyfunc-rel-"))
        self.t0 = 0.0
        self.faults: list[Fault] = []
        self.answers: list[tuple[float, str, int, str]] = []  # (t, kind, http status, broker/detail)
        self.health: list[tuple[float, int, dict[str, Any]]] = []
        self.depths: list[tuple[float, int | None]] = []
        self.accepted: dict[str, str] = {}  # client id -> job id
        self.lock = threading.Lock()
        self.stop_monitor = threading.Event()
        self.submitted_all = threading.Event()
        self.extra: dict[str, list[str]] = {}  # job ids of the issue-17 scenarios, by kind
        self.rss: list[tuple[float, int]] = []  # (t, worker VmRSS kB) around the memory bomb

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        from hyfunc.chaos.tcp_proxy import TcpProxy
        from hyfunc.store import migrate
        from hyfunc.store.db import dispose_engines, session_factory, transaction
        from hyfunc.store.keys import create_key

        o = self.opts
        self.pg = PrivatePostgres(o.pg_port)
        self.pg.start()
        self.pg.create_database()
        migrate.upgrade(self.pg.url)
        import psycopg

        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            conn.execute(AUDIT_SQL)
        with transaction(session_factory(self.pg.url)) as session:
            self.key, _ = create_key(session, "reliability")
        dispose_engines()
        self.redis = PrivateRedis(o.redis_port, self.work / "redis.log")
        self.redis.start()
        self.proxy = TcpProxy(("127.0.0.1", o.pg_port))
        self.proxy.start()
        self.queue = "hyfunc-rel"
        self.port = free_port()
        base = {
            "models": {"dir": str(o.models)},
            "worker": {"broker_url": self.redis.url, "queue": self.queue, "flush_every": 16, "flush_interval": 0.2,
                       "lease_seconds": 300, "sweep_interval": 2.0, "heartbeat_interval": 1.0,
                       "heartbeat_misses": 3, "requeue_grace_seconds": 10.0, "batch_deadline_seconds": 60.0,
                       "job_deadline_seconds": o.job_deadline_s, "db_retry_seconds": 120.0},
            "limits": {"max_batch_size": 1000},
            "api": {"host": "127.0.0.1", "port": self.port},
        }
        import yaml

        self.api_config = self.work / "api.yaml"
        self.api_config.write_text(yaml.safe_dump({**base, "store": {"url": self.pg.url, "record_runs": False}}))
        via_proxy = f"postgresql://postgres@127.0.0.1:{self.proxy.port}/hyfunc"
        self.worker_config = self.work / "worker.yaml"
        self.worker_config.write_text(yaml.safe_dump({**base, "store": {"url": via_proxy, "record_runs": False}}))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HYFUNC_")}
        self.env["PYTHONPATH"] = str(ROOT)
        if o.runner == "fast":
            self.env["HYFUNC_WORKER_RUNNER"] = "hyfunc.chaos.reliability:fast_runner"
        self.api = Service(["api", "--config", str(self.api_config), "--loglevel", "warning"], self.work / "api.log",
                           self.env)
        self.workers: list[Service] = []
        self.start_worker()

    def start_worker(self) -> Service:
        beat = ["--beat"] if self.opts.beat else []
        pool = ["--pool", self.opts.pool] if self.opts.pool else []
        pool += ["--concurrency", str(self.opts.concurrency)] if self.opts.concurrency else []
        w = Service(["worker", "--config", str(self.worker_config), *beat, *pool, "--loglevel", "info"],
                    self.work / f"worker-{len(self.workers)}.log", self.env)
        self.workers.append(w)
        return w

    def worker_name(self, w: Service) -> str:
        return f"{socket.gethostname()}:{w.pid}"

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.pg.url) as conn:
            return conn.execute(query, params).fetchall()

    def wait_healthy(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the stack did not become healthy in {timeout:.0f}s; logs in {self.work}")

    # -- load and monitor --------------------------------------------------------------------

    def workload(self) -> list[dict[str, Any]]:
        from hyfunc.bench.workload import demo_inputs

        inputs = demo_inputs(400, seed=7)
        return [{"id": f"rel-{n}", "query": inputs[n % len(inputs)].query,
                 "tools": [t.to_json() for t in inputs[n % len(inputs)].tools]} for n in range(self.opts.jobs)]

    def post(self, client: Any, kind: str, items: list[dict[str, Any]]) -> None:
        import httpx

        while True:
            try:
                if kind == "single":
                    r = client.post("/v1/jobs", json=items[0])
                else:
                    r = client.post("/v1/jobs/batch", json=items)
            except httpx.HTTPError as err:
                self.answers.append((self.now(), kind, 0, type(err).__name__))
                time.sleep(0.5)
                continue
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            note = body.get("broker", "") if r.status_code == 202 else str(body.get("detail", r.text[:80]))
            self.answers.append((self.now(), kind, r.status_code, note))
            if r.status_code == 202:
                ids = [body["id"]] if kind == "single" else body["ids"]
                with self.lock:
                    for item, job_id in zip(items, ids, strict=True):
                        self.accepted[item["id"]] = job_id
                return
            if r.status_code < 500:
                raise RuntimeError(f"the API refused a {kind} submission: {r.status_code} {r.text[:200]}")
            time.sleep(0.5)  # a 5xx (e.g. 503 store unavailable): the client retries

    def submit(self) -> None:
        import httpx

        o = self.opts
        items = self.workload()
        client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={"X-API-Key": self.key}, timeout=60)
        plan: list[tuple[str, list[dict[str, Any]]]] = []
        singles, rest = items[: o.singles], items[o.singles:]
        batches = [rest[i: i + o.batch] for i in range(0, len(rest), o.batch)]
        per_batch = max(1, len(singles) // max(1, len(batches)))
        si = 0
        for b in batches:
            plan.append(("batch", b))
            for _ in range(per_batch):
                if si < len(singles):
                    plan.append(("single", [singles[si]]))
                    si += 1
        plan += [("single", [s]) for s in singles[si:]]
        sent = 0
        for kind, chunk in plan:
            due = sent / o.rate
            if due > self.now():
                time.sleep(due - self.now())
            self.post(client, kind, chunk)
            sent += len(chunk)
        self.submitted_all.set()
        _log(f"all {sent} jobs accepted at t={self.now():.0f}s")

    def monitor(self) -> None:
        import httpx

        while not self.stop_monitor.is_set():
            t = self.now()
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5)
                body = r.json()
                self.health.append((t, r.status_code, {"status": body.get("status"), "database": body.get("database"),
                                                       "broker": body.get("broker"),
                                                       "workers_alive": (body.get("workers") or {}).get("alive")}))
            except Exception as err:  # noqa: BLE001 - recorded as what a client saw
                self.health.append((t, 0, {"error": type(err).__name__}))
            self.depths.append((t, self.redis.depth(self.queue)))
            self.stop_monitor.wait(1.0)

    # -- faults --------------------------------------------------------------------------------

    def wait_until(self, t: float) -> None:
        while self.now() < t:
            time.sleep(0.1)

    def running_of(self, name: str) -> list[str]:
        return [str(r[0]) for r in self.sql("SELECT id FROM jobs WHERE status = 'running' AND worker = %s", (name,))]

    def kill_worker(self) -> None:
        w = self.workers[-1]
        name = self.worker_name(w)
        beat = w.children()
        held = self.running_of(name)
        fault = Fault("worker SIGKILL", self.now(), details={"worker": name, "running_jobs": len(held)})
        os.kill(w.pid, signal.SIGKILL)
        w.proc.wait(timeout=10)
        fault.end = self.now()
        time.sleep(3)
        fault.details["beat_children"] = beat
        fault.details["beat_survived"] = [p for p in beat if _alive(p)]
        for p in fault.details["beat_survived"]:
            os.kill(p, signal.SIGKILL)
        fault.details["held_ids"] = held
        self.faults.append(fault)
        _log(f"killed {name} holding {len(held)} running jobs; beat survived: {fault.details['beat_survived']}")
        fresh = self.start_worker()
        # The replacement is up when its first heartbeat lands (imports and models loaded).
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.sql("SELECT 1 FROM workers WHERE name = %s", (self.worker_name(fresh),)):
                fault.details["replacement_ready_s"] = round(self.now() - fault.start, 1)
                break
            time.sleep(0.2)

    def redis_outage(self) -> None:
        fault = Fault("Redis stopped (no persistence)", self.now(),
                      details={"broker_depth_before": self.redis.depth(self.queue)})
        queued_at_down = {str(r[0]) for r in self.sql("SELECT id FROM jobs WHERE status='queued'")}
        self.redis.stop()
        time.sleep(self.opts.outage_s)
        self.redis.start()
        fault.end = self.now()
        # Affected: jobs whose message died with Redis (queued before, still queued now) and
        # jobs stored while it was down (never sent).
        rows = self.sql("SELECT id, enqueued_at IS NULL FROM jobs WHERE status='queued'")
        lost = [str(i) for i, unsent in rows if str(i) in queued_at_down or unsent]
        fault.details["queued_ids_at_return"] = lost
        fault.details["unsent_at_return"] = sum(1 for _, unsent in rows if unsent)
        self.faults.append(fault)
        _log(f"Redis back after {fault.end - fault.start:.0f}s; {len(fault.details['queued_ids_at_return'])} queued")

    def pg_outage(self) -> None:
        fault = Fault("PostgreSQL unreachable to the worker", self.now(),
                      details={"broker_depth_before": self.redis.depth(self.queue)})
        self.proxy.stop()
        time.sleep(self.opts.outage_s)
        fault.details["broker_depth_at_end"] = self.redis.depth(self.queue)
        self.proxy.start()
        fault.end = self.now()
        fault.details["queued_ids_at_return"] = [str(r[0]) for r in self.sql("SELECT id FROM jobs WHERE status='queued'")]
        self.faults.append(fault)
        _log(f"PostgreSQL reachable again after {fault.end - fault.start:.0f}s")

    def pathological_batch(self) -> None:
        """One batch of 16: ``pathological`` runaway jobs (``runaway_request``: each its own tool, so no
        two share a prompt prefix the prefix cache could reuse), the rest normal."""
        import httpx

        normal = self.workload()[:16]
        items = runaway_requests(self.opts.pathological)
        items += [{**item, "id": f"pnorm-{n}"} for n, item in enumerate(normal[: 16 - len(items)])]
        fault = Fault(f"{self.opts.pathological} pathological jobs in a batch of 16", self.now())
        client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={"X-API-Key": self.key}, timeout=60)
        self.post(client, "batch", items)
        fault.end = self.now()
        self.extra["pathological"] = [self.accepted[i["id"]] for i in items if i["id"].startswith("path-")]
        self.extra["normal_beside"] = [self.accepted[i["id"]] for i in items if i["id"].startswith("pnorm-")]
        self.faults.append(fault)
        _log(f"submitted {self.opts.pathological} pathological jobs among {16 - self.opts.pathological} normal")

    def _worker_rss(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.workers[-1].pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return None

    def memory_bomb(self) -> None:
        """The audit's request: an enum of 10,000 values. Over HTTP it must be a 422 naming the field;
        stored straight into the database (around the API) the worker must fail it alone."""
        import httpx

        from hyfunc.store.db import session_factory, transaction
        from hyfunc.store.jobs import NewJob, create_jobs
        from hyfunc.store.keys import get_or_create_tenant
        from producer.broker import create_celery, enqueue

        bomb = {"type": "function", "function": {"name": "pick", "description": "Pick a value", "parameters": {
            "type": "object", "required": ["value"],
            "properties": {"value": {"type": "string", "enum": [f"v{i:05d}" for i in range(10_000)]}}}}}
        fault = Fault("memory bomb (enum of 10,000 values)", self.now())
        idle = [self._worker_rss() for _ in range(5) if not time.sleep(0.2)]
        r = httpx.post(f"http://127.0.0.1:{self.port}/v1/jobs", headers={"X-API-Key": self.key}, timeout=60,
                       json={"id": "bomb-http", "query": "pick v00042", "tools": [bomb]})
        fault.details["http_status"] = r.status_code
        fault.details["http_detail"] = r.json().get("detail") if r.status_code != 202 else None
        if r.status_code == 202:
            self.accepted["bomb-http"] = r.json()["id"]
        with transaction(session_factory(self.pg.url)) as session:
            tenant = get_or_create_tenant(session, "reliability")
            job = create_jobs(session, tenant.id, [NewJob(query="pick v00042", tools=[bomb], client_id="bomb-direct")])
            job_id = str(job[0].id)
        self.accepted["bomb-direct"] = job_id
        from hyfunc.config import load_config

        enqueue(create_celery(load_config(self.worker_config)), [job_id], self.queue)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rss = self._worker_rss()
            if rss is not None:
                self.rss.append((self.now(), rss))
            if self.sql("SELECT 1 FROM jobs WHERE id = %s AND status IN ('succeeded','failed','cancelled')",
                        (job_id,)):
                break
            time.sleep(0.1)
        for _ in range(20):  # and a little after
            rss = self._worker_rss()
            if rss is not None:
                self.rss.append((self.now(), rss))
            time.sleep(0.1)
        row = self.sql("SELECT status, error FROM jobs WHERE id = %s", (job_id,))[0]
        fault.end = self.now()
        idle_kb = min(v for v in idle if v) if any(idle) else None
        peak_kb = max((v for _, v in self.rss), default=None)
        fault.details.update({"direct_status": row[0], "direct_error": row[1], "worker_rss_idle_mb":
                              round(idle_kb / 1024, 1) if idle_kb else None,
                              "worker_rss_peak_mb": round(peak_kb / 1024, 1) if peak_kb else None,
                              "peak_over_idle": round(peak_kb / idle_kb, 2) if idle_kb and peak_kb else None})
        self.extra["bomb"] = [job_id] + ([self.accepted["bomb-http"]] if "bomb-http" in self.accepted else [])
        self.faults.append(fault)
        _log(f"memory bomb: HTTP {r.status_code}; direct job {row[0]} ({row[1]}); worker RSS "
             f"{fault.details['worker_rss_idle_mb']} -> peak {fault.details['worker_rss_peak_mb']} MB")

    def inject(self) -> None:
        o = self.opts
        if o.only == "pathological":
            self.wait_until(o.pathological_at)
            self.pathological_batch()
            return
        schedule = sorted([(t, self.kill_worker) for t in o.kills_at] + [(o.redis_at, self.redis_outage),
                                                                          (o.pg_at, self.pg_outage)]
                          + ([(o.pathological_at, self.pathological_batch)] if o.pathological else [])
                          + ([(o.bomb_at, self.memory_bomb)] if o.memory_bomb else []),
                          key=lambda x: x[0])
        for at, action in schedule:
            self.wait_until(at)
            action()

    # -- the run -------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        o = self.opts
        _log(f"work dir {self.work}")
        self.setup()
        self.wait_healthy()
        _log("stack healthy; submitting")
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.monitor, daemon=True),
                   threading.Thread(target=self.submit, daemon=True),
                   threading.Thread(target=self.inject, daemon=True)]
        for t in threads:
            t.start()
        threads[2].join()
        threads[1].join()
        deadline = time.monotonic() + o.timeout_s
        while time.monotonic() < deadline:
            left = self.sql("SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded','failed','cancelled')")[0][0]
            if left == 0:
                break
            time.sleep(2)
        drained = self.now()
        self.stop_monitor.set()
        threads[0].join(timeout=10)
        _log(f"drained at t={drained:.0f}s")
        return self.report(drained)

    def close(self) -> None:
        for w in getattr(self, "workers", []):
            w.stop()
        if hasattr(self, "api"):
            self.api.stop()
        if hasattr(self, "proxy"):
            self.proxy.stop()
        if hasattr(self, "redis"):
            self.redis.stop()
        if hasattr(self, "pg"):
            self.pg.remove()

    # -- the report ----------------------------------------------------------------------------

    def _window(self, start: float, end: float) -> dict[str, Any]:
        answers = Counter(f"{kind} {code}{' ' + note if note else ''}" for t, kind, code, note in self.answers
                          if start <= t <= end)
        health = Counter(f"{code} {json.dumps(body, sort_keys=True)}" for t, code, body in self.health
                         if start <= t <= end)
        return {"api_answers": dict(answers), "healthz": dict(health)}

    def _started_after(self, ids: list[str], t_abs: float) -> dict[str, Any]:
        """When the given jobs (re)started after t_abs (run seconds), from their started_at."""
        if not ids:
            return {"jobs": 0}
        rows = self.sql("SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(started_at)), "
                        "count(*) FILTER (WHERE status IN ('succeeded','failed','cancelled')) "
                        "FROM jobs WHERE id = ANY(%s::uuid[])", (ids,))
        first, last, final = rows[0]
        to_run = lambda ts: None if ts is None else round(float(ts) - self.epoch0 - t_abs, 1)  # noqa: E731
        return {"jobs": len(ids), "first_started_s": to_run(first), "all_started_s": to_run(last), "final": final}

    def _e2e(self, ids: list[str]) -> list[float]:
        """End-to-end seconds (created to finished) of finished jobs."""
        if not ids:
            return []
        rows = self.sql("SELECT extract(epoch FROM finished_at - created_at) FROM jobs WHERE id = ANY(%s::uuid[]) "
                        "AND finished_at IS NOT NULL", (ids,))
        return [float(r[0]) for r in rows]

    def _issue17(self) -> dict[str, Any]:
        out: dict[str, Any] = {"beat_process": self.opts.beat}
        if "pathological" in self.extra:
            special = set(self.extra["pathological"]) | set(self.extra["normal_beside"]) | set(self.extra.get("bomb", []))
            others = [i for i in self.accepted.values() if i not in special]
            out["pathological"] = {
                "normal_beside_e2e_s": _percentiles(self._e2e(self.extra["normal_beside"])),
                "other_jobs_e2e_s": _percentiles(self._e2e(others)),
                "pathological_e2e_s": _percentiles(self._e2e(self.extra["pathological"])),
                "pathological_outcomes": dict(Counter(
                    f"{st}: {(err or '')[:90]}" for st, err in self.sql(
                        "SELECT status, error FROM jobs WHERE id = ANY(%s::uuid[])", (self.extra["pathological"],)))),
            }
            if self.opts.only == "pathological":
                out["pathological_only"] = self._pathological_only()
        return out

    def _pathological_only(self) -> dict[str, Any]:
        """Normal jobs' end-to-end time before the pathological batch, while its pathological jobs ran,
        and after; the normal ones inside it; how the pathological ones ended and what they cost."""
        batch = next(f for f in self.faults if "pathological" in f.kind)
        path = self.extra["pathological"]
        last = self.sql("SELECT extract(epoch FROM max(finished_at)) FROM jobs WHERE id = ANY(%s::uuid[])", (path,))[0][0]
        until = float(last) - self.epoch0 if last is not None else batch.start
        special = set(path) | set(self.extra["normal_beside"])
        rows = self.sql("SELECT id::text, extract(epoch FROM created_at), extract(epoch FROM finished_at - created_at), "
                        "status FROM jobs WHERE finished_at IS NOT NULL")
        phase: dict[str, list[float]] = {"before": [], "during": [], "after": []}
        statuses: dict[str, Counter[str]] = {k: Counter() for k in phase}
        for job_id, created, e2e, status in rows:
            if job_id in special:
                continue
            t = float(created) - self.epoch0
            key = "before" if t < batch.start else "during" if t <= until else "after"
            phase[key].append(float(e2e))
            statuses[key][status] += 1
        beside = self._e2e(self.extra["normal_beside"])
        costs = self.sql("SELECT status, left(coalesce(error, ''), 90), tokens_generated, tokens_lms_prompt, total_ms, "
                         "extract(epoch FROM finished_at - started_at), extract(epoch FROM finished_at - created_at) "
                         "FROM jobs WHERE id = ANY(%s::uuid[]) ORDER BY finished_at", (path,))
        base = _percentiles(phase["before"])
        worst = max((p for p in (_percentiles(phase["during"])["p95"], _percentiles(beside)["p95"]) if p is not None),
                    default=None)
        return {
            "batch_submitted_s": round(batch.start, 1),
            "pathological_running_until_s": round(until, 1),
            "normal_e2e_s": {k: {**_percentiles(v), "jobs": len(v), "status": dict(statuses[k])} for k, v in phase.items()},
            "normal_in_batch_e2e_s": {**_percentiles(beside), "jobs": len(beside)},
            "pathological": [{"status": st, "error": err, "tokens_generated": gen, "lms_prompt_tokens": prompt,
                              "cascade_total_ms": _r(total), "run_s": _r(run), "e2e_s": _r(e2e)}
                             for st, err, gen, prompt, total, run, e2e in costs],
            "target": {"normal_p95_s": base["p95"], "worst_p95_beside_or_during_s": worst,
                       "excess_s": None if worst is None or base["p95"] is None else round(worst - base["p95"], 1),
                       "limit_excess_s": 10.0,
                       "met": None if worst is None or base["p95"] is None else worst - base["p95"] <= 10.0},
        }

    def report(self, drained: float) -> dict[str, Any]:
        o = self.opts
        # Wall clock of t0, to turn database timestamps into run seconds.
        self.epoch0 = time.time() - self.now()
        q = self.sql
        totals = q("SELECT count(*), count(DISTINCT client_id) FROM jobs")[0]
        by_status = dict(q("SELECT status, count(*) FROM jobs GROUP BY status"))
        twice = q("SELECT count(*) FROM (SELECT job_id FROM job_audit WHERE new_status IN ('succeeded','failed',"
                  "'cancelled') AND old_status NOT IN ('succeeded','failed','cancelled') GROUP BY job_id "
                  "HAVING count(*) > 1) t")[0][0]
        once = q("SELECT count(DISTINCT job_id) FROM job_audit WHERE new_status IN ('succeeded','failed','cancelled') "
                 "AND old_status NOT IN ('succeeded','failed','cancelled')")[0][0]
        rewritten = q("SELECT count(*) FROM job_audit WHERE old_status IN ('succeeded','failed','cancelled')")[0][0]
        accepted_ids = list(self.accepted.values())
        found = q("SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status IN ('succeeded','failed',"
                  "'cancelled')", (accepted_ids,))[0][0]
        timing = q("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY queue_wait_ms), "
                   "percentile_cont(0.95) WITHIN GROUP (ORDER BY queue_wait_ms), "
                   "percentile_cont(0.5) WITHIN GROUP (ORDER BY total_ms), "
                   "percentile_cont(0.95) WITHIN GROUP (ORDER BY total_ms), "
                   "extract(epoch FROM max(finished_at) - min(created_at)) FROM jobs WHERE status = 'succeeded'")[0]
        attempts = dict(q("SELECT attempts, count(*) FROM jobs GROUP BY attempts ORDER BY attempts"))
        errors = dict(q("SELECT left(error, 80), count(*) FROM jobs WHERE status = 'failed' GROUP BY 1 "
                        "ORDER BY 2 DESC LIMIT 10"))
        span = float(timing[4] or 0)
        faults = []
        for f in self.faults:
            d = dict(f.details)
            entry: dict[str, Any] = {"kind": f.kind, "start_s": round(f.start, 1),
                                     "end_s": round(f.end, 1) if f.end else None}
            if "held_ids" in d:
                held = d.pop("held_ids")
                entry["affected"] = self._started_after(held, f.start)
                entry["affected"]["what"] = "jobs the killed worker was running: when they started again (s after the kill)"
            if "queued_ids_at_return" in d:
                waiting = d.pop("queued_ids_at_return")
                entry["affected"] = self._started_after(waiting, f.end or f.start)
                entry["affected"]["what"] = ("jobs whose message was lost or never sent: when they started (s after "
                                             "the return)" if f.kind.startswith("Redis") else
                                             "jobs queued when it came back: when they started (s after the return)")
            after = q("SELECT extract(epoch FROM min(started_at)), extract(epoch FROM min(finished_at)) FROM jobs "
                      "WHERE started_at > to_timestamp(%s)", (self.epoch0 + (f.end or f.start),))[0]
            entry["first_job_started_after_s"] = None if after[0] is None else round(
                float(after[0]) - self.epoch0 - (f.end or f.start), 1)
            entry.update(d)
            # A kill lasts until the replacement is ready; an outage until the server is back.
            until = f.start + d.get("replacement_ready_s", 0) if "replacement_ready_s" in d else (f.end or f.start)
            entry["during"] = self._window(f.start, until + 1)
            faults.append(entry)
        worker_logs = "".join(w.log.read_text(errors="replace") for w in self.workers)
        report = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": o.command,
            "runner": o.runner,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()},
            "jobs": {"accepted_by_api": len(self.accepted), "rows": totals[0], "distinct_client_ids": totals[1],
                     "by_status": by_status, "accepted_and_final": found,
                     "final_transitions_exactly_once": once, "final_twice": twice,
                     "rewritten_after_final": rewritten, "attempts": {str(k): v for k, v in attempts.items()},
                     "failed_errors": errors},
            "issue17": self._issue17(),
            "proof": {
                "none_lost": found == len(self.accepted) == o.jobs + sum(len(v) for v in self.extra.values()),
                "none_twice": twice == 0 and rewritten == 0,
                "every_job_one_terminal_state": once == totals[0] and sum(by_status.get(s, 0) for s in FINAL_STATUSES) == totals[0],
                "no_duplicate_rows": totals[0] == totals[1],
            },
            "throughput": {"jobs_per_s": round(totals[0] / span, 2) if span else None, "span_s": round(span, 1),
                           "drained_at_s": round(drained, 1),
                           "queue_wait_ms_p50": _r(timing[0]), "queue_wait_ms_p95": _r(timing[1]),
                           "total_ms_p50": _r(timing[2]), "total_ms_p95": _r(timing[3])},
            "faults": faults,
            "worker_log": {
                "paused_for_database": worker_logs.count("no longer consuming"),
                "resumed": worker_logs.count("database reachable: consuming"),
                "messages_returned_unclaimed": _sum_after(worker_logs, "database unreachable: ", " messages returned"),
                "sweeper_sent": _sum_after(worker_logs, "sweeper: sent ", " queued jobs"),
                "dead_worker_requeued": _sum_after(worker_logs, "; ", " of their running jobs re-queued"),
                "batches_past_deadline": worker_logs.count("past the deadline"),
            },
            "api_answers_overall": dict(Counter(f"{kind} {code}" for _, kind, code, _ in self.answers)),
        }
        return report


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1), "max": round(max(values), 1)}


class FastRunner:
    """A model-free runner for when the demo models are too slow on the machine at hand:
    each request gets a no-call result after a short sleep (fixed cost per batch plus per
    job), so the run exercises the service — claims, acks, sweeps, recovery — not the
    cascade. The report says which runner ran."""

    model_versions = {"runner": "reliability-fast"}

    def __init__(self, batch_ms: float = 20.0, job_ms: float = 2.0):
        self.batch_ms, self.job_ms = batch_ms, job_ms

    def run(self, requests: list[Any]) -> list[Any]:
        from hyfunc.schema import CallResult

        t0 = time.perf_counter()
        time.sleep((self.batch_ms + self.job_ms * len(requests)) / 1000)
        total = (time.perf_counter() - t0) * 1000
        out = []
        for r in requests:
            result = CallResult(id=r.id, no_call_reason="reliability fast runner (no model)")
            result.timings_ms.total = total
            out.append(result)
        return out


def fast_runner(_config: Any) -> FastRunner:
    return FastRunner()


# Demo workload items (demo_inputs(400, seed=7)) whose runaway tool still passes the demo retriever's
# relevance gate, so the job reaches the LMS instead of ending as a quick no-call (checked alone: 45
# of the first 49 items with a gold call pass; item 8 passes alone but not in a batch of 16, so it is
# left out). The report shows how each ended: a pathological job that ends as a no-call is not one.
RUNAWAY_ITEMS = (0, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 17, 18, 19, 21, 22)


def runaway_request(n: int, item: int, properties: int = 256, repeat: int = 40) -> dict[str, Any]:
    """A pathological job within every submission limit: the demo item's query with the tool its
    gold call names, given ``properties`` required properties (integers; `limits.max_properties` is
    256) and its description repeated ``repeat`` times (what the retriever embeds of a tool is its
    first 512 tokens, so it keeps matching the query). The LMS must write every property, which
    runs the job to `cascade.max_call_tokens` (1,024 generated tokens): it fails there, or at
    `worker.job_deadline_seconds`."""
    from hyfunc.bench.workload import demo_inputs

    x = demo_inputs(400, seed=7)[item]
    tool = next(t.to_json() for t in x.tools if t.name == x.gold[0].name)
    fn = tool["function"]
    fn["description"] = " ".join([fn["description"]] * repeat)
    props = fn["parameters"].setdefault("properties", {})
    for i in range(properties - len(props)):
        props[f"note_{n}_{i:03d}"] = {"type": "integer"}
    fn["parameters"]["required"] = list(props)
    return {"id": f"path-{n}", "query": x.query, "tools": [tool]}


def runaway_requests(count: int) -> list[dict[str, Any]]:
    return [runaway_request(n, RUNAWAY_ITEMS[n % len(RUNAWAY_ITEMS)]) for n in range(count)]


def _r(x: Any) -> float | None:
    return None if x is None else round(float(x), 1)


def _sum_after(text: str, before: str, after: str) -> int:
    total = 0
    for line in text.splitlines():
        if before in line and after in line:
            head = line.split(after, 1)[0]
            number = head.rsplit(before, 1)[-1].strip()
            if number.isdigit():
                total += int(number)
    return total


def write_markdown(report: dict[str, Any]) -> str:
    j, t, p = report["jobs"], report["throughput"], report["proof"]
    lines = [
        "# Reliability run",
        "",
        f"{report['when']} — `{report['command']}` (JSON: `{report.get('files', {}).get('json', 'latest.json')}`). "
        f"Real stack: `hyfunc api` + `hyfunc worker{' --beat' if report['options'].get('beat', True) else ''}` "
        f"({'demo models' if report['runner'] == 'demo' else 'the model-free fast runner'}, "
        f"{_pool_words(report['options'])}"
        ") as subprocesses, a private PostgreSQL (own port, "
        "reached by the worker through a TCP proxy the harness cuts) and a private Redis (no persistence).",
        "",
        "## Proof (SQL over the jobs table and an audit trigger on every job UPDATE)",
        "",
        "| check | result |",
        "|---|---|",
        f"| jobs accepted by the API / rows / distinct client ids | {j['accepted_by_api']} / {j['rows']} / "
        f"{j['distinct_client_ids']} |",
        f"| by status | {', '.join(f'{k} {v}' for k, v in sorted(j['by_status'].items()))} |",
        f"| none lost (every accepted job final) | {'yes' if p['none_lost'] else 'NO'} ({j['accepted_and_final']}) |",
        f"| exactly one transition into a final state per job | {'yes' if p['every_job_one_terminal_state'] else 'NO'}"
        f" ({j['final_transitions_exactly_once']} jobs) |",
        f"| none finished twice / rewritten after final | {j['final_twice']} / {j['rewritten_after_final']} |",
        f"| attempts (count of jobs) | {', '.join(f'{k}: {v}' for k, v in j['attempts'].items())} |",
        "",
        "## Throughput",
        "",
        f"{t['jobs_per_s']} jobs/s over {t['span_s']} s (first created to last finished, faults included); "
        f"queue wait p50 {t['queue_wait_ms_p50']} ms, p95 {t['queue_wait_ms_p95']} ms; cascade total p50 "
        f"{t['total_ms_p50']} ms, p95 {t['total_ms_p95']} ms.",
        "",
        "## Faults",
        "",
        "| fault | at (s) | recovery | what the API and /healthz said |",
        "|---|---|---|---|",
    ]
    for f in report["faults"]:
        a = f.get("affected", {})
        rec = (f"first job started {f['first_job_started_after_s']} s after; affected: {a.get('jobs', 0)} jobs, "
               f"all started again by {a.get('all_started_s')} s ({a.get('what', '')})")
        extra = ""
        if "beat_survived" in f:
            extra = (f" Replacement worker ready {f.get('replacement_ready_s')} s after the kill; embedded beat "
                     f"{f['beat_children']} survived: {f['beat_survived'] or 'none'}.")
        said = "; ".join(f"{k} ×{v}" for k, v in f["during"]["api_answers"].items())
        health = "; ".join(f"{k} ×{v}" for k, v in f["during"]["healthz"].items())
        lines.append(f"| {f['kind']} | {f['start_s']}–{f['end_s']} | {rec}.{extra} | API: {said or 'no request'}. "
                     f"/healthz: {health} |")
    wl = report["worker_log"]
    lines += [
        "",
        f"Worker logs: paused for the database {wl['paused_for_database']}×, resumed {wl['resumed']}×; "
        f"{wl['messages_returned_unclaimed']} messages returned to the queue unclaimed (never acked without a "
        f"claim); the sweeper sent {wl['sweeper_sent']} jobs that had no message in the broker; "
        f"{wl['dead_worker_requeued']} running jobs of dead workers re-queued; batches past the deadline: "
        f"{wl['batches_past_deadline']}.",
        "",
        f"API answers over the run: {', '.join(f'{k} ×{v}' for k, v in report['api_answers_overall'].items())}.",
        "",
    ]
    if j["failed_errors"]:
        lines += ["Failed jobs by error:", ""] + [f"- {v} × `{k}`" for k, v in j["failed_errors"].items()] + [""]
    i17 = report.get("issue17") or {}
    lines += ["## Issue 17 scenarios", "",
              f"- beat process: {'yes (`--beat`)' if i17.get('beat_process', True) else 'none (recovery by the workers)'}"]
    if "pathological" in i17:
        p = i17["pathological"]
        lines.append(f"- pathological batch: normal jobs beside them end-to-end {p['normal_beside_e2e_s']} s; "
                     f"the run's other jobs {p['other_jobs_e2e_s']} s; pathological {p['pathological_e2e_s']} s, "
                     f"ended as {p['pathological_outcomes']}")
    if "pathological_only" in i17:
        lines += _pathological_only_markdown(i17["pathological_only"], report["options"])
    for f in report["faults"]:
        if f["kind"].startswith("memory bomb"):
            lines.append(f"- memory bomb over HTTP: {f.get('http_status')} `{f.get('http_detail')}`; stored directly: "
                         f"{f.get('direct_status')} `{f.get('direct_error')}`; worker RSS idle "
                         f"{f.get('worker_rss_idle_mb')} MB, peak {f.get('worker_rss_peak_mb')} MB "
                         f"(x{f.get('peak_over_idle')})")
    lines.append("")
    return "\n".join(lines)


def _pool_words(options: dict[str, Any]) -> str:
    if "pool" not in options:
        return "solo pool"  # reports written before the option existed
    pool, concurrency = options.get("pool"), options.get("concurrency")
    if pool is None:
        return f"the worker's default pool (threads, concurrency {concurrency or 4})"
    return f"{pool} pool" + (f", concurrency {concurrency}" if concurrency else "")


def _pathological_only_markdown(p: dict[str, Any], options: dict[str, Any]) -> list[str]:
    def cell(d: dict[str, Any]) -> str:
        return f"{d['jobs']} | {d['p50']} | {d['p95']} | {d['max']}"

    n = p["normal_e2e_s"]
    t = p["target"]
    lines = [
        "",
        "### Pathological batch alone (`--only pathological`)",
        "",
        f"Normal jobs one per POST at {options['rate']} jobs/s; at {p['batch_submitted_s']} s one batch of 16: "
        f"{options['pathological']} pathological jobs (runaway: 256 required properties) and "
        f"{16 - options['pathological']} normal ones; its pathological jobs ran until {p['pathological_running_until_s']} s. "
        f"`worker.job_deadline_seconds` {options['job_deadline_s']:g}. End to end = created → finished, seconds.",
        "",
        "| normal jobs | jobs | p50 | p95 | max |",
        "|---|---|---|---|---|",
        f"| created before the batch (normal p95) | {cell(n['before'])} |",
        f"| in the batch, beside the pathological ones | {cell(p['normal_in_batch_e2e_s'])} |",
        f"| created while the pathological jobs ran | {cell(n['during'])} |",
        f"| created after | {cell(n['after'])} |",
        "",
        f"Target (normal p95 beside or during ≤ normal p95 + {t['limit_excess_s']:g} s): worst p95 "
        f"{t['worst_p95_beside_or_during_s']} s vs {t['normal_p95_s']} s, excess {t['excess_s']} s — "
        f"{'met' if t['met'] else 'NOT met'}.",
        "",
        "Pathological jobs (in the order they finished):",
        "",
        "| status | error | generated tokens | LMS prompt tokens | cascade total ms | started → finished s | e2e s |",
        "|---|---|---|---|---|---|---|",
    ]
    for j in p["pathological"]:
        lines.append(f"| {j['status']} | {j['error'] or ''} | {j['tokens_generated']} | {j['lms_prompt_tokens']} | "
                     f"{j['cascade_total_ms']} | {j['run_s']} | {j['e2e_s']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=Options.jobs)
    parser.add_argument("--rate", type=float, default=Options.rate, help="jobs/s offered (default %(default)s)")
    parser.add_argument("--out", default=str(Options.out), help="report directory (default docs/reliability)")
    parser.add_argument("--models", default=str(Options.models))
    parser.add_argument("--outage", type=float, default=Options.outage_s, help="seconds per outage (default 20)")
    parser.add_argument("--runner", choices=["demo", "fast"], default="demo",
                        help="demo: the shipped demo models; fast: a model-free runner, for when the demo models "
                             "are too slow on this machine (the report says which)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the fault times (a short smoke run: --jobs 500 --scale 0.2)")
    parser.add_argument("--no-beat", action="store_true", help="run no --beat process (recovery by the workers)")
    parser.add_argument("--pathological", type=int, default=0,
                        help="pathological jobs in one batch of 16 among normal ones (0: none)")
    parser.add_argument("--memory-bomb", action="store_true", help="the 10,000-value enum, over HTTP and stored directly")
    parser.add_argument("--job-deadline", type=float, default=Options.job_deadline_s,
                        help="worker.job_deadline_seconds (default %(default)s)")
    parser.add_argument("--only", choices=["pathological"],
                        help="one scenario alone, no other fault: pathological = normal singles at --rate, "
                             "--baseline s, then the batch of --pathological (default 12) runaway jobs among normal "
                             "ones, --after s more of normal singles")
    parser.add_argument("--baseline", type=float, default=60.0,
                        help="--only: seconds of normal jobs before the batch (default %(default)s)")
    parser.add_argument("--after", type=float, default=Options.after_s,
                        help="--only: seconds of normal jobs after the batch (default %(default)s)")
    parser.add_argument("--pool", choices=["solo", "threads", "prefork"],
                        help="the worker's --pool (default: the worker's own, worker.pool)")
    parser.add_argument("--concurrency", type=int, help="the worker's --concurrency (default: the worker's own)")
    parser.add_argument("--name", default="latest", help="report file names: NAME.json, NAME.md (default latest)")
    args = parser.parse_args(argv)
    o = Options(jobs=args.jobs, singles=min(Options.singles, args.jobs // 10), rate=args.rate, out=Path(args.out),
                models=Path(args.models), outage_s=args.outage,
                kills_at=tuple(t * args.scale for t in Options.kills_at), redis_at=Options.redis_at * args.scale,
                pg_at=Options.pg_at * args.scale, runner=args.runner, beat=not args.no_beat,
                pathological=args.pathological, pathological_at=Options.pathological_at * args.scale,
                memory_bomb=args.memory_bomb, bomb_at=Options.bomb_at * args.scale, job_deadline_s=args.job_deadline,
                pool=args.pool, concurrency=args.concurrency,
                command=" ".join(["python -m hyfunc.chaos.reliability", *(argv if argv is not None else sys.argv[1:])]))
    if args.only == "pathological":
        jobs = max(1, round(args.rate * (args.baseline + args.after)))
        o.only, o.jobs, o.singles, o.after_s = "pathological", jobs, jobs, args.after
        o.pathological, o.pathological_at = args.pathological or 12, args.baseline
    run = Run(o)

    def _terminate(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through run.close(): no orphaned servers

    signal.signal(signal.SIGTERM, _terminate)
    try:
        report = run.execute()
    finally:
        run.close()
    report["files"] = {"json": f"{args.name}.json", "md": f"{args.name}.md"}
    o.out.mkdir(parents=True, exist_ok=True)
    (o.out / f"{args.name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    markdown = write_markdown(report)
    (o.out / f"{args.name}.md").write_text(markdown)
    print(markdown)
    _log(f"written {o.out / args.name}.json and {args.name}.md; logs kept in {run.work}")
    return 0 if all(report["proof"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
