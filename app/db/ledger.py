"""The ledger's SQL: set-based planning, the conditional claim, and outcome records.

Every state change is one conditional UPDATE naming the state it expects, so two workers (or a
redelivered task) racing for the same row cannot both act on it: the database decides the winner.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Connection, bindparam, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from app.db.models import (
    Customer,
    OptOut,
    Organization,
    Reminder,
    Subscription,
    UTCDateTime,
)

# Orgs per planning statement: keeps the IN list well under every driver's parameter limit.
_ORGS_PER_STATEMENT = 900


@dataclass(frozen=True)
class OrgDay:
    """One organization's planning input: its local "today" and its lead days."""

    org_id: int
    local_date: date
    leads: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]  # (days_left, lead) pairs, from domain.planning


def plan_rows(conn: Connection, org_days: Sequence[OrgDay], *, now: datetime) -> int:
    """Insert every due ledger row for these organization-days; return how many were new.

    One INSERT … SELECT … ON CONFLICT DO NOTHING per group of organizations sharing a local
    date and lead days (usually a handful of statements for a whole day): the unique key
    (subscription, expiry, lead day) makes a re-run or a concurrent run insert nothing twice.
    Opted-out and invalid numbers are inserted as ``skipped`` with the reason, so the status
    report can say why a customer got no text.
    """
    groups: dict[tuple[date, tuple[tuple[int, int], ...]], list[int]] = {}
    for od in org_days:
        if od.offsets:
            groups.setdefault((od.local_date, od.offsets), []).append(od.org_id)
    inserted = 0
    for (local_date, offsets), org_ids in groups.items():
        rows = ",".join(f"(:l{j}, :k{j}, :e{j})" for j in range(len(offsets)))
        params: dict[str, Any] = {"now": now, "local_date": local_date}
        for j, (days_left, lead) in enumerate(offsets):
            params.update(
                {f"l{j}": days_left, f"k{j}": lead, f"e{j}": local_date + timedelta(days=days_left)}
            )
        stmt = text(_plan_sql(conn.dialect.name, rows)).bindparams(
            bindparam("now", type_=UTCDateTime()), bindparam("orgs", expanding=True)
        )
        for start in range(0, len(org_ids), _ORGS_PER_STATEMENT):
            chunk = org_ids[start : start + _ORGS_PER_STATEMENT]
            result = conn.execute(stmt, {**params, "orgs": chunk})
            inserted += max(result.rowcount or 0, 0)
    return inserted


def _plan_sql(dialect: str, values: str) -> str:
    cast_date = "CAST({} AS DATE)" if dialect == "postgresql" else "{}"
    cast_int = "CAST({} AS INTEGER)" if dialect == "postgresql" else "{}"
    return f"""
INSERT INTO reminders (org_id, subscription_id, customer_id, expires_on, lead_days, local_date,
                       days_left, phone, sender, status, reason, attempts, next_attempt_at,
                       created_at, updated_at)
WITH m(days_left, lead_days, expires_on) AS (VALUES {values})
SELECT s.org_id, s.id, s.customer_id, s.expires_on, {cast_int.format("m.lead_days")},
       {cast_date.format(":local_date")}, {cast_int.format("m.days_left")},
       COALESCE(c.phone_e164, c.phone), o.sender,
       CASE WHEN c.phone_e164 IS NULL OR oo.id IS NOT NULL THEN 'skipped' ELSE 'pending' END,
       CASE WHEN c.phone_e164 IS NULL THEN 'invalid_phone'
            WHEN oo.id IS NOT NULL THEN 'opted_out' END,
       0, :now, :now, :now
FROM m
JOIN subscriptions s ON s.expires_on = {cast_date.format("m.expires_on")}
                    AND s.org_id IN :orgs
JOIN customers c ON c.id = s.customer_id
JOIN organizations o ON o.id = s.org_id
LEFT JOIN opt_outs oo ON oo.org_id = s.org_id AND oo.phone_e164 = c.phone_e164
WHERE s.status = 'active'
ON CONFLICT (subscription_id, expires_on, lead_days) DO NOTHING
"""


@dataclass(frozen=True)
class RenderInput:
    """Everything a template needs for one ledger row."""

    id: int
    org_id: int
    lead_days: int
    days_left: int
    expires_on: date
    customer_name: str
    plan: str
    amount: Decimal | None
    currency: str | None


def unrendered_rows(
    conn: Connection, org_ids: Iterable[int], *, chunk: int = 5000
) -> Iterator[list[RenderInput]]:
    """Pending rows with no body yet, in id order, one keyset page at a time (flat memory)."""
    ids = list(org_ids)
    after = 0
    while True:
        stmt = (
            select(
                Reminder.id,
                Reminder.org_id,
                Reminder.lead_days,
                Reminder.days_left,
                Reminder.expires_on,
                Customer.name,
                Subscription.plan,
                Subscription.amount,
                Subscription.currency,
            )
            .join(Customer, Customer.id == Reminder.customer_id)
            .join(Subscription, Subscription.id == Reminder.subscription_id)
            .where(
                Reminder.id > after,
                Reminder.status == "pending",
                Reminder.body.is_(None),
                Reminder.org_id.in_(ids),
            )
            .order_by(Reminder.id)
            .limit(chunk)
        )
        page = [RenderInput(*row) for row in conn.execute(stmt)]
        if not page:
            return
        yield page
        after = page[-1].id


def store_bodies(conn: Connection, rendered: list[dict[str, Any]], *, now: datetime) -> None:
    """Write rendered bodies (``id, body, segments, encoding``) for rows still unrendered."""
    if not rendered:
        return
    if conn.dialect.name == "postgresql":
        _store_bodies_copy(conn, rendered, now=now)
        return
    conn.execute(
        update(Reminder)
        .where(Reminder.id == bindparam("b_id"), Reminder.body.is_(None))
        .values(
            body=bindparam("b_body"),
            segments=bindparam("b_segments"),
            encoding=bindparam("b_encoding"),
            updated_at=now,
        ),
        [
            {
                "b_id": r["id"],
                "b_body": r["body"],
                "b_segments": r["segments"],
                "b_encoding": r["encoding"],
            }
            for r in rendered
        ],
    )


def _store_bodies_copy(conn: Connection, rendered: list[dict[str, Any]], *, now: datetime) -> None:
    """PostgreSQL: COPY into a temporary table, then one UPDATE … FROM (set-based)."""
    conn.execute(
        text(
            "CREATE TEMP TABLE IF NOT EXISTS _bodies "
            "(id BIGINT PRIMARY KEY, body TEXT, segments INT, encoding TEXT) ON COMMIT DELETE ROWS"
        )
    )
    conn.execute(text("TRUNCATE _bodies"))
    raw = conn.connection.driver_connection
    assert raw is not None
    with (
        raw.cursor() as cur,
        cur.copy("COPY _bodies (id, body, segments, encoding) FROM STDIN") as cp,
    ):
        for r in rendered:
            cp.write_row((r["id"], r["body"], r["segments"], r["encoding"]))
    conn.execute(
        text(
            "UPDATE reminders r SET body = b.body, segments = b.segments, encoding = b.encoding, "
            "updated_at = :now FROM _bodies b WHERE r.id = b.id AND r.body IS NULL"
        ).bindparams(bindparam("now", type_=UTCDateTime())),
        {"now": now},
    )


def mark_failed_bulk(conn: Connection, failures: list[tuple[int, str]], *, now: datetime) -> None:
    """Rows whose template failed at planning: ``failed`` with the reason, nothing sent."""
    if not failures:
        return
    conn.execute(
        update(Reminder)
        .where(Reminder.id == bindparam("f_id"), Reminder.status == "pending")
        .values(
            status="failed",
            reason="template_error",
            error_code="template",
            error_message=bindparam("f_msg"),
            updated_at=now,
        ),
        [{"f_id": rid, "f_msg": msg} for rid, msg in failures],
    )


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
            or_(Reminder.next_attempt_at.is_(None), Reminder.next_attempt_at <= now),
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
            or_(Reminder.next_attempt_at.is_(None), Reminder.next_attempt_at <= now),
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


def finish(
    conn: Connection, row_id: int, *, values: dict[str, Any], expect: str = "sending"
) -> bool:
    """Move one row out of ``expect`` (default: sending); False if someone else moved it."""
    result = conn.execute(
        update(Reminder).where(Reminder.id == row_id, Reminder.status == expect).values(**values)
    )
    return (result.rowcount or 0) == 1


def add_opt_out(
    conn: Connection, *, org_id: int, phone_e164: str, source: str, now: datetime
) -> bool:
    """Record an opt-out; True if it is new. Idempotent through the unique key."""
    table: Any = OptOut.__table__
    values = {"org_id": org_id, "phone_e164": phone_e164, "source": source, "created_at": now}
    if conn.dialect.name == "postgresql":
        stmt: Any = postgresql.insert(table).values(**values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing()
    return (conn.execute(stmt).rowcount or 0) == 1


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
