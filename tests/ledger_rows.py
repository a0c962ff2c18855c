"""One ledger row in a chosen state, built on the shared factories, for the Twilio tests."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import count
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from app.db.models import Organization, Reminder, Subscription
from tests import factories

_serial = count(1)


def make_org(engine: Engine, *, sender: str | None = None) -> int:
    extra = {"sender": sender} if sender else {}
    return factories.make_org(
        engine, f"org-{next(_serial)}", now=datetime.now(UTC), send_window="00:00-00:00", **extra
    )


def make_row(
    engine: Engine,
    org_id: int,
    *,
    phone: str = "+14155552671",
    body: str = "Your plan ends in 3 days",
    status: str = "pending",
    today: date | None = None,
    **values: Any,
) -> int:
    """A customer whose subscription ends in 3 days, and its 3-day reminder in ``status``."""
    today = today or datetime.now(UTC).date()
    now = datetime.now(UTC)
    expires = today + timedelta(days=3)
    sub_id = factories.add_subscription(engine, org_id, expires_on=expires, phone=phone)
    with engine.begin() as conn:
        customer_id = conn.execute(
            select(Subscription.customer_id).where(Subscription.id == sub_id)
        ).scalar_one()
        sender = conn.execute(
            select(Organization.sender).where(Organization.id == org_id)
        ).scalar_one()
        inserted = conn.execute(
            insert(Reminder).values(
                org_id=org_id,
                subscription_id=sub_id,
                customer_id=customer_id,
                expires_on=expires,
                lead_days=3,
                local_date=today,
                days_left=3,
                phone=phone,
                sender=sender,
                status=status,
                body=body,
                attempts=values.pop("attempts", 0 if status == "pending" else 1),
                created_at=now,
                updated_at=now,
                **values,
            )
        ).inserted_primary_key
    assert inserted is not None
    return int(inserted[0])


def get_row(engine: Engine, row_id: int) -> Reminder:
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(Reminder, row_id)
        assert row is not None
        s.expunge(row)
        return row
