"""Service commands: `hyfunc api | worker | db | keys | submit | replay | export`.

Celery, FastAPI and SQLAlchemy are imported inside the handlers, so `hyfunc run` and the
core library never pay for (or need) the service stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from hyfunc.config import HyFuncConfig, load_config
from hyfunc.store.status import JOB_STATUSES, SUCCEEDED


def _config(args: argparse.Namespace) -> HyFuncConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["store.url"] = args.database_url
    if getattr(args, "models", None):
        overrides["models.dir"] = args.models
    if getattr(args, "config", None):
        # Worker children (prefork) and `celery beat` re-read the config from the environment.
        os.environ["HYFUNC_CONFIG"] = str(Path(args.config).resolve())
    return load_config(args.config, overrides)


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise SystemExit(f"hyfunc: error: {text!r} needs a timezone (e.g. 2026-01-01T00:00:00Z)")
    return value


def _read_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    from hyfunc.jsonl import jsonl_records

    for number, value in jsonl_records(path):
        if isinstance(value, json.JSONDecodeError):
            raise SystemExit(f"hyfunc: error: {path}:{number}: malformed JSON: {value}")
        yield number, value


def _open_out(path: str | None) -> Any:
    return open(path, "w", encoding="utf-8") if path else sys.stdout


# -- api / worker ------------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    config = _config(args)
    host = args.host or config.api.host
    app = create_app(config)
    if config.api.metrics_port is None:
        uvicorn.run(app, host=host, port=args.port or config.api.port, log_level=args.loglevel)
        return 0
    import asyncio

    from api.metrics import create_metrics_app

    # Two servers in one process: the API, and /metrics alone on api.metrics_port.
    servers = [uvicorn.Server(uvicorn.Config(a, host=host, port=p, log_level=args.loglevel))
               for a, p in ((app, args.port or config.api.port),
                            (create_metrics_app(app.state.hyfunc), config.api.metrics_port))]

    async def serve() -> None:
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(serve())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.app import create_app
    from worker.runner import get_runner

    config = _config(args)
    app = create_app(config)
    pool = args.pool or config.worker.pool
    # Batches in flight at once only where they share the feeder (its one model thread); a bare
    # Cascade (continuous_feed off) is not to be run by several threads at a time.
    overlap = pool == "threads" and config.worker.continuous_feed
    concurrency = args.concurrency or config.worker.concurrency or (4 if overlap else 1)
    # One model process per accelerator: the solo and threads pools run batches in this very
    # process, so the models load once, here, before the first message is taken.
    if pool in ("solo", "threads"):
        get_runner(config)
    from producer import control_queue, job_queues

    # The job queues (new and re-sent jobs), and the control queue the sweeper runs on, so
    # a job backlog can delay neither a sweep nor a re-sent job.
    queues = ",".join([*job_queues(config.worker.queue), control_queue(config.worker.queue)])
    argv = ["worker", "--pool", pool, "--concurrency", str(concurrency),
            "--loglevel", args.loglevel, "--queues", queues, "--without-gossip", "--without-mingle"]
    if args.name:
        argv += ["--hostname", args.name]
    if args.beat:
        argv += ["--beat"]
    app.worker_main(argv)
    return 0


# -- db / keys ---------------------------------------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    from hyfunc.store import migrate

    url = _config(args).store.url
    if args.db_command == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.db_command == "downgrade":
        migrate.downgrade(url, args.revision or "-1")
    print(f"database at revision {migrate.current(url) or 'base (empty)'}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from hyfunc.store.db import session_factory, transaction
    from hyfunc.store.keys import create_key

    with transaction(session_factory(_config(args).store.url)) as session:
        key, row = create_key(session, args.tenant)
    print(key)
    print(f"created key {row.prefix}… for tenant {args.tenant!r}; it is shown only now", file=sys.stderr)
    return 0


# -- producers -----------------------------------------------------------------------------------


def _wait(sessions: Any, ids: list[Any], timeout: float) -> list[Any]:
    """Poll the store until every job is finished; returns the rows in the order of ids."""
    from sqlalchemy import func, select

    from hyfunc.store.models import Job
    from hyfunc.store.status import FINAL_STATUSES

    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            pending = session.scalar(
                select(func.count()).where(Job.id.in_(ids), Job.status.not_in(FINAL_STATUSES))
            )
            if not pending:
                rows = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}
                return [rows[i] for i in ids]
        if time.monotonic() > deadline:
            raise SystemExit(f"hyfunc: error: {pending} of {len(ids)} jobs still unfinished after {timeout:.0f}s")
        time.sleep(0.25)


def _result_line(job: Any) -> dict[str, Any]:
    from hyfunc.store.jobs import job_to_dict

    data = job_to_dict(job)
    keep = ("status", "calls", "no_call_reason", "error", "candidates", "timings_ms", "tokens", "batch_size")
    return {"id": job.client_id, "job_id": data["id"], **{k: data[k] for k in keep}}


def cmd_submit(args: argparse.Namespace) -> int:
    from hyfunc.store.db import session_factory
    from hyfunc.store.keys import get_or_create_tenant
    from hyfunc.store.submissions import SubmissionError, validate_batch
    from producer import create_celery, submit_jobs

    config = _config(args)
    sessions = session_factory(config.store.url)
    items = [item for _, item in _read_jsonl(args.file)]
    with sessions() as session:
        tenant = get_or_create_tenant(session, args.tenant)
        try:
            new_jobs = validate_batch(session, tenant.id, items, config.limits)
        except SubmissionError as err:
            raise SystemExit(f"hyfunc: error: {args.file}: {err.message}") from None
        done = submit_jobs(create_celery(config), session, tenant.id, new_jobs, config.worker.queue)
    ids = done.ids
    note = "" if done.broker_ok else " (broker unreachable: stored as queued, the sweeper sends them)"
    print(f"submitted {len(ids)} jobs to queue {config.worker.queue!r}{note}", file=sys.stderr)
    if not args.wait:
        with _open_out(args.out) as out:
            for job_id in ids:
                out.write(json.dumps({"job_id": str(job_id)}) + "\n")
        return 0
    rows = _wait(sessions, ids, args.timeout)
    with _open_out(args.out) as out:
        for job in rows:
            out.write(json.dumps(_result_line(job), ensure_ascii=False) + "\n")
    failed = sum(j.status != SUCCEEDED for j in rows)
    print(f"{len(rows) - failed} succeeded, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _import_log(session: Any, tenant_id: int, path: str, limits: Any) -> list[Any]:
    """A JSONL log of past traffic ({query, tools, calls|answers}) becomes finished jobs,
    which the replay then re-runs and compares against."""
    from hyfunc.schema import Call, CallResult, parse_request
    from hyfunc.store.recording import record_finished_jobs
    from hyfunc.store.submissions import SubmissionError, validate_item

    pairs = []
    for number, item in _read_jsonl(path):
        if not isinstance(item, dict):
            raise SystemExit(f"hyfunc: error: {path}:{number}: not a JSON object")
        calls = item.get("calls", item.get("answers", []))
        request_part = {k: item[k] for k in ("id", "query", "tools", "toolset") if k in item}
        try:
            new_job = validate_item(session, tenant_id, request_part, limits, f"{path}:{number}: ")
        except SubmissionError as err:
            raise SystemExit(f"hyfunc: error: {err.message}") from None
        if new_job.tools is None:  # a toolset reference: a log line must carry the tools it ran with
            raise SystemExit(f"hyfunc: error: {path}:{number}: log lines need inline tools")
        tools = new_job.tools
        request = parse_request({"id": new_job.client_id, "query": new_job.query, "tools": tools})
        pairs.append((request, CallResult(calls=[Call.model_validate(c) for c in calls])))
    return record_finished_jobs(session, tenant_id, pairs, worker=f"log:{Path(path).name}")


def cmd_replay(args: argparse.Namespace) -> int:
    from hyfunc.store.db import session_factory
    from hyfunc.store.keys import get_or_create_tenant
    from hyfunc.store.replay import create_replay, get_replay, replay_report, select_jobs
    from producer import create_celery, enqueue

    config = _config(args)
    sessions = session_factory(config.store.url)
    with sessions() as session:
        tenant = get_or_create_tenant(session, args.tenant)
        if args.report:
            replay = get_replay(session, tenant.id, args.report)
            if replay is None:
                raise SystemExit(f"hyfunc: error: replay {args.report} not found for tenant {args.tenant!r}")
            print(json.dumps(replay_report(session, replay), indent=2, ensure_ascii=False))
            return 0
        if args.log:
            ids = [str(i) for i in _import_log(session, tenant.id, args.log, config.limits)]
            selector: dict[str, Any] = {"log": str(args.log)}
            originals = select_jobs(session, tenant.id, job_ids=ids, limit=len(ids))
        else:
            selector = {k: v for k, v in (("job_ids", args.jobs), ("status", args.status), ("since", args.since),
                                          ("until", args.until), ("toolset", args.toolset)) if v}
            if not selector:
                raise SystemExit("hyfunc: error: give --jobs, a filter (--status/--since/--until/--toolset) or --log")
            originals = select_jobs(session, tenant.id, job_ids=args.jobs, status=args.status,
                                    since=_when(args.since), until=_when(args.until), toolset=args.toolset,
                                    limit=args.limit or config.limits.max_batch_size)
        if not originals:
            raise SystemExit("hyfunc: error: the replay selects no jobs")
        replay, jobs = create_replay(session, tenant.id, originals, selector=selector,
                                     model_version=args.model_version)
        ids = [j.id for j in jobs]
        replay_id = replay.id
        session.commit()
    enqueue(create_celery(config), ids, config.worker.queue)
    print(f"replay {replay_id}: {len(ids)} jobs enqueued", file=sys.stderr)
    if args.wait:
        _wait(sessions, ids, args.timeout)
        with sessions() as session:
            replay = get_replay(session, tenant.id, str(replay_id))
            report = replay_report(session, replay)
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(replay_id)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hyfunc.store.db import session_factory
    from hyfunc.store.export import export_records
    from hyfunc.store.keys import get_or_create_tenant

    config = _config(args)
    n = 0
    with session_factory(config.store.url)() as session, _open_out(args.out) as out:
        tenant = get_or_create_tenant(session, args.tenant)
        for record in export_records(session, tenant.id, since=_when(args.since), until=_when(args.until)):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    print(f"exported {n} records ({args.format})", file=sys.stderr)
    return 0


# -- parser ------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (default configs/default.yaml, or $HYFUNC_CONFIG)")
    parser.add_argument("--database-url", help="overrides store.url (also $HYFUNC_DATABASE_URL)")


def add_service_commands(subparsers: Any) -> None:
    api = subparsers.add_parser("api", help="serve the job API (FastAPI, uvicorn)")
    _common(api)
    api.add_argument("--host", help="default api.host")
    api.add_argument("--port", type=int, help="default api.port")
    api.add_argument("--loglevel", default="info")
    api.set_defaults(func=cmd_api)

    worker = subparsers.add_parser("worker", help="run a batched Celery worker (one model process)")
    _common(worker)
    worker.add_argument("--models", help="models directory (overrides models.dir)")
    worker.add_argument("--pool", choices=["threads", "solo", "prefork"],
                        help="default worker.pool (threads): one process holds the models and its pool threads' "
                             "batches all join one decoder session, so a slow batch never holds up the next; solo: "
                             "one batch at a time; run one worker per GPU (CUDA_VISIBLE_DEVICES)")
    worker.add_argument("--concurrency", type=int,
                        help="default worker.concurrency (null: 4 batches in flight with threads and "
                             "worker.continuous_feed, else 1)")
    worker.add_argument("--beat", action="store_true",
                        help="also run the sweeper's schedule (one per deployment; it dies with this worker)")
    worker.add_argument("--name", help="Celery node name, e.g. gpu0@%%h")
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(func=cmd_worker)

    db = subparsers.add_parser("db", help="database migrations (Alembic)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    for name, default, text in (("upgrade", "head", "migrate up (default: head)"),
                                ("downgrade", "-1", "migrate down (default: one step; 'base' drops all)"),
                                ("current", None, "print the current revision")):
        p = db_sub.add_parser(name, help=text)
        _common(p)
        if default:
            p.add_argument("revision", nargs="?", default=default)
        else:
            p.set_defaults(revision=None)
        p.set_defaults(func=cmd_db)

    keys = subparsers.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key for a tenant (printed once)")
    _common(create)
    create.add_argument("--tenant", required=True)
    create.set_defaults(func=cmd_keys_create)

    submit = subparsers.add_parser("submit", help="enqueue a JSONL file of requests as jobs")
    _common(submit)
    submit.add_argument("file", help="JSONL: one {id?, query, tools | toolset} per line")
    submit.add_argument("--tenant", default="local")
    submit.add_argument("--wait", action="store_true", help="wait for the jobs and write their results")
    submit.add_argument("--out", help="write results (or job ids) here instead of stdout")
    submit.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")
    submit.set_defaults(func=cmd_submit)

    replay = subparsers.add_parser("replay", help="re-run historical jobs on today's models; report changes")
    _common(replay)
    replay.add_argument("--tenant", default="local")
    replay.add_argument("--jobs", nargs="+", help="job ids to replay")
    replay.add_argument("--status", choices=list(JOB_STATUSES))
    replay.add_argument("--since", help="ISO time with timezone")
    replay.add_argument("--until", help="ISO time with timezone")
    replay.add_argument("--toolset", help="toolset name")
    replay.add_argument("--limit", type=int)
    replay.add_argument("--log", help="a JSONL log ({query, tools, calls}) to import and replay")
    replay.add_argument("--model-version", help="the model version the replay is meant to run on")
    replay.add_argument("--wait", action="store_true", help="wait and print the report")
    replay.add_argument("--timeout", type=float, default=600.0)
    replay.add_argument("--report", metavar="REPLAY_ID", help="print the report of an earlier replay")
    replay.set_defaults(func=cmd_replay)

    export = subparsers.add_parser("export", help="export reviewed jobs as training JSONL")
    _common(export)
    export.add_argument("--tenant", default="local")
    export.add_argument("--format", default="xlam", choices=["xlam"])
    export.add_argument("--since", help="feedback given at or after (ISO time with timezone)")
    export.add_argument("--until")
    export.add_argument("--out", help="default stdout")
    export.set_defaults(func=cmd_export)
