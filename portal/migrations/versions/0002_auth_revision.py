"""auth revision counter

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The row itself is seeded by `portal.auth.tables.seed_rows` after every upgrade. A database
    # adopted from `init_db` (see `portal.migrations.upgrade`) may have the table already.
    if sa.inspect(op.get_bind()).has_table("auth_revision"):
        return
    op.create_table(
        "auth_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("auth_revision")
