"""decoder stage timings: lms_wait_ms, program_ms, sample_ms on jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Literal copy, not an import of hyfunc.stages: a migration must keep meaning what it meant when written.
# Nullable: jobs finished before this revision never measured these stages.
COLUMNS = ("lms_wait_ms", "program_ms", "sample_ms")


def upgrade() -> None:
    # Plain ALTERs, also on SQLite (ADD/DROP COLUMN since 3.35): a batch rebuild of jobs would not
    # carry its CHECK constraints over.
    for name in COLUMNS:
        op.add_column('jobs', sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    for name in reversed(COLUMNS):
        op.drop_column('jobs', name)
