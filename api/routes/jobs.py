"""Job routes: submit one or a batch, read one, page through them, give feedback."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from api.deps import SessionDep, StateDep, TenantDep
from api.errors import ApiError
from api.schemas import BatchAccepted, FeedbackIn, FeedbackOut, JobAccepted, JobIn, JobList
from api.service import parse_batch_body, submit, validate_batch, validate_item
from hyfunc.schema import Call, Tool, validate_call
from hyfunc.store.jobs import get_job, job_to_dict, job_tools, list_jobs
from hyfunc.store.models import Feedback

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.post("", status_code=202, response_model=JobAccepted)
def create_job(body: JobIn, state: StateDep, session: SessionDep, tenant: TenantDep) -> JobAccepted:
    new_job = validate_item(session, tenant.id, body.model_dump(exclude_none=True), state.config.limits)
    return JobAccepted(id=submit(state, session, tenant.id, [new_job])[0])


@router.post(
    "/batch",
    status_code=202,
    response_model=BatchAccepted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "array", "items": JobIn.model_json_schema()}},
                "application/x-ndjson": {"schema": {"type": "string", "description": "one job per line"}},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
                },
            },
        }
    },
)
async def create_batch(request: Request, state: StateDep, session: SessionDep, tenant: TenantDep) -> BatchAccepted:
    """A JSON list of jobs, a JSONL body, or a JSONL file upload (multipart field `file`)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "multipart upload needs a `file` field with the JSONL")
        items = parse_batch_body("application/x-ndjson", await upload.read())
    else:
        items = parse_batch_body(content_type, await request.body())

    def store() -> list[str]:
        new_jobs = validate_batch(session, tenant.id, items, state.config.limits)
        return submit(state, session, tenant.id, new_jobs)

    ids = await run_in_threadpool(store)
    return BatchAccepted(ids=ids, count=len(ids))


@router.get("/{job_id}")
def read_job(job_id: str, session: SessionDep, tenant: TenantDep) -> dict:
    job = get_job(session, tenant.id, job_id)
    if job is None:
        raise ApiError(404, f"job {job_id} not found")
    return job_to_dict(job)


@router.get("", response_model=JobList)
def page_jobs(
    session: SessionDep,
    tenant: TenantDep,
    status: Status | None = None,
    since: datetime | None = None,
    toolset: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> JobList:
    if since is not None and since.tzinfo is None:
        raise ApiError(422, "since must carry a timezone, e.g. 2026-01-01T00:00:00Z")
    try:
        jobs, next_cursor = list_jobs(
            session, tenant.id, status=status, since=since, toolset=toolset, limit=limit, cursor=cursor
        )
    except ValueError:
        raise ApiError(400, "cursor is not one this API returned") from None
    return JobList(jobs=[job_to_dict(j) for j in jobs], next_cursor=next_cursor)


@router.post("/{job_id}/feedback", status_code=201, response_model=FeedbackOut)
def add_feedback(job_id: str, body: FeedbackIn, session: SessionDep, tenant: TenantDep) -> FeedbackOut:
    job = get_job(session, tenant.id, job_id)
    if job is None:
        raise ApiError(404, f"job {job_id} not found")
    corrected = None
    if body.calls is not None:
        tools = [Tool.model_validate(t) for t in job_tools(session, job)]
        for i, call in enumerate(body.calls):
            problems = validate_call(Call(name=call.name, arguments=call.arguments), tools)
            if problems:
                raise ApiError(422, f"calls[{i}]: {'; '.join(problems)}")
        corrected = [c.model_dump() for c in body.calls]
    row = Feedback(job_id=job.id, verdict=body.verdict, corrected_calls=corrected, author=body.author)
    session.add(row)
    session.commit()
    return FeedbackOut(
        id=row.id, job_id=str(job.id), verdict=row.verdict, calls=row.corrected_calls,
        author=row.author, created_at=row.created_at,
    )
