"""One request to the provider and what its answer means for the row: a typed outcome.

The provider account's circuit breaker (``app.domain.circuit``) sees every answer: while the
provider fails for everyone, a failure is not the text's fault and does not use up its retries
(the text waits, ``pending``), and texts are not sent at all but for one probe at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.aioloop import monotonic
from app.db import ledger
from app.db.undeliverable import REASON as UNDELIVERABLE
from app.domain import planning
from app.domain.circuit import Admit, Breaker
from app.metrics import worker as worker_metrics
from app.providers.base import PermanentError, SmsProvider, TransientError, UnknownOutcomeError
from app.services.circuit_share import CircuitShare, LocalCircuitShare
from app.services.send.prepare import Text
from app.settings import Settings

log = logging.getLogger("app.engine")

LOOK_EVERY = 1.0  # seconds between looks at the shared circuit while this one is open


@dataclass(frozen=True)
class Delivered:
    outcome: ledger.Outcome
    opted_out: bool = False  # the provider says the recipient unsubscribed
    undeliverable: bool = False  # ... that the number cannot take texts


@dataclass(frozen=True)
class CircuitChange:
    """The account's circuit opened (``opened_at``) or closed (None): for the ledger's table."""

    account: str
    opened_at: datetime | None
    failures: int
    numbers: int


class Delivery:
    def __init__(
        self,
        provider: SmsProvider,
        settings: Settings,
        clock: Callable[[], datetime],
        on_circuit: Callable[[CircuitChange], None],
        share: CircuitShare | None = None,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.clock = clock
        self.account = f"{provider.name}:{provider.account}"
        # Probe about as often as a retry would come, within 1..30 s.
        self.breaker = Breaker(probe_every=min(30.0, max(1.0, settings.retry_backoff_seconds)))
        self.share: CircuitShare = share if share is not None else LocalCircuitShare()
        self._on_circuit = on_circuit
        self._closes_at_open: int | None = None  # the shared close count when it opened
        self._next_look = 0.0

    async def admit(self) -> Admit:
        """May a request go now? While the circuit is open: has another process closed it
        (looked at once a second), else is this one the account's probe?"""
        if not self.breaker.is_open:
            return Admit.SEND
        now = monotonic()
        if self._closes_at_open is not None and now >= self._next_look:
            self._next_look = now + LOOK_EVERY
            closes = await self.share.closes(self.account)
            if closes is not None and closes > self._closes_at_open:
                self._closed("another process's request got through")
                return Admit.SEND
        how = self.breaker.admit(now)
        if how is Admit.PROBE and not await self.share.take_probe(
            self.account, self.breaker.probe_every
        ):
            self.breaker.probe_elsewhere(now)
            return Admit.WAIT
        return how

    def wait_until(self) -> datetime:
        """When a text turned away by the open circuit is tried again."""
        return self.clock() + timedelta(seconds=max(1.0, self.breaker.wait_hint(monotonic())))

    async def deliver(
        self, text: Text, attempt: int, *, probe: bool, send_by: float | None = None
    ) -> Delivered:
        """The request, made now; the text was claimed for ``attempt``. NotSent (from the
        provider) when it could not be on its way by ``send_by``: nothing was sent."""
        row, org = text.row, text.org
        assert row.phone_e164 is not None
        now = self.clock()
        began = monotonic()
        try:
            message_id = await self.provider.send_async(
                row.phone_e164,
                text.body,
                org.sender,
                valid_for=valid_for(text, now),
                send_by=send_by,
            )
        except TransientError as exc:
            self._took(began, "transient")
            if not await self._failed(row.phone_e164, probe):
                # The provider fails for everyone: the attempt is given back.
                return Delivered(
                    ledger.PutBack(
                        row.id,
                        attempt,
                        until=self.wait_until(),
                        reason=ledger.DEFERRED,
                        code=exc.code,
                        message=exc.message,
                    )
                )
            return Delivered(self._retry_or_fail(text, attempt, exc))
        except PermanentError as exc:
            self._took(began, "permanent")
            await self._succeeded()  # a definite answer: the provider is up
            if exc.opted_out:
                reason = "opted_out"
            elif exc.undeliverable:
                reason = UNDELIVERABLE
            else:
                reason = "rejected"
            return Delivered(
                ledger.Failed(row.id, attempt, reason, exc.code, exc.message),
                opted_out=exc.opted_out,
                undeliverable=exc.undeliverable,
            )
        except UnknownOutcomeError as exc:
            self._took(began, "unknown")
            await self._failed(row.phone_e164, probe)
            return Delivered(ledger.Unknown(row.id, attempt, exc.code, exc.message))
        self._took(began, "accepted")
        await self._succeeded()
        return Delivered(ledger.Sent(row.id, attempt, message_id, self.clock()))

    def _took(self, began: float, result: str) -> None:
        worker_metrics.observe_request(self.provider.name, result, monotonic() - began)

    def _retry_or_fail(self, text: Text, attempt: int, exc: TransientError) -> ledger.Outcome:
        row, org = text.row, text.org
        if attempt >= self.settings.max_attempts:
            return ledger.Failed(row.id, attempt, "retries_exhausted", exc.code, exc.message)
        delay = planning.retry_delay(
            attempt, self.settings.retry_backoff_seconds, retry_after=exc.retry_after
        )
        at = planning.clamp_to_window(
            self.clock() + timedelta(seconds=delay), org.timezone, org.window
        )
        return ledger.Retry(row.id, attempt, at, exc.code, exc.message)

    async def _failed(self, number: str, probe: bool) -> bool:
        was_open = self.breaker.is_open
        counts = self.breaker.failed(number, monotonic(), probe=probe)
        if self.breaker.is_open and not was_open:
            self._closes_at_open = await self.share.closes(self.account)
            self._next_look = monotonic() + LOOK_EVERY
            b = self.breaker
            log.warning(
                "circuit open for %s: %d failures in a row across %d numbers; texts wait "
                "(pending, their retries kept) and one request probes every %.0f s",
                self.account,
                b.failures,
                len(b.numbers),
                b.probe_every,
            )
            self._on_circuit(CircuitChange(self.account, self.clock(), b.failures, len(b.numbers)))
        return counts

    async def _succeeded(self) -> None:
        if not self.breaker.is_open:
            self.breaker.succeeded()
            return
        self._closed("the provider answers again")
        await self.share.closed(self.account)

    def _closed(self, why: str) -> None:
        opened = self.breaker.opened_at
        self.breaker.succeeded()
        self._closes_at_open = None
        log.warning(
            "circuit closed for %s: %s after %.0f s",
            self.account,
            why,
            monotonic() - (opened or monotonic()),
        )
        self._on_circuit(CircuitChange(self.account, None, 0, 0))


def valid_for(text: Text, now: datetime) -> int | None:
    """How long the provider may queue this text: until its window closes (R4)."""
    if text.ignore_window:
        return None
    left = planning.window_closes_in(now, text.org.timezone, text.org.window)
    return None if left is None else max(1, int(left))


def still_true(text: Text, now: datetime) -> tuple[datetime, str] | None:
    """Checked just before the claim (a text may wait seconds for its slot): it goes only on
    the local date it was made for (R3) and inside its window (R4). Else: (until, reason) it
    waits with, unclaimed."""
    org = text.org
    local = planning.local_now(now, org.timezone)
    if local.date() != text.today:
        return (now, ledger.DEFERRED)
    if not text.ignore_window and not planning.in_window(local.time(), org.window):
        return (planning.next_window_open(now, org.timezone, org.window), ledger.HELD)
    return None
