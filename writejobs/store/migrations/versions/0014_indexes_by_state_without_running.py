"""the indexes by state and creation time hold no running operation (PostgreSQL)

An attempt's take (`queued` or `retrying` → `running`) is an UPDATE of the indexed
`state`, never a HOT update, so it added an entry to every index whose predicate
its new row met: the console's two (`ix_operations_installation_state_created`,
`ix_operations_installation_object_state_created`) and the dead letters'
(`ix_operations_project_state_created`) among them. They hold every state but
`running` now. The running rows are the attempts in flight, a few hundred at most
(each holds a lease, and a lapsed lease is taken over), and `ix_operations_state`
holds them: a reader that asks for `running` finds them there and filters by
installation, object or project. SQLite keeps the indexes whole.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_operations_installation_state_created": ["installation_id", "state", "created_at", "id"],
    "ix_operations_installation_object_state_created": [
        "installation_id",
        "object_name",
        "state",
        "created_at",
        "id",
    ],
    "ix_operations_project_state_created": ["project_id", "state", "created_at", "id"],
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns in _INDEXES.items():
        op.drop_index(name, table_name="operations")
        op.create_index(name, "operations", columns, postgresql_where=sa.text("state <> 'running'"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns in _INDEXES.items():
        op.drop_index(name, table_name="operations")
        op.create_index(name, "operations", columns)
