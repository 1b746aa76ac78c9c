"""partial operation indexes: only the rows their readers look for

Every move of an operation's state updates a column that is indexed, so it is
never a HOT update and adds an entry to every index whose predicate its new row
satisfies: an auto-batched record moves three times after its insert. Three of
the indexes serve readers that look for a small part of the table, so they hold
only that part now:

* `ix_operations_replay_of` (unique) and `ix_operations_batch_id` are looked up by
  value only: rows without a replay or a batch are left out.
* `ix_operations_state`, on PostgreSQL, holds the unfinished states and `expired`
  (the sweeps, the watchdog, the fleet's counts and the state metric ask for no
  other), so the move that ends an operation well adds nothing to it. SQLite's
  planner would not take it for `state IN (…)`, so there it stays whole.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_INDEXED_STATES = "state IN ('pending', 'queued', 'running', 'retrying', 'expired')"


def upgrade() -> None:
    op.drop_index("ix_operations_replay_of", table_name="operations")
    op.create_index(
        "ix_operations_replay_of",
        "operations",
        ["replay_of"],
        unique=True,
        postgresql_where=sa.text("replay_of IS NOT NULL"),
        sqlite_where=sa.text("replay_of IS NOT NULL"),
    )
    op.drop_index("ix_operations_batch_id", table_name="operations")
    op.create_index(
        "ix_operations_batch_id",
        "operations",
        ["batch_id"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
        sqlite_where=sa.text("batch_id IS NOT NULL"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_operations_state", table_name="operations")
        op.create_index(
            "ix_operations_state",
            "operations",
            ["state"],
            postgresql_where=sa.text(_INDEXED_STATES),
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_operations_state", table_name="operations")
        op.create_index("ix_operations_state", "operations", ["state"])
    op.drop_index("ix_operations_batch_id", table_name="operations")
    op.create_index("ix_operations_batch_id", "operations", ["batch_id"])
    op.drop_index("ix_operations_replay_of", table_name="operations")
    op.create_index("ix_operations_replay_of", "operations", ["replay_of"], unique=True)
