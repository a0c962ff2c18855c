"""The planning rules: which lead is due, whose "today" it is, and when texts may leave."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from freezegun import freeze_time

from app.domain import planning
from app.errors import ValidationError

LEADS = (5, 3, 1)


@pytest.mark.parametrize(
    ("days_left", "expected"),
    [(6, None), (5, 5), (4, 5), (3, 3), (2, 3), (1, 1), (0, None), (-1, None)],
)
def test_due_lead_is_the_smallest_lead_not_below_days_left(
    days_left: int, expected: int | None
) -> None:
    assert planning.due_lead(days_left, LEADS) == expected


def test_lead_zero_means_expires_today() -> None:
    assert planning.due_lead(0, (3, 0)) == 0
    assert planning.due_lead(1, (3, 0)) == 3
    assert planning.due_offsets((3, 0)) == [(0, 0), (1, 3), (2, 3), (3, 3)]


def test_due_offsets_cover_every_day_up_to_the_largest_lead() -> None:
    assert planning.due_offsets(LEADS) == [(1, 1), (2, 3), (3, 3), (4, 5), (5, 5)]


def test_same_instant_is_a_different_day_on_each_side_of_utc() -> None:
    with freeze_time("2026-03-10 11:30:00"):
        now = planning.utcnow()
        assert planning.local_date(now, "Pacific/Auckland") == date(2026, 3, 11)
        assert planning.local_date(now, "America/Los_Angeles") == date(2026, 3, 10)


def test_unknown_time_zone_is_named() -> None:
    with pytest.raises(ValidationError, match="Mars/Olympus"):
        planning.zone("Mars/Olympus")


WINDOW = (time(8, 0), time(21, 0))


@pytest.mark.parametrize(
    ("utc", "inside"),
    [
        ("2026-07-01 11:59:00", False),  # 07:59 in New York (EDT)
        ("2026-07-01 12:00:00", True),  # 08:00
        ("2026-07-02 00:59:00", True),  # 20:59
        ("2026-07-02 01:00:00", False),  # 21:00: the window is half-open
        ("2026-07-01 07:00:00", False),  # 03:00: never a 3 a.m. text
    ],
)
def test_send_window_uses_local_wall_clock(utc: str, inside: bool) -> None:
    now = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    assert planning.in_send_window(now, "America/New_York", WINDOW) is inside


def test_window_wrapping_midnight_and_all_day() -> None:
    night = (time(22, 0), time(2, 0))
    at = datetime(2026, 1, 1, 23, 0, tzinfo=UTC)
    assert planning.in_send_window(at, "UTC", night)
    assert not planning.in_send_window(at.replace(hour=12), "UTC", night)
    assert planning.in_send_window(at, "UTC", (time(0, 0), time(0, 0)))


def test_next_window_open_after_closing_is_tomorrow_morning_local() -> None:
    now = datetime(2026, 7, 2, 2, 0, tzinfo=UTC)  # 22:00 EDT on July 1
    opens = planning.next_window_open(now, "America/New_York", WINDOW)
    assert opens == datetime(2026, 7, 2, 12, 0, tzinfo=UTC)  # 08:00 EDT July 2


def test_next_window_open_across_spring_forward() -> None:
    # Europe/Paris springs forward on 2026-03-29 at 02:00 -> 03:00.
    now = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)  # 23:00 CET on the 28th
    opens = planning.next_window_open(now, "Europe/Paris", WINDOW)
    assert opens == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)  # 08:00 CEST, one hour earlier in UTC


@pytest.mark.parametrize(
    ("day", "expected_utc"),
    [
        (date(2026, 3, 7), datetime(2026, 3, 7, 14, 0, tzinfo=UTC)),  # PST
        (date(2026, 3, 8), datetime(2026, 3, 8, 13, 0, tzinfo=UTC)),  # DST starts: PDT
        (date(2026, 11, 1), datetime(2026, 11, 1, 14, 0, tzinfo=UTC)),  # DST ends: PST again
    ],
)
def test_send_time_is_local_on_dst_days(day: date, expected_utc: datetime) -> None:
    assert planning.send_time_instant(day, "America/Los_Angeles", time(6, 0)) == expected_utc


def test_a_send_time_inside_the_spring_gap_still_happens_that_day() -> None:
    # 02:30 does not exist in New York on 2026-03-08; the day must not be skipped.
    instant = planning.send_time_instant(date(2026, 3, 8), "America/New_York", time(2, 30))
    assert planning.local_date(instant, "America/New_York") == date(2026, 3, 8)


def test_dst_days_are_neither_skipped_nor_repeated() -> None:
    """Hour by hour across the November fall-back, every local day appears, in order."""
    start = datetime(2026, 10, 31, 0, 0, tzinfo=UTC)
    seen = [planning.local_date(start + timedelta(hours=h), "America/New_York") for h in range(96)]
    days = list(dict.fromkeys(seen))
    assert days == [date(2026, 10, 30) + timedelta(days=n) for n in range(5)]
    assert seen == sorted(seen)


def test_retry_delay_grows_and_honours_retry_after() -> None:
    for attempt in (1, 2, 3):
        delay = planning.retry_delay(attempt, 30)
        assert 15 * 2 ** (attempt - 1) <= delay <= 30 * 2 ** (attempt - 1)
    assert planning.retry_delay(1, 30, retry_after=120) == 120
