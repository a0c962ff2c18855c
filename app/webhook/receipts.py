"""What Twilio's callbacks change in the database: delivery statuses and opt-outs.

Plain functions over an Engine, so the HTTP layer stays a thin shell around them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, or_, select

from app.db import early_receipts, ledger, undeliverable
from app.db.models import Organization
from app.domain import delivery
from app.domain.phones import mask_phone
from app.settings import Settings

log = logging.getLogger("app.webhook")

OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
)
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
# Opt-outs a customer's START may lift: their own STOP, or Twilio's 21610 which a STOP caused.
# An operator's opt-out (`reminders opt-out`, source "cli") is theirs to lift.
_CUSTOMER_SOURCES = ("inbound", "provider")


def record_delivery(
    engine: Engine,
    *,
    message_sid: str,
    status: str,
    error_code: str | None,
    now: datetime,
    to: str | None = None,
) -> bool:
    """Store a status callback on the ledger row with that SID; False if nothing moved.

    A callback for a SID no row has yet (Twilio can call back before the answer to the send is
    recorded) is kept and applied when the SID lands (``ledger.apply_early_receipts``).
    30005/30006 mark the number undeliverable for the row's organization.
    """
    lower = delivery.lower_than(status)
    if lower is None:
        log.info("delivery %s for %s: not a status we know; ignored", status, message_sid)
        return False
    expired = delivery.expired_in_queue(status, error_code)
    with engine.begin() as conn:
        early_receipts.lock(conn, [message_sid])
        if expired:
            moved = ledger.requeue_expired(conn, [message_sid], now=now) > 0
        else:
            moved = ledger.record_delivery(
                conn,
                message_sid=message_sid,
                status=status,
                lower=lower,
                error_code=error_code,
                now=now,
            )
        marked = error_code in delivery.UNDELIVERABLE_CODES and undeliverable.mark_of_message(
            conn, sid=message_sid, phone_e164=to, code=error_code or "", now=now
        )
        kept = (
            not moved
            and not early_receipts.known(conn, message_sid)
            and early_receipts.keep(
                conn,
                sid=message_sid,
                status=status,
                error_code=error_code,
                phone_e164=to,
                now=now,
            )
        )
    if kept:
        note = " (kept: no row has this SID yet)"
    elif moved:
        note = ""
    elif expired:
        note = " (no change: unknown SID or not sent)"
    else:
        note = " (no change: not newer, or already kept)"
    log.log(
        logging.WARNING if expired else logging.INFO,
        "delivery %s for %s%s%s%s",
        status,
        message_sid,
        f" code={error_code}" if error_code else "",
        ": number marked undeliverable" if marked else "",
        note,
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
        if action == "opt_in":
            ledger.remove_opt_outs(
                conn,
                org_ids=org_ids,
                phone_e164=from_number,
                sources=_CUSTOMER_SOURCES,
                source="inbound",
                now=now,
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
