"""A claimed text leaves within LATE_TOLERANCE of its slot, judged as its request starts.

The lane checks each text at its slot, but the request's task runs a loop turn or more later;
on a busy loop that is tens of milliseconds, and a late text reaches the provider together
with the texts of the slots after it (more than the rate in one second at the provider).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import pytest

from app.aioloop import monotonic, new_loop
from app.domain.circuit import Admit
from app.providers.base import NotSent
from app.services.ratelimit import LocalRateLimiter
from app.services.send.pacing import CLAIM_HOLD, LATE_TOLERANCE, Claimed, Hooks, Lane, Pacer
from app.services.send.prepare import Text

pytestmark = pytest.mark.timeout(30)

SPACING = 0.1  # a sender of 10 slots a second


class Seen:
    def __init__(self) -> None:
        self.started: list[Claimed] = []
        self.given_back: list[Claimed] = []
        self.unprobed = 0
        self.send_by: list[float | None] = []
        self.connection_late = False  # the provider's connection comes after send_by

    def hooks(self) -> Hooks:
        async def start(c: Claimed, probe: bool, send_by: float | None) -> None:
            self.send_by.append(send_by)
            if self.connection_late:
                raise NotSent("its connection was ready after its slot's tolerance")
            self.started.append(c)

        async def claim(texts: list[Text]) -> dict[int, int]:
            raise AssertionError("go() never claims")

        def unprobe() -> None:
            self.unprobed += 1

        async def admit() -> Admit:
            return Admit.SEND

        return Hooks(
            admit=admit,
            unprobe=unprobe,
            claim=claim,
            start=start,
            give_back=self.given_back.append,
            wait=lambda t, until, reason: None,
            lost=lambda t: None,
            defer_until=lambda: datetime.now(UTC),
        )


def claimed(*, claimed_ago: float = 0.0) -> Claimed:
    text = cast(Text, SimpleNamespace(segments=1, key="k", rate=1 / SPACING))
    return Claimed(text, attempt=1, at=time.monotonic() - claimed_ago)


def go(c: Claimed, late_by: float, seen: Seen, lane: Lane, *, probe: bool = False) -> None:
    """go() for a text whose slot was ``late_by`` seconds ago, handed on by ``lane``."""
    pacer = Pacer(
        LocalRateLimiter(), concurrency=8, max_rate_wait=20.0, clock=lambda: datetime.now(UTC)
    )

    async def handed_on() -> None:
        lane.checking += 1
        await pacer.go(c, time.monotonic() - late_by, SPACING, probe, lane, seen.hooks())

    asyncio.run(handed_on())


def test_a_text_on_time_goes() -> None:
    seen, lane, c = Seen(), Lane(), claimed()
    slot = time.monotonic()
    go(c, 0.0, seen, lane)
    assert seen.started == [c] and not seen.given_back and not lane.carried
    assert lane.checking == 0 and lane.woken.is_set()
    # The provider is told the same bound, to check once its connection is ready.
    [send_by] = seen.send_by
    assert send_by is not None and slot + LATE_TOLERANCE <= send_by < slot + LATE_TOLERANCE + 0.05


def test_a_text_whose_connection_is_ready_after_its_slot_takes_its_lanes_next_slot() -> None:
    """On time at go()'s check, but the provider's connection was still being opened when its
    slot's tolerance passed: nothing was sent, and the text goes back to its lane like a late
    one (its permit and claim kept), not to the ledger."""
    seen, lane, c = Seen(), Lane(), claimed()
    seen.connection_late = True
    go(c, 0.0, seen, lane, probe=True)
    assert seen.started == [] and seen.given_back == [] and list(lane.carried) == [c]
    assert seen.unprobed == 1


def test_a_text_whose_request_starts_late_takes_its_lanes_next_slot_instead_of_bunching() -> None:
    """Its slot passed 100 ms ago: it does not go now, beside the next slots' texts; it goes
    back to its lane, which books its next slots for it first (no write, no fresh claim)."""
    seen, lane, c = Seen(), Lane(), claimed()
    go(c, 0.1, seen, lane, probe=True)
    assert seen.started == [] and seen.given_back == [] and list(lane.carried) == [c]
    assert seen.unprobed == 1  # a probe that did not go is handed back to the circuit
    assert lane.checking == 0 and lane.woken.is_set()


def test_a_late_text_whose_claim_is_old_goes_back_to_the_ledger() -> None:
    """A claim older than CLAIM_HOLD is not held for later slots (the sweeper's limit counts
    on it): the row is given back unsent, its attempt with it."""
    seen, lane, c = Seen(), Lane(), claimed(claimed_ago=CLAIM_HOLD + 0.1)
    go(c, 0.1, seen, lane)
    assert seen.started == [] and seen.given_back == [c] and not lane.carried


def test_a_late_text_of_a_lane_that_ended_goes_back_to_the_ledger() -> None:
    seen, lane, c = Seen(), Lane(open=False), claimed()
    go(c, 0.1, seen, lane)
    assert seen.started == [] and seen.given_back == [c]


def test_a_lane_waits_for_its_last_texts_check_and_books_again_for_a_late_one() -> None:
    """Pacer.run end to end on one lane: the only text's task starts after its slot passed
    (the loop was blocked): the lane books it a fresh slot and sends it then, once."""
    seen = Seen()
    hooks = seen.hooks()
    pacer = Pacer(
        LocalRateLimiter(), concurrency=8, max_rate_wait=20.0, clock=lambda: datetime.now(UTC)
    )
    text = cast(
        Text,
        SimpleNamespace(
            segments=1,
            key="k",
            rate=10.0,
            row=SimpleNamespace(id=1),
            org=SimpleNamespace(timezone="UTC"),
            today=datetime.now(UTC).date(),
            ignore_window=True,
        ),
    )
    original_go = pacer.go
    calls = 0

    async def go_after_a_stall(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(0.1)  # the loop is blocked between the lane and the task's start
        await original_go(*args)  # type: ignore[arg-type]

    async def claim(texts: list[Text]) -> dict[int, int]:
        return {t.row.id: 1 for t in texts}

    pacer.go = go_after_a_stall  # type: ignore[method-assign]
    asyncio.run(pacer.run([text], replace(hooks, claim=claim)))
    assert calls == 2 and len(seen.started) == 1 and not seen.given_back


def test_no_request_starts_before_its_slot_on_the_send_loop() -> None:
    """The worker's loop (uvloop) fires timers on whole milliseconds, up to about one early:
    a text started then would reach the provider before its slot, closer to the text before
    it than the rate allows. Each waits for its slot instead."""
    started_at: list[tuple[float, float]] = []  # (slot, when its request started)
    slots: dict[int, float] = {}

    async def start(c: Claimed, probe: bool, send_by: float | None) -> None:
        started_at.append((slots[id(c)], monotonic()))

    pacer = Pacer(
        LocalRateLimiter(), concurrency=8, max_rate_wait=20.0, clock=lambda: datetime.now(UTC)
    )
    lane, started = Lane(), set[asyncio.Task[None]]()
    hooks = replace(Seen().hooks(), start=start)

    async def slotted() -> None:
        loop = asyncio.get_running_loop()
        base = monotonic() + 0.01
        for i in range(200):  # slots off the millisecond grid, 3.37 ms apart
            c, slot = claimed(), base + i * 0.00337
            slots[id(c)] = slot
            lane.checking += 1
            loop.call_later(
                slot - monotonic(),
                pacer._start,
                c,
                slot,
                SPACING,
                False,
                lane,
                hooks,
                started,
            )
        while len(started_at) < 200:
            await asyncio.sleep(0.05)

    loop = new_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(slotted(), 10))
    finally:
        loop.close()
    early = [slot - at for slot, at in started_at if at < slot]
    assert early == [], f"{len(early)} of 200 requests started before their slots"


class Counting(LocalRateLimiter):
    """The process's own limiter, counting the slots it booked."""

    booked = 0

    def reserve(
        self, key: str, rate: float, count: int, max_wait: float, not_before: float = 0.0
    ) -> tuple[float, int, float]:
        first, granted, spacing = super().reserve(key, rate, count, max_wait, not_before)
        self.booked += granted
        return first, granted, spacing


def texts_of(n: int, *, senders: int, rate: float) -> list[Text]:
    return [
        cast(
            Text,
            SimpleNamespace(
                segments=1,
                key=f"k{i % senders}",
                rate=rate,
                row=SimpleNamespace(id=i),
                org=SimpleNamespace(timezone="UTC"),
                today=datetime.now(UTC).date(),
                ignore_window=True,
            ),
        )
        for i in range(n)
    ]


def paced_by(limiter: Counting, *, concurrency: int, claim_ahead: float) -> Pacer:
    return Pacer(
        limiter,
        concurrency=concurrency,
        max_rate_wait=20.0,
        clock=lambda: datetime.now(UTC),
        claim_ahead=lambda: claim_ahead,
    )


def claims_taking(seconds: float) -> Callable[[list[Text]], Coroutine[None, None, dict[int, int]]]:
    async def claim(batch: list[Text]) -> dict[int, int]:
        await asyncio.sleep(seconds)
        return {t.row.id: 1 for t in batch}

    return claim


def test_a_lane_claims_its_next_slots_while_the_last_ones_wait_so_a_slow_claim_costs_none() -> None:
    """Each claim takes 60 ms, longer than a slot (a busy database) plus LATE_TOLERANCE. A lane
    that claimed its next round only after the last round's texts had left would find its
    first slot past every time and waste it, or leave a claim's time between its rounds;
    claiming while the last round waits for its slots, every booked slot is used (12 texts,
    12 slots, none carried or given back) and the 12 leave one slot apart, 11 slots in all."""
    seen = Seen()
    at: list[float] = []
    limiter = Counting()
    pacer = paced_by(limiter, concurrency=64, claim_ahead=0.1)

    async def start(c: Claimed, probe: bool, send_by: float | None) -> None:
        at.append(time.monotonic())
        seen.started.append(c)

    texts = texts_of(12, senders=1, rate=30.0)
    asyncio.run(pacer.run(texts, replace(seen.hooks(), claim=claims_taking(0.06), start=start)))
    assert sorted(c.text.row.id for c in seen.started) == list(range(12))
    assert not seen.given_back
    assert limiter.booked == 12
    assert at[-1] - at[0] < 11 / 30 + 0.04


def test_with_every_permit_taken_lanes_book_no_slots_they_cannot_use() -> None:
    """Six senders of 1,000 slots a second and a process of 2 permits (each held for a 50 ms
    request): texts wait for permits, not for slots. A lane booking first and then queueing
    for a permit would find its slots past when it got one, and book again: here each text
    costs about one slot, none is given back, and all 60 go once."""
    seen = Seen()
    limiter = Counting()
    pacer = paced_by(limiter, concurrency=2, claim_ahead=0.02)

    async def start(c: Claimed, probe: bool, send_by: float | None) -> None:
        seen.started.append(c)
        await asyncio.sleep(0.05)
        pacer.permits.release()  # its outcome is written

    texts = texts_of(60, senders=6, rate=1000.0)
    asyncio.run(pacer.run(texts, replace(seen.hooks(), claim=claims_taking(0.005), start=start)))
    assert sorted(c.text.row.id for c in seen.started) == list(range(60))
    assert not seen.given_back
    assert limiter.booked <= 66
