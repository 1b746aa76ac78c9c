"""operator controls: installation pause, waiting, cancel requests, replays

Installations get `paused_at`/`paused_reason` (a paused installation's writes
wait); operations get `waiting_reason`/`waiting_since` (why a write waits
without an attempt), `cancel_requested_at` (a cancel that found it running) and
`replay_of` (unique: the operation whose failed records it writes again), and an
index for a project's dead letters by state, newest first.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, with no default: existing rows are unpaused, not waiting, no replays.
    op.add_column("installations", sa.Column("paused_at", sa.DateTime(timezone=True)))
    op.add_column("installations", sa.Column("paused_reason", sa.Text()))
    op.add_column("operations", sa.Column("waiting_reason", sa.String(100)))
    op.add_column("operations", sa.Column("waiting_since", sa.DateTime(timezone=True)))
    op.add_column("operations", sa.Column("cancel_requested_at", sa.DateTime(timezone=True)))
    op.add_column("operations", sa.Column("replay_of", sa.String(36)))
    op.create_index("ix_operations_replay_of", "operations", ["replay_of"], unique=True)
    op.create_index(
        "ix_operations_project_state_created",
        "operations",
        ["project_id", "state", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_operations_project_state_created", table_name="operations")
    op.drop_index("ix_operations_replay_of", table_name="operations")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("replay_of")
        batch.drop_column("cancel_requested_at")
        batch.drop_column("waiting_since")
        batch.drop_column("waiting_reason")
    with op.batch_alter_table("installations") as batch:
        batch.drop_column("paused_reason")
        batch.drop_column("paused_at")
