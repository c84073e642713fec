"""tool pins

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database adopted from `init_db` (see `portal.migrations.upgrade`) may have all of it already.
    inspector = sa.inspect(op.get_bind())
    if "trust_new_tools" not in {column["name"] for column in inspector.get_columns("registry_servers")}:
        with op.batch_alter_table("registry_servers", schema=None) as batch_op:
            batch_op.add_column(sa.Column("trust_new_tools", sa.Boolean(), nullable=False, server_default=sa.false()))
    if not inspector.has_table("tool_pin_servers"):
        op.create_table(
            "tool_pin_servers",
            sa.Column("server", sa.String(length=32), nullable=False),
            sa.Column("revision", sa.Integer(), nullable=False),
            sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("server"),
        )
    if not inspector.has_table("tool_pins"):
        op.create_table(
            "tool_pins",
            sa.Column("server", sa.String(length=32), nullable=False),
            sa.Column("tool", sa.String(length=255), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("pinned", sa.Text(), nullable=True),
            sa.Column("pinned_sha256", sa.String(length=64), nullable=True),
            sa.Column("current", sa.Text(), nullable=True),
            sa.Column("current_sha256", sa.String(length=64), nullable=True),
            sa.Column("flags", sa.JSON(), nullable=False),
            sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("server", "tool"),
        )


def downgrade() -> None:
    op.drop_table("tool_pins")
    op.drop_table("tool_pin_servers")
    with op.batch_alter_table("registry_servers", schema=None) as batch_op:
        batch_op.drop_column("trust_new_tools")
