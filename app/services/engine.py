"""The reminder engine: plan a day set-based, then claim, re-check, render and send each row.

Entry points (CLI, Celery tasks) stay thin and call these functions. Every decision about the
clock takes ``now`` (aware UTC) from the caller, so tests freeze time and production uses the
process clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session

from app.db import ledger
from app.db import plan as plan_sql
from app.db.models import DEFAULT_TEMPLATE_LEAD, Organization, Reminder, Template
from app.domain import planning
from app.domain.phones import mask_phone
from app.domain.segments import count_segments
from app.domain.templates import (
    DEFAULT_TEMPLATE,
    CustomerVars,
    OrganizationVars,
    SubscriptionVars,
    TemplateProblem,
    render,
)
from app.providers.base import (
    PermanentError,
    SmsProvider,
    TransientError,
    UnknownOutcomeError,
)
from app.services.ratelimit import NoRateLimit, RateLimiter
from app.settings import Settings

log = logging.getLogger("app.engine")


@dataclass(frozen=True)
class OrgConfig:
    id: int
    slug: str
    name: str
    timezone: str
    send_time: time
    window: tuple[time, time]
    leads: tuple[int, ...]
    sender: str | None
    rate_per_second: float | None

    def today(self, now: datetime, on_date: date | None = None) -> date:
        return on_date or planning.local_date(now, self.timezone)


def load_orgs(conn: Connection, org_ids: Iterable[int] | None = None) -> dict[int, OrgConfig]:
    stmt = select(Organization).where(Organization.active.is_(True))
    if org_ids is not None:
        stmt = stmt.where(Organization.id.in_(list(org_ids)))
    orgs = {}
    for o in Session(bind=conn).scalars(stmt):
        orgs[o.id] = OrgConfig(
            id=o.id,
            slug=o.slug,
            name=o.name,
            timezone=o.timezone,
            send_time=o.send_time,
            window=(o.window_start, o.window_end),
            leads=o.leads,
            sender=o.sender,
            rate_per_second=o.rate_per_second,
        )
    return orgs


class TemplateBook:
    """Template lookup: organization + lead day, organization default, built-in default."""

    def __init__(self, conn: Connection, org_ids: Iterable[int]) -> None:
        self._sources: dict[tuple[int, int], str] = {}
        stmt = select(Template.org_id, Template.lead_days, Template.body).where(
            Template.org_id.in_(list(org_ids))
        )
        for org_id, lead, body in conn.execute(stmt):
            self._sources[(org_id, lead)] = body

    def source(self, org_id: int, lead_days: int) -> str:
        return (
            self._sources.get((org_id, lead_days))
            or self._sources.get((org_id, DEFAULT_TEMPLATE_LEAD))
            or DEFAULT_TEMPLATE
        )


def render_body(
    book: TemplateBook,
    org: OrgConfig,
    *,
    lead_days: int,
    days_left: int,
    customer_name: str,
    plan: str,
    expires_on: date,
    amount: object,
    currency: str | None,
) -> str:
    return render(
        book.source(org.id, lead_days),
        customer=CustomerVars(name=customer_name),
        organization=OrganizationVars(name=org.name),
        subscription=SubscriptionVars(
            plan=plan,
            expires_on=expires_on,
            amount=amount,  # type: ignore[arg-type]
            currency=currency,
        ),
        days_left=days_left,
        lead_days=lead_days,
    )


# --- planning ---------------------------------------------------------------------------------


@dataclass
class PlanReport:
    planned: int = 0  # new ledger rows, any status
    skipped: int = 0  # of those, skipped at planning (opted out, invalid number)
    failed: int = 0  # template failures at planning
    rendered: int = 0


def plan_day(
    conn: Connection,
    *,
    now: datetime,
    orgs: dict[int, OrgConfig],
    on_date: date | None = None,
    page: int = 5000,
) -> PlanReport:
    """Plan every due reminder for each organization's local day, with its rendered body.

    One set-based query finds what the ledger lacks; bodies are rendered in Python page by
    page and each page is written with one INSERT … ON CONFLICT DO NOTHING, so a re-run or a
    concurrent run adds nothing twice. A template that fails marks only its own row ``failed``.
    """
    report = PlanReport()
    org_days = [
        plan_sql.OrgDay(
            org_id=org.id,
            local_date=org.today(now, on_date),
            offsets=tuple(planning.due_offsets(org.leads)),
        )
        for org in orgs.values()
    ]
    book = TemplateBook(conn, orgs)
    for candidates in plan_sql.candidates(conn, org_days, page=page):
        rows = [_planned_row(c, orgs[c.org_id], book, now) for c in candidates]
        counts = plan_sql.insert_rows(conn, rows)
        report.planned += sum(counts.values())
        report.skipped += counts.get("skipped", 0)
        report.failed += counts.get("failed", 0)
        report.rendered += counts.get("pending", 0)
    return report


def _planned_row(
    c: plan_sql.Candidate, org: OrgConfig, book: TemplateBook, now: datetime
) -> dict[str, object]:
    if c.skip_reason:
        return plan_sql.row_values(c, now=now, status="skipped", reason=c.skip_reason)
    try:
        body = render_body(
            book,
            org,
            lead_days=c.lead_days,
            days_left=c.days_left,
            customer_name=c.customer_name,
            plan=c.plan,
            expires_on=c.expires_on,
            amount=c.amount,
            currency=c.currency,
        )
    except TemplateProblem as exc:
        return plan_sql.row_values(
            c, now=now, status="failed", reason="template_error", error=str(exc)
        )
    info = count_segments(body)
    return plan_sql.row_values(
        c, now=now, status="pending", body=body, segments=info.segments, encoding=info.encoding
    )


# --- sending ----------------------------------------------------------------------------------


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retrying: int = 0  # transient failure, back to pending with a next attempt
    unknown: int = 0  # outcome unknown, waiting for reconciliation
    held: int = 0  # outside the send window, waiting for it to open
    lost: int = 0  # claimed by someone else first
    retry_at: list[datetime] = field(default_factory=list)

    def add(self, other: SendReport) -> None:
        for name in ("sent", "failed", "skipped", "retrying", "unknown", "held", "lost"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.retry_at.extend(other.retry_at)


class Sender:
    """Sends ledger rows through one provider with many texts in flight.

    One instance per process: it owns the provider client and a thread pool. Every row is
    claimed with one conditional UPDATE before the provider is called, and its outcome is
    committed right after, so a crash leaves at most the in-flight rows in ``sending``.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        provider: SmsProvider,
        settings: Settings,
        limiter: RateLimiter | None = None,
        clock: Callable[[], datetime] = planning.utcnow,
    ) -> None:
        self.engine = engine
        self.provider = provider
        self.settings = settings
        self.limiter = limiter or NoRateLimit()
        self.clock = clock
        self._pool = ThreadPoolExecutor(
            max_workers=settings.send_concurrency, thread_name_prefix="sms"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        close = getattr(self.provider, "close", None)
        if callable(close):
            close()

    def default_sender(self) -> str | None:
        s = self.settings
        if s.sms_provider == "twilio":
            return s.twilio_messaging_service_sid or s.twilio_from_number
        return None

    def rate_key(self, org: OrgConfig) -> str:
        return f"{self.provider.name}:{org.sender or self.default_sender() or 'default'}"

    def send_ids(
        self,
        ids: Sequence[int],
        *,
        on_date: date | None = None,
        ignore_window: bool = False,
    ) -> SendReport:
        """Hold what is outside its window, claim the rest, send, record each outcome."""
        report = SendReport()
        now = self.clock()
        with self.engine.begin() as conn:
            org_of = dict(
                conn.execute(
                    select(Reminder.id, Reminder.org_id).where(
                        Reminder.id.in_(list(ids)), Reminder.status == "pending"
                    )
                ).all()
            )
            orgs = load_orgs(conn, set(org_of.values()))
            sendable: list[int] = []
            held: dict[int, list[int]] = {}
            for rid, org_id in org_of.items():
                org = orgs.get(org_id)
                if org is None:
                    continue  # organization deactivated: leave its rows alone
                if ignore_window or planning.in_send_window(now, org.timezone, org.window):
                    sendable.append(rid)
                else:
                    held.setdefault(org_id, []).append(rid)
            for org_id, rids in held.items():
                org = orgs[org_id]
                opens = planning.next_window_open(now, org.timezone, org.window)
                report.held += ledger.hold_until(conn, rids, until=opens, now=now)
                log.info(
                    "held %d texts of %s until the send window opens at %s",
                    len(rids),
                    org.slug,
                    opens.isoformat(),
                )
            won = ledger.claim(conn, sendable, now=now)
        report.lost += len(sendable) - len(won)
        if not won:
            return report
        with self.engine.connect() as conn:
            rows = ledger.load_claimed(conn, won)
            book = TemplateBook(conn, orgs)
        futures = [
            self._pool.submit(self._send_one, row, orgs[row.org_id], book, on_date) for row in rows
        ]
        for fut in futures:
            report.add(fut.result())
        return report

    def _send_one(
        self, row: ledger.ClaimedRow, org: OrgConfig, book: TemplateBook, on_date: date | None
    ) -> SendReport:
        report = SendReport()
        try:
            self._send_checked(row, org, book, on_date, report)
        except Exception:
            log.exception("unexpected error sending ledger row %d of %s", row.id, org.slug)
            self._record(
                row,
                org,
                report,
                "unknown",
                reason="outcome_unknown",
                error_code="internal",
                error_message="unexpected error while sending; see the worker log",
            )
        return report

    def _send_checked(
        self,
        row: ledger.ClaimedRow,
        org: OrgConfig,
        book: TemplateBook,
        on_date: date | None,
        report: SendReport,
    ) -> None:
        now = self.clock()
        today = org.today(now, on_date)
        skip = self._skip_reason(row, org, today)
        if skip:
            self._record(row, org, report, "skipped", reason=skip)
            return
        days_left = (row.expires_on - today).days
        body = row.body
        if body is None or days_left != row.days_left:
            # Always true: a text held or retried into a later day says the real days left.
            try:
                body = render_body(
                    book,
                    org,
                    lead_days=row.lead_days,
                    days_left=days_left,
                    customer_name=row.customer_name,
                    plan=row.plan,
                    expires_on=row.expires_on,
                    amount=row.amount,
                    currency=row.currency,
                )
            except TemplateProblem as exc:
                self._record(
                    row,
                    org,
                    report,
                    "failed",
                    reason="template_error",
                    error_code="template",
                    error_message=str(exc),
                )
                return
        info = count_segments(body)
        assert row.phone_e164 is not None
        self.limiter.acquire(
            self.rate_key(org), org.rate_per_second or self.settings.rate_per_second
        )
        try:
            message_id = self.provider.send(row.phone_e164, body, org.sender)
        except TransientError as exc:
            self._retry_or_fail(row, org, report, exc, body=body, days_left=days_left)
            return
        except PermanentError as exc:
            if exc.opted_out:
                with self.engine.begin() as conn:
                    ledger.add_opt_out(
                        conn,
                        org_id=org.id,
                        phone_e164=row.phone_e164,
                        source="provider",
                        now=self.clock(),
                    )
            self._record(
                row,
                org,
                report,
                "failed",
                reason="opted_out" if exc.opted_out else "rejected",
                error_code=exc.code,
                error_message=exc.message,
                body=body,
                days_left=days_left,
                segments=info.segments,
                encoding=info.encoding,
            )
            return
        except UnknownOutcomeError as exc:
            self._record(
                row,
                org,
                report,
                "unknown",
                reason="outcome_unknown",
                error_code=exc.code,
                error_message=exc.message,
                body=body,
                days_left=days_left,
                segments=info.segments,
                encoding=info.encoding,
            )
            return
        self._record(
            row,
            org,
            report,
            "sent",
            provider_message_id=message_id,
            body=body,
            days_left=days_left,
            segments=info.segments,
            encoding=info.encoding,
            sent_at=self.clock(),
            error_code=None,
            error_message=None,
            reason=None,
        )

    def _skip_reason(self, row: ledger.ClaimedRow, org: OrgConfig, today: date) -> str | None:
        """Re-check at send time what may have changed since planning."""
        if row.sub_status != "active":
            return "cancelled"
        if row.sub_expires_on != row.expires_on:
            return "renewed"
        if row.phone_e164 is None:
            return "invalid_phone"
        if row.opted_out:
            return "opted_out"
        days_left = (row.expires_on - today).days
        due = planning.due_lead(days_left, org.leads)
        if due is None:
            return "expired"
        if due < row.lead_days:
            return f"stale: the {due}-day reminder is due now"
        return None

    def _retry_or_fail(
        self,
        row: ledger.ClaimedRow,
        org: OrgConfig,
        report: SendReport,
        exc: TransientError,
        *,
        body: str,
        days_left: int,
    ) -> None:
        if row.attempts >= self.settings.max_attempts:
            self._record(
                row,
                org,
                report,
                "failed",
                reason="retries_exhausted",
                error_code=exc.code,
                error_message=exc.message,
                body=body,
                days_left=days_left,
            )
            return
        now = self.clock()
        delay = planning.retry_delay(
            row.attempts, self.settings.retry_backoff_seconds, retry_after=exc.retry_after
        )
        at = planning.clamp_to_window(now + timedelta(seconds=delay), org.timezone, org.window)
        self._record(
            row,
            org,
            report,
            "pending",
            reason="retrying",
            error_code=exc.code,
            error_message=exc.message,
            next_attempt_at=at,
        )
        report.retry_at.append(at)

    def _record(
        self,
        row: ledger.ClaimedRow,
        org: OrgConfig,
        report: SendReport,
        status: str,
        **values: object,
    ) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            won = ledger.finish(
                conn, row.id, values={"status": status, "updated_at": now, **values}
            )
        if not won:
            report.lost += 1
            return
        counter = {"pending": "retrying"}.get(status, status)
        setattr(report, counter, getattr(report, counter) + 1)
        level = logging.WARNING if status in ("failed", "unknown") else logging.INFO
        log.log(
            level,
            "text %s org=%s id=%d to=%s attempt=%d%s%s",
            "retry scheduled" if status == "pending" else status,
            org.slug,
            row.id,
            mask_phone(row.phone_e164 or row.phone),
            row.attempts,
            f" code={values['error_code']}" if values.get("error_code") else "",
            f" reason={values['reason']}" if values.get("reason") else "",
        )
