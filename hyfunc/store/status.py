"""Job statuses: the one definition the store, the API, the CLI and the metrics read.

Plain strings (no SQLAlchemy), so the API's schemas and the CLI's choices can import
them without pulling in the store.
"""

from __future__ import annotations

from typing import Literal

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

JOB_STATUSES: tuple[str, ...] = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATUSES: tuple[str, ...] = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE_STATUSES: tuple[str, ...] = (QUEUED, RUNNING)

# For pydantic/FastAPI signatures; kept equal to JOB_STATUSES by tests/service/test_reliability.py.
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]

# Worker rows (the workers table): a worker beats as alive and says stopped on a clean
# exit; the sweeper marks it dead when its heartbeat is too old.
WORKER_ALIVE = "alive"
WORKER_STOPPED = "stopped"
WORKER_DEAD = "dead"
WORKER_STATUSES: tuple[str, ...] = (WORKER_ALIVE, WORKER_STOPPED, WORKER_DEAD)


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES


def sql_in(values: tuple[str, ...]) -> str:
    """`'a', 'b'` for CHECK constraints built from the tuples above."""
    return ", ".join(f"'{v}'" for v in values)
