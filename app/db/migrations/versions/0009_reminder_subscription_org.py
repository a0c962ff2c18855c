"""The ledger's row belongs to its subscription's organization: one composite foreign key

``reminders (subscription_id, org_id) → subscriptions (id, org_id)`` ON DELETE CASCADE replaces
the two single-column keys ``org_id → organizations`` and ``subscription_id → subscriptions``.
It refuses what both refused (an unknown subscription; an unknown organization, since every
subscription's organization exists) and also a row whose organization is not its
subscription's. Deleting an organization still empties its ledger: through its subscriptions.
Each planned row costs one foreign-key check fewer (bench/plan_day.py). A subscription never
changes organization (the importer's and the API's upsert key is (org_id, external_id)).

The key needs a unique index on subscriptions (id, org_id): an index, not a table constraint,
so SQLite gets it without rebuilding subscriptions (a rebuild would drop the table its
ledger rows cascade from). On SQLite the ledger itself is rebuilt (batch mode), rows kept.

Revision ID: 0009_reminder_subscription_org
Revises: 0008_events
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_reminder_subscription_org"
down_revision = "0008_events"
branch_labels = None
depends_on = None

# Names for the foreign keys SQLite reflects without one (0001 named none; PostgreSQL named
# them reminders_<column>_fkey itself).
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_COMPOSITE = "fk_reminders_subscription_org"


def _fk_name(column: str, referred: str) -> str:
    """The ledger's foreign key on ``column`` as this database names it."""
    for fk in sa.inspect(op.get_bind()).get_foreign_keys("reminders"):
        if fk["constrained_columns"] == [column] and fk["referred_table"] == referred:
            return str(fk["name"] or f"fk_reminders_{column}_{referred}")
    raise RuntimeError(f"reminders has no foreign key on {column} to {referred}")


def upgrade() -> None:
    op.create_index("uq_subscriptions_id_org", "subscriptions", ["id", "org_id"], unique=True)
    org_fk = _fk_name("org_id", "organizations")
    subscription_fk = _fk_name("subscription_id", "subscriptions")
    with op.batch_alter_table("reminders", naming_convention=_NAMING) as batch:
        batch.drop_constraint(org_fk, type_="foreignkey")
        batch.drop_constraint(subscription_fk, type_="foreignkey")
        batch.create_foreign_key(
            _COMPOSITE,
            "subscriptions",
            ["subscription_id", "org_id"],
            ["id", "org_id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("reminders", naming_convention=_NAMING) as batch:
        batch.drop_constraint(_COMPOSITE, type_="foreignkey")
        batch.create_foreign_key(
            "reminders_org_id_fkey", "organizations", ["org_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_foreign_key(
            "reminders_subscription_id_fkey",
            "subscriptions",
            ["subscription_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.drop_index("uq_subscriptions_id_org", table_name="subscriptions")
