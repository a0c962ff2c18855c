"""Pacing: each sender's texts at slots of the shared rate limit, in segments per second.

Every process sending for a sender books slots on the same timeline (Redis for the workers),
a few at a time just ahead of use, so they all send at once instead of one booking a long run
the others must wait out. A text of N segments takes N consecutive slots and leaves at its
first. Slots are booked at RATE_MARGIN of the sender's rate and a text leaves within
LATE_TOLERANCE of its slot (else its slot is given up and a fresh one booked), so any one-second
window at the provider holds the slots of at most (1 + LATE_TOLERANCE + transit) seconds:
within the rate while that times RATE_MARGIN stays under 1, leaving ~30 ms for a request to
reach the provider (bench/send_day.py checks it at the receiving end).

A permit of SMS_CONCURRENCY is taken before each text is claimed (CLAIM_AHEAD before its slot)
and given back when its outcome is written: a process never holds more claimed rows than that,
so a crash leaves at most that many texts uncertain. What would wait more than
``max_rate_wait`` in all for the sender's slots goes back to the ledger for later; waiting for
this process's own permits does not count.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta

from app.aioloop import monotonic
from app.domain.circuit import Admit
from app.services.ratelimit import RateLimiter
from app.services.send.prepare import Text

log = logging.getLogger("app.engine")

RATE_MARGIN = 0.95
LATE_TOLERANCE = 0.02
BOOK_AHEAD = 0.25  # seconds of a sender's slots booked at a time
CLAIM_AHEAD = 0.1  # a text is claimed this long before its slot (many in one statement)
MAX_RATE_WAIT = 20.0
# A claimed text that missed its slot waits at most this for another, once: a row stays in
# ``sending`` only for about a second plus its request (Settings.longest_send_seconds).
REBOOK_WAIT = 0.5

#: Starts a text's attempt at its slot (None: no pacing) as a probe or not; it holds one of
#: ``Pacer.permits`` and must give it back once its outcome is written.
Start = Callable[[Text, float | None, bool], Coroutine[None, None, None]]
#: Texts that go back to the ledger unclaimed, until when (None: until the circuit's hint).
Defer = Callable[[list[Text], datetime | None], None]


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

    async def run(
        self,
        texts: list[Text],
        *,
        start: Start,
        defer: Defer,
        admit: Callable[[], Admit],
        unprobe: Callable[[], None],
    ) -> None:
        """Pace these texts, each sender on its own; returns when every attempt has ended."""
        by_key: dict[str, deque[Text]] = {}
        for t in texts:
            by_key.setdefault(t.key, deque()).append(t)
        started: set[asyncio.Task[None]] = set()
        await asyncio.gather(
            *(
                self._lane(key, q, started, start, defer, admit, unprobe)
                for key, q in by_key.items()
            )
        )
        while started:
            await asyncio.gather(*list(started))

    async def rebook(self, text: Text) -> float | None:
        """A fresh slot for a claimed text that missed its own (its claim came back late):
        when it comes (monotonic), or None if none comes within REBOOK_WAIT."""
        try:
            first, granted, _ = await self.limiter.reserve_async(
                text.key, text.rate, text.segments, REBOOK_WAIT
            )
        except Exception as exc:  # noqa: BLE001 - the text goes back unsent
            log.warning("rate limiter failed for %s: %r", text.key, exc)
            return None
        return monotonic() + first if granted >= text.segments else None

    async def _lane(
        self,
        key: str,
        queue: deque[Text],
        started: set[asyncio.Task[None]],
        start: Start,
        defer: Defer,
        admit: Callable[[], Admit],
        unprobe: Callable[[], None],
    ) -> None:
        permits = self.permits
        loop = asyncio.get_running_loop()
        rate = queue[0].rate
        chunk = max(1, int(rate * BOOK_AHEAD))
        waited = 0.0  # for this sender's slots
        while queue:
            how = admit()
            if how is Admit.WAIT:
                defer(list(queue), None)  # the provider is down for everyone
                return
            probe = how is Admit.PROBE
            count, want = 0, 0
            for t in queue:
                if count and (probe or want + t.segments > chunk):
                    break
                count, want = count + 1, want + t.segments
            left = self.max_rate_wait - waited
            try:
                first, granted, spacing = (
                    await self.limiter.reserve_async(key, rate, want, left)
                    if left > 0
                    else (0.0, 0, 0.0)
                )
            except Exception as exc:  # noqa: BLE001 - nothing was sent: later is safe
                log.warning("rate limiter failed for %s: %r", key, exc)
                first, granted, spacing = 1.0, 0, 0.0
            base = monotonic() + first
            if probe and not granted:
                unprobe()
            if not granted:
                # No slot in time: each text goes back until about when its slot would come,
                # so they return a second's worth at a time instead of all at once.
                opens = self.clock() + timedelta(seconds=max(first, 1.0))
                log.info(
                    "rate limit of %s: %d texts wait from %s", key, len(queue), opens.isoformat()
                )
                ahead = 0
                for t in queue:
                    defer([t], opens + timedelta(seconds=int(ahead / rate)))
                    ahead += t.segments
                return
            used, went = 0, 0
            while queue and used + queue[0].segments <= granted and not (probe and went):
                slot = base + used * spacing
                pause = slot - self.claim_ahead() - monotonic()
                if pause > 0:
                    waited += pause
                    await asyncio.sleep(pause)
                await permits.acquire()
                if spacing and monotonic() - slot > LATE_TOLERANCE:
                    permits.release()  # the slots passed while this process was busy
                    break
                text = queue.popleft()
                used += text.segments
                went += 1
                task: asyncio.Task[None] = loop.create_task(
                    start(text, slot if spacing else None, probe)
                )
                started.add(task)
                task.add_done_callback(started.discard)
            if probe and not went:
                unprobe()
            if not went:
                # The booked slots went unused: their time counts as waited for the sender.
                end = base + granted * spacing - monotonic()
                if end > 0:
                    waited += end
                    await asyncio.sleep(end)
