"""natural keys per installation object

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 11:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: existing installations have no natural keys, and NULL reads as none.
    op.add_column("installations", sa.Column("natural_keys", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("installations") as batch:
        batch.drop_column("natural_keys")
