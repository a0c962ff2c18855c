"""Outbound events: event_endpoints, events (the outbox) and event_deliveries

Revision ID: 0008_events
Revises: 0007_receipts
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_events"
down_revision = "0007_receipts"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "event_endpoints",
        sa.Column("id", _ID, primary_key=True),
        sa.Column(
            "org_id",
            sa.BigInteger(),
            sa.ForeignKey("organizations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("event_types", sa.Text(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("removed_at", _WHEN, nullable=True),
    )
    op.create_index("ix_event_endpoints_org", "event_endpoints", ["org_id"])
    op.create_table(
        "events",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("event_id", sa.String(40), nullable=False, unique=True),
        sa.Column(
            "org_id",
            sa.BigInteger(),
            sa.ForeignKey("organizations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("reminder_id", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
    )
    op.create_index("ix_events_org_created", "events", ["org_id", "created_at"])
    op.create_index("ix_events_reminder", "events", ["reminder_id"])
    op.create_table(
        "event_deliveries",
        sa.Column("id", _ID, primary_key=True),
        sa.Column(
            "event_pk",
            sa.BigInteger(),
            sa.ForeignKey("events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "endpoint_id",
            sa.BigInteger(),
            sa.ForeignKey("event_endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("first_due_at", _WHEN, nullable=False),
        sa.Column("next_attempt_at", _WHEN, nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", _WHEN, nullable=True),
        sa.UniqueConstraint("event_pk", "endpoint_id", name="uq_event_deliveries_event_endpoint"),
        sa.CheckConstraint(
            "status IN ('pending','delivered','dead','cancelled')",
            name="ck_event_deliveries_status",
        ),
    )
    op.create_index("ix_event_deliveries_due", "event_deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_event_deliveries_endpoint", "event_deliveries", ["endpoint_id"])


def downgrade() -> None:
    op.drop_table("event_deliveries")
    op.drop_table("events")
    op.drop_table("event_endpoints")
