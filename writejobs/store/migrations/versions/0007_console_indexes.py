"""console indexes

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 12:00:00.000000

The operations console filters an installation's operations by state and by
object, newest first (store/console_queries.py). Each filter reads one keyset
range per state of one of these indexes, so a page or a bounded count costs the
same on a million rows as on a hundred.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_operations_installation_state_created",
        "operations",
        ["installation_id", "state", "created_at", "id"],
    )
    op.create_index(
        "ix_operations_installation_object_state_created",
        "operations",
        ["installation_id", "object_name", "state", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_operations_installation_object_state_created", table_name="operations")
    op.drop_index("ix_operations_installation_state_created", table_name="operations")
