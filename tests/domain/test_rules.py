"""The day's rules as plain functions, checked against small reference models (Hypothesis)."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from app.domain import rules

LEADS = st.sets(st.integers(0, 30), min_size=1, max_size=5)
EXPIRY = date(2030, 6, 15)


def reference_lead(days_left: int, leads: set[int]) -> int | None:
    """Count down the lead days: a text with ``days_left`` to go belongs to the lead whose
    stretch of days (from it down to the next smaller lead, exclusive) holds that day; the
    expiry day belongs to the smallest lead."""
    if days_left < 0:
        return None
    ordered = sorted(leads)
    for i, lead in enumerate(ordered):
        lower = ordered[i - 1] if i else -1
        if lower < days_left <= lead or (days_left == lead == 0):
            return lead
    return None if days_left > ordered[-1] else ordered[0]


@given(days_left=st.integers(-3, 40), leads=LEADS)
def test_a_texts_lead_is_the_one_whose_stretch_holds_its_day(
    days_left: int, leads: set[int]
) -> None:
    assert rules.text_lead(days_left, leads) == reference_lead(days_left, leads)


def facts(*, nearest_sent: int | None = None, **changes: object) -> rules.RowFacts:
    values: dict[str, object] = {
        "expires_on": EXPIRY,
        "sub_expires_on": EXPIRY,
        "sub_active": True,
        "phone_valid": True,
        "opted_out": False,
        "nearest_sent": nearest_sent,
    }
    values.update(changes)
    return rules.RowFacts(**values)  # type: ignore[arg-type]


@given(
    days=st.lists(st.integers(-2, 35), min_size=1, max_size=30),
    leads=LEADS,
)
def test_whatever_order_the_days_come_in_no_text_goes_backwards_or_twice_per_lead(
    days: list[int], leads: set[int]
) -> None:
    """R1 and R2 against a model of the ledger: the days a row is tried on may come in any
    order (a clock or zone changed, a run for another date); what goes out still counts down,
    one text per lead, each with its true count."""
    sent: list[tuple[int, int]] = []  # (days left, lead), in the order sent
    for days_left in days:
        nearest = min((d for d, _ in sent), default=None)
        decision = rules.decide(
            facts(nearest_sent=nearest), today=EXPIRY - timedelta(days=days_left), leads=leads
        )
        if isinstance(decision, rules.Send):
            if any(lead == decision.lead for _, lead in sent):
                continue  # the ledger's unique key refuses the row its lead (rules.superseded_by)
            assert decision.days_left == days_left
            assert decision.lead == reference_lead(days_left, leads)
            sent.append((decision.days_left, decision.lead))
        else:
            assert (
                days_left < 0
                or (nearest is not None and nearest <= days_left)
                or reference_lead(days_left, leads) is None
            ), decision
    counts = [d for d, _ in sent]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)
    assert len({lead for _, lead in sent}) == len(sent)


@given(
    days_left=st.integers(-2, 10),
    active=st.booleans(),
    renewed=st.booleans(),
    valid=st.booleans(),
    opted_out=st.booleans(),
    leads=LEADS,
)
def test_only_the_stated_reasons_stop_a_text(
    days_left: int, active: bool, renewed: bool, valid: bool, opted_out: bool, leads: set[int]
) -> None:
    """R5: cancellation, renewal, an invalid number, an opt-out, the expiry, in that order; a
    held text whose lead day has passed still goes (the expiry day included)."""
    row = facts(
        sub_active=active,
        sub_expires_on=EXPIRY + timedelta(days=30 if renewed else 0),
        phone_valid=valid,
        opted_out=opted_out,
    )
    decision = rules.decide(row, today=EXPIRY - timedelta(days=days_left), leads=leads)
    expected = (
        "cancelled"
        if not active
        else "renewed"
        if renewed
        else "invalid_phone"
        if not valid
        else "opted_out"
        if opted_out
        else "expired"
        if days_left < 0
        else None
    )
    if expected is not None:
        assert decision == rules.Skip(expected)
    elif reference_lead(days_left, leads) is None:
        assert isinstance(decision, rules.Skip) and decision.reason.startswith("not_due")
    else:
        assert decision == rules.Send(days_left, reference_lead(days_left, leads) or 0)


@given(on=st.none() | st.dates(), today=st.dates())
def test_only_todays_date_sends(on: date | None, today: date) -> None:
    assert rules.sends_for(on, today) is (on is None or on == today)
