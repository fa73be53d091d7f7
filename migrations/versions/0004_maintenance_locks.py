"""maintenance_locks: one row per fleet-wide periodic task (the sweep), taken by a conditional UPDATE

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 06:30:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    locks = op.create_table('maintenance_locks',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=256), nullable=False),
    sa.Column('due_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_maintenance_locks'))
    )
    # The sweep's row exists from the start, due at once: taking a turn is then one UPDATE.
    op.bulk_insert(locks, [{"name": "sweep", "holder": "", "due_at": datetime(2000, 1, 1)}])


def downgrade() -> None:
    op.drop_table('maintenance_locks')
