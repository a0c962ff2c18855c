"""Numbers the provider said cannot take texts, per organization (``undeliverable_numbers``).

Marked from a status callback (Twilio 30005, 30006) or the answer to a send (21614); the
sender's re-check and planning skip texts to a marked number (``undeliverable``). The mark is
keyed by the number: a customer whose number is changed is texted again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from app.db.models import Customer, Reminder, UndeliverableNumber

#: The skip reason of a text to a marked number.
REASON = "undeliverable"


def mark(conn: Connection, *, org_id: int, phone_e164: str, code: str, now: datetime) -> bool:
    """Mark a number; True if it is new (idempotent through the unique key)."""
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(UndeliverableNumber)
        .values(org_id=org_id, phone_e164=phone_e164, error_code=code, since=now)
        .on_conflict_do_nothing()
        .returning(UndeliverableNumber.id)
    )
    return conn.execute(stmt).first() is not None


def mark_of_message(
    conn: Connection, *, sid: str, phone_e164: str | None, code: str, now: datetime
) -> bool:
    """Mark the number a ledger row's message went to: the callback's ``To`` when it has one,
    else the customer's number (what the sender sends to)."""
    found = conn.execute(
        select(Reminder.org_id, Customer.phone_e164)
        .join(Customer, Customer.id == Reminder.customer_id)
        .where(Reminder.provider_message_id == sid)
    ).first()
    if found is None:
        return False
    org_id, current = found
    number = phone_e164 or current
    if not number:
        return False
    return mark(conn, org_id=org_id, phone_e164=number, code=code, now=now)


def clear(conn: Connection, *, org_id: int, phone_e164: str) -> bool:
    result = conn.execute(
        delete(UndeliverableNumber).where(
            UndeliverableNumber.org_id == org_id, UndeliverableNumber.phone_e164 == phone_e164
        )
    )
    return bool(result.rowcount)


def counts(conn: Connection) -> dict[int, int]:
    """Marked numbers per organization."""
    stmt = select(UndeliverableNumber.org_id, func.count()).group_by(UndeliverableNumber.org_id)
    return {org_id: int(n) for org_id, n in conn.execute(stmt)}
