"""Status callbacks that came before their message id: kept, then taken when the id lands.

Twilio may call back before the answer to the create-message request is recorded. Such a
callback is kept here (one row per message id and status) and taken by the transaction that
records the id on its ledger row (``ledger.record``, ``ledger.settle_unknown``).

The callback and that transaction each take a transaction-scoped advisory lock on the message
id first (PostgreSQL), so whichever commits second sees the other's work: the callback finds
the row, or the recording finds the kept callback. SQLite runs one writer at a time anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite

from app.db.models import EarlyReceipt, Reminder, SendTestMessage
from app.domain.delivery import Receipt

#: How long a callback nobody's message id matched is kept (the sweeper purges it then).
KEEP = timedelta(days=7)

_LOCK = text(
    "SELECT pg_advisory_xact_lock(k) FROM "
    "(SELECT DISTINCT hashtextextended(s, 0) AS k FROM unnest(CAST(:sids AS TEXT[])) AS s) AS l "
    "ORDER BY k"
)


def lock(conn: Connection, sids: Sequence[str]) -> None:
    """Serialize with any other transaction about these message ids, until this one ends."""
    if sids and conn.dialect.name == "postgresql":
        conn.execute(_LOCK, {"sids": list(sids)})


def known(conn: Connection, sid: str) -> bool:
    """A ledger row or a `send-test` text has this message id."""
    return conn.execute(
        select(
            or_(
                select(Reminder.id).where(Reminder.provider_message_id == sid).exists(),
                select(SendTestMessage.id)
                .where(SendTestMessage.provider_message_id == sid)
                .exists(),
            )
        )
    ).scalar_one()


def keep(
    conn: Connection,
    *,
    sid: str,
    status: str,
    error_code: str | None,
    phone_e164: str | None,
    now: datetime,
) -> bool:
    """Keep a callback for later; False if this (message id, status) was already kept."""
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(EarlyReceipt)
        .values(
            sid=sid, status=status, error_code=error_code, phone_e164=phone_e164, received_at=now
        )
        .on_conflict_do_nothing()
        .returning(EarlyReceipt.id)
    )
    return conn.execute(stmt).first() is not None


@dataclass(frozen=True)
class Taken:
    """A kept callback whose message id is now on a ledger row."""

    row_id: int
    sid: str
    receipt: Receipt
    phone_e164: str | None


def take(conn: Connection, sids: Sequence[str]) -> list[Taken]:
    """The kept callbacks of these message ids that a ledger row now has, in the order they
    arrived, deleted (the caller applies them in its transaction). Call ``lock`` first."""
    if not sids:
        return []
    found: Sequence[Any]
    if conn.dialect.name == "postgresql":
        # Every recorded group asks, and almost never finds one: one statement, compiled once,
        # whatever the number of ids (it runs in every outcome's write).
        found = sorted(conn.execute(_TAKE, {"sids": list(sids)}).all())
    else:
        found = _take_by_select(conn, sids)
    return [Taken(row_id, sid, Receipt(s, code), to) for _, row_id, sid, s, code, to in found]


def _take_by_select(conn: Connection, sids: Sequence[str]) -> Sequence[Any]:
    """``take``'s rows (receipt id first) where DELETE … USING … RETURNING is not to hand."""
    found = conn.execute(
        select(
            EarlyReceipt.id,
            Reminder.id,
            EarlyReceipt.sid,
            EarlyReceipt.status,
            EarlyReceipt.error_code,
            EarlyReceipt.phone_e164,
        )
        .join(Reminder, Reminder.provider_message_id == EarlyReceipt.sid)
        .where(EarlyReceipt.sid.in_(list(sids)))
        .order_by(EarlyReceipt.id)
    ).all()
    if found:
        conn.execute(delete(EarlyReceipt).where(EarlyReceipt.id.in_([f[0] for f in found])))
    return found


_TAKE = text(
    "DELETE FROM early_receipts AS e USING reminders AS r"
    " WHERE r.provider_message_id = e.sid AND e.sid = ANY(CAST(:sids AS TEXT[]))"
    " RETURNING e.id, r.id, e.sid, e.status, e.error_code, e.phone_e164"
)


def purge(conn: Connection, *, now: datetime) -> int:
    """Kept callbacks older than ``KEEP`` (no message id of ours ever matched them)."""
    result = conn.execute(delete(EarlyReceipt).where(EarlyReceipt.received_at < now - KEEP))
    return result.rowcount or 0


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(EarlyReceipt)).scalar_one())
