"""Incremental counters for /metrics, kept in the `counters` table.

Store functions that change a job's status call `count(session, name, delta)`; the deltas
are summed in the session and written by one upsert just before the transaction commits
(so they land in the same transaction as the change they count, or not at all). Keys are
written in sorted order and only at the end of a transaction, after its job rows are
locked, so two transactions never wait for each other's counter rows in opposite orders.

Names: `jobs.status.<status>` (a gauge: jobs now in that status), `<histogram>.le.<bound>`
/ `.sum` / `.count` (per-bucket, not cumulative), `jobs.requeued.<reason>` (counters).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from hyfunc.store.models import Counter

_PENDING = "hyfunc_counter_deltas"

LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def status_key(status: str) -> str:
    return f"jobs.status.{status}"


def count(session: Session, name: str, delta: float = 1.0) -> None:
    """Add delta to counter `name` when this session's transaction commits."""
    if not delta:
        return
    pending: dict[str, float] = session.info.setdefault(_PENDING, {})
    pending[name] = pending.get(name, 0.0) + delta


def move(session: Session, old: str | None, new: str, n: int = 1) -> None:
    """n jobs went from status old (None: newly created) to new."""
    if n <= 0 or old == new:
        return
    if old is not None:
        count(session, status_key(old), -n)
    count(session, status_key(new), n)


def _bound(bound: float) -> str:
    return f"{bound:g}"


def observe(session: Session, histogram: str, value: float, buckets: Iterable[float]) -> None:
    """One observation into histogram `histogram` (the first bucket it fits, or +Inf)."""
    for bound in buckets:
        if value <= bound:
            count(session, f"{histogram}.le.{_bound(bound)}")
            break
    else:
        count(session, f"{histogram}.le.+Inf")
    count(session, f"{histogram}.sum", value)
    count(session, f"{histogram}.count")


def cumulative(values: Mapping[str, float], histogram: str, buckets: Iterable[float]) -> tuple[list[tuple[str, float]], float, float]:
    """Prometheus buckets (cumulative, +Inf last), sum and count of a stored histogram."""
    out, running = [], 0.0
    for bound in buckets:
        running += values.get(f"{histogram}.le.{_bound(bound)}", 0.0)
        out.append((_bound(bound), running))
    total = values.get(f"{histogram}.count", 0.0)
    out.append(("+Inf", total))
    return out, values.get(f"{histogram}.sum", 0.0), total


def read_counters(session: Session) -> dict[str, float]:
    """Every counter (a few dozen rows: the table is bounded by names, not by jobs)."""
    return {name: float(value) for name, value in session.execute(select(Counter.name, Counter.value)).tuples()}


def _apply(session: Session, deltas: Mapping[str, float]) -> None:
    rows = [{"name": k, "value": float(v)} for k, v in sorted(deltas.items()) if v]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    else:  # pragma: no cover - the store supports these two
        raise RuntimeError(f"counters need PostgreSQL or SQLite, not {dialect}")
    stmt = insert(Counter).values(rows)
    stmt = stmt.on_conflict_do_update(index_elements=[Counter.name], set_={"value": Counter.value + stmt.excluded.value})
    session.execute(stmt)


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    deltas = session.info.pop(_PENDING, None)
    if deltas:
        _apply(session, deltas)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
