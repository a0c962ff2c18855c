"""What the ledger says right now, for the API's gauges: four set-based statements however
many organizations there are (organizations and their days, the ledger, the events outbox,
the provider accounts' circuits).

Read at scrape time, so a gauge is never staler than the scrape and no process has to keep
counts in step with the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection, case, func, literal, or_, select, tuple_

from app.db import ledger, outbox
from app.db.models import DailyRun, Organization, Reminder, aware_utc
from app.domain import planning
from app.domain.status import Status


@dataclass(frozen=True)
class OrgDay:
    """An organization, its local today, and when its days last started and finished."""

    org_id: int
    slug: str
    active: bool
    today: date
    send_at: datetime  # today's send time, as an instant
    last_started: datetime | None
    last_finished: datetime | None


@dataclass(frozen=True)
class Backlog:
    """One organization's rows waiting: due ``pending`` ones, and ``unknown`` ones (any day)."""

    due_since: datetime | None = None  # the earliest moment a due pending row became due
    unknown: int = 0
    unknown_since: datetime | None = None  # the earliest attempt of an unknown row


@dataclass(frozen=True)
class Snapshot:
    at: datetime
    orgs: list[OrgDay]
    today: dict[tuple[int, str], int]  # (organization id, status) -> rows of its today
    backlog: dict[int, Backlog]
    events: dict[int, outbox.Backlog]  # event deliveries waiting and dead
    # provider account -> when its circuit opened (None: closed), as its workers last said
    circuits: dict[str, datetime | None]


def read(conn: Connection, *, now: datetime) -> Snapshot:
    runs = (
        select(
            DailyRun.org_id,
            func.max(DailyRun.started_at).label("started"),
            func.max(DailyRun.finished_at).label("finished"),
        )
        .group_by(DailyRun.org_id)
        .subquery()
    )
    orgs = []
    for row in conn.execute(
        select(
            Organization.id,
            Organization.slug,
            Organization.active,
            Organization.timezone,
            Organization.send_time,
            runs.c.started,
            runs.c.finished,
        ).outerjoin(runs, runs.c.org_id == Organization.id)
    ):
        today = planning.local_date(now, row.timezone)
        orgs.append(
            OrgDay(
                org_id=row.id,
                slug=row.slug,
                active=bool(row.active),
                today=today,
                send_at=planning.send_time_instant(today, row.timezone, row.send_time),
                last_started=aware_utc(row.started),
                last_finished=aware_utc(row.finished),
            )
        )
    return Snapshot(
        now, orgs, *_ledger(conn, orgs, now=now), outbox.backlogs(conn), ledger.circuits(conn)
    )


def _ledger(
    conn: Connection, orgs: list[OrgDay], *, now: datetime
) -> tuple[dict[tuple[int, str], int], dict[int, Backlog]]:
    days = [(o.org_id, o.today) for o in orgs]
    on_today: object = (
        tuple_(Reminder.org_id, Reminder.local_date).in_(days) if days else literal(False)
    )
    pending, unknown = Status.PENDING.value, Status.UNKNOWN.value
    due = (Reminder.status == pending) & or_(
        Reminder.next_attempt_at.is_(None), Reminder.next_attempt_at <= now
    )
    stmt = (
        select(
            Reminder.org_id,
            Reminder.status,
            func.sum(case((on_today, 1), else_=0)).label("today"),  # type: ignore[arg-type]
            func.count().label("rows"),
            func.min(
                case((due, func.coalesce(Reminder.next_attempt_at, Reminder.created_at)))
            ).label("due_since"),
            func.min(func.coalesce(Reminder.claimed_at, Reminder.updated_at)).label("since"),
        )
        .where(or_(on_today, Reminder.status.in_([pending, unknown])))  # type: ignore[arg-type]
        .group_by(Reminder.org_id, Reminder.status)
    )
    today: dict[tuple[int, str], int] = {}
    backlog: dict[int, Backlog] = {}
    for row in conn.execute(stmt):
        if row.today:
            today[(row.org_id, row.status)] = int(row.today)
        old = backlog.get(row.org_id, Backlog())
        if row.status == pending and row.due_since is not None:
            backlog[row.org_id] = Backlog(aware_utc(row.due_since), old.unknown, old.unknown_since)
        elif row.status == unknown:
            backlog[row.org_id] = Backlog(old.due_since, int(row.rows), aware_utc(row.since))
    return today, backlog
