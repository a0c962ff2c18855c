"""Settle texts whose outcome is unknown by asking the provider, never by guessing.

A row is ``unknown`` when the provider may have accepted the text (a read timeout), and a row
stuck in ``sending`` past ``REMINDER_STALE_SENDING_SECONDS`` belongs to a worker that died
mid-send. For each, the provider is asked whether a message to that number with that body was
created after the attempt began: found means ``sent`` with its id; not found once the safe delay
has passed (the provider's list may lag a little behind its accepts) means ``pending`` for one
more attempt. Each move is one conditional UPDATE naming the status it expects, so two
reconcilers, or a reconciler and a late worker, never both act on one row.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Engine, and_, or_, select

from app.db import ledger
from app.db.models import Customer, Reminder
from app.domain.phones import mask_phone
from app.providers.base import ProviderError, SentMessage, SmsProvider

log = logging.getLogger("app.reconcile")

#: How long after an attempt began a message missing from the provider's list counts as not sent.
DEFAULT_SAFE_DELAY_SECONDS = 300.0


@dataclass
class ReconcileReport:
    checked: int = 0
    sent: int = 0  # found at the provider: recorded as sent
    retried: int = 0  # not found after the safe delay: back to pending for one more attempt
    waiting: int = 0  # not found yet, still inside the safe delay: asked again next run
    errors: int = 0  # the provider could not be asked: left as they were
    lost: int = 0  # moved by someone else meanwhile

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class _Row:
    id: int
    status: str
    phones: tuple[str, ...]
    body: str | None
    sender: str | None
    started: datetime
    claimed_at: datetime | None  # part of every WHERE: a re-claimed row is a different attempt


def reconcile(
    engine: Engine,
    provider: SmsProvider,
    *,
    now: datetime,
    stale_sending_seconds: float,
    since: date | None = None,
    safe_delay_seconds: float = DEFAULT_SAFE_DELAY_SECONDS,
    lookups_in_flight: int = 8,
) -> ReconcileReport:
    """Settle ``unknown`` rows and stale ``sending`` rows (of local dates >= ``since``)."""
    report = ReconcileReport()
    rows = _candidates(
        engine, now=now, stale_before=now - timedelta(seconds=stale_sending_seconds), since=since
    )
    report.checked = len(rows)
    if not rows:
        return report
    safe_before = now - timedelta(seconds=safe_delay_seconds)
    if not provider.can_reconcile:
        # Nothing to ask: the text most likely never left, so one more attempt beats silence.
        for row in rows:
            _retry(engine, row, report, now=now)
        return report
    with ThreadPoolExecutor(max_workers=max(1, lookups_in_flight)) as pool:
        answers = list(pool.map(lambda row: _lookup(provider, row), rows))
    for row, answer in zip(rows, answers, strict=True):
        if isinstance(answer, ProviderError):
            report.errors += 1
            log.warning(
                "reconcile: cannot ask %s about row %d: %s", provider.name, row.id, answer.message
            )
        elif answer is not None:
            _found(engine, row, answer, report, now=now)
        elif row.started <= safe_before:
            _retry(engine, row, report, now=now)
        else:
            report.waiting += 1
    return report


def _candidates(
    engine: Engine, *, now: datetime, stale_before: datetime, since: date | None
) -> list[_Row]:
    stmt = (
        select(
            Reminder.id,
            Reminder.status,
            Customer.phone_e164,
            Reminder.phone,
            Reminder.body,
            Reminder.sender,
            Reminder.claimed_at,
            Reminder.updated_at,
        )
        .join(Customer, Customer.id == Reminder.customer_id)
        .where(
            or_(
                Reminder.status == "unknown",
                and_(Reminder.status == "sending", Reminder.claimed_at < stale_before),
            )
        )
        .order_by(Reminder.id)
    )
    if since is not None:
        stmt = stmt.where(Reminder.local_date >= since)
    with engine.connect() as conn:
        result = conn.execute(stmt).all()
    rows = []
    for rid, status, phone_now, phone_planned, body, sender, claimed_at, updated_at in result:
        # The engine sends to the customer's current number; the planned one is a fallback.
        phones = tuple(dict.fromkeys(p for p in (phone_now, phone_planned) if p))
        started = claimed_at or updated_at or now
        rows.append(_Row(rid, status, phones, body, sender, started, claimed_at))
    return rows


def _lookup(provider: SmsProvider, row: _Row) -> SentMessage | ProviderError | None:
    if row.body is None:
        return None  # never rendered, so never sent
    try:
        for phone in row.phones:
            found = provider.find_sent(
                to=phone, body=row.body, sender=row.sender, since=row.started
            )
            if found is not None:
                return found
    except ProviderError as exc:
        return exc
    return None


def _found(
    engine: Engine, row: _Row, message: SentMessage, report: ReconcileReport, *, now: datetime
) -> None:
    found = (message.message_id, message.created_at or now, message.status)
    _move(engine, row, found, report, now=now)


def _retry(engine: Engine, row: _Row, report: ReconcileReport, *, now: datetime) -> None:
    _move(engine, row, None, report, now=now)


def _move(
    engine: Engine,
    row: _Row,
    found: tuple[str, datetime, str | None] | None,
    report: ReconcileReport,
    *,
    now: datetime,
) -> None:
    with engine.begin() as conn:
        won = ledger.settle_unknown(
            conn, row.id, status=row.status, claimed_at=row.claimed_at, found=found, now=now
        )
    if not won:
        report.lost += 1
        return
    counter = "sent" if found is not None else "retried"
    setattr(report, counter, getattr(report, counter) + 1)
    log.info(
        "reconcile: row %d to %s %s -> %s",
        row.id,
        mask_phone(row.phones[0] if row.phones else None),
        row.status,
        "sent" if found is not None else "pending",
    )
