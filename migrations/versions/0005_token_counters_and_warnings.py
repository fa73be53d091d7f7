"""every token counter and the warnings on jobs: tokens_prompt_reused, tokens_prompt_computed, warnings

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Literal copies, not an import of hyfunc.stages: a migration must keep meaning what it meant when
# written. Nullable: jobs finished before this revision never recorded them.
COUNTERS = ("tokens_prompt_reused", "tokens_prompt_computed")


def upgrade() -> None:
    # Plain ALTERs, also on SQLite (ADD/DROP COLUMN since 3.35), as 0003.
    for name in COUNTERS:
        op.add_column('jobs', sa.Column(name, sa.Integer(), nullable=True))
    op.add_column('jobs', sa.Column('warnings', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'warnings')
    for name in reversed(COUNTERS):
        op.drop_column('jobs', name)
