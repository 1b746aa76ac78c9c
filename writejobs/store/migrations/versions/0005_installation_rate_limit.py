"""installation rate limit

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 12:00:00.000000

An installation's own provider rate limit (`{"max": N, "interval_ms": M}`), set by
`writejobs admin set-rate-limit`; NULL keeps the provider kind's default.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("installations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_limit", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("installations", schema=None) as batch_op:
        batch_op.drop_column("rate_limit")
