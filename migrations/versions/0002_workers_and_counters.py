"""workers heartbeat table and incremental counters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Literal copies, not imports: a migration must keep meaning what it meant when written.
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def upgrade() -> None:
    op.create_table('workers',
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('host', sa.String(length=256), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('queue', sa.String(length=256), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('last_heartbeat', sa.DateTime(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reserved', sa.Integer(), nullable=False),
    sa.CheckConstraint("status IN ('alive', 'stopped', 'dead')", name=op.f('ck_workers_status')),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_workers'))
    )
    counters = op.create_table('counters',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_counters'))
    )
    # Seed the per-status gauges from the jobs already stored (the only full count ever made).
    conn = op.get_bind()
    counts = dict(conn.execute(sa.text("SELECT status, count(*) FROM jobs GROUP BY status")).all())
    op.bulk_insert(counters, [{"name": f"jobs.status.{s}", "value": float(counts.get(s, 0))} for s in JOB_STATUSES])


def downgrade() -> None:
    op.drop_table('counters')
    op.drop_table('workers')
