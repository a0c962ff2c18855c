"""The manual trigger: plan today (set-based), then send what is due, in this process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine, select

from app.db import ledger
from app.db.models import Customer, Organization, Reminder, Subscription
from app.domain import planning
from app.errors import NotFoundError
from app.services.engine import OrgConfig, PlanReport, load_orgs, plan_day
from app.services.sender import Sender, SendReport


@dataclass
class RunSummary:
    dates: dict[str, str] = field(default_factory=dict)  # org slug -> local date used
    plan: PlanReport = field(default_factory=PlanReport)
    send: SendReport = field(default_factory=SendReport)
    would_send: list[dict[str, Any]] = field(default_factory=list)  # dry run only

    def as_dict(self) -> dict[str, Any]:
        return {
            "dates": self.dates,
            "planned": self.plan.planned,
            "sent": self.send.sent,
            "failed": self.plan.failed + self.send.failed,
            "skipped": self.plan.skipped + self.send.skipped,
            "held": self.send.held,
            "retrying": self.send.retrying,
            "unknown": self.send.unknown,
        }


def resolve_orgs(engine: Engine, slugs: Sequence[str]) -> dict[int, OrgConfig]:
    """Active organizations by slug (all when none given); an unknown slug is an error."""
    with engine.connect() as conn:
        orgs = load_orgs(conn, ledger.active_org_ids(conn, slugs or None))
    missing = sorted(set(slugs) - {o.slug for o in orgs.values()})
    if missing:
        raise NotFoundError(
            f"no active organization {', '.join(repr(s) for s in missing)}; "
            "see `reminders org list`"
        )
    return orgs


def run_day(
    engine: Engine,
    sender: Sender,
    *,
    slugs: Sequence[str] = (),
    on_date: date | None = None,
    ignore_window: bool = False,
    batch_size: int = 500,
) -> RunSummary:
    """Plan each organization's day, then send every pending row whose attempt is due."""
    summary = RunSummary()
    orgs = resolve_orgs(engine, slugs)
    now = sender.clock()
    summary.dates = {o.slug: o.today(now, on_date).isoformat() for o in orgs.values()}
    with engine.begin() as conn:
        summary.plan = plan_day(conn, now=now, orgs=orgs, on_date=on_date)
    after = 0
    while True:
        with engine.connect() as conn:
            ids = ledger.due_ids(
                conn, now=sender.clock(), org_ids=orgs, limit=batch_size, after_id=after
            )
        if not ids:
            break
        summary.send.add(sender.send_ids(ids, on_date=on_date, ignore_window=ignore_window))
        after = ids[-1]
    return summary


def dry_run(
    engine: Engine,
    *,
    now: datetime,
    slugs: Sequence[str] = (),
    on_date: date | None = None,
    ignore_window: bool = False,
) -> RunSummary:
    """Plan inside a transaction that is rolled back: shows what would go out, writes nothing."""
    summary = RunSummary()
    orgs = resolve_orgs(engine, slugs)
    summary.dates = {o.slug: o.today(now, on_date).isoformat() for o in orgs.values()}
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            summary.plan = plan_day(conn, now=now, orgs=orgs, on_date=on_date)
            stmt = (
                select(
                    Reminder.org_id,
                    Reminder.phone,
                    Reminder.lead_days,
                    Reminder.days_left,
                    Reminder.body,
                    Reminder.segments,
                )
                .where(
                    Reminder.status == "pending",
                    Reminder.org_id.in_(list(orgs)),
                    (Reminder.next_attempt_at.is_(None)) | (Reminder.next_attempt_at <= now),
                )
                .order_by(Reminder.id)
            )
            for org_id, phone, lead, days_left, body, segments in conn.execute(stmt):
                org = orgs[org_id]
                open_now = ignore_window or planning.in_send_window(now, org.timezone, org.window)
                summary.would_send.append(
                    {
                        "org": org.slug,
                        "phone": phone,
                        "lead_days": lead,
                        "days_left": days_left,
                        "body": body,
                        "segments": segments,
                        "held": not open_now,
                    }
                )
        finally:
            trans.rollback()
    return summary


def status_counts(engine: Engine, *, on_date: date | None = None) -> dict[str, dict[str, int]]:
    with engine.connect() as conn:
        slugs = dict(conn.execute(select(Organization.id, Organization.slug)).all())
        counts = ledger.count_by_status(conn, local_date=on_date)
    out: dict[str, dict[str, int]] = {slug: {} for slug in sorted(slugs.values())}
    for (org_id, status), n in counts.items():
        out[slugs[org_id]][status] = n
    return out


MESSAGE_FIELDS = (
    "id",
    "org",
    "customer_id",
    "subscription_id",
    "phone",
    "lead_days",
    "days_left",
    "expires_on",
    "local_date",
    "status",
    "reason",
    "body",
    "segments",
    "encoding",
    "attempts",
    "error_code",
    "error_message",
    "provider_message_id",
    "delivery_status",
    "next_attempt_at",
    "sent_at",
)


def messages(
    engine: Engine,
    *,
    on_date: date | None = None,
    slug: str | None = None,
    status: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    stmt = (
        select(
            Reminder.id,
            Organization.slug,
            Customer.external_id,
            Subscription.external_id,
            Reminder.phone,
            Reminder.lead_days,
            Reminder.days_left,
            Reminder.expires_on,
            Reminder.local_date,
            Reminder.status,
            Reminder.reason,
            Reminder.body,
            Reminder.segments,
            Reminder.encoding,
            Reminder.attempts,
            Reminder.error_code,
            Reminder.error_message,
            Reminder.provider_message_id,
            Reminder.delivery_status,
            Reminder.next_attempt_at,
            Reminder.sent_at,
        )
        .join(Organization, Organization.id == Reminder.org_id)
        .join(Customer, Customer.id == Reminder.customer_id)
        .join(Subscription, Subscription.id == Reminder.subscription_id)
        .order_by(Reminder.id)
    )
    if on_date is not None:
        stmt = stmt.where(Reminder.local_date == on_date)
    if slug is not None:
        stmt = stmt.where(Organization.slug == slug)
    if status is not None:
        stmt = stmt.where(Reminder.status == status)
    if limit is not None:
        stmt = stmt.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [_jsonable(dict(zip(MESSAGE_FIELDS, row, strict=True))) for row in rows]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    for key, value in row.items():
        if isinstance(value, date | datetime):
            row[key] = value.isoformat()
    return row
