"""operations.handoff_failed_at: a committed operation Redis could not take at intake

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:55:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("handoff_failed_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            "ix_operations_handoff_failed",
            ["handoff_failed_at"],
            unique=False,
            postgresql_where=sa.text("handoff_failed_at IS NOT NULL"),
            sqlite_where=sa.text("handoff_failed_at IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_index("ix_operations_handoff_failed")
        batch_op.drop_column("handoff_failed_at")
