"""early_receipts (status callbacks before their message id) and undeliverable_numbers

Revision ID: 0007_receipts
Revises: 0005_org_disabled
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_receipts"
# The lead re-chains this after merging (issue 14's other branches add their own).
down_revision = "0005_org_disabled"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "early_receipts",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("sid", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("phone_e164", sa.String(20), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("sid", "status", name="uq_early_receipts_sid_status"),
    )
    op.create_index("ix_early_receipts_received", "early_receipts", ["received_at"])
    op.create_table(
        "undeliverable_numbers",
        sa.Column("id", _ID, primary_key=True),
        sa.Column(
            "org_id",
            sa.BigInteger(),
            sa.ForeignKey("organizations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("phone_e164", sa.String(20), nullable=False),
        sa.Column("error_code", sa.String(32), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("org_id", "phone_e164", name="uq_undeliverable_org_phone"),
    )


def downgrade() -> None:
    op.drop_table("undeliverable_numbers")
    op.drop_index("ix_early_receipts_received", table_name="early_receipts")
    op.drop_table("early_receipts")
