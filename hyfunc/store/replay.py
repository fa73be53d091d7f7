"""Replays: re-run historical jobs on today's models and report what changed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from hyfunc.store.jobs import NewJob, as_uuid, create_jobs
from hyfunc.store.models import FINAL_STATUSES, Feedback, Job, Replay, Toolset
from hyfunc.store.status import FAILED, SUCCEEDED


def canonical_calls(calls: list[dict[str, Any]] | None) -> list[str]:
    """Order-insensitive form of a call list: parallel calls may come back in any order."""
    return sorted(json.dumps(c, sort_keys=True, ensure_ascii=False) for c in (calls or []))


def select_jobs(
    session: Session,
    tenant_id: int,
    *,
    job_ids: Sequence[str] | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    toolset: str | None = None,
    limit: int = 1000,
) -> list[Job]:
    """A tenant's jobs by ids or by filter (oldest first); foreign or unknown ids are skipped."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if job_ids is not None:
        keys = [k for k in (as_uuid(j) for j in job_ids) if k is not None]
        query = query.where(Job.id.in_(keys))
    if status:
        query = query.where(Job.status == status)
    if since:
        query = query.where(Job.created_at >= since)
    if until:
        query = query.where(Job.created_at < until)
    if toolset:
        query = query.join(Toolset, Job.toolset_id == Toolset.id).where(Toolset.name == toolset)
    return list(session.scalars(query.order_by(Job.created_at, Job.id).limit(limit)))


def create_replay(
    session: Session,
    tenant_id: int,
    originals: Sequence[Job],
    *,
    selector: dict[str, Any],
    model_version: str | None = None,
) -> tuple[Replay, list[Job]]:
    """A replay row plus one new queued job per original, linked by replay_of."""
    replay = Replay(
        id=uuid.uuid4(), tenant_id=tenant_id, selector=selector, model_version=model_version, job_count=len(originals)
    )
    session.add(replay)
    session.flush()
    jobs = create_jobs(
        session,
        tenant_id,
        [
            NewJob(
                query=o.request["query"],
                tools=o.request.get("tools"),
                toolset_id=o.toolset_id,
                client_id=o.client_id,
                replay_of=o.id,
                replay_id=replay.id,
            )
            for o in originals
        ],
    )
    return replay, jobs


def get_replay(session: Session, tenant_id: int, replay_id: str) -> Replay | None:
    key = as_uuid(replay_id)
    if key is None:
        return None
    replay = session.get(Replay, key)
    return replay if replay is not None and replay.tenant_id == tenant_id else None


def expected_calls(feedback: Feedback | None, job: Job) -> list[dict[str, Any]] | None:
    """The calls a reviewer says are right for a job, or None when no one said.

    Corrected calls win; a 'correct' verdict without a correction endorses the job's calls.
    """
    if feedback is None:
        return None
    if feedback.corrected_calls is not None:
        return feedback.corrected_calls
    if feedback.verdict == "correct":
        return job.calls or []
    return None


def latest_feedback(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Feedback]:
    out: dict[uuid.UUID, Feedback] = {}
    if not job_ids:
        return out
    rows = session.scalars(
        select(Feedback).where(Feedback.job_id.in_(job_ids)).order_by(Feedback.created_at, Feedback.id)
    )
    for fb in rows:
        out[fb.job_id] = fb  # later rows overwrite earlier: the newest verdict wins
    return out


def replay_report(session: Session, replay: Replay, *, max_changes: int = 1000) -> dict[str, Any]:
    """How many replayed jobs finished, how many calls changed (and which), and accuracy
    against feedback on the originals where there is any."""
    original = aliased(Job)
    pairs = session.execute(
        select(Job, original)
        .join(original, Job.replay_of == original.id)
        .where(Job.replay_id == replay.id)
        .order_by(Job.created_at, Job.id)
    ).all()
    feedback = latest_feedback(session, [o.id for _, o in pairs])
    counts = {"total": len(pairs), "finished": 0, "succeeded": 0, "failed": 0, "pending": 0}
    changes: list[dict[str, Any]] = []
    changed = unchanged = 0
    judged = before_right = after_right = 0
    versions: set[str] = set()
    for new, old in pairs:
        if new.status in FINAL_STATUSES:
            counts["finished"] += 1
        else:
            counts["pending"] += 1
        if new.status == SUCCEEDED:
            counts["succeeded"] += 1
        elif new.status == FAILED:
            counts["failed"] += 1
        if new.model_versions:
            versions.add(json.dumps(new.model_versions, sort_keys=True))
        if new.status != SUCCEEDED:
            continue
        if canonical_calls(new.calls) != canonical_calls(old.calls):
            changed += 1
            if len(changes) < max_changes:
                changes.append(
                    {"job_id": str(new.id), "replay_of": str(old.id), "query": old.request.get("query"),
                     "before": old.calls, "after": new.calls}
                )
        else:
            unchanged += 1
        expected = expected_calls(feedback.get(old.id), old)
        if expected is not None:
            judged += 1
            before_right += canonical_calls(old.calls) == canonical_calls(expected)
            after_right += canonical_calls(new.calls) == canonical_calls(expected)
    model_versions = [json.loads(v) for v in sorted(versions)]
    return {
        "id": str(replay.id),
        "created_at": replay.created_at.isoformat(),
        "selector": replay.selector,
        "model_version": replay.model_version,
        "model_versions": model_versions,
        # A replay asked to run on a given version reports whether it actually did.
        "model_version_matched": (
            None
            if replay.model_version is None or not model_versions
            else all(replay.model_version in mv.values() for mv in model_versions)
        ),
        **counts,
        "changed": changed,
        "unchanged": unchanged,
        "changes": changes,
        "accuracy": {
            "judged": judged,
            "before_correct": before_right,
            "after_correct": after_right,
            "before": before_right / judged if judged else None,
            "after": after_right / judged if judged else None,
        },
    }
