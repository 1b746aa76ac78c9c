"""operation_logs.operation_id without a foreign key

Every log line an operation gets (five for an auto-batched record) paid a
referential check on PostgreSQL: a trigger that looks the operation up and
locks it `FOR KEY SHARE`, about as much work as the line's own insert. It guards
nothing a reader sees: a line is read only through its operation (the logs
endpoint and the console find the operation first, in the caller's project,
then its lines by `ix_operation_logs_operation`), every line is written by code
holding an operation it just inserted, moved or read, and operations are never
deleted.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 11:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# PostgreSQL's own name for it; SQLite's is unnamed, so batch mode names it by this.
_NAME = "operation_logs_operation_id_fkey"
_NAMING = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}


def upgrade() -> None:
    with op.batch_alter_table("operation_logs", naming_convention=_NAMING) as batch:
        batch.drop_constraint(_NAME, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("operation_logs", naming_convention=_NAMING) as batch:
        batch.create_foreign_key(_NAME, "operations", ["operation_id"], ["id"])
