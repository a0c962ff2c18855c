"""Small builders for an organization, a customer and one ledger row, for the Twilio tests."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from itertools import count
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.db.models import Customer, Organization, Reminder, Subscription

_serial = count(1)


def make_org(engine: Engine, *, sender: str | None = None, slug: str | None = None) -> int:
    n = next(_serial)
    with Session(engine) as s, s.begin():
        org = Organization(
            slug=slug or f"org-{n}",
            name=f"Org {n}",
            timezone="UTC",
            send_time=time(9, 0),
            window_start=time(0, 0),
            window_end=time(0, 0),
            lead_days="5,3,1",
            country="US",
            sender=sender,
            rate_per_second=None,
            active=True,
            created_at=datetime.now(UTC),
        )
        s.add(org)
        s.flush()
        return org.id


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
    """A customer, an active subscription ending in 3 days, and its 3-day ledger row."""
    n = next(_serial)
    today = today or datetime.now(UTC).date()
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        customer = Customer(
            org_id=org_id, external_id=f"c{n}", name=f"Customer {n}", phone=phone, phone_e164=phone
        )
        s.add(customer)
        s.flush()
        expires = date.fromordinal(today.toordinal() + 3)
        sub = Subscription(
            org_id=org_id,
            customer_id=customer.id,
            external_id=f"s{n}",
            plan="Gold",
            expires_on=expires,
            status="active",
        )
        s.add(sub)
        s.flush()
        sender = s.scalar(select(Organization.sender).where(Organization.id == org_id))
        row = Reminder(
            org_id=org_id,
            subscription_id=sub.id,
            customer_id=customer.id,
            expires_on=expires,
            lead_days=3,
            local_date=today,
            days_left=3,
            phone=phone,
            sender=sender,
            status=status,
            body=body,
            attempts=values.pop("attempts", 1 if status != "pending" else 0),
            created_at=now,
            updated_at=now,
            **values,
        )
        s.add(row)
        s.flush()
        return row.id


def get_row(engine: Engine, row_id: int) -> Reminder:
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(Reminder, row_id)
        assert row is not None
        s.expunge(row)
        return row
