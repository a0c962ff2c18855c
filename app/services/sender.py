"""The sender: one per process, it puts the send path's collaborators together.

    submit_ids → prepare (hold / skip / render) → admission → pacing (a slot per segment,
    a permit per text) → claim at the slot → delivery (the request, the circuit breaker)
    → recording (outcomes in groups) → the batch's report

Each collaborator is a file of ``app.services.send``; every change of a row's status is a
function of ``app.db.ledger``. A batch runs as coroutines on the process's shared event loop
(``app.aioloop``): a text waiting for its slot is a timer, and the provider is awaited with no
thread per send.

A row is claimed with one conditional UPDATE just before its request, with the body and sender
the request carries, so a crash leaves at most the texts in flight (≤ SMS_CONCURRENCY) in
``sending``: an unknown outcome that reconciliation settles by looking for exactly that text,
never a blind resend. Every other row of the batch is still ``pending``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from sqlalchemy import Engine

from app.aioloop import monotonic, shared_loop
from app.db import ledger
from app.domain import planning
from app.metrics import worker as worker_metrics
from app.providers.base import NotSent, SmsProvider
from app.services.circuit_share import CircuitShare
from app.services.engine import OrgConfig
from app.services.ratelimit import NoRateLimit, RateLimiter
from app.services.send.admission import Admission
from app.services.send.claims import Claimer
from app.services.send.delivery import Delivered, Delivery
from app.services.send.pacing import MAX_RATE_WAIT, RATE_MARGIN, Claimed, Hooks, Pacer
from app.services.send.prepare import Text, pending_orgs, prepare
from app.services.send.recording import Batch, Lost, Note, Recorder, Waits
from app.services.send.report import SendReport
from app.settings import Settings

__all__ = ["MAX_RATE_WAIT", "Busy", "SendReport", "Sender"]

log = logging.getLogger("app.engine")

#: A run that must not give its batch back waits this long for room, then takes it anyway.
ADMIT_TIMEOUT = 120.0


class Busy(Exception):
    """This process has no room for the batch now; nothing was written (a Celery task hands
    the batch back to the broker for a moment)."""


class Sender:
    """One per process: it owns the provider client and runs its batches on the shared loop."""

    def __init__(
        self,
        *,
        engine: Engine,
        provider: SmsProvider,
        settings: Settings,
        limiter: RateLimiter | None = None,
        circuit_share: CircuitShare | None = None,
        clock: Callable[[], datetime] = planning.utcnow,
        max_rate_wait: float = MAX_RATE_WAIT,
    ) -> None:
        self.engine = engine
        self.provider = provider
        self.settings = settings
        self.clock = clock
        self.admission = Admission(settings.open_batches)
        self.claims = Claimer(engine, clock)
        self.recorder = Recorder(engine, clock)
        self.delivery = Delivery(
            provider, settings, clock, self.recorder.circuit, share=circuit_share
        )
        self.pacer = Pacer(
            limiter if limiter is not None and provider.paced else NoRateLimit(),
            concurrency=settings.send_concurrency,
            max_rate_wait=max_rate_wait,
            clock=clock,
            claim_ahead=self.claims.ahead,
        )
        # Batches refused for want of room: what they wanted, so their next try asks first.
        self._refused: dict[tuple[int, ...], dict[str, tuple[int, float]]] = {}
        _size_thread_pool(settings.send_concurrency)

    def _refuse(self, batch: tuple[int, ...], wanted: dict[str, tuple[int, float]]) -> None:
        """Remember what a refused batch wanted, for its next try (a few hundred at most)."""
        if len(self._refused) >= 512:
            self._refused.pop(next(iter(self._refused)))
        self._refused[batch] = wanted

    @property
    def limiter(self) -> RateLimiter:
        return self.pacer.limiter

    @limiter.setter
    def limiter(self, limiter: RateLimiter) -> None:
        self.pacer.limiter = limiter if self.provider.paced else NoRateLimit()

    @property
    def max_rate_wait(self) -> float:
        return self.pacer.max_rate_wait

    @max_rate_wait.setter
    def max_rate_wait(self, seconds: float) -> None:
        self.pacer.max_rate_wait = seconds

    def close(self, timeout: float = 45.0) -> None:
        """Let the open batches finish (their texts are in flight), then release everything."""
        if not self.admission.wait_idle(timeout):
            log.warning("closing with %d send batches still open", self.admission.open)
        self.claims.close()
        self.recorder.close()
        self.provider.close()
        if shared_loop().started:
            shared_loop().submit(self.limiter.aclose()).result(timeout=5)
            shared_loop().submit(self.delivery.share.aclose()).result(timeout=5)
        self.limiter.close()

    def default_sender(self) -> str | None:
        s = self.settings
        if s.sms_provider == "twilio":
            return s.twilio_messaging_service_sid or s.twilio_from_number
        return None

    def rate_key(self, org: OrgConfig) -> str:
        return f"{self.provider.name}:{org.sender or self.default_sender() or 'default'}"

    def _sender_of(self, org: OrgConfig) -> tuple[str, float]:
        """An organization's rate-limit key and the segments per second its slots are booked at."""
        rate = org.rate_per_second or self.settings.rate_per_second
        return self.rate_key(org), rate * RATE_MARGIN

    # --- one batch -------------------------------------------------------------------------

    def send_ids(
        self,
        ids: Sequence[int],
        *,
        ignore_window: bool = False,
        report: SendReport | None = None,
    ) -> SendReport:
        """Hold what is outside its window, send the rest, record the outcomes."""
        return self.submit_ids(ids, ignore_window=ignore_window, report=report).result()

    def submit_ids(
        self,
        ids: Sequence[int],
        *,
        ignore_window: bool = False,
        report: SendReport | None = None,
        admit_within: float | None = None,
    ) -> Future[SendReport]:
        """``send_ids`` without waiting: the rows are prepared here, then sent on the shared
        loop alongside this process's other batches; the future holds the report once every
        outcome is written (``report``, if given, is where they are counted: the caller may
        read it while the batch runs).

        With ``admit_within``, a batch this process has no room for within that many seconds
        raises ``Busy`` with nothing written; without, it waits (at most ADMIT_TIMEOUT, then
        takes it anyway). Every text is for the organization's local today by the process
        clock (R3), whatever day its row was planned on; ``ignore_window`` also releases texts
        held for the window.
        """
        report = report if report is not None else SendReport()
        batch_key = tuple(ids)
        known = self._refused.pop(batch_key, None)
        if (
            known is not None
            and admit_within is not None
            and not self.admission.wait_room(known, admit_within)
        ):
            # Refused a moment ago, and still no room: no query for it this time.
            self._refuse(batch_key, known)
            raise Busy(f"no room for a batch of {len(ids)} in this process")
        with self.engine.connect() as conn:
            org_of, orgs = pending_orgs(conn, ids)
        wanted: dict[str, tuple[int, float]] = {}
        for org_id, n in Counter(org_of.values()).items():
            key, rate = self._sender_of(orgs[org_id])
            wanted[key] = (wanted.get(key, (0, rate))[0] + n, rate)
        if admit_within is not None:
            if not self.admission.enter(wanted, admit_within):
                self._refuse(batch_key, wanted)
                raise Busy(f"no room for a batch of {len(ids)} in this process")
        elif not self.admission.enter(wanted, ADMIT_TIMEOUT):
            log.warning("no room for a send batch after %d s; taking it anyway", ADMIT_TIMEOUT)
            self.admission.force(wanted)
        try:
            with self.engine.begin() as conn:
                prepared = prepare(
                    conn,
                    org_of,
                    orgs,
                    now=self.clock(),
                    ignore_window=ignore_window,
                    sender_of=self._sender_of,
                    retry_backoff=self.settings.retry_backoff_seconds,
                )
        except BaseException:
            for key, (n, _) in wanted.items():
                self.admission.left(key, n)
            self.admission.closed()
            raise
        for slug, (n, opens) in prepared.held.items():
            report.held += n
            report.note_held(slug, opens)
        report.skipped += prepared.skipped
        report.failed += prepared.failed
        report.deferred += prepared.deferred
        for outcome, n in (
            ("held", sum(n for n, _ in prepared.held.values())),  # not yet tried: the window
            ("skipped", prepared.skipped),
            ("failed", prepared.failed),
            ("deferred", prepared.deferred),
        ):
            worker_metrics.count_text(outcome, n=n)
        # What will not be paced leaves the admission's queue now.
        going: dict[str, int] = {}
        for t in prepared.texts:
            going[t.key] = going.get(t.key, 0) + 1
        for key, (n, _) in wanted.items():
            self.admission.left(key, n - going.get(key, 0))
        batch = Batch(report, len(prepared.texts), self.admission.closed)
        if not prepared.texts:
            batch.counted_more(0)
            return batch.future
        running = shared_loop().submit(self._run(batch, prepared.texts))
        running.add_done_callback(lambda f: _check_running(batch, f))
        return batch.future

    async def _run(self, batch: Batch, texts: list[Text]) -> None:
        loop = asyncio.get_running_loop()
        permits = self.pacer.permits

        def release(n: int) -> None:
            for _ in range(n):
                permits.release()

        def written(n: int) -> None:  # on the recorder's thread, once per group
            loop.call_soon_threadsafe(release, n)

        async def start(c: Claimed, probe: bool, send_by: float | None) -> None:
            try:
                note = await self._request(c, probe, send_by)
            except NotSent:
                raise  # it keeps its permit for a later slot (the pacer's)
            except BaseException:
                permits.release()
                raise
            # The permit is given back once the outcome is written, not before.
            self._note(batch, c.text, note, after=written)

        def give_back(c: Claimed) -> None:
            put_back = ledger.PutBack(c.text.row.id, c.attempt, self.clock(), ledger.DEFERRED)
            self._note(batch, c.text, Delivered(put_back), after=written)

        await self.pacer.run(
            texts,
            Hooks(
                admit=self.delivery.admit,
                unprobe=self.delivery.breaker.cancelled_probe,
                claim=self.claims.claim,
                start=start,
                give_back=give_back,
                wait=lambda t, until, reason: self._note(batch, t, Waits(until, reason)),
                lost=lambda t: self._note(batch, t, Lost()),
                defer_until=self.delivery.wait_until,
            ),
        )

    def _note(
        self, batch: Batch, text: Text, note: Note, after: Callable[[int], None] | None = None
    ) -> None:
        self.admission.left(text.key, 1)
        self.recorder.put(batch, text, note, after)

    async def _request(self, c: Claimed, probe: bool, send_by: float | None) -> Note:
        """A claimed text at its slot: the request, and what its answer means."""
        text, attempt = c.text, c.attempt
        if monotonic() - c.at > self.settings.stale_sending_seconds / 2:
            # A stalled process: the sweeper may soon take this row for dead. Never send it.
            if probe:
                self.delivery.breaker.cancelled_probe()
            return Delivered(ledger.PutBack(text.row.id, attempt, self.clock(), ledger.DEFERRED))
        try:
            return await self.delivery.deliver(text, attempt, probe=probe, send_by=send_by)
        except NotSent:
            raise
        except Exception:
            log.exception(
                "unexpected error sending ledger row %d of %s", text.row.id, text.org.slug
            )
            if probe:
                self.delivery.breaker.cancelled_probe()
            return Delivered(
                ledger.Unknown(
                    text.row.id,
                    attempt,
                    "internal",
                    "unexpected error while sending; see the worker log",
                )
            )


def _check_running(batch: Batch, running: Future[None]) -> None:
    """The loop's part ended: if it broke, the outcomes it owed will never come."""
    exc = running.exception() if not running.cancelled() else asyncio.CancelledError()
    if exc is not None:
        log.error("send batch broke on the event loop: %r", exc)
        batch.fail(exc, batch.total - batch.counted)


_pool_pid = 0


def _size_thread_pool(size: int) -> None:
    """Providers that can only block send on the loop's default pool: SMS_CONCURRENCY threads
    (made once per process; threads start only when used)."""
    global _pool_pid
    if _pool_pid == os.getpid():
        return
    _pool_pid = os.getpid()
    pool = ThreadPoolExecutor(max_workers=max(size, 4), thread_name_prefix="sms")

    async def install() -> None:
        asyncio.get_running_loop().set_default_executor(pool)

    shared_loop().submit(install()).result(timeout=5)
