"""Job routes: submit one or a batch, read one, page through them, give feedback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from api import cursors
from api.deps import SessionDep, StateDep, TenantDep
from api.errors import ApiError
from api.json_guard import body_problem
from api.schemas import (
    BatchAccepted,
    FeedbackIn,
    FeedbackOut,
    JobAccepted,
    JobIn,
    JobList,
    JobOut,
    ToolsetName,
    UtcDatetime,
    error_responses,
)
from api.service import parse_batch_body, submit, validate_batch, validate_item
from hyfunc.schema import Call, Tool, validate_call
from hyfunc.store.jobs import get_job, job_to_dict, job_tools, list_jobs
from hyfunc.store.models import Feedback
from hyfunc.store.status import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422, 500, 503))


@router.post("", status_code=202, response_model=JobAccepted, responses=error_responses(400, 413))
def create_job(body: JobIn, state: StateDep, session: SessionDep, tenant: TenantDep) -> JobAccepted:
    new_job = validate_item(session, tenant.id, body.model_dump(exclude_none=True), state.config.limits)
    ids, broker = submit(state, session, tenant.id, [new_job])
    return JobAccepted(id=ids[0], broker=broker)


@router.post(
    "/batch",
    status_code=202,
    response_model=BatchAccepted,
    responses=error_responses(400, 413),
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
        data = await upload.read()
        # The upload skipped the body guard (multipart): the same checks, on the file.
        problem = body_problem(data, state.config.limits.max_json_depth, lines=True)
        if problem:
            raise ApiError(422, f"file: {problem}")
        items = parse_batch_body("application/x-ndjson", data)
    else:
        items = parse_batch_body(content_type, await request.body())

    def store() -> tuple[list[str], str]:
        new_jobs = validate_batch(session, tenant.id, items, state.config.limits)
        return submit(state, session, tenant.id, new_jobs)

    ids, broker = await run_in_threadpool(store)
    return BatchAccepted(ids=ids, count=len(ids), broker=broker)


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(404))
def read_job(job_id: str, session: SessionDep, tenant: TenantDep) -> dict:
    job = get_job(session, tenant.id, job_id)
    if job is None:
        raise ApiError(404, f"job {job_id} not found")
    return job_to_dict(job)


@router.get("", response_model=JobList, responses=error_responses(400))
def page_jobs(
    state: StateDep,
    session: SessionDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    since: Annotated[UtcDatetime | None, Query(description="ISO 8601 with a timezone")] = None,
    toolset: Annotated[ToolsetName | None, Query(description="a toolset name")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=cursors.MAX_CURSOR_CHARS, pattern=cursors.CURSOR_PATTERN,
                                        description="next_cursor of the previous page")] = None,
) -> JobList:
    raw = None
    if cursor is not None:
        try:
            raw = cursors.verify(state.cursor_key, tenant.id, cursor)
        except cursors.BadCursor as err:
            raise ApiError(400, str(err)) from None
    try:
        jobs, next_cursor = list_jobs(session, tenant.id, status=status, since=since, toolset=toolset, limit=limit,
                                      cursor=raw)
    except ValueError:  # signed but unreadable: only if the cursor key itself leaked
        raise ApiError(400, "cursor is not one this API returned") from None
    signed = cursors.sign(state.cursor_key, tenant.id, next_cursor) if next_cursor else None
    return JobList(jobs=[job_to_dict(j) for j in jobs], next_cursor=signed)


@router.post("/{job_id}/feedback", status_code=201, response_model=FeedbackOut,
             responses=error_responses(400, 404, 413))
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
