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

from sqlalchemy import Connection, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from app.db.models import (
    Customer,
    OptOut,
    Organization,
    Reminder,
    Subscription,
)
from app.domain.rules import MAY_HAVE_SENT


def is_due(now: datetime) -> Any:
    """WHERE clause: the row's next attempt is due at ``now`` (or was never put off)."""
    return or_(Reminder.next_attempt_at.is_(None), Reminder.next_attempt_at <= now)


HELD = "held"  # the reason of a pending row waiting for its window to open
DEFERRED = "deferred"  # ... of one put back for a later rate-limit slot (or a new local day)


def is_sendable(now: datetime, *, release_held: bool = False) -> Any:
    """WHERE clause: due at ``now``; with ``release_held`` (``--ignore-window``) also the rows
    held for the window, whenever it opens."""
    due = is_due(now)
    return or_(due, Reminder.reason == HELD) if release_held else due


def due_ids(
    conn: Connection,
    *,
    now: datetime,
    org_ids: Iterable[int] | None = None,
    limit: int = 1000,
    after_id: int = 0,
    release_held: bool = False,
    reason: str | None = None,
) -> list[int]:
    """Pending rows whose next attempt is due (with this reason), oldest id first."""
    stmt = (
        select(Reminder.id)
        .where(
            Reminder.status == "pending",
            is_sendable(now, release_held=release_held),
            Reminder.id > after_id,
        )
        .order_by(Reminder.id)
        .limit(limit)
    )
    if org_ids is not None:
        stmt = stmt.where(Reminder.org_id.in_(list(org_ids)))
    if reason is not None:
        stmt = stmt.where(Reminder.reason == reason)
    return list(conn.execute(stmt).scalars())


def next_attempt(conn: Connection, *, org_ids: Iterable[int], reason: str) -> datetime | None:
    """When the first ``pending`` row of these organizations with this reason is due."""
    stmt = select(func.min(Reminder.next_attempt_at)).where(
        Reminder.status == "pending",
        Reminder.reason == reason,
        Reminder.org_id.in_(list(org_ids)),
    )
    return conn.execute(stmt).scalar()


def held_until(conn: Connection) -> dict[int, datetime]:
    """Per organization, when its held texts' window opens (the earliest)."""
    stmt = (
        select(Reminder.org_id, func.min(Reminder.next_attempt_at))
        .where(Reminder.status == "pending", Reminder.reason == HELD)
        .group_by(Reminder.org_id)
    )
    return {org_id: at for org_id, at in conn.execute(stmt) if at is not None}


def count_due(
    conn: Connection, *, now: datetime, org_ids: Iterable[int], release_held: bool = False
) -> int:
    stmt = select(func.count()).where(
        Reminder.status == "pending",
        is_sendable(now, release_held=release_held),
        Reminder.org_id.in_(list(org_ids)),
    )
    return int(conn.execute(stmt).scalar_one())


def hold_until(conn: Connection, ids: Sequence[int], *, until: datetime, now: datetime) -> int:
    """Pending rows wait for the send window: the next attempt moves to its opening."""
    if not ids:
        return 0
    result = conn.execute(
        update(Reminder)
        .where(Reminder.id.in_(list(ids)), Reminder.status == "pending")
        .values(next_attempt_at=until, updated_at=now, reason=HELD)
    )
    return result.rowcount or 0


def requeue_expired(
    conn: Connection, row_id: int, *, message_sid: str, until: datetime, now: datetime
) -> bool:
    """A text the provider dropped from its queue unsent (Twilio's 30036: its validity period,
    the window's close, passed) waits for the next opening instead of counting as sent."""
    result = conn.execute(
        update(Reminder)
        .where(
            Reminder.id == row_id,
            Reminder.status == "sent",
            Reminder.provider_message_id == message_sid,
        )
        .values(
            status="pending",
            reason=HELD,
            next_attempt_at=until,
            provider_message_id=None,
            delivery_status=None,
            sent_at=None,
            error_code="30036",
            error_message="expired in the provider's queue before the window closed; "
            "sent again when it opens",
            updated_at=now,
        )
    )
    return bool(result.rowcount)


def claim(
    conn: Connection, ids: Sequence[int], *, now: datetime, release_held: bool = False
) -> list[int]:
    """The claim: ONE conditional UPDATE pending → sending. Returns the ids this caller won."""
    if not ids:
        return []
    stmt = (
        update(Reminder)
        .where(
            Reminder.id.in_(list(ids)),
            Reminder.status == "pending",
            is_sendable(now, release_held=release_held),
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


def rekey(conn: Connection, row_id: int, *, lead: int, days_left: int, now: datetime) -> bool:
    """A claimed row takes the lead and count of the day it is really sent on (R3).

    The ledger's unique key (subscription, expiry, lead) decides: when another row already
    holds that lead, this one cannot take it (False) and must not be sent (R1). A savepoint
    keeps the caller's transaction usable after the refused UPDATE.
    """
    try:
        with conn.begin_nested():
            result = conn.execute(
                update(Reminder)
                .where(Reminder.id == row_id, Reminder.status == "sending")
                .values(lead_days=lead, days_left=days_left, updated_at=now)
            )
    except IntegrityError:
        return False
    return bool(result.rowcount)


def put_back(
    conn: Connection, ids: Sequence[int], *, until: datetime, reason: str, now: datetime
) -> int:
    """Claimed rows that were not tried go back to ``pending`` until ``until``, the claim's
    attempt given back: ``DEFERRED`` (no rate-limit slot soon enough, or a new local day came
    before they left), ``HELD`` (their window closed first)."""
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
            reason=reason,
            # A deferred row counts as never handed over until it is due (dispatch's rule).
            updated_at=until if reason == DEFERRED else now,
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
    nearest_sent: int | None  # fewest days left of this expiry's other texts that may be out


def load_claimed(conn: Connection, ids: Sequence[int]) -> list[ClaimedRow]:
    """The rows as they stand now, joined with today's subscription, customer and opt-out."""
    if not ids:
        return []
    opted = (
        select(OptOut.id)
        .where(OptOut.org_id == Reminder.org_id, OptOut.phone_e164 == Customer.phone_e164)
        .exists()
    )
    other = aliased(Reminder)
    nearest_sent = (
        select(func.min(other.days_left))
        .where(
            and_(
                other.subscription_id == Reminder.subscription_id,
                other.expires_on == Reminder.expires_on,
                other.id != Reminder.id,
                other.status.in_(sorted(MAY_HAVE_SENT)),
            )
        )
        .scalar_subquery()
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
            nearest_sent,
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
