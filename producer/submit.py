"""Submitting jobs: store them (one commit), then enqueue their ids.

The rows are committed before the messages go out, so a worker never receives an id it
cannot find. If the broker is down the jobs stay queued, marked unsent, and the sweeper
sends them as soon as it can; the caller is told so (`broker_ok`), never given an error
for work that is safely stored.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session

from hyfunc.store.jobs import NewJob, create_jobs, mark_unsent
from producer.broker import enqueue

log = logging.getLogger("hyfunc.producer")


@dataclass(frozen=True)
class Submitted:
    ids: list[uuid.UUID]
    broker_ok: bool  # False: stored as queued, the broker was unreachable; the sweeper sends them


def submit_jobs(
    app: Celery, session: Session, tenant_id: int, new_jobs: Sequence[NewJob], queue: str | None = None
) -> Submitted:
    jobs = create_jobs(session, tenant_id, new_jobs)
    ids = [j.id for j in jobs]
    session.commit()
    try:
        enqueue(app, ids, queue)
    except Exception as err:  # noqa: BLE001 - stored jobs are not lost: the sweeper sends them
        log.warning("broker unreachable (%s): %d jobs stored as queued; the sweeper will send them",
                    type(err).__name__, len(ids))
        try:
            mark_unsent(session, ids)
            session.commit()
        except Exception:  # noqa: BLE001 - then the sweeper's lost-message rule finds them
            session.rollback()
            log.exception("could not mark %d jobs unsent", len(ids))
        return Submitted(ids=ids, broker_ok=False)
    return Submitted(ids=ids, broker_ok=True)
