"""The embedded path's audit trail: `hyfunc run` records its requests and results as jobs.

Import log lines the same way (`import_log`), so a JSONL log from elsewhere can be
replayed and exported like service traffic.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session

from hyfunc.config import HyFuncConfig
from hyfunc.schema import CallRequest, CallResult
from hyfunc.store.db import normalize_url, session_factory, transaction
from hyfunc.store.jobs import NewJob, create_jobs, finish_job, start_jobs
from hyfunc.store.keys import get_or_create_tenant

LOCAL_TENANT = "local"


def ensure_schema(url: str) -> None:
    """Bring an embedded SQLite store to the newest migration; a server database is the
    operator's to migrate (`hyfunc db upgrade`), so there we only check."""
    from hyfunc.store import migrate

    url = normalize_url(url)
    if url.startswith("sqlite"):
        migrate.upgrade(url)
        return
    if migrate.current(url) is None:
        raise RuntimeError(f"database {url} has no HyFunc schema; run `hyfunc db upgrade` first")


def record_finished_jobs(
    session: Session,
    tenant_id: int,
    pairs: Sequence[tuple[CallRequest, CallResult]],
    *,
    model_versions: dict[str, str] | None = None,
    worker: str = "embedded",
) -> list[uuid.UUID]:
    """Insert (request, result) pairs as jobs that ran in one batch, through the same
    claim/finish writes a worker makes, so the rows look exactly like service traffic."""
    jobs = create_jobs(
        session,
        tenant_id,
        [NewJob(query=r.query, tools=[t.to_json() for t in r.tools], client_id=r.id) for r, _ in pairs],
    )
    batch_id = uuid.uuid4()
    start_jobs(session, jobs, worker=worker, batch_id=batch_id)
    for job, (_, result) in zip(jobs, pairs, strict=True):
        finish_job(session, job, batch_id, result, model_versions=model_versions or {}, batch_size=len(jobs))
    return [j.id for j in jobs]


def record_results(
    config: HyFuncConfig,
    pairs: Sequence[tuple[CallRequest, CallResult]],
    model_versions: dict[str, str] | None = None,
    *,
    tenant: str = LOCAL_TENANT,
) -> list[uuid.UUID]:
    """Record an embedded run (`hyfunc run`) in config.store.url as finished jobs of the
    tenant `local`; returns the job ids ([] when store.record_runs is off)."""
    if not config.store.record_runs or not pairs:
        return []
    ensure_schema(config.store.url)
    factory = session_factory(config.store.url)
    with transaction(factory) as session:
        tenant_row = get_or_create_tenant(session, tenant)
        return record_finished_jobs(session, tenant_row.id, pairs, model_versions=model_versions)
