"""The day's rules, as plain functions over the ledger's facts (README, "The rules").

The sender decides each text through these just before it goes out, and the manual run and
the daily task decide which dates are sent for, so the rules hold whichever path a text takes.
Each is checked by a property-based test against a small reference model
(tests/domain/test_rules.py) and the whole engine by tests/services/test_day_rules_model.py.

R1 once per lead · R2 never backwards · R3 true when it leaves · R4 inside the window ·
R5 not lost · R6 finished means finished · R7 no broken sentences.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from app.domain import planning
from app.domain.status import MAY_HAVE_SENT  # noqa: F401 - R2 counts these as sent


def text_lead(days_left: int, leads: Iterable[int]) -> int | None:
    """The lead day a text with ``days_left`` to go belongs to (R3), or None: too late.

    That is the due lead (the smallest lead >= days_left). On the expiry day itself, when 0 is
    not a lead, a held or retried text still goes ("expires today", R5) and belongs to the
    smallest lead. After the expiry nothing goes.
    """
    lead_set = set(leads)
    if days_left < 0 or not lead_set:
        return None
    if days_left == 0 and 0 not in lead_set:
        return min(lead_set)
    return planning.due_lead(days_left, lead_set)


def sends_for(on_date: date | None, today: date) -> bool:
    """R3: only the organization's own today is sent for; any other date is a preview."""
    return on_date is None or on_date == today


@dataclass(frozen=True)
class RowFacts:
    """What the ledger knows of a row about to be sent, read when it is claimed."""

    expires_on: date  # the expiry the row was planned for
    sub_expires_on: date  # the subscription's expiry now
    sub_active: bool
    phone_valid: bool
    opted_out: bool
    # The fewest days left among the other texts for this expiry that may have been sent.
    nearest_sent: int | None
    # The provider said the number cannot take texts (app.db.undeliverable).
    undeliverable: bool = False


@dataclass(frozen=True)
class Send:
    days_left: int
    lead: int


@dataclass(frozen=True)
class Skip:
    reason: str


def decide(facts: RowFacts, *, today: date, leads: Iterable[int]) -> Send | Skip:
    """Send this row now, with which count and lead; or skip it, and why (R2, R3, R5).

    Only a cancellation, a renewal, an invalid number, an opt-out, a number the provider said
    is undeliverable, the expiry or a nearer text already sent stop a text; a held or retried
    one whose lead day has passed goes with the true count instead of being dropped.
    """
    if not facts.sub_active:
        return Skip("cancelled")
    if facts.sub_expires_on != facts.expires_on:
        return Skip("renewed")
    if not facts.phone_valid:
        return Skip("invalid_phone")
    if facts.opted_out:
        return Skip("opted_out")
    if facts.undeliverable:
        return Skip("undeliverable")
    days_left = (facts.expires_on - today).days
    if days_left < 0:
        return Skip("expired")
    if facts.nearest_sent is not None and facts.nearest_sent <= days_left:
        return Skip(f"superseded: a nearer text ({facts.nearest_sent} days left)")
    lead = text_lead(days_left, leads)
    if lead is None:
        return Skip(f"not_due: {days_left} days left is beyond the lead days")
    return Send(days_left=days_left, lead=lead)


def superseded_by(lead: int) -> Skip:
    """The row could not take its true lead: another row of that lead holds the key (R1)."""
    return Skip(f"superseded: the {lead}-day reminder goes instead")
