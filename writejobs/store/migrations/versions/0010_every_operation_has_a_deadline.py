"""every operation has a deadline

Synchronous writes had none, so one whose API process died holding it could
stay `running` for good. Existing rows without one get their accepted time plus
the default synchronous lease (`WRITEJOBS_SYNC_LEASE_S`, 300 s), the deadline a
synchronous write gets now.

Revision ID: 0010
Revises: 0009 (operation hand-off)
Create Date: 2026-12-01 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

LEASE_S = 300


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        later = f"datetime(created_at, '+{LEASE_S} seconds')"
    else:
        later = f"created_at + interval '{LEASE_S} seconds'"
    op.execute(f"UPDATE operations SET deadline_at = {later} WHERE deadline_at IS NULL")
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.alter_column(
            "deadline_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.alter_column(
            "deadline_at", existing_type=sa.DateTime(timezone=True), nullable=True
        )
