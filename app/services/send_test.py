"""`reminders send-test`: one real text through the configured provider, to check the wiring.

The text is rendered from the organization's template with the sample data a preview uses, and
recorded in ``test_messages``, never in the ledger: it is no reminder, takes no (subscription,
expiry, lead day) slot, so it can neither be counted with the day's texts nor block one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.orm import Session

from app.db import ledger
from app.db.models import OptOut, Organization, SendTestMessage
from app.domain import planning
from app.domain.phones import InvalidPhone, normalize_phone
from app.errors import ReminderError, ValidationError
from app.providers import PermanentError, ProviderError, SmsProvider, UnknownOutcomeError
from app.services import orgs as org_service

SENDING, SENT, FAILED, UNKNOWN = "sending", "sent", "failed", "unknown"


@dataclass(frozen=True)
class SentTest:
    id: int
    org_id: int
    org: str
    phone: str
    sender: str | None
    lead_days: int
    body: str
    segments: int
    encoding: str
    origin: str  # where the template came from ("acme default", "built-in default", …)


def prepare(
    conn: Connection, slug: str, phone: str, *, lead: int | None, now: datetime
) -> SentTest:
    """Check the request, render the text and record it as ``sending`` (nothing sent yet)."""
    org = org_service.get_org(conn, slug)
    if not org.active:
        raise ValidationError(
            f"organization {slug} is disabled and sends nothing; `reminders org enable {slug}` "
            "turns it back on"
        )
    if lead is not None and not 0 <= lead <= 365:
        raise ValidationError(f"--lead {lead}: must be between 0 and 365")
    try:
        e164 = normalize_phone(phone, org.country)
    except InvalidPhone as exc:
        raise ValidationError(f"{exc} (national numbers are read as {org.country})") from None
    opted_out = conn.execute(
        select(OptOut.id).where(OptOut.org_id == org.id, OptOut.phone_e164 == e164)
    ).first()
    if opted_out:
        raise ValidationError(
            f"{e164} opted out of {slug} texts; `reminders opt-in {slug} {e164}` first if they "
            "asked for texts again"
        )
    preview, origin = org_service.preview(conn, slug, lead=lead)
    lead_days = lead if lead is not None else max(org.leads)
    values = {
        "org_id": org.id,
        "phone": e164,
        "sender": org.sender,
        "lead_days": lead_days,
        "body": preview.body,
        "segments": preview.segments.segments,
        "encoding": preview.segments.encoding,
        "status": SENDING,
        "created_at": now,
    }
    inserted = conn.execute(insert(SendTestMessage).values(**values)).inserted_primary_key
    assert inserted is not None
    return SentTest(
        id=inserted[0],
        org_id=org.id,
        org=slug,
        phone=e164,
        sender=org.sender,
        lead_days=lead_days,
        body=preview.body,
        segments=preview.segments.segments,
        encoding=preview.segments.encoding,
        origin=origin,
    )


def send_test(
    engine: Engine,
    provider: SmsProvider,
    slug: str,
    phone: str,
    *,
    lead: int | None,
    now: datetime,
) -> tuple[SentTest, str]:
    """Record, send, record the outcome; returns the text and the provider's message id.

    The row is written before the request, so a crash mid-send leaves it ``sending`` rather
    than leaving no trace of a text that may have gone out. A refusal raises ReminderError
    after its outcome is stored."""
    with engine.begin() as conn:
        text = prepare(conn, slug, phone, lead=lead, now=now)
    try:
        message_id = provider.send(text.phone, text.body, text.sender)
    except ProviderError as exc:
        status = UNKNOWN if isinstance(exc, UnknownOutcomeError) else FAILED
        _finish(engine, text.id, status=status, error_code=exc.code, error_message=exc.message)
        stopped = isinstance(exc, PermanentError) and exc.opted_out
        if stopped:  # as for a reminder: the recipient said STOP, no later day may try
            with engine.begin() as conn:
                ledger.add_opt_out(
                    conn, org_id=text.org_id, phone_e164=text.phone, source="provider", now=now
                )
        what = "may or may not have gone out" if status == UNKNOWN else "was not sent"
        raise ReminderError(
            f"the test text to {text.phone} {what}: {exc.message}; recorded as test message "
            f"{text.id}" + (f"; {text.phone} is now opted out of {slug} texts" if stopped else "")
        ) from None
    _finish(engine, text.id, status=SENT, provider_message_id=message_id)
    return text, message_id


def _finish(engine: Engine, test_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(update(SendTestMessage).where(SendTestMessage.id == test_id).values(**values))


def sent_test_rows(
    engine: Engine,
    *,
    on_date: date | None = None,
    slug: str | None = None,
    status: str | None = None,
) -> list[dict[str, Any]]:
    """Test texts shaped like `messages` rows (no customer or subscription), ``test`` true."""
    stmt = (
        select(SendTestMessage, Organization.slug, Organization.timezone)
        .join(Organization, Organization.id == SendTestMessage.org_id)
        .order_by(SendTestMessage.id)
    )
    if slug is not None:
        stmt = stmt.where(Organization.slug == slug)
    if status is not None:
        stmt = stmt.where(SendTestMessage.status == status)
    rows = []
    with engine.connect() as conn:
        for t, org_slug, tz in Session(bind=conn).execute(stmt):
            local = planning.local_date(t.created_at, tz)
            if on_date is not None and local != on_date:
                continue
            rows.append(
                {
                    "id": t.id,
                    "org": org_slug,
                    "customer_id": None,
                    "subscription_id": None,
                    "phone": t.phone,
                    "lead_days": t.lead_days,
                    "days_left": t.lead_days,
                    "expires_on": None,
                    "local_date": local.isoformat(),
                    "status": t.status,
                    "reason": None,
                    "body": t.body,
                    "template_fallback": None,
                    "segments": t.segments,
                    "encoding": t.encoding,
                    "attempts": 1,
                    "error_code": t.error_code,
                    "error_message": t.error_message,
                    "provider_message_id": t.provider_message_id,
                    "delivery_status": None,
                    "next_attempt_at": None,
                    "sent_at": t.created_at.isoformat() if t.status == SENT else None,
                    "test": True,
                }
            )
    return rows
