"""Pacing: each sender's texts at slots of the shared rate limit, in segments per second.

Every process sending for a sender books slots on the same timeline (Redis for the workers),
a few at a time just ahead of use, so they all send at once instead of one booking a long run
the others must wait out. A text of N segments takes N consecutive slots and leaves at its
first. Slots are booked at RATE_MARGIN of the sender's rate and a text leaves within
LATE_TOLERANCE of its slot (else its slot is given up and a fresh one booked), so any one-second
window at the provider holds the slots of at most (1 + LATE_TOLERANCE + transit) seconds:
within the rate while that times RATE_MARGIN stays under 1, leaving ~30 ms for a request to
reach the provider (bench/send_day.py checks it at the receiving end).

A lane books a quarter second of its sender's slots at a time (one limiter call) and claims
them a tenth of a second at a time (CLAIM_SPAN), each part shortly before its first slot (the
claims' own recent round trip, CLAIM_AHEAD at least): a permit of SMS_CONCURRENCY for each text,
then one claim for the part. The part then waits for its slots on its own while the lane claims
the next, so no slot is left unused between parts. A permit is given back when its text's
outcome is written: a process never holds more claimed rows than SMS_CONCURRENCY, so a crash
leaves at most that many texts uncertain, and the time a permit is held (claim ahead, the wait
for its slot, the request, the write) is what SMS_CONCURRENCY must cover at the process's rate.
A claimed text that missed its slot (a busy process) books a fresh one for up to CLAIM_HOLD
after its claim, then goes back unsent. What would wait more than ``max_rate_wait`` in all for
the sender's slots goes back to the ledger for later; waiting for this process does not count.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.aioloop import monotonic
from app.db.ledger import DEFERRED
from app.domain.circuit import Admit
from app.services.ratelimit import RateLimiter
from app.services.send.delivery import still_true
from app.services.send.prepare import Text

log = logging.getLogger("app.engine")

RATE_MARGIN = 0.95
LATE_TOLERANCE = 0.02
BOOK_AHEAD = 0.25  # seconds of a sender's slots booked at a time (one limiter call)
CLAIM_SPAN = 0.1  # seconds of those slots claimed at a time, just ahead of the first
CLAIM_AHEAD = 0.1  # a text is claimed this long before its slot (many in one statement)
MAX_RATE_WAIT = 20.0
UNPACED_CHUNK = 100  # texts claimed at once by a lane with no rate to keep
# A claimed text that missed its slot takes later ones for at most this long after its claim,
# then goes back unsent: a row stays in ``sending`` for about a second plus its request
# (Settings.longest_send_seconds counts it).
CLAIM_HOLD = 1.0


@dataclass
class Claimed:
    text: Text
    attempt: int
    at: float  # monotonic, when its claim came back


@dataclass(frozen=True)
class Hooks:
    """What a lane does with its texts; each note counts its text as done with the lane."""

    admit: Callable[[], Admit]  # the circuit breaker: may a request go?
    unprobe: Callable[[], None]  # the probe this lane was given did not go
    claim: Callable[[list[Text]], Coroutine[None, None, dict[int, int]]]
    #: the request of a claimed text, at its slot; its permit is given back once written
    start: Callable[[Claimed, bool], Coroutine[None, None, None]]
    give_back: Callable[[Claimed], None]  # claimed, not tried: pending again (permit as start)
    wait: Callable[[Text, datetime, str], None]  # unclaimed: pending until, with reason
    lost: Callable[[Text], None]  # someone else has the row
    defer_until: Callable[[], datetime]  # when texts turned away by an open circuit return


class Pacer:
    def __init__(
        self,
        limiter: RateLimiter,
        *,
        concurrency: int,
        max_rate_wait: float,
        clock: Callable[[], datetime],
        claim_ahead: Callable[[], float] = lambda: CLAIM_AHEAD,
    ) -> None:
        self.claim_ahead = claim_ahead
        self.limiter = limiter
        self.concurrency = concurrency
        self.max_rate_wait = max_rate_wait
        self.clock = clock
        self._permits: asyncio.Semaphore | None = None  # made on the loop, for the process

    @property
    def permits(self) -> asyncio.Semaphore:
        """SMS_CONCURRENCY permits for the process's claimed texts (made on the loop)."""
        if self._permits is None:
            self._permits = asyncio.Semaphore(self.concurrency)
        return self._permits

    async def run(self, texts: list[Text], hooks: Hooks) -> None:
        """Pace these texts, each sender on its own; returns when every attempt has ended."""
        by_key: dict[str, deque[Text]] = {}
        for t in texts:
            by_key.setdefault(t.key, deque()).append(t)
        started: set[asyncio.Task[None]] = set()
        await asyncio.gather(*(self._lane(key, q, started, hooks) for key, q in by_key.items()))
        while started:
            await asyncio.gather(*list(started))

    async def _lane(
        self, key: str, queue: deque[Text], started: set[asyncio.Task[None]], hooks: Hooks
    ) -> None:
        going: set[asyncio.Task[None]] = set()  # claimed parts waiting for their slots
        try:
            await self._book(key, queue, going, started, hooks)
        finally:
            await _settle(going)

    async def _book(
        self,
        key: str,
        queue: deque[Text],
        going: set[asyncio.Task[None]],
        started: set[asyncio.Task[None]],
        hooks: Hooks,
    ) -> None:
        permits = self.permits
        loop = asyncio.get_running_loop()
        rate = queue[0].rate
        chunk = max(1, int(rate * BOOK_AHEAD))
        waited = 0.0  # for this sender's slots
        pad = 0  # slots to book before the group's: those a claim cannot reach in time
        while queue:
            how = hooks.admit()
            if how is Admit.WAIT:  # the provider is down for everyone
                until = hooks.defer_until()
                for t in queue:
                    hooks.wait(t, until, DEFERRED)
                return
            probe = how is Admit.PROBE
            group: list[Text] = []
            want = 0
            while queue and not (group and (probe or want >= chunk)):
                group.append(queue.popleft())
                want += group[-1].segments
            # A slot sooner than a claim can come back is left unused (below): this process's
            # own round trip does not count against the wait for the sender's slots.
            left = self.max_rate_wait - waited + self.claim_ahead()
            try:
                first, granted, spacing = (
                    await self.limiter.reserve_async(key, rate, want + pad, left)
                    if left > 0
                    else (0.0, 0, 0.0)
                )
            except Exception as exc:  # noqa: BLE001 - nothing was sent: later is safe
                log.warning("rate limiter failed for %s: %r", key, exc)
                first, granted, spacing = 1.0, 0, 0.0
            if granted and not spacing:
                chunk = UNPACED_CHUNK  # no rate to keep: claim many at once
            pad = 0
            base = monotonic() + first
            slotted: list[tuple[Text, float]] = []
            used = 0
            if spacing:  # a slot sooner than a claim can come back is left unused
                soonest = monotonic() + self.claim_ahead()
                used = min(granted, max(0, math.ceil((soonest - base) / spacing)))
            skipped = used
            for t in group:
                if used + t.segments > granted:
                    break
                slotted.append((t, base + used * spacing))
                used += t.segments
            queue.extendleft(reversed(group[len(slotted) :]))  # no slot this time: next round
            if not slotted:
                if probe:
                    hooks.unprobe()
                if skipped:
                    # Book again. If these slots all came too soon, the next may too (an idle
                    # timeline starts at "now"): book the ones a claim cannot reach with them.
                    if base + granted * spacing < monotonic() + self.claim_ahead():
                        pad = math.ceil(self.claim_ahead() / spacing) + 1
                    continue
                if granted:  # slots too few for the next text's segments: let them pass
                    end = base + granted * spacing - monotonic()
                    waited += max(end, 0.0)
                    await asyncio.sleep(max(end, 0.0))
                    continue
                self._no_slot(key, queue, first, hooks)
                return
            for part in _parts(slotted):
                pause = part[0][1] - self.claim_ahead() - monotonic()
                if pause > 0:
                    waited += pause
                    await asyncio.sleep(pause)
                ready, no_permit = await self._claim(part, permits, hooks)
                queue.extendleft(reversed(no_permit))
                if not ready:
                    if probe:
                        hooks.unprobe()
                    continue
                # The part waits for its slots on its own, so the lane claims the next part
                # (and books the next slots) meanwhile: no slot is left unused between them.
                timed = loop.create_task(
                    self._at_slots(key, ready, bool(spacing), probe, started, hooks)
                )
                going.add(timed)
                timed.add_done_callback(going.discard)

    async def _at_slots(
        self,
        key: str,
        ready: list[tuple[Claimed, float]],
        paced: bool,
        probe: bool,
        started: set[asyncio.Task[None]],
        hooks: Hooks,
    ) -> None:
        """Start each claimed text at its slot. One that missed it (a busy process) books a
        fresh slot while its claim is younger than CLAIM_HOLD, else goes back unsent."""
        loop = asyncio.get_running_loop()
        went = False
        for c, first_slot in ready:
            slot: float | None = first_slot
            while slot is not None:
                pause = slot - monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                if not paced or monotonic() - slot <= LATE_TOLERANCE:
                    break
                slot = await self._rebook(key, c)
            if slot is None:
                hooks.give_back(c)
                continue
            went = True
            task: asyncio.Task[None] = loop.create_task(hooks.start(c, probe))
            started.add(task)
            task.add_done_callback(started.discard)
        if probe and not went:
            hooks.unprobe()

    async def _rebook(self, key: str, c: Claimed) -> float | None:
        """A fresh slot for a claimed text that missed its own, if one comes in time."""
        left = CLAIM_HOLD - (monotonic() - c.at)
        if left <= 0:
            return None
        try:
            first, granted, _ = await self.limiter.reserve_async(
                key, c.text.rate, c.text.segments, left
            )
        except Exception as exc:  # noqa: BLE001 - not sent: it goes back to the ledger
            log.warning("rate limiter failed for %s: %r", key, exc)
            return None
        return monotonic() + first if granted >= c.text.segments else None

    async def _claim(
        self,
        slotted: list[tuple[Text, float]],
        permits: asyncio.Semaphore,
        hooks: Hooks,
    ) -> tuple[list[tuple[Claimed, float]], list[Text]]:
        """A permit for each text, then one claim for them all: what may go, with its slot,
        in slot order; and the texts that found no permit free (the lane's next round). A
        lane waits for a permit only while it holds none for this part, and a claimed text
        never waits on a lane, so lanes cannot starve each other of permits."""
        fresh: list[tuple[Text, float]] = []
        ready: list[tuple[Claimed, float]] = []
        no_permit: list[Text] = []
        now = self.clock()
        for item, slot in slotted:
            back = still_true(item, now)
            if back is not None:
                hooks.wait(item, *back)
                continue
            if fresh and permits.locked():
                no_permit.append(item)  # never wait for a permit while holding one
                continue
            await permits.acquire()
            fresh.append((item, slot))
        if fresh:
            try:
                won = await hooks.claim([t for t, _ in fresh])
            except Exception:  # noqa: BLE001 - logged by the claimer; nothing was claimed
                won = {}
                for t, _ in fresh:
                    hooks.wait(t, self.clock() + timedelta(seconds=1), DEFERRED)
                    permits.release()
                fresh = []
            at = monotonic()
            for t, slot in fresh:
                attempt = won.get(t.row.id)
                if attempt is None:
                    hooks.lost(t)
                    permits.release()
                else:
                    ready.append((Claimed(t, attempt, at), slot))
        ready.sort(key=lambda cs: cs[1])
        return ready, no_permit

    def _no_slot(
        self,
        key: str,
        queue: deque[Text],
        first: float,
        hooks: Hooks,
    ) -> None:
        """No slot in time: each text goes back until about when its slot would come, so they
        return a second's worth at a time instead of all at once."""
        opens = self.clock() + timedelta(seconds=max(first, 1.0))
        log.info("rate limit of %s: %d texts wait from %s", key, len(queue), opens.isoformat())
        ahead = 0
        rate = queue[0].rate if queue else 1.0
        for t in queue:
            hooks.wait(t, opens + timedelta(seconds=int(ahead / rate)), DEFERRED)
            ahead += t.segments


def _parts(
    slotted: list[tuple[Text, float]],
) -> list[list[tuple[Text, float]]]:
    """The booked slots in runs of CLAIM_SPAN: each is claimed just before its first slot, so
    a claimed row waits at most that long for its own."""
    parts: list[list[tuple[Text, float]]] = []
    for item in slotted:
        if parts and item[1] - parts[-1][0][1] < CLAIM_SPAN:
            parts[-1].append(item)
        else:
            parts.append([item])
    return parts


async def _settle(going: set[asyncio.Task[None]]) -> None:
    """Until every claimed chunk has started or handed back its texts."""
    while going:
        await asyncio.wait(set(going))
