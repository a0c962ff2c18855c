"""The events outbox: events written in the transaction of the change that causes them, and
every change of a delivery's status.

An event is only written when an endpoint of its organization wants its type, and then once,
with one delivery row per such endpoint, in the caller's transaction: a change rolled back
leaves no event, a change committed always has its events. Deliveries move
``pending`` → ``delivered`` | ``dead`` (| ``cancelled`` when the endpoint goes); each attempt
is claimed with one conditional UPDATE that pushes ``next_attempt_at`` past a lease, so a
worker killed mid-request delays a delivery by the lease, never loses it (at least once; the
receiver deduplicates by event id).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)

from app.db.models import (
    Customer,
    Event,
    EventDelivery,
    EventEndpoint,
    Organization,
    Reminder,
    Subscription,
    aware_utc,
)
from app.domain import events
from app.domain.events import DeliveryStatus, EventType

PENDING, DELIVERED = DeliveryStatus.PENDING.value, DeliveryStatus.DELIVERED.value
DEAD, CANCELLED = DeliveryStatus.DEAD.value, DeliveryStatus.CANCELLED.value

#: Set in a connection's ``info`` when it wrote events: its commit may wake the delivery task.
WRITTEN = "events_written"

#: Ids per statement when events are made for many ledger rows at once (a day's skips).
_CHUNK = 900


def wants(type_: str) -> Any:
    """WHERE clause: a live endpoint that wants events of ``type_``."""
    listed = literal(",") + EventEndpoint.event_types + literal(",")
    return and_(EventEndpoint.removed_at.is_(None), listed.like(f"%,{type_},%"))


def wanted_sql(type_: str, *, org: str) -> str:
    """``wants`` as SQL text, for a statement written as text: whether the organization in
    column ``org`` has a live endpoint that wants events of ``type_``."""
    return (
        "EXISTS (SELECT 1 FROM event_endpoints AS e WHERE e.org_id = "
        f"{org} AND e.removed_at IS NULL AND (',' || e.event_types || ',') LIKE '%,{type_},%')"
    )


@dataclass(frozen=True)
class NewEvent:
    org_id: int
    type: str
    data: Mapping[str, Any]
    endpoints: tuple[int, ...]
    reminder_id: int | None = None


def _write(conn: Connection, new: Sequence[NewEvent], *, now: datetime) -> int:
    """The events and their deliveries: two statements whatever the number."""
    new = [e for e in new if e.endpoints]
    if not new:
        return 0
    rows = []
    for e in new:
        event_id = "evt_" + uuid.uuid4().hex
        payload = events.body(event_id=event_id, type_=e.type, at=now, data=e.data)
        rows.append(
            {
                "event_id": event_id,
                "org_id": e.org_id,
                "type": e.type,
                "reminder_id": e.reminder_id,
                "payload": payload,
                "created_at": now,
            }
        )
    ids = conn.execute(
        insert(Event).returning(Event.id, sort_by_parameter_order=True), rows
    ).scalars()
    deliveries = [
        {
            "event_pk": pk,
            "endpoint_id": endpoint,
            "status": PENDING,
            "attempts": 0,
            "first_due_at": now,
            "next_attempt_at": now,
        }
        for pk, e in zip(ids, new, strict=True)
        for endpoint in e.endpoints
    ]
    conn.execute(insert(EventDelivery), deliveries)
    conn.info[WRITTEN] = True
    return len(new)


def _endpoints(conn: Connection, org_ids: Iterable[int], type_: str) -> dict[int, tuple[int, ...]]:
    stmt = select(EventEndpoint.org_id, EventEndpoint.id).where(
        EventEndpoint.org_id.in_(sorted(set(org_ids))), wants(type_)
    )
    found: dict[int, list[int]] = {}
    for org_id, endpoint in conn.execute(stmt.order_by(EventEndpoint.id)):
        found.setdefault(org_id, []).append(endpoint)
    return {org: tuple(eps) for org, eps in found.items()}


# --- what makes events ------------------------------------------------------------------------


def message_rows(
    conn: Connection,
    type_: EventType,
    row_ids: Iterable[int],
    *,
    now: datetime,
    only_new: bool = False,
) -> int:
    """One ``type_`` event per ledger row (as the row now stands), for rows whose organization
    has an endpoint wanting it. With ``only_new``, rows that already have such an event are
    left out (planning's pages are made in one statement and told once)."""
    ids = sorted(set(row_ids))
    made = 0
    for start in range(0, len(ids), _CHUNK):
        made += _message_chunk(conn, type_, ids[start : start + _CHUNK], now, only_new)
    return made


def _message_chunk(
    conn: Connection, type_: EventType, ids: list[int], now: datetime, only_new: bool
) -> int:
    wanted = (
        select(EventEndpoint.id)
        .where(EventEndpoint.org_id == Reminder.org_id, wants(type_))
        .exists()
    )
    stmt = (
        select(
            Reminder.id,
            Reminder.org_id,
            Organization.slug,
            Customer.external_id,
            Subscription.external_id,
            Reminder.phone,
            Reminder.status,
            Reminder.reason,
            Reminder.error_code,
            Reminder.error_message,
            Reminder.delivery_status,
            Reminder.provider_message_id,
            Reminder.lead_days,
            Reminder.days_left,
            Reminder.expires_on,
            Reminder.local_date,
            Reminder.attempts,
            Reminder.sent_at,
        )
        .join(Organization, Organization.id == Reminder.org_id)
        .join(Customer, Customer.id == Reminder.customer_id)
        .join(Subscription, Subscription.id == Reminder.subscription_id)
        .where(Reminder.id.in_(ids), wanted)
        .order_by(Reminder.id)
    )
    if only_new:
        told = (
            select(Event.id)
            .where(Event.reminder_id == Reminder.id, Event.type == type_.value)
            .exists()
        )
        stmt = stmt.where(~told)
    rows = conn.execute(stmt).all()
    if not rows:
        return 0
    endpoints = _endpoints(conn, (r.org_id for r in rows), type_)
    return _write(
        conn,
        [
            NewEvent(
                org_id=r.org_id,
                type=type_.value,
                reminder_id=r[0],
                endpoints=endpoints.get(r.org_id, ()),
                data=_message_data(r),
            )
            for r in rows
        ],
        now=now,
    )


def _message_data(r: Any) -> dict[str, Any]:
    return {
        "organization": r.slug,
        "message_id": r[0],
        "customer_id": r[3],
        "subscription_id": r[4],
        "phone": r.phone,
        "status": r.status,
        "reason": r.reason,
        "error_code": r.error_code,
        "error_message": r.error_message,
        "delivery_status": r.delivery_status,
        "provider_message_id": r.provider_message_id,
        "lead_days": r.lead_days,
        "days_left": r.days_left,
        "expires_on": r.expires_on.isoformat(),
        "local_date": r.local_date.isoformat(),
        "attempts": r.attempts,
        "sent_at": events.iso(r.sent_at) if r.sent_at else None,
    }


def planned(
    conn: Connection, *, org_days: Mapping[int, date], created_at: datetime, now: datetime
) -> int:
    """Planning's rows that will never be tried (skipped: opted out, invalid number,
    undeliverable …; failed: the template went past a bound), planned at ``created_at`` for
    these organizations' days: one event each, once. Nothing is read for organizations with
    no endpoint wanting them."""
    made = 0
    never_tried = (("skipped", EventType.MESSAGE_SKIPPED), ("failed", EventType.MESSAGE_FAILED))
    for status, type_ in never_tried:
        told = _endpoints(conn, org_days, type_)
        if not told:
            continue
        ids = conn.execute(
            select(Reminder.id).where(
                tuple_(Reminder.org_id, Reminder.local_date).in_(
                    [(org_id, org_days[org_id]) for org_id in sorted(told)]
                ),
                Reminder.created_at == created_at,
                Reminder.status == status,
            )
        ).scalars()
        made += message_rows(conn, type_, list(ids), now=now, only_new=True)
    return made


def opt_outs(
    conn: Connection,
    type_: EventType,
    changes: Iterable[tuple[int, str, str]],
    *,
    now: datetime,
) -> int:
    """``optout.created`` / ``optout.removed`` for (organization id, E.164 number, source)."""
    changes = list(changes)
    if not changes:
        return 0
    org_ids = {org_id for org_id, _, _ in changes}
    endpoints = _endpoints(conn, org_ids, type_)
    if not endpoints:
        return 0
    slugs = {
        org_id: slug
        for org_id, slug in conn.execute(
            select(Organization.id, Organization.slug).where(Organization.id.in_(endpoints))
        )
    }
    customers: dict[tuple[int, str], list[str]] = {}
    for org_id, phone, ext in conn.execute(
        select(Customer.org_id, Customer.phone_e164, Customer.external_id)
        .where(Customer.phone_e164.is_not(None))
        .where(
            Customer.org_id.in_(endpoints),
            Customer.phone_e164.in_(sorted({phone for _, phone, _ in changes})),
        )
        .order_by(Customer.external_id)
    ):
        customers.setdefault((org_id, str(phone)), []).append(ext)
    return _write(
        conn,
        [
            NewEvent(
                org_id=org_id,
                type=type_.value,
                endpoints=endpoints.get(org_id, ()),
                data={
                    "organization": slugs.get(org_id),
                    "phone": phone,
                    "source": source,
                    "customer_ids": customers.get((org_id, phone), []),
                    "at": events.iso(now),
                },
            )
            for org_id, phone, source in changes
        ],
        now=now,
    )


def day_completed(
    conn: Connection,
    *,
    org_id: int,
    slug: str,
    local_date: date,
    counts: Mapping[str, int],
    started_at: datetime | None,
    now: datetime,
) -> int:
    """``day.completed``: an organization's day has nothing left to send; its counts."""
    endpoints = _endpoints(conn, [org_id], EventType.DAY_COMPLETED)
    return _write(
        conn,
        [
            NewEvent(
                org_id=org_id,
                type=EventType.DAY_COMPLETED.value,
                endpoints=endpoints.get(org_id, ()),
                data={
                    "organization": slug,
                    "date": local_date.isoformat(),
                    "counts": dict(sorted(counts.items())),
                    "started_at": events.iso(started_at) if started_at else None,
                    "completed_at": events.iso(now),
                },
            )
        ],
        now=now,
    )


# --- deliveries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    """A delivery claimed for one attempt."""

    id: int
    attempt: int
    first_due_at: datetime
    endpoint_id: int
    url: str
    secret: str
    event_id: str
    type: str
    payload: str


def claim_due(conn: Connection, *, now: datetime, lease_until: datetime, limit: int) -> list[Due]:
    """Take up to ``limit`` due deliveries for one attempt each: ONE conditional UPDATE moves
    their next attempt to ``lease_until`` and counts the attempt, so two workers never take the
    same one, and one that dies leaves it due again when the lease runs out."""
    due = (
        select(EventDelivery.id)
        .where(EventDelivery.status == PENDING, EventDelivery.next_attempt_at <= now)
        .order_by(EventDelivery.next_attempt_at, EventDelivery.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    claimed = conn.execute(
        update(EventDelivery)
        .where(
            EventDelivery.id.in_(due.scalar_subquery()),
            EventDelivery.status == PENDING,
            EventDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=lease_until, attempts=EventDelivery.attempts + 1)
        .returning(EventDelivery.id, EventDelivery.attempts)
    ).all()
    if not claimed:
        return []
    attempts = dict(claimed)
    rows = conn.execute(
        select(
            EventDelivery.id,
            EventDelivery.first_due_at,
            EventEndpoint.id,
            EventEndpoint.url,
            EventEndpoint.secret,
            Event.event_id,
            Event.type,
            Event.payload,
        )
        .join(Event, Event.id == EventDelivery.event_pk)
        .join(EventEndpoint, EventEndpoint.id == EventDelivery.endpoint_id)
        .where(EventDelivery.id.in_(list(attempts)))
        .order_by(EventDelivery.id)
    ).all()
    return [Due(r[0], attempts[r[0]], r[1], *r[2:]) for r in rows]


@dataclass(frozen=True)
class Delivered:
    id: int
    attempt: int
    status_code: int


@dataclass(frozen=True)
class NotDelivered:
    """The attempt failed: try again at ``retry_at``, or (None) the delivery is dead."""

    id: int
    attempt: int
    status_code: int | None
    error: str
    retry_at: datetime | None


Result = Delivered | NotDelivered

_THIS_ATTEMPT = and_(
    EventDelivery.id == bindparam("d_id"),
    EventDelivery.status == PENDING,
    EventDelivery.attempts == bindparam("d_attempt"),
)


def record(conn: Connection, results: Sequence[Result], *, now: datetime) -> int:
    """Write attempts' results; one whose delivery was replayed or cancelled meanwhile moves
    nothing (its attempt is no longer the current one)."""
    delivered = [
        {"d_id": r.id, "d_attempt": r.attempt, "d_code": r.status_code}
        for r in results
        if isinstance(r, Delivered)
    ]
    failed = [
        {
            "d_id": r.id,
            "d_attempt": r.attempt,
            "d_code": r.status_code,
            "d_error": r.error[:500],
            "d_status": DEAD if r.retry_at is None else PENDING,
            "d_next": r.retry_at or now,
        }
        for r in results
        if isinstance(r, NotDelivered)
    ]
    moved = 0
    if delivered:
        stmt = (
            update(EventDelivery)
            .where(_THIS_ATTEMPT)
            .values(
                status=DELIVERED,
                delivered_at=now,
                last_status=bindparam("d_code"),
                last_error=None,
            )
        )
        moved += conn.execute(stmt, delivered).rowcount or 0
    if failed:
        stmt = (
            update(EventDelivery)
            .where(_THIS_ATTEMPT)
            .values(
                status=bindparam("d_status"),
                next_attempt_at=bindparam("d_next", type_=EventDelivery.next_attempt_at.type),
                last_status=bindparam("d_code"),
                last_error=bindparam("d_error"),
            )
        )
        moved += conn.execute(stmt, failed).rowcount or 0
    return moved


def next_due(conn: Connection) -> datetime | None:
    """When the first pending delivery is due (None: none is)."""
    return conn.execute(
        select(func.min(EventDelivery.next_attempt_at)).where(EventDelivery.status == PENDING)
    ).scalar()


def cancel_for_endpoint(conn: Connection, endpoint_id: int) -> int:
    """A removed endpoint's deliveries not yet made are cancelled."""
    result = conn.execute(
        update(EventDelivery)
        .where(EventDelivery.endpoint_id == endpoint_id, EventDelivery.status == PENDING)
        .values(status=CANCELLED)
    )
    return result.rowcount or 0


def replay(
    conn: Connection,
    *,
    now: datetime,
    org_id: int | None = None,
    event_ids: Sequence[str] = (),
    statuses: Sequence[str] = (DEAD,),
) -> int:
    """Deliveries (of these events, or all in ``statuses``) due again now, with a fresh retry
    period; those to a removed endpoint stay as they are."""
    live = select(EventEndpoint.id).where(EventEndpoint.removed_at.is_(None))
    which = [EventDelivery.endpoint_id.in_(live.scalar_subquery())]
    if event_ids:
        picked = select(Event.id).where(Event.event_id.in_(list(event_ids)))
        which.append(EventDelivery.event_pk.in_(picked.scalar_subquery()))
    else:
        which.append(EventDelivery.status.in_(list(statuses)))
    if org_id is not None:
        mine = select(EventEndpoint.id).where(EventEndpoint.org_id == org_id)
        which.append(EventDelivery.endpoint_id.in_(mine.scalar_subquery()))
    result = conn.execute(
        update(EventDelivery)
        .where(*which)
        .values(status=PENDING, first_due_at=now, next_attempt_at=now, delivered_at=None)
    )
    return result.rowcount or 0


def purge(conn: Connection, *, before: datetime, limit: int) -> int:
    """Events made before ``before`` with nothing left to deliver, and their deliveries: up to
    ``limit`` events; how many went. A pending one stays whatever its age."""
    waiting = select(EventDelivery.id).where(
        EventDelivery.event_pk == Event.id, EventDelivery.status == PENDING
    )
    pick = [
        pk
        for pk in conn.execute(
            select(Event.id)
            .where(Event.created_at < before, ~waiting.exists())
            .order_by(Event.id)
            .limit(limit)
        ).scalars()
    ]
    if not pick:
        return 0
    conn.execute(delete(EventDelivery).where(EventDelivery.event_pk.in_(pick)))
    return conn.execute(delete(Event).where(Event.id.in_(pick))).rowcount or 0


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryView:
    event_id: str
    type: str
    organization: str
    endpoint_id: int
    url: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    payload: str


def deliveries(
    conn: Connection,
    *,
    org_id: int | None = None,
    status: str | None = None,
    type_: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[tuple[int, DeliveryView]]:
    """Deliveries, newest first, with what their events said: (delivery id, view)."""
    stmt = (
        select(
            EventDelivery.id,
            Event.event_id,
            Event.type,
            Organization.slug,
            EventEndpoint.id,
            EventEndpoint.url,
            EventDelivery.status,
            EventDelivery.attempts,
            Event.created_at,
            EventDelivery.next_attempt_at,
            EventDelivery.delivered_at,
            EventDelivery.last_status,
            EventDelivery.last_error,
            Event.payload,
        )
        .join(Event, Event.id == EventDelivery.event_pk)
        .join(EventEndpoint, EventEndpoint.id == EventDelivery.endpoint_id)
        .join(Organization, Organization.id == Event.org_id)
        .order_by(EventDelivery.id.desc())
        .limit(limit)
    )
    if org_id is not None:
        stmt = stmt.where(Event.org_id == org_id)
    if status is not None:
        stmt = stmt.where(EventDelivery.status == status)
    if type_ is not None:
        stmt = stmt.where(Event.type == type_)
    if before_id is not None:
        stmt = stmt.where(EventDelivery.id < before_id)
    out = []
    for r in conn.execute(stmt):
        view = DeliveryView(*cast(Any, r[1:]))
        if view.status != PENDING:  # only a pending delivery has a next attempt
            view = replace(view, next_attempt_at=None)
        out.append((r[0], view))
    return out


@dataclass(frozen=True)
class Backlog:
    """One organization's deliveries not made: waiting (and since when the oldest was first
    due) and dead."""

    waiting: int = 0
    waiting_since: datetime | None = None
    dead: int = 0


def backlogs(conn: Connection) -> dict[int, Backlog]:
    """Per organization, its deliveries waiting and dead: one statement."""
    stmt = (
        select(
            Event.org_id,
            EventDelivery.status,
            func.count(),
            func.min(EventDelivery.first_due_at),
        )
        .join(Event, Event.id == EventDelivery.event_pk)
        .where(EventDelivery.status.in_([PENDING, DEAD]))
        .group_by(Event.org_id, EventDelivery.status)
    )
    out: dict[int, Backlog] = {}
    for org_id, status, n, since in conn.execute(stmt):
        old = out.get(org_id, Backlog())
        if status == PENDING:
            out[org_id] = Backlog(int(n), aware_utc(since), old.dead)
        else:
            out[org_id] = Backlog(old.waiting, old.waiting_since, int(n))
    return out


def counts(conn: Connection, *, org_id: int | None = None) -> dict[str, int]:
    """Deliveries per status."""
    stmt = select(EventDelivery.status, func.count()).group_by(EventDelivery.status)
    if org_id is not None:
        stmt = stmt.join(Event, Event.id == EventDelivery.event_pk).where(Event.org_id == org_id)
    return {status: int(n) for status, n in conn.execute(stmt)}
