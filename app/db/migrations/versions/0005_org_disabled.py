"""organizations.disabled_at (`reminders org disable`) and test_messages (`reminders send-test`)

Revision ID: 0005_org_disabled
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_org_disabled"
# The lead rewires this onto 0004 after merging; 0003 is today's head (its id is "0003").
down_revision = "0004_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "test_messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column(
            "org_id",
            sa.BigInteger(),
            sa.ForeignKey("organizations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("phone", sa.String(20), nullable=False),
        sa.Column("sender", sa.String(64), nullable=True),
        sa.Column("lead_days", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("segments", sa.Integer(), nullable=False),
        sa.Column("encoding", sa.String(8), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("provider_message_id", sa.String(64), nullable=True),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_test_messages_org_created", "test_messages", ["org_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_test_messages_org_created", table_name="test_messages")
    op.drop_table("test_messages")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("disabled_at")
