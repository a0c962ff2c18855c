"""reminders' provider message id index only for rows that have one

A planned row has no message id yet: with the index partial, planning a day (and claiming its
rows) writes no entry there, while the status callbacks' lookups by id use it as before.

Revision ID: 0009_plan_indexes
Revises: 0007_receipts
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_plan_indexes"
# The lead re-chains this after merging (issue 17's other branches add their own).
down_revision = "0007_receipts"
branch_labels = None
depends_on = None

_HAS_ID = sa.text("provider_message_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_reminders_provider_id", table_name="reminders")
    op.create_index(
        "ix_reminders_provider_id",
        "reminders",
        ["provider_message_id"],
        postgresql_where=_HAS_ID,
        sqlite_where=_HAS_ID,
    )


def downgrade() -> None:
    op.drop_index("ix_reminders_provider_id", table_name="reminders")
    op.create_index("ix_reminders_provider_id", "reminders", ["provider_message_id"])
