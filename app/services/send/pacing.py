"""Pacing: each sender's texts at slots of the shared rate limit, in segments per second.

Every process sending for a sender books slots on the same timeline (Redis for the workers),
a few at a time just ahead of use, so they all send at once instead of one booking a long run
the others must wait out. A text of N segments takes N consecutive slots and leaves at its
first. Slots are booked at RATE_MARGIN of the sender's rate and a text leaves within
LATE_TOLERANCE of its slot, checked as its request starts and again by the provider once its
connection is ready (else its slot is given up and it takes one of its lane's next ones: a new
connection's handshake on a busy loop took 50 ms at a day's start), so any one-second window at
the provider holds the slots of
at most (1 + LATE_TOLERANCE + transit) seconds: within the rate while that times RATE_MARGIN
stays under 1, leaving ~30 ms for a request to reach the provider (bench/send_day.py checks it
at the receiving end, by the kernel's arrival time of each request at the fake).

A lane books an eighth of a second of its sender's slots at a time; shortly before the first
(a couple of the claims' own recent round trips) it takes a permit of SMS_CONCURRENCY for each
of those texts and claims them in one go; each then leaves at its slot from a task of its own,
while the lane books and claims the next ones, so one round's slots follow the last round's
with no gap for the claim between them. While every permit is taken, a lane holding none
waits for one before it books (a slot booked first would pass while it queued for a permit),
and it books no more slots than it has permits for. A permit is given back when its text's
outcome is written: a process never holds more claimed rows than SMS_CONCURRENCY, so a crash
leaves at most that many texts uncertain. A claimed text that missed its slot (a busy process)
takes one of the lane's next slots, for up to CLAIM_HOLD after its claim, then goes back
unsent. What would wait more than ``max_rate_wait`` in all for the
sender's slots goes back to the ledger for later; waiting for this process does not count.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.aioloop import monotonic
from app.db.ledger import DEFERRED
from app.domain.circuit import Admit
from app.metrics import worker as worker_metrics
from app.providers.base import NotSent
from app.services.ratelimit import RateLimiter
from app.services.send.delivery import still_true
from app.services.send.prepare import Text

log = logging.getLogger("app.engine")

RATE_MARGIN = 0.95
LATE_TOLERANCE = 0.02
BOOK_AHEAD = 0.125  # seconds of a sender's slots booked at a time
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

    admit: Callable[[], Coroutine[None, None, Admit]]  # the circuit breaker: may one go?
    unprobe: Callable[[], None]  # the probe this lane was given did not go
    claim: Callable[[list[Text]], Coroutine[None, None, dict[int, int]]]
    #: the request of a claimed text, at its slot; its permit is given back once written.
    #: NotSent if it could not be on its way by the time given (it keeps its permit).
    start: Callable[[Claimed, bool, float | None], Coroutine[None, None, None]]
    give_back: Callable[[Claimed], None]  # claimed, not tried: pending again (permit as start)
    wait: Callable[[Text, datetime, str], None]  # unclaimed: pending until, with reason
    lost: Callable[[Text], None]  # someone else has the row
    defer_until: Callable[[], datetime]  # when texts turned away by an open circuit return


@dataclass
class Lane:
    """One sender's texts of one batch, in a process: what its next rounds book slots for."""

    carried: deque[Claimed] = field(default_factory=deque)  # claimed, slots missed: next ones
    checking: int = 0  # its texts handed on, not yet past go()'s check
    held: int = 0  # permits it took while none was free, for its next texts
    open: bool = True  # still booking (after it ends, a late text goes back to the ledger)
    woken: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for_its_texts(self) -> None:
        """Until one of its handed-on texts passes go()'s check (it went, or came back)."""
        self.woken.clear()
        await self.woken.wait()


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
        lane = Lane()
        try:
            await self._pace(key, queue, lane, started, hooks)
        finally:
            lane.open = False
            _give_up_held(lane, self.permits)

    async def _pace(
        self,
        key: str,
        queue: deque[Text],
        lane: Lane,
        started: set[asyncio.Task[None]],
        hooks: Hooks,
    ) -> None:
        permits = self.permits
        loop = asyncio.get_running_loop()
        rate = queue[0].rate
        chunk = max(1, int(rate * BOOK_AHEAD))
        waited = 0.0  # for this sender's slots
        carried = lane.carried
        while queue or carried or lane.checking:
            if not (queue or carried):  # a text just started may yet come back: wait for it
                _give_up_held(lane, permits)  # no text left to take it
                await lane.wait_for_its_texts()
                continue
            if not (carried or lane.held) and permits.locked():
                # Every permit is taken: no slot is booked before a text of this lane has one.
                if lane.checking:
                    # It holds some: it waits for its own texts (each goes, or comes back
                    # with its permit to take the lane's next slots).
                    await lane.wait_for_its_texts()
                    continue
                await permits.acquire()  # it holds none: it waits for one
                lane.held += 1
            how = await hooks.admit()
            if how is Admit.WAIT:  # the provider is down for everyone
                for c in carried:
                    hooks.give_back(c)
                until = hooks.defer_until()
                for t in queue:
                    hooks.wait(t, until, DEFERRED)
                return
            probe = how is Admit.PROBE
            group: list[Text | Claimed] = []
            want = 0
            # Slots only for texts that can be claimed: those it holds, and one per permit it
            # holds or is free now. A slot booked for a text with no permit passes unused.
            free = lane.held + permits._value
            while (carried or queue) and not (group and (probe or want >= chunk)):
                item: Text | Claimed
                if carried:
                    item = carried.popleft()
                elif free:
                    item = queue.popleft()
                    free -= 1
                else:
                    break
                group.append(item)
                want += _text(item).segments
            if not group:  # the free permits went to other lanes meanwhile
                continue
            left = self.max_rate_wait - waited
            try:
                first, granted, spacing = (
                    # No sooner than a claim can be made: an idle sender's first slots
                    # would pass while their texts are claimed, and go unused.
                    await self.limiter.reserve_async(key, rate, want, left, self.claim_ahead())
                    if left > 0
                    else (0.0, 0, 0.0)
                )
            except Exception as exc:  # noqa: BLE001 - nothing was sent: later is safe
                log.warning("rate limiter failed for %s: %r", key, exc)
                first, granted, spacing = 1.0, 0, 0.0
            if granted:
                worker_metrics.observe_rate_wait(first)
            if granted and not spacing:
                chunk = UNPACED_CHUNK  # no rate to keep: claim many at once
            base = monotonic() + first
            slotted: list[tuple[Text | Claimed, float]] = []
            used = 0
            for item in group:
                segments = _text(item).segments
                if used + segments > granted:
                    break
                slotted.append((item, base + used * spacing))
                used += segments
            for item in reversed(group[len(slotted) :]):  # no slot this time: next round
                if isinstance(item, Claimed):
                    carried.appendleft(item)
                else:
                    queue.appendleft(item)
            if not slotted:
                if probe:
                    hooks.unprobe()
                if granted:  # slots too few for the next text's segments: let them pass
                    end = base + granted * spacing - monotonic()
                    waited += max(end, 0.0)
                    await asyncio.sleep(max(end, 0.0))
                    continue
                self._no_slot(key, queue, carried, first, hooks)
                return
            pause = slotted[0][1] - self.claim_ahead() - monotonic()
            if pause > 0:
                if pause > self.claim_ahead():  # its slots are far: others use its permits
                    _give_up_held(lane, permits)
                waited += pause
                await asyncio.sleep(pause)
            ready, no_permit = await self._claim(slotted, permits, lane, hooks)
            queue.extendleft(reversed(no_permit))
            if not ready:
                if probe:
                    hooks.unprobe()
                continue
            # The texts leave at their slots from a task of their own, while the lane books
            # and claims its next slots: those then follow these with no gap of a claim's
            # round trip, which would leave the first of them late and its slot unused.
            lane.checking += len(ready)
            # Each text's task starts at its slot, from a timer of the loop's: the task's first
            # step, go()'s check, comes on the loop's next turn after the timer's (a task asleep
            # until the slot would take a turn more, and a busy loop's turns are what make a
            # text late).
            for c, slot in ready:
                loop.call_later(
                    slot - monotonic(), self._start, c, slot, spacing, probe, lane, hooks, started
                )

    def _start(
        self,
        c: Claimed,
        slot: float,
        spacing: float,
        probe: bool,
        lane: Lane,
        hooks: Hooks,
        started: set[asyncio.Task[None]],
    ) -> None:
        """A claimed text's task, at its slot; go() judges whether it is still on time."""
        loop = asyncio.get_running_loop()
        early = slot - monotonic()
        if early > 0:  # the loop's timer fired before the slot (uvloop's are whole ms)
            loop.call_later(early, self._start, c, slot, spacing, probe, lane, hooks, started)
            return
        task = loop.create_task(self.go(c, slot, spacing, probe, lane, hooks))
        started.add(task)
        task.add_done_callback(started.discard)

    async def go(
        self, c: Claimed, slot: float, spacing: float, probe: bool, lane: Lane, hooks: Hooks
    ) -> None:
        """The request of a claimed text at its ``slot``, checked at the last moment before it
        goes: a task that starts late (a busy loop between the lane and here) would reach the
        provider together with the texts of the slots after its own and put more than the
        rate into one second there. It goes back to its lane for the lane's next slots while
        its claim is young enough (CLAIM_HOLD), else back to the ledger unsent."""
        late = _late(slot, spacing)
        lane.checking -= 1
        lane.woken.set()
        if not late:
            try:
                # The provider checks the same bound once its connection is ready, and
                # again just before the request's bytes go.
                await hooks.start(c, probe, slot + LATE_TOLERANCE if spacing else None)
                return
            except NotSent:
                pass
        if probe:
            hooks.unprobe()
        _missed(c, lane, hooks)

    async def _claim(
        self,
        slotted: list[tuple[Text | Claimed, float]],
        permits: asyncio.Semaphore,
        lane: Lane,
        hooks: Hooks,
    ) -> tuple[list[tuple[Claimed, float]], list[Text]]:
        """A permit for each text not yet claimed (one the lane holds, else a free one), then
        one claim for them all: what may go, with its slot, in slot order; and the texts that
        found no permit free (the lane's next round). A lane waits for a permit here only
        while it holds none (its texts waiting for their slots hold theirs), so lanes cannot
        starve each other of permits."""
        fresh: list[tuple[Text, float]] = []
        ready: list[tuple[Claimed, float]] = []
        no_permit: list[Text] = []
        now = self.clock()
        for item, slot in slotted:
            if isinstance(item, Claimed):
                ready.append((item, slot))
                continue
            back = still_true(item, now)
            if back is not None:
                hooks.wait(item, *back)
                continue
            if lane.held:
                lane.held -= 1
            elif permits.locked() and (fresh or ready or lane.checking or lane.carried):
                no_permit.append(item)  # never wait for a permit while holding one
                continue
            else:
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
        carried: deque[Claimed],
        first: float,
        hooks: Hooks,
    ) -> None:
        """No slot in time: each text goes back until about when its slot would come, so they
        return a second's worth at a time instead of all at once."""
        opens = self.clock() + timedelta(seconds=max(first, 1.0))
        log.info("rate limit of %s: %d texts wait from %s", key, len(queue), opens.isoformat())
        for c in carried:
            hooks.give_back(c)
        ahead = 0
        rate = queue[0].rate if queue else 1.0
        for t in queue:
            hooks.wait(t, opens + timedelta(seconds=int(ahead / rate)), DEFERRED)
            ahead += t.segments


def _late(slot: float, spacing: float) -> bool:
    """A paced text past its slot by more than LATE_TOLERANCE: it must not go now."""
    return bool(spacing) and monotonic() - slot > LATE_TOLERANCE


def _missed(c: Claimed, lane: Lane, hooks: Hooks) -> None:
    """A claimed text that missed its slot: one of its lane's next slots while its claim is
    young (CLAIM_HOLD) and the lane still books, else back to the ledger unsent."""
    if lane.open and monotonic() - c.at < CLAIM_HOLD:
        lane.carried.append(c)
    else:
        hooks.give_back(c)


def _give_up_held(lane: Lane, permits: asyncio.Semaphore) -> None:
    """The permits a lane took for texts it has not claimed go back to the process."""
    for _ in range(lane.held):
        permits.release()
    lane.held = 0


def _text(item: Text | Claimed) -> Text:
    return item.text if isinstance(item, Claimed) else item
