"""The planning rules: which reminder is due on a local day, and when a text may leave.

All clock arithmetic is done here, in Python, from an explicit ``now`` (aware UTC), so the
application's clock (frozen in tests) governs every decision, never the database server's.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.errors import ValidationError


def utcnow() -> datetime:
    return datetime.now(UTC)


def zone(name: str) -> ZoneInfo:
    """The IANA zone, or a ValidationError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"unknown time zone {name!r}; use an IANA name like Europe/Paris"
        ) from None


def local_now(now: datetime, tz: str) -> datetime:
    return now.astimezone(zone(tz))


def local_date(now: datetime, tz: str) -> date:
    """The organization's "today": its own calendar date at this instant."""
    return local_now(now, tz).date()


def due_lead(days_left: int, leads: Iterable[int]) -> int | None:
    """The lead day due with ``days_left`` to go: the smallest lead >= days_left.

    A lead of 0 means "expires today"; otherwise nothing is due on the expiry day or after it.
    Returns None when nothing is due (expired, or further away than the largest lead).
    """
    lead_set = set(leads)
    if days_left < 0 or (days_left == 0 and 0 not in lead_set):
        return None
    candidates = [lead for lead in lead_set if lead >= days_left]
    return min(candidates) if candidates else None


def due_offsets(leads: Iterable[int]) -> list[tuple[int, int]]:
    """Every (days_left, lead) pair that can be due: the table planning joins against."""
    lead_list = list(leads)
    if not lead_list:
        return []
    lowest = 0 if 0 in lead_list else 1
    pairs = []
    for days_left in range(lowest, max(lead_list) + 1):
        lead = due_lead(days_left, lead_list)
        if lead is not None:
            pairs.append((days_left, lead))
    return pairs


def in_window(moment: time, window: tuple[time, time]) -> bool:
    """True when a local wall-clock time lies in the window [start, end)."""
    return _in_window(moment, *window)


def _in_window(moment: time, start: time, end: time) -> bool:
    if start == end:
        return True  # all day
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end  # wraps past midnight


def in_send_window(now: datetime, tz: str, window: tuple[time, time]) -> bool:
    """True when local wall-clock time at ``now`` lies in [start, end)."""
    return _in_window(local_now(now, tz).time(), *window)


def _at_local(day: date, moment: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time.

    With fold=0 an ambiguous time (autumn) is its first occurrence, and a time skipped by
    spring-forward lands just after the gap, so a day is neither skipped nor repeated.
    """
    return datetime.combine(day, moment, tzinfo=tz).astimezone(UTC)


def window_closes_in(now: datetime, tz: str, window: tuple[time, time]) -> float | None:
    """Seconds from ``now`` (inside the window) until it closes; None for an all-day window."""
    start, end = window
    if start == end:
        return None
    zi = zone(tz)
    today = now.astimezone(zi).date()
    for offset in (0, 1):
        closing = _at_local(today + timedelta(days=offset), end, zi)
        if closing > now:
            return (closing - now).total_seconds()
    raise AssertionError("a send window closes within a day")  # pragma: no cover


def next_window_open(now: datetime, tz: str, window: tuple[time, time]) -> datetime:
    """``now`` if inside the window, else the UTC instant the window next opens."""
    if in_send_window(now, tz, window):
        return now
    zi = zone(tz)
    today = now.astimezone(zi).date()
    for offset in (0, 1, 2):
        opening = _at_local(today + timedelta(days=offset), window[0], zi)
        if opening > now:
            return opening
    raise AssertionError("a send window opens at least once a day")  # pragma: no cover


def clamp_to_window(moment: datetime, tz: str, window: tuple[time, time]) -> datetime:
    """A retry time moved forward to the next window opening if it falls outside the window."""
    return next_window_open(moment, tz, window)


def send_time_instant(day: date, tz: str, send_time: time) -> datetime:
    """The UTC instant of an organization's daily send time on its local ``day``."""
    return _at_local(day, send_time, zone(tz))


def retry_delay(attempt: int, base_seconds: float, *, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; the provider's Retry-After is a floor."""
    ceiling = base_seconds * float(2 ** max(0, attempt - 1))
    delay: float = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
