"""A claimed text leaves within LATE_TOLERANCE of its slot, judged as its request starts.

The lane checks each text at its slot, but the request's task runs a loop turn or more later;
on a busy loop that is tens of milliseconds, and a late text reaches the provider together
with the texts of the slots after it (31 in one second for a 30/s sender, seen by the bench).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import pytest

from app.domain.circuit import Admit
from app.services.ratelimit import LocalRateLimiter
from app.services.send.pacing import CLAIM_HOLD, LATE_TOLERANCE, Claimed, Hooks, Pacer
from app.services.send.prepare import Text

pytestmark = pytest.mark.timeout(30)

KEY, RATE = "sender:+12025550100", 10.0  # 10 slots a second: 0.1 s apart


class Seen:
    def __init__(self) -> None:
        self.started: list[float] = []
        self.given_back: list[Claimed] = []
        self.unprobed = 0

    def hooks(self) -> Hooks:
        async def start(c: Claimed, probe: bool) -> None:
            self.started.append(time.monotonic())

        async def claim(texts: list[Text]) -> dict[int, int]:
            raise AssertionError("go() never claims")

        def unprobe() -> None:
            self.unprobed += 1

        return Hooks(
            admit=lambda: Admit.SEND,
            unprobe=unprobe,
            claim=claim,
            start=start,
            give_back=self.given_back.append,
            wait=lambda t, until, reason: None,
            lost=lambda t: None,
            defer_until=lambda: datetime.now(UTC),
        )


def claimed(*, claimed_ago: float = 0.0, segments: int = 1) -> Claimed:
    text = cast(Text, SimpleNamespace(segments=segments, key=KEY, rate=RATE))
    return Claimed(text, attempt=1, at=time.monotonic() - claimed_ago)


def go(limiter: LocalRateLimiter, c: Claimed, slot: float, seen: Seen, probe: bool = False) -> None:
    pacer = Pacer(limiter, concurrency=8, max_rate_wait=20.0, clock=lambda: datetime.now(UTC))
    asyncio.run(pacer.go(c, slot, KEY, RATE, 1 / RATE, probe, seen.hooks()))


def test_a_text_on_time_goes_at_once_without_booking_again() -> None:
    limiter, seen = LocalRateLimiter(), Seen()
    go(limiter, claimed(), time.monotonic(), seen)
    assert len(seen.started) == 1 and not seen.given_back
    first, _, _ = limiter.reserve(KEY, RATE, 1, 5.0)
    assert first == 0.0  # nothing was booked for it


def test_a_text_whose_request_starts_late_waits_for_a_fresh_slot_instead_of_bunching() -> None:
    """Its slot passed 100 ms ago; the sender's next free slot is 0.3 s ahead (three texts of
    other processes booked them): it leaves at that slot, not now beside them."""
    limiter, seen = LocalRateLimiter(), Seen()
    limiter.reserve(KEY, RATE, 3, 5.0)  # the next 0.3 s of the sender's slots are taken
    began = time.monotonic()
    go(limiter, claimed(), began - 0.1, seen)
    assert len(seen.started) == 1 and not seen.given_back
    assert seen.started[0] - began >= 0.3 - LATE_TOLERANCE
    first, _, _ = limiter.reserve(KEY, RATE, 1, 5.0)
    assert first > 0.05  # it booked its slot on the sender's timeline: the next is 0.1 s on


def test_a_late_text_whose_claim_is_old_goes_back_unsent() -> None:
    """A claim older than CLAIM_HOLD is not held for a later slot: the row is given back (its
    attempt with it) and a probe it carried is handed back to the circuit."""
    limiter, seen = LocalRateLimiter(), Seen()
    c = claimed(claimed_ago=CLAIM_HOLD + 0.1)
    go(limiter, c, time.monotonic() - 0.1, seen, probe=True)
    assert seen.started == [] and seen.given_back == [c] and seen.unprobed == 1


def test_a_late_text_with_no_slot_left_in_its_hold_goes_back_unsent() -> None:
    """The sender's slots are booked past the claim's hold: back to the ledger, not sent late."""
    limiter, seen = LocalRateLimiter(), Seen()
    limiter.reserve(KEY, RATE, int(RATE * (CLAIM_HOLD + 1)), 60.0)
    c = claimed()
    go(limiter, c, time.monotonic() - 0.1, seen)
    assert seen.started == [] and seen.given_back == [c]
