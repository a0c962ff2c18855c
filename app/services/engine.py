"""The reminder engine: plan a day set-based, then claim, re-check, render and send each row.

Entry points (CLI, Celery tasks) stay thin and call these functions. Every decision about the
clock takes ``now`` (aware UTC) from the caller, so tests freeze time and production uses the
process clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Protocol

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from app.db import outbox
from app.db import plan as plan_sql
from app.db.models import DEFAULT_TEMPLATE_LEAD, Organization, Template
from app.domain import planning
from app.domain.segments import count_segments
from app.domain.templates import (
    DEFAULT_TEMPLATE,
    CustomerVars,
    OrganizationVars,
    SubscriptionVars,
    TemplateRefused,
    TemplateTooSlow,
    render_or_default,
)
from app.settings import get_settings

log = logging.getLogger("app.engine")

#: The reason of a text that failed because its organization's template went past a bound.
TEMPLATE_REFUSED = "template_refused"


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
    """Template lookup: organization + lead day, organization default, built-in default; and
    the time one render may take (``TEMPLATE_RENDER_BUDGET_MS`` unless given)."""

    def __init__(
        self, conn: Connection, org_ids: Iterable[int], *, budget_ms: float | None = None
    ) -> None:
        self.budget_ms = (
            get_settings().template_render_budget_ms if budget_ms is None else budget_ms
        )
        self._sources: dict[tuple[int, int], str] = {}
        # Sources that ran out of time once: the rest of their texts fail without rendering,
        # or one slow template would cost its budget again for every row of the batch.
        self.too_slow: dict[str, TemplateTooSlow] = {}
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


class Renderable(Protocol):
    """A planned or claimed ledger row: what its template needs besides the day."""

    @property
    def lead_days(self) -> int: ...
    @property
    def customer_name(self) -> str: ...
    @property
    def plan(self) -> str: ...
    @property
    def expires_on(self) -> date: ...
    @property
    def amount(self) -> Decimal | None: ...
    @property
    def currency(self) -> str | None: ...


def render_body(
    book: TemplateBook, org: OrgConfig, item: Renderable, *, days_left: int, lead: int | None = None
) -> tuple[str, str | None]:
    """The text for one row with ``days_left`` to go as a text of ``lead`` (default: the row's),
    and None; or, when the organization's template fails for this customer, the built-in
    default's text and the template's problem (R7: a plain reminder beats none, and the row
    records why). A template past a bound raises TemplateRefused: that text fails."""
    lead = item.lead_days if lead is None else lead
    source = book.source(org.id, lead)
    slow = book.too_slow.get(source)
    if slow is not None:
        raise TemplateTooSlow(str(slow))
    try:
        return _render_body(book, org, item, source, days_left=days_left, lead=lead)
    except TemplateTooSlow as exc:
        book.too_slow[source] = exc
        raise


def _render_body(
    book: TemplateBook, org: OrgConfig, item: Renderable, source: str, *, days_left: int, lead: int
) -> tuple[str, str | None]:
    return render_or_default(
        source,
        customer=CustomerVars(name=item.customer_name),
        organization=OrganizationVars(name=org.name),
        subscription=SubscriptionVars(
            plan=item.plan,
            expires_on=item.expires_on,
            amount=item.amount,
            currency=item.currency,
        ),
        days_left=days_left,
        lead_days=lead,
        budget_ms=book.budget_ms,
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
    on_page: Callable[[list[int]], None] | None = None,
    render: bool = True,
) -> PlanReport:
    """Plan every due reminder for each organization's local day, with its rendered body.

    One set-based query finds what the ledger lacks; bodies are rendered in Python page by
    page and each page is written with one INSERT … ON CONFLICT DO NOTHING, so a re-run or a
    concurrent run adds nothing twice. A template that fails for a customer gives that row the
    built-in wording, recorded in ``template_fallback`` (R7).

    Pages take turns between organizations. Without ``on_page`` everything happens in the
    caller's transaction. With it, each page is committed and ``on_page`` gets its new
    ``pending`` ids, already marked as handed to the broker: ``on_page`` must enqueue them,
    so they are sent while the next page is rendered (a crash in between loses nothing:
    planned rows are in the ledger, the sweeper enqueues rows whose message was lost, and a
    re-run adds only the rest).

    Without ``render`` the rows are planned with no body: each text is rendered when it
    leaves (the sender renders what has none, and its claim writes it), so the daily run's
    plan is the ledger's decisions alone, and a template changed after planning still
    applies. With it (the manual run and its preview), every planned row shows its text.
    """
    report = PlanReport()
    if on_page is not None and on_date is not None:
        raise ValueError("only today's plan is handed on to be sent (R3); plan other dates dry")
    org_days = [
        plan_sql.OrgDay(
            org_id=org.id,
            local_date=org.today(now, on_date),
            offsets=tuple(planning.due_offsets(org.leads)),
        )
        for org in orgs.values()
    ]
    book = TemplateBook(conn, orgs)
    analyzed = 0
    for new in _planned_pages(conn, org_days, orgs, book, now, page, on_page, render):
        report.planned += sum(new.counts.values())
        report.skipped += new.counts.get("skipped", 0)
        report.failed += new.counts.get("failed", 0)
        report.rendered += new.counts.get("pending", 0) if render else 0
        if new.counts.get("skipped") or new.counts.get("failed"):
            # Rows that will never be tried are told now, in the page's transaction.
            days = {d.org_id: d.local_date for d in org_days}
            outbox.planned(conn, org_days=days, created_at=now, now=now)
        if on_page is None:
            continue
        # Statistics when the ledger has doubled since they were last taken: the pages'
        # hand-overs and claims get good plans at O(log n) ANALYZEs for the day.
        if report.planned - analyzed >= max(plan_sql.REFRESH_STATISTICS_AFTER, analyzed):
            plan_sql.refresh_statistics(conn)
            analyzed = report.planned
        conn.commit()
        if new.pending:
            on_page(new.pending)
    if report.planned - analyzed >= plan_sql.REFRESH_STATISTICS_AFTER:
        plan_sql.refresh_statistics(conn)
    return report


def _planned_pages(
    conn: Connection,
    org_days: list[plan_sql.OrgDay],
    orgs: dict[int, OrgConfig],
    book: TemplateBook,
    now: datetime,
    page: int,
    on_page: Callable[[list[int]], None] | None,
    render: bool,
) -> Iterator[plan_sql.Inserted]:
    """Each page's insert: rendered in Python, or (no bodies) straight from SQL."""
    if not render:
        yield from plan_sql.insert_candidates(
            conn, org_days, now=now, page=page, handed_over=on_page is not None
        )
        return
    for candidates in plan_sql.candidates(conn, org_days, page=page):
        rows = [
            _planned_row(c, orgs[c.org_id], book, now, handed_over=on_page is not None)
            for c in candidates
        ]
        yield plan_sql.insert_rows(conn, rows)


def _planned_row(
    c: plan_sql.Candidate, org: OrgConfig, book: TemplateBook, now: datetime, *, handed_over: bool
) -> dict[str, object]:
    if c.skip_reason:
        return plan_sql.row_values(c, now=now, status="skipped", reason=c.skip_reason)
    try:
        body, fallback = render_body(book, org, c, days_left=c.days_left)
    except TemplateRefused as exc:
        log.warning(
            "template of %s refused for subscription %d (%s); the text fails",
            org.slug,
            c.subscription_id,
            exc,
        )
        failed = plan_sql.row_values(c, now=now, status="failed", reason=TEMPLATE_REFUSED)
        return {**failed, "error_message": str(exc)}
    if fallback:
        log.warning(
            "template of %s failed for subscription %d (%s); planned in the built-in wording",
            org.slug,
            c.subscription_id,
            fallback,
        )
    info = count_segments(body)
    return plan_sql.row_values(
        c,
        now=now,
        status="pending",
        body=body,
        segments=info.segments,
        encoding=info.encoding,
        template_fallback=fallback,
        handed_over=handed_over,
    )
