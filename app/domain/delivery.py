"""What a provider's delivery receipts mean for a text, whatever order they arrive in.

A receipt only moves a text to a higher rank, so a late or repeated callback (Twilio sends them
concurrently and out of order) never moves it back. The same rule decides a receipt applied
as it comes and receipts kept until the text's message id was recorded (``fold``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: How far along a message is.
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

#: Twilio's "message expired": its validity period passed while it waited in Twilio's queue.
EXPIRED_IN_QUEUE = "30036"

#: Twilio's answers that say the number itself cannot take texts: 30005 unknown handset,
#: 30006 landline or unreachable carrier (on a callback), 21614 "To" is not a mobile number
#: (the answer to a send).
UNDELIVERABLE_CODES = frozenset({"30005", "30006", "21614"})


def expired_in_queue(status: str, error_code: str | None) -> bool:
    return status == "failed" and error_code == EXPIRED_IN_QUEUE


def lower_than(status: str) -> list[str] | None:
    """The statuses a receipt of ``status`` may replace; None: not a status we know."""
    rank = DELIVERY_RANK.get(status)
    if rank is None:
        return None
    return [name for name, r in DELIVERY_RANK.items() if r < rank]


@dataclass(frozen=True)
class Receipt:
    status: str
    error_code: str | None = None


@dataclass(frozen=True)
class Moved:
    """The text's delivery status and error code after the receipts."""

    status: str
    error_code: str | None


class Expired:
    """A receipt said the text expired in the provider's queue: it goes again."""


def fold(
    current: str | None, error_code: str | None, receipts: Iterable[Receipt]
) -> Moved | Expired | None:
    """The receipts, in the order they arrived, applied one by one to a text whose delivery
    status is ``current``: what it ends with (None: nothing moves)."""
    kept = list(receipts)
    if any(expired_in_queue(r.status, r.error_code) for r in kept):
        return Expired()
    moved = False
    for r in kept:
        lower = lower_than(r.status)
        if lower is None or (current is not None and current not in lower):
            continue
        current, moved = r.status, True
        if r.error_code:
            error_code = r.error_code
    return Moved(current, error_code) if moved and current is not None else None
