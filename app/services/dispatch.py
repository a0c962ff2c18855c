"""The decisions behind the beat tasks, as plain functions over the database.

Which organizations' days are due at ``now``; who starts each day (the unique ``daily_runs`` row:
only one inserter wins, however many beats tick); which ``pending`` rows need a (new) message in
the broker; which days are finished; what retention removes. No Celery here: the tasks call
these, commit, and only then enqueue.

Re-enqueueing uses ``updated_at`` as the mark of "a message for this row was handed to the
broker" (``ledger.no_message``); one touched longer ago than the lease is presumed lost with its
message. Taking rows is ``ledger.hand_over``, one conditional UPDATE … RETURNING, so two
sweepers never both enqueue the same row.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from app.db import ledger, outbox
from app.db.models import DailyRun, Organization, Reminder
from app.domain import planning
from app.services.engine import OrgConfig, load_orgs

log = logging.getLogger("app.dispatch")


@dataclass(frozen=True)
class DayStart:
    """An organization's daily run this caller won the right to start."""

    org_id: int
    slug: str
    local_date: date
    task_id: str


def due_days(conn: Connection, *, now: datetime) -> list[tuple[OrgConfig, date]]:
    """Active organizations whose local send time has passed today and whose day has not run.

    After downtime this still names each organization once, for its current local date: the
    planning rules catch up the reminders a missed day would have sent.
    """
    orgs = load_orgs(conn)
    today = {org.id: planning.local_date(now, org.timezone) for org in orgs.values()}
    if not orgs:
        return []
    done = set(
        conn.execute(
            select(DailyRun.org_id, DailyRun.local_date).where(
                DailyRun.org_id.in_(list(orgs)),
                DailyRun.local_date.in_(set(today.values())),
            )
        ).all()
    )
    due = []
    for org in sorted(orgs.values(), key=lambda o: o.id):
        day = today[org.id]
        if (org.id, day) in done:
            continue
        if planning.send_time_instant(day, org.timezone, org.send_time) <= now:
            due.append((org, day))
    return due


def _insert_ignore(conn: Connection, table: Any, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True when this caller's row went in."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    # RETURNING, not rowcount: with the implicit RETURNING of the key, rowcount reads -1.
    stmt = dialect.insert(table).values(**values).on_conflict_do_nothing().returning(table.c.id)
    return conn.execute(stmt).first() is not None


def start_due_days(
    conn: Connection,
    *,
    now: datetime,
    new_task_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> list[DayStart]:
    """Insert the ``daily_runs`` row of every due day; return the ones this caller inserted.

    The unique (organization, local date) key decides: two beats, a restarted beat or a tick
    delivered twice insert each row once, and only the inserter enqueues the day.
    """
    started = []
    for org, day in due_days(conn, now=now):
        task_id = new_task_id()
        values = {
            "org_id": org.id,
            "local_date": day,
            "status": "started",
            "task_id": task_id,
            "planned": 0,
            "started_at": now,
        }
        if _insert_ignore(conn, DailyRun.__table__, values):
            started.append(DayStart(org.id, org.slug, day, task_id))
    return started


def mark_planned(conn: Connection, *, org_days: dict[int, date]) -> int:
    """Days still ``started`` among these are now planned, with their ledger row count."""
    moved = 0
    for day, org_ids in _by_date(org_days).items():
        rows = (
            select(func.count())
            .where(Reminder.org_id == DailyRun.org_id, Reminder.local_date == DailyRun.local_date)
            .scalar_subquery()
        )
        result = conn.execute(
            update(DailyRun)
            .where(
                DailyRun.org_id.in_(org_ids),
                DailyRun.local_date == day,
                DailyRun.status == "started",
            )
            .values(status="planned", planned=rows)
        )
        moved += result.rowcount or 0
    return moved


def _by_date(org_days: dict[int, date]) -> dict[date, list[int]]:
    by_date: dict[date, list[int]] = {}
    for org_id, day in org_days.items():
        by_date.setdefault(day, []).append(org_id)
    return by_date


def _on_days(org_days: dict[int, date]) -> Any:
    """WHERE clause: ledger rows of each organization's given local date."""
    return or_(
        *(
            and_(Reminder.local_date == day, Reminder.org_id.in_(ids))
            for day, ids in _by_date(org_days).items()
        )
    )


def restart_stalled_days(
    conn: Connection,
    *,
    now: datetime,
    lease_seconds: float,
    new_task_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> list[DayStart]:
    """Days started longer ago than the lease that never planned: their message was lost."""
    cutoff = now - timedelta(seconds=lease_seconds)
    rows = conn.execute(
        select(DailyRun.id, DailyRun.org_id, DailyRun.local_date, Organization.slug)
        .join(Organization, Organization.id == DailyRun.org_id)
        .where(DailyRun.status == "started", DailyRun.started_at < cutoff)
    ).all()
    restarted = []
    for run_id, org_id, day, slug in rows:
        task_id = new_task_id()
        result = conn.execute(
            update(DailyRun)
            .where(
                DailyRun.id == run_id,
                DailyRun.status == "started",
                DailyRun.started_at < cutoff,
            )
            .values(started_at=now, task_id=task_id)
        )
        if result.rowcount:
            restarted.append(DayStart(org_id, slug, day, task_id))
    return restarted


@dataclass(frozen=True)
class DayFinished:
    org_id: int
    slug: str
    local_date: date
    counts: dict[str, int]


def finish_days(conn: Connection, *, now: datetime) -> list[DayFinished]:
    """Planned days with nothing left ``pending`` or ``sending`` are finished."""
    runs = conn.execute(
        select(
            DailyRun.id,
            DailyRun.org_id,
            DailyRun.local_date,
            Organization.slug,
            DailyRun.started_at,
        )
        .join(Organization, Organization.id == DailyRun.org_id)
        .where(DailyRun.status == "planned")
    ).all()
    finished = []
    for run_id, org_id, day, slug, started_at in runs:
        counts = day_status_counts(conn, org_days={org_id: day})
        if counts.get("pending", 0) or counts.get("sending", 0):
            continue
        result = conn.execute(
            update(DailyRun)
            .where(DailyRun.id == run_id, DailyRun.status == "planned")
            .values(status="finished", finished_at=now)
        )
        if result.rowcount:
            finished.append(DayFinished(org_id, slug, day, counts))
            outbox.day_completed(
                conn,
                org_id=org_id,
                slug=slug,
                local_date=day,
                counts=counts,
                started_at=started_at,
                now=now,
            )
    return finished


def day_status_counts(conn: Connection, *, org_days: dict[int, date]) -> dict[str, int]:
    """Ledger rows per status over each organization's given local date."""
    if not org_days:
        return {}
    stmt = select(Reminder.status, func.count()).where(_on_days(org_days)).group_by(Reminder.status)
    return {status: int(n) for status, n in conn.execute(stmt)}


#: The statuses a day's totals list, in this order.
DAY_STATUSES = ("sent", "failed", "skipped", "pending", "sending", "unknown")


def org_days(
    conn: Connection, *, org_slugs: Sequence[str], on_date: date | None, now: datetime
) -> dict[int, date]:
    """{organization id: the local date a run for these organizations (all active when none)
    works on}."""
    orgs = load_orgs(conn, ledger.active_org_ids(conn, list(org_slugs) or None))
    return {o.id: o.today(now, on_date) for o in orgs.values()}


def day_totals(conn: Connection, *, org_days: dict[int, date]) -> dict[str, int]:
    """Every status of DAY_STATUSES with its count over those days (zeros included)."""
    counts = day_status_counts(conn, org_days=org_days)
    return {status: counts.get(status, 0) for status in DAY_STATUSES}


def day_busy(conn: Connection, *, org_days: dict[int, date], now: datetime) -> int:
    """Rows of those days still to be acted on now: ``sending``, or ``pending`` and due."""
    if not org_days:
        return 0
    busy = or_(
        Reminder.status == "sending",
        and_(
            Reminder.status == "pending",
            ledger.is_due(now),
        ),
    )
    stmt = select(func.count()).where(_on_days(org_days), busy)
    return int(conn.execute(stmt).scalar_one())


def due_order(
    conn: Connection,
    *,
    now: datetime,
    org_ids: Sequence[int] | None = None,
    lost_before: datetime | None = None,
) -> list[int]:
    """The due ``pending`` rows with no message in the broker (of these organizations, or all),
    taking turns between organizations (each one's rows in id order).

    Cut into batches, every batch holds texts of every organization, so a process works many
    senders at once instead of one organization's rows at a time (organizations imported one
    after another have runs of consecutive ids). With ``lost_before`` (the sweeper), rows handed
    over before it count as having lost their message.
    """
    if org_ids is not None and not org_ids:
        return []
    turn = func.row_number().over(partition_by=Reminder.org_id, order_by=Reminder.id)
    stmt = (
        select(Reminder.id)
        .where(Reminder.status == "pending", ledger.is_due(now), ledger.no_message(lost_before))
        .order_by(turn, Reminder.org_id)
    )
    if org_ids is not None:
        stmt = stmt.where(Reminder.org_id.in_(list(org_ids)))
    return list(conn.execute(stmt).scalars())


def retry_waits(
    conn: Connection,
    ids: Sequence[int],
    *,
    since: datetime,
    now: datetime,
    max_wait_seconds: float,
) -> dict[int, list[int]]:
    """Rows of ``ids`` put back since ``since`` (for a retry, or deferred for a later slot) and
    due within ``max_wait_seconds``, by whole seconds to wait (rounded up, so the message never
    arrives before the row is due)."""
    if not ids:
        return {}
    horizon = now + timedelta(seconds=max_wait_seconds)
    rows = conn.execute(
        select(Reminder.id, Reminder.next_attempt_at).where(
            Reminder.id.in_(list(ids)),
            Reminder.status == "pending",
            Reminder.reason.in_(("retrying", ledger.DEFERRED)),
            Reminder.updated_at >= since,
            Reminder.next_attempt_at <= horizon,
        )
    ).all()
    waits: dict[int, list[int]] = {}
    for rid, at in rows:
        seconds = max(0, int((cast(datetime, at) - now).total_seconds()) + 1)
        waits.setdefault(seconds, []).append(rid)
    return waits


def cleanup(engine: Engine, *, now: datetime, retention_days: int, chunk: int = 10_000) -> int:
    """Delete ledger rows (and daily runs, and events no longer to be delivered) older than the
    retention period; return how many ledger rows.

    A row goes only when both its planning and its subscription's expiry are older than the
    retention: a row whose expiry is still ahead must stay, or planning would insert it again
    and text the customer twice.
    """
    cutoff = now - timedelta(days=retention_days)
    cutoff_date = cutoff.date()
    removed = 0
    while True:
        with engine.begin() as conn:
            pick = (
                select(Reminder.id)
                .where(Reminder.created_at < cutoff, Reminder.expires_on < cutoff_date)
                .limit(chunk)
                .scalar_subquery()
            )
            n = conn.execute(delete(Reminder).where(Reminder.id.in_(pick))).rowcount or 0
        removed += n
        if n < chunk:
            break
    with engine.begin() as conn:
        conn.execute(delete(DailyRun).where(DailyRun.local_date < cutoff_date))
    # Events told (or dead, or cancelled) that long ago go too; a pending one stays.
    while True:
        with engine.begin() as conn:
            n = outbox.purge(conn, before=cutoff, limit=chunk)
        if n < chunk:
            break
    return removed
