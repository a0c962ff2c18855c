"""The ledger's SQL: set-based planning, the conditional claim, and outcome records.

Every state change is one conditional UPDATE naming the state it expects, so two workers (or a
redelivered task) racing for the same row cannot both act on it: the database decides the winner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Connection, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from app.db.models import (
    Customer,
    OptOut,
    Organization,
    Reminder,
    Subscription,
)


def is_due(now: datetime) -> Any:
    """WHERE clause: the row's next attempt is due at ``now`` (or was never put off)."""
    return or_(Reminder.next_attempt_at.is_(None), Reminder.next_attempt_at <= now)


def due_ids(
    conn: Connection,
    *,
    now: datetime,
    org_ids: Iterable[int] | None = None,
    limit: int = 1000,
    after_id: int = 0,
) -> list[int]:
    """Pending rows whose next attempt is due, oldest id first."""
    stmt = (
        select(Reminder.id)
        .where(
            Reminder.status == "pending",
            is_due(now),
            Reminder.id > after_id,
        )
        .order_by(Reminder.id)
        .limit(limit)
    )
    if org_ids is not None:
        stmt = stmt.where(Reminder.org_id.in_(list(org_ids)))
    return list(conn.execute(stmt).scalars())


def hold_until(conn: Connection, ids: Sequence[int], *, until: datetime, now: datetime) -> int:
    """Pending rows wait for the send window: the next attempt moves to its opening."""
    if not ids:
        return 0
    result = conn.execute(
        update(Reminder)
        .where(Reminder.id.in_(list(ids)), Reminder.status == "pending")
        .values(next_attempt_at=until, updated_at=now)
    )
    return result.rowcount or 0


def claim(conn: Connection, ids: Sequence[int], *, now: datetime) -> list[int]:
    """The claim: ONE conditional UPDATE pending → sending. Returns the ids this caller won."""
    if not ids:
        return []
    stmt = (
        update(Reminder)
        .where(
            Reminder.id.in_(list(ids)),
            Reminder.status == "pending",
            is_due(now),
        )
        .values(
            status="sending",
            attempts=Reminder.attempts + 1,
            claimed_at=now,
            updated_at=now,
        )
        .returning(Reminder.id)
    )
    return sorted(conn.execute(stmt).scalars())


def release(conn: Connection, ids: Sequence[int], *, until: datetime) -> int:
    """Claimed rows that were not tried (no rate-limit slot soon enough) go back to pending;
    the claim's attempt is given back."""
    if not ids:
        return 0
    result = conn.execute(
        update(Reminder)
        .where(Reminder.id.in_(list(ids)), Reminder.status == "sending")
        .values(
            status="pending",
            attempts=Reminder.attempts - 1,
            next_attempt_at=until,
            claimed_at=None,
            updated_at=until,
        )
    )
    return result.rowcount or 0


@dataclass(frozen=True)
class ClaimedRow:
    """A claimed ledger row with what the sender needs to re-check and send it."""

    id: int
    org_id: int
    subscription_id: int
    lead_days: int
    days_left: int
    expires_on: date
    phone: str | None
    sender: str | None
    body: str | None
    attempts: int
    claimed_at: datetime | None
    sub_expires_on: date
    sub_status: str
    plan: str
    amount: Decimal | None
    currency: str | None
    customer_name: str
    phone_e164: str | None
    opted_out: bool


def load_claimed(conn: Connection, ids: Sequence[int]) -> list[ClaimedRow]:
    """The rows as they stand now, joined with today's subscription, customer and opt-out."""
    if not ids:
        return []
    opted = (
        select(OptOut.id)
        .where(OptOut.org_id == Reminder.org_id, OptOut.phone_e164 == Customer.phone_e164)
        .exists()
    )
    stmt = (
        select(
            Reminder.id,
            Reminder.org_id,
            Reminder.subscription_id,
            Reminder.lead_days,
            Reminder.days_left,
            Reminder.expires_on,
            Reminder.phone,
            Reminder.sender,
            Reminder.body,
            Reminder.attempts,
            Reminder.claimed_at,
            Subscription.expires_on,
            Subscription.status,
            Subscription.plan,
            Subscription.amount,
            Subscription.currency,
            Customer.name,
            Customer.phone_e164,
            opted,
        )
        .join(Subscription, Subscription.id == Reminder.subscription_id)
        .join(Customer, Customer.id == Reminder.customer_id)
        .where(Reminder.id.in_(list(ids)), Reminder.status == "sending")
        .order_by(Reminder.id)
    )
    return [ClaimedRow(*cast(Any, row)) for row in conn.execute(stmt)]


def add_opt_out(
    conn: Connection, *, org_id: int, phone_e164: str, source: str, now: datetime
) -> bool:
    """Record an opt-out; True if it is new. Idempotent through the unique key."""
    values = {"org_id": org_id, "phone_e164": phone_e164, "source": source, "created_at": now}
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(OptOut).values(**values).on_conflict_do_nothing().returning(OptOut.id)
    return conn.execute(stmt).first() is not None


def release_stale_sending(
    conn: Connection, *, older_than: datetime, now: datetime, to_status: str
) -> int:
    """Rows left in ``sending`` by a worker that died: ``unknown`` (ask the provider) or,
    for a provider that cannot be asked, back to ``pending``."""
    values: dict[str, Any] = {"status": to_status, "updated_at": now}
    if to_status == "pending":
        values["next_attempt_at"] = now
    else:
        values["reason"] = "outcome_unknown"
    result = conn.execute(
        update(Reminder)
        .where(Reminder.status == "sending", Reminder.claimed_at < older_than)
        .values(**values)
    )
    return result.rowcount or 0


def count_by_status(
    conn: Connection, *, org_ids: Iterable[int] | None = None, local_date: date | None = None
) -> dict[tuple[int, str], int]:
    stmt = select(Reminder.org_id, Reminder.status, func.count()).group_by(
        Reminder.org_id, Reminder.status
    )
    if org_ids is not None:
        stmt = stmt.where(Reminder.org_id.in_(list(org_ids)))
    if local_date is not None:
        stmt = stmt.where(Reminder.local_date == local_date)
    return {(org_id, status): n for org_id, status, n in conn.execute(stmt)}


def active_org_ids(conn: Connection, slugs: Sequence[str] | None = None) -> list[int]:
    stmt = select(Organization.id).where(Organization.active.is_(True)).order_by(Organization.id)
    if slugs:
        stmt = stmt.where(Organization.slug.in_(list(slugs)))
    return list(conn.execute(stmt).scalars())
