"""Replay routes: re-run historical jobs as new linked jobs, and report what changed."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep, StateDep, TenantDep
from api.errors import ApiError
from api.schemas import ReplayAccepted, ReplayIn, ReplayReport, error_responses
from hyfunc.store.jobs import mark_unsent
from hyfunc.store.replay import create_replay, get_replay, replay_report, select_jobs
from hyfunc.store.submissions import batch_problem
from producer import enqueue

router = APIRouter(prefix="/v1/replays", tags=["replays"], responses=error_responses(401, 422, 500, 503))


@router.post("", status_code=202, response_model=ReplayAccepted, responses=error_responses(400, 413))
def start_replay(body: ReplayIn, state: StateDep, session: SessionDep, tenant: TenantDep) -> ReplayAccepted:
    limits = state.config.limits
    if body.job_ids is None and body.filter is None:
        raise ApiError(422, "give job_ids or a filter")
    if body.job_ids is not None:
        problem = batch_problem(len(body.job_ids), limits)
        if problem:
            raise ApiError(413, problem)
    limit = body.limit or limits.max_batch_size
    problem = batch_problem(limit, limits)
    if problem:
        raise ApiError(413, problem)
    f = body.filter
    originals = select_jobs(
        session, tenant.id, job_ids=body.job_ids,
        status=f.status if f else None, since=f.since if f else None,
        until=f.until if f else None, toolset=f.toolset if f else None, limit=limit,
    )
    if not originals:
        raise ApiError(422, "the replay selects no jobs")
    replay, jobs = create_replay(
        session, tenant.id, originals,
        selector=body.model_dump(mode="json", exclude_none=True, exclude={"model_version"}),
        model_version=body.model_version,
    )
    ids = [str(j.id) for j in jobs]
    replay_id = str(replay.id)
    session.commit()
    try:
        enqueue(state.celery, ids, state.config.worker.queue)
    except Exception:  # noqa: BLE001 - stored as queued: the sweeper sends them when the broker is back
        mark_unsent(session, [j.id for j in jobs])
        session.commit()
    return ReplayAccepted(id=replay_id, job_count=len(ids), job_ids=ids)


@router.get("/{replay_id}", response_model=ReplayReport, responses=error_responses(404))
def read_replay(replay_id: str, session: SessionDep, tenant: TenantDep) -> dict:
    replay = get_replay(session, tenant.id, replay_id)
    if replay is None:
        raise ApiError(404, f"replay {replay_id} not found")
    return replay_report(session, replay)
