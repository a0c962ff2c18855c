"""The manual trigger: plan today (set-based), then send what is due, in this process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine, select

from app.db import ledger, undeliverable
from app.db.models import Customer, Organization, Reminder, Subscription
from app.domain import planning, rules
from app.errors import NotFoundError
from app.services.engine import OrgConfig, PlanReport, load_orgs, plan_day
from app.services.orgs import disabled_slugs
from app.services.sender import Sender, SendReport


@dataclass
class RunSummary:
    dates: dict[str, str] = field(default_factory=dict)  # org slug -> local date used
    plan: PlanReport = field(default_factory=PlanReport)
    send: SendReport = field(default_factory=SendReport)
    would_send: list[dict[str, Any]] = field(default_factory=list)  # previewed rows
    # Organizations whose today is not the run's --date, with their today: planned and
    # previewed for that date only (R3).
    previewed: dict[str, str] = field(default_factory=dict)
    would_plan: int = 0  # rows a preview would have planned

    @property
    def dry_run(self) -> bool:
        """Every organization was only previewed: nothing was sent at all (R3)."""
        return bool(self.previewed) and set(self.dates) <= set(self.previewed)

    def as_dict(self) -> dict[str, Any]:
        retry = min(self.send.retry_at, default=None)
        result: dict[str, Any] = {
            "dates": self.dates,
            "planned": self.would_plan if self.dry_run else self.plan.planned,
            "sent": self.send.sent,
            "failed": self.plan.failed + self.send.failed,
            "skipped": self.plan.skipped + self.send.skipped,
            "held": self.send.held,
            "held_until": {s: t.isoformat() for s, t in sorted(self.send.held_until.items())},
            "retrying": self.send.retrying,
            "next_retry_at": retry.isoformat() if retry else None,
            "unknown": self.send.unknown,
            "taken_by_others": self.send.lost,
            "previewed": self.previewed,
        }
        if self.previewed:
            result.update(dry_run=self.dry_run, would_send=self.would_send)
        return result


# Called about every second while a run sends or waits: the counts so far, and how many texts
# were due when it started.
Progress = Callable[[SendReport, int], None]


def resolve_orgs(engine: Engine, slugs: Sequence[str]) -> dict[int, OrgConfig]:
    """Active organizations by slug (all when none given); an unknown slug is an error."""
    with engine.connect() as conn:
        orgs = load_orgs(conn, ledger.active_org_ids(conn, slugs or None))
    missing = sorted(set(slugs) - {o.slug for o in orgs.values()})
    if missing:
        with engine.connect() as conn:
            disabled = disabled_slugs(conn, missing)
        if disabled:
            raise NotFoundError(
                f"organization {', '.join(disabled)} is disabled and sends nothing; "
                f"`reminders org enable {disabled[0]}` turns it back on"
            )
        raise NotFoundError(
            f"no active organization {', '.join(repr(s) for s in missing)}; "
            "see `reminders org list`"
        )
    return orgs


def split_by_date(
    orgs: dict[int, OrgConfig], *, now: datetime, on_date: date | None
) -> tuple[dict[int, OrgConfig], dict[int, OrgConfig]]:
    """(organizations whose today ``on_date`` is, or all without one; the others)."""
    today: dict[int, OrgConfig] = {}
    other: dict[int, OrgConfig] = {}
    for org_id, org in orgs.items():
        sends = rules.sends_for(on_date, planning.local_date(now, org.timezone))
        (today if sends else other)[org_id] = org
    return today, other


def run_day(
    engine: Engine,
    sender: Sender,
    *,
    slugs: Sequence[str] = (),
    on_date: date | None = None,
    ignore_window: bool = False,
    batch_size: int = 500,
    on_progress: Progress | None = None,
) -> RunSummary:
    """The manual trigger: plan today, then send every text due now and return only when each
    is sent or accounted for (R6): held for the window, retrying later, failed, skipped,
    unknown, or taken by another run. It waits for its senders' rate slots as long as that
    takes. An organization whose today is not ``on_date`` is planned and previewed for that
    date, with nothing written or sent (R3)."""
    orgs = resolve_orgs(engine, slugs)
    now = sender.clock()
    sending, previewed = split_by_date(orgs, now=now, on_date=on_date)
    summary = RunSummary()
    if previewed:
        preview = preview_plan(
            engine, previewed, now=now, on_date=on_date, ignore_window=ignore_window
        )
        summary.would_send, summary.would_plan = preview.would_send, preview.plan.planned
        summary.previewed = {
            o.slug: o.today(now).isoformat()
            for o in sorted(previewed.values(), key=lambda o: o.slug)
        }
    summary.dates = {o.slug: o.today(now, on_date).isoformat() for o in orgs.values()}
    if not sending:
        return summary
    with engine.begin() as conn:
        summary.plan = plan_day(conn, now=now, orgs=sending)
    with engine.connect() as conn:
        total = ledger.count_due(
            conn, now=sender.clock(), org_ids=sending, release_held=ignore_window
        )
    send = _Sending(sender, summary.send, total, ignore_window, on_progress)
    # First every text due now (and, with --ignore-window, every held one), in id order.
    after = 0
    while True:
        with engine.connect() as conn:
            ids = ledger.due_ids(
                conn,
                now=sender.clock(),
                org_ids=sending,
                limit=batch_size,
                after_id=after,
                release_held=ignore_window,
            )
        if not ids:
            break
        send.batch(ids)
        after = ids[-1]
    # Then what went back for a later rate-limit slot (or a new local day), as it falls due.
    while True:
        with engine.connect() as conn:
            at = ledger.next_attempt(conn, org_ids=sending, reason=ledger.DEFERRED)
            if at is None:
                break
            wait = (at - sender.clock()).total_seconds()
            ids = []
            if wait <= 0:
                ids = ledger.due_ids(
                    conn,
                    now=sender.clock(),
                    org_ids=sending,
                    limit=batch_size,
                    reason=ledger.DEFERRED,
                )
        if ids:
            send.batch(ids)
        else:
            send.wait(min(max(wait, 0.05), 1.0))
    send.report_progress()
    return summary


class _Sending:
    """A run's batches, one after another, with the counts reported as they grow."""

    def __init__(
        self,
        sender: Sender,
        done: SendReport,
        total: int,
        ignore_window: bool,
        on_progress: Progress | None,
    ) -> None:
        self.sender = sender
        self.done = done
        self.total = total
        self.ignore_window = ignore_window
        self.on_progress = on_progress
        self.live = SendReport()

    def batch(self, ids: list[int]) -> None:
        self.live = SendReport()
        future = self.sender.submit_ids(ids, ignore_window=self.ignore_window, report=self.live)
        while True:
            try:
                report = future.result(timeout=1.0)
            except TimeoutError:
                self.report_progress()
                continue
            break
        self.done.add(report)
        self.live = SendReport()
        self.report_progress()

    def wait(self, seconds: float) -> None:
        self.report_progress()
        time.sleep(seconds)

    def report_progress(self) -> None:
        if self.on_progress is not None:
            so_far = SendReport()
            so_far.add(self.done)
            so_far.add(self.live)
            self.on_progress(so_far, self.total)


def dry_run(
    engine: Engine,
    *,
    now: datetime,
    slugs: Sequence[str] = (),
    on_date: date | None = None,
    ignore_window: bool = False,
) -> RunSummary:
    """Plan inside a transaction that is rolled back: shows what would go out, writes nothing."""
    orgs = resolve_orgs(engine, slugs)
    summary = preview_plan(engine, orgs, now=now, on_date=on_date, ignore_window=ignore_window)
    summary.dates = {o.slug: o.today(now, on_date).isoformat() for o in orgs.values()}
    return summary


def preview_plan(
    engine: Engine,
    orgs: dict[int, OrgConfig],
    *,
    now: datetime,
    on_date: date | None,
    ignore_window: bool = False,
) -> RunSummary:
    """These organizations' plan for ``on_date`` (default: today) and what would go out, in a
    transaction that is rolled back."""
    summary = RunSummary()
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
                    ledger.is_sendable(now, release_held=ignore_window),
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


def held_until(engine: Engine) -> dict[str, datetime]:
    """Per organization with texts held for its window: when that window opens."""
    with engine.connect() as conn:
        slugs = dict(conn.execute(select(Organization.id, Organization.slug)).all())
        opens = ledger.held_until(conn)
    return {slugs[org_id]: at for org_id, at in opens.items()}


def open_circuits(engine: Engine) -> dict[str, datetime]:
    """Provider accounts whose circuit breaker is open (the provider failing for everyone), and
    since when."""
    with engine.connect() as conn:
        return ledger.open_circuits(conn)


def undeliverable_counts(engine: Engine) -> dict[str, int]:
    """Numbers marked undeliverable, per organization slug."""
    with engine.connect() as conn:
        slugs = dict(conn.execute(select(Organization.id, Organization.slug)).all())
        return {slugs[o]: n for o, n in undeliverable.counts(conn).items() if o in slugs}


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
    "template_fallback",
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
    customer: str | None = None,
    subscription: str | None = None,
    after_id: int | None = None,
    row_id: int | None = None,
) -> list[dict[str, Any]]:
    """The ledger's rows, oldest first, with the filters the CLI and the API offer."""
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
            Reminder.template_fallback,
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
    if customer is not None:
        stmt = stmt.where(Customer.external_id == customer)
    if subscription is not None:
        stmt = stmt.where(Subscription.external_id == subscription)
    if after_id is not None:
        stmt = stmt.where(Reminder.id > after_id)
    if row_id is not None:
        stmt = stmt.where(Reminder.id == row_id)
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
