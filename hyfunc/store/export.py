"""Retraining export: jobs with feedback as xlam-format JSONL (`query`, `tools`, `answers`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hyfunc.store.jobs import job_tools
from hyfunc.store.models import Feedback, Job
from hyfunc.store.replay import expected_calls, latest_feedback

EXPORT_FORMATS = ("xlam",)


def export_records(
    session: Session,
    tenant_id: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    chunk: int = 500,
) -> Iterator[dict[str, Any]]:
    """One record per job that has feedback saying what its calls should be.

    Corrected calls win over the job's own; an 'incorrect' verdict without a correction
    gives no usable label and is skipped. `since` filters on the feedback's time, so an
    incremental export picks up newly reviewed old jobs too.
    """
    query = (
        select(Job.id)
        .join(Feedback, Feedback.job_id == Job.id)
        .where(Job.tenant_id == tenant_id)
        .distinct()
    )
    if since:
        query = query.where(Feedback.created_at >= since)
    if until:
        query = query.where(Feedback.created_at < until)
    ids = sorted(session.scalars(query))
    cache: dict[int, list[dict[str, Any]]] = {}
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(part)))}
        feedback = latest_feedback(session, part)
        for job_id in part:
            job = jobs[job_id]
            answers = expected_calls(feedback.get(job_id), job)
            if answers is None:
                continue
            yield {
                "id": str(job.id),
                "query": job.request["query"],
                "tools": job_tools(session, job, cache),
                "answers": [{"name": a["name"], "arguments": a.get("arguments", {})} for a in answers],
            }
