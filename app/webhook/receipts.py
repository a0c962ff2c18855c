"""What Twilio's callbacks change in the database: delivery statuses and opt-outs.

Plain functions over an Engine, so the HTTP layer stays a thin shell around them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, delete, or_, select

from app.db import ledger
from app.db.models import OptOut, Organization, Reminder
from app.domain import planning
from app.domain.phones import mask_phone
from app.settings import Settings

log = logging.getLogger("app.webhook")

#: How far along a message is. A callback only moves a row to a higher rank, so a late or
#: repeated callback (Twilio sends them concurrently and out of order) never moves it back.
DELIVERY_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "canceled": 4,
    "partially_delivered": 4,
    "read": 5,
}

# Twilio's "message expired": its validity period passed while it waited in Twilio's queue.
EXPIRED_IN_QUEUE = "30036"

OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
)
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
# Opt-outs a customer's START may lift: their own STOP, or Twilio's 21610 which a STOP caused.
# An operator's opt-out (`reminders opt-out`, source "cli") is theirs to lift.
_CUSTOMER_SOURCES = ("inbound", "provider")


def record_delivery(
    engine: Engine, *, message_sid: str, status: str, error_code: str | None, now: datetime
) -> bool:
    """Store a status callback on the ledger row with that SID; False if nothing moved."""
    if status == "failed" and error_code == EXPIRED_IN_QUEUE:
        return _requeue_expired(engine, message_sid=message_sid, now=now)
    rank = DELIVERY_RANK.get(status)
    if rank is None:
        return False
    lower = [name for name, r in DELIVERY_RANK.items() if r < rank]
    with engine.begin() as conn:
        moved = ledger.record_delivery(
            conn,
            message_sid=message_sid,
            status=status,
            lower=lower,
            error_code=error_code,
            now=now,
        )
    log.info(
        "delivery %s for %s%s%s",
        status,
        message_sid,
        f" code={error_code}" if error_code else "",
        "" if moved else " (no change: unknown SID or not newer)",
    )
    return moved


def _requeue_expired(engine: Engine, *, message_sid: str, now: datetime) -> bool:
    with engine.begin() as conn:
        found = conn.execute(
            select(
                Reminder.id,
                Organization.timezone,
                Organization.window_start,
                Organization.window_end,
            )
            .join(Organization, Organization.id == Reminder.org_id)
            .where(Reminder.provider_message_id == message_sid)
        ).first()
        if found is None:
            moved = False
        else:
            row_id, tz, start, end = found
            until = planning.next_window_open(now, tz, (start, end))
            moved = ledger.requeue_expired(
                conn, row_id, message_sid=message_sid, until=until, now=now
            )
    log.warning(
        "text %s expired in Twilio's queue (30036)%s",
        message_sid,
        ": it waits for the next opening" if moved else " (no change: unknown SID or not sent)",
    )
    return moved


def keyword(body: str) -> str:
    """The message as a keyword: trimmed, upper case, without trailing punctuation."""
    return body.strip().rstrip(".!").strip().upper()


@dataclass(frozen=True)
class InboundResult:
    action: str  # "opt_out", "opt_in" or "ignored"
    organizations: int


def handle_inbound(
    engine: Engine,
    settings: Settings,
    *,
    from_number: str,
    to_number: str,
    messaging_service_sid: str | None,
    body: str,
    now: datetime,
) -> InboundResult:
    """STOP-family words opt the sender out of every organization using the receiving number;
    START/UNSTOP/YES opt them back in."""
    word = keyword(body)
    if word in OPT_OUT_KEYWORDS:
        action = "opt_out"
    elif word in OPT_IN_KEYWORDS:
        action = "opt_in"
    else:
        return InboundResult("ignored", 0)
    with engine.begin() as conn:
        org_ids = list(
            conn.execute(
                select(Organization.id).where(
                    _uses_number(settings, to_number, messaging_service_sid)
                )
            ).scalars()
        )
        for org_id in org_ids:
            if action == "opt_out":
                ledger.add_opt_out(
                    conn, org_id=org_id, phone_e164=from_number, source="inbound", now=now
                )
        if action == "opt_in" and org_ids:
            conn.execute(
                delete(OptOut).where(
                    OptOut.org_id.in_(org_ids),
                    OptOut.phone_e164 == from_number,
                    OptOut.source.in_(_CUSTOMER_SOURCES),
                )
            )
    log.info(
        "inbound %s from %s to %s: %s for %d organization(s)",
        word,
        mask_phone(from_number),
        to_number,
        action,
        len(org_ids),
    )
    return InboundResult(action, len(org_ids))


def _uses_number(
    settings: Settings, to_number: str, messaging_service_sid: str | None
) -> ColumnElement[bool]:
    """Organizations whose texts go out from ``to_number`` (or its Messaging Service)."""
    own = [to_number] + ([messaging_service_sid] if messaging_service_sid else [])
    clauses: list[ColumnElement[bool]] = [Organization.sender.in_(own)]
    defaults = {settings.twilio_from_number, settings.twilio_messaging_service_sid} - {None}
    if defaults & set(own):
        # Organizations without a sender of their own use the default one.
        clauses.append(or_(Organization.sender.is_(None), Organization.sender == ""))
    return or_(*clauses)
